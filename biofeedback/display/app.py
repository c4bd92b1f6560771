"""Running a session with its windows: recording in a background asyncio thread, Qt in the main thread.

The displays only pull views and send commands through the session's thread-safe controls, so a stalled or crashed
window cannot lose recorded data. Closing the monitor ends the session (recorded as stopped by the experimenter).
"""

from __future__ import annotations

import asyncio
import threading

from PySide6 import QtCore, QtWidgets

from biofeedback.display.diary import host_diary_forms
from biofeedback.display.monitor import MonitorWindow, add_participant_links
from biofeedback.display.participant import ParticipantWindow
from biofeedback.live.session import LiveSession


class SessionThread(threading.Thread):
    """Runs a session's asyncio loop beside Qt's; `result` holds the session ids, `error` what ended it badly."""

    def __init__(self, session: LiveSession) -> None:
        super().__init__(name="session", daemon=True)
        self.session = session
        self.result: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = asyncio.run(self.session.run())
        except BaseException as exc:  # reported by run_with_displays in the main thread
            self.error = exc


def run_with_displays(
    session: LiveSession, *, participant_windows: bool = True, web_links: dict[str, str] | None = None
) -> list[int]:
    """Open the experimenter monitor (and a participant display per strap) and run the session to its end.

    `web_links`: each participant's web display page, shown as QR codes on the monitor."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    worker = SessionThread(session)
    monitor = MonitorWindow(session, session)
    if web_links:
        add_participant_links(monitor, web_links)
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
        if worker.is_alive():
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
    return worker.result or session.session_ids
