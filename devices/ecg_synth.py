"""Synthetic single-lead chest ECG (µV, integers) from beat times, in one go or streamed chunk by chunk.

Each beat is a P-QRS-T complex written as a sum of Gaussians around its R peak, in the spirit of McSharry's
ECGSYN (2003): the waves sit at fixed times before/after R, and the T wave moves closer to R at faster heart
rates (Bazett-like √RR scaling). On top: baseline wander that follows breathing, a small amplitude modulation
of the QRS by breathing (the heart's electrical axis moves with the diaphragm) and white noise. Seeded, so the
same beats and seed always give the same samples, whether computed at once or streamed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

POLAR_H10_ECG_HZ = 130.0
DRIFT_TAU_S = 20.0


@dataclass(frozen=True, slots=True)
class Wave:
    """One Gaussian of the template: offset from R (s, at RR = 1 s), amplitude (µV), width σ (s)."""

    offset_s: float
    amplitude_uv: float
    width_s: float
    scales_with_rr: bool = False


CHEST_LEAD_TEMPLATE: tuple[Wave, ...] = (
    Wave(-0.19, 120.0, 0.025, scales_with_rr=True),  # P
    Wave(-0.028, -140.0, 0.010),  # Q
    Wave(0.0, 1250.0, 0.0095),  # R
    Wave(0.030, -320.0, 0.011),  # S
    Wave(0.27, 280.0, 0.045, scales_with_rr=True),  # T
)
"""P-QRS-T of a chest strap lead; the R wave alone gives a QRS amplitude of about 1.2-1.5 mV peak-to-peak."""

MAX_STRETCH_RR_S = 1.5
"""RR (s) beyond which the P and T waves stop moving away from R."""
REACH_BEFORE_S = 0.4
"""A beat influences samples from this long before its R peak ..."""
REACH_AFTER_S = 0.55
"""... to this long after it (T wave plus tails)."""

Breathing = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class EcgStyle:
    """Non-beat parts of the signal: noise σ, breathing baseline wander and QRS modulation, slow drift."""

    noise_uv: float = 12.0
    wander_uv: float = 90.0
    qrs_breath_modulation: float = 0.08
    drift_uv: float = 40.0
    amplitude_scale: float = 1.0


def add_beat(out: np.ndarray, t: np.ndarray, r_time: float, rr_s: float, scale: float) -> None:
    """Add one P-QRS-T complex with its R peak at `r_time` to `out` (samples at times `t`, sorted)."""
    lo, hi = np.searchsorted(t, [r_time - REACH_BEFORE_S, r_time + REACH_AFTER_S])
    if lo >= hi:
        return
    dt = t[lo:hi] - r_time
    stretch = math.sqrt(min(max(rr_s, 0.3), MAX_STRETCH_RR_S))
    for w in CHEST_LEAD_TEMPLATE:
        centre = w.offset_s * stretch if w.scales_with_rr else w.offset_s
        width = w.width_s * stretch if w.scales_with_rr else w.width_s
        out[lo:hi] += w.amplitude_uv * scale * np.exp(-0.5 * ((dt - centre) / width) ** 2)


def _default_breathing(seed: int) -> Breathing:
    phase = np.random.default_rng([seed, 1]).uniform(0, 2 * math.pi)
    return lambda t: np.sin(2 * math.pi * 0.25 * t + phase)


class EcgStream:
    """Incremental ECG: add beats as they are known, then take samples up to where the beats are complete.

    Sample k is at `t_start + k / fs` (fs on the session clock). `extend(beats, complete_until)` declares
    that every beat before `complete_until` has now been given; `samples_until(t)` returns the next samples
    before t, which must not pass `ready_until` (complete_until − REACH_BEFORE_S): a later beat could still
    change them.
    """

    def __init__(
        self,
        t_start: float = 0.0,
        fs: float = POLAR_H10_ECG_HZ,
        seed: int = 0,
        breathing: Breathing | None = None,
        style: EcgStyle | None = None,
    ) -> None:
        if not (10.0 <= fs <= 10000.0):
            raise ValueError(f"ECG sampling rate must be within 10-10000 Hz, got {fs}")
        self.fs = fs
        self.t_start = t_start
        self.style = style or EcgStyle()
        self._breathing = breathing or _default_breathing(seed)
        self._noise_rng = np.random.default_rng([seed, 0])
        self._drift_rng = np.random.default_rng([seed, 2])
        self._beats: list[float] = []
        self._complete_until = -math.inf
        self._next_index = 0
        self._drift = 0.0

    @property
    def ready_until(self) -> float:
        return self._complete_until - REACH_BEFORE_S

    @property
    def next_sample_time(self) -> float:
        return self.t_start + self._next_index / self.fs

    def extend(self, beat_times_s: Sequence[float] | np.ndarray, complete_until: float) -> None:
        """Add beats (strictly increasing, after earlier ones); declare every beat before `complete_until`."""
        new = [float(b) for b in beat_times_s]
        last = self._beats[-1] if self._beats else -math.inf
        for b in new:
            if not b > last:
                raise ValueError(f"beat times must be strictly increasing: {b} after {last}")
            last = b
        if new and new[0] < self._complete_until:
            raise ValueError(f"beat at {new[0]} s precedes the complete time {self._complete_until} s")
        self._beats.extend(new)
        self._complete_until = max(self._complete_until, complete_until, last)

    def samples_until(self, t_end: float) -> tuple[np.ndarray, np.ndarray]:
        """Sample times (s) and ECG values (µV, int32) of all not-yet-returned samples with time < t_end."""
        if t_end > self.ready_until + 1e-9:
            raise ValueError(
                f"ECG up to {t_end:.3f} s needs every beat up to {t_end + REACH_BEFORE_S:.3f} s; "
                f"beats are complete only up to {self._complete_until:.3f} s"
            )
        n_end = max(self._next_index, math.ceil((t_end - self.t_start) * self.fs - 1e-9))
        idx = np.arange(self._next_index, n_end)
        t = self.t_start + idx / self.fs
        self._next_index = n_end
        return t, self._render(t)

    def _render(self, t: np.ndarray) -> np.ndarray:
        if t.size == 0:
            return np.zeros(0, dtype=np.int32)
        st = self.style
        beats = np.asarray(self._beats)
        lo, hi = np.searchsorted(beats, [t[0] - REACH_AFTER_S, t[-1] + REACH_BEFORE_S])
        signal = st.wander_uv * self._breathing(t)
        for j in range(lo, hi):
            rr = beats[j] - beats[j - 1] if j > 0 else 1.0
            breath = float(self._breathing(np.array([beats[j]]))[0])
            scale = st.amplitude_scale * (1.0 + st.qrs_breath_modulation * breath)
            add_beat(signal, t, float(beats[j]), float(rr), scale)
        # slow electrode drift: leaky random walk, continued across chunks
        decay = 1.0 - 1.0 / (DRIFT_TAU_S * self.fs)
        step_sd = st.drift_uv * math.sqrt(2.0 / (DRIFT_TAU_S * self.fs))
        steps = self._drift_rng.standard_normal(t.size) * step_sd
        drift, zf = lfilter([1.0], [1.0, -decay], steps, zi=[decay * self._drift])
        self._drift = float(zf[0]) / decay
        signal += drift
        signal += self._noise_rng.standard_normal(t.size) * st.noise_uv
        return np.rint(signal).astype(np.int32)


def ecg_samples(
    beat_times_s: Sequence[float] | np.ndarray,
    t_start: float,
    t_end: float,
    fs: float = POLAR_H10_ECG_HZ,
    seed: int = 0,
    breathing: Breathing | None = None,
    style: EcgStyle | None = None,
) -> np.ndarray:
    """ECG (µV, int32) sampled at `t_start + k/fs` for all k with time < t_end, given every R-peak time."""
    if t_end < t_start:
        raise ValueError(f"t_end ({t_end}) must not be before t_start ({t_start})")
    stream = EcgStream(t_start=t_start, fs=fs, seed=seed, breathing=breathing, style=style)
    stream.extend(np.sort(np.asarray(beat_times_s, dtype=float)), complete_until=math.inf)
    return stream.samples_until(t_end)[1]
