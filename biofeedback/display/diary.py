"""Shows a participant the diary form during a diary phase, over their participant window.

`DiaryFormHost` watches the view the participant window already pulls. When it names an instrument, the host lays
an `InstrumentForm` over the window, leaving the window's "Pause" and "Stop" buttons uncovered, so the participant
can still pause or stop at any moment. "Done" sends the answers with `session.submit_answers`; "Not now" calls
`session.skip_diary` (recorded neutrally). Either way the form closes and the participant window shows again.

If the phase ends while the form is open, an untouched form closes, but one with answers in it stays until the
participant sends it or sets it aside: typed answers are never thrown away.
"""

from __future__ import annotations

import logging
from typing import Protocol

from pyqtgraph.Qt import QtCore, QtWidgets

from biofeedback.display.form import InstrumentForm, Texts, Values
from biofeedback.display.participant import ParticipantWindow
from protocols.instruments import Instrument

log = logging.getLogger(__name__)

CHECK_MS = 200
"""How often the host looks at the participant's view (milliseconds)."""


class DiarySession(Protocol):
    """What the host needs from the session (`LiveSession` provides it)."""

    def instrument(self, name: str) -> Instrument: ...

    def submit_answers(self, participant_id: str, values: Values, texts: Texts | None = None) -> object: ...

    def skip_diary(self, participant_id: str) -> None: ...


class DiaryFormHost(QtCore.QObject):
    """Opens and closes the instrument form over one participant's window as their view asks."""

    def __init__(self, session: DiarySession, window: ParticipantWindow, participant_id: str) -> None:
        super().__init__(window)
        self.session = session
        self.window = window
        self.participant_id = participant_id
        self.form: InstrumentForm | None = None
        self._phase: str | None = None  # the phase whose form is open
        self._responded_in: str | None = None  # the phase whose form this participant has sent or set aside
        window.installEventFilter(self)
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(CHECK_MS)
        self.timer.timeout.connect(self.check)
        self.timer.start()

    def check(self) -> None:
        """Open the form when the view names an instrument; close an untouched one when it no longer does."""
        view = self.window.view
        name = view.instrument if view is not None and not view.finished else None
        if self.form is None:
            if name is not None and view is not None and view.phase_name != self._responded_in:
                self._open(name)
        elif name is None and not self._has_answers():
            self._close()

    def _open(self, name: str) -> None:
        try:
            instrument = self.session.instrument(name)
        except KeyError:
            log.exception("diary form for %s cannot be shown", self.participant_id)
            return
        self.form = InstrumentForm(instrument, on_submit=self._submit, on_cancel=self._skip, parent=self.window)
        self._phase = self.window.view.phase_name if self.window.view is not None else None
        self._place()
        self.form.show()
        self.form.raise_()

    def _has_answers(self) -> bool:
        if self.form is None:
            return False
        values, texts = self.form.answers()
        return bool(texts) or any(v is not None for v in values.values())

    def _submit(self, values: Values, texts: Texts) -> None:
        try:
            self.session.submit_answers(self.participant_id, values, texts)
        except Exception:  # e.g. the session has ended: keep the form (and the answers) on screen
            log.exception("diary answers of %s were not accepted", self.participant_id)
            return
        self._responded()

    def _skip(self) -> None:
        try:
            self.session.skip_diary(self.participant_id)
        except Exception:  # nothing to record (e.g. already ended): just put the form away
            log.exception("setting the diary aside failed for %s", self.participant_id)
        self._responded()

    def _responded(self) -> None:
        self._responded_in = self._phase
        self._close()

    def _close(self) -> None:
        if self.form is not None:
            self.form.hide()
            self.form.deleteLater()
            self.form = None
        self.window.update()

    def _place(self) -> None:
        """Cover the window down to just above its Pause/Stop buttons."""
        if self.form is None:
            return
        w = self.window
        buttons_top = min(w.pause_button.geometry().top(), w.stop_button.geometry().top())
        bottom = buttons_top - 8 if buttons_top > w.height() // 2 else w.height()
        self.form.setGeometry(0, 0, w.width(), bottom)

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if watched is self.window and event.type() in (QtCore.QEvent.Type.Resize, QtCore.QEvent.Type.Show):
            QtCore.QTimer.singleShot(0, self._place)  # after the window has placed its buttons
        return False


def host_diary_forms(session: DiarySession, windows: list[QtWidgets.QWidget]) -> list[DiaryFormHost]:
    """A form host for every participant window in `windows` (each knows its participant)."""
    return [
        DiaryFormHost(session, w, w.participant_id)
        for w in windows
        if isinstance(w, ParticipantWindow) and w.participant_id is not None
    ]
