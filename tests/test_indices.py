"""Per-phase indices (biofeedback/analysis/indices.py), each against an independent numpy computation."""

from __future__ import annotations

import neurokit2 as nk
import numpy as np
import pytest

from biofeedback.analysis import indices as ix
from biofeedback.analysis.hrv import analyze_phases
from biofeedback.live.metrics import coherence_index, hann_periodogram

# -- independent references ---------------------------------------------------------------------------------------


def ref_dfa(x: np.ndarray, scales=range(4, 17)) -> float:
    """Peng et al. 1995: integrate, non-overlapping boxes, linear detrend, RMS fluctuation, log-log slope."""
    y = np.cumsum(x - x.mean())
    fl = []
    for n in scales:
        k = len(y) // n
        boxes = y[: k * n].reshape(k, n)
        u = np.arange(n)
        res = []
        for b in boxes:
            c = np.polyfit(u, b, 1)
            res.append(np.mean((b - np.polyval(c, u)) ** 2))
        fl.append(np.sqrt(np.mean(res)))
    return float(np.polyfit(np.log(list(scales)), np.log(fl), 1)[0])


def ref_sampen(x: np.ndarray, m: int = 2, r_sd: float = 0.2) -> float:
    """Richman & Moorman 2000: N - m templates of both lengths, Chebyshev distance <= r, self-matches excluded."""
    r = r_sd * np.std(x, ddof=1)
    n = len(x)

    def count(mm: int) -> int:
        t = np.array([x[i : i + mm] for i in range(n - m)])
        d = np.max(np.abs(t[:, None, :] - t[None, :, :]), axis=2)
        return int((np.sum(d <= r) - len(t)) // 2)

    return float(-np.log(count(m + 1) / count(m)))


def ref_stress(nn: np.ndarray) -> float:
    hist: dict[int, int] = {}
    for v in nn:
        hist[int(v // 50)] = hist.get(int(v // 50), 0) + 1
    best = min(hist, key=lambda b: (-hist[b], b))
    mo = (best * 50 + 25) / 1000
    return 100 * hist[best] / len(nn) / (2 * mo * (nn.max() - nn.min()) / 1000)


def coloured_noise(n: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power ~ 1/f^beta (beta 0 white, 1 pink, 2 Brownian) by spectral shaping."""
    f = np.fft.rfftfreq(n)
    amp = np.zeros_like(f)
    amp[1:] = f[1:] ** (-beta / 2)
    spec = amp * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size))
    return np.fft.irfft(spec, n)


# -- the indices --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "expected"), [(0.0, 0.5), (1.0, 1.0), (2.0, 1.5)])
def test_dfa_alpha1_of_white_pink_and_brownian_noise(beta: float, expected: float) -> None:
    rng = np.random.default_rng(7)
    got = [ix.dfa_alpha1(coloured_noise(4096, beta, rng)) for _ in range(4)]
    assert np.mean(got) == pytest.approx(expected, abs=0.12)


def test_dfa_alpha1_equals_the_reference() -> None:
    x = 800 + 30 * coloured_noise(600, 1.0, np.random.default_rng(1)) / 0.05
    assert ix.dfa_alpha1(x) == pytest.approx(ref_dfa(x), rel=1e-9)


def test_sample_entropy_equals_the_reference() -> None:
    rng = np.random.default_rng(3)
    x = 800 + 40 * np.sin(np.arange(300) / 3.0) + rng.normal(0, 15, 300)
    assert ix.sample_entropy(x) == pytest.approx(ref_sampen(x), rel=1e-9)
    white = rng.normal(800, 40, 300)
    assert ix.sample_entropy(white) > ix.sample_entropy(x)  # regular signal: lower entropy


def test_poincare_against_the_identities_and_neurokit() -> None:
    rng = np.random.default_rng(4)
    nn = 850 + 50 * np.sin(np.arange(400) / 2.5) + rng.normal(0, 20, 400)
    sd1, sd2 = ix.poincare_sd([nn])
    d = np.diff(nn)
    assert sd1 == pytest.approx(np.std(d, ddof=1) / np.sqrt(2), rel=1e-12)
    # SD1² + SD2² = 2 var(NN) up to the end effects of the pairs
    assert sd1**2 + sd2**2 == pytest.approx(2 * np.var(nn, ddof=1), rel=0.02)
    peaks = np.concatenate([[0], np.cumsum(nn)]).round().astype(int)  # 1 kHz sample indices
    ref = nk.hrv_nonlinear(peaks, sampling_rate=1000)
    assert sd1 == pytest.approx(float(ref["HRV_SD1"].iloc[0]), rel=2e-3)
    assert sd2 == pytest.approx(float(ref["HRV_SD2"].iloc[0]), rel=2e-3)
    # runs split at a gap: no pair spans it
    a, b = nn[:200], nn[200:] + 300
    sd1_split, _ = ix.poincare_sd([a, b])
    pooled = np.concatenate([np.diff(a), np.diff(b)])
    assert sd1_split == pytest.approx(np.std(pooled, ddof=1) / np.sqrt(2), rel=1e-12)


def test_stress_index_equals_the_hand_computation() -> None:
    nn = np.array([810, 820, 830, 845, 870, 880, 905, 790, 815, 840])
    # bins of 50 ms: 750-800: 1, 800-850: 6, 850-900: 2, 900-950: 1 -> Mo 0.825 s, AMo 60 %, MxDMn 0.115 s
    assert ix.stress_index(nn) == pytest.approx(60 / (2 * 0.825 * 0.115), rel=1e-12)
    rng = np.random.default_rng(5)
    x = rng.normal(800, 40, 500)
    assert ix.stress_index(x) == pytest.approx(ref_stress(x), rel=1e-12)
    assert ix.stress_index(np.full(10, 800.0)) is None


def test_normalised_units() -> None:
    assert ix.normalised_units(300.0, 100.0) == (75.0, 25.0)
    assert ix.normalised_units(None, 100.0) == (None, None)


def test_coherence_ratio_against_a_direct_fft_and_the_live_index() -> None:
    fs, n = 4.0, 256
    t = np.arange(n) / fs
    rng = np.random.default_rng(6)
    x = 900 + 60 * np.sin(2 * np.pi * 0.1 * t) + rng.normal(0, 10, n)
    freqs, psd = hann_periodogram(x, fs, 1024)
    ratio, index = ix.coherence_from_psd(freqs, psd)
    # direct reference: detrend, Hann, zero-padded FFT, one-sided density
    y = x - np.polyval(np.polyfit(t, x, 1), t)
    w = np.hanning(n + 1)[:-1]
    spec = np.abs(np.fft.rfft(y * w, 1024)) ** 2 / (fs * np.sum(w**2))
    spec[1:-1] *= 2
    f = np.fft.rfftfreq(1024, 1 / fs)
    fp = f[(f >= 0.04) & (f <= 0.26)][np.argmax(spec[(f >= 0.04) & (f <= 0.26)])]
    peak = spec[(f >= fp - 0.015) & (f <= fp + 0.015)].sum()
    total = spec[(f >= 0.0033) & (f < 0.40)].sum()
    assert fp == pytest.approx(0.1, abs=0.004)
    assert ratio == pytest.approx(peak / (total - peak), rel=1e-9)
    assert index == pytest.approx(coherence_index(freqs, psd), rel=1e-12)
    assert ratio == pytest.approx(index / (1 - index), rel=1e-9)
    assert ratio > 3  # a clean 6/min rhythm: high coherence in HeartMath's terms


def test_rmssd_over_time_windows_and_gaps() -> None:
    rr = np.tile([800.0, 850.0], 150)  # every successive difference is 50 ms
    t = np.cumsum(rr) / 1000
    seg = np.zeros(t.size, dtype=int)
    seg[150:] = 1
    rr_use = rr.copy()
    rr_use[0] = rr_use[150] = np.nan
    span = np.array([[t[0], t[149]], [t[150], t[-1]]])
    centres, values = ix.rmssd_over_time(t, rr_use, seg, span)
    assert np.allclose(np.diff(centres), 10.0)
    inside = np.isfinite(values)
    assert np.allclose(values[inside], 50.0)
    starts = centres - 30
    spans_gap = (starts < t[150]) & (starts + 60 > t[149])
    assert not inside[spans_gap].any() and inside[~spans_gap].all()


# -- wired into the per-phase metrics ------------------------------------------------------------------------------


def _paced_rr(seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t, rr, out_t, out_rr = 0.0, 0.0, [], []
    while t < seconds:
        rr = 850 + 80 * np.sin(2 * np.pi * 0.1 * t) + rng.normal(0, 8)
        t += rr / 1000
        out_t.append(t)
        out_rr.append(rr)
    return np.array(out_t), np.array(out_rr)


def test_phase_metrics_carry_the_indices_and_say_why_some_are_missing() -> None:
    t, rr = _paced_rr(400, np.random.default_rng(8))
    phases = [("long", "breathing", 0.0, 300.0, None), ("short", "rest", 300.0, 390.0, None)]
    long_, short = analyze_phases(t, rr, phases, correction="none")
    nn = rr[t < 300]
    assert long_.sd1_ms == pytest.approx(np.std(np.diff(nn), ddof=1) / np.sqrt(2), rel=0.05)
    assert long_.dfa_alpha1 is not None and long_.sample_entropy is not None and long_.stress_index is not None
    assert long_.lf_nu + long_.hf_nu == pytest.approx(100.0) and long_.lf_nu > 80  # 6/min breathing is LF
    assert long_.coherence_ratio > 2 and 0 < long_.coherence_index < 1
    assert short.sd1_ms is not None and short.coherence_ratio is not None  # 90 s: one 64 s window and more
    assert short.dfa_alpha1 is not None  # about 105 beats
    assert short.sample_entropy is None and short.stress_index is None and short.lf_nu is None
    assert any("sample entropy needs ≥ 200 beats" in n for n in short.notes)
    assert any("stress index needs ≥ 120 s" in n for n in short.notes)
    d = long_.to_dict()
    assert {"sd1_ms", "sd2_ms", "dfa_alpha1", "sample_entropy", "stress_index", "lf_nu", "hf_nu",
            "coherence_ratio", "coherence_index"} <= set(d)  # fmt: skip


# -- the long table export ---------------------------------------------------------------------------------------


def test_export_all_as_one_long_table_read_back_by_pandas(tmp_path, capsys) -> None:
    import stat

    import pandas as pd

    import app
    from biofeedback.analysis.analyze import analyze_session
    from biofeedback.study.long_table import COLUMNS, INDICES, SYNC_INDICES
    from recordings.store import Store

    store = ["--store", str(tmp_path / "s.sqlite")]
    assert app.main(["study", "simulate", "--participants", "2", "--weeks", "2", "--seed", "5", *store]) == 0
    out = tmp_path / "table"
    assert app.main(["export", "--all", "--include-simulated", "--format", "table", "--out", str(out), *store]) == 0
    path = out / "hrv_long.csv"
    assert str(path) in capsys.readouterr().out.replace("\n", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    df = pd.read_csv(path)
    assert list(df.columns) == COLUMNS
    with Store(tmp_path / "s.sqlite") as s:
        sessions = s.sessions()
        assert sorted(df["session_id"].unique()) == sorted(i.id for i in sessions)
        assert set(df["participant"]) == {"P01", "P02"} and set(df["week"]) == {1, 2}
        sid = sessions[0].id
        analysis = analyze_session(s, sid)
    n_phases = len(analysis.phases)
    grouped = sessions[0].group_id is not None  # simulated weeks are group sessions: synchrony rows too
    assert len(df[df["session_id"] == sid]) == n_phases * (len(INDICES) + (len(SYNC_INDICES) if grouped else 0))
    wide = df[df["session_id"] == sid].pivot(index="phase_index", columns="index", values="value")
    for window, p in zip(analysis.windows, analysis.phases, strict=True):
        for name in ("rmssd_ms", "sd1_ms", "dfa_alpha1", "coherence_ratio", "lf_nu"):
            want = getattr(p, name)
            got = wide.loc[window.index, name]
            assert (pd.isna(got) and want is None) or got == pytest.approx(want, rel=1e-5)
    assert df["value"].dtype == float and df["settings"].str.contains("4-16 beats").any()
    assert df.loc[df["index"] == "dfa_alpha1", "settings"].str.contains("fractal_dfa").all()
    # never silently replaced
    assert app.main(["export", "--all", "--format", "table", "--out", str(out), *store]) == 2
