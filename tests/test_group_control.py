"""Group control from the experimenter's monitor and the participants' displays (offscreen Qt, one Xvfb test):
shortcuts whatever has focus, per-participant markers and pauses, stale data, readable buttons, replay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pyqtgraph.Qt import QtCore, QtTest, QtWidgets

from biofeedback.display_monitor import MonitorWindow
from biofeedback.view_model import MonitorView, StrapView

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

    def monitor_view(self) -> MonitorView:
        return MonitorView(t=self.t, protocol_name="group test", phases=PHASES, current_phase_index=1,
                           phase_time_left_s=50.0, paused=self.paused, straps=self.straps)

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
from biofeedback.display_monitor import MonitorWindow
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
