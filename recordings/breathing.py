"""The chest-movement breathing waveform: a chest strap's accelerometer (Polar H10 PMD ACC) as a respiration signal.

The strap sits on the chest, so each breath tilts and lifts it a little: a slow oscillation of a few mG on top of
gravity (about 1000 mG), posture changes and the ballistocardiogram of each heartbeat. Method, per gap-free ACC
stretch (`recordings.ecg_time.map_ecg_chunks` puts the samples on the session clock and splits them at every break):

1. remove each axis's median, band-pass 0.05-0.7 Hz (3-42 breaths/min; zero-phase 2nd-order Butterworth,
   ``scipy.signal.sosfiltfilt``), which removes gravity, slow posture drift and the heartbeat;
2. project onto the direction of largest band-passed variance (first principal component, ``numpy.linalg.svd``),
   since how the strap sits on the chest varies between people: one direction per stretch. Its sign is arbitrary
   (an accelerometer cannot tell inhaling from exhaling without a reference): the first stretch's largest component
   is made positive and each later stretch points the same way as the one before, so a breath keeps its polarity
   across gaps when the strap stays put;
3. resample by linear interpolation onto a fixed grid (`WAVEFORM_FS_HZ`, times k / fs on the session clock), far above
   the 0.7 Hz cut-off, so nothing aliases.

Gaps stay gaps: grid times outside every stretch, and stretches shorter than `MIN_STRETCH_S` (too short for the
0.05 Hz high-pass), are NaN, never interpolated. The first and last ~10 s of a stretch carry the filter's edge
transient (the high-pass's time constant); breath counts near a gap are less certain.

Values are in mG along the principal direction (`MG_TO_M_S2` converts to m/s² for files). Pure numpy/scipy, so the
exports (this floor) and the analysis (above) use the same signal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from .ecg_time import EcgTimeline

BREATHING_BAND_HZ = (0.05, 0.7)
"""Band-pass of the chest-movement signal: 3-42 breaths/min."""
WAVEFORM_FS_HZ = 25.0
"""Sampling rate of the exported breathing waveform."""
MIN_STRETCH_S = 20.0
"""A gap-free ACC stretch shorter than this (one period of the 0.05 Hz high-pass) gives no waveform."""
MG_TO_M_S2 = 9.80665e-3
"""1 mG (a thousandth of standard gravity) in m/s²."""


@dataclass(frozen=True)
class BreathingWaveform:
    """Chest movement on a regular grid of the session clock: `values[k]` at `t0 + k / fs_hz` (mG, NaN = no data)."""

    t0: float
    fs_hz: float
    values: np.ndarray
    directions: tuple[tuple[float, float, float], ...]  # unit x/y/z direction of each stretch used

    @property
    def t(self) -> np.ndarray:
        return self.t0 + np.arange(len(self.values)) / self.fs_hz

    def window(self, start_s: float, end_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(times, values) of the grid samples with start_s <= t < end_s."""
        t = self.t
        inside = (t >= start_s) & (t < end_s)
        return t[inside], self.values[inside]


def project_chest_movement(
    samples_mg: np.ndarray, fs_hz: float, *, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(band-passed movement along one direction in mG, that unit direction) of gap-free samples (n, 3) in mG.

    The direction is the given `axis`, else the first principal component with its largest component positive.
    """
    acc = np.asarray(samples_mg, dtype=float)
    sos = butter(2, BREATHING_BAND_HZ, btype="bandpass", fs=fs_hz, output="sos")
    filtered = sosfiltfilt(sos, acc - np.median(acc, axis=0), axis=0)
    if axis is not None:
        direction = np.eye(3)[axis]
    else:
        _, _, vt = np.linalg.svd(filtered - filtered.mean(axis=0), full_matrices=False)
        direction = vt[0] if vt[0][np.argmax(np.abs(vt[0]))] > 0 else -vt[0]
    return filtered @ direction, direction


def breathing_waveform(
    acc: EcgTimeline, fs_hz: float = WAVEFORM_FS_HZ, *, start_s: float | None = None, n: int | None = None
) -> BreathingWaveform:
    """The breathing waveform of ACC samples on the session clock (`acc.uv` holds (n, 3) mG; see the module doc).

    The grid starts at `start_s` (default: the first multiple of 1 / fs_hz at or after the first sample) and has `n`
    samples (default: up to the last sample).
    """
    if not (math.isfinite(fs_hz) and fs_hz > 2 * BREATHING_BAND_HZ[1]):
        raise ValueError(f"waveform rate must exceed {2 * BREATHING_BAND_HZ[1]:g} Hz, got {fs_hz!r}")
    samples = np.asarray(acc.uv, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != 3:
        raise ValueError(f"accelerometer samples must have shape (n, 3) for x, y, z; got {samples.shape}")
    if not len(acc.t):
        return BreathingWaveform(start_s or 0.0, fs_hz, np.zeros(0), ())
    t0 = math.ceil(float(acc.t[0]) * fs_hz - 1e-9) / fs_hz if start_s is None else float(start_s)
    if n is None:
        n = max(0, math.floor((float(acc.t[-1]) - t0) * fs_hz + 1e-9) + 1)
    grid = t0 + np.arange(n) / fs_hz
    values = np.full(n, np.nan)
    directions: list[tuple[float, float, float]] = []
    previous: np.ndarray | None = None
    for seg in range(acc.n_segments):
        idx = np.flatnonzero(acc.segment == seg)
        t_seg = acc.t[idx]
        if len(idx) < 2 or t_seg[-1] - t_seg[0] < MIN_STRETCH_S:
            continue
        signal, direction = project_chest_movement(samples[idx], acc.fs_hz)
        if previous is not None and float(direction @ previous) < 0:
            signal, direction = -signal, -direction
        previous = direction
        directions.append((float(direction[0]), float(direction[1]), float(direction[2])))
        lo = int(np.searchsorted(grid, t_seg[0], side="left"))
        hi = int(np.searchsorted(grid, t_seg[-1], side="right"))
        values[lo:hi] = np.interp(grid[lo:hi], t_seg, signal)
    return BreathingWaveform(t0, fs_hz, values, tuple(directions))
