"""After the session: phases from the stored markers, HRV per phase from the stored beats (via `hrv`).

When the strap's accelerometer was recorded (`acc_chunks`), a phase with at least `MIN_ACC_WINDOW_S` of gap-free
chest movement gets its breathing rate from it (`acc_breathing`, source "acc") instead of the RSA estimate; a paced
phase keeps the pacer rate, with a note when the participant breathed at a clearly different rate. ACC samples are
put on the session clock exactly like ECG samples (`recordings.ecg_time.map_ecg_chunks`: device-clock spacing,
lower envelope of arrival times, new stretch at every device-time jump), and only the longest stretch within the
phase is used. A rate whose spectral peak holds less than `MIN_ACC_PEAK_SHARE` of the band power is not trusted.
A phase whose rate is trusted also gets its breath cycles from the chest-movement waveform (`recordings.breathing`):
breaths counted, RSA per breath (median peak-to-trough HR) and, when paced, the share of breaths that follow the
pacer (`breath_cycles`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biofeedback.analysis.acc_breathing import breathing_rate_from_acc
from biofeedback.analysis.beat_source import BeatSelection, select_beats
from biofeedback.analysis.breath_cycles import phase_breaths
from biofeedback.analysis.ecg_beats import NoEcgError, PhaseAgreement, session_agreement
from biofeedback.analysis.hrv import CorrectedBeats, PhaseMetrics, analyze_phases
from biofeedback.analysis.indices import INDEX_SETTINGS
from biofeedback.analysis.review import phase_review
from recordings.breathing import breathing_waveform
from recordings.ecg_time import EcgTimeError, EcgTimeline, map_ecg_chunks
from recordings.store import SessionInfo, Store

MIN_ACC_WINDOW_S = 60.0
"""Gap-free accelerometer seconds a phase needs for a chest-movement breathing rate."""
MIN_ACC_PEAK_SHARE = 0.3
"""Below this share of breathing-band power in its peak, the chest-movement rate is not used (noise gives 0.1-0.2)."""


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
    beats: str = "auto"
    """The beat source analysed (`beat_source.BEAT_SOURCES`)."""
    beats_note: str = ""
    review: list[dict[str, Any]] = field(default_factory=list)
    """Per phase: edits in force by action, the shares the grade rests on, the grade (`review.phase_review`)."""
    timeline: CorrectedBeats | None = field(default=None, repr=False)
    selection: BeatSelection | None = field(default=None, repr=False)
    ecg_agreement: list[PhaseAgreement] | None = None
    """Per phase, ECG beats against the strap's (`ecg_beats.agreement`); None without ECG."""

    def to_dict(self) -> dict[str, Any]:
        phases = []
        for i, (metrics, window) in enumerate(zip(self.phases, self.windows, strict=True)):
            row = metrics.to_dict()
            row["feedback"] = window.feedback
            row["ended"] = window.ended
            if self.review:
                row["review"] = self.review[i]
                row["grade"] = self.review[i]["grade"]
            phases.append(row)
        return {
            "session": self.session.to_dict(),
            "beats": self.beats,
            "beats_note": self.beats_note,
            "correction": self.correction,
            "index_settings": dict(INDEX_SETTINGS),
            "quality": self.quality,
            "phases": phases,
            "ecg_agreement": None if self.ecg_agreement is None else [a.to_dict() for a in self.ecg_agreement],
        }

    def phase_rows(self) -> list[dict[str, Any]]:
        """One flat row per phase for table exports: the metrics, feedback, how it ended, and the settings used."""
        settings = json.dumps({"beats": self.beats, "correction": self.correction, **INDEX_SETTINGS},
                              ensure_ascii=False)  # fmt: skip
        rows = []
        for i, (metrics, window) in enumerate(zip(self.phases, self.windows, strict=True)):
            extra: dict[str, Any] = {}
            if self.review:
                r = self.review[i]
                extra = {"beats": self.beats, "grade": r["grade"], "n_edits": r["n_edits"],
                         "edits": "; ".join(f"{k}={v}" for k, v in sorted(r["edits"].items()))}  # fmt: skip
            rows.append({**metrics.to_dict(), "feedback": window.feedback, "ended": window.ended, **extra,
                         "settings": settings})  # fmt: skip
        return rows


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


def acc_timeline(store: Store, session_id: int) -> EcgTimeline | None:
    """The session's accelerometer samples on the session clock (`uv` holds (n, 3) mG), or None without ACC."""
    chunks = store.acc_chunks(session_id)
    if not chunks:
        return None
    try:
        return map_ecg_chunks(chunks)
    except EcgTimeError:
        return None


def phase_acc_rate(acc: EcgTimeline, start_s: float, end_s: float) -> tuple[float | None, str | None]:
    """Chest-movement breathing rate (breaths/min) of one phase's longest ACC stretch, or None and why not."""
    inside = (acc.t >= start_s) & (acc.t < end_s)
    if not inside.any():
        return None, None
    segments, counts = np.unique(acc.segment[inside], return_counts=True)
    longest = segments[np.argmax(counts)]
    take = inside & (acc.segment == longest)
    seconds = float(take.sum()) / acc.fs_hz
    if seconds < MIN_ACC_WINDOW_S:
        return None, f"chest-movement breathing rate needs ≥ {MIN_ACC_WINDOW_S:.0f} s of ACC; phase has {seconds:.1f} s"
    try:
        estimate = breathing_rate_from_acc(acc.uv[take], acc.fs_hz)
    except ValueError as exc:
        return None, f"no chest-movement breathing rate: {exc}"
    if estimate.peak_share < MIN_ACC_PEAK_SHARE:
        return None, f"chest movement shows no clear breathing rhythm (peak share {estimate.peak_share:.2f})"
    return estimate.rate_bpm, None


def analyze_session(
    store: Store, session_id: int, correction: str = "kubios", beats: str | None = None
) -> SessionAnalysis:
    """Per-phase HRV of a session from the beats of `beats` (`beat_source.select_beats`: None = reviewed when the
    session has a review, else auto), with the edits per phase and the quality grade (`review.phase_review`)."""
    info = store.session(session_id)
    selection = select_beats(store, session_id, beats)
    chosen = selection.beats
    correction = correction if selection.correct else "none"
    timeline = selection.timeline(correction)
    windows = phase_windows(store, session_id)
    acc = acc_timeline(store, session_id)
    acc_results = [phase_acc_rate(acc, w.start_s, w.end_s) if acc else (None, None) for w in windows]
    phases = analyze_phases(
        chosen.t,
        chosen.rr_ms,
        [(w.name, w.kind, w.start_s, w.end_s, w.pacer_rate_bpm) for w in windows],
        correction=correction,
        gap_before=chosen.gap_before,
        acc_rates=[rate for rate, _ in acc_results],
        timeline=timeline,
    )
    review = phase_review([(w.start_s, w.end_s) for w in windows], timeline.seg_span, timeline.recorded_t,
                          timeline.event_t, selection.audit, selection.review)  # fmt: skip
    beats_ = store.beats(session_id)
    for metrics, window, (_, acc_note) in zip(phases, windows, acc_results, strict=True):
        if acc_note:
            metrics.notes.append(acc_note)
        if window.ended != "completed":
            metrics.notes.append(f"phase {window.ended} before its planned end")
        if window.paused_s > 0:
            metrics.notes.append(f"includes {window.paused_s:.0f} s of pause")
    _add_breaths(phases, windows, acc, [rate for rate, _ in acc_results], timeline)
    counts = store.counts(session_id)
    lags = beats_.arrival_lag_s
    quality = {
        "n_beats": len(beats_.t),
        "gaps": int(beats_.gap_before.sum()) - (1 if len(beats_.t) else 0),
        "malformed_packets": counts["packet_errors"],
        "packets": counts["packets"],
        "disconnects": sum(1 for e in store.link_events(session_id) if e[2] == "disconnected"),
        "median_arrival_lag_s": float(np.median(lags)) if len(lags) else None,
        "acc_seconds": float(len(acc.t) / acc.fs_hz) if acc else 0.0,
        # per gap-free stretch: why it starts, the strap clock's drift (None: too short to tell), how late its first
        # notification arrived over the fitted line (the live anchor's initial error) and the median delay
        "beat_stretches": store.beat_stretches(session_id),
    }
    quality["analysed_beats"] = len(chosen.t)
    agreement = None
    if counts["ecg_chunks"]:
        try:
            agreement = session_agreement(store, session_id, [(w.name, w.start_s, w.end_s) for w in windows])
        except NoEcgError as exc:
            quality["ecg_beats"] = str(exc)
    return SessionAnalysis(info, correction, phases, windows, quality, beats=selection.source,
                           beats_note=selection.describe(), review=review, timeline=timeline,
                           selection=selection, ecg_agreement=agreement)  # fmt: skip


def _add_breaths(phases: list[PhaseMetrics], windows: list[PhaseWindow], acc: EcgTimeline | None,
                 acc_rates: list[float | None], nn: CorrectedBeats) -> None:
    """The pacer rate of every phase; with chest movement, the measured rate, RSA per breath and pacer compliance
    (`breath_cycles`) of each phase whose breathing rhythm `phase_acc_rate` trusted."""
    for metrics, window in zip(phases, windows, strict=True):
        metrics.pacer_rate_bpm = window.pacer_rate_bpm
    if acc is None or not any(r is not None for r in acc_rates) or not len(nn.t):
        return
    waveform = breathing_waveform(acc)
    for metrics, window, rate in zip(phases, windows, acc_rates, strict=True):
        if rate is None:
            continue
        metrics.acc_breathing_rate_bpm = rate
        breaths = phase_breaths(waveform, nn, window.start_s, window.end_s, rate, window.pacer_rate_bpm)
        metrics.n_breaths = len(breaths.cycles)
        metrics.rsa_p2t_bpm = breaths.rsa_p2t_bpm
        metrics.pacer_compliance_pct = breaths.pacer_compliance_pct
        metrics.notes.extend(breaths.notes)
