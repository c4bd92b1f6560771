"""Breathing rate from a chest strap's accelerometer (Polar H10 PMD ACC): chest movement, not heart rhythm.

The strap sits on the chest, so each breath tilts and lifts it a little: a slow oscillation of a few mG on top of
gravity (about 1000 mG, removed by the filter), posture changes and the ballistocardiogram of each heartbeat. The
estimate, for a window of samples (n, 3) in mG:

1. remove each axis's median, then band-pass 0.05-0.7 Hz (3-42 breaths/min): zero-phase 2nd-order Butterworth,
   ``scipy.signal.sosfiltfilt``;
2. reduce to one chest-movement signal: the given `axis`, or by default the direction of largest band-passed
   variance (first principal component), since how the strap sits on the chest varies between people (steps 1-2 are
   `recordings.breathing.project_chest_movement`, the same filter the exported breathing waveform uses);
3. Welch spectrum of that signal (Hann segments of up to 64 s, half overlap, zero-padded to a 1/512 Hz grid) and
   the dominant frequency within the band; `peak_share` is the share of in-band power within ±0.02 Hz of it, a
   quality figure (a clean breathing signal gives well over 0.4, noise alone about 0.1-0.2);
4. the rate is the breaths counted: peaks of the movement signal at least 0.6 of the dominant period apart and
   standing out by 0.3 SD, (count - 1) over the time from the first to the last, x 60. A spontaneous rate wanders
   (±10 % is usual), and the count gives its mean where the spectrum gives only its most common value; with fewer
   than three breaths found, the spectral peak is the rate (`method` says which).

Unlike the RSA-based rate (biofeedback.analysis.hrv), this does not depend on heart-rate variability, so it also
works when RSA is weak, and gives the breathing rate needed to decide whether HF power can be read as vagal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import find_peaks, welch

from recordings.breathing import BREATHING_BAND_HZ, project_chest_movement

MIN_DURATION_S = 30.0
SEGMENT_S = 64.0
PEAK_HALF_WIDTH_HZ = 0.02


@dataclass(frozen=True)
class AccBreathing:
    """A breathing-rate estimate: breaths/min, its frequency, the peak's share of band power, the axis used."""

    rate_bpm: float
    frequency_hz: float
    peak_share: float
    direction: tuple[float, float, float]
    method: str = "counted"


def chest_movement(samples_mg: np.ndarray, fs_hz: float, *, axis: int | None = None) -> np.ndarray:
    """The band-passed (0.05-0.7 Hz) chest-movement signal in mG: one axis, or the principal direction."""
    acc = _check(samples_mg, fs_hz, axis)
    return _movement(acc, fs_hz, axis)[0]


def breathing_rate_from_acc(samples_mg: np.ndarray, fs_hz: float, *, axis: int | None = None) -> AccBreathing:
    """Dominant breathing frequency of chest-strap accelerometer samples (n, 3) in mG (see the module doc)."""
    acc = _check(samples_mg, fs_hz, axis)
    signal, direction = _movement(acc, fs_hz, axis)
    nperseg = min(len(signal), round(SEGMENT_S * fs_hz))
    nfft = max(nperseg, 2 ** math.ceil(math.log2(512 * fs_hz)))
    freqs, psd = welch(signal, fs=fs_hz, window="hann", nperseg=nperseg, nfft=nfft, detrend="linear")
    lo, hi = BREATHING_BAND_HZ
    band = (freqs >= lo) & (freqs <= hi)
    total = float(psd[band].sum())
    if total <= 0.0:
        raise ValueError("no chest movement in the breathing band (the accelerometer signal is flat)")
    f_peak = float(freqs[band][np.argmax(psd[band])])
    near = band & (np.abs(freqs - f_peak) <= PEAK_HALF_WIDTH_HZ)
    share = float(psd[near].sum()) / total
    breaths, _ = find_peaks(signal, distance=max(1, int(0.6 * fs_hz / f_peak)), prominence=0.3 * float(np.std(signal)))
    if len(breaths) >= 3:
        rate = 60.0 * (len(breaths) - 1) * fs_hz / float(breaths[-1] - breaths[0])
        return AccBreathing(rate, f_peak, share, direction, "counted")
    return AccBreathing(60.0 * f_peak, f_peak, share, direction, "spectrum")


def _check(samples_mg: np.ndarray, fs_hz: float, axis: int | None) -> np.ndarray:
    acc = np.asarray(samples_mg, dtype=float)
    if acc.ndim != 2 or acc.shape[1] != 3:
        raise ValueError(f"accelerometer samples must have shape (n, 3) for x, y, z; got {acc.shape}")
    if not (math.isfinite(fs_hz) and fs_hz >= 4 * BREATHING_BAND_HZ[1]):
        raise ValueError(f"sampling rate must be at least {4 * BREATHING_BAND_HZ[1]:g} Hz, got {fs_hz!r}")
    if len(acc) < MIN_DURATION_S * fs_hz:
        raise ValueError(
            f"need at least {MIN_DURATION_S:g} s of accelerometer samples for a breathing rate, "
            f"got {len(acc) / fs_hz:.1f} s"
        )
    if not np.all(np.isfinite(acc)):
        raise ValueError("accelerometer samples contain NaN or infinite values")
    if axis is not None and axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1, 2 (x, y, z) or None for the principal direction, got {axis!r}")
    return acc


def _movement(acc: np.ndarray, fs_hz: float, axis: int | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    signal, direction = project_chest_movement(acc, fs_hz, axis=axis)  # the exported waveform's own filter
    return signal, (float(direction[0]), float(direction[1]), float(direction[2]))
