"""Group control from the experimenter's monitor and the participants' displays (offscreen Qt, one Xvfb test):
shortcuts whatever has focus, per-participant markers and pauses, stale data, readable buttons, replay."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pyqtgraph.Qt import QtCore, QtTest, QtWidgets

import app
from biofeedback.display.app import SessionThread
from biofeedback.display.monitor import STALE_COLOUR, MonitorWindow, rr_connect
from biofeedback.display.participant import ParticipantWindow, render_participant_image
from biofeedback.live import session as session_mod
from biofeedback.live.readiness import NotReadyError, wait_until_ready
from biofeedback.live.recorder import build_session, make_links, parse_device_specs
from biofeedback.live.replay import build_replay
from biofeedback.live.session import StrapBinding
from biofeedback.live.view_model import MonitorView, ParticipantAlert, ParticipantView, StrapView
from devices.simulator import SimFaults
from devices.virtual_time import LoopClock, run_virtual
from protocols.model import Pacer, Phase, Protocol
from recordings.store import Store

PHASES = [("settle", "rest", 0.0, 60.0), ("breathe", "breathing", 60.0, 150.0)]


def strap(pid: str, device: str, **kw) -> StrapView:
    t = np.arange(1.0, 100.0, 1.0)
    base = dict(device_id=device, participant_id=pid, link_state="connected", contact="ok", hr_bpm=60.0,
                rmssd_ms=40.0, coherence=0.3, rr_t=t, rr_ms=np.full(len(t), 1000.0),
                rr_corrected=np.zeros(len(t), dtype=bool))
    base.update(kw)
    return StrapView(**base)


class FakeGroup:
    """A ViewSource and SessionControls for the monitor, recording every control call."""

    def __init__(self, n: int = 3, t: float = 100.0) -> None:
        self.t = t
        self.paused = False
        self.straps = [strap(f"P0{i + 1}", f"sim-{i + 1}") for i in range(n)]
        self.calls: list[tuple] = []
        self.alerts: list[ParticipantAlert] = []
        self.replay = False

    def monitor_view(self) -> MonitorView:
        return MonitorView(t=self.t, protocol_name="group test", phases=PHASES, current_phase_index=1,
                           phase_time_left_s=50.0, paused=self.paused, straps=self.straps,
                           participant_alerts=self.alerts, replay=self.replay)

    def participant_view(self, pid):  # pragma: no cover - the monitor never asks
        raise NotImplementedError

    def add_marker(self, label: str, note: str, t: float | None = None, participant_id: str | None = None) -> None:
        self.calls.append(("add_marker", label, note, participant_id))

    def pause(self) -> None:
        self.calls.append(("pause",))
        self.paused = True

    def resume(self) -> None:
        self.calls.append(("resume",))
        self.paused = False

    def skip_phase(self) -> None:
        self.calls.append(("skip_phase",))

    def end_session(self) -> None:
        self.calls.append(("end_session",))


@pytest.fixture
def monitor(qtbot):
    session = FakeGroup()
    win = MonitorWindow(session, session)
    win.confirm_end = lambda: True
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is win)
    return win, session


def press(win: QtWidgets.QWidget, key: QtCore.Qt.Key) -> None:
    """A key as the window system delivers it: to the top-level window, routed by Qt to whatever has focus."""
    QtTest.QTest.keyClick(win.windowHandle(), key)
    QtWidgets.QApplication.processEvents()


# --- 1. shortcuts whatever has focus ---------------------------------------------------------------------------


def test_single_key_shortcuts_act_whatever_widget_has_focus(monitor):
    win, session = monitor
    focusable = [w for w in win.findChildren(QtWidgets.QWidget)
                 if w.focusPolicy() != QtCore.Qt.FocusPolicy.NoFocus and w.isVisible() and w is not win.marker_edit]
    assert focusable, "nothing focusable to try"
    for widget in [*focusable, win.marker_label, win.pause_button]:
        widget.setFocus()
        session.calls.clear()
        press(win, QtCore.Qt.Key.Key_Space)
        press(win, QtCore.Qt.Key.Key_Space)
        press(win, QtCore.Qt.Key.Key_N)
        assert session.calls == [("pause",), ("resume",), ("skip_phase",)], type(widget).__name__
        press(win, QtCore.Qt.Key.Key_M)
        assert win.marker_edit.hasFocus(), type(widget).__name__
        press(win, QtCore.Qt.Key.Key_Escape)
        assert not win.marker_edit.hasFocus()


def test_the_marker_label_is_picked_not_typed_and_the_note_takes_the_keys_as_text(monitor):
    win, session = monitor
    assert not win.marker_label.isEditable()
    assert win.marker_label.focusPolicy() == QtCore.Qt.FocusPolicy.NoFocus
    press(win, QtCore.Qt.Key.Key_M)
    for ch in "moved n":
        QtTest.QTest.keyClick(win.windowHandle(), ch)  # typed into the note: no marker, pause or skip
    assert win.marker_edit.text() == "moved n"
    assert session.calls == []
    press(win, QtCore.Qt.Key.Key_Return)
    assert session.calls == [("add_marker", "note", "moved n", None)]
    press(win, QtCore.Qt.Key.Key_Space)  # focus left the note: Space is a shortcut again
    assert session.calls[-1] == ("pause",)


def test_after_a_cancelled_end_dialog_the_keys_still_act(monitor, qtbot):
    win, session = monitor
    win.confirm_end = win._ask_end  # the real question box, cancelled as a person would
    seen = []

    def cancel() -> None:
        box = QtWidgets.QApplication.activeModalWidget()
        seen.append(box)
        box.reject()

    QtCore.QTimer.singleShot(300, cancel)
    QtTest.QTest.keyClick(win.windowHandle(), QtCore.Qt.Key.Key_Q, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert seen and seen[0] is not None
    assert ("end_session",) not in session.calls
    assert QtWidgets.QApplication.activeWindow() is win  # the monitor has the keyboard again
    press(win, QtCore.Qt.Key.Key_N)
    press(win, QtCore.Qt.Key.Key_Space)
    assert session.calls == [("skip_phase",), ("pause",)]


XVFB_APP = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pyqtgraph.Qt import QtCore, QtWidgets
from test_group_control import FakeGroup
from biofeedback.display.monitor import STALE_COLOUR, MonitorWindow, rr_connect
app = QtWidgets.QApplication([])
session = FakeGroup()
win = MonitorWindow(session, session)
win.resize(1200, 760)
win.show()
def ready():
    win.marker_label.setFocus()  # where the focus was found in the issue: the marker label box
    print(int(win.winId()), flush=True)
def check():
    if len(session.calls) >= 3:
        print(json.dumps(session.calls), flush=True)
        app.quit()
QtCore.QTimer.singleShot(500, ready)
poll = QtCore.QTimer(); poll.timeout.connect(check); poll.start(50)
QtCore.QTimer.singleShot(12000, app.quit)
app.exec()
"""


def test_real_key_events_under_xvfb_act(tmp_path):
    """M, a typed note, Space and N as xdotool sends them through a real X server (no window manager)."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt xvfb xdotool) for real X key events")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            display = ":" + f.readline().strip()
        root = Path(__file__).resolve().parents[1]  # this checkout's code, whatever is installed
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(root)}
        script = tmp_path / "keys_app.py"
        script.write_text(XVFB_APP)
        app = subprocess.Popen([sys.executable, str(script), str(Path(__file__).parent)], env=env, cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wid = app.stdout.readline().strip()
            assert wid.isdigit(), app.stderr.read()
            subprocess.run(["xdotool", "windowfocus", "--sync", wid], env=env, check=True, timeout=10)
            time.sleep(0.3)
            for keys in (["m"], ["m", "o", "v", "e", "d", "space", "n"], ["Return"], ["space"], ["n"]):
                subprocess.run(["xdotool", "key", "--delay", "40", *keys], env=env, check=True, timeout=10)
                time.sleep(0.2)
            out, err = app.communicate(timeout=25)
        finally:
            if app.poll() is None:
                app.kill()
        import json

        calls = json.loads(out.strip().splitlines()[-1]) if out.strip() else err
        assert calls == [["add_marker", "note", "moved n", None], ["pause"], ["skip_phase"]]
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


# --- 2. per-participant control and honest records (a real group session on simulated straps) -------------------

GROUP = ["P02", "P03", "P04"]
SHORT = Protocol(
    "group-control-test",
    "two short phases",
    (
        Phase("settle", "rest", 60.0, prompt="Sit comfortably and let your breathing settle.", feedback="hidden"),
        Phase("breathe", "breathing", 90.0, prompt="Breathe gently with the circle.", pacer=Pacer(6.0, 0.4)),
    ),
)


def run_scripted(session, script):
    """Run `session` in virtual time, calling each `(t, fn)` of `script` at session time t (in the session's loop,
    as the displays' calls end up); returns what the calls returned, by t."""
    seen = {}

    async def main():
        task = asyncio.create_task(session.run())
        await asyncio.sleep(0)
        for t, fn in script:
            await session.clock.sleep(max(0.0, t - session.clock.now()))
            seen[t] = fn()
        return await task

    return run_virtual(main()), seen


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """Three participants; markers for one and for all, P03's own pause, a group pause, P02's stop."""
    path = tmp_path_factory.mktemp("control") / "store.sqlite"
    store = Store(path)
    specs = parse_device_specs([f"sim={p}" for p in GROUP], None)
    session = build_session(store, SHORT, specs, seed=4, clock=LoopClock())
    s = session

    def views():
        return {p: s.participant_view(p) for p in GROUP}, s.monitor_view()

    script = [
        (20.0, lambda: s.add_marker("distress", "P03 distress", participant_id="P03")),
        (25.0, lambda: s.add_marker("technical", "room too warm")),
        (30.0, lambda: s.participant_pause("P03")),
        (31.0, views),
        (32.0, lambda: s.participant_resume("P04")),  # P04 cannot continue P03's pause
        (33.0, views),
        (40.0, s.pause),  # the experimenter's group pause
        (41.0, lambda: s.participant_resume("P04")),  # nor the experimenter's
        (42.0, views),
        (50.0, s.resume),
        (51.0, views),
        (55.0, lambda: s.participant_resume("P03")),
        (56.0, views),
        (70.0, lambda: s.participant_stop("P02")),
        (71.0, views),
    ]
    ids, seen = run_scripted(session, script)
    yield store, dict(zip(GROUP, ids, strict=True)), seen, path
    store.close()


def test_a_marker_and_note_for_one_participant_land_only_in_their_session(controlled):
    store, ids, _seen, _path = controlled
    for pid, sid in ids.items():
        manual = [(m.label, m.detail["target"]) for m in store.markers(sid) if m.kind == "manual"]
        notes = [text for _t, text in store.notes(sid)]
        if pid == "P03":
            assert manual == [("distress", "P03"), ("technical", "group")]
            assert notes == ["P03 distress", "room too warm"]
        else:
            assert manual == [("technical", "group")]
            assert notes == ["room too warm"]


def test_the_note_leaves_the_store_only_with_include_text(controlled, tmp_path):
    _store, _ids, _seen, path = controlled
    base = ["--store", str(path), "--format", "bids", "--include-simulated"]
    assert app.main(["export", "--all", *base, "--out", str(tmp_path / "plain")]) == 0
    assert app.main(["export", "--all", *base, "--out", str(tmp_path / "text"), "--include-text"]) == 0

    def events(folder: str, pid: str) -> str:
        return "".join(p.read_text() for p in (tmp_path / folder / f"sub-{pid}").rglob("*events.tsv"))

    assert all("P03 distress" not in events("plain", p) and "room too warm" not in events("plain", p) for p in GROUP)
    assert "P03 distress" in events("text", "P03") and "room too warm" in events("text", "P03")
    assert "room too warm" in events("text", "P04") and "P03 distress" not in events("text", "P04")
    assert "\tparticipant\t" in events("plain", "P03") and "\tparticipant\t" not in events("plain", "P04")


def test_a_participants_pause_is_theirs_alone_and_stored_with_who_paused(controlled):
    store, ids, seen, _path = controlled
    parts, mon = seen[31.0]
    assert parts["P03"].paused and parts["P03"].self_paused and parts["P03"].pacer_size is None
    assert "experimenter has been let know" in parts["P03"].message
    assert not parts["P04"].paused and not mon.paused  # P03's pause does not pause P04, nor the protocol
    assert [(a.participant_id, a.state) for a in mon.participant_alerts] == [("P03", "paused")]
    parts, _ = seen[33.0]
    assert parts["P03"].self_paused  # P04's Continue did not continue P03
    own = {pid: [(m.t, m.label, m.detail) for m in store.markers(sid) if m.kind == "participant"]
           for pid, sid in ids.items()}
    assert [(label, d["by"]) for _t, label, d in own["P03"]] == [("paused", "P03"), ("continued", "P03")]
    assert own["P03"][0][0] == pytest.approx(30.0, abs=0.01)
    assert own["P04"] == []  # P04's Continue with nothing to continue recorded nothing
    assert [(label, d["by"]) for _t, label, d in own["P02"]] == [("stopped", "P02")]


def test_a_group_pause_is_the_experimenters_and_only_they_resume_it(controlled):
    store, ids, seen, _path = controlled
    parts, mon = seen[42.0]
    assert mon.paused  # P04's Continue at 41 s did not resume the group
    assert parts["P04"].paused and not parts["P04"].self_paused  # P04's button still says Pause
    assert parts["P04"].message == session_mod.GROUP_PAUSED_MESSAGE
    parts, mon = seen[51.0]
    assert not mon.paused and not parts["P04"].paused
    assert parts["P03"].paused  # the experimenter's resume leaves P03's own pause alone
    parts, mon = seen[56.0]
    assert not parts["P03"].paused and mon.participant_alerts == []
    for sid in ids.values():
        group = [(m.kind, m.detail.get("by")) for m in store.markers(sid) if m.kind in ("pause", "resume")]
        assert group == [("pause", "experimenter"), ("resume", "experimenter")]


def test_a_stop_alerts_the_experimenter_by_name_and_tells_the_participant_kindly(controlled):
    _store, _ids, seen, _path = controlled
    parts, mon = seen[71.0]
    assert [(a.participant_id, a.state) for a in mon.participant_alerts] == [("P02", "stopped")]
    assert parts["P02"].paused and "experimenter has been let know" in parts["P02"].message
    assert not parts["P03"].paused and not parts["P04"].paused
    log = [e.describe() for e in mon.events]
    assert "P02 stopped (their own display)" in log
    assert "P03 paused (their own display)" in log
    assert "marker: distress, for P03" in log and "marker: technical, for the whole group" in log
    assert "group paused by the experimenter" in log


def test_the_monitor_shows_a_named_alert_and_targets_a_clicked_panel(qtbot):
    session = FakeGroup()
    session.alerts = [ParticipantAlert("P02", "stopped", 70.0)]
    win = MonitorWindow(session, session)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    assert win.alert_banner.isVisible() and "P02 stopped" in win.alert_banner.text()
    assert "stopped by P02" in win.panels["sim-2"].title.text()
    qtbot.mouseClick(win.alert_banner, QtCore.Qt.MouseButton.LeftButton)
    win.refresh()
    assert not win.alert_banner.isVisible()  # seen to; a new alert shows again
    session.alerts = [*session.alerts, ParticipantAlert("P03", "paused", 80.0)]
    win.refresh()
    assert win.alert_banner.isVisible() and "P03 paused" in win.alert_banner.text()

    qtbot.mouseClick(win.panels["sim-2"], QtCore.Qt.MouseButton.LeftButton)
    assert win.target == "P02" and "P02" in win.target_label.text()
    win.activateWindow()
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is win)
    press(win, QtCore.Qt.Key.Key_M)
    for ch in "sobbing":
        QtTest.QTest.keyClick(win.windowHandle(), ch)
    press(win, QtCore.Qt.Key.Key_Return)
    assert session.calls[-1] == ("add_marker", "note", "sobbing", "P02")
    press(win, QtCore.Qt.Key.Key_3)  # the third panel by key
    assert win.target == "P03"
    press(win, QtCore.Qt.Key.Key_0)
    assert win.target is None
    press(win, QtCore.Qt.Key.Key_M)
    press(win, QtCore.Qt.Key.Key_Return)
    assert session.calls[-1] == ("add_marker", "note", "", None)


def test_a_participant_window_pauses_only_its_participant(qtbot, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = build_session(store, SHORT, parse_device_specs([f"sim={p}" for p in GROUP], None), seed=1)
    windows = {}
    for pid in ("P03", "P04"):
        windows[pid] = ParticipantWindow(session, pid)
        qtbot.addWidget(windows[pid])
        windows[pid].show()
    worker = SessionThread(session)
    worker.start()
    try:
        qtbot.waitUntil(lambda: session.runner.state.phase is not None, timeout=10000)
        qtbot.mouseClick(windows["P03"].pause_button, QtCore.Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: session.participant_view("P03").self_paused, timeout=5000)
        for w in windows.values():
            w.refresh()  # as their frame timers would (not waited for: the session thread runs on)
        assert windows["P03"].pause_button.text() == "Continue"
        assert windows["P04"].pause_button.text() == "Pause" and not session.participant_view("P04").paused
        assert not session.runner.state.paused
    finally:
        session.end_session()
        worker.join(timeout=20)
    store.close()


# --- 3. stale data is never shown as live -------------------------------------------------------------------


class Frozen:
    """A ViewSource showing one stored monitor view (a moment of a real session)."""

    def __init__(self, view: MonitorView) -> None:
        self.view = view

    def monitor_view(self) -> MonitorView:
        return self.view


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """P02 loses skin contact at 30 s for 10 s and its link at 70 s for 12 s; P03 is fine throughout."""
    store = Store(tmp_path_factory.mktemp("stale") / "store.sqlite")
    faults = {"P02": SimFaults(contact_loss=[(30.0, 10.0)], disconnects=[(70.0, 12.0)])}
    specs = parse_device_specs(["sim=P02", "sim=P03"], None)
    session = build_session(store, SHORT, specs, seed=3, clock=LoopClock(), faults=faults)
    times = (25.0, 37.0, 60.0, 79.0, 100.0)
    _ids, seen = run_scripted(session, [(t, session.monitor_view) for t in times])
    yield seen
    store.close()


def shown(qtbot, view: MonitorView) -> MonitorWindow:
    win = MonitorWindow(Frozen(view), FakeGroup())
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    return win


def test_a_strap_without_beats_greys_its_numbers_and_says_why(qtbot, faulty):
    live = shown(qtbot, faulty[25.0])
    assert all(p.stale == "" for p in live.panels.values())
    assert "no skin contact" not in live.panels["sim-1"].contact.text()

    no_contact = shown(qtbot, faulty[37.0])
    p02, p03 = no_contact.panels["sim-1"], no_contact.panels["sim-2"]
    assert p02.stale.startswith("no beat for ") and p02.stale.endswith("no skin contact")
    age = int(p02.stale.split()[3])
    assert 5 <= age <= 9  # contact went at 30 s; the last beat a little before
    assert STALE_COLOUR in p02.metrics.text() and STALE_COLOUR not in p03.metrics.text()
    assert p03.stale == ""

    disconnected = shown(qtbot, faulty[79.0])
    p02 = disconnected.panels["sim-1"]
    assert "reconnecting" in p02.stale or "link lost" in p02.stale, p02.stale
    assert "skin contact" not in p02.contact.text()  # the last contact state is not shown as current
    assert "contact ?" in p02.contact.text()

    back = shown(qtbot, faulty[100.0])
    assert all(p.stale == "" for p in back.panels.values())


def test_contact_loss_is_shaded_and_the_tachogram_broken_there(qtbot, faulty):
    view = faulty[60.0]
    s = next(s for s in view.straps if s.participant_id == "P02")
    assert len(s.contact_gaps) == 1
    g0, g1 = s.contact_gaps[0]
    assert 29.0 <= g0 <= 31.5 and 39.0 <= g1 <= 41.5
    win = shown(qtbot, view)
    panel = win.panels["sim-1"]
    regions = [r.getRegion() for r in panel.contact_regions if r.isVisible()]
    assert regions == [pytest.approx((g0 - view.t, g1 - view.t))]
    assert not any(r.isVisible() for r in win.panels["sim-2"].contact_regions)
    x, _y = panel.rr_curve.getData()
    connect = rr_connect(s.rr_t, [*s.gaps, *s.contact_gaps])
    across = [i for i in range(len(s.rr_t) - 1) if s.rr_t[i] < g0 and s.rr_t[i + 1] > g0]
    assert across and not connect[across[0]]  # no line drawn across the contact gap
    assert len(x) == len(s.rr_t[s.rr_t >= view.t - 300])


# --- 4. readable buttons, replay, the event log -------------------------------------------------------------


class OneParticipant:
    """A participant's ViewSource and controls, recording the calls."""

    def __init__(self, replay: bool = False) -> None:
        self.self_paused = False
        self.replay = replay
        self.calls: list[tuple] = []

    def participant_view(self, pid):
        return ParticipantView(t=10.0, phase_name="breathe", phase_kind="breathing", prompt="Breathe gently.",
                               phase_time_left_s=50.0, pacer_size=0.5, pacer_label="breathe in",
                               paused=self.self_paused, self_paused=self.self_paused, replay=self.replay)

    def participant_pause(self, pid):
        self.calls.append(("participant_pause", pid))
        self.self_paused = True

    def participant_resume(self, pid):
        self.calls.append(("participant_resume", pid))
        self.self_paused = False

    def participant_stop(self, pid):
        self.calls.append(("participant_stop", pid))
        self.self_paused = True


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080), (3840, 2160), (800, 480), (480, 800), (320, 240),
                                  (240, 320)])
def test_participant_buttons_never_clip_their_words(qtbot, size):
    source = OneParticipant()
    win = ParticipantWindow(source, "P01")
    qtbot.addWidget(win)
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    for _ in range(2):  # Pause, then Continue (the longer word, on a button laid out for "Pause" at first)
        for b in (win.pause_button, win.stop_button):
            assert b.width() >= b.sizeHint().width(), (size, b.text(), b.width(), b.sizeHint().width())
            assert b.height() >= b.sizeHint().height()
            assert win.rect().contains(b.geometry()), (size, b.text(), b.geometry())
        assert not win.pause_button.geometry().intersects(win.stop_button.geometry())
        qtbot.mouseClick(win.pause_button, QtCore.Qt.MouseButton.LeftButton)
    assert [c[0] for c in source.calls] == ["participant_pause", "participant_resume"]


def test_before_the_fix_continue_would_have_clipped(qtbot):
    """The check above can fail: a button sized for "Pause" is too narrow for "Continue"."""
    b = QtWidgets.QPushButton("Pause")
    b.setStyleSheet("QPushButton { font-size: 30px; padding: 10px 30px; }")  # as the participant window styles it
    qtbot.addWidget(b)
    b.adjustSize()
    b.setText("Continue")
    assert b.width() < b.sizeHint().width()


def test_replay_is_marked_on_both_windows_and_the_displays_record_nothing(qtbot, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    (sid,) = run_virtual(build_session(store, SHORT, parse_device_specs(["sim"], "P01"), seed=5,
                                       clock=LoopClock()).run())
    before = [(m.kind, m.label) for m in store.markers(sid)], store.notes(sid)
    with Store(tmp_path / "replay.sqlite") as copy:
        replay = build_replay(store, sid, speed=50, record_into=copy)
        monitor = MonitorWindow(replay, replay)
        participant = ParticipantWindow(replay, "P01")
        for win in (monitor, participant):
            qtbot.addWidget(win)
            win.show()
            qtbot.waitExposed(win)
        worker = SessionThread(replay)
        worker.start()
        try:
            qtbot.waitUntil(lambda: replay.runner.state.phase is not None, timeout=10000)
            monitor.refresh()
            participant.refresh()
            assert monitor.replay_label.isVisible() and "REPLAY" in monitor.windowTitle()
            assert participant.view.replay and not participant.pause_button.isEnabled()
            monitor.activateWindow()
            qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is monitor)
            for key in (QtCore.Qt.Key.Key_M, QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Space,
                        QtCore.Qt.Key.Key_N):
                press(monitor, key)
            participant.toggle_pause()
            participant.stop()
            qtbot.wait(300)
            assert not replay.runner.state.paused and not replay.participant_view("P01").self_paused
        finally:
            worker.join(timeout=60)
        (rid,) = worker.result
        replayed = [(m.kind, m.label) for m in copy.markers(rid)]
        assert not [k for k in replayed if k[0] in ("manual", "participant", "pause", "skip")]
        assert copy.notes(rid) == []
    assert ([(m.kind, m.label) for m in store.markers(sid)], store.notes(sid)) == before  # the source untouched
    store.close()


def test_replay_frames_say_replay_and_live_ones_do_not(qapp):
    live = OneParticipant().participant_view("P01")
    replay = OneParticipant(replay=True).participant_view("P01")
    a = render_participant_image(live)
    b = render_participant_image(replay)
    corner = QtCore.QRect(0, 0, 400, 80)
    assert a.copy(corner) != b.copy(corner)  # the REPLAY word in the corner
    assert a.copy(QtCore.QRect(0, 200, 1280, 520)) == b.copy(QtCore.QRect(0, 200, 1280, 520))


def test_the_event_log_says_what_each_entry_is(qtbot, controlled):
    _store, _ids, seen, _path = controlled
    _parts, view = seen[71.0]
    win = shown(qtbot, view)
    entries = [win.marker_list.item(i).text() for i in range(win.marker_list.count())]
    text = "\n".join(entries)
    for words in ("session start: group-control-test", "phase start: settle", "phase end: settle",
                  "marker: distress, for P03",
                  "marker: technical, for the whole group", "P03 paused (their own display)",
                  "P03 continued (their own display)", "group paused by the experimenter",
                  "group resumed by the experimenter", "P02 stopped (their own display)"):
        assert words in text, words
    assert "01:10  P02 stopped (their own display)" in entries  # each with its time, newest first
    stamps = [e[:5] for e in entries]
    assert stamps == sorted(stamps, reverse=True)


# --- 5. readiness before the clock starts -------------------------------------------------------------------

SIX = [f"P0{i}" for i in range(1, 7)]


def six_links(faults: dict) -> list[StrapBinding]:
    clock = LoopClock()
    links = make_links(parse_device_specs([f"sim={p}" for p in SIX], None), clock, lambda: None, seed=7,
                       faults=faults)
    return [StrapBinding(link, pid) for link, pid in zip(links, SIX, strict=True)], clock


def test_six_straps_one_never_connecting_one_without_contact_time_out_with_reasons():
    faults = {"P05": SimFaults(disconnects=[(0.0, 10_000.0)]), "P06": SimFaults(contact_loss=[(5.0, 10_000.0)])}
    bindings, clock = six_links(faults)
    seen = []
    with pytest.raises(NotReadyError) as err:
        run_virtual(wait_until_ready(bindings, clock, 30.0, on_update=lambda st, now: seen.append(now)))
    states = {s.participant_id: s for s in err.value.straps}
    now = seen[-1]
    assert now == pytest.approx(30.0, abs=0.3)
    assert [p for p in SIX if states[p].ready(now)] == ["P01", "P02", "P03", "P04"]
    assert states["P05"].status(now).startswith("not connected")
    assert "simulated: connection supervision timeout" in states["P05"].status(now)
    assert "no skin contact" in states["P06"].status(now)
    message = str(err.value)
    assert "P05" in message and "P06" in message and "P01" not in message


def test_straps_are_ready_after_ten_seconds_of_beats_and_a_contact_loss_restarts_the_count():
    bindings, clock = six_links({"P02": SimFaults(contact_loss=[(3.0, 4.0)])})
    ready_at = []
    states = run_virtual(wait_until_ready(bindings, clock, 60.0, on_update=lambda st, now: ready_at.append(now)))
    assert all(s.link_state == "connected" for s in states)
    assert 17.0 <= ready_at[-1] <= 20.0  # P02: contact back at 7 s, then 10 s of beats
    p02 = next(s for s in states if s.participant_id == "P02")
    assert p02.beats_since >= 7.0


def test_headless_start_when_ready_with_no_bluetooth_ends_with_the_reason_and_records_nothing(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    code = app.main(["session", "run", "--store", str(store), "--device", "AA:BB:CC:DD:EE:FF=P02",
                     "--protocol", "cmt-soothing", "--headless", "--start-when-ready", "--ready-timeout", "2"])
    out = capsys.readouterr()
    assert code != 0
    error = " ".join(out.err.split())  # one message (the terminal may wrap it)
    assert error.startswith("error: not ready after 2 s: P02 (AA:BB:CC:DD:EE:FF) ")
    assert error.endswith("Nothing was recorded.") and error.count("error:") == 1
    assert "no Bluetooth service" in error  # the reason in words, the cause after it
    seen = [line for line in out.out.splitlines() if line.startswith("  P02")]  # what was shown while waiting
    assert 1 <= len(seen) <= 2 and "not connected" in seen[-1]
    assert "Traceback" not in out.err
    with Store(store) as s:
        assert s.sessions() == []


def test_headless_start_when_ready_starts_the_protocol_once_everyone_is_ready(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\n[[phase]]\nname = "rest"\nkind = "rest"\nduration = "20s"\n')
    assert app.main(["session", "run", "--store", str(store), "--device", "sim=P01", "--device", "sim=P02",
                     "--protocol", str(tiny), "--speed", "40", "--headless", "--start-when-ready",
                     "--ready-timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "Every strap is ready" in out
    with Store(store) as s:
        assert len(s.sessions()) == 2
