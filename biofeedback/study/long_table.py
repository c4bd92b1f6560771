"""One long table of every session's per-phase indices, for SPSS, R and pandas (`export --format table`).

One row per session × phase × index: participant, session, week, protocol, start (UTC), correction, phase (index,
name, kind, start/end s), index name, value (empty when missing), unit and the settings used for that index.
The week is the session's study week as recorded when it started (`SessionInfo.week`). A session recorded in a
group session also gets its phases' group synchrony (`SYNC_INDICES`, from `biofeedback.analysis.synchrony`).
Plain CSV (UTF-8, comma, header row, `.` decimals); no free
text: the automatic quality notes stay in `analyze` and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from biofeedback.analysis.analyze import analyze_session
from biofeedback.analysis.breath_cycles import COMPLIANCE_TOLERANCE
from biofeedback.analysis.hrv import MIN_LF_WINDOW_S, MIN_SHORT_WINDOW_S
from biofeedback.analysis.indices import INDEX_SETTINGS
from biofeedback.analysis.synchrony import SETTINGS as SYNC_SETTINGS
from biofeedback.analysis.synchrony import GroupError, PhaseSynchrony, group_synchrony
from recordings.files import write_private_text
from recordings.store import SessionInfo, Store

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
    "pacer_rate_bpm": ("1/min", "the protocol's pacer rate (empty: no pacer)"),
    "acc_breathing_rate_bpm": ("1/min", "breaths counted in the chest movement (ACC), paced or not"),
    "n_breaths": ("count", "complete breath cycles (trough to trough) in the chest-movement waveform"),
    "rsa_p2t_bpm": ("1/min", "RSA per breath: median over breaths of max - min HR within the breath (peak-valley)"),
    "pacer_compliance_pct": ("%", f"breaths within ±{COMPLIANCE_TOLERANCE:.0%} of the pacer's period"),
}
SYNC_INDICES: dict[str, tuple[str, str]] = {
    "group_sync_r": ("", "group session: Fisher-z mean of pairwise HR correlations; " + SYNC_SETTINGS["synchrony"]),
    "group_sync_p": ("", "group session: one-sided surrogate p of group_sync_r exceeding chance"),
    "group_sync_n": ("count", "group session: participants with beats in the phase"),
    "participant_sync_r": ("", "group session: Fisher-z mean of this participant's pairwise HR correlations"),
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
    groups: dict[str, dict[int, PhaseSynchrony]] = {}
    for sid in session_ids:
        info = store.session(sid)
        if info.state != "running":
            rows += _session_rows(store, info, correction, groups, beats)
        if on_session is not None:
            on_session(sid)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"week": "Int64", "value": "float64"})


def _session_rows(store: Store, info: SessionInfo, correction: str,
                  groups: dict[str, dict[int, PhaseSynchrony]], beats: str | None) -> list[list]:
    """One session's rows: every index of every phase, and the group synchrony indices for a group session."""
    rows = []
    sid = info.id
    analysis = analyze_session(store, sid, correction=correction, beats=beats)
    sync = _group_phases(store, sid, info.group_id, correction, groups)
    for i, (metrics, window) in enumerate(zip(analysis.phases, analysis.windows, strict=True)):
        grade = analysis.review[i]["grade"] if analysis.review else None
        head = [info.participant_id, sid, info.week, info.protocol_name, info.started_utc, analysis.correction,
                analysis.beats, window.index, metrics.name, metrics.kind, metrics.start_s, metrics.end_s, grade]
        for name, (unit, setting) in INDICES.items():
            rows.append([*head, name, getattr(metrics, name), unit, setting])
        if sync is None:
            continue
        ph = sync.get(window.index)
        values = {"group_sync_r": ph.mean_r, "group_sync_p": ph.p_value, "group_sync_n": len(ph.participants),
                  "participant_sync_r": ph.participant_r(info.participant_id) if ph.pairs else None,
                  } if ph is not None else {}  # fmt: skip
        for name, (unit, setting) in SYNC_INDICES.items():
            rows.append([*head, name, values.get(name), unit, setting])
    return rows


def _group_phases(store: Store, session_id: int, group_id: str | None, correction: str,
                  cache: dict[str, dict[int, PhaseSynchrony]]) -> dict[int, PhaseSynchrony] | None:
    """Synchrony per phase index of the session's group (computed once per group), None for a session alone."""
    if not group_id:
        return None
    if group_id not in cache:
        try:
            result = group_synchrony(store, session_id, correction=correction)
        except GroupError:
            cache[group_id] = {}
        else:
            cache[group_id] = {ph.phase_index: ph for ph in result.phases}
    return cache[group_id] or None


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
