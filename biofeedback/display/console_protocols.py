"""The console's Protocols page: the built-in protocols and the lab's own folder, each previewed as participants
will see it (`protocols list`, `protocols show`, `protocols preview`: the same preview painter)."""

from __future__ import annotations

import os

from PySide6 import QtCore, QtGui, QtWidgets

from biofeedback.display.console_common import ConsoleState, MessageLine, fill_table, heading, hint, read_only_table
from biofeedback.display.participant import render_participant_image
from biofeedback.display.preview import preview_views
from protocols.library import builtin_protocols, lab_protocols
from protocols.model import Protocol

THUMB = (320, 180)


class ProtocolsPage(QtWidgets.QWidget):
    def __init__(self, state: ConsoleState) -> None:
        super().__init__()
        self.state = state
        self.protocols: dict[str, Protocol] = {}
        root = QtWidgets.QVBoxLayout(self)
        root.addWidget(heading("Protocols"))
        self.folder_hint = hint("")
        root.addWidget(self.folder_hint)
        self.problems = MessageLine()
        root.addWidget(self.problems)

        split = QtWidgets.QHBoxLayout()
        left = QtWidgets.QVBoxLayout()
        self.list = QtWidgets.QListWidget()
        self.list.setMaximumWidth(260)
        left.addWidget(self.list, 1)
        self.choose_button = QtWidgets.QPushButton("Use for the next session")
        left.addWidget(self.choose_button)
        self.chosen_label = QtWidgets.QLabel()
        self.chosen_label.setWordWrap(True)
        left.addWidget(self.chosen_label)
        split.addLayout(left)

        right = QtWidgets.QVBoxLayout()
        self.description = QtWidgets.QLabel()
        self.description.setWordWrap(True)
        self.description.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        right.addWidget(self.description)
        self.phases = read_only_table()
        self.phases.setMaximumHeight(170)
        right.addWidget(self.phases)
        right.addWidget(QtWidgets.QLabel("What participants will see, halfway through each phase"))
        self.previews = QtWidgets.QListWidget()
        self.previews.setViewMode(QtWidgets.QListView.ViewMode.IconMode)
        self.previews.setIconSize(QtCore.QSize(*THUMB))
        self.previews.setResizeMode(QtWidgets.QListView.ResizeMode.Adjust)
        self.previews.setMovement(QtWidgets.QListView.Movement.Static)
        self.previews.setSpacing(6)
        self.previews.setWordWrap(True)
        right.addWidget(self.previews, 1)
        split.addLayout(right, 1)
        root.addLayout(split, 1)

        self.list.currentItemChanged.connect(lambda item, _old: self.show_protocol(item))
        self.choose_button.clicked.connect(self.choose)
        state.listeners.append(self._show_chosen)
        self.refresh()

    def refresh(self) -> None:
        lab = lab_protocols(self.state.lab_dir)
        where = "exists" if lab.folder.is_dir() else "does not exist yet"
        self.folder_hint.setText(f"The lab's own protocols: TOML files in {lab.folder} ({where}; "
                                 "set $CMT_PROTOCOL_DIR for another folder).")  # fmt: skip
        if lab.problems:  # each problem names its file; the folder is said above
            shown = [p.replace(f"{lab.folder}{os.sep}", "") for p in lab.problems]
            self.problems.fail("Not valid, left out (details: protocols validate FILE): " + " · ".join(shown))
        else:
            self.problems.setText("")
        self.protocols = {}
        self.list.clear()
        for origin, found in (("built-in", builtin_protocols()), ("lab", lab.protocols)):
            for name, proto in found.items():
                self.protocols[name] = proto
                item = QtWidgets.QListWidgetItem(name if origin == "built-in" else f"{name}  (lab)")
                item.setData(QtCore.Qt.ItemDataRole.UserRole, name)
                item.setToolTip(f"{origin}: {proto.total_duration_s / 60:g} min, {len(proto.phases)} phases")
                self.list.addItem(item)
        self.select(self.state.protocol_name or "cmt-soothing")
        self._show_chosen()

    def select(self, name: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(QtCore.Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentRow(i)
                return

    def current_name(self) -> str | None:
        item = self.list.currentItem()
        return None if item is None else item.data(QtCore.Qt.ItemDataRole.UserRole)

    def show_protocol(self, item: QtWidgets.QListWidgetItem | None) -> None:
        self.previews.clear()
        if item is None:
            return
        proto = self.protocols[item.data(QtCore.Qt.ItemDataRole.UserRole)]
        self.description.setText(f"{proto.name} (version {proto.version}), {proto.total_duration_s / 60:g} min: "
                                 f"{proto.description}")  # fmt: skip
        fill_table(self.phases, ["phase", "kind", "minutes", "feedback", "pacer /min", "prompt"],
                   [[ph.name, ph.kind.value, round(ph.duration_s / 60, 2), ph.feedback.value,
                     None if ph.pacer is None else ph.pacer.rate_bpm, ph.prompt] for ph in proto.phases])  # fmt: skip
        for preview in preview_views(proto):
            image = render_participant_image(preview.view, size=THUMB)
            icon = QtGui.QIcon(QtGui.QPixmap.fromImage(image))
            label = f"{preview.index + 1}. {preview.phase.name} ({preview.phase.duration_s / 60:g} min)"
            self.previews.addItem(QtWidgets.QListWidgetItem(icon, label))

    def choose(self) -> None:
        name = self.current_name()
        if name is None:
            return
        self.state.protocol_name = name
        self._show_chosen()
        self.state.changed()

    def _show_chosen(self) -> None:
        name = self.state.protocol_name
        self.chosen_label.setText(f"Next session: {name}" if name else "No protocol chosen yet.")
