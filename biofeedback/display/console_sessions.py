"""The console's Sessions page: recorded sessions filtered by participant, protocol, week, state and source
(`sessions list`), with the session's report (`report`), its analysis (`analyze`), an export (`export`) and
exclusion from study analyses with a reason (`sessions exclude` / `restore`)."""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtCore, QtGui, QtWidgets

from biofeedback.display.console_common import ConsoleState, MessageLine, fill_table, heading, read_only_table
from biofeedback.study.session_export import SESSION_FORMATS, export_session
from biofeedback.study.session_filter import select_sessions
from recordings.answers import default_editor
from recordings.store import SOURCE_CHOICES

ANY = "any"
COLUMNS = ["id", "participant", "protocol", "week", "source", "state", "started (UTC)", "beats", "excluded"]


def reports_dir(store_path: Path) -> Path:
    """Where the console writes reports: `reports/` beside the store."""
    return Path(store_path).parent / "reports"


class SessionsPage(QtWidgets.QWidget):
    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        self.shown: list = []
        self.open_url = QtGui.QDesktopServices.openUrl
        """How a report is opened (the system's browser); replaced in tests."""
        root = QtWidgets.QVBoxLayout(self)
        root.addWidget(heading("Sessions"))

        filters = QtWidgets.QHBoxLayout()
        self.filters: dict[str, QtWidgets.QComboBox] = {}
        for name in ("participant", "protocol", "week", "state", "source"):
            box = QtWidgets.QComboBox()
            box.setMinimumWidth(110)
            box.addItem(ANY)
            filters.addWidget(QtWidgets.QLabel(name.capitalize()))
            filters.addWidget(box)
            self.filters[name] = box
            box.currentIndexChanged.connect(self.show_sessions)
        self.filters["source"].addItems(list(SOURCE_CHOICES))
        filters.addStretch(1)
        root.addLayout(filters)

        self.table = read_only_table()
        root.addWidget(self.table, 2)

        actions = QtWidgets.QHBoxLayout()
        self.report_button = QtWidgets.QPushButton("Open report")
        self.analyze_button = QtWidgets.QPushButton("Analyze")
        self.format_box = QtWidgets.QComboBox()
        self.format_box.addItems(list(SESSION_FORMATS))
        self.export_dir = QtWidgets.QLineEdit(str(Path(state.store_path).parent / "exports"))
        self.browse_button = QtWidgets.QPushButton("Folder …")
        self.export_button = QtWidgets.QPushButton("Export")
        self.include_text = QtWidgets.QCheckBox("with free text (sensitive)")
        for w in (self.report_button, self.analyze_button):
            actions.addWidget(w)
        actions.addSpacing(16)
        actions.addWidget(self.format_box)
        actions.addWidget(self.export_dir, 1)
        actions.addWidget(self.browse_button)
        actions.addWidget(self.export_button)
        actions.addWidget(self.include_text)
        root.addLayout(actions)
        keep = QtWidgets.QHBoxLayout()
        self.reason_edit = QtWidgets.QLineEdit()
        self.reason_edit.setPlaceholderText("why it is left out of study analyses, e.g. strap fell off")
        self.exclude_button = QtWidgets.QPushButton("Exclude")
        self.restore_button = QtWidgets.QPushButton("Include again")
        keep.addWidget(QtWidgets.QLabel("Reason"))
        keep.addWidget(self.reason_edit, 1)
        keep.addWidget(self.exclude_button)
        keep.addWidget(self.restore_button)
        root.addLayout(keep)
        self.message = MessageLine()
        root.addWidget(self.message)
        self.analysis = read_only_table()
        root.addWidget(self.analysis, 1)
        self.notes = QtWidgets.QPlainTextEdit()  # quality notes per phase, as `analyze` prints them
        self.notes.setReadOnly(True)
        self.notes.setMaximumHeight(110)
        root.addWidget(self.notes)

        self.report_button.clicked.connect(self.open_report)
        self.analyze_button.clicked.connect(self.analyze)
        self.export_button.clicked.connect(self.export)
        self.browse_button.clicked.connect(self._browse)
        self.exclude_button.clicked.connect(self.exclude)
        self.restore_button.clicked.connect(self.restore)
        state.listeners.append(self.refresh)
        self.refresh()

    # -- listing ----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        def every() -> list:
            if not self.state.store_path.exists():
                return []
            with self.state.store(readonly=True) as store:
                return store.sessions()

        sessions = self.message.attempt(every) or []
        values = {
            "participant": sorted({s.participant_id for s in sessions}),
            "protocol": sorted({s.protocol_name for s in sessions}),
            "week": [str(w) for w in sorted({s.week for s in sessions if s.week is not None})],
            "state": sorted({s.state for s in sessions}),
        }
        for name, items in values.items():
            box = self.filters[name]
            current = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems([ANY, *items])
            box.setCurrentText(current if current in items else ANY)
            box.blockSignals(False)
        self.show_sessions()

    def filter_values(self) -> dict:
        chosen = {name: (None if box.currentText() == ANY else box.currentText()) for name, box in self.filters.items()}
        if chosen["week"] is not None:
            chosen["week"] = int(chosen["week"])
        return chosen

    def show_sessions(self) -> None:
        def act() -> list[list]:
            if not self.state.store_path.exists():
                return []
            with self.state.store(readonly=True) as store:
                self.shown = select_sessions(store, **self.filter_values())
                return [[s.id, s.participant_id, s.protocol_name, s.week, s.source,
                         s.state if not s.end_reason else f"{s.state}: {s.end_reason}", s.started_utc[:19],
                         store.counts(s.id)["beats"], s.excluded or ""] for s in self.shown]  # fmt: skip

        selected = self.selected_id()
        rows = self.message.attempt(act)
        fill_table(self.table, COLUMNS, rows or [])
        self.select_session(selected)

    def select_session(self, session_id: int | None) -> None:
        for row, s in enumerate(self.shown):
            if s.id == session_id:
                self.table.selectRow(row)
                return

    def selected_id(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows or rows[0].row() >= len(self.shown):
            return None
        return self.shown[rows[0].row()].id

    def _need_selection(self) -> int | None:
        sid = self.selected_id()
        if sid is None:
            self.message.fail("Select a session first.")
        return sid

    # -- actions (each the function the CLI command calls) ----------------------------------------------------
    def open_report(self) -> Path | None:
        from biofeedback.analysis.report import write_report

        sid = self._need_selection()
        if sid is None:
            return None
        out = reports_dir(self.state.store_path) / f"session-{sid}.html"

        def act() -> Path:
            out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.state.store(readonly=True) as store:
                return write_report(store, sid, out, overwrite=True)

        with _busy():
            path = self.message.attempt(act)
        if path is None:
            return None
        self.message.info(f"Wrote the report of session {sid}: {path}")
        self.open_url(QtCore.QUrl.fromLocalFile(str(path)))
        return path

    def analyze(self) -> None:
        from biofeedback.analysis.analyze import analyze_session

        sid = self._need_selection()
        if sid is None:
            return

        def act():
            with self.state.store(readonly=True) as store:
                return analyze_session(store, sid)

        with _busy():
            result = self.message.attempt(act)
        if result is None:
            return
        fill_table(self.analysis, ["phase", "kind", "start s", "end s", "beats", "corr %", "HR", "RMSSD", "SDNN",
                                   "LF ms²", "HF ms²", "breaths/min"],
                   [[p.name, p.kind, p.start_s, p.end_s, p.n_beats, p.corrected_pct, p.mean_hr_bpm, p.rmssd_ms,
                     p.sdnn_ms, p.lf_ms2, p.hf_ms2, p.breathing_rate_bpm] for p in result.phases],
                   formats={"LF ms²": ".0f", "HF ms²": ".0f"})  # fmt: skip
        self.notes.setPlainText("\n".join(f"{p.name}: {note}" for p in result.phases for note in p.notes))
        self.message.info(f"Session {sid} analysed ({len(result.phases)} phases, correction {result.correction}).")

    def export(self) -> list[Path] | None:
        sid = self._need_selection()
        if sid is None:
            return None
        fmt, out = self.format_box.currentText(), Path(self.export_dir.text().strip())

        def act() -> list[Path]:
            out.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.state.store(readonly=True) as store:
                return export_session(store, sid, fmt, out, include_text=self.include_text.isChecked())

        with _busy():
            written = self.message.attempt(act)
        if written is not None:
            self.message.info(f"Wrote {len(written)} file(s) into {out}: " + ", ".join(p.name for p in written))
        return written

    def _browse(self) -> None:
        folder = QtWidgets.QFileDialog.getExistingDirectory(self, "Export into", self.export_dir.text())
        if folder:
            self.export_dir.setText(folder)

    def exclude(self) -> None:
        sid = self._need_selection()
        if sid is None:
            return

        def act() -> bool:
            with self.state.store() as store:
                info = store.session(sid)
                store.exclude("session", sid, self.reason_edit.text(), by=default_editor(),
                              participant_id=info.participant_id)  # fmt: skip
            return True

        if self.message.attempt(act) is None:
            return
        self.reason_edit.clear()
        self.state.changed()
        self.message.info(f"Session {sid} is left out of study analyses and exports (kept; 'Include again' undoes "
                          "it).")  # fmt: skip

    def restore(self) -> None:
        sid = self._need_selection()
        if sid is None:
            return

        def act() -> bool:
            with self.state.store() as store:
                info = store.session(sid)
                return store.restore("session", sid, by=default_editor(), participant_id=info.participant_id)

        done = self.message.attempt(act)
        if done is None:
            return
        self.state.changed()
        self.message.info(f"Session {sid} is included again." if done else f"Session {sid} was not excluded.")


class _busy:
    """A wait cursor while something slow (analysis, a report) runs in the window's thread."""

    def __enter__(self) -> None:
        QtWidgets.QApplication.setOverrideCursor(QtCore.Qt.CursorShape.WaitCursor)

    def __exit__(self, *exc: object) -> None:
        QtWidgets.QApplication.restoreOverrideCursor()
