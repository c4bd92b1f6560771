"""One long table of every session's per-phase indices, for SPSS, R and pandas (`export --format table`).

One row per session × phase × index: participant, session, week, protocol, start (UTC), correction, phase (index,
name, kind, start/end s), index name, value (empty when missing), unit and the settings used for that index.
The week is the session's study week as recorded when it started (`SessionInfo.week`).
Plain CSV (UTF-8, comma, header row, `.` decimals); no free
text: the automatic quality notes stay in `analyze` and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from biofeedback.analysis.analyze import analyze_session
from biofeedback.analysis.hrv import MIN_LF_WINDOW_S, MIN_SHORT_WINDOW_S
from biofeedback.analysis.indices import INDEX_SETTINGS
from recordings.files import write_private_text
from recordings.store import Store

_TIME = f"time domain over NN in gap-free runs; needs >= {MIN_SHORT_WINDOW_S:.0f} s"
_FREQ = "Welch PSD of the 4 Hz tachogram, longest gap-free run, absolute"
INDICES: dict[str, tuple[str, str]] = {
    "n_beats": ("count", "usable NN intervals in the phase after correction"),
    "corrected_pct": ("%", "beats moved, inserted or deleted by the correction / recorded beats"),
    "mean_hr_bpm": ("1/min", "60000 / mean NN"),
    "rmssd_ms": ("ms", _TIME),
    "sdnn_ms": ("ms", _TIME + ", ddof 1"),
    "pnn50_pct": ("%", _TIME),
    "lf_ms2": ("ms²", f"{_FREQ}, 0.04-0.15 Hz; needs >= {MIN_LF_WINDOW_S:.0f} s"),
    "hf_ms2": ("ms²", f"{_FREQ}, 0.15-0.40 Hz; needs >= {MIN_SHORT_WINDOW_S:.0f} s"),
    "lf_nu": ("nu", INDEX_SETTINGS["normalised_units"]),
    "hf_nu": ("nu", INDEX_SETTINGS["normalised_units"]),
    "lf_peak_hz": ("Hz", "highest PSD bin in 0.04-0.15 Hz"),
    "breathing_rate_bpm": ("1/min", "pacer rate, else chest movement (ACC), else the RSA peak"),
    "sd1_ms": ("ms", INDEX_SETTINGS["poincare"]),
    "sd2_ms": ("ms", INDEX_SETTINGS["poincare"]),
    "dfa_alpha1": ("", INDEX_SETTINGS["dfa_alpha1"]),
    "sample_entropy": ("", INDEX_SETTINGS["sample_entropy"]),
    "stress_index": ("", INDEX_SETTINGS["stress_index"]),
    "coherence_ratio": ("", INDEX_SETTINGS["coherence_ratio"]),
    "coherence_index": ("", INDEX_SETTINGS["coherence_index"]),
}
COLUMNS = ["participant", "session_id", "week", "protocol", "started_utc", "correction", "beats", "phase_index",
           "phase", "phase_kind", "phase_start_s", "phase_end_s", "grade", "index", "value", "unit",
           "settings"]  # fmt: skip
"""`beats`: the beat source analysed (`beat_source`); `grade`: the phase's quality grade (`review.quality_grade`)."""


def long_table(
    store: Store, session_ids: Sequence[int], correction: str = "kubios",
    on_session: Callable[[int], None] | None = None, beats: str | None = None,
) -> pd.DataFrame:  # fmt: skip
    """The long table of the given sessions (an unfinished, still running session is left out); `on_session(id)`
    after each session, for progress; `beats`: the beat source (None: reviewed where a session has a review, else
    auto)."""
    rows = []
    for sid in session_ids:
        info = store.session(sid)
        if info.state != "running":
            analysis = analyze_session(store, sid, correction=correction, beats=beats)
            for i, (metrics, window) in enumerate(zip(analysis.phases, analysis.windows, strict=True)):
                grade = analysis.review[i]["grade"] if analysis.review else None
                for name, (unit, setting) in INDICES.items():
                    rows.append([info.participant_id, sid, info.week, info.protocol_name, info.started_utc,
                                 analysis.correction, analysis.beats, window.index, metrics.name, metrics.kind,
                                 metrics.start_s, metrics.end_s, grade, name, getattr(metrics, name), unit,
                                 setting])  # fmt: skip
        if on_session is not None:
            on_session(sid)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"week": "Int64", "value": "float64"})


def write_long_table(
    store: Store, session_ids: Sequence[int], out_dir: Path, *, correction: str = "kubios", overwrite: bool = False,
    on_session: Callable[[int], None] | None = None,
    beats: str | None = None,
) -> Path:
    """Write `hrv_long.csv` into `out_dir` (private, never silently replaced)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = long_table(store, session_ids, correction, on_session, beats).to_csv(index=False, float_format="%.6g")
    return write_private_text(out_dir / "hrv_long.csv", text, overwrite=overwrite)
