"""The experimenter's monitor: every strap's link, signals and live metrics, the protocol timeline, controls.

The window pulls a `MonitorView` on a timer and updates pre-built plot items in place (`setData` on existing
curves, a pool of gap regions and marker lines that are shown or hidden), so a frame costs little even with
a minute of 130 Hz ECG per strap. Controls go through `SessionControls` only: buttons and keyboard shortcuts
M (marker with a note), Space (pause/resume), N (skip phase), Ctrl+Q (end session, after confirmation).

With LSL outlets (`--lsl`) and a `ConsumerGate`, a bar above the timeline shows, before the session clock starts,
how many streams have a consumer, with "Start when N connected" (the `--lsl-wait` wait) and "Start now".
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from biofeedback.display.common import start_frame_timer
from biofeedback.live.view_model import MonitorView, SessionControls, StrapView, ViewSource
from devices.battery import LOW_BATTERY_PCT, battery_words
from recordings.privacy import FIXED_MARKER_LABELS

if TYPE_CHECKING:
    from biofeedback.live.lsl_outlets import ConsumerGate

log = logging.getLogger(__name__)

ECG_WINDOW_S = 60.0
RR_WINDOW_S = 300.0
RR_SCROLL_S = 0.5
ECG_GROUP_STEP_S = 0.1
"""In a group grid each small ECG trace scrolls at most 10 times a second (the single view: every frame)."""
"""Without a new beat the tachogram scrolls in steps of this many seconds (about 2 px): cheap and calm."""
MARKER_LABELS = FIXED_MARKER_LABELS  # exported without --include-text; a typed label is free text

BACKGROUND = "#1b1f24"
STALE_COLOUR = "#5c6570"
PANEL = "#232930"
FOREGROUND = "#c9d1d9"
MUTED = "#8b949e"
ECG_PEN = pg.mkPen("#7ec8e3", width=1)
RR_PEN = pg.mkPen("#e6edf3", width=1.5)
CORRECTED_BRUSH = pg.mkBrush("#f0a95b")
GAP_BRUSH = pg.mkBrush(214, 96, 88, 60)
CONTACT_GAP_BRUSH = pg.mkBrush(210, 153, 34, 55)
STALE_AFTER_S = 4.0
"""A panel whose last beat is older than this greys its numbers and says how old they are and why."""
LINK_WORDS = {
    "connected": "connected, but no beats are arriving",
    "connecting": "connecting to the strap",
    "reconnecting": "link lost — reconnecting",
    "disconnected": "link lost",
    "closed": "strap closed",
    "failed": "strap failed — see the event log",
}
MARKER_PEN = pg.mkPen("#b392f0", width=1, style=QtCore.Qt.PenStyle.DashLine)
EVENT_PENS = {  # lines in the tachogram: phase boundaries solid, prompts dotted, markers dashed, pauses dash-dot
    "phase_start": pg.mkPen("#9fb3c8", width=1.5),
    "prompt": pg.mkPen("#6e7f91", width=1, style=QtCore.Qt.PenStyle.DotLine),
    "manual": MARKER_PEN,
    "participant": pg.mkPen("#e3b341", width=1.5, style=QtCore.Qt.PenStyle.DashDotLine),
    "pause": pg.mkPen("#e3b341", width=1, style=QtCore.Qt.PenStyle.DashDotLine),
}
ALERT_STYLE = (
    "background: #9e6a03; color: #ffffff; font-size: 17px; font-weight: 600; border-radius: 6px; padding: 8px 12px;"
)
REPLAY_STYLE = "background: #30363d; color: #e6edf3; font-size: 15px; font-weight: 700; padding: 2px 10px;"
PANEL_STYLE = f"#strapPanel {{ background: {PANEL}; border-radius: 6px; }}"
SELECTED_STYLE = f"#strapPanel {{ background: {PANEL}; border-radius: 6px; border: 2px solid #b392f0; }}"

LINK_COLOURS = {
    "connected": "#3fb950",
    "connecting": "#d29922",
    "reconnecting": "#d29922",
    "disconnected": "#f85149",
    "closed": "#8b949e",
}
CONTACT_TEXT = {  # the session's words (from the Heart Rate Measurement flags) and short ones
    "detected": ("skin contact", "#3fb950"),
    "supported not detected": ("no skin contact", "#d29922"),
    "not supported": ("contact n/a", "#8b949e"),
    "ok": ("skin contact", "#3fb950"),
    "lost": ("no skin contact", "#d29922"),
    "unsupported": ("contact n/a", "#8b949e"),
    "unknown": ("contact ?", "#8b949e"),
}
KIND_COLOURS = {
    "baseline": "#4a6274",
    "breathing": "#2f8f83",
    "grounding": "#4f8a4b",
    "imagery": "#b7873a",
    "recall": "#7a5c9e",
    "self-criticism": "#7a5c9e",
    "rest": "#4a6274",
    "recovery": "#3f7190",
}
_FALLBACK_KIND_COLOURS = ("#5a7d9a", "#8a6d9a", "#9a8a5a", "#5a9a8a")


def kind_colour(kind: str) -> QtGui.QColor:
    """A stable colour for a phase kind (unknown kinds get one of a few muted colours, by name)."""
    if kind in KIND_COLOURS:
        return QtGui.QColor(KIND_COLOURS[kind])
    return QtGui.QColor(_FALLBACK_KIND_COLOURS[sum(map(ord, kind)) % len(_FALLBACK_KIND_COLOURS)])


def format_mmss(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    s = max(0, round(seconds))
    return f"{s // 60:02d}:{s % 60:02d}"


def stale_text(s: StrapView, t: float) -> str:
    """Why the strap's numbers are not live ("" when they are): seconds since the last beat and the link in words."""
    link_live = s.link_state == "connected"
    last = s.last_beat_t if s.last_beat_t is not None else (float(s.rr_t[-1]) if len(s.rr_t) else None)
    age = None if last is None else max(0.0, t - last)
    if link_live and age is not None and age < STALE_AFTER_S:
        return ""
    if link_live and age is None:
        return "waiting for the first beat"
    words = LINK_WORDS.get(s.link_state, s.link_state)
    if link_live and s.contact in ("supported not detected", "lost"):
        words = "no skin contact"
    since = "no beat yet" if age is None else f"no beat for {age:.0f} s"
    return f"{since} — {words}"


def battery_html(percent: int | None) -> str:
    """The strap's battery for a panel header: muted when fine, amber with a warning below LOW_BATTERY_PCT."""
    if percent is None:
        return ""
    if percent < LOW_BATTERY_PCT:
        return f"<span style='color:#d29922; font-weight:600'>⚠ {battery_words(percent)}</span>"
    return f"<span style='color:{MUTED}'>{battery_words(percent)}</span>"


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


def rr_connect(rr_t: np.ndarray, gaps: list[tuple[float, float]]) -> np.ndarray:
    """`connect` array for the tachogram: False between two beats that have a gap (any kind) between them."""
    connect = np.ones(len(rr_t), dtype=bool)
    if len(rr_t) < 2 or not gaps:
        return connect
    starts = np.sort(np.array([g[0] for g in gaps]))
    # a gap lies between beats i and i+1 when some gap start falls in [rr_t[i], rr_t[i+1])
    before = np.searchsorted(starts, rr_t, side="right")
    connect[:-1] = before[1:] == before[:-1]
    return connect


class TimelineWidget(QtWidgets.QWidget):
    """The protocol as coloured blocks, the current phase outlined, a playhead at `t` and marker ticks."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.view: MonitorView | None = None
        self.setMinimumHeight(34)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)

    def set_view(self, view: MonitorView) -> None:
        self.view = view
        self.update()

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        p = QtGui.QPainter(self)
        try:
            self._paint(p)
        finally:
            p.end()

    def _paint(self, p: QtGui.QPainter) -> None:
        p.fillRect(self.rect(), QtGui.QColor(PANEL))
        v = self.view
        if v is None or not v.phases:
            return
        t0 = min(ph[2] for ph in v.phases)
        t1 = max(max(ph[3] for ph in v.phases), v.t)
        span = max(t1 - t0, 1e-9)
        w, h = self.width() - 2, self.height() - 2

        def x(t: float) -> float:
            return 1 + (t - t0) / span * w

        p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing, True)
        font = p.font()
        font.setPixelSize(11)
        p.setFont(font)
        for i, (name, kind, start, end) in enumerate(v.phases):
            rect = QtCore.QRectF(x(start), 4, max(1.0, x(end) - x(start)), h - 6)
            colour = kind_colour(kind)
            if i < v.current_phase_index:
                colour = colour.darker(150)
            p.setPen(QtCore.Qt.PenStyle.NoPen)
            p.setBrush(colour)
            p.drawRoundedRect(rect.adjusted(1, 0, -1, 0), 3, 3)
            if i == v.current_phase_index:
                p.setBrush(QtCore.Qt.BrushStyle.NoBrush)
                p.setPen(QtGui.QPen(QtGui.QColor("#ffffff"), 2))
                p.drawRoundedRect(rect.adjusted(1, -1, -1, 1), 3, 3)
            p.setPen(QtGui.QColor("#f0f3f6"))
            text = p.fontMetrics().elidedText(name, QtCore.Qt.TextElideMode.ElideRight, int(rect.width()) - 6)
            p.drawText(rect.adjusted(3, 0, -3, 0), QtCore.Qt.AlignmentFlag.AlignCenter, text)
        p.setPen(QtGui.QPen(QtGui.QColor("#b392f0"), 1))
        for mt, _label in v.markers:
            p.drawLine(QtCore.QPointF(x(mt), 1), QtCore.QPointF(x(mt), 6))
        p.setPen(QtGui.QPen(QtGui.QColor("#ffd479"), 2))
        p.drawLine(QtCore.QPointF(x(v.t), 0), QtCore.QPointF(x(v.t), h + 2))


def _signature(t: np.ndarray) -> tuple[int, float, float]:
    return (len(t), float(t[0]), float(t[-1])) if len(t) else (0, 0.0, 0.0)


class StrapPanel(QtWidgets.QFrame):
    """One strap: header (participant, device, link, contact), metrics, ECG (when present) and tachogram.

    A click anywhere on the panel calls `on_click` (the monitor makes its participant the marker target)."""

    def __init__(self, device_id: str, compact: bool, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.device_id = device_id
        self.participant_id = ""
        self.on_click: Callable[[StrapPanel], None] | None = None
        self.selected = False
        self.setObjectName("strapPanel")
        self.setStyleSheet(PANEL_STYLE)
        base = 12 if compact else 14
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 6)
        lay.setSpacing(2)
        head = QtWidgets.QHBoxLayout()
        self.title = QtWidgets.QLabel()
        self.title.setStyleSheet(f"color: {FOREGROUND}; font-size: {base + 2}px; font-weight: 600;")
        self.link = QtWidgets.QLabel()
        self.contact = QtWidgets.QLabel()
        self.battery = QtWidgets.QLabel()
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.battery)
        head.addSpacing(10)
        head.addWidget(self.contact)
        head.addSpacing(10)
        head.addWidget(self.link)
        lay.addLayout(head)
        self.metrics = QtWidgets.QLabel()
        self.metrics.setStyleSheet(f"color: {FOREGROUND}; font-size: {base + (1 if compact else 4)}px;")
        self.metrics.setTextFormat(QtCore.Qt.TextFormat.RichText)
        lay.addWidget(self.metrics)
        self._base = base

        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground(PANEL)
        self.plots.ci.setContentsMargins(0, 0, 0, 0)
        self.plots.ci.setSpacing(2)
        lay.addWidget(self.plots, 1)

        self.ecg_plot = self.plots.addPlot(row=0, col=0)
        self.rr_plot = self.plots.addPlot(row=1, col=0)
        for plot, ylabel in ((self.ecg_plot, "ECG µV"), (self.rr_plot, "RR ms")):
            plot.setMenuEnabled(False)
            plot.setMouseEnabled(x=False, y=False)
            plot.hideButtons()
            plot.setLabel("left", ylabel, color=MUTED)
            plot.getAxis("left").setWidth(48)
            plot.enableAutoRange(x=False, y=True)
            plot.setAutoVisible(y=True)
        # x is seconds relative to now: the axes stay still while the data scrolls, so they are not re-laid
        # out every frame (and grids are left out: their translucent lines dominated the frame time)
        self.ecg_plot.setXRange(-ECG_WINDOW_S, 0, padding=0)
        self.rr_plot.setXRange(-RR_WINDOW_S, 0, padding=0)
        self.rr_plot.setLabel("bottom", "seconds before now", color=MUTED)
        self.ecg_curve = self.ecg_plot.plot(pen=ECG_PEN, skipFiniteCheck=True)
        self.ecg_curve.setClipToView(True)
        self.ecg_curve.setDownsampling(auto=True, method="peak")
        self.rr_curve = self.rr_plot.plot(pen=RR_PEN)
        self.corrected = pg.ScatterPlotItem(size=7, pen=None, brush=CORRECTED_BRUSH, symbol="o")
        self.rr_plot.addItem(self.corrected)
        self.gap_regions: list[pg.LinearRegionItem] = []
        self.contact_regions: list[pg.LinearRegionItem] = []
        self.marker_lines: list[pg.InfiniteLine] = []
        self.plots.ci.layout.setRowStretchFactor(0, 2)
        self.plots.ci.layout.setRowStretchFactor(1, 3)
        self._ecg_sig: tuple[int, float, float] | None = None
        self._rr_sig: tuple[object, ...] | None = None
        self._rr_t0 = -math.inf
        self._ecg_t0 = -math.inf
        self._ecg_step = ECG_GROUP_STEP_S if compact else 0.0
        self._has_ecg: bool | None = None
        self._text: tuple[str, str, str] | None = None
        self.stale = ""

    def _gap_region(self, i: int, pool: list[pg.LinearRegionItem] | None = None) -> pg.LinearRegionItem:
        pool = self.gap_regions if pool is None else pool
        while len(pool) <= i:
            brush = GAP_BRUSH if pool is self.gap_regions else CONTACT_GAP_BRUSH
            region = pg.LinearRegionItem(movable=False, brush=brush, pen=pg.mkPen(None))
            region.setZValue(-10)
            self.rr_plot.addItem(region)
            pool.append(region)
        return pool[i]

    def _marker_line(self, i: int) -> pg.InfiniteLine:
        while len(self.marker_lines) <= i:
            line = pg.InfiniteLine(angle=90, movable=False, pen=MARKER_PEN)
            line.kind = "manual"
            self.rr_plot.addItem(line)
            self.marker_lines.append(line)
        return self.marker_lines[i]

    def mousePressEvent(self, event: QtGui.QMouseEvent) -> None:
        if self.on_click is not None:
            self.on_click(self)
        super().mousePressEvent(event)

    def set_selected(self, selected: bool) -> None:
        if selected != self.selected:
            self.selected = selected
            self.setStyleSheet(SELECTED_STYLE if selected else PANEL_STYLE)

    def set_strap(self, s: StrapView, t: float, markers: list[tuple[float, str]], alert: str = "") -> None:
        """Show strap `s` at time `t`; `markers` are (t, kind) lines for the tachogram, `alert` a participant's
        own pause or stop ("paused", "stopped") shown in the header."""
        self.participant_id = s.participant_id
        title = f"{s.participant_id or '—'} <span style='color:{MUTED}; font-weight:400'>{s.device_id}</span>"
        if alert:
            title += f" <span style='color:#e3b341'>— {alert} by {s.participant_id}</span>"
        link_colour = LINK_COLOURS.get(s.link_state, MUTED)
        link = f"<span style='color:{link_colour}'>● {s.link_state}</span>"
        # skin contact is only known over a live link: a reconnecting strap's last word is not shown as current
        contact_key = s.contact if s.link_state == "connected" else "unknown"
        contact_text, contact_colour = CONTACT_TEXT.get(contact_key, (contact_key, MUTED))
        contact = f"<span style='color:{contact_colour}'>{contact_text}</span>"
        big = self._base + 6
        stale = stale_text(s, t)
        metrics = (
            f"HR <b style='font-size:{big}px'>{_fmt(s.hr_bpm, '.0f')}</b> bpm &nbsp;&nbsp; "
            f"RMSSD <b style='font-size:{big}px'>{_fmt(s.rmssd_ms, '.0f')}</b> ms &nbsp;&nbsp; "
            f"coherence <b>{_fmt(s.coherence, '.2f')}</b> &nbsp;&nbsp; "
            f"artifacts <b>{s.artifacts}</b>"
        )
        if stale:  # never shown as live: the last numbers greyed, and how old they are and why
            metrics = (
                f"<span style='color:{STALE_COLOUR}'>{metrics}</span><br>"
                f"<span style='color:#d29922; font-weight:600'>{stale}</span>"
            )
        self.stale = stale
        battery = battery_html(s.battery_pct)
        if self._text != (title, link + contact + battery, metrics):
            self.title.setText(title)
            self.link.setText(link)
            self.contact.setText(contact)
            self.battery.setText(battery)
            self.metrics.setText(metrics)
            self._text = (title, link + contact + battery, metrics)

        has_ecg = len(s.ecg_t) > 0
        if has_ecg != self._has_ecg:
            self.ecg_plot.setVisible(has_ecg)
            self.plots.ci.layout.setRowMaximumHeight(0, 1e6 if has_ecg else 0)
            self._has_ecg = has_ecg
        if has_ecg:
            sig = (*_signature(s.ecg_t), t)
            if sig != self._ecg_sig and abs(t - self._ecg_t0) >= self._ecg_step:
                self._ecg_t0 = t
                i0 = int(np.searchsorted(s.ecg_t, t - ECG_WINDOW_S))
                self.ecg_curve.setData(s.ecg_t[i0:] - t, s.ecg_uv[i0:])
                self._ecg_sig = sig

        # The tachogram changes once a beat: redraw it on new data, and scroll it only every RR_SCROLL_S.
        rr_sig = (*_signature(s.rr_t), len(s.gaps), s.gaps[-1] if s.gaps else None, len(markers),
                  len(s.contact_gaps), s.contact_gaps[-1] if s.contact_gaps else None)  # fmt: skip
        if rr_sig == self._rr_sig and abs(t - self._rr_t0) < RR_SCROLL_S:
            return
        self._rr_sig, self._rr_t0 = rr_sig, t
        lo = t - RR_WINDOW_S
        i0 = int(np.searchsorted(s.rr_t, lo))
        rr_t, rr_ms, fixed = s.rr_t[i0:], s.rr_ms[i0:], s.rr_corrected[i0:]
        self.rr_curve.setData(rr_t - t, rr_ms, connect=rr_connect(rr_t, [*s.gaps, *s.contact_gaps]))
        self.corrected.setData(rr_t[fixed] - t, rr_ms[fixed])
        visible_gaps = [g for g in s.gaps if g[1] >= lo]
        for i, (g0, g1) in enumerate(visible_gaps):
            region = self._gap_region(i)
            region.setRegion((g0 - t, g1 - t))
            region.setVisible(True)
        for region in self.gap_regions[len(visible_gaps) :]:
            region.setVisible(False)
        no_contact = [g for g in s.contact_gaps if g[1] >= lo]
        for i, (g0, g1) in enumerate(no_contact):
            region = self._gap_region(i, self.contact_regions)
            region.setRegion((g0 - t, g1 - t))
            region.setVisible(True)
        for region in self.contact_regions[len(no_contact) :]:
            region.setVisible(False)
        visible_markers = [m for m in markers if m[0] >= lo]
        for i, (mt, kind) in enumerate(visible_markers):
            line = self._marker_line(i)
            kind = "pause" if kind in ("resume", "skip", "stop") else kind
            if line.kind != kind:
                line.setPen(EVENT_PENS.get(kind, MARKER_PEN))
                line.kind = kind
            line.setValue(mt - t)
            line.setVisible(True)
        for line in self.marker_lines[len(visible_markers) :]:
            line.setVisible(False)


SINGLE_KEYS = frozenset(
    {QtCore.Qt.Key.Key_M, QtCore.Qt.Key.Key_Space, QtCore.Qt.Key.Key_N}
    | {QtCore.Qt.Key(QtCore.Qt.Key.Key_0.value + n) for n in range(10)}
)


class ShortcutKeys(QtCore.QObject):
    """Lets the window's single-key shortcuts act whatever widget in it has focus (but the note being typed).

    Qt first offers a key to the focused widget as a ShortcutOverride; a text field, combo box or view that
    accepts it takes the key and the shortcut never fires. This filter (on the application) withholds that
    offer for `keys` inside `window`, except from `typing`, where the key is text. It removes itself with
    the window.
    """

    def __init__(self, window: QtWidgets.QWidget, keys: frozenset, typing: QtWidgets.QWidget) -> None:
        super().__init__(window)
        self.window = window
        self.keys = keys
        self.typing = typing
        self.on_typing_focus: Callable[[], None] | None = None
        app = QtWidgets.QApplication.instance()
        app.installEventFilter(self)

    def eventFilter(self, obj: QtCore.QObject, event: QtCore.QEvent) -> bool:
        kind = event.type()
        if obj is self.typing and kind == QtCore.QEvent.Type.FocusIn and self.on_typing_focus is not None:
            self.on_typing_focus()
            return False
        # True without accepting the offer: the shortcut gets the key
        return (
            kind == QtCore.QEvent.Type.ShortcutOverride
            and isinstance(obj, QtWidgets.QWidget)
            and obj is not self.typing
            and obj.window() is self.window
            and event.key() in self.keys  # type: ignore[attr-defined]
            and not (event.modifiers() & ~QtCore.Qt.KeyboardModifier.KeypadModifier)  # type: ignore[attr-defined]
        )


class LslStartBar(QtWidgets.QFrame):
    """Before the session clock starts: LSL streams with a consumer, "Start when N connected", "Start now"."""

    def __init__(self, gate: ConsumerGate, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.gate = gate
        self.setObjectName("lslStart")
        self.setStyleSheet(f"#lslStart {{ background: {PANEL}; border-radius: 6px; }}")
        row = QtWidgets.QHBoxLayout(self)
        row.setContentsMargins(10, 6, 10, 6)
        self.status = QtWidgets.QLabel()
        self.status.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.count = QtWidgets.QSpinBox()
        self.count.setRange(1, max(1, gate.total))
        self.count.setValue(gate.waiting_for or gate.total)
        self.count.setPrefix("N = ")
        self.count.valueChanged.connect(self._label_buttons)
        self.when_button = QtWidgets.QPushButton()
        self.now_button = QtWidgets.QPushButton("Start now")
        for w in (self.count, self.when_button, self.now_button):
            w.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)  # Space, M and N keep their meaning
        self.when_button.clicked.connect(lambda: self.gate.start_when(self.count.value()))
        self.now_button.clicked.connect(self.gate.start_now)
        row.addWidget(self.status, 1)
        row.addWidget(self.count)
        row.addWidget(self.when_button)
        row.addWidget(self.now_button)
        self._label_buttons()
        self.refresh()

    def _label_buttons(self) -> None:
        self.when_button.setText(f"Start when {self.count.value()} connected")

    def refresh(self) -> None:
        """Called every frame until the gate opens; then the bar hides for good."""
        if self.gate.is_open:
            self.hide()
            return
        have, total = self.gate.consumed(), self.gate.total
        text = f"Lab Streaming Layer: {have} of {total} streams have a consumer; the session clock has not started"
        if self.gate.waiting_for is not None:
            text += f" — starting when {self.gate.waiting_for} are connected"
        if self.gate.message:
            text += f" — {self.gate.message}"
        if self.status.text() != text:
            self.status.setText(text)


class MonitorWindow(QtWidgets.QMainWindow):
    """The experimenter's window; pulls `source.monitor_view()` at `fps` and acts through `controls`."""

    def __init__(
        self,
        source: ViewSource,
        controls: SessionControls,
        fps: float = 30.0,
        parent: QtWidgets.QWidget | None = None,
        lsl_gate: ConsumerGate | None = None,
    ) -> None:
        super().__init__(parent)
        self.source = source
        self.controls = controls
        self.view: MonitorView | None = None
        self.panels: dict[str, StrapPanel] = {}
        self.confirm_end: Callable[[], bool] = self._ask_end
        self.target: str | None = None  # the participant markers and notes are for (None: the whole group)
        self._dismissed: set[tuple[str, str, float]] = set()
        self._marker_t: float | None = None
        self._marker_open = False
        self._last_error = ""
        self.setWindowTitle("Session monitor")
        self.resize(1280, 800)

        central = QtWidgets.QWidget()
        central.setObjectName("monitor")
        central.setStyleSheet(
            f"#monitor {{ background: {BACKGROUND}; }} QLabel {{ color: {FOREGROUND}; }}"
            f"QPushButton {{ color: {FOREGROUND}; background: #2d333b; border: 1px solid #444c56;"
            " border-radius: 4px; padding: 5px 12px; }"
            "QPushButton:hover { background: #373e47; }"
            f"QLineEdit, QComboBox {{ color: {FOREGROUND}; background: #2d333b; border: 1px solid #444c56;"
            " border-radius: 4px; padding: 4px; }"
            f"QListWidget {{ color: {FOREGROUND}; background: {PANEL}; border: none; }}"
        )
        self.setCentralWidget(central)
        root = QtWidgets.QVBoxLayout(central)
        root.setContentsMargins(10, 8, 10, 8)
        root.setSpacing(6)

        top = QtWidgets.QHBoxLayout()
        self.protocol_label = QtWidgets.QLabel()
        self.protocol_label.setStyleSheet("font-size: 16px; font-weight: 600;")
        self.phase_label = QtWidgets.QLabel()
        self.phase_label.setStyleSheet("font-size: 15px;")
        self.clock_label = QtWidgets.QLabel()
        self.clock_label.setStyleSheet(f"font-size: 15px; color: {MUTED};")
        self.replay_label = QtWidgets.QLabel("REPLAY — watching a stored session; nothing is recorded")
        self.replay_label.setStyleSheet(REPLAY_STYLE)
        self.replay_label.setVisible(False)
        top.addWidget(self.replay_label)
        top.addWidget(self.protocol_label)
        top.addSpacing(16)
        top.addWidget(self.phase_label, 1)
        top.addWidget(self.clock_label)
        root.addLayout(top)
        self.lsl_bar = LslStartBar(lsl_gate) if lsl_gate is not None else None
        if self.lsl_bar is not None:
            root.addWidget(self.lsl_bar)
        self.alert_label = QtWidgets.QLabel()  # a strap or the store stopped recording (MonitorView.alerts)
        self.alert_label.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.alert_label.setWordWrap(True)
        self.alert_label.setStyleSheet("color: #d29922; font-size: 14px; font-weight: 600;")
        self.alert_label.hide()
        root.addWidget(self.alert_label)
        self.timeline = TimelineWidget()
        root.addWidget(self.timeline)
        self.alert_banner = QtWidgets.QPushButton()  # a participant paused or stopped: never only a log line
        self.alert_banner.setStyleSheet(f"QPushButton {{ {ALERT_STYLE} text-align: left; }}")
        self.alert_banner.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        self.alert_banner.setToolTip("Click when you have seen to it")
        self.alert_banner.setVisible(False)
        self.alert_banner.clicked.connect(self.dismiss_alerts)
        root.addWidget(self.alert_banner)

        bar = QtWidgets.QHBoxLayout()
        self.pause_button = QtWidgets.QPushButton("Pause group  [Space]")
        self.skip_button = QtWidgets.QPushButton("Skip phase  [N]")
        self.marker_button = QtWidgets.QPushButton("Marker  [M]")
        self.end_button = QtWidgets.QPushButton("End session  [Ctrl+Q]")
        # The label is picked, not typed: an editable box would swallow M, Space and N. Free text goes in the note.
        self.marker_label = QtWidgets.QComboBox()
        self.marker_label.addItems(MARKER_LABELS)
        self.marker_edit = QtWidgets.QLineEdit()
        self.marker_edit.setPlaceholderText("marker note — M to start, Enter to save, Esc to cancel")
        for b in (self.pause_button, self.skip_button, self.marker_button, self.end_button, self.marker_label):
            b.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        bar.addWidget(self.pause_button)
        bar.addWidget(self.skip_button)
        bar.addSpacing(16)
        self.target_label = QtWidgets.QLabel()
        self.target_label.setToolTip("Click a participant's panel (or press 1–9) for them, again (or 0) for the group")
        bar.addWidget(self.marker_button)
        bar.addWidget(self.target_label)
        bar.addWidget(self.marker_label)
        bar.addWidget(self.marker_edit, 1)
        bar.addSpacing(16)
        bar.addWidget(self.end_button)
        root.addLayout(bar)

        self.grid_host = QtWidgets.QWidget()
        self.grid = QtWidgets.QGridLayout(self.grid_host)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(6)
        root.addWidget(self.grid_host, 1)
        self.marker_list = QtWidgets.QListWidget()
        self.marker_list.setMaximumHeight(64)
        self.marker_list.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
        root.addWidget(self.marker_list)
        self._markers_shown = 0

        self.pause_button.clicked.connect(self.toggle_pause)
        self.skip_button.clicked.connect(self.skip_phase)
        self.marker_button.clicked.connect(self.begin_marker)
        self.end_button.clicked.connect(self.end_session)
        self.marker_edit.returnPressed.connect(self.commit_marker)
        shortcuts = (
            (QtCore.Qt.Key.Key_M, self.begin_marker),
            (QtCore.Qt.Key.Key_Space, self.toggle_pause),
            (QtCore.Qt.Key.Key_N, self.skip_phase),
            (QtGui.QKeySequence("Ctrl+Q"), self.end_session),
        )
        for key, slot in shortcuts:
            QtGui.QShortcut(QtGui.QKeySequence(key), self, slot)
        for n in range(10):  # 1-9: that panel's participant, 0: the whole group
            QtGui.QShortcut(QtGui.QKeySequence(str(n)), self, lambda n=n: self.select_panel(n))
        QtGui.QShortcut(QtGui.QKeySequence(QtCore.Qt.Key.Key_Escape), self.marker_edit, self.cancel_marker)
        self._keys = ShortcutKeys(self, SINGLE_KEYS, typing=self.marker_edit)
        self._keys.on_typing_focus = self._note_focused  # clicking into the note starts a marker too
        central.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)  # focus rests somewhere harmless

        self.timer = start_frame_timer(self, fps, self.refresh)
        self.refresh()
        self.select_target(None)

    # --- controls -------------------------------------------------------------------------------------------
    def _live(self) -> bool:
        """False while replaying: the controls then do nothing (a replay records nothing)."""
        return self.view is None or not self.view.replay

    def select_target(self, participant_id: str | None) -> None:
        """Markers and notes from now on are for this participant only (None: for the whole group)."""
        self.target = participant_id
        for panel in self.panels.values():
            panel.set_selected(participant_id is not None and panel.participant_id == participant_id)
        self.target_label.setText(f"for <b>{participant_id}</b>" if participant_id else "for the whole group")

    def select_panel(self, n: int) -> None:
        """Key 1–9: the n-th panel's participant (again: the group); 0: the whole group."""
        panels = list(self.panels.values())
        if n == 0 or n > len(panels):
            self.select_target(None)
        else:
            pid = panels[n - 1].participant_id
            self.select_target(None if self.target == pid else pid)

    def _panel_clicked(self, panel: StrapPanel) -> None:
        self.select_target(None if self.target == panel.participant_id else panel.participant_id)

    def dismiss_alerts(self) -> None:
        """The experimenter has seen the alerts shown now (new ones show again)."""
        if self.view is not None:
            self._dismissed |= {(a.participant_id, a.state, a.t) for a in self.view.participant_alerts}
        self.alert_banner.setVisible(False)

    def begin_marker(self) -> None:
        """Start a marker at this moment: focus the note field (Enter saves, Esc cancels)."""
        if not self._live():
            return
        self._marker_t = None if self.view is None else self.view.t  # the marker is for when M was pressed
        self._marker_open = True
        self.marker_edit.setFocus(QtCore.Qt.FocusReason.ShortcutFocusReason)
        self.marker_edit.selectAll()

    def _note_focused(self) -> None:
        if not self._marker_open:  # clicked into the note: the marker is for this moment
            self._marker_t = None if self.view is None else self.view.t
            self._marker_open = True

    def commit_marker(self) -> None:
        label = self.marker_label.currentText().strip() or MARKER_LABELS[0]
        if self._live():
            self.controls.add_marker(label, self.marker_edit.text().strip(), self._marker_t, participant_id=self.target)
        self._marker_t = None
        self._marker_open = False
        self.marker_edit.clear()
        self.marker_edit.clearFocus()
        self.centralWidget().setFocus()

    def cancel_marker(self) -> None:
        self._marker_t = None
        self._marker_open = False
        self.marker_edit.clear()
        self.marker_edit.clearFocus()
        self.centralWidget().setFocus()

    def toggle_pause(self) -> None:
        if not self._live():
            return
        try:
            paused = self.source.monitor_view().paused
        except Exception:
            paused = self.view.paused if self.view is not None else False
        if paused:
            self.controls.resume()
        else:
            self.controls.pause()
        self.refresh()

    def skip_phase(self) -> None:
        if not self._live():
            return
        self.controls.skip_phase()
        self.refresh()

    def end_session(self) -> None:
        if self.confirm_end():
            self.controls.end_session()
            self.refresh()
        else:  # cancelled: take the keyboard back (without a window manager nobody else gives it back)
            self.activateWindow()
            self.centralWidget().setFocus(QtCore.Qt.FocusReason.OtherFocusReason)

    def _ask_end(self) -> bool:
        answer = QtWidgets.QMessageBox.question(
            self,
            "End session",
            "End the session now? Recording stops for every strap.",
            QtWidgets.QMessageBox.StandardButton.Yes | QtWidgets.QMessageBox.StandardButton.Cancel,
            QtWidgets.QMessageBox.StandardButton.Cancel,
        )
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    # --- frames ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Pull one view and update the widgets in place; a failing source keeps the last frame."""
        try:
            view = self.source.monitor_view()
        except Exception as exc:  # the display must never take the session down
            if str(exc) != self._last_error:
                log.exception("monitor view failed; keeping the last frame")
                self._last_error = str(exc)
            return
        self._last_error = ""
        self.view = view
        if self.lsl_bar is not None and not self.lsl_bar.isHidden():
            self.lsl_bar.refresh()
        self._update_header(view)
        self.timeline.set_view(view)
        self._ensure_panels([s.device_id for s in view.straps])
        alerts = {a.participant_id: a.state for a in view.participant_alerts}
        for s in view.straps:
            if view.events:
                lines = [(e.t, e.kind) for e in view.events if e.kind != "phase_end" and e.applies_to(s.participant_id)]
            else:
                lines = [(mt, "manual") for mt, _label in view.markers]
            self.panels[s.device_id].set_strap(s, view.t, lines, alerts.get(s.participant_id, ""))
        self._update_alerts(view)
        log_entries = view.events or view.markers
        if len(log_entries) != self._markers_shown:
            for entry in log_entries[self._markers_shown :]:
                if isinstance(entry, tuple):
                    self.marker_list.insertItem(0, f"{format_mmss(entry[0])}  marker: {entry[1]}")
                else:
                    self.marker_list.insertItem(0, f"{format_mmss(entry.t)}  {entry.describe()}")
            self._markers_shown = len(log_entries)

    def _update_alerts(self, v: MonitorView) -> None:
        shown = [a for a in v.participant_alerts if (a.participant_id, a.state, a.t) not in self._dismissed]
        text = "   ·   ".join(
            f"⚠ {a.participant_id} {a.state} their display at {format_mmss(a.t)}" for a in shown
        )
        if shown:
            text += "   — they were told you have been let know (click when seen to)"
        if self.alert_banner.text() != text:
            self.alert_banner.setText(text)
        self.alert_banner.setVisible(bool(shown))

    def _update_header(self, v: MonitorView) -> None:
        self.protocol_label.setText(v.protocol_name)
        n = len(v.phases)
        if 0 <= v.current_phase_index < n:
            name, kind, _s, _e = v.phases[v.current_phase_index]
            phase = (
                f"Phase {v.current_phase_index + 1}/{n}: <b>{name}</b> "
                f"<span style='color:{MUTED}'>({kind})</span> — {format_mmss(v.phase_time_left_s)} left"
            )
        elif v.current_phase_index >= n:
            phase = "Protocol finished"
        else:
            phase = "Not started"
        if v.waiting_for_marker is not None:
            marker = html.escape(v.waiting_for_marker)
            phase += f" &nbsp;<span style='color:#d29922'>waiting for marker <b>{marker}</b></span>"
        if v.paused:
            phase += " &nbsp;<span style='color:#d29922'><b>PAUSED</b></span>"
        if self.phase_label.text() != phase:
            self.phase_label.setText(phase)
        self.clock_label.setText(f"session {format_mmss(v.t)}")
        alerts = "\n".join(v.alerts)
        if alerts and self.alert_label.text() != alerts:
            self.alert_label.setText(alerts)
            self.alert_label.show()
        label = "Resume group  [Space]" if v.paused else "Pause group  [Space]"
        if self.pause_button.text() != label:
            self.pause_button.setText(label)
        if self.replay_label.isVisible() != v.replay:
            self.replay_label.setVisible(v.replay)
            self.setWindowTitle("Session monitor — REPLAY" if v.replay else "Session monitor")
            for b in (self.pause_button, self.skip_button, self.marker_button, self.marker_edit, self.marker_label):
                b.setEnabled(not v.replay)

    def _ensure_panels(self, device_ids: list[str]) -> None:
        if list(self.panels) == device_ids:
            return
        for panel in self.panels.values():
            self.grid.removeWidget(panel)
            panel.deleteLater()
        self.panels = {}
        n = len(device_ids)
        cols = 1 if n <= 1 else 2 if n <= 4 else 3 if n <= 9 else 4
        for i, dev in enumerate(device_ids):
            panel = StrapPanel(dev, compact=n > 1)
            panel.on_click = self._panel_clicked
            self.grid.addWidget(panel, i // cols, i % cols)
            self.panels[dev] = panel


def qr_image(url: str, scale: int = 4) -> QtGui.QImage:
    """`url` as a QR code image (dark on white, with the quiet zone phone cameras need)."""
    import io

    import segno  # the `web` extra, needed only with --web-display

    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="png", scale=scale, border=4)
    image = QtGui.QImage()
    if not image.loadFromData(buf.getvalue(), "PNG"):
        raise ValueError("could not draw the QR code")
    return image


class ParticipantLinks(QtWidgets.QDockWidget):
    """Each participant's own web display page: their code, a QR code to scan with the tablet, the URL."""

    def __init__(self, links: dict[str, str], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Participant pages", parent)
        self.setObjectName("participantLinks")
        self.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetClosable
                         | QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable)  # fmt: skip
        inner = QtWidgets.QWidget()
        inner.setStyleSheet(f"background: {PANEL}; color: {FOREGROUND};")
        grid = QtWidgets.QGridLayout(inner)
        self.codes: dict[str, QtWidgets.QLabel] = {}
        for i, (pid, url) in enumerate(links.items()):
            cell = QtWidgets.QVBoxLayout()
            name = QtWidgets.QLabel(pid)
            name.setStyleSheet("font-size: 15px; font-weight: 600;")
            code = QtWidgets.QLabel()
            code.setPixmap(QtGui.QPixmap.fromImage(qr_image(url)))
            code.setToolTip(f"{pid}: scan with the tablet or phone {pid} will use")
            text = QtWidgets.QLabel(url)
            text.setStyleSheet(f"font-size: 10px; color: {MUTED};")
            text.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
            text.setWordWrap(True)
            text.setMaximumWidth(code.pixmap().width())
            for w in (name, code, text):
                cell.addWidget(w)
            cell.addStretch(1)
            grid.addLayout(cell, i // 2, i % 2)
            self.codes[pid] = code
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(inner)
        scroll.setWidgetResizable(True)
        self.setWidget(scroll)


def add_participant_links(window: QtWidgets.QMainWindow, links: dict[str, str]) -> ParticipantLinks:
    """Show the participants' page QR codes docked at the right of the monitor (close it once they are in)."""
    dock = ParticipantLinks(links, window)
    window.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
    return dock
