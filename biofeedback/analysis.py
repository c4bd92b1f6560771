"""After the session: phases from the stored markers, HRV per phase from the stored beats (via `hrv`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recordings.store import SessionInfo, Store

from .hrv import PhaseMetrics, analyze_phases


@dataclass(frozen=True, slots=True)
class PhaseWindow:
    index: int
    name: str
    kind: str
    start_s: float
    end_s: float
    pacer_rate_bpm: float | None
    feedback: str
    ended: str
    paused_s: float


@dataclass
class SessionAnalysis:
    session: SessionInfo
    correction: str
    phases: list[PhaseMetrics]
    windows: list[PhaseWindow]
    quality: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        phases = []
        for metrics, window in zip(self.phases, self.windows, strict=True):
            row = metrics.to_dict()
            row["feedback"] = window.feedback
            row["ended"] = window.ended
            phases.append(row)
        return {
            "session": self.session.to_dict(),
            "correction": self.correction,
            "quality": self.quality,
            "phases": phases,
        }


def phase_windows(store: Store, session_id: int) -> list[PhaseWindow]:
    """Each phase that started, from its start marker to its end marker (or the last beat if it never ended)."""
    starts: dict[int, Any] = {}
    windows = []
    for mk in store.markers(session_id):
        if mk.kind == "phase_start" and mk.phase_index is not None:
            starts[mk.phase_index] = mk
        elif mk.kind == "phase_end" and mk.phase_index in starts:
            st = starts.pop(mk.phase_index)
            windows.append(_window(st, mk.t, mk.detail.get("ended", "completed"), mk.detail.get("paused_s", 0.0)))
    if starts:  # an interrupted session: the open phase ends with the last recorded beat
        beats = store.beats(session_id)
        last = float(beats.t[-1]) if len(beats.t) else 0.0
        for st in starts.values():
            windows.append(_window(st, max(last, st.t), "interrupted", 0.0))
    return sorted(windows, key=lambda w: w.start_s)


def _window(start_marker, end_t: float, ended: str, paused_s: float) -> PhaseWindow:
    d = start_marker.detail
    return PhaseWindow(
        index=int(start_marker.phase_index),
        name=str(start_marker.phase_name),
        kind=str(d.get("kind", "other")),
        start_s=float(start_marker.t),
        end_s=float(end_t),
        pacer_rate_bpm=d.get("pacer_bpm"),
        feedback=str(d.get("feedback", "live")),
        ended=ended,
        paused_s=float(paused_s or 0.0),
    )


def analyze_session(store: Store, session_id: int, correction: str = "kubios") -> SessionAnalysis:
    info = store.session(session_id)
    beats = store.beats(session_id)
    windows = phase_windows(store, session_id)
    phases = analyze_phases(
        beats.t,
        beats.rr_ms,
        [(w.name, w.kind, w.start_s, w.end_s, w.pacer_rate_bpm) for w in windows],
        correction=correction,
        gap_before=beats.gap_before,
    )
    for metrics, window in zip(phases, windows, strict=True):
        if window.ended != "completed":
            metrics.notes.append(f"phase {window.ended} before its planned end")
        if window.paused_s > 0:
            metrics.notes.append(f"includes {window.paused_s:.0f} s of pause")
    counts = store.counts(session_id)
    lags = beats.arrival_lag_s
    quality = {
        "n_beats": len(beats.t),
        "gaps": int(beats.gap_before.sum()) - (1 if len(beats.t) else 0),
        "malformed_packets": counts["packet_errors"],
        "packets": counts["packets"],
        "disconnects": sum(1 for e in store.link_events(session_id) if e[2] == "disconnected"),
        "median_arrival_lag_s": float(np.median(lags)) if len(lags) else None,
    }
    return SessionAnalysis(info, correction, phases, windows, quality)
