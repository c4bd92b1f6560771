"""`devices.ble` through bleak's real BlueZ backend, against a fake BlueZ on a private system bus."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from bluez_mock import (
    ACC_START_FACTOR,
    ACC_START_PARAMS,
    BLUEZ_MOCK_SKIP_REASON,
    HR_MEASUREMENT,
    PMD_CONTROL,
    PMD_DATA,
    BluezMock,
    dbus_daemon_available,
)

from devices.ble import AccUnavailable, BleStrapLink, EcgUnavailable, find_device, scan
from devices.clock import ScaledClock
from devices.link import (
    HEART_RATE_MEASUREMENT_UUID,
    PMD_CONTROL_POINT_UUID,
    PMD_DATA_UUID,
    LinkEvent,
    LinkState,
    Packet,
)
from devices.polar_pmd import PmdControlError

pytestmark = pytest.mark.skipif(not dbus_daemon_available(), reason=BLUEZ_MOCK_SKIP_REASON)

H10 = "A0:9E:1A:12:34:56"
H10_NAME = "Polar H10 1234ABCD"


@dataclass
class Recorder:
    packets: list[Packet] = field(default_factory=list)
    events: list[LinkEvent] = field(default_factory=list)

    def states(self) -> list[LinkState]:
        return [e.state for e in self.events]

    def count(self, state: LinkState) -> int:
        return self.states().count(state)

    async def until(self, condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        for _ in range(int(timeout_s / 0.01)):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; events: {self.events}")


def fast_link(device: str = H10, **kwargs) -> BleStrapLink:
    options = dict(
        backoff_initial_s=0.05, backoff_max_s=0.2, connect_timeout_s=1.0, scan_timeout_s=1.0, seed=1
    )
    options.update(kwargs)
    return BleStrapLink(device, ScaledClock(), **options)


def run_with_link(link: BleStrapLink, body: Callable[[Recorder], Awaitable[None]]) -> Recorder:
    """Run the link while `body` drives the fake strap, then stop it (stop must end the link)."""
    rec = Recorder()

    async def main() -> None:
        task = asyncio.create_task(link.run(rec.packets.append, rec.events.append))
        try:
            await body(rec)
        finally:
            link.stop()
            await asyncio.wait_for(task, 10.0)

    asyncio.run(main())
    return rec


def hr_frames(first_bpm: int, n: int) -> list[bytes]:
    """Heart Rate Measurement values (flags 0x10: uint8 bpm + one RR interval)."""
    return [bytes([0x10, first_bpm + i, 0x00, 0x04]) for i in range(n)]


async def send_and_wait(bluez: BluezMock, path: str, rec: Recorder, frames: list[bytes]) -> None:
    before = len(rec.packets)
    for frame in frames:
        bluez.notify(path, HR_MEASUREMENT, frame)
    await rec.until(lambda: len(rec.packets) >= before + len(frames), f"{len(frames)} notifications")


# -- scanning ------------------------------------------------------------------------------------------------


def test_scan_lists_heart_rate_straps_only(bluez):
    bluez.add_strap(H10, H10_NAME, pmd=True, rssi=-70)
    bluez.add_strap("C0:FF:EE:00:00:02", "Garmin HRM-Dual", rssi=-50)
    kettle = bluez.add_strap("C0:FF:EE:00:00:03", "Kettle")
    bluez.set_uuids(kettle, ["0000180f-0000-1000-8000-00805f9b34fb"])  # battery only: not a heart-rate strap

    straps = asyncio.run(scan(timeout_s=0.3))

    assert [s.address for s in straps] == ["C0:FF:EE:00:00:02", H10]  # strongest first
    polar = straps[1]
    assert polar.name == H10_NAME
    assert polar.has_pmd is True
    assert straps[0].has_pmd is False
    assert isinstance(polar.rssi, int) and polar.rssi < 0


def test_has_pmd_from_advertised_service_alone(bluez):
    bluez.add_strap("C0:FF:EE:00:00:09", "Unnamed strap", pmd=True)
    (strap,) = asyncio.run(scan(timeout_s=0.3))
    assert strap.has_pmd is True


def test_find_device_by_address_or_name_prefix(bluez):
    bluez.add_strap("C0:FF:EE:00:00:02", "Garmin HRM-Dual")
    bluez.add_strap(H10, H10_NAME)

    async def main():
        by_name = await find_device("Polar H10", 1.0)
        by_address = await find_device(H10.lower(), 1.0)
        missing = await find_device("Wahoo", 0.2)
        return by_name, by_address, missing

    by_name, by_address, missing = asyncio.run(main())
    assert by_name.address == H10
    assert by_address.address == H10
    assert missing is None


def test_find_device_rejects_empty_target():
    with pytest.raises(ValueError, match="must not be empty"):
        asyncio.run(find_device("  ", 0.1))


# -- streaming and reconnecting ------------------------------------------------------------------------------


def test_link_records_notifications_raw_and_in_order(bluez):
    path = bluez.add_strap(H10, H10_NAME)
    frames = [*hr_frames(60, 20), b"\x16\x48\x00\x04\x10\x04"]  # RR-bearing and odd-length frames alike
    link = fast_link(device="Polar H10")

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, frames)

    rec = run_with_link(link, body)
    assert [p.data for p in rec.packets] == frames
    assert {p.uuid for p in rec.packets} == {HEART_RATE_MEASUREMENT_UUID}
    assert {p.device for p in rec.packets} == {"Polar H10"}
    times = [p.t for p in rec.packets]
    assert times == sorted(times) and times[0] >= rec.events[0].t
    assert rec.states()[0] == LinkState.CONNECTING
    assert rec.states()[-1] == LinkState.CLOSED
    assert H10 in rec.events[rec.states().index(LinkState.CONNECTED)].reason
    assert link.address == H10
    assert bluez.stats(path)["connected"] is False  # stop() disconnected


def test_three_drops_mid_stream_lose_nothing_sent_while_connected(bluez):
    path = bluez.add_strap(H10, H10_NAME)
    sent: list[bytes] = []

    async def body(rec: Recorder) -> None:
        for round_ in range(4):
            await rec.until(
                lambda r=round_: rec.count(LinkState.CONNECTED) == r + 1, f"connection {round_ + 1}"
            )
            assert bluez.is_notifying(path, HR_MEASUREMENT)  # re-subscribed after each reconnect
            frames = hr_frames(50 + 10 * round_, 8)
            sent.extend(frames)
            await send_and_wait(bluez, path, rec, frames)
            if round_ < 3:
                bluez.drop_link(path)
                await rec.until(lambda r=round_: rec.count(LinkState.DISCONNECTED) == r + 1, "disconnect")

    rec = run_with_link(fast_link(), body)
    assert [p.data for p in rec.packets] == sent
    assert rec.count(LinkState.DISCONNECTED) == 3
    assert rec.count(LinkState.CONNECTED) == 4
    # each drop: DISCONNECTED (with a reason), then RECONNECTING, then CONNECTED again
    states = rec.states()
    for i, state in enumerate(states):
        if state == LinkState.DISCONNECTED:
            assert rec.events[i].reason
            assert states[i + 1] == LinkState.RECONNECTING
            assert LinkState.CONNECTED in states[i + 2 :]
    assert bluez.stats(path)["connects"] == 4


@pytest.mark.parametrize(
    ("plan", "reason_fragment"),
    [
        (["in-progress", "in-progress"], "org.bluez.Error.InProgress"),
        (["software-abort", "software-abort"], "Software caused connection abort"),
        (["hang"], "timed out"),
        (["delay:3.0"], "timed out"),
        (["in-progress", "software-abort", "hang", "in-progress"], "org.bluez.Error.InProgress"),
    ],
)
def test_connect_errors_are_retried_until_the_strap_connects(bluez, plan, reason_fragment):
    path = bluez.add_strap(H10, H10_NAME)
    bluez.set_connect_plan(path, plan)
    link = fast_link(connect_timeout_s=0.4)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection after errors")
        await send_and_wait(bluez, path, rec, hr_frames(70, 3))

    rec = run_with_link(link, body)
    stats = bluez.stats(path)
    assert stats["modes_used"][: len(plan)] == plan
    assert stats["connects"] == 1
    retries = [e for e in rec.events if e.state == LinkState.RECONNECTING]
    assert len(retries) == len(plan)
    assert reason_fragment in retries[0].reason
    assert [p.data for p in rec.packets] == hr_frames(70, 3)


def test_le_connection_abort_by_local_is_survived(bluez):
    # bluetoothd reports a connect that the controller aborted; bleak retries it within the same connect call.
    path = bluez.add_strap(H10, H10_NAME)
    bluez.set_connect_plan(path, ["abort-by-local", "abort-by-local"])

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, hr_frames(65, 4))

    rec = run_with_link(fast_link(), body)
    assert bluez.stats(path)["modes_used"][:3] == ["abort-by-local", "abort-by-local", "ok"]
    # the transient drop inside bleak's connect is neither a lost link nor a failed attempt
    assert rec.count(LinkState.DISCONNECTED) == 0
    assert rec.count(LinkState.RECONNECTING) == 0
    assert len(rec.packets) == 4


def test_strap_absent_at_start_is_searched_for_until_it_appears(bluez):
    link = fast_link(device="Polar H10", scan_timeout_s=0.2)
    holder: dict[str, str] = {}

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.RECONNECTING) >= 2, "two failed searches")
        holder["path"] = bluez.add_strap(H10, H10_NAME)
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection once the strap advertises")
        await send_and_wait(bluez, holder["path"], rec, hr_frames(80, 2))

    rec = run_with_link(link, body)
    first_retry = next(e for e in rec.events if e.state == LinkState.RECONNECTING)
    assert first_retry.reason.startswith("no strap matching 'Polar H10' advertising within 0.2 s")
    assert len(rec.packets) == 2


def test_no_adapter_at_start_is_reported_and_retried(bluez):
    bluez.bluez_mock.RemoveAdapter(bluez.adapter)
    link = fast_link()
    holder: dict[str, str] = {}

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.RECONNECTING) >= 1, "a failed attempt")
        bluez.bluez_mock.AddAdapter(bluez.adapter, "cmt-lab-pc")
        holder["path"] = bluez.add_strap(H10, H10_NAME)
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection once Bluetooth is back")
        await send_and_wait(bluez, holder["path"], rec, hr_frames(75, 2))

    rec = run_with_link(link, body)
    first_retry = next(e for e in rec.events if e.state == LinkState.RECONNECTING)
    assert "No Bluetooth adapters found" in first_retry.reason
    assert len(rec.packets) == 2


def test_stop_during_a_hanging_connect_ends_the_link_and_cancels_the_connect(bluez):
    path = bluez.add_strap(H10, H10_NAME)
    bluez.set_connect_plan(path, ["hang"])
    link = fast_link(connect_timeout_s=30.0)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: bluez.stats(path)["connect_calls"] == 1, "Connect call")

    rec = run_with_link(link, body)  # stop() must not wait for the 30 s connect timeout (wait_for guards it)
    assert rec.states()[-1] == LinkState.CLOSED
    assert LinkState.CONNECTED not in rec.states()
    stats = bluez.stats(path)
    assert stats["disconnect_calls"] >= 1  # bleak cancelled the pending BlueZ connect
    assert stats["connected"] is False


def test_cancelling_run_disconnects_and_reports_closed(bluez):
    path = bluez.add_strap(H10, H10_NAME)
    link = fast_link()
    rec = Recorder()

    async def main() -> None:
        task = asyncio.create_task(link.run(rec.packets.append, rec.events.append))
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rec.events[-1].state == LinkState.CLOSED and rec.events[-1].reason == "cancelled"
    assert bluez.stats(path)["connected"] is False


def test_link_refuses_to_run_twice(bluez):
    bluez.add_strap(H10, H10_NAME)
    link = fast_link()

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        with pytest.raises(RuntimeError, match="already running"):
            await link.run(rec.packets.append, rec.events.append)

    run_with_link(link, body)


# -- Polar PMD ECG -------------------------------------------------------------------------------------------

SETTINGS_REQUEST = bytes([0x01, 0x00])
START_ECG_130HZ_14BIT = bytes([0x02, 0x00, 0x00, 0x01, 0x82, 0x00, 0x01, 0x01, 0x0E, 0x00])
ECG_STARTUP = [
    ("start_notify", HR_MEASUREMENT, b""),
    ("start_notify", PMD_CONTROL, b""),
    ("start_notify", PMD_DATA, b""),
    ("read", PMD_CONTROL, b""),
    ("write", PMD_CONTROL, SETTINGS_REQUEST),
    ("write", PMD_CONTROL, START_ECG_130HZ_14BIT),
]


def ecg_frame(timestamp_ns: int, samples_uv: list[int]) -> bytes:
    body = b"".join(v.to_bytes(3, "little", signed=True) for v in samples_uv)
    return bytes([0x00]) + timestamp_ns.to_bytes(8, "little") + bytes([0x00]) + body


def test_ecg_start_up_order_frames_and_restart_after_a_drop(bluez):
    path = bluez.add_strap(H10, H10_NAME, pmd=True)
    link = fast_link(ecg=True)
    frames = [ecg_frame(10**9 * (i + 1), [i, -i, 1000 + i, -(2**23)]) for i in range(6)]

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection with ECG")
        for frame in frames[:3]:
            bluez.notify(path, PMD_DATA, frame)
        bluez.notify(path, HR_MEASUREMENT, hr_frames(60, 1)[0])
        await rec.until(lambda: len(rec.packets) >= 3 + 3 + 1, "ECG and HR packets")
        bluez.drop_link(path)
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 2, "reconnection with ECG")
        for frame in frames[3:]:
            bluez.notify(path, PMD_DATA, frame)
        await rec.until(lambda: sum(p.uuid == PMD_DATA_UUID for p in rec.packets) == 6, "ECG after reconnect")

    rec = run_with_link(link, body)
    assert bluez.ops(path) == ECG_STARTUP + ECG_STARTUP  # same start-up again after the reconnect
    assert [p.data for p in rec.packets if p.uuid == PMD_DATA_UUID] == frames
    control = [p.data for p in rec.packets if p.uuid == PMD_CONTROL_POINT_UUID]
    # the raw layer keeps the feature read and both responses of each start-up
    assert control[:3] == [
        bytes([0x0F, 0x05, 0x00]),
        bytes([0xF0, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x82, 0x00, 0x01, 0x01, 0x0E, 0x00]),
        bytes([0xF0, 0x02, 0x00, 0x00, 0x00]),
    ]
    assert control[3:] == control[:3]
    assert [p.data for p in rec.packets if p.uuid == HEART_RATE_MEASUREMENT_UUID] == hr_frames(60, 1)
    connected = [e for e in rec.events if e.state == LinkState.CONNECTED]
    assert all("ECG streaming" in e.reason and "MTU 232" in e.reason for e in connected)
    assert link.mtu == 232 and link.ecg_error is None


def test_ecg_refused_by_the_control_point_is_a_clear_error_and_heart_rate_continues(bluez):
    path = bluez.add_strap(H10, H10_NAME, pmd=True)
    bluez.set_pmd_error(path, opcode=0x02, error_code=8)  # INVALID_SAMPLE_RATE on start
    link = fast_link(ecg=True)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, hr_frames(62, 3))

    rec = run_with_link(link, body)
    assert isinstance(link.ecg_error, PmdControlError)
    assert link.ecg_error.response.error_code == 8
    assert "INVALID_SAMPLE_RATE" in str(link.ecg_error)
    connected = next(e for e in rec.events if e.state == LinkState.CONNECTED)
    assert "ECG not started" in connected.reason and "INVALID_SAMPLE_RATE" in connected.reason
    assert rec.count(LinkState.DISCONNECTED) == 0
    assert [p.data for p in rec.packets if p.uuid == HEART_RATE_MEASUREMENT_UUID] == hr_frames(62, 3)
    assert [p.data[:4] for p in rec.packets if p.uuid == PMD_CONTROL_POINT_UUID][-1] == bytes([0xF0, 2, 0, 8])


def test_ecg_already_running_counts_as_started(bluez):
    # After a short drop a strap may still be streaming ECG; its ALREADY_IN_STATE answer is not a failure.
    path = bluez.add_strap(H10, H10_NAME, pmd=True)
    bluez.set_pmd_error(path, opcode=0x02, error_code=6)
    link = fast_link(ecg=True)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        bluez.notify(path, PMD_DATA, ecg_frame(5, [1, 2, 3]))
        await rec.until(lambda: any(p.uuid == PMD_DATA_UUID for p in rec.packets), "an ECG frame")

    rec = run_with_link(link, body)
    assert link.ecg_error is None
    assert "ECG streaming" in next(e for e in rec.events if e.state == LinkState.CONNECTED).reason


def test_ecg_requested_from_a_strap_without_pmd_keeps_heart_rate(bluez):
    path = bluez.add_strap("C0:FF:EE:00:00:02", "Garmin HRM-Dual")
    link = fast_link(device="Garmin", ecg=True)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, hr_frames(58, 2))

    rec = run_with_link(link, body)
    assert isinstance(link.ecg_error, EcgUnavailable)
    assert "no Polar Measurement Data" in str(link.ecg_error)
    assert len(rec.packets) == 2
    assert [op for op, _u, _d in bluez.ops(path)] == ["start_notify"]


# -- Polar PMD accelerometer (breathing from chest movement) -------------------------------------------------

START_ACC_50HZ_16BIT_8G = bytes([0x02, 0x02, 0x00, 0x01, 0x32, 0x00, 0x01, 0x01, 0x10, 0x00, 0x02, 0x01, 0x08, 0x00])


def acc_frame(timestamp_ns: int, samples_mg: list[tuple[int, int, int]]) -> bytes:
    body = b"".join(v.to_bytes(2, "little", signed=True) for xyz in samples_mg for v in xyz)
    return bytes([0x02]) + timestamp_ns.to_bytes(8, "little") + bytes([0x01]) + body


def test_acc_starts_after_ecg_and_its_factor_and_frames_are_kept(bluez):
    path = bluez.add_strap(H10, H10_NAME, pmd=True)
    link = fast_link(ecg=True, acc=True)
    frames = [acc_frame(10**9 * (i + 1), [(i, -1000 + i, 30), (-i, -999, 31)]) for i in range(3)]

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection with ECG and ACC")
        for frame in frames:
            bluez.notify(path, PMD_DATA, frame)
        await rec.until(lambda: sum(p.uuid == PMD_DATA_UUID for p in rec.packets) == 3, "ACC frames")

    rec = run_with_link(link, body)
    assert bluez.ops(path) == [*ECG_STARTUP, ("write", PMD_CONTROL, START_ACC_50HZ_16BIT_8G)]
    assert [p.data for p in rec.packets if p.uuid == PMD_DATA_UUID] == frames
    control = [p.data for p in rec.packets if p.uuid == PMD_CONTROL_POINT_UUID]
    assert control[-1] == bytes([0xF0, 0x02, 0x02, 0x00, 0x00]) + ACC_START_PARAMS  # kept raw, FACTOR included
    assert link.acc_factor == ACC_START_FACTOR
    assert link.ecg_error is None and link.acc_error is None
    reason = next(e for e in rec.events if e.state == LinkState.CONNECTED).reason
    assert "ECG streaming" in reason and "ACC streaming" in reason


def test_acc_refused_keeps_ecg_and_heart_rate_with_the_reason(bluez):
    path = bluez.add_strap(H10, H10_NAME, pmd=True)
    bluez.set_pmd_type_error(path, opcode=0x02, measurement=0x02, error_code=9)  # INVALID_RANGE for ACC only
    link = fast_link(ecg=True, acc=True)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        bluez.notify(path, PMD_DATA, ecg_frame(5, [1, 2, 3]))
        await send_and_wait(bluez, path, rec, hr_frames(64, 2))
        await rec.until(lambda: any(p.uuid == PMD_DATA_UUID for p in rec.packets), "an ECG frame")

    rec = run_with_link(link, body)
    assert link.ecg_error is None
    assert isinstance(link.acc_error, PmdControlError) and "INVALID_RANGE" in str(link.acc_error)
    assert link.acc_factor is None
    reason = next(e for e in rec.events if e.state == LinkState.CONNECTED).reason
    assert "ECG streaming" in reason and "ACC not started" in reason and "INVALID_RANGE" in reason
    assert rec.count(LinkState.DISCONNECTED) == 0
    assert [p.data for p in rec.packets if p.uuid == HEART_RATE_MEASUREMENT_UUID] == hr_frames(64, 2)


def test_acc_alone_from_a_strap_without_pmd_keeps_heart_rate(bluez):
    path = bluez.add_strap("C0:FF:EE:00:00:03", "Garmin HRM-Dual")
    link = fast_link(device="Garmin", acc=True)

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, hr_frames(57, 2))

    rec = run_with_link(link, body)
    assert isinstance(link.acc_error, AccUnavailable) and "no Polar Measurement Data" in str(link.acc_error)
    assert link.ecg_error is None
    assert [op for op, _u, _d in bluez.ops(path)] == ["start_notify"]
    assert len(rec.packets) == 2
