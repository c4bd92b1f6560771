"""The fake BlueZ itself, checked through bleak's real BlueZ backend (so a broken harness fails loudly)."""

from __future__ import annotations

import asyncio

import pytest
from bluez_mock import BLUEZ_MOCK_SKIP_REASON, HR_MEASUREMENT, HR_SERVICE, PMD_SERVICE, dbus_daemon_available

pytestmark = pytest.mark.skipif(not dbus_daemon_available(), reason=BLUEZ_MOCK_SKIP_REASON)


def test_bleak_scans_connects_and_receives_notifications(bluez):
    from bleak import BleakClient, BleakScanner

    path = bluez.add_strap("A0:9E:1A:00:00:01", "Polar H10 1234ABCD", pmd=True, rssi=-55)
    bluez.add_strap("11:22:33:44:55:66", "Kettle")  # advertises 0x180D too: the filter is by UUID, not name
    sent = [bytes([0x10, 60 + i, 0x00, 0x04]) for i in range(5)]

    async def main():
        found = await BleakScanner.discover(timeout=0.3, service_uuids=[HR_SERVICE], return_adv=True)
        device, adv = found["A0:9E:1A:00:00:01"]
        got: list[bytes] = []
        async with BleakClient(device, timeout=2.0) as client:
            uuids = {s.uuid for s in client.services}
            await client.start_notify(HR_MEASUREMENT, lambda _c, data: got.append(bytes(data)))
            for value in sent:
                bluez.notify(path, HR_MEASUREMENT, value)
            for _ in range(100):
                if len(got) == len(sent):
                    break
                await asyncio.sleep(0.01)
        return adv, uuids, got

    adv, uuids, got = asyncio.run(main())
    assert adv.local_name == "Polar H10 1234ABCD"
    assert PMD_SERVICE in adv.service_uuids
    assert 0x006B in adv.manufacturer_data
    assert {HR_SERVICE, PMD_SERVICE} <= uuids
    assert got == sent
    assert bluez.stats(path)["connected"] is False  # the context manager disconnected


def test_notify_refuses_when_nobody_listens(bluez):
    import dbus

    path = bluez.add_strap("A0:9E:1A:00:00:02", "Polar H10 00000002")
    with pytest.raises(dbus.exceptions.DBusException, match="NotNotifying"):
        bluez.notify(path, HR_MEASUREMENT, b"\x00\x3c")
