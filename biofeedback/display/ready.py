"""The experimenter's ready screen: before the protocol clock starts, every strap's state and why one is not ready.

One row per strap: link (connecting, connected, retrying), skin contact, beats arriving for N of 10 s, battery
(a warning below 20 %), and when it is not ready the reason in words (no adapter, Bluetooth off, permission, strap
not found, held by another app; see `biofeedback.live.readiness.CAUSES`). "Start" is enabled once every strap is
ready; "Start without P05, P06" names the straps that would be left out, so leaving one out is a knowing choice;
"Cancel" (or closing the window) ends the run. The straps' links run on their own meanwhile (`ReadinessWatch`):
nothing is stored, no session exists until Start.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from pyqtgraph.Qt import QtCore, QtWidgets

from biofeedback.display.monitor import BACKGROUND, FOREGROUND, LINK_COLOURS, MUTED, PANEL
from biofeedback.live.readiness import READY_BEATS_S, ReadinessWatch, StrapReadiness, cause
from biofeedback.live.session import StrapBinding
from devices.clock import Clock

OK_COLOUR = "#3fb950"
WARN_COLOUR = "#d29922"
BAD_COLOUR = "#f85149"
CONTACT_WORDS = {
    "detected": ("skin contact", OK_COLOUR),
    "supported_not_detected": ("no skin contact", WARN_COLOUR),
    "not_supported": ("contact n/a", MUTED),
    "unknown": ("contact ?", MUTED),
}
HEADERS = ("Participant", "Strap", "Link", "Skin contact", "Beats", "Battery", "Ready?")


@dataclass(frozen=True)
class ReadyChoice:
    """What the experimenter chose: the participants to record, and those left out with the reason shown then."""

    participants: list[str]
    left_out: dict[str, str]


def without_label(names: Sequence[str]) -> str:
    return "Start without " + ", ".join(names)


class ReadyWindow(QtWidgets.QWidget):
    """Shows `watch.snapshot()` at `fps`; `choice` is set (and `decided` emitted) on Start, Start without or Cancel.

    With `auto_start` it starts by itself once every strap is ready (`--start-when-ready`)."""

    decided = QtCore.Signal()

    def __init__(self, watch: ReadinessWatch, title: str = "", *, fps: float = 4.0, auto_start: bool = False,
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.watch = watch
        self.need_s = watch.need_s
        self.auto_start = auto_start
        self.choice: ReadyChoice | None = None
        self.done = False
        self.not_ready: dict[str, str] = {}  # participant -> reason, as shown in the last frame
        self.states: list[StrapReadiness] = []
        self.setWindowTitle("Getting ready — nothing is recorded yet")
        self.setObjectName("ready")
        self.setStyleSheet(
            f"#ready {{ background: {BACKGROUND}; }} QLabel {{ color: {FOREGROUND}; font-size: 14px; }}"
            f"QPushButton {{ color: {FOREGROUND}; background: #2d333b; border: 1px solid #444c56; border-radius: 4px;"
            " padding: 7px 16px; font-size: 15px; }"
            "QPushButton:disabled { color: #6e7681; background: #22272e; border-color: #30363d; }"
            "QPushButton#start:enabled { background: #238636; border-color: #2ea043; color: #ffffff; }"
            f"QProgressBar {{ color: {FOREGROUND}; background: {PANEL}; border: 1px solid #444c56; border-radius: 3px;"
            " text-align: center; min-width: 150px; }"
            "QProgressBar::chunk { background: #2f8f83; }"
        )
        root = QtWidgets.QVBoxLayout(self)
        root.setContentsMargins(16, 12, 16, 12)
        root.setSpacing(10)
        heading = QtWidgets.QLabel(f"Getting ready{': ' + title if title else ''}")
        heading.setStyleSheet("font-size: 20px; font-weight: 600;")
        root.addWidget(heading)
        self.summary = QtWidgets.QLabel()
        self.summary.setWordWrap(True)
        root.addWidget(self.summary)

        grid_host = QtWidgets.QFrame()
        grid_host.setObjectName("rows")
        grid_host.setStyleSheet(f"#rows {{ background: {PANEL}; border-radius: 6px; }}")
        self.grid = QtWidgets.QGridLayout(grid_host)
        self.grid.setContentsMargins(12, 8, 12, 8)
        self.grid.setHorizontalSpacing(18)
        self.grid.setVerticalSpacing(8)
        for col, name in enumerate(HEADERS):
            label = QtWidgets.QLabel(name)
            label.setStyleSheet(f"color: {MUTED}; font-weight: 600;")
            self.grid.addWidget(label, 0, col)
        self.grid.setColumnStretch(len(HEADERS) - 1, 1)
        self.rows: dict[str, dict[str, QtWidgets.QWidget]] = {}
        for i, st in enumerate(watch.snapshot()[0]):
            row = {
                "participant": QtWidgets.QLabel(f"<b>{st.participant_id}</b>"),
                "strap": QtWidgets.QLabel(st.device_id),
                "link": QtWidgets.QLabel(),
                "contact": QtWidgets.QLabel(),
                "beats": QtWidgets.QProgressBar(),
                "battery": QtWidgets.QLabel(),
                "reason": QtWidgets.QLabel(),
            }
            row["beats"].setRange(0, 1000)
            row["reason"].setWordWrap(True)
            row["reason"].setMinimumWidth(420)
            for col, widget in enumerate(row.values()):
                self.grid.addWidget(widget, i + 1, col)
            self.rows[st.participant_id] = row
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(grid_host)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setStyleSheet(f"QScrollArea {{ background: {BACKGROUND}; }}")
        grid_host.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Maximum)
        root.addWidget(scroll, 1)

        bar = QtWidgets.QHBoxLayout()
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.without_button = QtWidgets.QPushButton()
        self.start_button = QtWidgets.QPushButton("Start")
        self.start_button.setObjectName("start")
        for b in (self.cancel_button, self.without_button, self.start_button):
            b.setSizePolicy(QtWidgets.QSizePolicy.Policy.Fixed, QtWidgets.QSizePolicy.Policy.Fixed)
        bar.addWidget(self.cancel_button)
        bar.addStretch(1)
        bar.addWidget(self.without_button)
        bar.addWidget(self.start_button)
        root.addLayout(bar)
        self.cancel_button.clicked.connect(self.cancel)
        self.without_button.clicked.connect(self.start_without)
        self.start_button.clicked.connect(self.start)

        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(max(1, int(1000 / fps)))
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self.resize(1280, 190 + 66 * len(self.rows))
        self.refresh()

    # --- frames ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        if self.done:
            return
        states, now = self.watch.snapshot()
        self.states = states
        ready = [s.participant_id for s in states if s.ready(now, self.need_s)]
        self.not_ready = {s.participant_id: s.status(now, self.need_s) for s in states
                          if not s.ready(now, self.need_s)}  # fmt: skip
        for st in states:
            self._show_row(st, now)
        n = len(states)
        low = [s.participant_id for s in states if s.battery_low]
        text = (f"{len(ready)} of {n} straps ready (connected, skin contact, beats for {self.need_s:g} s). "
                "Nothing is recorded until you press Start.")  # fmt: skip
        if low:
            text += f" <span style='color:{WARN_COLOUR}'>⚠ Low battery: {', '.join(low)}.</span>"
        self.summary.setText(text)
        self.start_button.setEnabled(len(ready) == n)
        left_out = list(self.not_ready)
        self.without_button.setVisible(0 < len(ready) < n)
        self.without_button.setEnabled(0 < len(ready) < n)
        self.without_button.setText(without_label(left_out) if left_out else "Start without …")
        if self.auto_start and len(ready) == n:
            self.start()

    def _show_row(self, st: StrapReadiness, now: float) -> None:
        row = self.rows[st.participant_id]
        state = st.link_state
        colour = BAD_COLOUR if state == "failed" else LINK_COLOURS.get(state, MUTED)
        words = {"reconnecting": "retrying"}.get(state, state)
        _set(row["link"], f"<span style='color:{colour}'>● {words}</span>")
        contact, contact_colour = CONTACT_WORDS.get(st.contact if state == "connected" else "unknown",
                                                    (st.contact, MUTED))  # fmt: skip
        _set(row["contact"], f"<span style='color:{contact_colour}'>{contact}</span>")
        steady = min(st.steady_s(now), self.need_s)
        bar: QtWidgets.QProgressBar = row["beats"]  # type: ignore[assignment]
        bar.setValue(round(1000 * steady / self.need_s))
        bar.setFormat("ready" if st.ready(now, self.need_s) else f"beats for {steady:.0f} of {self.need_s:g} s")
        if st.battery_pct is None:
            battery = f"<span style='color:{MUTED}'>battery unknown</span>"
        elif st.battery_low:
            battery = f"<span style='color:{WARN_COLOUR}; font-weight:600'>⚠ {st.battery_pct} % — low</span>"
        else:
            battery = f"{st.battery_pct} %"
        _set(row["battery"], battery)
        status = st.status(now, self.need_s)
        name, hint = cause(st.reason) if st.cause() else ("", "")
        if st.ready(now, self.need_s):
            reason = f"<span style='color:{OK_COLOUR}'>ready</span>"
        elif name:  # the cause and what to do; the link's own words in the tooltip
            reason = f"<b style='color:{WARN_COLOUR}'>{name}</b> — {_escape(hint)}"
        else:
            reason = _escape(status)
        _set(row["reason"], reason)
        row["reason"].setToolTip(status)

    # --- choices --------------------------------------------------------------------------------------------
    def _decide(self, choice: ReadyChoice | None) -> None:
        if self.done:
            return
        self.done = True
        self.choice = choice
        self.timer.stop()
        self.decided.emit()

    def start(self) -> None:
        """Every strap is ready: start with all of them."""
        if self.start_button.isEnabled():
            self._decide(ReadyChoice([s.participant_id for s in self.states], {}))

    def start_without(self) -> None:
        """Start with the ready straps, knowingly leaving out those the button names (with their reason then)."""
        if not self.without_button.isEnabled():
            return
        left = dict(self.not_ready)
        self._decide(ReadyChoice([s.participant_id for s in self.states if s.participant_id not in left], left))

    def cancel(self) -> None:
        self._decide(None)

    def closeEvent(self, event) -> None:
        self.cancel()
        super().closeEvent(event)


def _set(label: QtWidgets.QLabel, text: str) -> None:
    if label.text() != text:
        label.setText(text)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ReadyScreen:
    """The ready window with its straps' links running in a thread of their own (`start`, then `finish`)."""

    def __init__(self, bindings: Sequence[StrapBinding], clock: Clock, title: str = "", *,
                 need_s: float = READY_BEATS_S, auto_start: bool = False) -> None:  # fmt: skip
        self.app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
        self.watch = ReadinessWatch(bindings, clock, need_s)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="readiness", daemon=True)
        self.window = ReadyWindow(self.watch, title, auto_start=auto_start)

    def _run(self) -> None:
        try:
            asyncio.run(self.watch.run())
        except BaseException as exc:  # reported by finish() in the main thread
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        self.window.show()

    def finish(self) -> ReadyChoice | None:
        """Stop the links (the session will open its own), close the window; the choice (None: cancelled)."""
        self.watch.stop()
        self.thread.join(timeout=15)
        choice = self.window.choice
        self.window.timer.stop()
        self.window.hide()
        self.window.deleteLater()
        self.app.processEvents()
        if self.error is not None:
            raise self.error
        return choice


def run_ready_screen(bindings: Sequence[StrapBinding], clock: Clock, title: str = "", *,
                     need_s: float = READY_BEATS_S, auto_start: bool = False) -> ReadyChoice | None:
    """Show the ready screen until the experimenter starts (the choice) or cancels (None)."""
    screen = ReadyScreen(bindings, clock, title, need_s=need_s, auto_start=auto_start)
    loop = QtCore.QEventLoop()
    screen.window.decided.connect(loop.quit)
    screen.start()
    if not screen.window.done:
        loop.exec()
    return screen.finish()
