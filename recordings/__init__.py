"""Floor 2: the crash-safe store, participants and sessions, file exports and capture import."""
