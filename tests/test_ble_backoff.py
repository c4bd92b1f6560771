"""Pure parts of devices.ble: backoff, address/name matching, PMD detection, error descriptions."""

from __future__ import annotations

import random

import pytest
from bleak.exc import BleakDBusError, BleakError
from hypothesis import given
from hypothesis import strategies as st

from devices.ble import Backoff, advertises_pmd, describe_error, is_address


def test_backoff_doubles_up_to_the_cap_and_resets():
    backoff = Backoff(initial_s=0.5, max_s=30.0)
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_survives_very_many_attempts():
    backoff = Backoff(initial_s=0.1, max_s=2.0, factor=3.0)
    for _ in range(5000):
        delay = backoff.next_delay()
    assert delay == 2.0


@given(
    initial=st.floats(0.01, 5.0),
    cap_factor=st.floats(1.0, 100.0),
    jitter=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**32),
)
def test_jittered_delays_stay_within_bounds_and_repeat_with_a_seed(initial, cap_factor, jitter, seed):
    cap = initial * cap_factor
    a = Backoff(initial, cap, jitter=jitter, rng=random.Random(seed))
    b = Backoff(initial, cap, jitter=jitter, rng=random.Random(seed))
    plain = Backoff(initial, cap)
    for _ in range(12):
        ceiling = plain.next_delay()
        delay = a.next_delay()
        assert delay == b.next_delay()
        assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling <= cap + 1e-12


def test_jitter_spreads_delays():
    backoff = Backoff(1.0, 1.0, jitter=0.5, rng=random.Random(7))
    delays = {round(backoff.next_delay(), 6) for _ in range(20)}
    assert len(delays) > 10 and min(delays) >= 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial_s": 0.0}, "initial_s must be > 0"),
        ({"initial_s": 2.0, "max_s": 1.0}, "max_s"),
        ({"factor": 0.5}, "factor must be >= 1"),
        ({"jitter": 1.0}, "jitter must be in"),
    ],
)
def test_backoff_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A0:9E:1A:12:34:56", True),
        ("a0:9e:1a:12:34:56", True),
        ("5B3F2E4C-9A1D-4B8E-8C7F-0123456789AB", True),
        ("Polar H10", False),
        ("A0:9E:1A:12:34", False),
        ("A0-9E-1A-12-34-56", False),
    ],
)
def test_is_address(text, expected):
    assert is_address(text) is expected


def test_pmd_detection_by_service_or_model():
    assert advertises_pmd("", ["FB005C80-02E7-F387-1CAD-8ACD2D8DF0C8"])
    assert advertises_pmd("Polar H10 1234ABCD", ["0000180d-0000-1000-8000-00805f9b34fb"])
    assert not advertises_pmd("Polar H9 1234ABCD", ["0000180d-0000-1000-8000-00805f9b34fb"])
    assert not advertises_pmd("Garmin HRM", [])


def test_error_descriptions_keep_bluez_names():
    assert describe_error(BleakDBusError("org.bluez.Error.InProgress", [])) == "org.bluez.Error.InProgress"
    failed = BleakDBusError("org.bluez.Error.Failed", ["Software caused connection abort"])
    assert describe_error(failed) == "org.bluez.Error.Failed: Software caused connection abort"
    assert describe_error(TimeoutError()) == "timed out"
    assert describe_error(BleakError("adapter 'hci0' not found")) == "BleakError: adapter 'hci0' not found"
