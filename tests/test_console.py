"""The lab console (offscreen Qt, driven by clicks): a participant added, a lab protocol picked, two simulated straps
assigned and checked, a session started and ended from its monitor, its report opened, analysed, exported and
excluded; every action also a CLI command. Plus an Xvfb screenshot of each page (saved to /tmp/consoleshots)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyqtgraph.Qt import QtCore, QtTest, QtWidgets

import app
from recordings.store import Store

SHOTS = Path("/tmp/consoleshots")
LAB_PROTOCOL = '''name = "console-short"
description = "A short lab protocol: a minute of rest, then paced breathing."
version = "1"

[[phase]]
name = "settle"
kind = "rest"
duration = "60s"
feedback = "hidden"
prompt = "Sit comfortably and let your breathing settle."

[[phase]]
name = "breathe"
kind = "breathing"
duration = "2min"
prompt = "Breathe gently with the circle."

[phase.pacer]
rate_bpm = 6.0
'''
LEFT = QtCore.Qt.MouseButton.LeftButton


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A store path and the lab's own protocol folder (with one valid and one broken protocol)."""
    folder = tmp_path / "lab-protocols"
    folder.mkdir()
    (folder / "console-short.toml").write_text(LAB_PROTOCOL)
    (folder / "broken.toml").write_text('name = "broken"\n[[phase]]\nname = "x"\n')
    monkeypatch.setenv("CMT_PROTOCOL_DIR", str(folder))
    monkeypatch.delenv("CMT_PARTICIPANT_PATTERN", raising=False)
    return tmp_path / "store.sqlite"


def click(widget: QtWidgets.QWidget) -> None:
    assert widget.isVisible() and widget.isEnabled(), widget
    QtTest.QTest.mouseClick(widget, LEFT)


def click_row(view: QtWidgets.QAbstractItemView, index: QtCore.QModelIndex) -> None:
    view.scrollTo(index)
    QtTest.QTest.mouseClick(view.viewport(), LEFT, pos=view.visualRect(index).center())


def click_list_item(widget: QtWidgets.QListWidget, text: str) -> None:
    (item,) = [widget.item(i) for i in range(widget.count()) if widget.item(i).text() == text]
    click_row(widget, widget.indexFromItem(item))


def click_table_row(table: QtWidgets.QTableWidget, row: int) -> None:
    click_row(table, table.model().index(row, 0))


def no_bluetooth(monkeypatch) -> None:
    """What bleak meets on a machine without BlueZ: no system-bus socket."""
    from bleak import BleakScanner

    async def discover(*_a, **_k):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(BleakScanner, "discover", discover)


@pytest.mark.slow
def test_full_flow_by_clicks(qtbot, lab, tmp_path, monkeypatch, capsys):
    from biofeedback.display.console import ConsoleWindow

    no_bluetooth(monkeypatch)
    win = ConsoleWindow(lab)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    opened: list[QtCore.QUrl] = []
    win.sessions.open_url = opened.append

    # Participants: a name is refused with the rule, codes are added
    click_list_item(win.nav, "Participants")
    page = win.participants
    for code in ("Anna", "P21", "P22"):
        page.code_edit.selectAll()  # a refused code stays in the box to be corrected: typing replaces it
        QtTest.QTest.keyClicks(page.code_edit, code)
        click(page.add_button)
        if code == "Anna":
            assert page.message.error and "contains a digit" in page.message.text()
            assert page.code_edit.text() == "Anna"
    assert not page.message.error and page.message.text() == "Added participant P22."
    with Store(lab) as store:
        assert store.participants() == ["P21", "P22"]

    # Protocols: the lab's own protocol beside the built-ins, previewed per phase; the broken file is named
    click_list_item(win.nav, "Protocols")
    protos = win.protocols
    assert "broken.toml" in protos.problems.text() and protos.problems.error
    click_list_item(protos.list, "console-short  (lab)")
    assert protos.previews.count() == 2 and protos.previews.item(1).text() == "2. breathe (2 min)"
    assert not protos.previews.item(0).icon().isNull()
    click(protos.choose_button)
    assert win.state.protocol_name == "console-short"

    # Straps: no Bluetooth says why (and nothing breaks); two simulated straps assigned and checked
    click_list_item(win.nav, "Straps")
    straps = win.straps
    click(straps.scan_button)
    qtbot.waitUntil(lambda: straps.scan_button.isEnabled(), timeout=10000)
    assert straps.scan_message.error
    assert "cannot scan for straps: no Bluetooth service to talk to" in straps.scan_message.text()
    win.start_page.speed_box.setCurrentIndex(win.start_page.speed_box.findData(100.0))
    for pid in ("P21", "P22"):
        straps.strap_box.setCurrentIndex(straps.strap_box.findData("sim"))
        straps.participant_box.setCurrentText(pid)
        click(straps.assign_button)
    assert [a.spec for a in win.state.assignments] == ["sim=P21", "sim=P22"]
    click(straps.ready_button)
    qtbot.waitUntil(lambda: straps.ready_button.isEnabled(), timeout=20000)
    assert straps.message.text() == "Every strap is ready."
    assert [straps.assigned.item(r, 2).text() for r in range(2)] == ["ready", "ready"]

    # Start: the monitor and both participant displays open; the session is ended from the monitor
    click_list_item(win.nav, "Start")
    start = win.start_page
    assert "console-short" in start.summary.text() and "P22 wears the simulated strap" in start.summary.text()
    click(start.when_ready)  # --start-when-ready: the protocol starts once both straps are ready again
    assert start.when_ready.isChecked()
    click(start.start_button)
    qtbot.waitUntil(lambda: start.windows is not None, timeout=20000)
    shown = start.windows
    titles = sorted(w.windowTitle() for w in shown.windows)
    assert titles == ["Session monitor", "Session · P21", "Session · P22"]
    assert not start.start_button.isEnabled()
    session = shown.session
    qtbot.waitUntil(lambda: session.clock.now() >= 100.0, timeout=20000)  # in the paced phase
    shown.monitor.confirm_end = lambda: True
    click(shown.monitor.end_button)
    qtbot.waitUntil(lambda: start.windows is None, timeout=20000)
    assert start.message.text().startswith("Recording saved: sessions 1, 2")
    assert win.stack.currentWidget() is win.sessions
    with Store(lab) as store:
        infos = store.sessions()
        assert [(s.participant_id, s.protocol_name, s.source, s.state, s.week) for s in infos] == [
            ("P21", "console-short", "simulated", "stopped", 1), ("P22", "console-short", "simulated", "stopped", 1)]
        assert all(store.counts(s.id)["beats"] > 100 for s in infos)

    # Sessions: filter, open the report, analyse, export, exclude with a reason
    sessions = win.sessions
    sessions.filters["participant"].setCurrentText("P22")
    assert [s.id for s in sessions.shown] == [2]
    click_table_row(sessions.table, 0)
    assert sessions.selected_id() == 2
    click(sessions.report_button)
    report = lab.parent / "reports" / "session-2.html"
    assert report.is_file() and (report.stat().st_mode & 0o777) == 0o600
    assert opened == [QtCore.QUrl.fromLocalFile(str(report))]
    assert "P22" in report.read_text() and "breathe" in report.read_text()
    click(sessions.analyze_button)
    assert [sessions.analysis.item(r, 0).text() for r in range(sessions.analysis.rowCount())] == ["settle", "breathe"]
    assert float(sessions.analysis.item(0, 6).text()) > 40  # mean HR of the rest phase
    sessions.export_dir.setText(str(tmp_path / "out"))
    sessions.format_box.setCurrentText("csv")
    click(sessions.export_button)
    assert (tmp_path / "out" / "beats.csv").is_file(), sessions.message.text()
    click(sessions.exclude_button)  # no reason: refused, says why
    assert sessions.message.error and "say why" in sessions.message.text()
    QtTest.QTest.keyClicks(sessions.reason_edit, "strap fell off")
    click(sessions.exclude_button)
    assert sessions.table.item(0, 8).text() == "strap fell off"

    # the participant's page shows the sessions; the CLI sees everything the console did
    click_list_item(win.nav, "Participants")
    click_list_item(page.list, "P22")
    assert page.sessions.rowCount() == 1 and page.sessions.item(0, 6).text() == "strap fell off"
    capsys.readouterr()
    assert app.main(["sessions", "list", "--store", str(lab), "--protocol", "console-short", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["id"], r["excluded"]) for r in listed] == [(1, None), (2, "strap fell off")]
    assert app.main(["sessions", "list", "--store", str(lab), "--protocol", "cmt-soothing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    with Store(lab) as store:
        (row,) = [r for r in store.audit_rows() if r.action == "exclude"]
        assert (row.object_id, row.reason) == (2, "strap fell off")


def test_start_refuses_without_choices_and_says_what_is_missing(qtbot, lab):
    from biofeedback.display.console import ConsoleWindow

    win = ConsoleWindow(lab)
    qtbot.addWidget(win)
    win.show()
    click_list_item(win.nav, "Start")
    click(win.start_page.start_button)
    assert win.start_page.message.text() == "choose a protocol first (Protocols page)"
    assert win.start_page.windows is None and not (lab.exists() and Store(lab).sessions())


def test_no_command_opens_the_console_and_help_still_lists_commands(monkeypatch, tmp_path, capsys):
    import biofeedback.display.console as console

    opened: list[Path] = []
    monkeypatch.setattr(console, "run_console", lambda path: opened.append(Path(path)) or 0)
    monkeypatch.setenv("CMT_STORE", str(tmp_path / "env.sqlite"))
    assert app.main([]) == 0
    assert app.main(["--store", str(tmp_path / "other.sqlite")]) == 0
    assert opened == [tmp_path / "env.sqlite", tmp_path / "other.sqlite"]
    with pytest.raises(SystemExit) as exc:
        app.main(["--help"])
    assert exc.value.code == 0 and "console" in capsys.readouterr().out


def test_devices_scan_without_bluetooth_is_one_clear_line(monkeypatch, capsys):
    no_bluetooth(monkeypatch)
    assert app.main(["devices", "scan", "--timeout", "0.1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: cannot scan for straps: no Bluetooth service to talk to")


def test_lab_protocols_are_listed_found_by_name_and_participants_added_from_the_cli(lab, capsys):
    assert app.main(["protocols", "list", "--store", str(lab), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["console-short"]["from"] == os.environ["CMT_PROTOCOL_DIR"]
    assert rows["cmt-soothing"]["from"] == "built-in"
    assert "broken.toml" in err and "broken" not in rows
    assert app.main(["protocols", "show", "console-short", "--store", str(lab)]) == 0
    assert "2. breathe [breathing] 2 min" in capsys.readouterr().out
    assert app.main(["participants", "add", "Anna", "--store", str(lab)]) == 2
    assert app.main(["participants", "add", "P31", "--store", str(lab)]) == 0
    assert app.main(["participants", "list", "--store", str(lab), "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "P31,0,–,0,0"


# -- screenshots under Xvfb -----------------------------------------------------------------------------------

SHOT_APP = """
import sys
from pathlib import Path
import app
store, shots = sys.argv[1], Path(sys.argv[2])
for code in ("P21", "P22"):
    app.main(["participants", "add", code, "--store", store])
app.main(["session", "run", "--device", "sim=P21", "--device", "sim=P22", "--protocol", "console-short",
          "--speed", "100", "--headless", "--store", store])
from PySide6 import QtCore, QtWidgets
from biofeedback.display.console import PAGES, ConsoleWindow
qt = QtWidgets.QApplication([])
win = ConsoleWindow(store)
win.resize(1200, 780)
win.show()
win.state.protocol_name = "console-short"
from biofeedback.display.console_common import Assignment
win.state.assignments[:] = [Assignment("sim", "P21", "simulated strap", "ready"),
                            Assignment("sim", "P22", "simulated strap", "ready")]
win.state.changed()
win.protocols.select("console-short")
win.sessions.table.selectRow(1)
win.sessions.analyze()
win.straps.scan()  # a real scan: on a machine without Bluetooth the page says why
deadline = QtCore.QDeadlineTimer(10000)
while not win.straps.scan_button.isEnabled() and not deadline.hasExpired():
    qt.processEvents()
done = []
def shoot(i=0):
    if i == len(PAGES):
        qt.quit()
        return
    win.show_page(PAGES[i])
    def grab():
        qt.processEvents()
        shot = win.screen().grabWindow(0)  # the X server's own framebuffer, as a person would see it
        shot.save(str(shots / f"{i + 1}-{PAGES[i].lower()}.png"))
        done.append(PAGES[i])
        shoot(i + 1)
    QtCore.QTimer.singleShot(400, grab)
QtCore.QTimer.singleShot(800, shoot)
QtCore.QTimer.singleShot(30000, qt.quit)
qt.exec()
print(",".join(done))
"""


@pytest.mark.slow
def test_screenshot_of_each_page_under_xvfb(lab, tmp_path):
    if shutil.which("Xvfb") is None:
        pytest.skip("needs Xvfb (apt xvfb) for real X screenshots")
    SHOTS.mkdir(exist_ok=True)
    for old in SHOTS.glob("[0-9]-*.png"):
        old.unlink()
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1200x780x24", "-nolisten", "tcp"],
                            pass_fds=(write_fd,), stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            display = ":" + f.readline().strip()
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "PYTHONPATH": str(root)}
        script = tmp_path / "shots.py"
        script.write_text(SHOT_APP)
        run = subprocess.run([sys.executable, str(script), str(lab), str(SHOTS)], env=env, cwd=root,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().splitlines()[-1] == "Participants,Protocols,Straps,Start,Sessions"
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)
    from PySide6 import QtGui

    for i, name in enumerate(("participants", "protocols", "straps", "start", "sessions"), start=1):
        image = QtGui.QImage(str(SHOTS / f"{i}-{name}.png"))
        assert (image.width(), image.height()) == (1200, 780)
        assert len({image.pixel(x, y) for x in range(0, 1200, 40) for y in range(0, 780, 40)}) > 3  # not blank


def test_closing_the_monitor_ends_the_session_and_the_console_stays(qtbot, lab):
    from biofeedback.display.console import ConsoleWindow

    with Store(lab) as store:
        store.ensure_participant("P41")
        store.flush()
    win = ConsoleWindow(lab)
    qtbot.addWidget(win)
    win.show()
    win.state.protocol_name = "console-short"
    click_list_item(win.nav, "Straps")
    win.straps.participant_box.setCurrentText("P41")
    click(win.straps.assign_button)
    win.start_page.speed_box.setCurrentIndex(win.start_page.speed_box.findData(100.0))
    click_list_item(win.nav, "Start")
    click(win.start_page.start_button)
    qtbot.waitUntil(lambda: win.start_page.windows is not None, timeout=10000)
    session = win.start_page.windows.session
    qtbot.waitUntil(lambda: session.clock.now() >= 20.0, timeout=10000)
    win.start_page.windows.monitor.close()  # the window's own close button
    qtbot.waitUntil(lambda: win.start_page.windows is None, timeout=10000)
    assert win.isVisible() and win.start_page.start_button.isEnabled()
    with Store(lab) as store:
        (info,) = store.sessions()
        assert (info.participant_id, info.state) == ("P41", "stopped")
        (end,) = [m for m in store.markers(info.id) if m.kind == "session_end"]
        assert end.detail["ended"] == "stopped" and end.detail["reason"] == "monitor closed"
