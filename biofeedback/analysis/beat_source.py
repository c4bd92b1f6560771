"""Which beats a session is analysed and exported with: the one place beats are loaded for analysis.

Sources (`--beats`):

- `reviewed`: the strap's beats with the researcher's review applied (`biofeedback.analysis.review`), then the
  automatic correction except where the reviewer rejected it;
- `auto`: the strap's beats with the automatic artifact correction only;
- `strap`: the strap's beats exactly as decoded, no correction;
- `ecg`: R-peaks detected in the recorded ECG (`biofeedback.analysis.ecg_beats`), with the automatic correction.

The default is `reviewed` when the session has a review (an edit in force), else `auto`. Exports write the
selected beats before the automatic correction (measured beats, plus beats a reviewer added; left-out data is a
gap), so `auto` and `strap` export the same beats and differ in the analysis only.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field

import numpy as np

from biofeedback.analysis.hrv import CorrectedBeats, corrected_beats
from biofeedback.analysis.review import BEAT_MATCH_S, ReviewedBeats, apply_edits
from recordings.review import ReviewEdit, ReviewError, add_edit, check_edit, edits, edits_in_force
from recordings.store import Beats, Store

BEAT_SOURCES = ("reviewed", "auto", "strap", "ecg")
ECG_UNAVAILABLE = "ECG beats are not available in this build"
ECG_MAX_RR_S = 3.0
"""ECG beats further apart than this (20 beats/min, the strap's limit) have a gap between them, not an interval."""


class BeatSourceError(ValueError):
    """A beat source that this session (or this build) cannot give."""


@dataclass(frozen=True)
class BeatSelection:
    """The beats to analyse and export, where they came from, and the review behind them (if any)."""

    source: str
    beats: Beats
    correct: bool
    """Whether the automatic artifact correction applies (not for `strap`)."""
    keep_events: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Automatic corrections a reviewer rejected (their first replaced beat's time)."""
    audit: list[ReviewEdit] = field(default_factory=list)
    review: ReviewedBeats | None = None

    def describe(self) -> str:
        if self.source == "reviewed" and self.review is not None:
            live = [e for e in self.audit if e.in_force]
            who = ", ".join(sorted({e.reviewer for e in live}))
            stale = f"; {len(self.review.skipped)} no longer apply" if self.review.skipped else ""
            return f"reviewed beats ({len(live)} edits in force by {who}{stale})"
        return {
            "auto": "the strap's beats with automatic artifact correction (not reviewed)",
            "strap": "the strap's beats as recorded (no correction)",
            "ecg": "R-peaks detected in the ECG, with automatic artifact correction",
        }[self.source]

    def timeline(self, correction: str = "kubios") -> CorrectedBeats:
        """The beats as the analysis uses them (`hrv.corrected_beats`), with the reviewer's rejections kept."""
        b = self.beats
        return corrected_beats(b.t, b.rr_ms, correction if self.correct else "none", b.gap_before,
                               keep_events=self.keep_events)  # fmt: skip


def beats_from_times(times: np.ndarray, max_rr_s: float = ECG_MAX_RR_S) -> Beats:
    """Beats from beat times alone: each RR is the time since the previous beat; a longer pause than `max_rr_s`
    (or the first beat) has no interval, so the beat after it starts a stretch and the one at its end is left out."""
    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or (t.size > 1 and np.any(np.diff(t) <= 0)):
        raise BeatSourceError("ECG beat times must be one increasing series")
    d = np.diff(t)
    keep = d <= max_rr_s
    bt, rr = t[1:][keep], 1000.0 * d[keep]
    gap = np.ones(bt.size, dtype=bool)
    if bt.size:
        idx = np.flatnonzero(keep)
        gap[1:] = np.diff(idx) != 1
    return Beats(bt, rr, gap, np.zeros(bt.size))


def ecg_beats(store: Store, session_id: int) -> Beats:
    """The ECG's R-peaks as beats (`biofeedback.analysis.ecg_beats`, imported only when asked for)."""
    try:
        module = importlib.import_module("biofeedback.analysis.ecg_beats")
    except ModuleNotFoundError as exc:
        if exc.name == "biofeedback.analysis.ecg_beats":
            raise BeatSourceError(ECG_UNAVAILABLE) from None
        raise
    return beats_from_times(module.ecg_beat_times(store, session_id))


def select_beats(store: Store, session_id: int, source: str | None = None) -> BeatSelection:
    """The beats of `source` (None: `reviewed` when the session has a review, else `auto`)."""
    if source is not None and source not in BEAT_SOURCES:
        raise BeatSourceError(f"unknown beat source {source!r}; one of {', '.join(BEAT_SOURCES)}")
    audit = edits(store, session_id)
    live = [e for e in audit if e.in_force]
    if source is None:
        source = "reviewed" if live else "auto"
    if source == "ecg":
        return _labelled(BeatSelection("ecg", ecg_beats(store, session_id), True, audit=audit))
    strap = store.beats(session_id)
    if source == "reviewed":
        if not live:
            raise BeatSourceError(f"session {session_id} has no review yet (`review {session_id}`); use --beats auto")
        review = apply_edits(strap, live)
        return _labelled(BeatSelection("reviewed", review.beats, True, review.rejected_t, audit, review))
    return _labelled(BeatSelection(source, strap, source == "auto", audit=audit))


def _labelled(selection: BeatSelection) -> BeatSelection:
    """The selection with its beats carrying `describe()`, so every export names the beat source beside the beats."""
    return dataclasses.replace(selection, beats=dataclasses.replace(selection.beats, source=selection.describe()))


def candidate_corrections(review: ReviewedBeats) -> np.ndarray:
    """Times of every automatic correction a reviewer can accept or reject on these reviewed beats (sorted)."""
    b = review.beats
    tl = corrected_beats(b.t, b.rr_ms, "kubios", b.gap_before, keep_events=review.rejected_t)
    return np.sort(np.concatenate([tl.event_t, tl.rejected_t]))


def record_edit(
    store: Store, session_id: int, action: str, *, reviewer: str, t: float, t_end: float | None = None,
    kind: str | None = None, reason: str = "", corrections: np.ndarray | None = None,
) -> ReviewEdit:  # fmt: skip
    """Check that an edit applies to the session's current review, name exactly the beat or correction it means
    (the nearest within `BEAT_MATCH_S`), and store it (`recordings.review.add_edit`). Raises ReviewError.

    `corrections`: the caller's `candidate_corrections` of the current review, when it has them (saves a run)."""
    check_edit(action, t, t_end, kind)
    strap = store.beats(session_id)
    live = edits_in_force(store, session_id)
    state = apply_edits(strap, live)
    at = float(t)
    if action in ("mark", "delete"):
        bt = state.edited.t
        i = int(np.argmin(np.abs(bt - at))) if len(bt) else None
        if i is None or abs(bt[i] - at) > BEAT_MATCH_S:
            raise ReviewError(f"no beat within {BEAT_MATCH_S * 1000:.0f} ms of {at:.3f} s to {action}")
        at = float(bt[i])
    elif action == "unmark":
        near = state.marked_t[np.abs(state.marked_t - at) <= BEAT_MATCH_S] if len(state.marked_t) else []
        if not len(near):
            raise ReviewError(f"no beat marked as an artifact within {BEAT_MATCH_S * 1000:.0f} ms of {at:.3f} s")
        at = float(near[np.argmin(np.abs(near - at))])
    elif action in ("accept", "reject"):
        cands = candidate_corrections(state) if corrections is None else np.asarray(corrections, dtype=float)
        i = int(np.argmin(np.abs(cands - at))) if len(cands) else None
        if i is None or abs(cands[i] - at) > BEAT_MATCH_S:
            raise ReviewError(f"no automatic correction within {BEAT_MATCH_S * 1000:.0f} ms of {at:.3f} s")
        at = float(cands[i])
    probe = ReviewEdit(-1, session_id, "", reviewer, action, at, t_end, kind, reason)
    refused = [why for e, why in apply_edits(strap, [*live, probe]).skipped if e is probe]
    if refused:
        raise ReviewError(refused[0])
    return add_edit(store, session_id, action, reviewer=reviewer, t=at, t_end=t_end, kind=kind, reason=reason)
