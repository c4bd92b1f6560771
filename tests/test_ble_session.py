"""A recorded session through bleak's real BlueZ backend (fake BlueZ on D-Bus): drops, gaps, ECG, the CLI scan."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from bluez_mock import BLUEZ_MOCK_SKIP_REASON, HR_MEASUREMENT, PMD_DATA, dbus_daemon_available

import app
from biofeedback.live.session import LiveSession, StrapBinding
from devices.ble import BleStrapLink
from devices.clock import ScaledClock
from devices.polar_pmd import encode_ecg_frame
from protocols.model import Phase, PhaseKind, Protocol
from recordings.store import Store

pytestmark = pytest.mark.skipif(not dbus_daemon_available(), reason=BLUEZ_MOCK_SKIP_REASON)

H10 = "A0:9E:1A:12:34:56"
ONE_HOUR = Protocol("long-rest", "a rest phase longer than the test", (Phase("baseline", PhaseKind.REST, 3600.0),))


def hr(bpm: int, rr_1024: int) -> bytes:
    return bytes([0x10, bpm]) + rr_1024.to_bytes(2, "little")


async def _wait(condition, what: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _record(bluez, store: Store, body, *, ecg: bool = False) -> int:
    clock = ScaledClock()
    link = BleStrapLink(
        H10, clock, ecg=ecg, backoff_initial_s=0.05, backoff_max_s=0.2, connect_timeout_s=1.0, scan_timeout_s=1.0
    )
    session = LiveSession(store, ONE_HOUR, [StrapBinding(link, "P01")], clock)
    strap = session.straps[0]

    async def main() -> None:
        task = asyncio.create_task(session.run())
        try:
            await body(session, strap)
        finally:
            session.end_session("test finished")
            await asyncio.wait_for(task, 15.0)

    asyncio.run(main())
    return strap.session_id


def test_three_drops_leave_gaps_and_lose_no_beat(bluez, store_path):
    path = bluez.add_strap(H10, "Polar H10 1234ABCD")
    sent: list[bytes] = []

    async def body(session, strap) -> None:
        for round_ in range(4):
            await _wait(lambda: strap.link_state == "connected", f"connection {round_ + 1}")
            before = session.store.counts(strap.session_id)["packets"]
            for i in range(10):
                frame = hr(60 + i, 1000 + 7 * i + round_)
                sent.append(frame)
                bluez.notify(path, HR_MEASUREMENT, frame)
                await asyncio.sleep(0.02)
            await _wait(lambda b=before: session.store.counts(strap.session_id)["packets"] >= b + 10, "packets")
            if round_ < 3:
                bluez.drop_link(path)
                await _wait(lambda: strap.link_state != "connected", "disconnect")

    with Store(store_path) as store:
        sid = _record(bluez, store, body)
        packets = list(store.packets(sid))
        assert [p.data for p in packets] == sent  # every notification, raw, in order
        beats = store.beats(sid)
        assert len(beats.t) == 40
        expected_rr = [int.from_bytes(f[2:4], "little") * 1000 / 1024 for f in sent]
        np.testing.assert_allclose(beats.rr_ms, expected_rr)  # no interval invented, none lost
        assert np.flatnonzero(beats.gap_before).tolist() == [0, 10, 20, 30]
        events = store.link_events(sid)
        disconnects = [e for e in events if e[2] == "disconnected"]
        assert len(disconnects) == 3 and all(e[3] for e in disconnects)  # each with its reason
        assert store.session(sid).state == "stopped"
        assert [m.kind for m in store.markers(sid)][-1] == "session_end"


def test_polar_ecg_through_pmd_is_decoded_and_stored(bluez, store_path):
    path = bluez.add_strap(H10, "Polar H10 1234ABCD", pmd=True)
    samples = (np.sin(np.arange(73 * 5) / 5.0) * 1000).astype(int)

    async def body(session, strap) -> None:
        await _wait(lambda: strap.link_state == "connected", "connection with ECG started")
        for k in range(5):
            frame = encode_ecg_frame(10**18 + k * 73 * 7_692_308, samples[k * 73 : (k + 1) * 73].tolist())
            bluez.notify(path, PMD_DATA, frame)
        await _wait(lambda: session.store.counts(strap.session_id)["ecg_chunks"] >= 5, "ECG frames stored")

    with Store(store_path) as store:
        sid = _record(bluez, store, body, ecg=True)
        chunks = store.ecg_chunks(sid)
        assert len(chunks) == 5
        np.testing.assert_array_equal(np.concatenate([c[3] for c in chunks]), samples)
        uuids = {p.uuid for p in store.packets(sid)}
        assert any(u.startswith("fb005c81") for u in uuids)  # control-point responses kept raw too


def test_devices_scan_command(bluez, capsys):
    bluez.add_strap(H10, "Polar H10 1234ABCD", pmd=True, rssi=-55)
    assert app.main(["devices", "scan", "--timeout", "0.3", "--json"]) == 0
    (strap,) = json.loads(capsys.readouterr().out)
    # the mock's advertisements alternate -55 and -56 dBm while discovering: the scan reports the latest one
    assert strap.pop("rssi") in (-55, -56)
    assert strap == {"name": "Polar H10 1234ABCD", "address": H10, "has_pmd": True}
