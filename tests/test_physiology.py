"""Simulated participant: determinism, breathing, RSA resonance, phases, ectopic and missed beats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from devices.physiology import (
    RESONANCE_HZ,
    BeatModel,
    GuideSegment,
    PacerSetting,
    ScheduledGuide,
    SimBeat,
    SimParticipant,
    resonance_gain,
)

REST = ScheduledGuide()


def rmssd(rr_ms: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.diff(rr_ms) ** 2)))


def run(participant: SimParticipant, guide: ScheduledGuide, until: float) -> tuple[BeatModel, list[SimBeat]]:
    model = BeatModel(participant)
    beats: list[SimBeat] = []
    t = 0.0
    while t < until:
        beat = model.next_beat(t, guide)
        beats.append(beat)
        t = beat.t_beat
    return model, beats


def arrays(beats: list[SimBeat]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([b.t_beat for b in beats]), np.array([b.rr_ms for b in beats])


def window(t: np.ndarray, rr: np.ndarray, start: float, end: float) -> np.ndarray:
    return rr[(t >= start) & (t < end)]


def test_same_seed_same_beats_other_seed_other_beats():
    guide = ScheduledGuide((GuideSegment(30.0, "breathing", PacerSetting(6.0)),))
    p = SimParticipant(seed=7, ectopic_rate=0.02, missed_beat_rate=0.02)
    _, a = run(p, guide, 120)
    _, b = run(p, guide, 120)
    _, c = run(SimParticipant(seed=8, ectopic_rate=0.02, missed_beat_rate=0.02), guide, 120)
    assert a == b
    assert arrays(a)[1].tolist() != arrays(c)[1][: len(a)].tolist()


def test_beat_times_are_the_running_sum_of_rr():
    _, beats = run(SimParticipant(seed=1, ectopic_rate=0.03, missed_beat_rate=0.03), REST, 300)
    t, rr = arrays(beats)
    np.testing.assert_allclose(np.diff(t), rr[1:] / 1000.0, atol=1e-9)
    assert t[0] == pytest.approx(rr[0] / 1000.0)


def test_paced_resonance_breathing_raises_rmssd_clearly_for_a_complier():
    guide = ScheduledGuide((GuideSegment(0.0, "rest"), GuideSegment(300.0, "breathing", PacerSetting(6.0))))
    for seed in (0, 1, 2):
        _, beats = run(SimParticipant(seed=seed), guide, 600)
        t, rr = arrays(beats)
        rest, paced = window(t, rr, 60, 300), window(t, rr, 360, 600)
        assert rmssd(paced) > 1.5 * rmssd(rest), seed


def test_non_complier_keeps_breathing_spontaneously_and_gains_much_less():
    guide = ScheduledGuide((GuideSegment(0.0, "rest"), GuideSegment(300.0, "breathing", PacerSetting(6.0))))
    ratios = {}
    for complies in (True, False):
        model, beats = run(SimParticipant(seed=3, complies_with_pacer=complies), guide, 600)
        t, rr = arrays(beats)
        ratios[complies] = rmssd(window(t, rr, 360, 600)) / rmssd(window(t, rr, 60, 300))
        ts = np.arange(360, 600, 0.1)
        sig = model.breathing_signal(ts)
        spectrum = np.abs(np.fft.rfft(sig - sig.mean()))
        peak_per_min = np.fft.rfftfreq(ts.size, 0.1)[np.argmax(spectrum)] * 60
        if complies:
            assert peak_per_min == pytest.approx(6.0, abs=0.5)
        else:
            assert 9.0 < peak_per_min < 18.0
    # the non-complier still gains a little (soothing tone, slightly slower breathing), far less than pacing
    assert ratios[True] > 1.5
    assert ratios[False] < ratios[True] - 0.3


def test_breathing_is_phase_continuous_and_follows_pacer_rate_and_ratio():
    guide = ScheduledGuide((
        GuideSegment(0.0, "breathing", PacerSetting(12.0)),
        GuideSegment(60.0, "breathing", PacerSetting(5.0, inhale_exhale_ratio=0.5)),
    ))
    model = BeatModel(SimParticipant(seed=5))
    ts = np.arange(0.0, 180.0, 0.05)
    sig = model.breathing_signal(ts, guide)
    assert sig.min() >= -1.0 and sig.max() <= 1.0
    # 12/min at 0.05 s steps moves at most 2π·0.2·0.05 per step on a unit cosine: no jump at the change
    assert np.max(np.abs(np.diff(sig))) < 0.08
    rising = np.diff(sig) > 0
    late = ts[1:] > 70
    # inhale:exhale 1:2 → inhaling a third of the time
    assert rising[late].mean() == pytest.approx(1 / 3, abs=0.03)
    crossings_early = np.sum(np.diff(np.sign(sig[(ts > 5) & (ts < 55)])) > 0)
    crossings_late = np.sum(np.diff(np.sign(sig[(ts > 70) & (ts < 178)])) > 0)
    assert crossings_early == pytest.approx(12 * 50 / 60, abs=1.5)
    assert crossings_late == pytest.approx(5 * 108 / 60, abs=1.5)


def test_heart_rate_rises_on_inhale_and_falls_on_exhale():
    guide = ScheduledGuide((GuideSegment(0.0, "breathing", PacerSetting(6.0)),))
    model, beats = run(SimParticipant(seed=2, mayer_amplitude=0.0), guide, 300)
    t, rr = arrays(beats)
    keep = t > 60
    volume = model.breathing_signal(t[keep] - 0.5)
    assert np.corrcoef(60000.0 / rr[keep], volume)[0, 1] > 0.6


def test_rsa_resonance_peaks_near_six_breaths_per_minute():
    freqs = np.linspace(0.03, 0.4, 200)
    gains = np.array([resonance_gain(f) for f in freqs])
    assert 0.07 <= freqs[np.argmax(gains)] <= 0.11
    assert resonance_gain(RESONANCE_HZ) == pytest.approx(1.0)
    sdnn = {}
    for rate in (6.0, 15.0):
        guide = ScheduledGuide((GuideSegment(0.0, "rest", PacerSetting(rate)),))
        _, beats = run(SimParticipant(seed=4, noise_ms=0.0, mayer_amplitude=0.0, drift_ms=0.0), guide, 240)
        t, rr = arrays(beats)
        sdnn[rate] = float(np.std(window(t, rr, 30, 240)))
    assert sdnn[6.0] > 2.5 * sdnn[15.0]


def test_recall_raises_heart_rate_and_lowers_rmssd_soothing_does_the_opposite():
    guide = ScheduledGuide((
        GuideSegment(0.0, "rest"),
        GuideSegment(240.0, "recall"),
        GuideSegment(480.0, "imagery"),
    ))
    p = SimParticipant(seed=6, stress_response=0.8, soothing_response=0.8)
    _, beats = run(p, guide, 720)
    t, rr = arrays(beats)
    rest, recall, imagery = window(t, rr, 60, 240), window(t, rr, 300, 480), window(t, rr, 540, 720)
    assert 60000 / recall.mean() > 60000 / rest.mean() + 5
    assert rmssd(recall) < 0.8 * rmssd(rest)
    assert 60000 / imagery.mean() < 60000 / rest.mean()
    assert rmssd(imagery) > rmssd(rest)


def test_ectopic_beats_are_premature_with_compensatory_pause_at_their_rate():
    _, beats = run(SimParticipant(seed=9, ectopic_rate=0.03), REST, 1500)
    flags = np.array([b.ectopic for b in beats])
    assert flags.mean() == pytest.approx(0.03, rel=0.35)
    rr = arrays(beats)[1]
    median = np.median(rr)
    for i in np.flatnonzero(flags)[:-1]:
        assert rr[i] < 0.75 * median
        assert not flags[i + 1]
        # premature + pause ≈ two normal intervals
        assert rr[i] + rr[i + 1] == pytest.approx(2 * median, rel=0.2)


def test_missed_beats_report_a_doubled_rr_at_their_rate():
    _, beats = run(SimParticipant(seed=10, missed_beat_rate=0.03), REST, 1500)
    missed = [b for b in beats if b.missed]
    assert len(missed) / len(beats) == pytest.approx(0.03, rel=0.35)
    median = np.median([b.rr_ms for b in beats if not b.missed])
    for b in missed:
        assert b.rr_ms == pytest.approx(2 * median, rel=0.2)
        assert b.undetected_t is not None
        assert b.t_beat - b.rr_ms / 1000 < b.undetected_t < b.t_beat


def test_default_resting_participant_is_within_real_seated_chest_strap_recordings(shared_data):
    gudb = pd.read_csv(shared_data / "gudb_rpeaks_250hz.csv")
    sitting = gudb[(gudb.condition == "sitting") & (gudb.lead == "cs")].dropna(subset=["rr_ms"])
    real_rmssd = sitting.groupby("subject").rr_ms.apply(lambda x: rmssd(x.to_numpy()))
    real_hr = sitting.groupby("subject").rr_ms.apply(lambda x: 60000 / x.mean())
    _, beats = run(SimParticipant(seed=0), REST, 300)
    _, rr = arrays(beats)
    assert real_rmssd.quantile(0.1) < rmssd(rr) < real_rmssd.quantile(0.9)
    assert real_hr.quantile(0.1) < 60000 / rr.mean() < real_hr.quantile(0.9)


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="ectopic_rate"):
        SimParticipant(ectopic_rate=1.5)
    with pytest.raises(ValueError, match="baseline_hr_bpm"):
        SimParticipant(baseline_hr_bpm=10)
    with pytest.raises(ValueError, match="pacer rate"):
        PacerSetting(0.0)
    with pytest.raises(ValueError, match="sorted"):
        ScheduledGuide((GuideSegment(10.0, "rest"), GuideSegment(5.0, "rest")))
    model = BeatModel(SimParticipant())
    beat = model.next_beat(0.0, REST)
    with pytest.raises(ValueError, match="forward"):
        model.next_beat(beat.t_beat - 1.0, REST)
    with pytest.raises(ValueError, match="pass a guide"):
        model.breathing_signal(beat.t_beat + 100.0)
