"""Incremental live heart-rate-variability metrics, updated beat by beat for the biofeedback display.

Every accepted beat costs O(1) Python work for heart rate and RMSSD (running sum of squared successive
differences over a deque of the beats in the window) and one small FFT of a fixed-size, incrementally
resampled tachogram for the spectral measures. Nothing here recomputes a whole window with neurokit2: batch
analysis after the session does that, and the tests check the live numbers against it.

Methods (all frequencies in Hz, powers in ms², RR in ms, times in seconds on the session clock):

- **Artifact screening** (online, per beat): a beat is flagged when its RR deviates by more than
  ``artifact_threshold`` (default 20 %) both from the median of the last ``median_beats`` accepted RR *and*
  from the RR received just before it. The second condition keeps real, fast respiratory sinus arrhythmia
  (slow breathing swings RR by ±20 % and more within a breath, so a median alone flags genuine beats) and
  prevents lock-in after a real change of heart rate; an ectopic beat and its compensatory pause both jump
  relative to their predecessor and are flagged. RR outside ``rr_range_ms`` is always flagged. Flagged beats
  are excluded (not replaced): they do not enter any metric, the successive difference across them is not
  used, and the tachogram interpolates over them.
- **Heart rate**: 60000 / mean of the last ``hr_beats`` accepted RR.
- **RMSSD**: over the accepted beats with ``t > t_last - window_s``; only differences between two
  consecutive accepted beats with no gap or flagged beat between them count.
- **Tachogram**: its time axis is the RR axis: the first beat after the start (or a gap, or an out-of-range
  RR) sits at its ``t_s``, every later beat (flagged ones included, since their time passed) adds its RR.
  Host arrival times jitter and straps batch several RR in one notification, so they are not used here.
  Accepted RR are interpolated at these times onto the grid ``t0 + k / resample_hz`` (t0 = first accepted
  beat) by a cubic Hermite spline whose slope at each beat is the derivative of the parabola through it and
  its two neighbours (``numpy.gradient`` on the beats; one-sided at the first beat):
  ``scipy.interpolate.CubicHermiteSpline(t, rr, numpy.gradient(rr, t))``. Slopes are local, so the samples
  in [t_(i-1), t_i) are appended once beat i+1 has arrived (one beat of latency). Linear interpolation would
  lose about 30 % of the power of a 0.25 Hz oscillation at 65 bpm; this spline loses about 8 %. A gap
  restarts the tachogram.
- **Spectrum**: once the tachogram holds ``spectral_window_s`` of samples (256 at 4 Hz for 64 s): linear
  detrend, Hann window, FFT zero-padded to ``nfft`` points, one-sided density scaling -- exactly
  ``scipy.signal.periodogram(x, fs, window="hann", nfft=nfft, detrend="linear")``. Band power is the sum of
  the density over the bins with ``lo <= f < hi`` times the bin width. LF = [0.04, 0.15), HF = [0.15, 0.40).
- **Pacer band power**: power in [f_pacer - 0.015, f_pacer + 0.015] (inclusive), f_pacer = rate_bpm / 60.
- **Coherence** (HeartMath-like resonance index, in [0, 1]): find the highest density bin in [0.04, 0.26];
  the coherence is the power in [f_peak - 0.015, f_peak + 0.015] divided by the total power in [0.0033,
  0.40). A pure sinusoid scores about 0.86 (Hann leakage), white-noise RR about 0.2.
- **RSA amplitude** (peak-to-trough): the tachogram is converted to heart rate (60000 / RR) and cut into
  consecutive complete breath cycles counted back from the newest sample; the cycle length is the pacer
  period when a pacer is set, otherwise 1 / (dominant frequency in [0.04, 0.40]). Each cycle contributes
  max(HR) - min(HR); the amplitude is their mean. Because each segment spans one full period, its
  max - min is that cycle's peak-to-trough whatever its phase.

Cost: about 0.2 ms per beat with a spectrum on every beat (``spectral_every`` > 1 thins it out), against
about 16 ms for neurokit2 hrv_time + hrv_frequency on the same window (benchmarks/bench_live_metrics.py).

The spectral measures are live display values over 64 s; the per-phase analysis (LF needs >= 120 s) lives in
the batch analysis, not here.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

LF_BAND = (0.04, 0.15)
HF_BAND = (0.15, 0.40)
TOTAL_BAND = (0.0033, 0.40)
COHERENCE_PEAK_SEARCH = (0.04, 0.26)
RSA_PEAK_SEARCH = (0.04, 0.40)
NARROW_HALF_WIDTH_HZ = 0.015


@dataclass(frozen=True)
class LiveSnapshot:
    """What the display pulls: the live metrics after the most recent beat (None = not available yet)."""

    t: float
    hr_bpm: float | None
    rmssd_ms: float | None
    rsa_amplitude_bpm: float | None
    lf_ms2: float | None
    hf_ms2: float | None
    pacer_band_ms2: float | None
    coherence: float | None
    n_beats_window: int
    artifacts_total: int
    last_beat_artifact: bool


def hann_periodogram(x: np.ndarray, fs: float, nfft: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear-detrended, Hann-windowed one-sided periodogram (ms²/Hz), same as scipy.signal.periodogram."""
    return _Periodogram(len(x), fs, nfft)(np.asarray(x, dtype=float))


def band_power(freqs: np.ndarray, psd: np.ndarray, lo: float, hi: float, inclusive: bool = False) -> float:
    """Power in [lo, hi) (or [lo, hi] when inclusive): density summed over the bins times the bin width."""
    upper = freqs <= hi if inclusive else freqs < hi
    return float(np.sum(psd[(freqs >= lo) & upper]) * (freqs[1] - freqs[0]))


def dominant_frequency(freqs: np.ndarray, psd: np.ndarray, lo: float, hi: float) -> float:
    """Frequency of the highest density bin in [lo, hi]."""
    idx = np.flatnonzero((freqs >= lo) & (freqs <= hi))
    return float(freqs[idx[np.argmax(psd[idx])]])


def coherence_index(freqs: np.ndarray, psd: np.ndarray) -> float:
    """Share of total power (0.0033-0.40 Hz) within ±0.015 Hz of the dominant peak in 0.04-0.26 Hz."""
    total = band_power(freqs, psd, *TOTAL_BAND)
    if total <= 0.0:
        return 0.0
    f_peak = dominant_frequency(freqs, psd, *COHERENCE_PEAK_SEARCH)
    half = NARROW_HALF_WIDTH_HZ
    peak = band_power(freqs, psd, f_peak - half, f_peak + half, inclusive=True)
    return min(1.0, peak / total)


def rsa_peak_to_trough(hr_bpm: np.ndarray, fs: float, period_s: float) -> float | None:
    """Mean (max - min) heart rate over the complete cycles of `period_s`, counted back from the end."""
    n = len(hr_bpm)
    cycles = int(n / (period_s * fs))
    if cycles < 1:
        return None
    starts = np.round(n - np.arange(cycles, -1, -1) * period_s * fs).astype(int)
    starts = np.clip(starts, 0, n)
    segment_starts = starts[:-1]
    highs = np.maximum.reduceat(hr_bpm, segment_starts)
    lows = np.minimum.reduceat(hr_bpm, segment_starts)
    return float(np.mean(highs - lows))


class _Periodogram:
    """Precomputed detrend, window and scaling for a fixed-length periodogram (cheap per call)."""

    def __init__(self, n: int, fs: float, nfft: int) -> None:
        if nfft < n:
            raise ValueError(f"nfft ({nfft}) must be at least the number of samples ({n})")
        self.nfft = nfft
        self.freqs = np.fft.rfftfreq(nfft, d=1.0 / fs)
        k = np.arange(n, dtype=float)
        self._k_centred = k - k.mean()
        self._k_norm = float(self._k_centred @ self._k_centred)
        self._window = np.hanning(n + 1)[:-1] if n > 1 else np.ones(1)  # periodic Hann, as scipy uses
        self._scale = np.full(len(self.freqs), 2.0 / (fs * float(self._window @ self._window)))
        self._scale[0] /= 2.0
        if nfft % 2 == 0:
            self._scale[-1] /= 2.0

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centred = x - x.mean()
        detrended = centred - self._k_centred * ((self._k_centred @ centred) / self._k_norm)
        spectrum = np.fft.rfft(detrended * self._window, n=self.nfft)
        return self.freqs, (spectrum.real**2 + spectrum.imag**2) * self._scale


class LiveMetrics:
    """Per-beat sliding-window HRV metrics for the live display (see the module docstring for the methods)."""

    def __init__(
        self,
        window_s: float = 60.0,
        spectral_window_s: float = 64.0,
        *,
        resample_hz: float = 4.0,
        nfft: int = 1024,
        hr_beats: int = 5,
        median_beats: int = 9,
        artifact_threshold: float = 0.20,
        rr_range_ms: tuple[float, float] = (250.0, 2500.0),
        spectral_every: int = 1,
    ) -> None:
        for name, value in (("window_s", window_s), ("spectral_window_s", spectral_window_s),
                            ("resample_hz", resample_hz), ("artifact_threshold", artifact_threshold)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name, count in (("hr_beats", hr_beats), ("median_beats", median_beats),
                            ("spectral_every", spectral_every)):
            if count < 1:
                raise ValueError(f"{name} must be >= 1, got {count!r}")
        if not 0 < rr_range_ms[0] < rr_range_ms[1]:
            raise ValueError(f"rr_range_ms must be (low, high) with 0 < low < high, got {rr_range_ms!r}")
        self.window_s = float(window_s)
        self.spectral_window_s = float(spectral_window_s)
        self.resample_hz = float(resample_hz)
        self.artifact_threshold = float(artifact_threshold)
        self.rr_range_ms = rr_range_ms
        self.spectral_every = spectral_every
        n_spec = round(spectral_window_s * resample_hz)
        if n_spec < 16:
            raise ValueError(f"spectral window holds only {n_spec} samples; need >= 16")
        self._periodogram = _Periodogram(n_spec, resample_hz, max(nfft, n_spec))

        # Beats in the RMSSD window: [t, rr, squared difference to the next accepted beat or None].
        self._window: deque[list] = deque()
        self._sum_d2 = 0.0
        self._n_d2 = 0
        self._updates_since_resum = 0
        self._hr_rr: deque[float] = deque(maxlen=hr_beats)
        self._median_rr: deque[float] = deque(maxlen=median_beats)
        self._last_received_rr: float | None = None
        self._last_t: float | None = None
        self._successive = False  # the next accepted beat follows the last accepted one directly

        # Tachogram on the grid t0 + k / resample_hz (RR in ms).
        self._tacho: deque[float] = deque(maxlen=n_spec)
        self._tacho_t0: float | None = None
        self._tacho_k = 0
        self._recent_beats: deque[tuple[float, float]] = deque(maxlen=3)  # last accepted (t, rr) since a gap
        self._slope_prev = 0.0
        self._tacho_clock: float | None = None  # beat time on the RR axis: start time + cumulative RR

        self._pacer_hz: float | None = None
        self._spectrum: tuple[np.ndarray, np.ndarray] | None = None
        self._hr_trace = np.empty(0)
        self._spectral_countdown = 0
        self._lf = self._hf = self._coherence = self._rsa = self._pacer_power = None
        self._artifacts = 0
        self._last_artifact = False
        self._snapshot: LiveSnapshot | None = None

    # ------------------------------------------------------------------ input

    def set_pacer(self, rate_bpm: float | None) -> None:
        """Set the breathing pacer rate (breaths/min), or None when no pacer runs."""
        if rate_bpm is not None and not (math.isfinite(rate_bpm) and 0 < rate_bpm <= 60):
            raise ValueError(f"pacer rate must be in (0, 60] breaths/min or None, got {rate_bpm!r}")
        self._pacer_hz = None if rate_bpm is None else rate_bpm / 60.0
        self._update_pacer_dependent()
        if self._snapshot is not None:
            self._snapshot = self._make_snapshot()

    def add_beat(self, t_s: float, rr_ms: float, gap_before: bool = False) -> LiveSnapshot | None:
        """Feed one beat (its time and the RR interval ending at it); returns the updated snapshot.

        `gap_before` marks data missing before this beat (disconnect): no successive difference is taken
        across it and the tachogram restarts. Returns None when the beat was flagged as an artifact (the
        displayed values are held; `snapshot()` shows the flag and the count). Raises ValueError for
        non-finite or non-positive RR and for a beat time before the previous one (equal times are allowed:
        straps batch several RR in one notification).
        """
        if not (math.isfinite(t_s) and math.isfinite(rr_ms)):
            raise ValueError(f"beat time and RR must be finite, got t_s={t_s!r}, rr_ms={rr_ms!r}")
        if rr_ms <= 0:
            raise ValueError(f"RR must be > 0 ms, got {rr_ms!r} at t={t_s}")
        if self._last_t is not None and t_s < self._last_t:
            raise ValueError(f"beat at t={t_s} s is before the previous beat at t={self._last_t} s")
        self._last_t = t_s

        if gap_before:
            self._successive = False
            self._reset_tachogram()
        low, high = self.rr_range_ms
        in_range = low <= rr_ms <= high
        if not in_range:  # garbage RR: its duration cannot advance the tachogram clock
            self._reset_tachogram()
        elif self._tacho_clock is None:
            self._tacho_clock = t_s
        else:
            self._tacho_clock += rr_ms / 1000.0
        artifact = not in_range or self._is_artifact(rr_ms, gap_before)
        self._last_received_rr = rr_ms
        self._last_artifact = artifact
        if artifact:
            self._artifacts += 1
            self._successive = False
        else:
            self._accept(t_s, rr_ms)
        self._evict(t_s)
        self._snapshot = self._make_snapshot()
        return None if artifact else self._snapshot

    # ------------------------------------------------------------------ output

    def snapshot(self) -> LiveSnapshot | None:
        """The metrics after the most recent beat; None before the first beat."""
        return self._snapshot

    def tachogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The resampled tachogram currently held: (grid times in s, RR in ms)."""
        values = np.fromiter(self._tacho, dtype=float, count=len(self._tacho))
        if self._tacho_t0 is None:
            return np.empty(0), values
        k = np.arange(self._tacho_k - len(values), self._tacho_k)
        return self._tacho_t0 + k / self.resample_hz, values

    # ------------------------------------------------------------------ internals

    def _is_artifact(self, rr: float, gap_before: bool) -> bool:
        if len(self._median_rr) < 3:
            return False
        median = statistics.median(self._median_rr)
        off_median = abs(rr - median) > self.artifact_threshold * median
        previous = self._last_received_rr
        if gap_before or previous is None:
            return off_median
        return off_median and abs(rr - previous) > self.artifact_threshold * previous

    def _accept(self, t: float, rr: float) -> None:
        if self._successive and self._window:
            last = self._window[-1]
            d2 = (rr - last[1]) ** 2
            last[2] = d2
            self._sum_d2 += d2
            self._n_d2 += 1
        self._window.append([t, rr, None])
        self._successive = True
        self._hr_rr.append(rr)
        self._median_rr.append(rr)
        self._extend_tachogram(self._tacho_clock, rr)

    def _evict(self, t_now: float) -> None:
        cutoff = t_now - self.window_s
        while self._window and self._window[0][0] <= cutoff:
            d2 = self._window.popleft()[2]
            if d2 is not None:
                self._sum_d2 -= d2
                self._n_d2 -= 1
                self._updates_since_resum += 1
        if self._n_d2 == 0:
            self._sum_d2 = 0.0
        elif self._updates_since_resum >= 256:  # bound the rounding drift of the running sum
            self._sum_d2 = math.fsum(b[2] for b in self._window if b[2] is not None)
            self._updates_since_resum = 0

    def _reset_tachogram(self) -> None:
        self._tacho.clear()
        self._tacho_t0 = None
        self._tacho_k = 0
        self._recent_beats.clear()
        self._tacho_clock = None
        self._spectrum = None
        self._lf = self._hf = self._coherence = self._rsa = self._pacer_power = None

    def _extend_tachogram(self, t: float, rr: float) -> None:
        beats = self._recent_beats
        beats.append((t, rr))
        if len(beats) == 2:  # first interval after a (re)start: one-sided slope, as numpy.gradient's edge
            (ta, ya), (tb, yb) = beats
            self._slope_prev = (yb - ya) / (tb - ta)
            self._tacho_t0 = ta
            self._tacho_k = 0
            return
        if len(beats) < 3:
            return
        (ta, ya), (tb, yb), (tc, yc) = beats
        h0, h1 = tb - ta, tc - tb
        slope_b = (h1 * (yb - ya) / h0 + h0 * (yc - yb) / h1) / (h0 + h1)  # derivative of the parabola
        slope_a = self._slope_prev
        step = 1.0 / self.resample_hz
        base = self._tacho_t0
        k = self._tacho_k
        grid_t = base + k * step
        while grid_t < tb:  # cubic Hermite on [ta, tb)
            s = (grid_t - ta) / h0
            s2 = s * s
            s3 = s2 * s
            self._tacho.append((2 * s3 - 3 * s2 + 1) * ya + (s3 - 2 * s2 + s) * h0 * slope_a
                               + (3 * s2 - 2 * s3) * yb + (s3 - s2) * h0 * slope_b)
            k += 1
            grid_t = base + k * step
        self._tacho_k = k
        self._slope_prev = slope_b
        if len(self._tacho) == self._tacho.maxlen:
            self._spectral_countdown -= 1
            if self._spectral_countdown <= 0:
                self._spectral_countdown = self.spectral_every
                self._update_spectrum()

    def _update_spectrum(self) -> None:
        x = np.fromiter(self._tacho, dtype=float, count=len(self._tacho))
        freqs, psd = self._periodogram(x)
        self._spectrum = (freqs, psd)
        self._lf = band_power(freqs, psd, *LF_BAND)
        self._hf = band_power(freqs, psd, *HF_BAND)
        self._coherence = coherence_index(freqs, psd)
        self._hr_trace = 60000.0 / x
        self._update_pacer_dependent()

    def _update_pacer_dependent(self) -> None:
        if self._spectrum is None:
            self._pacer_power = self._rsa = None
            return
        freqs, psd = self._spectrum
        if self._pacer_hz is None:
            self._pacer_power = None
            breath_hz = dominant_frequency(freqs, psd, *RSA_PEAK_SEARCH)
        else:
            f = self._pacer_hz
            self._pacer_power = band_power(freqs, psd, f - NARROW_HALF_WIDTH_HZ, f + NARROW_HALF_WIDTH_HZ,
                                           inclusive=True)
            breath_hz = f
        self._rsa = rsa_peak_to_trough(self._hr_trace, self.resample_hz, 1.0 / breath_hz)

    def _make_snapshot(self) -> LiveSnapshot:
        rmssd = math.sqrt(max(self._sum_d2, 0.0) / self._n_d2) if self._n_d2 > 0 else None
        hr = 60000.0 * len(self._hr_rr) / sum(self._hr_rr) if self._hr_rr else None
        return LiveSnapshot(
            t=self._last_t if self._last_t is not None else math.nan,
            hr_bpm=hr,
            rmssd_ms=rmssd,
            rsa_amplitude_bpm=self._rsa,
            lf_ms2=self._lf,
            hf_ms2=self._hf,
            pacer_band_ms2=self._pacer_power,
            coherence=self._coherence,
            n_beats_window=len(self._window),
            artifacts_total=self._artifacts,
            last_beat_artifact=self._last_artifact,
        )
