"""Synthetic chest ECG: R peaks at the beats (neurokit2), amplitude, wander, streaming = batch, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from neurokit2 import ecg_peaks

from devices.ecg_synth import EcgStream, ecg_samples
from devices.physiology import REST_GUIDE, BeatModel, SimParticipant


def beat_times(seed: int, until: float, **kwargs) -> tuple[BeatModel, np.ndarray]:
    model = BeatModel(SimParticipant(seed=seed, **kwargs))
    times, t = [], 0.0
    while t < until:
        beat = model.next_beat(t, REST_GUIDE)
        if beat.undetected_t is not None:
            times.append(beat.undetected_t)
        times.append(beat.t_beat)
        t = beat.t_beat
    return model, np.array(times)


def match_share(detected: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    """Share of expected peak positions with a detected peak within `tolerance` samples."""
    gaps = np.abs(detected[:, None] - expected[None, :]).min(axis=0)
    return float(np.mean(gaps <= tolerance))


@pytest.mark.parametrize("fs", [130.0, 250.0, 500.0])
def test_neurokit_finds_the_r_peaks_at_the_beat_times(fs):
    model, beats = beat_times(seed=2, until=185.0, ectopic_rate=0.01, missed_beat_rate=0.01)
    ecg = ecg_samples(beats, 0.0, 180.0, fs=fs, seed=3, breathing=model.breathing_signal)
    assert ecg.dtype.kind == "i"
    assert ecg.size == int(180.0 * fs)
    _, info = ecg_peaks(ecg.astype(float), sampling_rate=int(fs))
    detected = np.asarray(info["ECG_R_Peaks"])
    inside = beats[(beats > 0.5) & (beats < 179.5)]
    expected = inside * fs
    assert match_share(detected, expected, tolerance=1.0) >= 0.98
    assert len(detected) <= len(inside) + 3  # no spurious peaks (T waves, noise)


def test_qrs_amplitude_is_that_of_a_chest_strap(shared_data):
    model, beats = beat_times(seed=4, until=65.0)
    fs = 130.0
    ecg = ecg_samples(beats, 0.0, 60.0, fs=fs, seed=1, breathing=model.breathing_signal).astype(float)
    idx = np.round(beats[(beats > 1) & (beats < 59)] * fs).astype(int)
    r_heights = np.array([ecg[i - 1 : i + 2].max() for i in idx]) - np.median(ecg)
    assert 900 < np.median(r_heights) < 1600
    # a real Polar H10 recording has R waves of the same order (hundreds of µV to ~1.5 mV)
    real = pd.read_csv(shared_data / "polar_h10_detectpvc_ecg130hz_rr.csv", usecols=["ecg"]).ecg.to_numpy()
    real = real * 1000  # mV → µV
    real_range = np.percentile(real, 99.5) - np.percentile(real, 0.5)
    synth_range = np.percentile(ecg, 99.5) - np.percentile(ecg, 0.5)
    assert 0.5 < synth_range / real_range < 3.0


def test_baseline_wanders_with_breathing():
    model, beats = beat_times(seed=5, until=125.0)
    fs = 130.0
    ecg = ecg_samples(beats, 0.0, 120.0, fs=fs, seed=2, breathing=model.breathing_signal).astype(float)
    t = np.arange(ecg.size) / fs
    # a 2 s moving median removes the QRS complexes and keeps the slow baseline
    width = int(2 * fs)
    baseline = pd.Series(ecg).rolling(width, center=True).median().to_numpy()
    ok = ~np.isnan(baseline)
    breathing = model.breathing_signal(t)
    assert np.corrcoef(baseline[ok], breathing[ok])[0, 1] > 0.5


def test_streaming_in_chunks_equals_the_batch_and_is_seeded():
    model, beats = beat_times(seed=6, until=70.0)
    fs = 130.0
    batch = ecg_samples(beats, 0.0, 60.0, fs=fs, seed=9, breathing=model.breathing_signal)
    again = ecg_samples(beats, 0.0, 60.0, fs=fs, seed=9, breathing=model.breathing_signal)
    other = ecg_samples(beats, 0.0, 60.0, fs=fs, seed=10, breathing=model.breathing_signal)
    np.testing.assert_array_equal(batch, again)
    assert not np.array_equal(batch, other)
    assert np.corrcoef(batch, other)[0, 1] > 0.9  # same heart, different noise

    stream = EcgStream(t_start=0.0, fs=fs, seed=9, breathing=model.breathing_signal)
    rng = np.random.default_rng(0)
    chunks, chunk_times, known, given = [], [], 0.0, 0
    while stream.next_sample_time < 60.0 - 1e-9:
        known += float(rng.uniform(0.2, 1.5))
        new = beats[given:][beats[given:] < known]
        given += new.size
        stream.extend(new, complete_until=known)
        times, values = stream.samples_until(min(60.0, stream.ready_until))
        chunks.append(values)
        chunk_times.append(times)
    assert len(chunks) > 20
    np.testing.assert_allclose(np.concatenate(chunk_times), np.arange(batch.size) / fs)
    np.testing.assert_array_equal(np.concatenate(chunks), batch)


def test_stream_refuses_samples_that_later_beats_could_still_change():
    stream = EcgStream(fs=130.0)
    stream.extend([0.5, 1.3], complete_until=2.0)
    stream.samples_until(1.5)
    with pytest.raises(ValueError, match="complete only up to"):
        stream.samples_until(1.9)
    with pytest.raises(ValueError, match="strictly increasing"):
        stream.extend([2.5, 2.4], complete_until=3.0)
    with pytest.raises(ValueError, match="complete time"):
        stream.extend([1.9], complete_until=3.0)
    with pytest.raises(ValueError, match="sampling rate"):
        EcgStream(fs=0.0)
    with pytest.raises(ValueError, match="t_end"):
        ecg_samples([1.0], 5.0, 4.0)
