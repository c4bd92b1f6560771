"""Small Qt helpers shared by the displays."""

from __future__ import annotations

from collections.abc import Callable

from PySide6 import QtCore


def start_frame_timer(parent: QtCore.QObject, fps: float, slot: Callable[[], None]) -> QtCore.QTimer:
    """A precise timer calling `slot` at `fps` (the interval is rounded down: never slower than asked)."""
    timer = QtCore.QTimer(parent)
    timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
    timer.setInterval(max(1, int(1000 / fps)))
    timer.timeout.connect(slot)
    timer.start()
    return timer
