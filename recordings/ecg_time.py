"""Stored ECG frames on the session clock: sample rate, clock drift, offset and gaps estimated from the frames.

Each stored frame (`Store.ecg_chunks`) holds the device time of its *last* sample (Polar PMD: ns since 2000-01-01 on
the strap's own clock) and the host arrival time on the session clock. The strap's clock may read any date (an H10
that was never synchronised reads 2019), so device time is used only for *spacing*, never as wall-clock time.

The mapping, per stretch without gaps:

- device-clock sample rate: least-squares slope of frame last-sample device time against cumulative sample index
  (one slope for the session, one intercept per stretch), so frame timestamp jitter is averaged out;
- session time = offset(stretch) + scale · device time. A frame arrives *after* its last sample by a positive,
  jittery transport latency, so the line is the lower envelope of (device time, arrival) pairs: the line below
  every point with the least total distance to them (a small linear programme). Mapped times are therefore biased
  late only by the *smallest* transport latency of the stretch (a few ms over BLE), not by the mean;
- drift (ppm) = (scale − 1) · 10⁶; sample rate on the session clock = device rate / scale.

A jump of device time bigger than the frame explains (a lost frame, a disconnect) or a jump backwards (the strap's
clock was reset) starts a new stretch. Gaps stay gaps: `regular_grid` fills them with NaN, never with invented data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .clock_fit import ClockFitError, lower_envelope

Chunk = tuple[float, int, float, np.ndarray]  # (arrival s, device ns of the last sample, nominal fs, samples µV)

ECG_FS_HZ = 130.0
"""Polar H10 ECG: nominal samples per second (the strap's true rate differs by its clock drift)."""
GAP_TOLERANCE_SAMPLES = 5.0  # device-time misfit between consecutive frames that still counts as contiguous


class EcgTimeError(ValueError):
    """Stored ECG frames that cannot be put on the session clock."""


@dataclass(frozen=True, slots=True)
class EcgTimeline:
    """Every stored ECG sample with its time on the session clock (s) and the stretch it belongs to."""

    t: np.ndarray  # float64, session clock seconds, increasing
    uv: np.ndarray  # int32 µV
    segment: np.ndarray  # int, 0-based stretch index per sample
    fs_hz: float  # estimated true sample rate on the session clock
    fs_device_hz: float  # sample rate measured on the strap's clock
    nominal_fs_hz: float
    drift_ppm: float  # (session s per strap s − 1) · 1e6: positive when the strap clock runs slow
    min_latency_s: float  # smallest arrival − mapped-last-sample (0 by construction of the lower envelope)
    median_latency_s: float  # typical transport latency of a frame over the lower envelope

    @property
    def n_segments(self) -> int:
        return int(self.segment[-1]) + 1 if len(self.segment) else 0

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(last sample before, first sample after) of every break between stretches, session clock s."""
        breaks = np.flatnonzero(np.diff(self.segment)) + 1
        return [(float(self.t[i - 1]), float(self.t[i])) for i in breaks]

    def regular_grid(self) -> tuple[float, np.ndarray]:
        """(start time, values) on a grid of spacing 1/fs_hz from the first sample; gaps are NaN.

        Each stretch is placed at the grid index nearest its mapped start (error ≤ half a sample).
        """
        if not len(self.t):
            return 0.0, np.zeros(0)
        t0 = float(self.t[0])
        values = np.full(round((self.t[-1] - t0) * self.fs_hz) + 1, np.nan)
        for seg in range(self.n_segments):
            idx = np.flatnonzero(self.segment == seg)
            start = round((self.t[idx[0]] - t0) * self.fs_hz)
            end = min(start + len(idx), len(values))
            values[start:end] = self.uv[idx[: end - start]]
        return t0, values


def _segments(device_ns: np.ndarray, counts: np.ndarray, nominal_fs: float) -> np.ndarray:
    """Stretch index per frame: a new stretch where device time does not continue as the sample count says."""
    seg = np.zeros(len(device_ns), dtype=int)
    if len(device_ns) < 2:
        return seg
    expected = counts[1:] / nominal_fs * 1e9
    misfit = np.diff(device_ns).astype(float) - expected
    breaks = np.abs(misfit) > GAP_TOLERANCE_SAMPLES / nominal_fs * 1e9
    seg[1:] = np.cumsum(breaks)
    return seg


def _device_rate(device_s: np.ndarray, last_index: np.ndarray, seg: np.ndarray, nominal_fs: float):
    """Samples per device second (common slope of device time over sample index) and each stretch's intercept."""
    n_seg = int(seg[-1]) + 1
    design = np.zeros((len(device_s), 1 + n_seg))
    design[:, 0] = last_index
    design[np.arange(len(device_s)), 1 + seg] = 1.0
    if len(device_s) - n_seg >= 1 and np.ptp(last_index) > 0:
        coef, *_ = np.linalg.lstsq(design, device_s, rcond=None)
        period = float(coef[0])
    else:
        period = 1.0 / nominal_fs
    if not np.isfinite(period) or not 0.5 / nominal_fs < period < 2.0 / nominal_fs:
        raise EcgTimeError(
            f"ECG device timestamps do not fit the sample count: {1 / period if period else 0:.3f} Hz measured "
            f"against {nominal_fs:g} Hz nominal"
        )
    intercepts = np.array([np.mean((device_s - period * last_index)[seg == s]) for s in range(n_seg)])
    return 1.0 / period, intercepts


def _lower_envelope(x: np.ndarray, y: np.ndarray, seg: np.ndarray) -> tuple[float, np.ndarray]:
    """Scale and per-stretch offsets of the line(s) below every (x, y) (`recordings.clock_fit`)."""
    try:
        return lower_envelope(x, y, seg)
    except ClockFitError as exc:
        raise EcgTimeError(f"could not fit ECG device time to arrival times: {exc}") from None


def map_ecg_chunks(chunks: Sequence[Chunk]) -> EcgTimeline:
    """Put stored ECG frames on the session clock (see the module docstring)."""
    frames = [c for c in chunks if len(c[3])]
    if not frames:
        raise EcgTimeError("no ECG samples stored for this session")
    frames.sort(key=lambda c: (c[0], c[1]))  # arrival order: a strap clock reset shows as device time going back
    device_ns = np.array([c[1] for c in frames], dtype=np.int64)
    keep = np.concatenate([[True], np.diff(device_ns) != 0])  # a frame stored twice counts once
    frames = [f for f, k in zip(frames, keep, strict=True) if k]
    device_ns = device_ns[keep]
    arrival = np.array([c[0] for c in frames], dtype=float)
    counts = np.array([len(c[3]) for c in frames], dtype=int)
    nominal_fs = float(np.median([c[2] for c in frames]))
    if not np.isfinite(nominal_fs) or nominal_fs <= 0:
        raise EcgTimeError(f"ECG frames carry no usable sample rate ({nominal_fs})")
    seg = _segments(device_ns, counts, nominal_fs)
    # device seconds since each stretch's first frame: the strap's calendar (2019, or any date) is never used
    first_of_seg = device_ns[np.searchsorted(seg, seg, side="left")]
    device_s = (device_ns - first_of_seg).astype(float) / 1e9
    last_index = np.cumsum(counts) - 1.0
    fs_dev, intercepts = _device_rate(device_s, last_index, seg, nominal_fs)
    scale, offsets = _lower_envelope(device_s, arrival, seg)
    mapped_last = offsets[seg] + scale * device_s
    latency = arrival - mapped_last

    # sample times: device time from the stretch's fitted line (frame timestamp jitter averaged out), then mapped
    frame_of_sample = np.repeat(np.arange(len(frames)), counts)
    sample_index = np.arange(int(counts.sum()), dtype=float)
    t = offsets[seg[frame_of_sample]] + scale * (intercepts[seg[frame_of_sample]] + sample_index / fs_dev)
    uv = np.concatenate([np.asarray(c[3], dtype=np.int32) for c in frames])
    segment = seg[frame_of_sample]
    order = np.argsort(t, kind="stable")
    return EcgTimeline(
        t=t[order],
        uv=uv[order],
        segment=segment[order],
        fs_hz=float(fs_dev / scale),
        fs_device_hz=float(fs_dev),
        nominal_fs_hz=nominal_fs,
        drift_ppm=float((scale - 1.0) * 1e6),
        min_latency_s=float(latency.min()),
        median_latency_s=float(np.median(latency)),
    )


DEVICE_MAP_WINDOW_FRAMES = 400
"""ECG frames (about 0.56 s each) over which the smallest arrival lag anchors the device clock (~3.7 min)."""


class DeviceClockMap:
    """Session time of ECG samples from the strap's clock (ns), anchored by the smallest recent arrival lag.

    A frame can only arrive after its last sample, so ``arrival - device time`` is the offset plus a delay that is
    never negative; its minimum over a sliding window of frames is the best estimate of the offset, and the window
    lets the estimate follow the slow drift between the strap's clock and the host's. When the estimate improves
    (a smaller lag), it is slewed in by at most half a sample period per frame: timestamps stay strictly increasing.
    """

    def __init__(self, window: int = DEVICE_MAP_WINDOW_FRAMES, fs_hz: float = ECG_FS_HZ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        self.fs_hz = fs_hz
        self._origin_ns: int | None = None
        self._lags: deque[float] = deque(maxlen=window)
        self._last_t: float | None = None

    def sample_times(self, t_arrival: float, device_ns: int, n: int) -> np.ndarray:
        """Session times of the `n` samples of a frame whose last sample has device time `device_ns`."""
        if self._origin_ns is None:
            self._origin_ns = device_ns
        device_s = (device_ns - self._origin_ns) / 1e9
        self._lags.append(t_arrival - device_s)
        offset = min(self._lags)
        first = offset + device_s - (n - 1) / self.fs_hz
        earliest = None if self._last_t is None else self._last_t + 0.5 / self.fs_hz
        if earliest is not None and first < earliest:
            # a better (smaller) offset is slewed in, at most half a sample per frame: time never steps back
            offset += earliest - first
        times = offset + device_s - (n - 1 - np.arange(n)) / self.fs_hz
        self._last_t = float(times[-1])
        return times
