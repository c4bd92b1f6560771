"""Batch HRV per phase: real recordings (GUDB, Polar H10) and generated series with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import neurokit2 as nk
import numpy as np
import pandas as pd
import pytest

from biofeedback.analysis.hrv import PhaseMetrics, analyze_phases

EXPECTED_KEYS = {
    "name", "kind", "start_s", "end_s", "n_beats", "corrected_pct", "mean_hr_bpm", "rmssd_ms", "sdnn_ms",
    "pnn50_pct", "lf_ms2", "hf_ms2", "lf_peak_hz", "breathing_rate_bpm", "breathing_rate_source", "notes",
    "sd1_ms", "sd2_ms", "dfa_alpha1", "sample_entropy", "stress_index", "lf_nu", "hf_nu", "coherence_ratio",
    "coherence_index", "acc_breathing_rate_bpm", "pacer_rate_bpm", "n_breaths", "rsa_p2t_bpm", "pacer_compliance_pct",
}  # fmt: skip


def whole(name: str = "all", pacer: float | None = None) -> list:
    return [(name, "rest", -1e6, 1e6, pacer)]


def rsa_series(
    duration_s: float, seed: int = 0, hf_amp: float = 40.0, hf_hz: float = 0.25, lf_amp: float = 0.0,
    lf_hz: float = 0.1, noise_ms: float = 5.0, mean_ms: float = 850.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Integer-ms RR with sinusoidal modulation sampled at the beats, and beat times from the RR sum."""
    rng = np.random.default_rng(seed)
    t, rr = 0.0, []
    while t < duration_s:
        v = mean_ms + hf_amp * np.sin(2 * np.pi * hf_hz * t) + lf_amp * np.sin(2 * np.pi * lf_hz * t)
        v = float(np.round(v + rng.normal(0, noise_ms)))
        rr.append(v)
        t += v / 1000.0
    rr_a = np.array(rr)
    return np.cumsum(rr_a) / 1000.0, rr_a


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def gudb_cs(shared_data: Path) -> pd.DataFrame:
    df = pd.read_csv(shared_data / "gudb_rpeaks_250hz.csv")
    return df[df["lead"] == "cs"]


def _gudb_record(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    peaks = df["rpeak_sample_250hz"].to_numpy()
    return peaks, peaks / 250.0, df["rr_ms"].to_numpy()


def test_gudb_rmssd_lower_in_maths_than_sitting(gudb_cs: pd.DataFrame) -> None:
    lower, pairs = 0, 0
    for _, subject in gudb_cs.groupby("subject"):
        rmssd = {}
        for condition in ("sitting", "maths"):
            rec = subject[subject["condition"] == condition]
            if rec.empty:
                continue
            _, t, rr = _gudb_record(rec)
            (m,) = analyze_phases(t, rr, [(condition, "task", 0.0, t[-1] + 1.0, None)])
            assert m.rmssd_ms is not None, m.notes
            rmssd[condition] = m.rmssd_ms
        if len(rmssd) == 2:
            pairs += 1
            lower += rmssd["maths"] < rmssd["sitting"]
    assert pairs >= 20
    assert lower / pairs >= 0.7, f"maths RMSSD lower in only {lower}/{pairs} subjects"


def test_gudb_time_domain_equals_neurokit(gudb_cs: pd.DataFrame) -> None:
    for (subject, condition), rec in list(gudb_cs.groupby(["subject", "condition"]))[:15]:
        peaks, t, rr = _gudb_record(rec)
        (m,) = analyze_phases(t, rr, whole(), correction="none")
        ref = nk.hrv_time(peaks, sampling_rate=250).iloc[0]
        label = f"subject {subject} {condition}"
        assert m.n_beats == len(peaks) - 1, label
        assert m.rmssd_ms == pytest.approx(ref["HRV_RMSSD"], rel=1e-12), label
        assert m.sdnn_ms == pytest.approx(ref["HRV_SDNN"], rel=1e-12), label
        assert m.pnn50_pct == pytest.approx(ref["HRV_pNN50"], rel=1e-12), label
        assert m.mean_hr_bpm == pytest.approx(60000.0 / ref["HRV_MeanNN"], rel=1e-12), label


def test_polar_slow_breathing_rate_and_note(shared_data: Path) -> None:
    df = pd.read_csv(shared_data / "polar_h10_dhyb_ibi.csv")
    (m,) = analyze_phases(df["t_s"].to_numpy(), df["ibi_ms"].to_numpy(), whole("breathing"))
    assert m.breathing_rate_source == "rsa"
    assert 3.0 <= m.breathing_rate_bpm <= 6.0
    assert any("moves RSA into LF" in n and "HF does not index vagal" in n for n in m.notes), m.notes
    assert m.lf_ms2 > 10 * m.hf_ms2  # slow breathing puts the RSA power in LF
    assert m.lf_peak_hz == pytest.approx(m.breathing_rate_bpm / 60.0)


def test_polar_pvc_recording_gets_corrected(shared_data: Path) -> None:
    df = pd.read_csv(shared_data / "polar_h10_detectpvc_ecg130hz_rr.csv").dropna(subset=["rr"])
    rr = df["rr"].to_numpy(dtype=float)
    t = np.cumsum(rr) / 1000.0
    minutes = [(f"min{i}", "rest", 60.0 * i, 60.0 * (i + 1), None) for i in range(10)]
    (total,) = analyze_phases(t, rr, whole())
    assert total.corrected_pct > 2.0
    per_minute = analyze_phases(t, rr, minutes)
    flagged = [m for m in per_minute if m.corrected_pct > 5.0]
    assert flagged, [m.corrected_pct for m in per_minute]
    assert all(any("beats corrected" in n for n in m.notes) for m in flagged)
    assert all(not any("beats corrected" in n for n in m.notes) for m in per_minute if m.corrected_pct <= 5)
    (raw,) = analyze_phases(t, rr, whole(), correction="none")
    assert raw.corrected_pct is None
    assert raw.rmssd_ms != total.rmssd_ms


# -------------------------------------------------------------------------------------- generated data


def test_alternating_series_has_known_rmssd_and_sdnn() -> None:
    n, a = 200, 25.0
    rr = 800.0 + a * (-1.0) ** np.arange(n)
    t = np.cumsum(rr) / 1000.0
    for correction in ("none", "kubios"):
        (m,) = analyze_phases(t, rr, whole(), correction=correction)
        assert m.n_beats == n
        assert m.rmssd_ms == pytest.approx(2 * a, rel=1e-12)
        assert m.sdnn_ms == pytest.approx(a * np.sqrt(n / (n - 1)), rel=1e-12)
        assert m.pnn50_pct == 0.0  # |diff| is exactly 50, not above it
        assert m.mean_hr_bpm == pytest.approx(75.0)
    assert m.corrected_pct == 0.0


def _inject_ectopics(rr: np.ndarray, where: np.ndarray, prematurity: float = 0.35) -> np.ndarray:
    out = rr.copy()
    for i in where:
        shift = np.round(prematurity * out[i])
        out[i] -= shift  # premature beat ...
        out[i + 1] += shift  # ... and compensatory pause: the next beat keeps its time
    return out


@pytest.mark.parametrize("n_ectopic", [4, 25])
def test_injected_ectopic_beats_are_corrected_and_counted(n_ectopic: int) -> None:
    t, clean = rsa_series(300, seed=3)
    where = np.linspace(20, len(clean) - 20, n_ectopic).astype(int)
    dirty = _inject_ectopics(clean, where)
    t = np.cumsum(dirty) / 1000.0
    (ref,) = analyze_phases(t, clean, whole(), correction="none")
    (raw,) = analyze_phases(t, dirty, whole(), correction="none")
    (fixed,) = analyze_phases(t, dirty, whole(), correction="kubios")
    share = 100.0 * n_ectopic / len(clean)
    # one event per ectopic beat and its compensatory pause (neurokit2's own correction moved 2-3 beats each)
    assert fixed.corrected_pct == pytest.approx(share, rel=0.1)
    assert raw.rmssd_ms > 2 * ref.rmssd_ms
    assert fixed.rmssd_ms == pytest.approx(ref.rmssd_ms, rel=0.05)
    has_note = any("beats corrected" in n for n in fixed.notes)
    assert has_note == (fixed.corrected_pct > 5.0)
    assert has_note == (n_ectopic == 25)


def test_gap_before_keeps_its_interval_and_excludes_the_spanning_difference() -> None:
    t1, rr1 = rsa_series(120, seed=1)
    t2, rr2 = rsa_series(120, seed=2, mean_ms=700.0)
    gap_s = 30.0
    t = np.concatenate([t1, t1[-1] + gap_s + t2])
    rr = np.concatenate([rr1, rr2])
    gap = np.zeros(len(rr), dtype=bool)
    gap[len(rr1)] = True
    # the first RR after the gap is a measured interval (from a beat that was not reported): it counts, but no
    # successive difference spans the gap
    nn = np.concatenate([rr1, rr2])
    diffs = np.concatenate([np.diff(rr1), np.diff(rr2)])
    (m,) = analyze_phases(t, rr, whole(), correction="none", gap_before=gap)
    assert m.n_beats == len(nn)
    assert m.rmssd_ms == pytest.approx(np.sqrt(np.mean(diffs**2)), rel=1e-12)
    assert m.sdnn_ms == pytest.approx(np.std(nn, ddof=1), rel=1e-12)
    assert any("2 gap-free stretches" in n for n in m.notes)
    (k,) = analyze_phases(t, rr, whole(), correction="kubios", gap_before=gap)
    assert k.n_beats == len(nn) and k.corrected_pct < 2.0  # the jump in level is never seen as an artifact
    assert k.rmssd_ms == pytest.approx(m.rmssd_ms, rel=0.01)
    rr_nan = rr.copy()
    rr_nan[len(rr1)] = np.nan  # a missing RR is a gap too, and not an interval
    (by_nan,) = analyze_phases(t, rr_nan, whole(), correction="none")
    no_first = np.concatenate([np.diff(rr1), np.diff(rr2[1:])])
    assert by_nan.rmssd_ms == pytest.approx(np.sqrt(np.mean(no_first**2)), rel=1e-12)
    assert by_nan.n_beats == len(nn) - 1
    (unflagged,) = analyze_phases(t, rr, whole(), correction="none")
    assert unflagged.rmssd_ms > m.rmssd_ms  # without the flag the level jump becomes a difference


def test_window_rules_give_none_and_reason() -> None:
    t, rr = rsa_series(400, seed=4)
    phases = [("long", "rest", 10.0, 140.0, None), ("mid", "rest", 150.0, 240.0, None),
              ("short", "rest", 250.0, 295.0, None)]  # fmt: skip
    long, mid, short = analyze_phases(t, rr, phases)
    assert long.lf_ms2 is not None and long.hf_ms2 is not None and long.rmssd_ms is not None
    assert not any("needs" in n for n in long.notes if not n.startswith("sample entropy"))  # ~150 beats < 200
    assert mid.rmssd_ms is not None and mid.sdnn_ms is not None and mid.hf_ms2 is not None
    assert mid.lf_ms2 is None and mid.lf_peak_hz is None
    assert "LF needs ≥ 120 s; phase has 90.0 s" in mid.notes
    assert short.mean_hr_bpm is not None
    for key in ("rmssd_ms", "sdnn_ms", "pnn50_pct", "hf_ms2", "lf_ms2", "breathing_rate_bpm"):
        assert getattr(short, key) is None, key
    assert "RMSSD/SDNN/pNN50 need ≥ 60 s; phase has 45.0 s" in short.notes
    assert "HF needs ≥ 60 s; phase has 45.0 s" in short.notes


def test_gap_shortens_the_window_for_spectral_metrics() -> None:
    t, rr = rsa_series(200, seed=5)
    gap = (t > 100.0) & (t < 110.0)  # beats lost in a disconnect: drop them, mark the next RR as spanning
    keep = ~gap
    gap_before = np.zeros(int(keep.sum()), dtype=bool)
    gap_before[int(np.argmax(t[keep] > 110.0))] = True
    (m,) = analyze_phases(t[keep], rr[keep], [("p", "rest", 0.0, 200.0, None)], gap_before=gap_before)
    assert m.rmssd_ms is not None and m.hf_ms2 is not None
    assert m.lf_ms2 is None
    assert any(n.startswith("LF/HF and RSA from the longest gap-free stretch") for n in m.notes)


def test_band_powers_equal_neurokit_absolute() -> None:
    t, rr = rsa_series(300, seed=6, hf_amp=30.0, lf_amp=40.0)
    (m,) = analyze_phases(t, rr, whole(), correction="none")
    peaks = np.concatenate([[0], np.cumsum(rr)]).astype(int)  # integer ms = samples at 1000 Hz
    ref = nk.hrv_frequency(peaks, sampling_rate=1000, interpolation_rate=4, normalize=False).iloc[0]
    # Same pipeline as neurokit2 (4 Hz interpolation, Welch): equal up to float rounding (stated 1e-9).
    assert m.lf_ms2 == pytest.approx(ref["HRV_LF"], rel=1e-9)
    assert m.hf_ms2 == pytest.approx(ref["HRV_HF"], rel=1e-9)
    # Physical check: a sine of amplitude A ms carries A²/2 ms² (noise adds a little; window leaks a little).
    assert m.hf_ms2 == pytest.approx(30.0**2 / 2, rel=0.2)
    assert m.lf_ms2 == pytest.approx(40.0**2 / 2, rel=0.2)
    assert m.lf_peak_hz == pytest.approx(0.1, abs=0.01)


def test_breathing_rate_from_rsa_and_from_pacer() -> None:
    t, rr = rsa_series(180, seed=7, hf_amp=40.0, hf_hz=0.25)
    (rsa,) = analyze_phases(t, rr, whole())
    assert rsa.breathing_rate_source == "rsa"
    assert rsa.breathing_rate_bpm == pytest.approx(15.0, abs=1.0)
    assert not any("vagal" in n for n in rsa.notes)
    (paced,) = analyze_phases(t, rr, whole(pacer=6.0))
    assert (paced.breathing_rate_bpm, paced.breathing_rate_source) == (6.0, "pacer")
    assert "breathing ~6.0/min moves RSA into LF; HF does not index vagal activity here" in paced.notes
    assert paced.hf_ms2 == rsa.hf_ms2  # the value stays; only its interpretation is qualified


def test_to_dict_has_exactly_the_agreed_keys_and_is_json() -> None:
    t, rr = rsa_series(70, seed=8)
    (m,) = analyze_phases(t, rr, whole())
    d = m.to_dict()
    assert set(d) == EXPECTED_KEYS
    assert d["lf_ms2"] is None
    assert json.loads(json.dumps(d)) == d
    assert isinstance(m, PhaseMetrics)


def test_phase_without_beats_reports_missing_values() -> None:
    t, rr = rsa_series(60, seed=9)
    (m,) = analyze_phases(t, rr, [("after", "rest", 100.0, 200.0, None)])
    assert m.n_beats == 0 and m.mean_hr_bpm is None and m.rmssd_ms is None
    assert "no usable beats in this phase" in m.notes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0.0, 1.0], [800.0], whole()), "beat_t has 2 beats but rr_ms has 1"),
        (([0.0, 1.0, 1.0], [800.0] * 3, whole()), "must increase strictly"),
        (([0.0, 1.0], [800.0, -5.0], whole()), "rr_ms must be > 0"),
        (([0.0, 1.0], [800.0] * 2, [("p", "rest", 5.0, 5.0, None)]), "not after its start"),
        (([0.0, 1.0], [800.0] * 2, [("p", "rest", 0.0, 5.0, 0.0)]), "pacer rate"),
        (([0.0, 1.0], [800.0] * 2, [("p", 0.0, 5.0)]), "phase 0 must be"),
    ],
)
def test_bad_input_is_rejected_with_a_specific_error(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        analyze_phases(np.array(args[0]), np.array(args[1]), args[2])


def test_bad_options_are_rejected() -> None:
    t, rr = np.array([0.0, 1.0]), np.array([800.0, 800.0])
    with pytest.raises(ValueError, match="correction must be"):
        analyze_phases(t, rr, whole(), correction="Kubios")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gap_before must be a bool array"):
        analyze_phases(t, rr, whole(), gap_before=np.array([0, 1]))


def test_breathing_rate_is_a_true_peak_not_the_edge_of_a_slower_one():
    from biofeedback.analysis.hrv import _respiratory_peak_hz

    f = np.linspace(0.0, 0.5, 501)
    mayer = 120.0 * np.exp(-(((f - 0.10) / 0.04) ** 2))  # a broad 0.1 Hz wave, higher at 0.13 Hz than the RSA peak
    breathing = 30.0 * np.exp(-(((f - 0.25) / 0.01) ** 2))  # weaker but real RSA at 15/min
    assert _respiratory_peak_hz((f, mayer + breathing)) == pytest.approx(0.25, abs=0.002)
    slow_paced = 4000.0 * np.exp(-(((f - 0.1) / 0.005) ** 2)) + breathing  # slow breathing dominates
    assert _respiratory_peak_hz((f, slow_paced)) == pytest.approx(0.10, abs=0.002)
