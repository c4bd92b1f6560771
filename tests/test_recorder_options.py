"""Command-line choices for recording: device specs and simulated faults."""

from __future__ import annotations

import pytest

from biofeedback.live.recorder import DeviceSpecError, parse_device_specs, parse_sim_faults


def test_device_specs_bind_straps_to_participants():
    specs = parse_device_specs(["sim=P01", "A0:9E:1A:12:34:56=P02", "Polar H10=P03"], None)
    assert [(s.device, s.participant_id, s.simulated) for s in specs] == [
        ("sim", "P01", True), ("A0:9E:1A:12:34:56", "P02", False), ("Polar H10", "P03", False)
    ]  # fmt: skip
    with pytest.raises(DeviceSpecError, match="own participant"):
        parse_device_specs(["sim=P01", "sim=P01"], None)
    with pytest.raises(DeviceSpecError, match="empty"):
        parse_device_specs(["sim="], None)


def test_sim_faults_for_everyone_or_one_participant():
    faults = parse_sim_faults(["disconnect=2,contact=1.5", "P02:malformed=3"], ["P01", "P02"])
    assert faults["P01"].disconnect_rate_per_hour == 2 and faults["P01"].contact_loss_rate_per_hour == 1.5
    assert faults["P02"].malformed_rate_per_hour == 3 and faults["P02"].disconnect_rate_per_hour == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [("disconnect=x", "not a number"), ("drop=1", "expected disconnect"), ("P09:contact=1", "no simulated strap"),
     ("malformed=-1", "negative")],
)  # fmt: skip
def test_sim_fault_errors_say_what_is_wrong(value, message):
    with pytest.raises(DeviceSpecError, match=message):
        parse_sim_faults([value], ["P01"])
