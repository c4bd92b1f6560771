"""Battery level from the standard Battery Service (0x180F/0x2A19): bleak's real BlueZ backend against the fake
BlueZ, the simulated strap, the raw layer and the decoder, readiness and the monitor's panel."""

from __future__ import annotations

import pytest
from bluez_mock import BATTERY_LEVEL, BLUEZ_MOCK_SKIP_REASON, HR_MEASUREMENT, dbus_daemon_available
from test_ble_bluez import H10, H10_NAME, Recorder, fast_link, hr_frames, run_with_link, send_and_wait

from devices.battery import LOW_BATTERY_PCT, battery_words, decode_battery_level, encode_battery_level
from devices.errors import DecodeError
from devices.link import BATTERY_LEVEL_UUID, HEART_RATE_MEASUREMENT_UUID, LinkState

needs_bluez = pytest.mark.skipif(not dbus_daemon_available(), reason=BLUEZ_MOCK_SKIP_REASON)


def test_battery_level_is_one_byte_of_percent():
    assert decode_battery_level(b"\x57") == 87
    assert decode_battery_level(encode_battery_level(0)) == 0
    for bad in (b"", b"\x10\x00", b"\x65"):
        with pytest.raises(DecodeError):
            decode_battery_level(bad)
    assert battery_words(None) == ""
    assert battery_words(LOW_BATTERY_PCT) == "battery 20 %"
    assert "low" in battery_words(LOW_BATTERY_PCT - 1)


# -- bleak's BlueZ backend ---------------------------------------------------------------------------------------


@needs_bluez
def test_battery_is_read_on_connect_and_followed_by_notifications(bluez):
    path = bluez.add_strap(H10, H10_NAME)
    bluez.set_battery(path, 87)
    link = fast_link()

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, hr_frames(60, 2))
        assert bluez.is_notifying(path, BATTERY_LEVEL)
        bluez.notify(path, BATTERY_LEVEL, bytes([86]))
        await rec.until(lambda: link.battery_pct == 86, "battery notification")

    rec = run_with_link(link, body)
    battery = [p.data for p in rec.packets if p.uuid == BATTERY_LEVEL_UUID]
    assert battery == [bytes([87]), bytes([86])]  # the read, then the notification, both raw
    assert [p.data for p in rec.packets if p.uuid == HEART_RATE_MEASUREMENT_UUID] == hr_frames(60, 2)
    ops = [(op, u) for op, u, _d in bluez.ops(path)]
    assert ops[:3] == [("start_notify", HR_MEASUREMENT), ("read", BATTERY_LEVEL), ("start_notify", BATTERY_LEVEL)]
    assert "battery 87 %" in next(e for e in rec.events if e.state == LinkState.CONNECTED).reason


@needs_bluez
def test_a_read_only_battery_is_read_and_not_subscribed(bluez):
    path = bluez.add_strap(H10, H10_NAME)
    bluez.set_battery(path, 12, flags=["read"])
    link = fast_link()

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")

    rec = run_with_link(link, body)
    assert link.battery_pct == 12
    assert [p.data for p in rec.packets if p.uuid == BATTERY_LEVEL_UUID] == [bytes([12])]
    assert ("start_notify", BATTERY_LEVEL) not in [(op, u) for op, u, _d in bluez.ops(path)]


@needs_bluez
@pytest.mark.parametrize("read_error", ["", "org.bluez.Error.NotPermitted"])
def test_a_strap_without_a_readable_battery_still_streams_with_battery_unknown(bluez, read_error):
    path = bluez.add_strap("C0:FF:EE:00:00:02", "Garmin HRM-Dual")
    if read_error:
        bluez.set_battery(path, 50, read_error=read_error)
    link = fast_link(device="Garmin")

    async def body(rec: Recorder) -> None:
        await rec.until(lambda: rec.count(LinkState.CONNECTED) == 1, "connection")
        await send_and_wait(bluez, path, rec, hr_frames(58, 3))

    rec = run_with_link(link, body)
    assert link.battery_pct is None
    assert [p.uuid for p in rec.packets] == [HEART_RATE_MEASUREMENT_UUID] * 3
    assert rec.count(LinkState.DISCONNECTED) == 0 and rec.count(LinkState.RECONNECTING) == 0
    assert "no battery level" in next(e for e in rec.events if e.state == LinkState.CONNECTED).reason


# -- the simulated strap, the session, readiness and the monitor ------------------------------------------------


def test_sim_faults_battery_option_is_checked():
    from biofeedback.live.recorder import DeviceSpecError, parse_sim_faults

    faults = parse_sim_faults(["P02:battery=15", "P03:battery=none"], ["P01", "P02", "P03"])
    assert faults["P02"].battery_pct == 15 and faults["P03"].battery_pct is None
    for bad in ("battery=101", "battery=12.5", "battery=low"):
        with pytest.raises(DeviceSpecError, match="battery"):
            parse_sim_faults([bad], ["P01"])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three simulated straps: P02's battery low, P03 without a Battery Service, P01 the default; P02 reconnects."""
    from biofeedback.live.recorder import build_session, parse_device_specs, parse_sim_faults
    from devices.virtual_time import LoopClock, run_virtual
    from protocols.model import Phase, Protocol
    from recordings.store import Store

    store = Store(tmp_path_factory.mktemp("battery") / "s.sqlite")
    protocol = Protocol("battery-test", "one phase", (Phase("rest", "rest", 40.0),))
    faults = parse_sim_faults(["P02:battery=15", "P03:battery=none"], ["P01", "P02", "P03"])
    faults["P02"] = type(faults["P02"])(battery_pct=15, disconnects=[(10.0, 5.0)])
    session = build_session(store, protocol, parse_device_specs(["sim=P01", "sim=P02", "sim=P03"], None),
                            clock=LoopClock(), faults=faults)  # fmt: skip
    views = []

    async def main():
        import asyncio

        task = asyncio.create_task(session.run())
        await session.clock.sleep(30.0)
        views.append(session.monitor_view())
        return await task

    ids = run_virtual(main())
    yield store, dict(zip(["P01", "P02", "P03"], ids, strict=True)), views[0]
    store.close()


def test_the_simulated_battery_is_stored_raw_on_every_connection_and_shown_in_the_view(recorded):
    store, ids, view = recorded
    levels = {pid: [p.data for p in store.packets(sid, BATTERY_LEVEL_UUID)] for pid, sid in ids.items()}
    assert levels == {"P01": [bytes([90])], "P02": [bytes([15])] * 2, "P03": []}  # P02: connect and reconnect
    assert {s.participant_id: s.battery_pct for s in view.straps} == {"P01": 90, "P02": 15, "P03": None}
    for sid in ids.values():
        assert store.packet_errors(sid) == []  # decoded, not "unknown" or malformed


def test_the_monitor_panel_warns_below_twenty_percent(qtbot, recorded):
    from test_group_control import FakeGroup, Frozen

    from biofeedback.display.monitor import MonitorWindow

    _store, _ids, view = recorded
    win = MonitorWindow(Frozen(view), FakeGroup())
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    texts = {p.participant_id: p.battery.text() for p in win.panels.values()}
    assert "battery 90 %" in texts["P01"] and "low" not in texts["P01"]
    assert "battery 15 % — low" in texts["P02"] and "⚠" in texts["P02"]
    assert texts["P03"] == ""  # no Battery Service: nothing claimed
    assert win.panels["sim-2"].battery.isVisible()
    from test_ready_screen import shoot

    shoot(win, "monitor-battery.png")


def test_readiness_knows_the_battery_and_the_headless_wait_says_it(tmp_path, capsys):
    import app
    from recordings.store import Store

    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\n[[phase]]\nname = "rest"\nkind = "rest"\nduration = "15s"\n')
    store = tmp_path / "s.sqlite"
    assert app.main(["session", "run", "--store", str(store), "--device", "sim=P01", "--device", "sim=P02",
                     "--sim-faults", "P02:battery=12", "--protocol", str(tiny), "--speed", "100", "--headless",
                     "--start-when-ready", "--ready-timeout", "60"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    p02 = [line for line in out.splitlines() if line.startswith("  P02")]
    assert any("battery 12 % — low, charge or replace it" in line for line in p02), out
    assert not any("low" in line for line in out.splitlines() if line.startswith("  P01"))
    with Store(store) as s:
        assert len(s.sessions()) == 2  # a low battery warns; it does not hold the start
