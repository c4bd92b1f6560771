"""The console's Straps page: scan for straps (`devices scan`), bind straps or simulated straps to participants
(`--device DEVICE=PARTICIPANT`) and check that every strap is ready (`--start-when-ready`'s check)."""

from __future__ import annotations

import asyncio
import threading

from PySide6 import QtCore, QtWidgets

from biofeedback.display.console_common import (
    SIMULATED,
    Assignment,
    Background,
    ConsoleState,
    MessageLine,
    fill_table,
    heading,
    hint,
    one_line,
    read_only_table,
)

SCAN_S = 5.0
READY_TIMEOUT_S = 120.0
"""Session seconds a readiness check waits at most (the CLI's --ready-timeout default)."""


def _scan(timeout_s: float) -> list:
    from devices.ble import scan  # bleak only when scanning

    return asyncio.run(scan(timeout_s=timeout_s))


class StrapsPage(QtWidgets.QWidget):
    def __init__(self, state: ConsoleState, speed: callable) -> None:  # type: ignore[valid-type]
        super().__init__()
        self.state = state
        self.speed = speed
        """The simulation speed chosen on the Start page (a readiness check of simulated straps runs at it)."""
        self.found: list = []
        self._task: Background | None = None
        self._ready_states: list = []
        self._ready_lock = threading.Lock()
        root = QtWidgets.QVBoxLayout(self)
        root.addWidget(heading("Straps"))
        root.addWidget(hint("Wear the strap with moistened electrodes (straps sleep when dry); do not pair it in the "
                            "system's Bluetooth settings. A simulated strap needs no hardware."))  # fmt: skip

        scan_row = QtWidgets.QHBoxLayout()
        self.scan_button = QtWidgets.QPushButton(f"Scan for straps ({SCAN_S:g} s)")
        scan_row.addWidget(self.scan_button)
        scan_row.addStretch(1)
        root.addLayout(scan_row)
        self.scan_message = MessageLine()
        root.addWidget(self.scan_message)
        self.found_table = read_only_table()
        self.found_table.setMaximumHeight(160)
        fill_table(self.found_table, ["name", "address", "signal dBm", "Polar ECG"], [])
        root.addWidget(self.found_table)

        root.addWidget(QtWidgets.QLabel("Who wears which strap"))
        bind = QtWidgets.QHBoxLayout()
        self.strap_box = QtWidgets.QComboBox()
        self.participant_box = QtWidgets.QComboBox()
        self.assign_button = QtWidgets.QPushButton("Assign")
        self.remove_button = QtWidgets.QPushButton("Remove")
        bind.addWidget(QtWidgets.QLabel("Strap"))
        bind.addWidget(self.strap_box, 2)
        bind.addWidget(QtWidgets.QLabel("Participant"))
        bind.addWidget(self.participant_box, 1)
        bind.addWidget(self.assign_button)
        bind.addWidget(self.remove_button)
        root.addLayout(bind)
        self.assigned = read_only_table()
        root.addWidget(self.assigned, 1)
        ready_row = QtWidgets.QHBoxLayout()
        self.ready_button = QtWidgets.QPushButton("Check readiness")
        self.ready_button.setToolTip("Connects every strap (recording nothing) until each has skin contact and "
                                     "beats for 10 s")  # fmt: skip
        ready_row.addWidget(self.ready_button)
        ready_row.addStretch(1)
        root.addLayout(ready_row)
        self.message = MessageLine()
        root.addWidget(self.message)

        self.scan_button.clicked.connect(self.scan)
        self.assign_button.clicked.connect(self.assign)
        self.remove_button.clicked.connect(self.remove)
        self.ready_button.clicked.connect(self.check_ready)
        self._ready_timer = QtCore.QTimer(self)
        self._ready_timer.setInterval(200)
        self._ready_timer.timeout.connect(self._show_ready_states)
        state.listeners.append(self.refresh)
        self.refresh()

    # -- scanning ---------------------------------------------------------------------------------------------
    def scan(self) -> None:
        if self._task is not None:
            return
        self.scan_button.setEnabled(False)
        self.scan_message.info(f"Scanning for {SCAN_S:g} s …")
        self._task = Background(self, lambda: _scan(SCAN_S), self._scanned, self._scan_failed)

    def _scanned(self, straps: list) -> None:
        self._task = None
        self.scan_button.setEnabled(True)
        self.found = straps
        fill_table(self.found_table, ["name", "address", "signal dBm", "Polar ECG"],
                   [[s.name, s.address, s.rssi, "yes" if s.has_pmd else "no"] for s in straps])  # fmt: skip
        if straps:
            self.scan_message.info(f"{len(straps)} strap(s) found.")
        else:
            self.scan_message.info(f"No heart-rate straps found in {SCAN_S:g} s. Is the strap worn (it sleeps when "
                                   "dry)?")  # fmt: skip
        self._fill_straps()

    def _scan_failed(self, exc: BaseException) -> None:
        self._task = None
        self.scan_button.setEnabled(True)
        self.scan_message.fail(one_line(exc))

    # -- binding ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        def codes() -> list[str]:
            with self.state.store() as store:
                return store.participants()

        current = self.participant_box.currentText()
        self.participant_box.clear()
        self.participant_box.addItems(self.message.attempt(codes) or [])
        if current:
            self.participant_box.setCurrentText(current)
        self._fill_straps()
        self._show_assignments()

    def _fill_straps(self) -> None:
        current = self.strap_box.currentData()
        self.strap_box.clear()
        self.strap_box.addItem("Simulated strap", SIMULATED)
        for s in self.found:
            self.strap_box.addItem(f"{s.name or 'strap'} · {s.address}", s.address)
        index = self.strap_box.findData(current)
        self.strap_box.setCurrentIndex(max(0, index))

    def assign(self) -> None:
        from biofeedback.live.recorder import parse_device_specs

        device, pid = self.strap_box.currentData(), self.participant_box.currentText()
        if not pid:
            self.message.fail("Add a participant first (Participants page).")
            return
        kept = [a for a in self.state.assignments if a.participant_id != pid
                and (a.device == SIMULATED or a.device != device)]  # fmt: skip
        wanted = [*kept, Assignment(device, pid, self.strap_box.currentText())]
        # the CLI's own check of --device values: one strap per participant, names present
        if self.message.attempt(lambda: parse_device_specs([a.spec for a in wanted], None)) is None:
            return
        self.state.assignments[:] = wanted
        self.message.info(f"{pid} wears the {self.strap_box.currentText().lower()}.")
        self._show_assignments()
        self.state.changed()

    def remove(self) -> None:
        row = self.assigned.currentRow()
        if 0 <= row < len(self.state.assignments):
            gone = self.state.assignments.pop(row)
            self.message.info(f"{gone.participant_id} has no strap now.")
            self._show_assignments()
            self.state.changed()

    def _show_assignments(self) -> None:
        fill_table(self.assigned, ["participant", "strap", "readiness"],
                   [[a.participant_id, a.label or a.device, a.readiness] for a in self.state.assignments])

    # -- readiness --------------------------------------------------------------------------------------------
    def check_ready(self) -> None:
        from biofeedback.live.recorder import parse_device_specs, wait_for_straps

        if self._task is not None or not self.state.assignments:
            if not self.state.assignments:
                self.message.fail("Assign a strap to a participant first.")
            return
        specs = self.message.attempt(lambda: parse_device_specs([a.spec for a in self.state.assignments], None))
        if specs is None:
            return
        speed = self.speed() if all(s.simulated for s in specs) else 1.0

        def update(states, now: float) -> None:  # in the readiness thread: only data crosses over
            with self._ready_lock:
                self._ready_states = [(st.participant_id, st.status(now)) for st in states]

        self.ready_button.setEnabled(False)
        self.message.info("Checking every strap (nothing is recorded) …")
        self._ready_timer.start()
        self._task = Background(self, lambda: wait_for_straps(specs, READY_TIMEOUT_S, speed=speed, on_update=update),
                                self._ready_done, self._ready_failed)  # fmt: skip

    def _show_ready_states(self) -> None:
        with self._ready_lock:
            states = dict(self._ready_states)
        for a in self.state.assignments:
            a.readiness = states.get(a.participant_id, a.readiness)
        self._show_assignments()

    def _ready_done(self, _states) -> None:
        self._finish_ready()
        for a in self.state.assignments:
            a.readiness = "ready"
        self._show_assignments()
        self.message.info("Every strap is ready.")

    def _ready_failed(self, exc: BaseException) -> None:
        self._finish_ready()
        from biofeedback.live.readiness import NotReadyError

        for st in getattr(exc, "straps", []) if isinstance(exc, NotReadyError) else []:
            for a in self.state.assignments:
                if a.participant_id == st.participant_id:
                    a.readiness = st.status(READY_TIMEOUT_S)
        self._show_assignments()
        self.message.fail(one_line(exc))

    def _finish_ready(self) -> None:
        self._task = None
        self._ready_timer.stop()
        self._show_ready_states()
        self.ready_button.setEnabled(True)
