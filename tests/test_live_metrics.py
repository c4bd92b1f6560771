"""Live metrics against batch references (neurokit2 and scipy) on real and generated RR series.

Tolerances: RMSSD equals neurokit2 `hrv_time` to rel 1e-9. The spectral estimator (spline tachogram + Hann
periodogram over 64 s) is checked against the same method computed in batch with scipy to rel 1e-9, against
the known power of generated sinusoids within ±15 % (LF/HF), and against neurokit2 `hrv_frequency` (quadratic
interpolation + Welch with 32 s segments, a different estimator) within ±25 % on LF and HF.
"""

from __future__ import annotations

import math
import warnings

import neurokit2 as nk
import numpy as np
import pandas as pd
import pytest
import scipy.interpolate
import scipy.signal

from biofeedback.live.metrics import LF_BAND, LiveMetrics, LiveSnapshot, coherence_index


def simulate_rr(
    duration_s: float, a_lf: float = 0.0, f_lf: float = 0.1, a_hf: float = 0.0, f_hf: float = 0.25,
    noise_ms: float = 0.0, mean_ms: float = 900.0, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """RR series (ms) modulated by sinusoids at beat onsets, plus white noise; beat times = cumulative RR."""
    rng = np.random.default_rng(seed)
    t, times, rrs = 0.0, [], []
    while t < duration_s:
        rr = (mean_ms + a_lf * math.sin(2 * math.pi * f_lf * t) + a_hf * math.sin(2 * math.pi * f_hf * t)
              + noise_ms * rng.normal())
        t += rr / 1000.0
        times.append(t)
        rrs.append(rr)
    return np.array(times), np.array(rrs)


def feed(lm: LiveMetrics, times, rrs, gaps=()) -> list[LiveSnapshot]:
    out = []
    for i, (t, rr) in enumerate(zip(times, rrs, strict=True)):
        lm.add_beat(float(t), float(rr), gap_before=i in gaps)
        out.append(lm.snapshot())
    return out


def batch_spectrum(times: np.ndarray, rrs: np.ndarray, fs: float = 4.0, n: int = 256, nfft: int = 1024):
    """Same method as the live engine, from scratch: RR-axis times, spline, grid, scipy periodogram."""
    axis = times[0] + np.concatenate([[0.0], np.cumsum(rrs[1:]) / 1000.0])
    grid = axis[0] + np.arange(int(np.ceil((axis[-2] - axis[0]) * fs))) / fs
    grid = grid[grid < axis[-2]][-n:]
    x = scipy.interpolate.CubicHermiteSpline(axis, rrs, np.gradient(rrs, axis))(grid)
    return scipy.signal.periodogram(x, fs, window="hann", nfft=nfft, detrend="linear")


def power(freqs, psd, lo, hi):
    return float(np.sum(psd[(freqs >= lo) & (freqs < hi)]) * (freqs[1] - freqs[0]))


@pytest.fixture(scope="module")
def dhyb(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / "polar_h10_dhyb_ibi.csv")


@pytest.fixture(scope="module")
def gudb(shared_data) -> pd.DataFrame:
    frame = pd.read_csv(shared_data / "gudb_rpeaks_250hz.csv")
    return frame[(frame["lead"] == "cs") & frame["rr_ms"].notna()]


# ---------------------------------------------------------------- RMSSD against neurokit2


def test_rmssd_equals_neurokit_on_real_data(dhyb):
    times, rrs = dhyb["t_s"].to_numpy(), dhyb["ibi_ms"].to_numpy()
    snaps = feed(LiveMetrics(window_s=60.0), times, rrs)
    assert snaps[-1].artifacts_total == 0  # clean real recording: every beat is used
    for i in range(70, len(times), 41):
        in_window = (times > times[i] - 60.0) & (times <= times[i])
        batch = nk.hrv_time({"RRI": rrs[in_window]}, sampling_rate=1000)["HRV_RMSSD"].iloc[0]
        assert snaps[i].rmssd_ms == pytest.approx(batch, rel=1e-9)
        assert snaps[i].n_beats_window == int(in_window.sum())


def test_rmssd_running_sum_does_not_drift_over_an_hour():
    times, rrs = simulate_rr(3600, a_lf=60, a_hf=25, noise_ms=30, seed=3)
    lm = LiveMetrics()
    snaps = feed(lm, times, rrs)
    for i in (len(times) // 2, len(times) - 1):
        win = rrs[(times > times[i] - 60.0) & (times <= times[i])]
        batch = nk.hrv_time({"RRI": win}, sampling_rate=1000)["HRV_RMSSD"].iloc[0]
        assert snaps[i].rmssd_ms == pytest.approx(batch, rel=1e-9)


def test_rmssd_excludes_differences_across_a_gap():
    times, rrs = simulate_rr(160, a_lf=50, noise_ms=40, seed=5)
    times = times.copy()
    gap_at = 100
    times[gap_at:] += 4.0  # four seconds of beats lost in a disconnect
    snaps = feed(LiveMetrics(), times, rrs, gaps={gap_at})
    i = gap_at + 20
    in_window = (times > times[i] - 60.0) & (times <= times[i])
    # neurokit2 drops non-successive differences itself when RRI_Time shows the hole
    batch = nk.hrv_time({"RRI": rrs[in_window], "RRI_Time": times[in_window]}, sampling_rate=1000)
    assert snaps[i].rmssd_ms == pytest.approx(batch["HRV_RMSSD"].iloc[0], rel=1e-9)
    naive = math.sqrt(np.mean(np.diff(rrs[in_window]) ** 2))
    assert snaps[i].rmssd_ms != pytest.approx(naive, rel=1e-6)
    # the gap restarts the tachogram: spectral values are missing until 64 s have been seen again
    assert snaps[gap_at].lf_ms2 is None and snaps[gap_at - 1].lf_ms2 is not None


# ---------------------------------------------------------------- spectral measures


@pytest.mark.parametrize(("a_lf", "a_hf", "f_hf"), [(40.0, 20.0, 0.25), (30.0, 30.0, 0.2), (50.0, 0.0, 0.25)])
def test_spectrum_equals_same_method_batch_and_known_power(a_lf, a_hf, f_hf):
    times, rrs = simulate_rr(200, a_lf=a_lf, a_hf=a_hf, f_hf=f_hf, noise_ms=2, seed=1)
    lm = LiveMetrics()
    snap = feed(lm, times, rrs)[-1]
    freqs, psd = batch_spectrum(times, rrs)
    assert snap.lf_ms2 == pytest.approx(power(freqs, psd, 0.04, 0.15), rel=1e-9)
    assert snap.hf_ms2 == pytest.approx(power(freqs, psd, 0.15, 0.40), rel=1e-9)
    assert snap.coherence == pytest.approx(coherence_index(freqs, psd), rel=1e-9)
    grid_t, x = lm.tachogram()
    assert len(x) == 256 and np.allclose(np.diff(grid_t), 0.25)
    # known content: a sinusoid of amplitude A has power A²/2 (±15 %; the spline loses a little at HF)
    assert snap.lf_ms2 == pytest.approx(a_lf**2 / 2, rel=0.15)
    assert snap.hf_ms2 == pytest.approx(a_hf**2 / 2, rel=0.15, abs=5.0)


def test_lf_hf_agree_loosely_with_neurokit():
    times, rrs = simulate_rr(200, a_lf=40, a_hf=25, noise_ms=5, seed=2)
    snap = feed(LiveMetrics(), times, rrs)[-1]
    window = times > times[-1] - 64.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = nk.hrv_frequency({"RRI": rrs[window], "RRI_Time": times[window]}, sampling_rate=1000,
                               normalize=False, interpolation_rate=4)
    assert snap.lf_ms2 == pytest.approx(ref["HRV_LF"].iloc[0], rel=0.25)
    assert snap.hf_ms2 == pytest.approx(ref["HRV_HF"].iloc[0], rel=0.25)


def test_paced_sinusoid_dominates_pacer_band_and_is_coherent():
    mean_ms, a = 900.0, 60.0
    times, rrs = simulate_rr(180, a_lf=a, f_lf=0.1, noise_ms=5, mean_ms=mean_ms, seed=4)
    lm = LiveMetrics()
    lm.set_pacer(6.0)  # 6 breaths/min = 0.1 Hz
    snap = feed(lm, times, rrs)[-1]
    assert snap.pacer_band_ms2 > 0.7 * (snap.lf_ms2 + snap.hf_ms2)
    assert snap.coherence > 0.75
    expected = 60000 / (mean_ms - a) - 60000 / (mean_ms + a)  # peak-to-trough HR of the modulation
    assert snap.rsa_amplitude_bpm == pytest.approx(expected, rel=0.1)
    lm.set_pacer(15.0)  # a pacer far from the oscillation sees little power
    assert lm.snapshot().pacer_band_ms2 < 0.05 * snap.pacer_band_ms2
    lm.set_pacer(None)
    unpaced = lm.snapshot()
    assert unpaced.pacer_band_ms2 is None
    assert unpaced.rsa_amplitude_bpm == pytest.approx(expected, rel=0.1)  # cycle from the dominant peak


def test_white_noise_rr_has_low_coherence():
    times, rrs = simulate_rr(600, noise_ms=40, seed=6)
    coherences = [s.coherence for s in feed(LiveMetrics(), times, rrs) if s.coherence is not None]
    assert np.median(coherences) < 0.3
    paced_times, paced_rrs = simulate_rr(600, a_lf=40, noise_ms=10, seed=6)
    paced = [s.coherence for s in feed(LiveMetrics(), paced_times, paced_rrs) if s.coherence is not None]
    assert np.median(paced) > 2 * np.median(coherences)


def test_real_slow_breathing_is_coherent_in_lf(dhyb):
    snaps = feed(LiveMetrics(), dhyb["t_s"].to_numpy(), dhyb["ibi_ms"].to_numpy())
    spectral = [s for s in snaps if s.coherence is not None]
    assert len(spectral) > 400
    assert np.median([s.coherence for s in spectral]) > 0.5
    # slow breathing puts the RSA in LF, not HF
    assert np.median([s.lf_ms2 / s.hf_ms2 for s in spectral]) > 5
    assert np.median([s.rsa_amplitude_bpm for s in spectral]) > 8


def test_gudb_live_rmssd_lower_in_maths_than_sitting(gudb):
    lower, total = 0, 0
    for _subject, rows in gudb.groupby("subject"):
        values = {}
        for condition in ("sitting", "maths"):
            rec = rows[rows["condition"] == condition]
            if len(rec) < 60:
                continue
            times = rec["rpeak_sample_250hz"].to_numpy() / 250.0
            snaps = feed(LiveMetrics(window_s=60.0), times, rec["rr_ms"].to_numpy())
            values[condition] = np.median([s.rmssd_ms for s in snaps[len(snaps) // 2:]])
        if len(values) == 2:
            total += 1
            lower += values["maths"] < values["sitting"]
    assert total >= 20, f"only {total} subjects had both records"
    assert lower / total >= 0.6


# ---------------------------------------------------------------- artifacts


def test_ectopic_beat_is_flagged_and_display_does_not_jump(dhyb):
    times, rrs = dhyb["t_s"].to_numpy().copy(), dhyb["ibi_ms"].to_numpy().copy()
    k = 300
    premature = 0.65 * rrs[k]
    rrs[k + 1] += rrs[k] - premature  # compensatory pause keeps the beat after on time
    rrs[k] = premature
    clean = feed(LiveMetrics(), dhyb["t_s"].to_numpy(), dhyb["ibi_ms"].to_numpy())
    lm = LiveMetrics()
    hit = feed(lm, times, rrs)
    assert hit[-1].artifacts_total == 2
    assert hit[k].last_beat_artifact and hit[k + 1].last_beat_artifact and not hit[k + 2].last_beat_artifact
    assert lm.add_beat(times[-1] + 0.3, 300.0) is None  # a premature beat returns no new snapshot
    for i in range(k, k + 60):
        # three of ~60 successive differences are dropped (the real ones around the ectopic pair)
        assert hit[i].rmssd_ms == pytest.approx(clean[i].rmssd_ms, rel=0.2)
        assert hit[i].hr_bpm == pytest.approx(clean[i].hr_bpm, rel=0.1)  # two of five beats differ
        assert hit[i].coherence == pytest.approx(clean[i].coherence, abs=0.1)
    # without screening the same beat makes RMSSD jump: the bound above is not trivially met
    naive = feed(LiveMetrics(artifact_threshold=10.0), times, rrs)
    assert naive[-1].artifacts_total == 0
    assert naive[k + 1].rmssd_ms > 2 * clean[k + 1].rmssd_ms
    hr_steps = np.abs(np.diff([s.hr_bpm for s in hit[k - 60:k + 60]]))
    clean_steps = np.abs(np.diff([s.hr_bpm for s in clean[k - 60:k + 60]]))
    assert hr_steps.max() <= 1.25 * clean_steps.max()


def test_sustained_rate_change_is_accepted_after_one_beat():
    lm = LiveMetrics()
    t = 0.0
    for _ in range(20):
        t += 1.0
        lm.add_beat(t, 1000.0)
    for _ in range(20):
        t += 0.7
        lm.add_beat(t, 700.0)
    snap = lm.snapshot()
    assert snap.artifacts_total == 1
    assert snap.hr_bpm == pytest.approx(60000 / 700)


# ---------------------------------------------------------------- input handling


def test_bad_input_raises_and_keeps_state():
    lm = LiveMetrics()
    lm.add_beat(1.0, 900.0)
    before = lm.snapshot()
    with pytest.raises(ValueError, match="RR must be > 0"):
        lm.add_beat(2.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        lm.add_beat(2.0, float("nan"))
    with pytest.raises(ValueError, match="before the previous beat"):
        lm.add_beat(0.5, 900.0)
    with pytest.raises(ValueError, match="pacer rate"):
        lm.set_pacer(-3.0)
    with pytest.raises(ValueError, match="window_s"):
        LiveMetrics(window_s=0.0)
    assert lm.snapshot() == before
    assert lm.add_beat(1.0, 905.0) is not None  # equal times are allowed (batched RR)


def test_snapshot_before_any_beat_and_out_of_range_rr():
    lm = LiveMetrics()
    assert lm.snapshot() is None
    assert lm.add_beat(1.0, 5000.0) is None
    snap = lm.snapshot()
    assert snap.artifacts_total == 1 and snap.hr_bpm is None and snap.rmssd_ms is None
    assert LF_BAND == (0.04, 0.15)
