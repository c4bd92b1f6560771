"""Floor 3: running sessions (live/), one session's analysis (analysis/), studies (study/), Qt windows (display/)."""
