"""Everything the beat review window shows and does, without Qt (the window in `biofeedback.display.review` is handed
one of these by `app.py`, so the display never imports the analysis layer).

`refresh()` re-reads the review from the store: the beats with every edit applied (`state`), the automatic
corrections a reviewer can decide (`corrections`) and the per-phase analysis of the reviewed beats (`analysis`:
RMSSD, grade, edits). `record` and `undo` store an edit (`beat_source.record_edit`, `recordings.review.undo_last`)
and refresh.
"""

from __future__ import annotations

import numpy as np

from biofeedback.analysis.analyze import SessionAnalysis, analyze_session, phase_windows
from biofeedback.analysis.beat_source import record_edit
from biofeedback.analysis.review import DECISION_MATCH_S, ReviewedBeats, apply_edits
from recordings.ecg_time import EcgTimeError, EcgTimeline, map_ecg_chunks
from recordings.review import ReviewEdit, edits, edits_in_force, undo_last
from recordings.store import Store


class ReviewSession:
    """One session under review on a writable store."""

    def __init__(self, store: Store, session_id: int) -> None:
        self.store, self.session_id = store, session_id
        self.info = store.session(session_id)
        self.strap = store.beats(session_id)
        self.ecg: EcgTimeline | None = None
        try:
            chunks = store.ecg_chunks(session_id)
            self.ecg = map_ecg_chunks(chunks) if chunks else None
        except EcgTimeError:
            self.ecg = None
        self.windows = phase_windows(store, session_id)
        self.state: ReviewedBeats
        self.corrections: np.ndarray
        self.analysis: SessionAnalysis
        self.refresh()

    def refresh(self) -> None:
        live = edits_in_force(self.store, self.session_id)
        self.state = apply_edits(self.strap, live)
        self.analysis = analyze_session(self.store, self.session_id, beats="reviewed" if live else "auto")
        tl = self.analysis.timeline  # the same beats and rejections `candidate_corrections` would correct again
        self.corrections = np.sort(np.concatenate([tl.event_t, tl.rejected_t]))

    def status(self, t: float) -> str:
        """`accepted`, `rejected` or `undecided` for the correction at `t`."""
        for name, values in (("accepted", self.state.accepted_t), ("rejected", self.state.rejected_t)):
            if len(values) and np.min(np.abs(values - t)) < DECISION_MATCH_S:
                return name
        return "undecided"

    def record(self, action: str, *, reviewer: str, t: float, t_end: float | None = None, kind: str | None = None,
               reason: str = "") -> ReviewEdit:  # fmt: skip
        edit = record_edit(self.store, self.session_id, action, reviewer=reviewer, t=t, t_end=t_end, kind=kind,
                           reason=reason, corrections=self.corrections)  # fmt: skip
        self.refresh()
        return edit

    def undo(self, *, reviewer: str, reason: str = "") -> ReviewEdit:
        done = undo_last(self.store, self.session_id, reviewer=reviewer, reason=reason)
        self.refresh()
        return done

    def audit(self) -> list[ReviewEdit]:
        return edits(self.store, self.session_id)
