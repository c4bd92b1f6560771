"""What a researcher's review does to the beats (pure), the per-phase quality grade, and recording a checked edit.

`apply_edits(beats, edits)` replays the edits in force (`recordings.review`) in the order written on a copy of the
beats; the stored beats are never changed:

- **delete** a beat: the intervals on both sides of it become one (the next beat's RR is their sum);
- **add** a beat at time t: the interval containing t is split in two (each part at least `MIN_RR_S`); the new
  beat's RR is from the beat before, the next beat's RR from the new one; RR sums stay exact;
- **mark** a beat as an artifact (**unmark** takes the mark back): the beat and both intervals touching it are left
  out, like a one-beat gap;
- **bad segment** [start, end] (noise, movement, other): every interval that overlaps it is left out, like a gap;
- **accept / reject** an automatic correction (named by its first replaced beat's time, `hrv.CorrectedBeats.event_t`):
  a rejected one is left as recorded (`artifacts.revert_events`), an accepted one stays corrected.

Left-out beats are removed from the analysed series and the next beat kept starts a new gap-free stretch
(`gap_before`), so no interval or successive difference ever spans left-out data and analysis treats it exactly
like a recording gap. An edit in force that no longer applies (the beats were re-decoded and a beat moved away) is
skipped and listed in `ReviewedBeats.skipped`.

**Quality grade per phase** (`quality_grade`), from the analysed beats of the phase:

- *artifact share*: automatic corrections applied + beats the reviewer marked, added or deleted, per 100 recorded
  beats in the phase;
- *lost share*: % of the phase's length not covered by gap-free analysed data, split into the *bad-segment share*
  (inside bad segments) and the *gap share* (everything else: disconnects, lost contact, marked beats);
- *reviewed*: the beats come from a review and every automatic correction in the phase was accepted or rejected.

A: artifact share ≤ 1 %, lost share ≤ 5 % and reviewed. B: artifact share ≤ 5 % and lost share ≤ 20 % (an
unreviewed phase is at best B). C: anything worse, or less than 60 s of usable data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recordings.review import ReviewEdit, ReviewError
from recordings.store import Beats

BEAT_MATCH_S = 0.1
"""An edit names the beat nearest its time within this many seconds (beats are ≥ 200 ms apart)."""
MIN_RR_S = 0.2
"""An added beat leaves at least this much on either side of it (the store's shortest accepted RR)."""
DECISION_MATCH_S = 0.001
"""An accept/reject names an automatic correction by its first replaced beat's time, within this."""
_EPS_S = 0.001
A_ARTIFACT_PCT, A_LOST_PCT = 1.0, 5.0
B_ARTIFACT_PCT, B_LOST_PCT = 5.0, 20.0
MIN_USABLE_S = 60.0


@dataclass(frozen=True)
class ReviewedBeats:
    """The beats after a review: `beats` is the series to analyse and export (every RR finite)."""

    beats: Beats
    edited: Beats
    """The beats with every edit applied and nothing left out (what the review window draws)."""
    added_t: np.ndarray
    deleted_t: np.ndarray
    marked_t: np.ndarray
    segments: list[tuple[float, float, str]]
    excluded_t: np.ndarray
    """Beats left out (marked, in a bad segment, or whose interval touches one)."""
    accepted_t: np.ndarray
    rejected_t: np.ndarray
    skipped: list[tuple[ReviewEdit, str]] = field(default_factory=list)


def _nearest(t: np.ndarray, at: float) -> int | None:
    if not len(t):
        return None
    i = int(np.argmin(np.abs(t - at)))
    return i if abs(t[i] - at) <= BEAT_MATCH_S else None


def apply_edits(beats: Beats, edits: Sequence[ReviewEdit], *, strict: bool = False) -> ReviewedBeats:
    """Replay `edits` (in force, in the order written) on a copy of `beats` (see the module docstring).

    `strict`: raise ReviewError at the first edit that does not apply, instead of skipping it.
    """
    t = np.asarray(beats.t, dtype=float).copy()
    rr = np.asarray(beats.rr_ms, dtype=float).copy()
    gap = np.asarray(beats.gap_before, dtype=bool).copy()
    lag = np.asarray(beats.arrival_lag_s, dtype=float).copy()
    added: list[float] = []
    deleted: list[float] = []
    marked: list[float] = []
    segments: list[tuple[float, float, str]] = []
    decisions: list[tuple[float, str]] = []
    skipped: list[tuple[ReviewEdit, str]] = []
    for e in edits:
        if not e.in_force:
            continue
        why = None
        if e.action == "delete":
            i = _nearest(t, e.t)
            if i is None:
                why = f"no beat within {BEAT_MATCH_S * 1000:.0f} ms of {e.t:.3f} s to delete"
            else:
                if i + 1 < len(t) and not gap[i + 1]:
                    rr[i + 1] += rr[i]  # the intervals on both sides become one
                    gap[i + 1] = gap[i]
                if any(abs(a - t[i]) < _EPS_S for a in added):
                    added = [a for a in added if abs(a - t[i]) >= _EPS_S]
                else:
                    deleted.append(float(t[i]))
                marked = [m for m in marked if abs(m - t[i]) >= _EPS_S]
                t, rr, gap, lag = (np.delete(x, i) for x in (t, rr, gap, lag))
        elif e.action == "add":
            i = int(np.searchsorted(t, e.t))
            start = t[i] - rr[i] / 1000.0 if i < len(t) else None
            if start is None or not (start + MIN_RR_S - _EPS_S <= e.t <= t[i] - MIN_RR_S + _EPS_S):
                span = "after the last beat" if start is None else f"in the interval {start:.3f}-{t[i]:.3f} s"
                why = (f"a beat at {e.t:.3f} s ({span}) must leave at least {MIN_RR_S * 1000:.0f} ms on both "
                       "sides inside one recorded interval")  # fmt: skip
            else:
                new_rr = (e.t - start) * 1000.0
                rr[i] = (t[i] - e.t) * 1000.0
                t, rr, gap, lag = (np.insert(t, i, e.t), np.insert(rr, i, new_rr), np.insert(gap, i, gap[i]),
                                   np.insert(lag, i, np.nan))  # fmt: skip
                gap[i + 1] = False
                added.append(float(e.t))
        elif e.action == "mark":
            i = _nearest(t, e.t)
            if i is None:
                why = f"no beat within {BEAT_MATCH_S * 1000:.0f} ms of {e.t:.3f} s to mark"
            elif any(abs(m - t[i]) < _EPS_S for m in marked):
                why = f"the beat at {t[i]:.3f} s is already marked as an artifact"
            else:
                marked.append(float(t[i]))
        elif e.action == "unmark":
            near = [m for m in marked if abs(m - e.t) <= BEAT_MATCH_S]
            if not near:
                why = f"no beat marked as an artifact within {BEAT_MATCH_S * 1000:.0f} ms of {e.t:.3f} s"
            else:
                marked.remove(min(near, key=lambda m: abs(m - e.t)))
        elif e.action in ("accept", "reject"):
            decisions = [d for d in decisions if abs(d[0] - e.t) >= DECISION_MATCH_S] + [(float(e.t), e.action)]
        elif e.action == "bad-segment":
            segments.append((float(e.t), float(e.t_end), str(e.kind)))
        else:
            why = f"unknown review action {e.action!r}"
        if why is not None:
            if strict:
                raise ReviewError(why)
            skipped.append((e, why))
    drop = np.zeros(len(t), dtype=bool)
    start = t - rr / 1000.0
    for s, end in [(m, m) for m in marked] + [(s, end) for s, end, _ in segments]:
        drop |= (start <= end + _EPS_S) & (t >= s - _EPS_S)
    after_drop = np.concatenate([[False], drop[:-1]]) if len(t) else drop
    keep = ~drop
    new_gap = (gap | after_drop)[keep]
    return ReviewedBeats(
        beats=Beats(t[keep], rr[keep], new_gap, lag[keep]),
        edited=Beats(t, rr, gap, lag),
        added_t=np.array(added),
        deleted_t=np.array(deleted),
        marked_t=np.array(marked),
        segments=segments,
        excluded_t=t[drop],
        accepted_t=np.array([d[0] for d in decisions if d[1] == "accept"]),
        rejected_t=np.array([d[0] for d in decisions if d[1] == "reject"]),
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------------------- quality grade


def quality_grade(
    artifact_pct: float, bad_pct: float, gap_pct: float, *, reviewed: bool, usable_s: float, undecided: int = 0
) -> tuple[str, str]:
    """The phase's grade A/B/C and the reason (the rule is in the module docstring); `reviewed`: the beats come from
    a review, `undecided`: automatic corrections in the phase the reviewer has not accepted or rejected."""
    lost = bad_pct + gap_pct
    if usable_s < MIN_USABLE_S:
        return "C", f"only {usable_s:.0f} s of usable data (< {MIN_USABLE_S:.0f} s)"
    if artifact_pct > B_ARTIFACT_PCT:
        return "C", f"artifacts {artifact_pct:.1f} % > {B_ARTIFACT_PCT:g} %"
    if lost > B_LOST_PCT:
        return "C", f"{lost:.1f} % lost (bad segments {bad_pct:.1f} %, gaps {gap_pct:.1f} %) > {B_LOST_PCT:g} %"
    missed = []
    if artifact_pct > A_ARTIFACT_PCT:
        missed.append(f"artifacts {artifact_pct:.1f} % > {A_ARTIFACT_PCT:g} %")
    if lost > A_LOST_PCT:
        missed.append(f"{lost:.1f} % lost > {A_LOST_PCT:g} %")
    if not reviewed:
        missed.append("not reviewed")
    elif undecided:
        missed.append(f"{undecided} correction{'s' if undecided > 1 else ''} not yet accepted or rejected")
    if missed:
        return "B", "; ".join(missed)
    return "A", f"reviewed, artifacts {artifact_pct:.1f} %, {lost:.1f} % lost"


def _overlap(spans: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end) covered by the union of `spans`."""
    total, last = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in spans):
        a = max(a, last)
        if b > a:
            total += b - a
            last = b
    return total


def _in(values: np.ndarray, start: float, end: float) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[(values >= start) & (values < end)]


def phase_review(
    phases: Sequence[tuple[float, float]],
    seg_span: np.ndarray,
    recorded_t: np.ndarray,
    event_t: np.ndarray,
    edits: Sequence[ReviewEdit],
    reviewed: ReviewedBeats | None,
) -> list[dict[str, Any]]:
    """Per phase (start, end): edits in force by action, the shares the grade rests on, and the grade.

    `seg_span`, `recorded_t`, `event_t` are the analysed beats' `hrv.CorrectedBeats` fields (gap-free stretches,
    beats before correction, automatic corrections applied); `reviewed` is None when the beats are not a review.
    """
    rows = []
    segments = [(s, e) for s, e, _ in reviewed.segments] if reviewed else []
    accepted = reviewed.accepted_t if reviewed else np.zeros(0)
    spans = [(float(a), float(b)) for a, b in np.asarray(seg_span).reshape(-1, 2)]
    for start, end in phases:
        length = max(end - start, 1e-9)
        counts: dict[str, int] = {}
        for e in edits:
            if not e.in_force:
                continue
            inside = e.t < end and (e.t_end if e.action == "bad-segment" else e.t) >= start
            if inside:
                counts[e.action] = counts.get(e.action, 0) + 1
        covered = _overlap(spans, start, end)
        bad_s = _overlap(segments, start, end)
        bad_pct = 100.0 * bad_s / length
        gap_pct = max(0.0, 100.0 * (length - covered - bad_s) / length)
        events = _in(event_t, start, end)
        manual = sum(len(_in(x, start, end)) for x in ((reviewed.marked_t, reviewed.added_t, reviewed.deleted_t)
                                                         if reviewed else ()))  # fmt: skip
        n_recorded = len(_in(recorded_t, start, end))
        artifact_pct = 100.0 * (len(events) + manual) / n_recorded if n_recorded else 0.0
        undecided = int(sum(1 for x in events if not np.any(np.abs(accepted - x) < DECISION_MATCH_S)))
        grade, why = quality_grade(artifact_pct, bad_pct, gap_pct, reviewed=reviewed is not None, usable_s=covered,
                                   undecided=undecided)  # fmt: skip
        rows.append({"edits": counts, "n_edits": sum(counts.values()), "artifact_pct": artifact_pct,
                     "bad_segment_pct": bad_pct, "gap_pct": gap_pct, "undecided_corrections": undecided,
                     "grade": grade, "grade_reason": why})  # fmt: skip
    return rows
