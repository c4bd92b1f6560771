"""The windowed ready screen (offscreen Qt, real clicks): six simulated straps, one never connecting, one without
skin contact, one with a low battery; Start, Start without …, Cancel, and nothing recorded before Start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pyqtgraph.Qt import QtCore, QtTest, QtWidgets

import app
from biofeedback.display.ready import ReadyScreen, ReadyWindow
from biofeedback.live.recorder import make_links, parse_device_specs
from biofeedback.live.session import StrapBinding
from devices.clock import ScaledClock
from devices.simulator import SimFaults
from recordings.store import Store

SIX = [f"P0{i}" for i in range(1, 7)]
SHOTS = Path(os.environ.get("CMT_READY_SHOTS", "/tmp/readyshots"))
SPEED = 25.0  # ten seconds of beats in under half a second


def six_straps(faults: dict[str, SimFaults]) -> tuple[list[StrapBinding], ScaledClock]:
    clock = ScaledClock(SPEED)
    links = make_links(parse_device_specs([f"sim={p}" for p in SIX], None), clock, lambda: None, seed=7,
                       faults=faults)  # fmt: skip
    return [StrapBinding(link, pid) for link, pid in zip(links, SIX, strict=True)], clock


def ready_count(win: ReadyWindow) -> int:
    return len(win.states) - len(win.not_ready)


def shoot(win: QtWidgets.QWidget, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert win.grab().save(str(SHOTS / name))


def click(button: QtWidgets.QAbstractButton) -> None:
    QtTest.QTest.mouseClick(button, QtCore.Qt.MouseButton.LeftButton)


@pytest.fixture
def screen(qtbot):
    screens = []

    def make(faults: dict[str, SimFaults]) -> ReadyScreen:
        bindings, clock = six_straps(faults)
        s = ReadyScreen(bindings, clock, "cmt-soothing")
        qtbot.addWidget(s.window)
        s.start()
        qtbot.waitExposed(s.window)
        screens.append(s)
        return s

    yield make
    for s in screens:
        if s.thread.is_alive():
            s.finish()


def test_six_straps_one_never_connecting_one_without_contact_start_without_names_them(qtbot, screen):
    faults = {"P03": SimFaults(battery_pct=15), "P05": SimFaults(disconnects=[(0.0, 1e6)]),
              "P06": SimFaults(contact_loss=[(0.0, 1e6)])}  # fmt: skip
    s = screen(faults)
    win = s.window
    qtbot.waitUntil(lambda: any(st.link_state == "connected" for st in win.states), timeout=5000)
    shoot(win, "ready-connecting.png")
    assert not win.start_button.isEnabled()
    qtbot.waitUntil(lambda: ready_count(win) == 4, timeout=20000)
    win.refresh()
    shoot(win, "ready-four-of-six.png")
    assert not win.start_button.isEnabled()
    assert win.without_button.isVisible() and win.without_button.isEnabled()
    assert win.without_button.text() == "Start without P05, P06"
    reason = {p: win.rows[p]["reason"].text() for p in SIX}
    assert "not connected" in reason["P05"] and "connection supervision timeout" in reason["P05"]
    assert "no skin contact" in reason["P06"]
    assert all("ready" in reason[p] for p in ("P01", "P02", "P03", "P04"))
    assert "15 % — low" in win.rows["P03"]["battery"].text() and "Low battery: P03" in win.summary.text()
    assert win.rows["P01"]["battery"].text() == "90 %"
    assert win.rows["P05"]["battery"].text().endswith("battery unknown</span>")  # never connected: unknown
    assert win.rows["P01"]["beats"].text() == "ready"
    assert "beats for" in win.rows["P06"]["beats"].text()

    click(win.without_button)
    choice = s.finish()
    assert choice.participants == ["P01", "P02", "P03", "P04"]
    assert set(choice.left_out) == {"P05", "P06"} and "no skin contact" in choice.left_out["P06"]
    assert not s.thread.is_alive()  # the links are stopped: the session opens its own


def test_start_is_enabled_once_every_strap_is_ready_and_starts_all(qtbot, screen):
    s = screen({})
    win = s.window
    assert not win.start_button.isEnabled()
    click(win.start_button)  # disabled: nothing happens
    assert win.choice is None and not win.done
    qtbot.waitUntil(win.start_button.isEnabled, timeout=20000)
    shoot(win, "ready-all.png")
    assert not win.without_button.isVisible()
    click(win.start_button)
    assert s.finish().participants == SIX


def test_cancel_and_closing_the_window_choose_nothing(qtbot, screen):
    s = screen({})
    click(s.window.cancel_button)
    assert s.window.done and s.finish() is None
    s = screen({})
    s.window.close()
    assert s.window.done and s.finish() is None


# --- through the command line: nothing is recorded before Start -------------------------------------------------


def clicker(name: str) -> QtCore.QTimer:
    """Click the ready screen's `name` button as soon as it is enabled (while app.main blocks in its loop)."""
    timer = QtCore.QTimer()
    timer.setInterval(50)

    def tick() -> None:
        for w in QtWidgets.QApplication.topLevelWidgets():
            if isinstance(w, ReadyWindow) and w.isVisible() and not w.done:
                button = getattr(w, name)
                if button.isEnabled() and button.isVisible():
                    click(button)

    timer.timeout.connect(tick)
    timer.start()
    return timer


def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\n[[phase]]\nname = "rest"\nkind = "rest"\nduration = "10s"\n')
    return path


def test_the_command_records_only_after_start_and_only_who_was_kept(qtbot, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    timer = clicker("without_button")
    try:
        code = app.main(["session", "run", "--store", str(store), "--device", "sim=P01", "--device", "sim=P02",
                         "--sim-faults", "P02:contact=100000", "--protocol", str(tiny(tmp_path)), "--speed", "50"])
    finally:
        timer.stop()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Left out at the ready screen: P02 (connected, but no skin contact" in " ".join(out.split())
    with Store(store) as s:
        (only,) = s.sessions()
        assert only.participant_id == "P01" and only.device == "sim-1"
        assert only.settings["left_out_at_start"]["P02"].startswith("connected, but no skin contact")


def test_cancel_at_the_ready_screen_records_nothing(qtbot, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    timer = clicker("cancel_button")
    try:
        code = app.main(["session", "run", "--store", str(store), "--device", "sim=P01", "--protocol",
                         str(tiny(tmp_path)), "--speed", "50"])  # fmt: skip
    finally:
        timer.stop()
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "cancelled at the ready screen: nothing was recorded"
    with Store(store) as s:
        assert s.sessions() == []
