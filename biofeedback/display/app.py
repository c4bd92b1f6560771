"""Running a session with its windows: recording in a background asyncio thread, Qt in the main thread.

The displays only pull views and send commands through the session's thread-safe controls, so a stalled or crashed
window cannot lose recorded data. Closing the monitor ends the session (recorded as stopped by the experimenter).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from PySide6 import QtCore, QtWidgets

from biofeedback.display.diary import host_diary_forms
from biofeedback.display.monitor import MonitorWindow, add_participant_links
from biofeedback.display.participant import ParticipantWindow
from biofeedback.display.screens import place_windows, qt_screens, show_placed
from biofeedback.live.session import LiveSession

if TYPE_CHECKING:
    from biofeedback.live.lsl_outlets import ConsumerGate


class SessionThread(threading.Thread):
    """Runs a session's asyncio loop beside Qt's; `result` holds the session ids, `error` what ended it badly.

    With a `gate` (LSL consumers, see `lsl_outlets.ConsumerGate`) the session clock starts only when it opens;
    an abandoned gate (the monitor closed first) runs nothing."""

    def __init__(self, session: LiveSession, gate: ConsumerGate | None = None) -> None:
        super().__init__(name="session", daemon=True)
        self.session = session
        self.gate = gate
        self.result: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.gate is not None and not self.gate.wait():
                return
            self.result = asyncio.run(self.session.run())
        except BaseException as exc:  # reported by run_with_displays in the main thread
            self.error = exc


class SessionWindows(QtCore.QObject):
    """A session's experimenter monitor and participant displays, the session running in its own thread.

    `start()` shows the windows and starts recording; `finished` is emitted once the session has ended; `close()`
    then tears the windows down and returns the session ids. Closing the monitor ends the session. Used by
    `run_with_displays` (its own Qt loop) and by the lab console (inside the console's loop)."""

    finished = QtCore.Signal()

    def __init__(self, session: LiveSession, *, participant_windows: bool = True,
                 participant_screens: Mapping[str, int] | None = None,
                 on_note: Callable[[str], None] | None = None,
                 web_links: Mapping[str, str] | None = None, lsl_gate: ConsumerGate | None = None) -> None:  # fmt: skip
        super().__init__()
        self.session = session
        self.participant_screens = participant_screens
        self.on_note = on_note
        self.lsl_gate = lsl_gate
        self.worker = SessionThread(session, lsl_gate)
        self.monitor = MonitorWindow(session, session, lsl_gate=lsl_gate)
        if web_links:  # each participant's web display page, as QR codes on the monitor
            add_participant_links(self.monitor, dict(web_links))
        self.windows: list[QtWidgets.QWidget] = [self.monitor]
        if participant_windows:
            for strap in session.straps:
                window = ParticipantWindow(session, strap.binding.participant_id, controls=session)
                window.setWindowTitle(f"Session · {strap.binding.participant_id}")
                self.windows.append(window)
        self._forms = host_diary_forms(session, self.windows)  # kept alive while the windows are open
        self.monitor.installEventFilter(self)
        self._watcher = QtCore.QTimer(self)
        self._watcher.setInterval(200)
        self._watcher.timeout.connect(self._check)

    def start(self) -> None:
        """Show the windows (participants on the screens `screens.place_windows` picks) and start recording."""
        self.monitor.show()
        if len(self.windows) > 1:
            screens, geometries, _names, primary = qt_screens()
            pids = [strap.binding.participant_id for strap in self.session.straps]
            placements, notes = place_windows(pids, geometries, primary, self.participant_screens)
            for window, placement in zip(self.windows[1:], placements, strict=True):
                show_placed(window, screens[placement.screen], placement)
            if notes:
                self.monitor.statusBar().showMessage("Screens: " + "; ".join(notes))
                for line in notes:
                    (self.on_note or print)(f"screens: {line}")
        self.worker.start()
        self._watcher.start()

    def running(self) -> bool:
        return self.worker.is_alive()

    def _check(self) -> None:
        if not self.worker.is_alive():
            self._watcher.stop()
            self.finished.emit()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if watched is self.monitor and event.type() == QtCore.QEvent.Type.Close:
            self.end()
        return False

    def end(self, reason: str = "monitor closed") -> bool:
        """End the session (recorded as stopped by the experimenter) if it is still running; False when its protocol
        has not started yet (asked again shortly, so an early close still ends it)."""
        if self.lsl_gate is not None and not self.lsl_gate.is_open:
            self.lsl_gate.abandon()  # closed before the start: nothing runs
            return True
        if not self.worker.is_alive():
            return True
        try:
            self.session.end_session(reason)
        except RuntimeError:  # in the moment before the session's loop starts the protocol
            QtCore.QTimer.singleShot(50, lambda: self.end(reason))
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> list[int]:
        """End the session if needed, wait for its thread, close the windows; the session ids (or its error)."""
        deadline = time.monotonic() + timeout_s
        while not self.end() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.worker.join(timeout=max(0.0, deadline - time.monotonic()))
        self._watcher.stop()
        app = QtWidgets.QApplication.instance()
        # Tear the windows down here, in order, rather than whenever Python's garbage collector gets to them: a
        # widget deleted by the collector while Qt delivers one of its timer events crashes the process.
        self.monitor.removeEventFilter(self)
        for window in self.windows:
            for timer in window.findChildren(QtCore.QTimer):
                timer.stop()
            window.close()
            window.deleteLater()
        self._forms = []
        if app is not None:
            app.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
            app.processEvents()
        self.windows = []
        if self.worker.error is not None:
            raise self.worker.error
        if not self.worker.result and self.session.runner.state.t is None:  # never started: nothing recorded
            for sid in self.session.session_ids:
                self.session.store.end_session(sid, "stopped", "the monitor closed before the session clock started")
        return self.worker.result or self.session.session_ids


def run_with_displays(
    session: LiveSession,
    *,
    participant_windows: bool = True,
    participant_screens: Mapping[str, int] | None = None,
    on_note: Callable[[str], None] | None = None,
    web_links: Mapping[str, str] | None = None,
    lsl_gate: ConsumerGate | None = None,
) -> list[int]:
    """Open the experimenter monitor (and a participant display per strap) and run the session to its end.

    Participant windows go on the screens `biofeedback.display.screens.place_windows` picks (`participant_screens`:
    {participant: screen number from 1}); what has to share a screen is said through `on_note` and on the monitor's
    status bar. `web_links`: each participant's web display page, shown as QR codes on the monitor. With `lsl_gate`
    the monitor first shows how many LSL streams have a consumer and starts the session clock when the experimenter
    says (now, or once N are connected); closed before that, the sessions end `stopped`."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    shown = SessionWindows(session, participant_windows=participant_windows, participant_screens=participant_screens,
                           on_note=on_note, web_links=web_links, lsl_gate=lsl_gate)  # fmt: skip
    quit_on_close = app.quitOnLastWindowClosed()

    def quit_when_done() -> None:
        # quitting closes the windows; with quit-on-last-window-closed that would post a second quit, left
        # pending for whatever event loop runs next in this process
        app.setQuitOnLastWindowClosed(False)
        app.quit()

    shown.finished.connect(quit_when_done)
    shown.start()

    def end_on_quit() -> None:
        shown.end()

    app.aboutToQuit.connect(end_on_quit)
    app.exec()
    app.aboutToQuit.disconnect(end_on_quit)  # never left behind to act on a later event loop
    shown.finished.disconnect(quit_when_done)
    # Qt 6 posts quit() as an event: one posted after the loop began to exit (the session ending in the moment
    # the experimenter quit) would end whatever event loop runs next in this process (a console, a test)
    QtCore.QCoreApplication.removePostedEvents(app, QtCore.QEvent.Type.Quit)
    shown.end()
    shown.worker.join(timeout=10)
    app.setQuitOnLastWindowClosed(False)  # closing them now must not leave a quit pending either
    try:
        return shown.close()
    finally:
        app.setQuitOnLastWindowClosed(quit_on_close)
