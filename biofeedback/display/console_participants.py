"""The console's Participants page: add a pseudonymous code (the CLI's rule), see each participant's sessions,
diaries and other answer sets (`participants add`, `participants list`, `sessions list`, `answers list`)."""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from biofeedback.display.console_common import ConsoleState, MessageLine, fill_table, heading, hint, read_only_table
from biofeedback.study.participants import add_participant, participant_record
from recordings.answers import AnswerStore
from recordings.store import PARTICIPANT_RULE


class ParticipantsPage(QtWidgets.QWidget):
    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        root = QtWidgets.QVBoxLayout(self)
        root.addWidget(heading("Participants"))
        root.addWidget(hint(PARTICIPANT_RULE[0].upper() + PARTICIPANT_RULE[1:] + "."))
        row = QtWidgets.QHBoxLayout()
        self.code_edit = QtWidgets.QLineEdit()
        self.code_edit.setPlaceholderText("new participant code, e.g. P07")
        self.add_button = QtWidgets.QPushButton("Add participant")
        row.addWidget(self.code_edit, 1)
        row.addWidget(self.add_button)
        root.addLayout(row)
        self.message = MessageLine()
        root.addWidget(self.message)

        split = QtWidgets.QHBoxLayout()
        self.list = QtWidgets.QListWidget()
        self.list.setMaximumWidth(220)
        split.addWidget(self.list)
        detail = QtWidgets.QVBoxLayout()
        self.sessions = read_only_table()
        self.diaries = read_only_table()
        self.answers = read_only_table()
        for title, table in (("Sessions", self.sessions), ("Weekly diaries", self.diaries),
                             ("Questionnaires", self.answers)):  # fmt: skip
            detail.addWidget(QtWidgets.QLabel(title))
            detail.addWidget(table, 1)
        split.addLayout(detail, 1)
        root.addLayout(split, 1)

        self.add_button.clicked.connect(self.add)
        self.code_edit.returnPressed.connect(self.add)
        self.list.currentTextChanged.connect(self.show_participant)
        state.listeners.append(self.refresh)
        self.refresh()

    def add(self) -> None:
        def act() -> tuple[str, bool]:
            with self.state.store() as store:
                return add_participant(store, self.code_edit.text())

        added = self.message.attempt(act)
        if added is None:
            return
        pid, new = added
        self.message.info(f"Added participant {pid}." if new else f"{pid} is already in the store.")
        self.code_edit.clear()
        self.state.changed()
        matches = self.list.findItems(pid, QtCore.Qt.MatchFlag.MatchExactly)
        if matches:
            self.list.setCurrentItem(matches[0])

    def refresh(self) -> None:
        current = self.list.currentItem().text() if self.list.currentItem() else None
        codes = self.message.attempt(lambda: self._codes()) or []
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems(codes)
        self.list.blockSignals(False)
        if current in codes:
            self.list.setCurrentRow(codes.index(current))
        elif codes:
            self.list.setCurrentRow(0)
        else:
            self.show_participant("")

    def _codes(self) -> list[str]:
        with self.state.store() as store:
            return store.participants()

    def show_participant(self, pid: str) -> None:
        if not pid:
            for table in (self.sessions, self.diaries, self.answers):
                fill_table(table, [], [])
            return

        def act() -> None:
            with self.state.store() as store:
                rec = participant_record(store, pid)
                answers = AnswerStore(store)

                def scores(a) -> str:
                    return ", ".join(f"{k} {'–' if v.value is None else format(v.value, 'g')}"
                                     for k, v in answers.scores(a).items())  # fmt: skip

                fill_table(self.sessions, ["id", "protocol", "week", "source", "state", "started (UTC)", "excluded"],
                           [[s.id, s.protocol_name, s.week, s.source, s.state, s.started_utc[:16], s.excluded or ""]
                            for s in rec.sessions])  # fmt: skip
                fill_table(self.diaries, ["id", "time point", "session", "scores", "excluded"],
                           [[a.id, a.time_point, a.session_id, scores(a), rec.excluded_answers.get(a.id, "")]
                            for a in rec.diaries])  # fmt: skip
                fill_table(self.answers, ["id", "instrument", "time point", "session", "scores", "excluded"],
                           [[a.id, a.instrument, a.time_point, a.session_id, scores(a),
                             rec.excluded_answers.get(a.id, "")] for a in rec.answers])  # fmt: skip

        self.message.attempt(act)

