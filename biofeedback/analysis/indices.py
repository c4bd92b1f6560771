"""HRV indices reviewers expect, per phase, as pure functions on NN intervals (ms) of gap-free runs.

Definitions and settings (also in `INDEX_SETTINGS`, which every table export records beside the values):

- **SD1, SD2** (Poincaré plot, Brennan et al. 2001): the SD (ddof = 1) of (NN[i+1] - NN[i]) / √2 and of
  (NN[i+1] + NN[i]) / √2 over successive pairs inside gap-free runs (no pair spans a gap); identical to
  neurokit2 `hrv_nonlinear` on gap-free data (its Poincaré helpers are private, so the two lines are here).
- **DFA α1** (Peng et al. 1995): neurokit2 `fractal_dfa` on the longest gap-free run, box sizes 4–16 beats
  (every integer), non-overlapping boxes, linear detrending, q = 2. White noise ≈ 0.5, 1/f ≈ 1.0, Brownian ≈ 1.5.
- **Sample entropy** (Richman & Moorman 2000): neurokit2 `entropy_sample`, m = 2, delay 1, r = 0.2 × SD (ddof = 1)
  of the same run, Chebyshev distance, matches at distance ≤ r.
- **Stress index** (Baevsky): SI = AMo / (2 × Mo × MxDMn) with the NN histogram in 50 ms bins (edges at multiples
  of 50 ms): Mo the modal bin's centre (s; the shortest on a tie), AMo its share of NN (%), MxDMn max − min NN (s).
  Kubios shows √SI; this is Baevsky's SI itself. neurokit2 does not compute it.
- **LF, HF in normalised units** (Task Force 1996): LF nu = 100 × LF / (LF + HF), HF nu = 100 × HF / (LF + HF),
  from the phase's absolute LF and HF (ms²). (neurokit2's `LFn` divides by total power including VLF instead.)
- **Coherence ratio** (HeartMath, McCraty et al. 2009, "The coherent heart", Integral Review 5(2); HeartMath
  knowledge base "How is coherence determined"): per 64 s window of the 4 Hz tachogram, stepped by 5 s inside
  gap-free runs, the highest spectral bin in 0.04–0.26 Hz is found; peak power = power within ± 0.015 Hz of it
  (a 0.030 Hz window); coherence ratio = peak power / (total power − peak power), total = 0.0033–0.40 Hz (the
  papers say "the entire spectrum"; this range is ours). The phase value is the mean over its windows. The
  project's own index (`biofeedback.live.metrics.coherence_index`, peak / total in [0, 1]) is reported beside it
  from the same spectra: linear-detrended Hann periodogram, zero-padded to 1024 points
  (`biofeedback.live.metrics.hann_periodogram`).
- **RMSSD over time**: 60 s windows every 10 s; a window has a value only when it lies inside one gap-free segment.

Window rules (a value is None with a note saying why): SD1/SD2 need ≥ 60 s of data (as RMSSD); DFA α1 ≥ 100 NN
in the longest gap-free run (six boxes of 16 beats); sample entropy ≥ 200 NN there (10^m–20^m points for m = 2,
Richman & Moorman); the stress index ≥ 120 s (a histogram of about 100 beats and more); LF/HF nu need LF and HF
(≥ 120 s); the coherence ratio needs at least one full 64 s window in a gap-free run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import neurokit2 as nk
import numpy as np
from scipy.signal import periodogram

from biofeedback.live.metrics import COHERENCE_PEAK_SEARCH, NARROW_HALF_WIDTH_HZ, TOTAL_BAND

MIN_POINCARE_S = 60.0
MIN_DFA_BEATS = 100
DFA_SCALES = tuple(range(4, 17))
MIN_SAMPEN_BEATS = 200
SAMPEN_M = 2
SAMPEN_R_SD = 0.2
MIN_STRESS_S = 120.0
STRESS_BIN_MS = 50.0
COHERENCE_WINDOW_S = 64.0
COHERENCE_STEP_S = 5.0
COHERENCE_FS_HZ = 4
COHERENCE_NFFT = 1024
RMSSD_WINDOW_S = 60.0
RMSSD_STEP_S = 10.0

INDEX_SETTINGS = {
    "poincare": "SD1/SD2: SD (ddof 1) of (NN[i+1]-NN[i])/sqrt2 and (NN[i+1]+NN[i])/sqrt2, pairs within gap-free runs",
    "dfa_alpha1": "neurokit2 fractal_dfa, boxes 4-16 beats, non-overlapping, order 1, longest gap-free run",
    "sample_entropy": "neurokit2 entropy_sample, m=2, delay 1, r=0.2*SD(ddof 1), Chebyshev, longest gap-free run",
    "stress_index": "Baevsky SI = AMo%/(2*Mo*MxDMn), 50 ms bins, Mo and MxDMn in s (Kubios shows sqrt(SI))",
    "normalised_units": "LF nu = 100*LF/(LF+HF), HF nu = 100*HF/(LF+HF)",
    "coherence_ratio": "HeartMath (McCraty et al. 2009): peak(+-0.015 Hz of max in 0.04-0.26 Hz)/(total 0.0033-0.40 "
    "Hz - peak), 64 s windows every 5 s, 4 Hz tachogram, Hann, linear detrend, nfft 1024; mean over windows",
    "coherence_index": "project index: peak/total power on the same spectra, in [0, 1], mean over windows",
    "window_rules": f"SD1/SD2 >= {MIN_POINCARE_S:.0f} s; DFA >= {MIN_DFA_BEATS} NN; SampEn >= {MIN_SAMPEN_BEATS} NN "
    f"(longest gap-free run); SI >= {MIN_STRESS_S:.0f} s; nu needs LF (>= 120 s); coherence >= one 64 s window",
}


@dataclass
class PhaseIndices:
    """The indices of one phase; None where a window rule or the data rule them out (see `notes`)."""

    sd1_ms: float | None = None
    sd2_ms: float | None = None
    dfa_alpha1: float | None = None
    sample_entropy: float | None = None
    stress_index: float | None = None
    lf_nu: float | None = None
    hf_nu: float | None = None
    coherence_ratio: float | None = None
    coherence_index: float | None = None
    coherence_windows: int = 0
    notes: list[str] = field(default_factory=list)


def poincare_sd(runs: list[np.ndarray]) -> tuple[float | None, float | None]:
    """SD1, SD2 (ms) over successive NN pairs inside each run; None with fewer than 3 pairs."""
    pairs = [(r[:-1], r[1:]) for r in runs if len(r) > 1]
    if not pairs:
        return None, None
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    if a.size < 3:
        return None, None
    return float(np.std((b - a) / np.sqrt(2), ddof=1)), float(np.std((b + a) / np.sqrt(2), ddof=1))


def dfa_alpha1(nn: np.ndarray) -> float:
    """Short-term DFA exponent over boxes of 4-16 beats (neurokit2, non-overlapping boxes)."""
    alpha, _ = nk.fractal_dfa(np.asarray(nn, dtype=float), scale=np.array(DFA_SCALES), overlap=False)
    return float(alpha)


def sample_entropy(nn: np.ndarray) -> float:
    """SampEn with m = 2, r = 0.2 SD (ddof 1); inf when no template of length 3 matches."""
    x = np.asarray(nn, dtype=float)
    value, _ = nk.entropy_sample(x, dimension=SAMPEN_M, delay=1, tolerance=SAMPEN_R_SD * float(np.std(x, ddof=1)))
    return float(value)


def stress_index(nn: np.ndarray) -> float | None:
    """Baevsky's stress index of NN intervals (ms); None when all NN are equal (MxDMn = 0)."""
    x = np.asarray(nn, dtype=float)
    spread_s = (float(np.max(x)) - float(np.min(x))) / 1000.0
    if spread_s <= 0:
        return None
    bins, counts = np.unique(np.floor(x / STRESS_BIN_MS), return_counts=True)
    k = int(np.argmax(counts))  # the first (shortest) modal bin on a tie
    mode_s = (bins[k] + 0.5) * STRESS_BIN_MS / 1000.0
    amo_pct = 100.0 * counts[k] / x.size
    return float(amo_pct / (2.0 * mode_s * spread_s))


def normalised_units(lf_ms2: float | None, hf_ms2: float | None) -> tuple[float | None, float | None]:
    """LF and HF as % of LF + HF; None when either is missing or both are zero."""
    if lf_ms2 is None or hf_ms2 is None or lf_ms2 + hf_ms2 <= 0:
        return None, None
    total = lf_ms2 + hf_ms2
    return 100.0 * lf_ms2 / total, 100.0 * hf_ms2 / total


def coherence_from_psd(freqs: np.ndarray, psd: np.ndarray) -> tuple[float | None, float]:
    """(HeartMath coherence ratio, project index peak/total) of one spectrum; the ratio is None when no power
    lies outside the peak window (a perfect sinusoid)."""
    df = freqs[1] - freqs[0]
    total = float(np.sum(psd[(freqs >= TOTAL_BAND[0]) & (freqs < TOTAL_BAND[1])]) * df)
    search = np.flatnonzero((freqs >= COHERENCE_PEAK_SEARCH[0]) & (freqs <= COHERENCE_PEAK_SEARCH[1]))
    f_peak = freqs[search[np.argmax(psd[search])]]
    near = (freqs >= f_peak - NARROW_HALF_WIDTH_HZ) & (freqs <= f_peak + NARROW_HALF_WIDTH_HZ)
    peak = float(np.sum(psd[near]) * df)
    if total <= 0:
        return None, 0.0
    rest = total - peak
    return (peak / rest if rest > 0 else None), min(1.0, peak / total)


def tachogram_4hz(beat_t: np.ndarray, rr_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One gap-free run of RR interpolated at 4 Hz (neurokit2 `intervals_process`, times from the RR sum)."""
    rr = np.asarray(rr_ms, dtype=float)
    t_rr = float(beat_t[0]) + (np.cumsum(rr) - rr[0]) / 1000.0
    tach, _, fs = nk.intervals_process(rr, intervals_time=t_rr, interpolate=True, interpolation_rate=COHERENCE_FS_HZ)
    tach = np.asarray(tach, dtype=float)
    return t_rr[0] + np.arange(tach.size) / fs, tach


def coherence_series(
    runs: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window start times, coherence ratios (NaN: undefined) and project indices over 64 s windows every 5 s.

    `runs` holds (beat times, NN ms) of each gap-free run; windows never span a gap."""
    n_win = round(COHERENCE_WINDOW_S * COHERENCE_FS_HZ)
    step = round(COHERENCE_STEP_S * COHERENCE_FS_HZ)
    starts, ratios, indices = [], [], []
    for t, rr in runs:
        if len(rr) < 4:
            continue
        tt, x = tachogram_4hz(t, rr)
        if x.size < n_win:
            continue
        first = np.arange(0, x.size - n_win + 1, step)
        stack = np.lib.stride_tricks.sliding_window_view(x, n_win)[first]
        # linear detrend of every window at once (scipy's per-window least squares is most of the cost of an hour)
        k = np.arange(n_win) - (n_win - 1) / 2.0
        centred = stack - stack.mean(axis=1, keepdims=True)
        detrended = centred - np.outer(centred @ k / float(k @ k), k)
        freqs, psd = periodogram(detrended, fs=COHERENCE_FS_HZ, window="hann", nfft=COHERENCE_NFFT, detrend=False,
                                 axis=-1)  # fmt: skip
        ratio, index = _coherence_rows(freqs, psd)
        starts += list(tt[first])
        ratios += list(ratio)
        indices += list(index)
    return np.array(starts), np.array(ratios), np.array(indices)


def _coherence_rows(freqs: np.ndarray, psd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`coherence_from_psd` of every row of `psd` at once (ratio NaN where it is None): an hour has 700 windows."""
    df = freqs[1] - freqs[0]
    total = np.sum(psd[:, (freqs >= TOTAL_BAND[0]) & (freqs < TOTAL_BAND[1])], axis=1) * df
    search = np.flatnonzero((freqs >= COHERENCE_PEAK_SEARCH[0]) & (freqs <= COHERENCE_PEAK_SEARCH[1]))
    f_peak = freqs[search[np.argmax(psd[:, search], axis=1)]]
    near = (freqs >= f_peak[:, None] - NARROW_HALF_WIDTH_HZ) & (freqs <= f_peak[:, None] + NARROW_HALF_WIDTH_HZ)
    peak = np.sum(np.where(near, psd, 0.0), axis=1) * df
    rest = total - peak
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((total > 0) & (rest > 0), peak / rest, np.nan)
        index = np.where(total > 0, np.minimum(1.0, peak / total), 0.0)
    return ratio, index


def rmssd_over_time(
    beat_t: np.ndarray,
    rr_ms: np.ndarray,
    seg: np.ndarray,
    seg_span: np.ndarray,
    window_s: float = RMSSD_WINDOW_S,
    step_s: float = RMSSD_STEP_S,
) -> tuple[np.ndarray, np.ndarray]:
    """Window centres (s) and RMSSD (ms) over `window_s` windows every `step_s`, from the first to the last beat.

    A window [s, s + window_s) has a value only when it lies inside one gap-free segment (`seg_span` rows: first
    and last beat time); its RMSSD uses the successive differences of consecutive usable beats both inside it.
    NaN RR are unusable beats (a segment's first beat)."""
    t = np.asarray(beat_t, dtype=float)
    rr = np.asarray(rr_ms, dtype=float)
    if t.size < 2:
        return np.zeros(0), np.zeros(0)
    starts = np.arange(t[0], t[-1] - window_s + 1e-9, step_s)
    out = np.full(starts.size, np.nan)
    ok_pair = np.isfinite(rr[1:]) & np.isfinite(rr[:-1]) & (seg[1:] == seg[:-1])
    d2 = np.where(ok_pair, np.diff(rr), 0.0) ** 2
    for k, s in enumerate(starts):
        e = s + window_s
        if not np.any((seg_span[:, 0] <= s) & (seg_span[:, 1] >= e)):
            continue
        lo, hi = np.searchsorted(t, [s, e])  # beats lo..hi-1 lie in the window
        if hi - lo < 3:
            continue
        use = ok_pair[lo : hi - 1]
        if use.any():
            out[k] = float(np.sqrt(np.mean(d2[lo : hi - 1][use])))
    return starts + window_s / 2, out


def phase_indices(
    runs: list[tuple[np.ndarray, np.ndarray]],
    duration_s: float,
    lf_ms2: float | None,
    hf_ms2: float | None,
) -> PhaseIndices:
    """All indices of one phase from its gap-free runs (beat times, NN ms), its covered seconds and LF/HF."""
    out = PhaseIndices()
    nn_runs = [np.asarray(rr, dtype=float) for _, rr in runs]
    nn = np.concatenate(nn_runs) if nn_runs else np.zeros(0)
    longest = max(nn_runs, key=len) if nn_runs else np.zeros(0)
    if duration_s >= MIN_POINCARE_S:
        out.sd1_ms, out.sd2_ms = poincare_sd(nn_runs)
    else:
        out.notes.append(f"SD1/SD2 need ≥ {MIN_POINCARE_S:.0f} s; phase has {duration_s:.1f} s")
    if longest.size >= MIN_DFA_BEATS:
        out.dfa_alpha1 = dfa_alpha1(longest)
    else:
        out.notes.append(f"DFA α1 needs ≥ {MIN_DFA_BEATS} beats in one gap-free stretch; longest has {longest.size}")
    if longest.size >= MIN_SAMPEN_BEATS:
        value = sample_entropy(longest)
        if np.isfinite(value):
            out.sample_entropy = value
        else:
            out.notes.append("sample entropy undefined: no matching templates at r = 0.2 SD")
    else:
        out.notes.append(
            f"sample entropy needs ≥ {MIN_SAMPEN_BEATS} beats in one gap-free stretch; longest has {longest.size}"
        )
    if duration_s >= MIN_STRESS_S:
        out.stress_index = stress_index(nn)
        if out.stress_index is None:
            out.notes.append("stress index undefined: all NN intervals are equal")
    else:
        out.notes.append(f"stress index needs ≥ {MIN_STRESS_S:.0f} s; phase has {duration_s:.1f} s")
    out.lf_nu, out.hf_nu = normalised_units(lf_ms2, hf_ms2)
    _, ratios, idx = coherence_series(runs)
    out.coherence_windows = int(idx.size)
    if idx.size:
        out.coherence_index = float(np.mean(idx))
        finite = ratios[np.isfinite(ratios)]
        out.coherence_ratio = float(np.mean(finite)) if finite.size else None
    else:
        out.notes.append(f"coherence needs one gap-free {COHERENCE_WINDOW_S:.0f} s window; phase has none")
    return out
