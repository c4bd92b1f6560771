"""ECG device time → session clock: known drift, offset, latency jitter and a gap are recovered."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from devices.polar_pmd import datetime_to_pmd_time
from recordings.ecg_time import EcgTimeError, map_ecg_chunks


def synthetic_chunks(
    *,
    drift_ppm=-40.0,
    offset_s=3.25,
    fs_device=130.0,
    frame=73,
    n_frames=600,
    seed=1,
    drop=range(300, 320),
    device_epoch=datetime(2019, 5, 1, tzinfo=UTC),
    jitter_ns=300_000,
):
    """Frames whose sample k lies at device time d0 + k/fs_device and session time offset + scale·(that − d0)."""
    rng = np.random.default_rng(seed)
    scale = 1.0 + drift_ppm * 1e-6
    d0 = datetime_to_pmd_time(device_epoch)
    chunks, truth = [], {}
    for i in range(n_frames):
        last = (i + 1) * frame - 1
        dev_s = last / fs_device
        t_last = offset_s + scale * dev_s
        latency = 0.006 + rng.exponential(0.03)
        samples = rng.integers(-2000, 2000, frame).astype(np.int32)
        if i in drop:
            continue
        dev_ns = d0 + round(dev_s * 1e9) + int(rng.integers(-jitter_ns, jitter_ns))
        chunks.append((t_last + latency, dev_ns, 130.0, samples))
        for k in range(frame):
            truth[last - frame + 1 + k] = (offset_s + scale * (last - frame + 1 + k) / fs_device, samples[k])
    return chunks, truth, scale


def test_recovers_drift_rate_offset_and_keeps_the_gap():
    chunks, truth, scale = synthetic_chunks()
    rng = np.random.default_rng(7)
    shuffled = [chunks[i] for i in rng.permutation(len(chunks))]  # storage order must not matter
    tl = map_ecg_chunks(shuffled)
    assert tl.drift_ppm == pytest.approx(-40.0, abs=3.0)
    assert tl.fs_device_hz == pytest.approx(130.0, abs=0.002)
    assert tl.fs_hz == pytest.approx(130.0 / scale, abs=0.002)
    true_t = np.array([truth[k][0] for k in sorted(truth)])
    true_v = np.array([truth[k][1] for k in sorted(truth)])
    np.testing.assert_array_equal(tl.uv, true_v)
    err = tl.t - true_t
    # biased late by at most the smallest latency (6 ms here) plus a little; never early by more than jitter
    assert err.max() < 0.012 and err.min() > -0.003
    # lower envelope, not the mean: mean latency is ~36 ms
    assert abs(np.median(err)) < 0.012
    assert tl.median_latency_s == pytest.approx(0.006 + 0.03 * np.log(2), abs=0.01)
    # the gap stays a gap
    assert tl.n_segments == 2
    ((before, after),) = tl.gaps
    assert before == pytest.approx(3.25 + scale * (300 * 73 - 1) / 130.0, abs=0.012)
    assert after - before == pytest.approx(20 * 73 / 130.0 + 1 / 130.0, abs=0.012)
    t0, grid = tl.regular_grid()
    assert t0 == pytest.approx(true_t[0], abs=0.012)
    nan = np.isnan(grid)
    assert abs(nan.sum() - 20 * 73) <= 1
    assert np.all(np.diff(np.flatnonzero(nan)) == 1)  # one contiguous hole
    np.testing.assert_array_equal(grid[~nan].astype(np.int32), true_v)


def test_device_calendar_is_irrelevant():
    a, _, _ = synthetic_chunks(device_epoch=datetime(2019, 1, 1, tzinfo=UTC), drop=())
    b, _, _ = synthetic_chunks(device_epoch=datetime(2031, 7, 9, tzinfo=UTC), drop=())
    ta, tb = map_ecg_chunks(a), map_ecg_chunks(b)
    np.testing.assert_allclose(ta.t, tb.t, atol=1e-6)
    assert ta.n_segments == 1 and not ta.gaps


def test_clock_reset_backwards_starts_a_new_stretch():
    chunks, _, _ = synthetic_chunks(drop=(), n_frames=200)
    # the strap rebooted: device time restarts near its epoch after frame 100, arrivals keep going
    reset = [(t, ns - 10**15, fs, s) for t, ns, fs, s in chunks[100:]]
    tl = map_ecg_chunks(chunks[:100] + reset)
    assert tl.n_segments == 2
    assert np.all(np.diff(tl.t) > 0)
    assert tl.t[-1] == pytest.approx(chunks[-1][0], abs=0.2)


def test_no_samples_is_refused():
    with pytest.raises(EcgTimeError, match="no ECG samples"):
        map_ecg_chunks([])
