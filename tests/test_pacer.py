"""Pacer waveform: period 60/rate, inhale share from the ratio, smooth and exact at any time."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.loader import parse_protocol
from protocols.model import Pacer
from protocols.pacer import pacer_phase, pacer_size, pacer_stage_progress

rates = st.floats(2.0, 30.0)
fractions = st.floats(0.1, 0.9)


def sample(pacer: Pacer, seconds: float, step: float = 0.001) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(0.0, seconds, step)
    size = np.array([pacer_size(x, pacer) for x in t])
    inhale = np.array([pacer_phase(x, pacer)[1] == "inhale" for x in t])
    return t, size, inhale


def test_period_and_inhale_share_measured_from_the_waveform() -> None:
    """Parse a 4:6 pacer at 6/min, then measure the breath period and inhale share from sampled output."""
    text = (
        'name = "p"\n[[phase]]\nname = "b"\nkind = "breathing"\nduration = 60\n[phase.pacer]\nrate_bpm = 6\n'
    )
    pacer = parse_protocol(text + 'ratio = "4:6"\n').phases[0].pacer
    assert pacer is not None
    t, size, inhale = sample(pacer, 60.0, 0.002)
    inhale_starts = t[1:][inhale[1:] & ~inhale[:-1]]
    assert np.diff(inhale_starts) == pytest.approx(60 / 6, abs=0.005)
    assert inhale.mean() == pytest.approx(0.4, abs=0.001)
    peaks = t[1:-1][(size[1:-1] >= size[:-2]) & (size[1:-1] > size[2:])]
    assert np.diff(peaks) == pytest.approx(10.0, abs=0.005)
    assert peaks[0] == pytest.approx(4.0, abs=0.005)  # the top of the breath is the end of a 4 s inhale


def test_key_points_of_the_breath() -> None:
    pacer = Pacer.from_ratio(5.0, 4, 6)  # 12 s breath: 4.8 s in, 7.2 s out
    assert (
        pacer.period_s == 12.0
        and pacer.inhale_s == pytest.approx(4.8)
        and pacer.exhale_s == pytest.approx(7.2)
    )
    assert pacer_size(0.0, pacer) == 0.0 and pacer_phase(0.0, pacer) == (0.0, "inhale")
    assert pacer_size(2.4, pacer) == pytest.approx(0.5)
    assert pacer_size(4.8, pacer) == pytest.approx(1.0) and pacer_phase(4.8001, pacer)[1] == "exhale"
    assert pacer_phase(4.7999, pacer)[1] == "inhale"
    assert pacer_size(4.8 + 3.6, pacer) == pytest.approx(0.5)
    assert pacer_stage_progress(4.8 + 3.6, pacer) == pytest.approx(0.5)
    assert pacer_phase(6.0, pacer)[0] == pytest.approx(0.5)


@given(rate=rates, frac=fractions, t=st.floats(0.0, 3600.0), k=st.integers(1, 50))
def test_waveform_is_periodic_and_exact_after_a_jump(rate: float, frac: float, t: float, k: int) -> None:
    pacer = Pacer(rate, frac)
    assert pacer_size(t + k * pacer.period_s, pacer) == pytest.approx(pacer_size(t, pacer), abs=1e-6)
    assert 0.0 <= pacer_size(t, pacer) <= 1.0
    cycle, stage = pacer_phase(t, pacer)
    assert 0.0 <= cycle < 1.0 and stage == ("inhale" if cycle < frac else "exhale")


@given(rate=rates, frac=fractions)
def test_continuous_with_zero_slope_at_the_joins(rate: float, frac: float) -> None:
    pacer = Pacer(rate, frac)
    for join, level in ((pacer.inhale_s, 1.0), (pacer.period_s, 0.0)):
        tiny = 1e-9 * pacer.period_s
        assert pacer_size(join - tiny, pacer) == pytest.approx(level, abs=1e-6)
        assert pacer_size(join + tiny, pacer) == pytest.approx(level, abs=1e-6)
        # raised cosine: 0.1 % of a breath away, size moves < 0.05 % (a linear ramp would move > 0.1 %)
        step = 1e-3 * pacer.period_s
        assert abs(pacer_size(join - step, pacer) - level) < 5e-4
        assert abs(pacer_size(join + step, pacer) - level) < 5e-4


@given(rate=rates, frac=fractions)
def test_rises_during_inhale_and_falls_during_exhale(rate: float, frac: float) -> None:
    pacer = Pacer(rate, frac)
    t_in = np.linspace(0, pacer.inhale_s, 50, endpoint=False)
    t_out = np.linspace(pacer.inhale_s, pacer.period_s, 50, endpoint=False)
    assert np.all(np.diff([pacer_size(x, pacer) for x in t_in]) > 0)
    assert np.all(np.diff([pacer_size(x, pacer) for x in t_out]) < 0)


def test_rejects_negative_or_non_finite_time() -> None:
    pacer = Pacer(6.0)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="time into the phase"):
            pacer_size(bad, pacer)
