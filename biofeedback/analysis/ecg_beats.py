"""Beats from the recorded ECG (Polar H10 PMD), on the session clock, and their agreement with the strap's beats.

**Detection.** The stored ECG frames are put on the session clock by `recordings.ecg_time.map_ecg_chunks` (sample
rate measured on the strap's own clock, about 130.16 Hz on a real H10, not the nominal 130 Hz; drift and offset
from the lower envelope of arrival times). Each gap-free ECG stretch of at least `MIN_STRETCH_S` is cleaned and its
R peaks found by neurokit2 (``ecg_clean`` then ``ecg_peaks``, method "neurokit", both with that measured sampling
rate). A peak is moved to the largest cleaned sample within ±`REFINE_SAMPLES` and refined to sub-sample precision
by a parabola through it and its two neighbours (vertex offset clipped to ±0.5 sample), so a beat time is not
quantised to the 7.7 ms sample period. The cleaning is zero-phase (``filtfilt``), so it does not move the peak.
Sample times inside a stretch are linear in the sample index, so the fractional index maps to
``t[k] + δ / fs``. No beat is ever placed in an ECG gap and no interval spans one: the first beat of a stretch has
no RR (NaN) and starts a new stretch (`gap_before`), like the strap's beats. A detected peak lower than
`MIN_R_SHARE` of the stretch's median R height is not a beat (noise while the electrodes lost the skin, or, on
the real H10 recording, six T waves found inside long compensatory pauses, at 3-13 % of the median R): it is
dropped and the next beat starts a new stretch, so no interval spans it. An inverted lead (R negative) is not
handled: the H10 is worn one way.

**Agreement with the strap** (`agreement`), per phase, where both the ECG and the strap's beats cover the time:

- each strap beat is paired with the nearest ECG beat after removing a *local* offset (the strap's beat times are
  reconstructed from RR sums with an anchor from arrival or phone times, the ECG's from its sensor clock, so the
  two series can be apart by a few ms to seconds, drifting slowly): per block of `OFFSET_BLOCK_BEATS` strap beats
  (with half a block of context either side), the strap − ECG difference that most candidate pairs within
  `OFFSET_SEARCH_S` agree on (the candidate with the most others within ±`OFFSET_AGREE_S`; a tie goes to the
  smallest), refined to the median of the differences within `OFFSET_AGREE_S` of it. Because the vote
  needs the *pattern* of beats to line up, an offset of a whole beat or cycle loses to the true one. A pair must
  be within `MATCH_TOLERANCE_S` once the offset is removed, and one-to-one (the nearer wins);
- a *matched interval* is a strap RR whose two beats (consecutive, no gap between them) are paired with two
  consecutive ECG beats of one ECG stretch; ΔRR = strap RR − ECG RR (ms);
- reported: the median |ΔRR|, the share of matched intervals with |ΔRR| > `DISAGREE_MS` (20 ms), matched beats,
  strap beats without an ECG beat (`strap_only`) and ECG beats without a strap beat (`ecg_only`, e.g. beats the
  strap missed), and the median offset (strap − ECG time, ms). Beats within `EDGE_S` of the end of either
  coverage are not counted as unmatched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import neurokit2 as nk
import numpy as np

from recordings.ecg_time import EcgTimeError, EcgTimeline, map_ecg_chunks
from recordings.store import Store

MIN_STRETCH_S = 5.0
"""ECG stretches shorter than this are not searched for beats (the filters and the detector need context)."""
REFINE_SAMPLES = 2
MIN_R_SHARE = 0.2
"""A detected peak lower than this share of the stretch's median R height is noise (electrodes off the skin)."""
OFFSET_SEARCH_S = 3.0
"""Strap − ECG time differences up to this size are candidates for the local offset (imported strap beats placed
by phone time can be seconds apart from the ECG's sensor time: 2.0 s on the real H10 recording)."""
OFFSET_BLOCK_BEATS = 16
"""The offset is found per block of this many strap beats (with half a block of context on each side)."""
OFFSET_AGREE_S = 0.015
MATCH_TOLERANCE_S = 0.08
DISAGREE_MS = 20.0
EDGE_S = 1.0


class NoEcgError(ValueError):
    """The session has no usable ECG (none recorded, or frames that cannot be put on the session clock)."""


@dataclass(frozen=True)
class EcgBeats:
    """R peaks of a session's ECG: time (s, session clock), RR ending at each (ms; NaN first in a stretch)."""

    t: np.ndarray
    rr_ms: np.ndarray
    gap_before: np.ndarray
    fs_hz: float
    stretches: list[tuple[float, float]]
    """(first, last sample time) of every ECG stretch searched for beats."""


def detect_r_peaks(ecg: np.ndarray, fs_hz: float) -> np.ndarray:
    """Fractional sample indices of the R peaks of one gap-free ECG stretch (neurokit2, parabolic refinement)."""
    return _r_peaks(ecg, fs_hz)[0]


def _r_peaks(ecg: np.ndarray, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """R peaks (fractional indices) and, per peak, whether a peak too small to be a beat was dropped before it."""
    x = np.asarray(ecg, dtype=float)
    if x.ndim != 1 or not np.all(np.isfinite(x)):
        raise ValueError("ECG stretch must be 1-D and finite")
    if not fs_hz > 0:
        raise ValueError(f"sampling rate must be > 0, got {fs_hz!r}")
    if len(x) < MIN_STRETCH_S * fs_hz:
        return np.zeros(0), np.zeros(0, dtype=bool)
    clean = np.asarray(nk.ecg_clean(x, sampling_rate=fs_hz, method="neurokit"), dtype=float)
    _, info = nk.ecg_peaks(clean, sampling_rate=fs_hz, method="neurokit")
    found: dict[int, float] = {}
    for k in np.asarray(info["ECG_R_Peaks"], dtype=int):
        lo, hi = max(0, k - REFINE_SAMPLES), min(len(clean), k + REFINE_SAMPLES + 1)
        k = lo + int(np.argmax(clean[lo:hi]))
        if k == 0 or k == len(clean) - 1:
            continue  # a peak at the stretch's edge cannot be located: it may lie outside
        y0, y1, y2 = clean[k - 1 : k + 2]
        denom = y0 - 2.0 * y1 + y2
        found[k] = k + (float(np.clip(0.5 * (y0 - y2) / denom, -0.5, 0.5)) if denom < 0 else 0.0)
    if not found:
        return np.zeros(0), np.zeros(0, dtype=bool)
    ks = np.array(sorted(found))
    height = clean[ks]
    real = height >= MIN_R_SHARE * float(np.median(height))
    dropped_before = np.concatenate([[0], np.cumsum(~real)[:-1]])  # small peaks before each
    frac = np.array([found[k] for k in ks])
    gap = np.diff(np.concatenate([[0], dropped_before[real]])) > 0
    return frac[real], gap


def beats_from_timeline(tl: EcgTimeline) -> EcgBeats:
    """R peaks of every gap-free stretch of an ECG timeline, on the session clock."""
    times, gaps, spans = [], [], []
    for seg in range(tl.n_segments):
        idx = np.flatnonzero(tl.segment == seg)
        if len(idx) < MIN_STRETCH_S * tl.fs_hz:
            continue
        spans.append((float(tl.t[idx[0]]), float(tl.t[idx[-1]])))
        frac, noise_before = _r_peaks(tl.uv[idx], tl.fs_hz)
        if not len(frac):
            continue
        k = np.floor(frac).astype(int)
        t = tl.t[idx][k] + (frac - k) / tl.fs_hz
        times.append(t)
        gaps.append((np.arange(len(t)) == 0) | noise_before)
    if not times:
        return EcgBeats(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), tl.fs_hz, spans)
    t = np.concatenate(times)
    gap = np.concatenate(gaps)
    rr = np.concatenate([[np.nan], np.diff(t) * 1000.0])
    rr[gap] = np.nan
    return EcgBeats(t, rr, gap, tl.fs_hz, spans)


def ecg_beats(store: Store, session_id: int) -> EcgBeats:
    """The R peaks of a stored session's ECG (see the module docstring); `NoEcgError` without usable ECG."""
    chunks = store.ecg_chunks(session_id)
    if not chunks:
        raise NoEcgError(f"session {session_id} has no ECG recorded (record with --ecg on a Polar H10)")
    try:
        tl = map_ecg_chunks(chunks)
    except EcgTimeError as exc:
        raise NoEcgError(f"session {session_id}: the ECG cannot be put on the session clock: {exc}") from None
    return beats_from_timeline(tl)


def ecg_beat_times(store: Store, session_id: int) -> np.ndarray:
    """Beat times (s, session clock) from a stored session's ECG; `NoEcgError` when it has none."""
    return ecg_beats(store, session_id).t


# ------------------------------------------------------------------------------------------------ agreement


@dataclass
class PhaseAgreement:
    """ECG beats against strap beats in one phase; values are None where nothing could be compared."""

    phase: str
    start_s: float
    end_s: float
    strap_beats: int = 0
    ecg_beats: int = 0
    matched: int = 0
    strap_only: int = 0
    ecg_only: int = 0
    intervals: int = 0
    median_abs_drr_ms: float | None = None
    over_20ms_pct: float | None = None
    offset_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stretch_ids(gap_before: np.ndarray) -> np.ndarray:
    return np.cumsum(gap_before.astype(int)) - (1 if len(gap_before) and gap_before[0] else 0)


def _nearest(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the element of sorted `ref` nearest to each of `x` (ref non-empty)."""
    j = np.clip(np.searchsorted(ref, x), 1, max(len(ref) - 1, 1))
    j0 = np.clip(j - 1, 0, len(ref) - 1)
    j1 = np.clip(j, 0, len(ref) - 1)
    return np.where(np.abs(x - ref[j0]) <= np.abs(ref[j1] - x), j0, j1)


def _local_offsets(strap_t: np.ndarray, ecg_t: np.ndarray) -> np.ndarray:
    """Per strap beat of one stretch: the offset (strap − ECG, s) most pairs of its block agree on (NaN: none)."""
    lo = np.searchsorted(ecg_t, strap_t - OFFSET_SEARCH_S)
    hi = np.searchsorted(ecg_t, strap_t + OFFSET_SEARCH_S, side="right")
    width = int(np.max(hi - lo, initial=0))
    out = np.full(len(strap_t), np.nan)
    if width == 0:
        return out
    q = lo[:, None] + np.arange(width)[None, :]
    diffs = np.where(q < hi[:, None], strap_t[:, None] - ecg_t[np.minimum(q, len(ecg_t) - 1)], np.nan)
    half = OFFSET_BLOCK_BEATS // 2
    for b0 in range(0, len(strap_t), OFFSET_BLOCK_BEATS):
        ctx = diffs[max(0, b0 - half) : b0 + OFFSET_BLOCK_BEATS + half].ravel()
        ctx = np.sort(ctx[np.isfinite(ctx)])
        if not ctx.size:
            continue
        votes = np.searchsorted(ctx, ctx + OFFSET_AGREE_S, side="right") - np.searchsorted(ctx, ctx - OFFSET_AGREE_S)
        tied = ctx[votes == votes.max()]
        best = tied[np.argmin(np.abs(tied))]
        out[b0 : b0 + OFFSET_BLOCK_BEATS] = float(np.median(ctx[np.abs(ctx - best) <= OFFSET_AGREE_S]))
    return out


def match_beats(
    strap_t: np.ndarray, strap_gap: np.ndarray, ecg_t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per strap beat: the index of its paired ECG beat (−1: none), and the offset removed (s, NaN: none)."""
    pair = np.full(len(strap_t), -1)
    offset = np.full(len(strap_t), np.nan)
    if not len(strap_t) or not len(ecg_t):
        return pair, offset
    sid = _stretch_ids(strap_gap)
    for s in np.unique(sid):
        idx = np.flatnonzero(sid == s)
        off = _local_offsets(strap_t[idx], ecg_t)
        has = np.isfinite(off)
        shifted = strap_t[idx] - np.where(has, off, 0.0)
        j = _nearest(ecg_t, shifted)
        ok = has & (np.abs(shifted - ecg_t[j]) <= MATCH_TOLERANCE_S)
        # one-to-one: an ECG beat claimed by two strap beats goes to the nearer
        order = np.argsort(np.abs(shifted - ecg_t[j]), kind="stable")
        taken: set[int] = set()
        for k in order:
            if ok[k] and int(j[k]) in taken:
                ok[k] = False
            elif ok[k]:
                taken.add(int(j[k]))
        pair[idx[ok]] = j[ok]
        offset[idx] = off
    return pair, offset


def _covered(t: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(len(t), dtype=bool)
    for a, b in spans:
        inside |= (t >= a + EDGE_S) & (t <= b - EDGE_S)
    return inside


def agreement(
    strap_t: np.ndarray,
    strap_rr_ms: np.ndarray,
    strap_gap: np.ndarray,
    ecg: EcgBeats,
    phases: Sequence[tuple[str, float, float]],
) -> list[PhaseAgreement]:
    """Per phase `(name, start_s, end_s)`: how the ECG's beats agree with the strap's (module docstring)."""
    st = np.asarray(strap_t, dtype=float)
    srr = np.asarray(strap_rr_ms, dtype=float)
    sgap = np.asarray(strap_gap, dtype=bool)
    if not (st.shape == srr.shape == sgap.shape):
        raise ValueError("strap beat times, RR and gap flags must have the same length")
    pair, offset = match_beats(st, sgap, ecg.t)
    # interval i (ending at strap beat i) is matched when beats i-1, i pair with consecutive beats of one stretch
    prev = np.concatenate([[-1], pair[:-1]])
    ok = (pair > 0) & (prev >= 0) & (pair == prev + 1) & ~sgap & np.isfinite(srr)
    ok[ok] &= ~ecg.gap_before[pair[ok]]
    drr = np.full(len(st), np.nan)
    drr[ok] = srr[ok] - ecg.rr_ms[pair[ok]]
    # coverage compared on the ECG's time: each strap stretch shifted by its median offset
    sid = _stretch_ids(sgap)
    shift = np.zeros(len(st))
    strap_spans = []
    for s in np.unique(sid):
        idx = np.flatnonzero(sid == s)
        known = offset[idx][np.isfinite(offset[idx])]
        shift[idx] = float(np.median(known)) if known.size else 0.0
        first = st[idx[0]] - (srr[idx[0]] / 1000.0 if np.isfinite(srr[idx[0]]) else 0.0)
        strap_spans.append((float(first - shift[idx[0]]), float(st[idx[-1]] - shift[idx[0]])))
    strap_in_ecg = _covered(st - shift, ecg.stretches)
    ecg_in_strap = _covered(ecg.t, strap_spans)
    paired_ecg = np.zeros(len(ecg.t), dtype=bool)
    paired_ecg[pair[pair >= 0]] = True
    out = []
    for name, start, end in phases:
        row = PhaseAgreement(str(name), float(start), float(end))
        s_in = (st >= start) & (st < end) & strap_in_ecg
        e_in = (ecg.t >= start) & (ecg.t < end) & ecg_in_strap
        row.strap_beats, row.ecg_beats = int(s_in.sum()), int(e_in.sum())
        row.matched = int((s_in & (pair >= 0)).sum())
        row.strap_only = row.strap_beats - row.matched
        row.ecg_only = int((e_in & ~paired_ecg).sum())
        d = drr[s_in & ok]
        row.intervals = int(d.size)
        if d.size:
            row.median_abs_drr_ms = float(np.median(np.abs(d)))
            row.over_20ms_pct = float(100.0 * np.mean(np.abs(d) > DISAGREE_MS))
            row.offset_ms = float(np.median(offset[s_in & ok]) * 1000.0)
        elif not row.strap_beats:
            row.notes.append("no time in this phase with both ECG and strap beats")
        else:
            row.notes.append("no strap interval matched an ECG interval")
        out.append(row)
    return out


def session_agreement(
    store: Store, session_id: int, phases: Sequence[tuple[str, float, float]]
) -> list[PhaseAgreement]:
    """`agreement` of a stored session's ECG beats with its strap beats; `NoEcgError` without ECG."""
    ecg = ecg_beats(store, session_id)
    beats = store.beats(session_id)
    return agreement(beats.t, beats.rr_ms, beats.gap_before, ecg, phases)
