"""The simulated strap on a ManualClock: notifications, RR quantisation, faults, ECG frames, stop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest
from neurokit2 import ecg_peaks

from devices.clock import ManualClock
from devices.errors import DecodeError
from devices.heart_rate import SensorContact, decode_heart_rate
from devices.link import HEART_RATE_MEASUREMENT_UUID, PMD_DATA_UUID, LinkEvent, LinkState, Packet
from devices.physiology import GuideSegment, PacerSetting, ScheduledGuide, SimParticipant
from devices.polar_pmd import POLAR_EPOCH, EcgFrame, decode_pmd_frame, pmd_time_to_datetime
from devices.simulator import SimFaults, SimulatedStrap
from recordings.clock_fit import lower_envelope

TICK = 1.0 / 1024


@dataclass
class Session:
    strap: SimulatedStrap
    packets: list[Packet] = field(default_factory=list)
    events: list[LinkEvent] = field(default_factory=list)

    def hr(self) -> list[Packet]:
        return [p for p in self.packets if p.uuid == HEART_RATE_MEASUREMENT_UUID]

    def ecg(self) -> list[Packet]:
        return [p for p in self.packets if p.uuid == PMD_DATA_UUID]

    def states(self) -> list[LinkState]:
        return [e.state for e in self.events]


def simulate(duration: float, participant: SimParticipant | None = None, **kwargs) -> Session:
    kwargs.setdefault("keep_history", True)  # the tests compare against every beat the model produced
    clock = ManualClock()
    strap = SimulatedStrap("sim-A", clock, participant or SimParticipant(seed=1), **kwargs)
    session = Session(strap)

    async def main() -> None:
        async def stop_later() -> None:
            while clock.now() < duration:
                await asyncio.sleep(0)
            strap.stop()

        await asyncio.gather(strap.run(session.packets.append, session.events.append), stop_later())

    asyncio.run(main())
    return session


@pytest.fixture(scope="module")
def clean() -> Session:
    guide = ScheduledGuide((GuideSegment(0.0, "rest"), GuideSegment(300.0, "breathing", PacerSetting(6.0))))
    return simulate(600.0, SimParticipant(seed=1), guide=guide)


@pytest.fixture(scope="module")
def faulty() -> Session:
    faults = SimFaults(seed=3, disconnects=[(100.0, 12.0)], contact_loss=[(200.0, 6.0)],
                       malformed_bursts=[(300.0, 3.0)])
    return simulate(400.0, SimParticipant(seed=2), ecg=True, faults=faults)


def test_link_events_start_connected_and_end_closed(clean):
    assert clean.states() == [LinkState.CONNECTING, LinkState.CONNECTED, LinkState.CLOSED]
    assert all(e.device == "sim-A" for e in clean.events)
    assert clean.events[-1].t >= 600.0


def test_notifications_about_once_a_second_decode_with_zero_to_three_rr(clean):
    hr = clean.hr()
    times = np.array([p.t for p in hr])
    gaps = np.diff(times)
    # a real strap's timing: in order, late by 0–300 ms, some held back and delivered with the next packet,
    # a few ticks skipped (their RR come with the next notification)
    assert gaps.min() >= 0.0 and np.median(gaps) == pytest.approx(1.0, abs=0.05)
    assert 0.0 < np.mean(gaps < 0.7) < 0.2 and gaps.max() < 3.5
    assert 560 <= len(hr) <= 600
    decoded = [decode_heart_rate(p.data) for p in hr]
    counts = [len(m.rr_1024) for m in decoded]
    assert set(counts) <= {0, 1, 2, 3, 4, 5} and {1, 2} <= set(counts)
    assert np.mean(np.array(counts) <= 3) > 0.97
    assert all(m.contact is SensorContact.DETECTED for m in decoded)
    assert all(p.device == "sim-A" for p in hr)
    # the strap's HR is its smoothed beat rate
    for m in decoded[20:]:
        assert 50 <= m.heart_rate_bpm <= 100


def test_reported_rr_are_the_beats_quantised_without_drift(clean):
    rr_units = np.array([u for p in clean.hr() for u in decode_heart_rate(p.data).rr_1024])
    t_connect = clean.events[1].t
    last_notification = clean.hr()[-1].t
    beats = [b for b in clean.strap.beats if t_connect < b.t_beat <= last_notification]
    reported_beats = beats[: rr_units.size]
    beat_times = np.array([b.t_beat for b in reported_beats])
    first_start = beat_times[0] - reported_beats[0].rr_ms / 1000
    # RR are measured on the strap's own clock: every partial sum, converted to session seconds, lands on the
    # true beat time to within one 1/1024 s tick
    rate = 1 + clean.strap.device_clock_drift_ppm * 1e-6
    error = first_start + np.cumsum(rr_units) * TICK / rate - beat_times
    assert np.max(np.abs(error)) <= TICK
    assert len(beats) - rr_units.size in (0, 1, 2, 3, 4, 5)  # the last notification's beats may be in flight
    # each value is the nearest tick or its neighbour (carry), never more than a tick off
    exact = np.array([b.rr_ms for b in reported_beats]) * rate * 1024 / 1000
    assert np.max(np.abs(rr_units - exact)) < 1.0 + 1e-9


def test_each_notification_carries_beats_completed_before_it_arrived(clean):
    hr = clean.hr()
    t_connect = clean.events[1].t
    beats = np.array([b.t_beat for b in clean.strap.beats if b.t_beat > t_connect])
    reported = np.cumsum([len(decode_heart_rate(p.data).rr_1024) for p in hr])
    arrival = np.array([p.t for p in hr])
    # never a beat reported before it happened; at most a few seconds (tick, latency, held back) behind
    assert np.all(beats[reported - 1] <= arrival)
    completed_earlier = np.searchsorted(beats, arrival - 3.0, side="right")
    assert np.all(reported >= completed_earlier)


def test_paced_breathing_shows_in_the_reported_rr(clean):
    rows = [(p.t, ms) for p in clean.hr() for ms in decode_heart_rate(p.data).rr_ms]
    t, rr = np.array(rows).T

    def rmssd(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(np.diff(x) ** 2)))

    assert rmssd(rr[(t > 360)]) > 1.5 * rmssd(rr[(t > 60) & (t < 300)])


def test_same_seed_same_bytes_and_times():
    a = simulate(60.0, SimParticipant(seed=5, ectopic_rate=0.02), ecg=True)
    b = simulate(60.0, SimParticipant(seed=5, ectopic_rate=0.02), ecg=True)
    c = simulate(60.0, SimParticipant(seed=6, ectopic_rate=0.02), ecg=True)
    assert a.packets == b.packets
    assert [p.data for p in a.hr()] != [p.data for p in c.hr()]


def test_ectopic_and_missed_beats_show_in_the_rr_stream_at_their_rates():
    session = simulate(900.0, SimParticipant(seed=8, ectopic_rate=0.03, missed_beat_rate=0.02))
    rr = np.array([ms for p in session.hr() for ms in decode_heart_rate(p.data).rr_ms])
    local = np.array([np.median(rr[max(0, i - 10) : i + 10]) for i in range(rr.size)])
    doubled = np.mean(rr > 1.6 * local)
    premature = np.mean(rr < 0.75 * local)
    assert doubled == pytest.approx(0.02, rel=0.45)
    assert premature == pytest.approx(0.03, rel=0.45)


def test_disconnect_gives_events_and_a_silent_gap(faulty):
    states = faulty.states()
    assert states[:2] == [LinkState.CONNECTING, LinkState.CONNECTED]
    i = states.index(LinkState.DISCONNECTED)
    assert states[i : i + 3] == [LinkState.DISCONNECTED, LinkState.RECONNECTING, LinkState.CONNECTED]
    down, up = faulty.events[i], faulty.events[i + 2]
    assert down.t == pytest.approx(100.0, abs=1e-6) and down.reason
    assert up.t == pytest.approx(112.0, abs=1e-6)
    assert not [p for p in faulty.packets if 100.0 <= p.t < 112.0]
    assert [p for p in faulty.hr() if 112.0 <= p.t < 114.0]
    assert [p for p in faulty.ecg() if 112.0 <= p.t < 114.0]
    # the beats during the gap are not reported: reported RR time falls short of session time by ~the gap
    after = [p for p in faulty.hr() if 112.0 <= p.t < 200.0]
    before = [p for p in faulty.hr() if p.t < 100.0]
    reported_s = sum(sum(decode_heart_rate(p.data).rr_ms) for p in before + after) / 1000
    assert reported_s == pytest.approx(200.0 - 12.0 - faulty.events[1].t, abs=3.5)


def test_contact_loss_sends_not_detected_without_rr(faulty):
    during = [decode_heart_rate(p.data) for p in faulty.hr() if 201.0 <= p.t < 206.0]
    assert len(during) >= 4
    assert all(m.contact is SensorContact.SUPPORTED_NOT_DETECTED and not m.rr_1024 for m in during)
    after = [decode_heart_rate(p.data) for p in faulty.hr() if 208.0 <= p.t < 215.0]
    assert all(m.contact is SensorContact.DETECTED for m in after) and any(m.rr_1024 for m in after)
    # the ECG during contact loss is flat noise, no QRS
    frames = [decode_pmd_frame(p.data) for p in faulty.ecg() if 201.0 <= p.t < 205.0]
    assert frames and max(np.abs(f.samples_uv).max() for f in frames) < 200


def test_malformed_bursts_are_undecodable_and_nothing_else_is(faulty):
    # the burst is on the strap's side (300–303 s); packets arrive up to ~1 s later (latency, held back)
    for packet in faulty.hr() + faulty.ecg():  # (the battery level, sent on connecting, is never malformed)
        decode = decode_heart_rate if packet.uuid == HEART_RATE_MEASUREMENT_UUID else decode_pmd_frame
        if 301.2 <= packet.t < 303.0:
            with pytest.raises(DecodeError):
                decode(packet.data)
        elif packet.t < 300.0 or packet.t >= 304.5:
            decode(packet.data)


def test_random_fault_rates_are_seeded():
    faults = SimFaults(seed=4, disconnect_rate_per_hour=30, disconnect_duration_s=(2.0, 5.0),
                       contact_loss_rate_per_hour=30)
    a = simulate(600.0, SimParticipant(seed=1), faults=faults)
    b = simulate(600.0, SimParticipant(seed=1), faults=faults)
    assert a.events == b.events and a.packets == b.packets
    assert a.states().count(LinkState.DISCONNECTED) >= 1
    assert a.states().count(LinkState.DISCONNECTED) == a.states().count(LinkState.RECONNECTING)
    contacts = [decode_heart_rate(p.data).contact for p in a.hr()]
    assert SensorContact.SUPPORTED_NOT_DETECTED in contacts


def test_ecg_frames_device_clock_and_r_peaks(faulty):
    strap = faulty.strap
    frames = [decode_pmd_frame(p.data) for p in faulty.ecg() if p.t < 100.0]
    assert all(isinstance(f, EcgFrame) and f.samples_uv.size == 73 for f in frames)
    assert pmd_time_to_datetime(frames[0].timestamp_ns).year == 2019
    stamps = np.array([f.timestamp_ns for f in frames], dtype=np.int64)
    arrivals = np.array([p.t for p in faulty.ecg() if p.t < 100.0])
    np.testing.assert_allclose(np.diff(stamps), 73 / 130 * 1e9, atol=1)
    # arrivals are late by 0–300 ms: the lower envelope stays within a few ms over these 100 s
    scale, offset = lower_envelope((stamps - stamps[0]) / 1e9, arrivals, np.zeros(arrivals.size, dtype=int))
    late = arrivals - (offset[0] + scale * (stamps - stamps[0]) / 1e9)
    assert late.min() >= -1e-9 and np.median(late) == pytest.approx(0.15, abs=0.05) and late.max() < 1.5
    assert abs(strap.device_clock_drift_ppm) <= 50
    # without transport delay the device clock's drift is exact
    no_delay = SimFaults(latency_s=(0.0, 0.0), bunch_fraction=0.0, first_delay_s=(0.0, 0.0), drift_ppm=-37.0)
    ideal = simulate(100.0, SimParticipant(seed=2), ecg=True, faults=no_delay)
    stamps = np.array([decode_pmd_frame(p.data).timestamp_ns for p in ideal.ecg()], dtype=np.int64)
    arrivals = np.array([p.t for p in ideal.ecg()])
    slope = np.polyfit(arrivals - arrivals[0], (stamps - stamps[0]) / 1e9, 1)[0]
    assert slope - 1 == pytest.approx(-37e-6, abs=1e-7)
    assert POLAR_EPOCH.year == 2000
    # R peaks: sample k is at t_connect + k / fs on the session clock
    fs = 130.0 * (1 + strap.device_clock_drift_ppm * 1e-6)
    t_connect = faulty.events[1].t
    ecg = np.concatenate([f.samples_uv for f in frames]).astype(float)
    _, info = ecg_peaks(ecg, sampling_rate=130)
    detected = np.asarray(info["ECG_R_Peaks"])
    true_times = np.array(strap.true_beat_times())
    expected = (true_times[(true_times > t_connect + 0.5) & (true_times < t_connect + ecg.size / fs - 0.5)]
                - t_connect) * fs
    gaps = np.abs(detected[:, None] - expected[None, :]).min(axis=0)
    assert np.mean(gaps <= 1.0) >= 0.98


class StuckClock:
    """A clock whose sleeps never end by themselves: only `stop()` can end the strap's run."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


def test_stop_ends_run_even_while_the_strap_is_waiting():
    async def main() -> list[LinkEvent]:
        strap = SimulatedStrap("sim-B", StuckClock(), SimParticipant(seed=1), ecg=True)
        events: list[LinkEvent] = []
        task = asyncio.create_task(strap.run(lambda p: None, events.append))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not task.done()
        strap.stop()
        await asyncio.wait_for(task, timeout=5.0)
        return events

    events = asyncio.run(main())
    assert [e.state for e in events] == [LinkState.CONNECTING, LinkState.CLOSED]


def test_bad_fault_settings_are_rejected():
    with pytest.raises(ValueError, match="duration > 0"):
        SimFaults(disconnects=[(10.0, 0.0)])
    with pytest.raises(ValueError, match="rate_per_hour"):
        SimFaults(contact_loss_rate_per_hour=-1)
    with pytest.raises(ValueError, match="malformed_burst_s"):
        SimFaults(malformed_burst_s=(5.0, 1.0))


class LateClock(ManualClock):
    """A session clock on a busy machine: every wake-up comes 2 s (session time) late."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(max(0.0, seconds) + 2.0)


def test_beats_while_the_link_is_down_are_never_reported_even_when_noticed_late():
    clock = LateClock()
    strap = SimulatedStrap("sim-L", clock, SimParticipant(seed=2), faults=SimFaults(disconnects=[(40.0, 10.0)]))
    packets: list[Packet] = []
    events: list[LinkEvent] = []

    async def main() -> None:
        async def stop_later() -> None:
            while clock.now() < 90.0:
                await asyncio.sleep(0)
            strap.stop()

        await asyncio.gather(strap.run(packets.append, events.append), stop_later())

    asyncio.run(main())
    (up,) = [e.t for e in events if e.state is LinkState.CONNECTED and e.t > 40.0]
    (down,) = [e.t for e in events if e.state is LinkState.DISCONNECTED]
    assert down >= 40.0 and up >= 50.0 and up > down
    assert not [p for p in packets if down <= p.t < up]
    first = next(p for p in packets if p.t >= up and p.uuid == HEART_RATE_MEASUREMENT_UUID)
    rr = decode_heart_rate(first.data).rr_ms
    # every beat after the first in that notification happened after the link came back
    assert sum(rr[1:]) / 1000.0 <= first.t - up + 1e-6
