"""Beat times from a heart-rate strap's RR intervals: one design, live and after the session.

A strap (Heart Rate Measurement, 0x2A37) sends about once a second, on its own clock, the RR intervals of the beats
completed since its previous notification, but no beat times. The host receives each notification late (0–300 ms
over BLE, sometimes more, sometimes two at once), never early. The design:

- **Stretches.** Within a gap-free stretch beat `k` is at `a + b · S_k`, where `S_k` is the strap's RR sum (strap
  seconds, exact 1/1024 s units) from the stretch's anchor to beat `k`. Times therefore strictly increase and their
  spacing is `b · RR` by construction; no interval is ever invented. The first beat of a stretch keeps its RR: the
  strap measured it (from a beat we were not told about), so it counts as an interval; only the successive
  difference across the gap does not exist.
- **Anchor and drift from the lower envelope.** Each notification gives a point (`S` at its last beat, arrival).
  Arrival can be late but never early, so the line `a + b · S` lies below every point: `recordings.clock_fit`
  fits it (the module ECG device time uses too; beats use its `block_floor_fit`, because a notification is sent
  up to one RR after its last beat, a long-tailed delay the ECG frames do not have: the drift comes from the
  least-delayed notification of every minute), so the least-delayed notifications anchor the stretch and the
  strap's clock drift (`b − 1`, ±50 ppm for real straps) is estimated rather than accumulated. One slope is shared
  by every stretch of a session (one crystal); each stretch has its own offset `a`.
- **Live** (`LiveBeatTimeline`): `a` is the lowest `arrival − S` of the last `LIVE_WINDOW_S` seconds (so it follows
  drift), `b = 1`. An emitted beat never moves: a better anchor is slewed in by at most `LIVE_SLEW_FRACTION` of each
  new beat's RR, so live spacing differs from RR by at most 2 % while the anchor settles (a late first notification
  can leave live times up to its lateness late for a few dozen beats).
- **After the session** (`fit_beat_times`, run by `recordings.decode.rebuild_beats` when a session ends or an
  interrupted one is recovered): the decoded beats are rebuilt from the raw layer with the whole-session fit; the raw
  layer never changes. The drift, the first notification's delay over the line (how late the live anchor started)
  and the median delay are kept per stretch (`StretchInfo`).
- **Gaps.** A new stretch starts on a disconnect, lost contact, a malformed heart-rate packet, or lasting evidence
  that beats are missing: every `arrival − S` for at least `MISSING_BEATS_EVIDENCE_S` seconds above the floor of the
  minutes before by more than `MISSING_BEATS_FRACTION` × RR + `MISSING_BEATS_MARGIN_S` (lost beats lift them all
  by their RR sum, while one late or bunched delivery lifts one point, and the beat-to-notification delay alone
  stays below one RR). Never on one late or bunched delivery. A single silently dropped RR value can therefore go
  unnoticed (its beats then sit one RR early, still spaced by their RR); two or more are found.

Limits: the line rests on the least-delayed notifications, and a notification is sent up to one RR after its last
beat, so times would be biased late by the smallest (beat-to-tick + transport) delay of the stretch; `floor_bias`
estimates that delay from how densely delays crowd near zero and lowers the line by it (beats stay before their
notifications). Measured over an hour of default BLE timing: median error 2–5 ms, maximum about 11 ms.
The bias is largest when the heart beats about once per notification (60/min) with little
variability: the beat-to-tick delay then barely changes and no notification is much less delayed than the others.
The property tests bound the error by that smallest delay + 60 ms (after the session) and + 200 ms (live, once
settled); `benchmarks/bench_beat_timing.py` measures an hour. If a stretch's fitted first beat would not follow the
previous stretch's last beat, the stretch is moved just after it (`MIN_STRETCH_SEPARATION_S`) so times stay increasing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .clock_fit import block_floor_fit

RR_UNITS_PER_S = 1024.0
LIVE_WINDOW_S = 120.0
"""Live anchor: lowest arrival − RR sum over this many seconds of notifications."""
LIVE_SLEW_FRACTION = 0.02
"""Live: the anchor moves by at most this share of a beat's RR per beat (no emitted beat ever moves)."""
MISSING_BEATS_EVIDENCE_S = 60.0
MISSING_BEATS_MIN_NOTIFICATIONS = 20
MISSING_BEATS_FRACTION = 1.25
MISSING_BEATS_MARGIN_S = 0.05
MISSING_BEATS_FLOOR_S = 180.0
"""The floor that elevated points are compared with: lowest arrival − RR sum of this many seconds before them."""
MAX_STRAP_DRIFT = 100e-6
"""Slope bounds of the whole-session fit: 1 ± 100 ppm (real straps: within ±50 ppm)."""
MIN_STRETCH_SEPARATION_S = 0.001
FLOOR_BLOCK_S = 60.0
"""Whole-session fit: the least-delayed notification of every minute of RR sum is one floor point of the drift line."""
FLOOR_BIAS_QUANTILE = 0.05
FLOOR_BIAS_MIN_NOTIFICATIONS = 30
MIN_DRIFT_SPAN_S = 300.0
"""Below this much RR sum the drift is not estimated (b = 1, drift unknown)."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One decoded heart-rate notification: arrival on the session clock and its RR values (1/1024 s)."""

    packet_id: int | None
    t: float
    rr_1024: tuple[int, ...]
    break_before: str | None = None
    """Why a new stretch starts at this notification ('start', 'disconnect', 'contact', 'malformed'), else None."""


@dataclass(frozen=True, slots=True)
class BeatRow:
    t: float
    rr_ms: float
    gap_before: bool
    arrival_lag_s: float
    """Arrival of the beat's notification minus the beat time (s): the transport plus beat-to-tick delay."""
    packet_id: int | None


@dataclass(frozen=True, slots=True)
class StretchInfo:
    """One gap-free stretch as fitted after the session."""

    index: int
    reason: str
    t_first: float
    t_last: float
    n_beats: int
    n_notifications: int
    drift_ppm: float
    """(b − 1) · 10⁶: positive when the strap's clock runs slow against the session clock; NaN when the recording
    is too short to tell drift from delay (the fit then takes the strap's clock as exact, b = 1)."""
    anchor_delay_s: float
    """How far above the fitted line the stretch's first notification arrived (the live anchor's initial error)."""
    median_delay_s: float


class MissingBeatsWatch:
    """Lasting evidence that the RR sum fell behind the arrival floor (beats missing without a reported gap)."""

    def __init__(self) -> None:
        self._floor: deque[tuple[float, float]] = deque()  # (arrival, arrival − S) of non-elevated points
        self._elevated: list[tuple[int, float, float]] = []  # (index, arrival, value) since elevation began
        self._rr_typical: float | None = None

    def push(self, index: int, arrival: float, value: float, rr_s: Sequence[float]) -> int | None:
        """Add a point; returns the index where missing beats began once the evidence lasts, else None."""
        if len(rr_s):
            mean = float(np.mean(rr_s))
            self._rr_typical = mean if self._rr_typical is None else 0.9 * self._rr_typical + 0.1 * mean
        while self._floor and self._floor[0][0] < arrival - MISSING_BEATS_FLOOR_S - MISSING_BEATS_EVIDENCE_S:
            self._floor.popleft()
        if not self._floor:
            self._floor.append((arrival, value))
            return None
        floor = min(v for _t, v in self._floor)
        threshold = MISSING_BEATS_FRACTION * (self._rr_typical or 1.0) + MISSING_BEATS_MARGIN_S
        if value - floor <= threshold:
            for _i, t, v in self._elevated:  # they were only late deliveries: genuine points of the envelope
                self._floor.append((t, v))
            self._elevated.clear()
            self._floor.append((arrival, value))
            return None
        self._elevated.append((index, arrival, value))
        first_index, first_t, _v = self._elevated[0]
        if arrival - first_t >= MISSING_BEATS_EVIDENCE_S and len(self._elevated) >= MISSING_BEATS_MIN_NOTIFICATIONS:
            return first_index
        return None


class LiveBeatTimeline:
    """Incremental beat times for one strap while recording (see the module docstring)."""

    def __init__(self) -> None:
        self._pending_break: str | None = "start"
        self._s = 0.0
        self._offset = 0.0
        self._window: deque[tuple[float, float]] = deque()
        self._watch = MissingBeatsWatch()
        self._index = 0
        self._last_t: float | None = None

    def mark_gap(self, reason: str = "disconnect") -> None:
        """The link dropped, contact was lost or a packet was malformed: the next beat starts a new stretch."""
        if self._pending_break is None:
            self._pending_break = reason

    def add(self, t_arrival: float, rr_1024: Sequence[int], packet_id: int | None = None) -> list[BeatRow]:
        if not rr_1024:
            return []
        rr_s = np.asarray(rr_1024, dtype=float) / RR_UNITS_PER_S
        if self._pending_break is None:
            s_end = self._s + float(rr_s.sum())
            if self._watch.push(self._index, t_arrival, t_arrival - s_end, rr_s) is not None:
                self._pending_break = "missing beats"
        if self._pending_break is not None:
            return self._start_stretch(t_arrival, rr_s, packet_id)
        self._index += 1
        self._window.append((t_arrival, t_arrival - (self._s + float(rr_s.sum()))))
        while self._window[0][0] < t_arrival - LIVE_WINDOW_S:
            self._window.popleft()
        target = min(v for _t, v in self._window)
        rows = []
        for r in rr_s:
            step = LIVE_SLEW_FRACTION * r
            self._offset += float(np.clip(target - self._offset, -step, step))
            self._s += float(r)
            rows.append(self._row(self._offset + self._s, r, False, t_arrival, packet_id))
        return rows

    def _start_stretch(self, t_arrival: float, rr_s: np.ndarray, packet_id: int | None) -> list[BeatRow]:
        self._pending_break = None
        self._s = 0.0
        s = np.cumsum(rr_s)
        self._offset = t_arrival - float(s[-1])
        if self._last_t is not None and self._offset + s[0] <= self._last_t:
            self._offset = self._last_t + MIN_STRETCH_SEPARATION_S - float(s[0])
        self._window = deque([(t_arrival, t_arrival - float(s[-1]))])
        self._watch = MissingBeatsWatch()
        self._watch.push(0, t_arrival, t_arrival - float(s[-1]), rr_s)
        self._index = 0
        rows = []
        for i, r in enumerate(rr_s):
            self._s += float(r)
            rows.append(self._row(self._offset + self._s, r, i == 0, t_arrival, packet_id))
        return rows

    def _row(self, t: float, rr_s: float, gap: bool, t_arrival: float, packet_id: int | None) -> BeatRow:
        self._last_t = t
        return BeatRow(t, rr_s * 1000.0, gap, t_arrival - t, packet_id)


def floor_bias(excess: np.ndarray) -> float:
    """Expected delay of the least-delayed notification, which the fitted line rests on (s, ≥ 0).

    A notification's delay over the true line is beat-to-tick (uniform over an RR) plus transport latency (≥ 0), so
    near zero its distribution function grows like `c · x²`. With `m` of `n` delays below `x0`, `c · n ≈ m / x0²`
    and the smallest of `n` lies on average `Γ(3/2) · x0 / √m` above zero. Lowering the line by that keeps every
    beat before its notification (the line only moves down) and removes most of the bias of short stretches.
    """
    excess = np.sort(np.asarray(excess, dtype=float))
    if excess.size < FLOOR_BIAS_MIN_NOTIFICATIONS:
        return 0.0
    m = max(int(FLOOR_BIAS_QUANTILE * excess.size), 4)
    x0 = float(excess[m])
    return 0.886 * x0 / math.sqrt(m)


def split_stretches(notes: Sequence[Notification]) -> list[tuple[str, list[Notification]]]:
    """Notifications with RR grouped into gap-free stretches, each with the reason it starts."""
    stretches: list[tuple[str, list[Notification]]] = []
    group: list[Notification] = []
    pending: str | None = "start"
    watch = MissingBeatsWatch()
    s = 0.0
    for note in notes:
        if note.break_before is not None and pending is None:
            pending = note.break_before
        if not note.rr_1024:
            continue
        if pending is not None:
            group, watch, s = [], MissingBeatsWatch(), 0.0
            stretches.append((pending, group))
            pending = None
        rr_s = np.asarray(note.rr_1024, dtype=float) / RR_UNITS_PER_S
        s += float(rr_s.sum())
        began = watch.push(len(group), note.t, note.t - s, rr_s)
        group.append(note)
        if began is not None:  # beats went missing just before `began`: the rest is a new stretch
            rest = group[began:]
            del group[began:]
            group, watch, s = [], MissingBeatsWatch(), 0.0
            stretches.append(("missing beats", group))
            for old in rest:
                old_rr = np.asarray(old.rr_1024, dtype=float) / RR_UNITS_PER_S
                s += float(old_rr.sum())
                watch.push(len(group), old.t, old.t - s, old_rr)
                group.append(old)
    return [(reason, g) for reason, g in stretches if g]


def fit_beat_times(notes: Sequence[Notification]) -> tuple[list[BeatRow], list[StretchInfo]]:
    """Beat times of a whole session from its notifications, in order (see the module docstring)."""
    stretches = split_stretches(notes)
    if not stretches:
        return [], []
    xs, ys, segs = [], [], []
    per_stretch: list[tuple[np.ndarray, np.ndarray, list[int]]] = []
    for k, (_reason, group) in enumerate(stretches):
        rr = np.concatenate([np.asarray(n.rr_1024, dtype=float) for n in group]) / RR_UNITS_PER_S
        s = np.cumsum(rr)
        counts = [len(n.rr_1024) for n in group]
        last = np.cumsum(counts) - 1
        arrival = np.array([n.t for n in group])
        xs.append(s[last])
        ys.append(arrival)
        segs.append(np.full(len(group), k))
        per_stretch.append((rr, s, counts))
    x, y, seg = np.concatenate(xs), np.concatenate(ys), np.concatenate(segs)
    fitted, offsets = block_floor_fit(x, y, seg, FLOOR_BLOCK_S, (1.0 - MAX_STRAP_DRIFT, 1.0 + MAX_STRAP_DRIFT))
    drift_known = fitted is not None and np.ptp(x) >= MIN_DRIFT_SPAN_S
    if not drift_known:  # too short to tell drift from delay: take the strap's clock as exact
        fitted, offsets = block_floor_fit(x, y, seg, FLOOR_BLOCK_S, (1.0, 1.0))
    slope = 1.0 if fitted is None else fitted
    rows: list[BeatRow] = []
    infos: list[StretchInfo] = []
    last_t: float | None = None
    for k, ((reason, group), (rr, s, counts)) in enumerate(zip(stretches, per_stretch, strict=True)):
        offset = float(offsets[k]) - floor_bias(ys[k] - (offsets[k] + slope * xs[k]))
        if last_t is not None and offset + slope * s[0] <= last_t:
            offset = last_t + MIN_STRETCH_SEPARATION_S - slope * float(s[0])
        times = offset + slope * s
        arrival_of_beat = np.repeat([n.t for n in group], counts)
        packet_of_beat = [n.packet_id for n, c in zip(group, counts, strict=True) for _ in range(c)]
        for i in range(len(rr)):
            rows.append(BeatRow(float(times[i]), float(rr[i] * 1000.0), i == 0,
                                float(arrival_of_beat[i] - times[i]), packet_of_beat[i]))
        delay = ys[k] - (offset + slope * xs[k])
        infos.append(StretchInfo(k, reason, float(times[0]), float(times[-1]), len(rr), len(group),
                                 (slope - 1.0) * 1e6 if drift_known else math.nan, float(delay[0]),
                                 float(np.median(delay))))
        last_t = float(times[-1])
    return rows, infos
