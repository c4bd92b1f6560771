"""Running a session with its windows: recording in a background asyncio thread, Qt in the main thread.

The displays only pull views and send commands through the session's thread-safe controls, so a stalled or crashed
window cannot lose recorded data. Closing the monitor ends the session (recorded as stopped by the experimenter).
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from PySide6 import QtCore, QtWidgets

from biofeedback.display.diary import host_diary_forms
from biofeedback.display.monitor import MonitorWindow
from biofeedback.display.participant import ParticipantWindow
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


def run_with_displays(
    session: LiveSession, *, participant_windows: bool = True, lsl_gate: ConsumerGate | None = None
) -> list[int]:
    """Open the experimenter monitor (and a participant display per strap) and run the session to its end.

    With `lsl_gate` the monitor first shows how many LSL streams have a consumer and starts the session clock when
    the experimenter says (now, or once N are connected); closed before that, the sessions end `stopped`."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    worker = SessionThread(session, lsl_gate)
    monitor = MonitorWindow(session, session, lsl_gate=lsl_gate)
    windows: list[QtWidgets.QWidget] = [monitor]
    if participant_windows:
        for strap in session.straps:
            window = ParticipantWindow(session, strap.binding.participant_id, controls=session)
            window.setWindowTitle(f"Session · {strap.binding.participant_id}")
            windows.append(window)
    _forms = host_diary_forms(session, windows)  # kept alive while the windows are open
    monitor.show()
    for window in windows[1:]:
        window.present()

    watcher = QtCore.QTimer()
    watcher.setInterval(200)
    quit_on_close = app.quitOnLastWindowClosed()

    def quit_when_done() -> None:
        if not worker.is_alive():
            watcher.stop()
            # quitting closes the windows; with quit-on-last-window-closed that would post a second quit, left
            # pending for whatever event loop runs next in this process
            app.setQuitOnLastWindowClosed(False)
            app.quit()

    watcher.timeout.connect(quit_when_done)
    worker.start()
    watcher.start()
    def end_on_quit() -> None:
        if lsl_gate is not None and not lsl_gate.is_open:
            lsl_gate.abandon()  # closed before the start: nothing runs
        elif worker.is_alive():
            session.end_session("monitor closed")

    app.aboutToQuit.connect(end_on_quit)
    app.exec()
    app.aboutToQuit.disconnect(end_on_quit)  # never left behind to act on a later event loop
    end_on_quit()
    worker.join(timeout=10)
    app.setQuitOnLastWindowClosed(False)  # closing them now must not leave a quit pending either
    # Tear the windows down here, in order, rather than whenever Python's garbage collector gets to them: a
    # widget deleted by the collector while Qt delivers one of its timer events crashes the process.
    for window in windows:
        for timer in window.findChildren(QtCore.QTimer):
            timer.stop()
        window.close()
        window.deleteLater()
    del _forms
    app.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    app.processEvents()
    app.setQuitOnLastWindowClosed(quit_on_close)
    if worker.error is not None:
        raise worker.error
    if not worker.result and session.runner.state.t is None:  # never started (abandoned gate): nothing recorded
        for sid in session.session_ids:
            session.store.end_session(sid, "stopped", "the monitor closed before the session clock started")
    return worker.result or session.session_ids
