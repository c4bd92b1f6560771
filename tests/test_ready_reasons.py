"""Why a strap is not ready, in words: bleak's real BlueZ backend against the fake BlueZ (adapter off, no adapter,
strap not advertising), shown on the ready screen; and the causes other backends report, by their words."""

from __future__ import annotations

import pytest
from bluez_mock import BLUEZ_MOCK_SKIP_REASON, dbus_daemon_available

from biofeedback.live.readiness import NotReadyError, cause, wait_until_ready
from biofeedback.live.session import StrapBinding
from devices.clock import ScaledClock

H10 = "A0:9E:1A:12:34:56"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("FileNotFoundError: [Errno 2] No such file or directory", "no Bluetooth service"),
        ("BleakBluetoothNotAvailableError: ('No Bluetooth adapters found.', <...NO_BLUETOOTH: 1>)", "no adapter"),
        ("BleakBluetoothNotAvailableError: ('Bluetooth device is turned off', <...POWERED_OFF: 3>)", "Bluetooth off"),
        ("BleakBluetoothNotAvailableError: ('BLE is unauthorized', <...DENIED_BY_USER: 4>)", "permission"),
        ("org.freedesktop.DBus.Error.AccessDenied: Rejected send message", "permission"),
        ("org.bluez.Error.InProgress", "held by another app"),
        ("no strap matching 'Polar H10' advertising within 10 s; retrying in 2.00 s", "strap not found"),
        ("BleakDeviceNotFoundError: Device with address AA:BB was not found", "strap not found"),
        ("simulated: connection supervision timeout (HCI 0x08)", ""),
    ],
)
def test_causes_are_named_from_the_words_of_each_backend(reason, expected):
    name, hint = cause(reason)
    assert name == expected
    assert bool(hint) == bool(expected)


needs_bluez = pytest.mark.skipif(not dbus_daemon_available(), reason=BLUEZ_MOCK_SKIP_REASON)
SETUPS = {
    "Bluetooth off": lambda bz, path: bz.set_powered(False),
    "no adapter": lambda bz, path: bz.remove_adapter(),
    "strap not found": lambda bz, path: bz.set_advertising(path, False),
}


def ble_binding(pid: str = "P01") -> tuple[StrapBinding, ScaledClock]:
    from devices.ble import BleStrapLink

    clock = ScaledClock()
    link = BleStrapLink(H10, clock, scan_timeout_s=0.4, connect_timeout_s=0.5, backoff_initial_s=0.05,
                        backoff_max_s=0.2, seed=1)  # fmt: skip
    return StrapBinding(link, pid), clock


@needs_bluez
@pytest.mark.parametrize("expected", list(SETUPS))
def test_a_real_backend_failure_is_named_when_not_ready(bluez, expected):
    path = bluez.add_strap(H10, "Polar H10 1234ABCD")
    SETUPS[expected](bluez, path)
    binding, clock = ble_binding()
    import asyncio

    with pytest.raises(NotReadyError) as err:
        asyncio.run(wait_until_ready([binding], clock, 1.5))
    (state,) = err.value.straps
    assert state.cause() == expected, state.reason
    assert state.link_state == "reconnecting"  # retried: switching Bluetooth on or waking the strap is enough


@needs_bluez
def test_the_ready_screen_shows_the_cause_beside_a_ready_simulated_strap(bluez, qtbot):
    from biofeedback.display.ready import ReadyScreen
    from biofeedback.live.recorder import make_links, parse_device_specs

    bluez.set_powered(False)
    ble, clock = ble_binding("P02")
    (sim,) = make_links(parse_device_specs(["sim=P01"], None), clock, lambda: None)
    screen = ReadyScreen([StrapBinding(sim, "P01"), ble], clock, "mixed")
    qtbot.addWidget(screen.window)
    screen.start()
    try:
        win = screen.window
        qtbot.waitUntil(lambda: "Bluetooth off" in win.rows["P02"]["reason"].text(), timeout=10000)
        assert "bluetoothctl power on" in win.rows["P02"]["reason"].text()
        from test_ready_screen import shoot

        shoot(win, "ready-bluetooth-off.png")
        assert not win.start_button.isEnabled()
    finally:
        assert screen.finish() is None
