"""The lab console: one window for research assistants who do not use a terminal.

Pages: Participants, Protocols, Straps, Start and Sessions. Nothing is only possible here: every action calls the
function the command line calls (`participants add`, `protocols list/preview`, `devices scan`, `session run`,
`sessions list/exclude/restore`, `report`, `analyze`, `export`). Start opens the experimenter monitor and the
participant displays exactly as `session run` does (`SessionWindows`), inside the console's own Qt loop.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6 import QtCore, QtWidgets

from biofeedback.display.app import SessionWindows
from biofeedback.display.console_common import (
    SIMULATED,
    Background,
    ConsoleState,
    MessageLine,
    heading,
    hint,
    one_line,
)
from biofeedback.display.console_participants import ParticipantsPage
from biofeedback.display.console_protocols import ProtocolsPage
from biofeedback.display.console_sessions import SessionsPage
from biofeedback.display.console_straps import READY_TIMEOUT_S, StrapsPage
from recordings.store import Store

PAGES = ("Participants", "Protocols", "Straps", "Start", "Sessions")
SPEEDS = ((1.0, "real time"), (10.0, "×10"), (60.0, "×60"), (100.0, "×100"))
"""Speeds offered for simulated straps (a session with a real strap always runs in real time)."""

STYLE = """
QMainWindow, QWidget#page { background: #f6f7f9; }
QWidget { font-size: 14px; color: #24292f; }
QListWidget#nav { background: #eaeef2; border: none; padding-top: 8px; font-size: 15px; }
QListWidget#nav::item { padding: 10px 16px; }
QListWidget#nav::item:selected { background: #d0d7de; color: #1f2328; }
QPushButton { background: #ffffff; border: 1px solid #c9d1d9; border-radius: 4px; padding: 5px 12px; }
QPushButton:hover { background: #f0f3f6; }
QPushButton:disabled { color: #8c959f; }
QPushButton#start { font-size: 16px; padding: 10px 28px; background: #dff0ea; border-color: #9cc9b8; }
QLineEdit, QComboBox, QSpinBox { background: #ffffff; border: 1px solid #c9d1d9; border-radius: 4px; padding: 3px; }
QTableWidget, QListWidget { background: #ffffff; border: 1px solid #d0d7de; alternate-background-color: #f6f8fa; }
"""


class StartPage(QtWidgets.QWidget):
    """What will run, for whom, and the Start button (`session run` with windows)."""

    recorded = QtCore.Signal(list)
    """Emitted with the new session ids once a session has ended and its windows are closed."""

    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        self.windows: SessionWindows | None = None
        self._store: Store | None = None
        self._task: Background | None = None
        self.alerts: list[str] = []
        root = QtWidgets.QVBoxLayout(self)
        root.addWidget(heading("Start a session"))
        self.summary = QtWidgets.QLabel()
        self.summary.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("font-size: 15px; line-height: 140%;")
        root.addWidget(self.summary)

        form = QtWidgets.QFormLayout()
        form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        self.week = QtWidgets.QSpinBox()
        self.week.setRange(0, 104)
        self.week.setSpecialValueText("each participant's next week")
        self.speed_box = QtWidgets.QComboBox()
        for speed, label in SPEEDS:
            self.speed_box.addItem(label, speed)
        self.ecg = QtWidgets.QCheckBox("also record ECG (Polar H10, or simulated)")
        self.when_ready = QtWidgets.QCheckBox("start the protocol only once every strap is ready")
        form.addRow("Study week", self.week)
        form.addRow("Speed (simulated straps only)", self.speed_box)
        form.addRow("", self.ecg)
        form.addRow("", self.when_ready)
        root.addLayout(form)

        row = QtWidgets.QHBoxLayout()
        self.start_button = QtWidgets.QPushButton("Start")
        self.start_button.setObjectName("start")
        row.addWidget(self.start_button)
        row.addStretch(1)
        root.addLayout(row)
        root.addWidget(hint("The monitor and a display for each participant open. End the session from the monitor "
                            "(End session, or close the monitor); the sessions then appear under Sessions."))
        self.message = MessageLine()
        root.addWidget(self.message)
        root.addStretch(1)

        self.start_button.clicked.connect(self.start)
        state.listeners.append(self.refresh)
        self.refresh()

    def speed(self) -> float:
        return float(self.speed_box.currentData())

    def running(self) -> bool:
        return self.windows is not None or self._task is not None

    def refresh(self) -> None:
        proto = self.state.protocol_name or "none chosen (Protocols page)"
        straps = "; ".join(f"{a.participant_id} wears the {(a.label or a.device).lower()}"
                           for a in self.state.assignments) or "none assigned (Straps page)"  # fmt: skip
        self.summary.setText(f"Protocol: {proto}\nStraps: {straps}\nStore: {self.state.store_path}")
        simulated = bool(self.state.assignments) and all(a.device == SIMULATED for a in self.state.assignments)
        self.speed_box.setEnabled(simulated or not self.state.assignments)
        self.start_button.setEnabled(not self.running())

    def start(self) -> None:
        """`session run --device D=P ... --protocol NAME [--week N] [--speed S] [--ecg] [--start-when-ready]`."""
        if self.running():
            return
        if self.message.attempt(self._plan) is None:
            self._close_store()
            return
        self.start_button.setEnabled(False)
        if self.when_ready.isChecked():
            from biofeedback.live.recorder import wait_for_straps

            plan = self._plan_made
            self.message.info("Waiting until every strap is ready (nothing is recorded yet) …")
            self._task = Background(self, lambda: wait_for_straps(plan.specs, READY_TIMEOUT_S, speed=plan.speed,
                                                                  seed=plan.seed, faults=plan.faults),
                                    lambda _states: self._launch(), self._not_ready)  # fmt: skip
        else:
            self._launch()

    def _plan(self) -> bool:
        from biofeedback.live.recorder import parse_device_specs, plan_session
        from protocols.library import get_protocol

        if not self.state.protocol_name:
            raise LookupError("choose a protocol first (Protocols page)")
        if not self.state.assignments:
            raise LookupError("assign a strap to each participant first (Straps page)")
        specs = parse_device_specs([a.spec for a in self.state.assignments], None)
        protocol = get_protocol(self.state.protocol_name, lab_dir=self.state.lab_dir)
        speed = self.speed() if all(s.simulated for s in specs) else 1.0
        self._store = Store(self.state.store_path)  # open while recording, closed once the session has ended
        self._plan_made = plan_session(self._store, protocol, specs, week=self.week.value() or None, speed=speed,
                                       ecg=self.ecg.isChecked())  # fmt: skip
        return True

    def _not_ready(self, exc: BaseException) -> None:
        self._task = None
        self._close_store()
        self.message.fail(f"{one_line(exc)}. Nothing was recorded.")
        self.refresh()

    def _launch(self) -> None:
        self._task = None
        self.alerts = []
        session = self.message.attempt(lambda: self._plan_made.build(self._store, on_alert=self.alerts.append))
        if session is None:
            self._close_store()
            self.refresh()
            return
        self.windows = SessionWindows(session)
        self.windows.finished.connect(self._finished)
        self.windows.start()
        who = ", ".join(s.binding.participant_id for s in session.straps)
        self.message.info(f"Recording {session.protocol.name} for {who}. End it from the monitor.")
        self.refresh()

    def _finished(self) -> None:
        shown, self.windows = self.windows, None
        if shown is None:
            return
        ids = self.message.attempt(shown.close)
        problems = [*shown.session.problems(), *self.alerts] if ids is not None else []
        self._close_store()
        self.refresh()
        if ids is None:
            return
        self.state.changed()
        where = f"sessions {', '.join(map(str, ids))} in {self.state.store_path}"
        if shown.session.failure or problems:
            self.message.fail(f"Recording incomplete: {'; '.join(problems) or shown.session.failure} ({where})")
        else:
            self.message.info(f"Recording saved: {where}.")
        self.recorded.emit(list(ids))

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def shutdown(self) -> None:
        """The console is closing: end a running session (recorded as stopped) and close its windows."""
        if self.windows is not None:
            self.windows.end("console closed")
            self._finished()


class ConsoleWindow(QtWidgets.QMainWindow):
    def __init__(self, store_path: Path | str) -> None:
        super().__init__()
        self.state = ConsoleState(Path(store_path))
        self.setWindowTitle(f"CMT biofeedback · lab console · {self.state.store_path}")
        self.resize(1200, 780)
        self.setStyleSheet(STYLE)
        body = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.nav = QtWidgets.QListWidget()
        self.nav.setObjectName("nav")
        self.nav.setFixedWidth(170)
        self.nav.addItems(list(PAGES))
        self.nav.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        layout.addWidget(self.nav)
        self.stack = QtWidgets.QStackedWidget()
        layout.addWidget(self.stack, 1)
        self.setCentralWidget(body)

        self.participants = ParticipantsPage(self.state)
        self.protocols = ProtocolsPage(self.state)
        self.start_page = StartPage(self.state)
        self.straps = StrapsPage(self.state, self.start_page.speed)
        self.sessions = SessionsPage(self.state)
        self.pages = dict(zip(PAGES, (self.participants, self.protocols, self.straps, self.start_page,
                                      self.sessions), strict=True))  # fmt: skip
        for page in self.pages.values():
            page.setObjectName("page")
            page.layout().setContentsMargins(20, 16, 20, 16)
            self.stack.addWidget(page)
        self.nav.currentRowChanged.connect(self.stack.setCurrentIndex)
        self.nav.setCurrentRow(0)
        self.start_page.recorded.connect(self._show_recorded)

    def show_page(self, name: str) -> None:
        self.nav.setCurrentRow(PAGES.index(name))

    def _show_recorded(self, ids: list[int]) -> None:
        self.show_page("Sessions")
        if ids:
            self.sessions.select_session(ids[0])

    def closeEvent(self, event) -> None:
        self.start_page.shutdown()
        super().closeEvent(event)


def run_console(store_path: Path | str) -> int:
    """Open the console on the store at `store_path` and run until it is closed."""
    os.umask(0o077)  # reports, exports and the store: private to the user
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    window = ConsoleWindow(store_path)
    window.show()
    app.exec()
    return 0
