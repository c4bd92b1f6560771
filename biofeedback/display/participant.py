"""The participant's screen: a breathing pacer, the phase prompt and a gentle soothing glow. Calm, no scores.

Everything is painted by one function (`paint_participant`) so the live window and offscreen PNG
rendering draw exactly the same frame. The window pulls a `ParticipantView` from its `ViewSource` on a
timer; the pacer size comes from the view (the session clock), so after a stall the next frame is exact
again. No red, no numbers: the soothing glow only grows warmer and larger, and at its lowest it looks
exactly like hidden feedback.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from biofeedback.display.common import start_frame_timer
from biofeedback.live.view_model import ParticipantControls, ParticipantView, ViewSource

log = logging.getLogger(__name__)

BG_TOP = QtGui.QColor(19, 35, 58)
BG_BOTTOM = QtGui.QColor(29, 71, 86)
PACER_CORE = QtGui.QColor(150, 220, 212)
PACER_EDGE = QtGui.QColor(96, 170, 176)
PACER_RIM = QtGui.QColor(206, 238, 232)
GLOW_NEUTRAL = QtGui.QColor(96, 160, 178)
GLOW_MID = QtGui.QColor(236, 204, 146)
GLOW_WARM = QtGui.QColor(255, 190, 108)
TEXT = QtGui.QColor(241, 237, 228)
TEXT_SOFT = QtGui.QColor(188, 214, 216)

FADE_S = 1.5
"""Cross-fade length between phase prompts, in session seconds."""
GLOW_TAU_S = 2.5
"""Time constant with which the glow follows the soothing level (session seconds), so it never jumps."""
NEUTRAL_LEVEL = 0.0

DEFAULT_PAUSED_MESSAGE = "Paused. Take all the time you need."
REPLAY_TEXT = "REPLAY"
PARTICIPANT_CONTROLS = ("participant_pause", "participant_resume", "participant_stop")


@dataclass(frozen=True, slots=True)
class ParticipantLayout:
    """Where things go on a width × height canvas (pixels)."""

    width: float
    height: float
    center_x: float
    center_y: float
    r_min: float
    r_max: float
    prompt_rect: QtCore.QRectF
    label_rect: QtCore.QRectF


def participant_layout(width: float, height: float) -> ParticipantLayout:
    unit = min(height, width * 9 / 16)
    cx, cy = width / 2, height * 0.58
    r_max = unit * 0.22
    margin = width * 0.08
    prompt = QtCore.QRectF(margin, height * 0.05, width - 2 * margin, height * 0.26)
    label = QtCore.QRectF(margin, cy + r_max + unit * 0.035, width - 2 * margin, unit * 0.08)
    return ParticipantLayout(width, height, cx, cy, unit * 0.085, r_max, prompt, label)


def pacer_radius(pacer_size: float, width: float, height: float) -> float:
    """Radius in pixels of the pacer disc for `pacer_size` (0..1) on a width × height canvas."""
    lay = participant_layout(width, height)
    return lay.r_min + (lay.r_max - lay.r_min) * pacer_size


def _mix(a: QtGui.QColor, b: QtGui.QColor, x: float, alpha: float) -> QtGui.QColor:
    c = QtGui.QColor(
        round(a.red() + (b.red() - a.red()) * x),
        round(a.green() + (b.green() - a.green()) * x),
        round(a.blue() + (b.blue() - a.blue()) * x),
    )
    c.setAlphaF(max(0.0, min(1.0, alpha)))
    return c


def glow_colour(level: float, alpha: float) -> QtGui.QColor:
    """Soft teal (neutral) through pale gold to warm amber as `level` goes 0 → 1; never grey, never red."""
    if level <= 0.5:
        return _mix(GLOW_NEUTRAL, GLOW_MID, level * 2, alpha)
    return _mix(GLOW_MID, GLOW_WARM, level * 2 - 1, alpha)


def _scene(v: ParticipantView) -> tuple[object, ...]:
    """Everything but the pacer that changes what a frame shows."""
    return (v.phase_name, v.prompt, v.feedback, v.paused, v.finished, v.message, v.pacer_size is None, v.replay)


class ParticipantState:
    """What a frame needs from earlier ones: the outgoing prompt (cross-fade) and the smoothed glow."""

    def __init__(self) -> None:
        self.key: tuple[str, str] | None = None
        self.previous_prompt = ""
        self.changed_at = -math.inf
        self.glow_level = NEUTRAL_LEVEL
        self.last_t: float | None = None

    def update(self, view: ParticipantView) -> None:
        key = (view.phase_name, view.prompt)
        if self.key is not None and key != self.key:
            self.previous_prompt = self.key[1]
            self.changed_at = view.t
        self.key = key
        target = view.soothing_level if view.shows_feedback else NEUTRAL_LEVEL
        if self.last_t is None or view.t < self.last_t or not view.shows_feedback:
            self.glow_level = target  # first frame, clock restarted, or neutral: no smoothing needed
        else:
            k = 1.0 - math.exp(-(view.t - self.last_t) / GLOW_TAU_S)
            self.glow_level += (target - self.glow_level) * k
        self.last_t = view.t

    def fade(self, t: float) -> float:
        """0 → only the previous prompt, 1 → only the current one."""
        return min(max((t - self.changed_at) / FADE_S, 0.0), 1.0)


def _font(px: float, weight: QtGui.QFont.Weight = QtGui.QFont.Weight.Normal) -> QtGui.QFont:
    f = QtGui.QFont()
    f.setPixelSize(max(8, round(px)))
    f.setWeight(weight)
    return f


GLOW_STEPS = 200
"""The glow is pre-rendered at this many levels (steps of 0.005: invisible, and it keeps frames cheap)."""


@functools.lru_cache(maxsize=3)
def _backdrop(width: int, height: int, level_step: int) -> QtGui.QImage:
    """Background gradient and soothing glow at `level_step / GLOW_STEPS`, cached (they change slowly)."""
    level = level_step / GLOW_STEPS
    lay = participant_layout(width, height)
    img = QtGui.QImage(width, height, QtGui.QImage.Format.Format_ARGB32_Premultiplied)
    p = QtGui.QPainter(img)
    try:
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
        bg = QtGui.QLinearGradient(0, 0, 0, height)
        bg.setColorAt(0.0, BG_TOP)
        bg.setColorAt(1.0, BG_BOTTOM)
        p.fillRect(QtCore.QRectF(0, 0, width, height), bg)
        center = QtCore.QPointF(lay.center_x, lay.center_y)
        glow_r = lay.r_max * (1.3 + 0.55 * level)
        glow = QtGui.QRadialGradient(center, glow_r)
        peak = 0.24 + 0.36 * level
        for stop, share in ((0.0, 1.0), (0.35, 0.75), (0.65, 0.32), (0.85, 0.1), (1.0, 0.0)):
            glow.setColorAt(stop, glow_colour(level, peak * share))
        p.setPen(QtCore.Qt.PenStyle.NoPen)
        p.setBrush(glow)
        p.setCompositionMode(QtGui.QPainter.CompositionMode.CompositionMode_Screen)
        p.drawEllipse(center, glow_r, glow_r)
    finally:
        p.end()
    return img


@functools.lru_cache(maxsize=4)
def _pacer_disc(radius: int) -> QtGui.QImage:
    """The pacer's soft teal disc and pale rim at full size; frames draw it scaled to the pacer radius."""
    size = 2 * radius
    img = QtGui.QImage(size, size, QtGui.QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(QtCore.Qt.GlobalColor.transparent)
    p = QtGui.QPainter(img)
    try:
        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
        center = QtCore.QPointF(radius, radius)
        disc = QtGui.QRadialGradient(center, radius)
        disc.setColorAt(0.0, _mix(PACER_CORE, PACER_CORE, 0, 0.85))
        disc.setColorAt(1.0, _mix(PACER_EDGE, PACER_EDGE, 0, 0.75))
        rim_w = max(2.0, radius * 0.025)
        p.setPen(QtGui.QPen(_mix(PACER_RIM, PACER_RIM, 0, 0.95), rim_w))
        p.setBrush(disc)
        p.drawEllipse(center, radius - rim_w / 2, radius - rim_w / 2)
    finally:
        p.end()
    return img


def paint_participant(
    p: QtGui.QPainter,
    width: float,
    height: float,
    view: ParticipantView,
    state: ParticipantState | None = None,
    dirty: QtCore.QRectF | None = None,
) -> None:
    """Paint one participant frame. `state` carries cross-fade and glow smoothing (None: a lone frame);
    `dirty` is the part being repainted (None: all), so text outside it need not be laid out."""
    if state is None:
        state = ParticipantState()
        state.update(view)
    lay = participant_layout(width, height)
    p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
    p.setRenderHint(QtGui.QPainter.RenderHint.TextAntialiasing, True)

    p.drawImage(0, 0, _backdrop(round(width), round(height), round(state.glow_level * GLOW_STEPS)))
    if view.replay:  # a stored session being watched, never mistaken for a live one
        p.setPen(TEXT_SOFT)
        p.setFont(_font(max(14.0, min(height, width * 9 / 16) * 0.035), QtGui.QFont.Weight.DemiBold))
        corner = QtCore.QRectF(width * 0.02, height * 0.015, width * 0.5, height * 0.08)
        p.drawText(corner, QtCore.Qt.AlignmentFlag.AlignLeft | QtCore.Qt.AlignmentFlag.AlignTop, REPLAY_TEXT)

    if view.pacer_size is not None and not view.finished and not view.paused:  # paused: just the glow
        center = QtCore.QPointF(lay.center_x, lay.center_y)
        r = pacer_radius(view.pacer_size, width, height)
        p.setRenderHint(QtGui.QPainter.RenderHint.SmoothPixmapTransform, True)
        target = QtCore.QRectF(center.x() - r, center.y() - r, 2 * r, 2 * r)
        p.drawImage(target, _pacer_disc(round(lay.r_max)))  # a scaled image: far cheaper than stroking
        if view.pacer_label and not view.paused:
            p.setPen(TEXT_SOFT)
            p.setFont(_font(lay.label_rect.height() * 0.5))
            p.drawText(lay.label_rect, QtCore.Qt.AlignmentFlag.AlignCenter, view.pacer_label)

    flags = QtCore.Qt.AlignmentFlag.AlignCenter | QtCore.Qt.TextFlag.TextWordWrap
    prompt_px = min(lay.height, lay.width * 9 / 16) * 0.052
    if view.finished:
        p.setPen(TEXT)
        p.setFont(_font(prompt_px))
        p.drawText(QtCore.QRectF(0, 0, width, height), flags, view.message or view.prompt)
        return
    x = state.fade(view.t)
    show_prompt = dirty is None or dirty.intersects(lay.prompt_rect)
    for text, alpha in ((state.previous_prompt, 1.0 - x), (view.prompt, x)):
        if text and alpha > 0 and show_prompt:
            c = QtGui.QColor(TEXT)
            c.setAlphaF(alpha * (0.55 if view.paused else 1.0))
            p.setPen(c)
            p.setFont(_fitting_font(text, lay.prompt_rect.width(), lay.prompt_rect.height(), prompt_px))
            p.drawText(lay.prompt_rect, flags, text)
    message = view.message or (DEFAULT_PAUSED_MESSAGE if view.paused else "")
    if message:
        p.setPen(TEXT)
        p.setFont(_font(prompt_px * 0.75))
        box = QtCore.QRectF(
            lay.prompt_rect.left(), lay.center_y - lay.r_max * 0.5, lay.prompt_rect.width(), lay.r_max
        )
        p.drawText(box, flags, message)


@functools.lru_cache(maxsize=64)
def _fitting_font(text: str, width: float, height: float, px: float) -> QtGui.QFont:
    """The largest prompt font (down to 60 % of `px`) whose wrapped text fits the prompt area; never clipped."""
    flags = int(QtCore.Qt.AlignmentFlag.AlignCenter | QtCore.Qt.TextFlag.TextWordWrap)
    size = px
    while True:
        font = _font(size)
        box = QtGui.QFontMetricsF(font).boundingRect(QtCore.QRectF(0, 0, width, height), flags, text)
        if box.height() <= height or size <= px * 0.6:
            return font
        size *= 0.92


def render_participant_image(
    view: ParticipantView, size: tuple[int, int] = (1280, 720), state: ParticipantState | None = None
) -> QtGui.QImage:
    """One participant frame as an ARGB32 image (needs a QGuiApplication)."""
    width, height = size
    img = QtGui.QImage(width, height, QtGui.QImage.Format.Format_ARGB32)
    img.fill(BG_TOP)
    p = QtGui.QPainter(img)
    try:
        paint_participant(p, width, height, view, state)
    finally:
        p.end()
    return img


def _app() -> QtWidgets.QApplication:
    app = QtWidgets.QApplication.instance()
    return app if app is not None else QtWidgets.QApplication([])


def render_participant_png(
    view: ParticipantView, path: str | Path, size: tuple[int, int] = (1280, 720)
) -> Path:
    """Render one participant frame offscreen to a PNG file and return its path."""
    _app()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not render_participant_image(view, size).save(str(path), "PNG"):
        raise OSError(f"could not write PNG to {path}")
    return path


_BUTTON_STYLE = """
QPushButton {
    color: rgb(232, 228, 218); background-color: rgba(255, 255, 255, 26);
    border: 1px solid rgba(255, 255, 255, 50); border-radius: %(r)dpx; padding: %(py)dpx %(px)dpx;
    font-size: %(f)dpx;
}
QPushButton:hover { background-color: rgba(255, 255, 255, 46); }
QPushButton:pressed { background-color: rgba(255, 255, 255, 70); }
"""


class ParticipantWindow(QtWidgets.QWidget):
    """Full-screen participant display pulling `source.participant_view(participant_id)` at `fps`.

    The "Pause"/"Continue" and "Stop" buttons are always there. They call `controls` (default: `source`,
    when the session object implements both protocols) for this participant only: their own display pauses,
    the session records it neutrally in their session with who did it, and the experimenter is alerted.
    "Continue" ends only the participant's own pause, never the experimenter's; "Stop" pauses and alerts,
    ending the session stays the experimenter's decision. Space toggles pause too. In a replay the buttons
    do nothing (nothing is recorded) and the screen says REPLAY.
    """

    def __init__(
        self,
        source: ViewSource,
        participant_id: str | None = None,
        controls: ParticipantControls | None = None,
        fps: float = 60.0,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if controls is None and all(hasattr(source, m) for m in PARTICIPANT_CONTROLS):
            controls = source  # type: ignore[assignment]
        if controls is None:
            raise ValueError(
                "ParticipantWindow needs SessionControls: the participant must always be able to pause"
            )
        self.source = source
        self.participant_id = participant_id
        self.controls = controls
        self.state = ParticipantState()
        self.view: ParticipantView | None = None
        self._last_error = ""
        self.setWindowTitle("Session")
        self.setAttribute(QtCore.Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.resize(1280, 720)

        self.pause_button = QtWidgets.QPushButton("Pause", self)
        self.stop_button = QtWidgets.QPushButton("Stop", self)
        for b in (self.pause_button, self.stop_button):
            b.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            b.setCursor(QtCore.Qt.CursorShape.PointingHandCursor)
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        QtGui.QShortcut(QtGui.QKeySequence(QtCore.Qt.Key.Key_Space), self, self.toggle_pause)

        self.timer = start_frame_timer(self, fps, self.refresh)
        self.refresh()

    def present(self) -> None:
        """Full screen on a second screen when there is one; otherwise a normal window beside the monitor."""
        screens = QtGui.QGuiApplication.screens()
        primary = QtGui.QGuiApplication.primaryScreen()
        others = [s for s in screens if s is not primary and s != primary]
        if others:
            screen = others[0]
            self.setScreen(screen)
            self.move(screen.geometry().topLeft())
            self.showFullScreen()
        else:
            self.show()

    def refresh(self) -> None:
        """Pull one view and schedule a repaint. A failing source keeps the last frame and is logged once."""
        try:
            view = self.source.participant_view(self.participant_id)
        except Exception as exc:  # the display must never take the session down
            if str(exc) != self._last_error:
                log.exception("participant view failed; keeping the last frame")
                self._last_error = str(exc)
            return
        self._last_error = ""
        previous, was_fading = self.view, self.state.fade(self.state.last_t or 0.0) < 1.0
        step = round(self.state.glow_level * GLOW_STEPS)
        self.view = view
        self.state.update(view)
        label = "Continue" if view.self_paused else "Pause"
        if self.pause_button.text() != label:
            self.pause_button.setText(label)
            self._place_buttons()  # a longer word gets a wider button: never clipped
        for b in (self.pause_button, self.stop_button):
            b.setEnabled(not view.replay)
        if (
            previous is None
            or _scene(previous) != _scene(view)
            or step != round(self.state.glow_level * GLOW_STEPS)
            or was_fading
            or self.state.fade(view.t) < 1.0
        ):
            self.update()
        elif (previous.pacer_size, previous.pacer_label) != (view.pacer_size, view.pacer_label):
            self.update(self._pacer_area())  # most frames: only the pacer moves

    def _pacer_area(self) -> QtCore.QRect:
        lay = participant_layout(self.width(), self.height())
        r = lay.r_max + 4
        square = QtCore.QRectF(lay.center_x - r, lay.center_y - r, 2 * r, 2 * r)
        return square.united(lay.label_rect).toAlignedRect()

    def toggle_pause(self) -> None:
        if self.view is not None and self.view.replay:
            return
        if self.view is not None and self.view.self_paused:
            self.controls.participant_resume(self.participant_id)
        else:
            self.controls.participant_pause(self.participant_id)
        self.refresh()

    def stop(self) -> None:
        if self.view is not None and self.view.replay:
            return
        self.controls.participant_stop(self.participant_id)
        self.refresh()

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        self._place_buttons()
        super().resizeEvent(event)

    def _place_buttons(self) -> None:
        """Size the buttons to their words (the longest either can show) and put them bottom right."""
        h, w = self.height(), self.width()
        f = max(12, round(min(h * 0.024, w * 0.03)))
        py, px = round(f * 0.5), round(f * 1.4)
        # Qt ignores a radius above half the height: height = font line (~1.2 f) + 2 py + borders
        self.setStyleSheet(
            _BUTTON_STYLE % {"r": round((f * 1.2 + 2 * py) / 2) - 1, "f": f, "py": py, "px": px}
        )
        margin = round(min(h, w) * 0.035)
        gap = round(margin * 0.4)
        buttons = ((self.stop_button, ("Stop",)), (self.pause_button, ("Pause", "Continue")))
        for b, words in buttons:
            b.ensurePolished()
            b.setMinimumWidth(0)
            wide = max(b.fontMetrics().horizontalAdvance(word) for word in words)
            b.adjustSize()  # the style's own size for the current word, padding included
            b.setMinimumWidth(b.width() + max(0, wide - b.fontMetrics().horizontalAdvance(b.text())))
            b.adjustSize()
        side_by_side = sum(b.width() for b, _ in buttons) + gap + 2 * margin <= w
        x, y = w - margin, h - margin
        for b, _ in buttons:  # right to left, or stacked bottom up on a narrow screen
            b.move(max(0, x - b.width()), y - b.height())
            if side_by_side:
                x -= b.width() + gap
            else:
                y -= b.height() + gap

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        p = QtGui.QPainter(self)
        try:
            if self.view is None:
                p.fillRect(self.rect(), BG_TOP)
            else:
                dirty = QtCore.QRectF(event.rect())
                paint_participant(p, self.width(), self.height(), self.view, self.state, dirty)
        finally:
            p.end()
