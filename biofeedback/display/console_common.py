"""What the lab console's pages share: the store they act on, the choices made so far, one-line messages, tables
and work in a background thread (a scan, a readiness check) that never blocks the window."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6 import QtCore, QtWidgets

from protocols.library import lab_protocol_dir
from recordings.store import Store

SIMULATED = "sim"
"""The device name of a simulated strap (as in `--device sim=P01`)."""


@dataclass
class Assignment:
    """A strap bound to a participant (`--device DEVICE=PARTICIPANT`); `readiness` as last checked."""

    device: str
    participant_id: str
    label: str = ""
    readiness: str = "not checked"

    @property
    def spec(self) -> str:
        return f"{self.device}={self.participant_id}"


@dataclass
class ConsoleState:
    """The store the console works on and what the experimenter has chosen so far."""

    store_path: Path
    protocol_name: str | None = None
    assignments: list[Assignment] = field(default_factory=list)
    listeners: list[Callable[[], None]] = field(default_factory=list)

    @property
    def lab_dir(self) -> Path:
        return lab_protocol_dir(self.store_path)

    @contextlib.contextmanager
    def store(self, *, readonly: bool = False) -> Iterator[Store]:
        """The store, opened for one action and closed after it (as each CLI command does); reading actions open
        it read-only, as `analyze`, `report` and `export` do."""
        with Store(self.store_path, readonly=readonly and self.store_path.exists()) as store:
            yield store

    def changed(self) -> None:
        """Something another page shows has changed (a participant, a session, a choice)."""
        for listener in list(self.listeners):
            listener()


def one_line(exc: BaseException) -> str:
    """An error as the CLI prints it: one line; unexpected kinds say their type."""
    text = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    expected = (RuntimeError, ValueError, OSError, LookupError)
    return text if isinstance(exc, expected) else f"unexpected {type(exc).__name__}: {text}"


class MessageLine(QtWidgets.QLabel):
    """One line under a page: what was done, or what went wrong and why."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = False

    def info(self, text: str) -> None:
        self.error = False
        self.setStyleSheet("color: #2f5d3a;")
        self.setText(text)

    def fail(self, text: str) -> None:
        self.error = True
        self.setStyleSheet("color: #8a4b08; font-weight: 600;")
        self.setText(text)

    def attempt(self, action: Callable[[], Any]) -> Any:
        """Run `action`; a failure is shown as one line (never a traceback, never a crash). None on failure."""
        try:
            return action()
        except Exception as exc:
            self.fail(one_line(exc))
            return None


def fill_table(table: QtWidgets.QTableWidget, columns: Sequence[str], rows: Sequence[Sequence[Any]],
               formats: dict[str, str] | None = None) -> None:  # fmt: skip
    """Replace a read-only table's contents; numbers right-aligned, floats as `formats[column]` (default .1f)."""
    table.clear()
    table.setColumnCount(len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is None:
                text = "–"
            elif isinstance(value, float):
                text = format(value, (formats or {}).get(columns[c], ".1f"))
            else:
                text = str(value)
            item = QtWidgets.QTableWidgetItem(text)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)
    table.resizeColumnsToContents()


def read_only_table() -> QtWidgets.QTableWidget:
    table = QtWidgets.QTableWidget()
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    table.setAlternatingRowColors(True)
    return table


def heading(text: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    label.setStyleSheet("font-size: 17px; font-weight: 600; margin-bottom: 4px;")
    return label


def hint(text: str) -> QtWidgets.QLabel:
    label = QtWidgets.QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #57606a;")
    return label


class Background(QtCore.QObject):
    """`fn()` in a thread of its own; `done(result)` or `failed(exc)` then run in the Qt thread (polled, so the
    window stays responsive and nothing Qt is touched from the thread)."""

    def __init__(self, parent: QtCore.QObject, fn: Callable[[], Any], done: Callable[[Any], None],
                 failed: Callable[[BaseException], None]) -> None:  # fmt: skip
        super().__init__(parent)
        self._done, self._failed = done, failed
        self._result: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="console-task", daemon=True)
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._poll)
        self._thread.start()
        self._timer.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result = fn()
        except BaseException as exc:  # handed to the Qt thread
            self._error = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def _poll(self) -> None:
        if self._thread.is_alive():
            return
        self._timer.stop()
        if self._error is not None:
            self._failed(self._error)
        else:
            self._done(self._result)
        self.deleteLater()
