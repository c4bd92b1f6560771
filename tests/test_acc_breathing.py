"""Breathing rate from chest-strap accelerometer samples, on synthetic Polar H10 ACC sent through PMD frames."""

from __future__ import annotations

import numpy as np
import pytest

from biofeedback.analysis.acc_breathing import breathing_rate_from_acc, chest_movement
from devices.physiology import breath_waveform
from devices.polar_pmd import AccFrame, decode_pmd_frame, encode_acc_frame

FS = 50.0
GRAVITY_MG = np.array([120.0, -970.0, 180.0])
CHEST_DIRECTION = np.array([0.2, 0.3, 0.93]) / np.linalg.norm([0.2, 0.3, 0.93])


def synthetic_acc(rate_bpm: float | None, seconds: float = 180.0, *, seed: int = 0, breath_mg: float = 8.0,
                  direction: np.ndarray = CHEST_DIRECTION) -> np.ndarray:
    """Gravity + chest movement (asymmetric breaths with a wandering rate) + heartbeat jolts + drift + noise, mG."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    t = np.arange(n) / FS
    acc = np.tile(GRAVITY_MG, (n, 1))
    if rate_bpm is not None:
        wander = 1.0 + 0.04 * np.sin(2 * np.pi * t / 47.0)  # the breathing rate drifts by ±4 %
        phase = np.cumsum(rate_bpm / 60.0 * wander) / FS + rng.uniform()
        volume = np.array([breath_waveform(p, 0.4) for p in phase])
        acc += breath_mg * volume[:, None] * direction[None, :]
    beat_phase = (1.15 * t) % 1.0
    acc[:, 1] += 5.0 * np.exp(-0.5 * ((beat_phase - 0.1) / 0.02) ** 2)  # ballistocardiogram, ~69 bpm
    acc += np.cumsum(rng.normal(0, 0.05, (n, 3)), axis=0)  # slow posture drift
    acc += rng.normal(0, 3.0, (n, 3))
    return np.rint(acc).astype(int)


def through_pmd_frames(samples: np.ndarray, per_frame: int = 36) -> np.ndarray:
    """Send samples as compressed PMD ACC frames and decode them back, as a live H10 session would."""
    frames = []
    for k in range(0, len(samples), per_frame):
        chunk = samples[k:k + per_frame]
        frame = decode_pmd_frame(encode_acc_frame(10**18 + k * 20_000_000, chunk, compressed=True))
        assert isinstance(frame, AccFrame)
        frames.append(frame.samples_mg)
    return np.concatenate(frames)


@pytest.mark.parametrize("rate_bpm", [6.0, 9.0, 12.0, 18.0, 24.0])
def test_rate_is_found_through_pmd_frames(rate_bpm):
    raw = synthetic_acc(rate_bpm, seed=int(rate_bpm))
    decoded = through_pmd_frames(raw)
    np.testing.assert_array_equal(decoded, raw)
    est = breathing_rate_from_acc(decoded, FS)
    assert est.rate_bpm == pytest.approx(rate_bpm, abs=0.6)
    assert est.method == "counted"  # breaths counted; the spectral peak agrees with them
    assert est.frequency_hz * 60.0 == pytest.approx(rate_bpm, abs=0.6)
    assert est.peak_share > 0.4
    # the principal direction is the chest's movement, not gravity or the heartbeat axis
    assert abs(np.dot(est.direction, CHEST_DIRECTION)) > 0.9


def test_noise_alone_has_no_clear_peak():
    breathing = breathing_rate_from_acc(synthetic_acc(12.0, seed=3), FS)
    none = breathing_rate_from_acc(synthetic_acc(None, seed=3), FS)
    assert none.peak_share < 0.3
    assert breathing.peak_share > 2 * none.peak_share


def test_a_given_axis_is_used_as_is():
    z_only = synthetic_acc(15.0, seed=5, direction=np.array([0.0, 0.0, 1.0]))
    on_z = breathing_rate_from_acc(z_only, FS, axis=2)
    on_x = breathing_rate_from_acc(z_only, FS, axis=0)
    assert on_z.direction == (0.0, 0.0, 1.0)
    assert on_z.rate_bpm == pytest.approx(15.0, abs=0.6)
    assert on_x.peak_share < on_z.peak_share / 2


def test_chest_movement_removes_gravity_and_heartbeat():
    acc = synthetic_acc(12.0, seed=7)
    movement = chest_movement(acc, FS)
    middle = movement[int(20 * FS):int(-20 * FS)]
    assert abs(middle.mean()) < 1.0  # gravity (about 1000 mG) is gone
    assert 4.0 < middle.std() < 8.0  # breathing, about ±8 mG, is kept
    # the heartbeat's 1.15 Hz jolts are filtered out
    spectrum = np.abs(np.fft.rfft(middle))
    freqs = np.fft.rfftfreq(middle.size, 1 / FS)
    assert spectrum[np.argmin(np.abs(freqs - 1.15))] < 0.05 * spectrum.max()


def test_bad_input_gets_a_clear_error():
    good = synthetic_acc(12.0, seconds=40.0)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        breathing_rate_from_acc(good[:, :2], FS)
    with pytest.raises(ValueError, match="at least 30 s"):
        breathing_rate_from_acc(good[: int(10 * FS)], FS)
    with pytest.raises(ValueError, match="sampling rate"):
        breathing_rate_from_acc(good, 2.0)
    bad = good.astype(float)
    bad[100, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        breathing_rate_from_acc(bad, FS)
    with pytest.raises(ValueError, match="axis"):
        breathing_rate_from_acc(good, FS, axis=3)
    with pytest.raises(ValueError, match="flat"):
        breathing_rate_from_acc(np.tile(GRAVITY_MG, (int(40 * FS), 1)), FS)
