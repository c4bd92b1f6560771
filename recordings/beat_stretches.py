"""Beat times for imported RR series: each interval kept, stretches split where the file's own times show a gap.

Pure functions. An imported series is a list of intervals in file order; each may carry the file's time for it
(a beat time, an offset from the start, or the time an app stamped the row) and may follow an invalid value (0,
no contact, a sensor's "invalid" flag), which is a gap. Within a stretch beats are spaced exactly by their RR (the
sensor's intervals are more precise than any app's stamps); a stretch is placed at the median offset between the
file's times and the RR sum, so a few late or early stamps do not move it. The first interval of every stretch is a
real measured interval and is kept, as is the last. Times are strictly increasing: a stretch never starts before the
previous one ended.

Where the file has times, a new stretch starts when its time runs ahead of the RR sum by more than the tolerance
(beats are missing there); a stamp that falls behind the RR sum (an app's clock stepping back) is tolerated and
noted, and beats keep following the RR intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

EXACT_TOLERANCE_S = 0.3
"""Missing time that starts a new stretch when the file's times are beat times (they match the RR sum to ≤ 20 ms)."""
STAMP_TOLERANCE_S = 2.0
"""... when they are an app's jittery row stamps (the same 2 s a live strap's silence needs to count as a gap)."""
_REF_ROWS = 10


@dataclass(frozen=True, slots=True)
class Interval:
    rr_ms: float
    t_s: float | None = None  # the file's time of the beat ending this interval, on the session clock
    gap_before: bool = False  # an invalid value, lost contact or a known break precedes it
    line: int | None = None  # where it came from, for notes
    skipped_ms: float = 0.0  # duration of invalid intervals just before it, when the file tells (0: unknown)


@dataclass
class Stretches:
    t: np.ndarray
    rr_ms: np.ndarray
    gap_before: np.ndarray
    lag_s: np.ndarray  # file time − placed beat time (0 where the file has no time for the beat)
    notes: list[str] = field(default_factory=list)


def place_beats(intervals: Sequence[Interval], *, tolerance_s: float | None = None) -> Stretches:
    """Beat times for every interval (see the module docstring); `tolerance_s` None chooses by the file's jitter."""
    n = len(intervals)
    rr = np.array([iv.rr_ms for iv in intervals], dtype=float)
    if n == 0:
        empty = np.zeros(0)
        return Stretches(empty, empty, np.zeros(0, bool), empty)
    if np.any(rr <= 0):
        raise ValueError("RR intervals must be positive")
    skipped = np.array([iv.skipped_ms for iv in intervals], dtype=float)
    cum = np.cumsum(rr + skipped) / 1000.0  # the chain runs on through intervals of known length that are not kept
    ft = np.array([np.nan if iv.t_s is None else iv.t_s for iv in intervals], dtype=float)
    has_t = ~np.isnan(ft)
    gap = np.array([iv.gap_before for iv in intervals], dtype=bool)
    gap[0] = True
    notes: list[str] = []
    lag = ft - cum
    if tolerance_s is None:
        tolerance_s = _tolerance(lag, has_t, gap)
    explicit = gap.copy()
    early = np.zeros(n, bool)
    if has_t.any():
        ref: list[float] = []
        for i in range(n):
            if gap[i] and skipped[i] <= 0:
                ref = []  # a break of unknown length: the stamps after it set a new level
            if not has_t[i]:
                continue
            if ref:
                level = float(np.median(ref[-_REF_ROWS:]))
                if lag[i] - level > tolerance_s:
                    gap[i] = True
                    ref = []
                elif lag[i] - level < -tolerance_s:
                    early[i] = True
                    continue
            ref.append(float(lag[i]))
    starts = np.flatnonzero(gap)
    ends = np.append(starts[1:], n)
    t = np.empty(n)
    prev_end = -np.inf
    shifted = 0
    offset = 0.0
    for s, e in zip(starts, ends, strict=True):
        use = has_t[s:e] & ~early[s:e]
        if use.any():
            offset = float(np.median(lag[s:e][use]))
        elif skipped[s] <= 0 and np.isfinite(prev_end):
            offset = prev_end - cum[s] + rr[s] / 1000.0  # no usable time: right after the previous stretch
        # else: the chain runs on from the previous stretch through the skipped intervals
        begin = offset + cum[s] - rr[s] / 1000.0  # when the stretch's first interval began
        if begin < prev_end:
            offset += prev_end - begin
            shifted += 1
        t[s:e] = offset + cum[s:e]
        prev_end = float(t[e - 1])
    out_lag = np.where(has_t, ft - t, 0.0)
    n_gaps = int(gap[1:].sum())
    if has_t.any():
        found = int((gap & ~explicit).sum())
        notes.append(
            f"beat times from the file's time column: {len(starts)} stretch(es); {n_gaps - found} gap(s) at invalid "
            f"values, {found} where the times run ahead of the RR sum by > {tolerance_s:g} s (missing beats)"
        )
    elif n_gaps:
        notes.append(f"{n_gaps} gap(s) of unknown length (no time column): beat times follow the RR sum across them")
    if early.any():
        lines = [intervals[i].line for i in np.flatnonzero(early)]
        where = f" (lines {lines[0]}–{lines[-1]})" if lines[0] is not None else ""
        notes.append(f"{int(early.sum())} time stamp(s) fall behind the RR sum by > {tolerance_s:g} s{where}: "
                     "tolerated, beats follow the RR intervals")  # fmt: skip
    if shifted:
        notes.append(f"{shifted} stretch(es) moved later so as not to overlap the previous one")
    return Stretches(t, rr, gap, out_lag, notes)


def _tolerance(lag: np.ndarray, has_t: np.ndarray, gap: np.ndarray) -> float:
    """Exact beat times (Empatica offsets) allow a fine gap test; an app's row stamps need the 2 s a strap gets."""
    idx = np.flatnonzero(has_t[1:] & has_t[:-1] & ~gap[1:]) + 1
    if len(idx) < 3:
        return STAMP_TOLERANCE_S
    jitter = float(np.median(np.abs(lag[idx] - lag[idx - 1])))
    return EXACT_TOLERANCE_S if jitter <= 0.02 else STAMP_TOLERANCE_S
