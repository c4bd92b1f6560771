"""The beat review window (`app.py review SESSION`): RR tachogram and ECG on the session clock, edits by click or key.

Top: the RR tachogram of the reviewed beats (grey dots, hollow where left out; the automatic correction's result as
an orange dashed line; corrections still to decide as orange rings, accepted green, rejected blue; beats marked as
artifacts red crosses, added beats green pluses; bad segments shaded). Below it, where recorded, the ECG with a tick
at every beat. Clicking either plot selects the nearest beat and puts the cursor there (on the ECG it snaps to the
R-peak within 80 ms); Shift-drag on the tachogram selects a span for a bad segment (or `[` and `]` set its start and
end at the selected beat). Keys (and the buttons showing them): ←/→ previous/next beat, N/P next/previous
correction, A accept, R reject, M mark, U unmark, D delete the selected beat, B add a beat at the cursor, S store
the selected span as a bad segment of the chosen kind, Ctrl+Z undo. Every edit goes through
`beat_source.record_edit` / `recordings.review.undo_last`, so it is stored with time, reviewer and reason; the
phase table (RMSSD, grade, edits) and the audit list update after each edit.

The window is handed a `biofeedback.analysis.review_session.ReviewSession` (by `app.py`): it draws the model's
state and calls its `record` / `undo`, and never imports the analysis layer itself.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from recordings.review import SEGMENT_KINDS, ReviewError
from recordings.store import StoreError

R_PEAK_SNAP_S = 0.08
CORRECTION_REACH_S = 2.0
"""Accept/reject act on the correction nearest the selected beat, when it is at most this far away."""
BEAT_BRUSH = pg.mkBrush("#9aa7b4")
FADED_BRUSH = pg.mkBrush(None)
FADED_PEN = pg.mkPen("#9aa7b4", width=1)
NO_PEN = pg.mkPen(None)
"""Left-out beats (marked, in or touching a bad segment) are drawn hollow."""
SEGMENT_BRUSHES = {"noise": pg.mkBrush(214, 96, 88, 55), "movement": pg.mkBrush(210, 153, 34, 55),
                   "other": pg.mkBrush(150, 150, 170, 55)}  # fmt: skip
SELECT_PEN = pg.mkPen("#e3b341", width=1.5)
CURSOR_PEN = pg.mkPen("#7ee787", width=1, style=QtCore.Qt.PenStyle.DashLine)


class _SpanViewBox(pg.ViewBox):
    """A ViewBox where Shift + left drag selects a time span (`on_span(start, end, finished)`)."""

    def __init__(self, on_span) -> None:
        super().__init__()
        self._on_span = on_span

    def mouseDragEvent(self, ev, axis=None) -> None:
        shift = bool(ev.modifiers() & QtCore.Qt.KeyboardModifier.ShiftModifier)
        if shift and ev.button() == QtCore.Qt.MouseButton.LeftButton:
            ev.accept()
            a = self.mapSceneToView(ev.buttonDownScenePos()).x()
            b = self.mapSceneToView(ev.scenePos()).x()
            self._on_span(min(a, b), max(a, b), ev.isFinish())
        else:
            super().mouseDragEvent(ev, axis)


class ReviewWindow(QtWidgets.QMainWindow):
    """Review one session's beats through `model` (a `ReviewSession` on a writable store: edits are stored at once)."""

    def __init__(self, model, reviewer: str = "") -> None:
        super().__init__()
        self.model = model
        self.setWindowTitle(f"Beat review · session {model.session_id} · {model.info.participant_id}")
        self.ecg = model.ecg
        self.windows = model.windows
        self.sel_t: float | None = None
        self.cursor_t: float | None = None
        self.span: tuple[float, float] | None = None
        self.buttons: dict[str, QtWidgets.QPushButton] = {}
        self._build(reviewer)
        self.refresh()
        if len(self.state.edited.t):
            self.select_beat(float(self.state.edited.t[0]))
        self._view_all()
        self.plots.setFocus()

    # -- layout -------------------------------------------------------------------------------------------------
    def _build(self, reviewer: str) -> None:
        central = QtWidgets.QWidget()
        self.setCentralWidget(central)
        outer = QtWidgets.QVBoxLayout(central)
        top = QtWidgets.QHBoxLayout()
        self.reviewer_edit = QtWidgets.QLineEdit(reviewer)
        self.reviewer_edit.setPlaceholderText("initials or code")
        self.reviewer_edit.setMaximumWidth(140)
        self.reason_edit = QtWidgets.QLineEdit()
        self.reason_edit.setPlaceholderText("reason (kept with each edit)")
        self.kind_combo = QtWidgets.QComboBox()
        self.kind_combo.addItems(list(SEGMENT_KINDS))
        for label, widget in (("&Reviewer", self.reviewer_edit), ("Rea&son", self.reason_edit),
                              ("Segment &kind", self.kind_combo)):  # fmt: skip
            lab = QtWidgets.QLabel(label)
            lab.setBuddy(widget)
            top.addWidget(lab)
            top.addWidget(widget, 1 if widget is self.reason_edit else 0)
        outer.addLayout(top)
        bar = QtWidgets.QHBoxLayout()
        actions = [
            ("prev_beat", "◀ beat", "Left", lambda: self.step_beat(-1)),
            ("next_beat", "beat ▶", "Right", lambda: self.step_beat(1)),
            ("prev_corr", "◀ correction (P)", "P", lambda: self.step_correction(-1)),
            ("next_corr", "correction ▶ (N)", "N", lambda: self.step_correction(1)),
            ("accept", "Accept (A)", "A", lambda: self.decide("accept")),
            ("reject", "Reject (R)", "R", lambda: self.decide("reject")),
            ("mark", "Mark artifact (M)", "M", lambda: self.beat_edit("mark")),
            ("unmark", "Unmark (U)", "U", lambda: self.beat_edit("unmark")),
            ("delete", "Delete beat (D)", "D", lambda: self.beat_edit("delete")),
            ("add", "Add beat at cursor (B)", "B", self.add_beat),
            ("span_start", "Span start ([)", "[", lambda: self.set_span_edge(0)),
            ("span_end", "Span end (])", "]", lambda: self.set_span_edge(1)),
            ("bad", "Bad segment (S)", "S", self.bad_segment),
            ("undo", "Undo (Ctrl+Z)", "Ctrl+Z", self.undo),
        ]
        for name, text, key, slot in actions:
            button = QtWidgets.QPushButton(text)
            button.clicked.connect(slot)
            button.setFocusPolicy(QtCore.Qt.FocusPolicy.TabFocus)
            bar.addWidget(button)
            shortcut = QtGui.QShortcut(QtGui.QKeySequence(key), self)
            shortcut.activated.connect(slot)
            self.buttons[name] = button
        outer.addLayout(bar)
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setBackground("#161b22")
        self.rr_plot = self.plots.addPlot(row=0, col=0, viewBox=_SpanViewBox(self._span_dragged))
        self.rr_plot.setLabel("left", "RR (ms)")
        self.rr_plot.showGrid(y=True, alpha=0.15)
        self.ecg_plot = None
        if self.ecg is not None:
            self.ecg_plot = self.plots.addPlot(row=1, col=0)
            self.ecg_plot.setLabel("left", "ECG (µV)")
            self.ecg_plot.setXLink(self.rr_plot)
            self.ecg_plot.plot(self.ecg.t, self.ecg.uv.astype(float), pen=pg.mkPen("#7ec8e3", width=1),
                               autoDownsample=True, downsampleMethod="peak")  # fmt: skip
            self.ecg_ticks = pg.ScatterPlotItem(size=9, symbol="t", pen=None, brush=pg.mkBrush("#e6edf3"))
            self._tick_y = float(np.percentile(self.ecg.uv, 99.9)) * 1.15  # a tick above the trace at every beat
            self.ecg_plot.addItem(self.ecg_ticks)
        (self.ecg_plot or self.rr_plot).setLabel("bottom", "session time (s)")
        self._phase_labels: list[pg.TextItem] = []
        for w in self.windows:
            for plot in filter(None, (self.rr_plot, self.ecg_plot)):
                region = pg.LinearRegionItem((w.start_s, w.end_s), movable=False, brush=pg.mkBrush(255, 255, 255, 8),
                                             pen=pg.mkPen("#30363d"))  # fmt: skip
                region.setZValue(-20)
                plot.addItem(region)
            label = pg.TextItem(w.name, color="#9fb3c8", anchor=(0, 0))
            label.setPos(w.start_s, 0)
            self.rr_plot.addItem(label)
            self._phase_labels.append(label)
        self.rr_line = self.rr_plot.plot(pen=pg.mkPen("#6e7f91", width=1))
        self.corrected_line = self.rr_plot.plot(pen=pg.mkPen("#f0a95b", width=1, style=QtCore.Qt.PenStyle.DashLine))
        self.beat_dots = pg.ScatterPlotItem(size=5, pen=None)
        self.undecided_dots = pg.ScatterPlotItem(size=13, pen=pg.mkPen("#f0a95b", width=2), brush=None)
        self.accepted_dots = pg.ScatterPlotItem(size=13, pen=pg.mkPen("#56d364", width=2), brush=None)
        self.rejected_dots = pg.ScatterPlotItem(size=13, pen=pg.mkPen("#79c0ff", width=2), brush=None)
        self.marked_dots = pg.ScatterPlotItem(size=12, symbol="x", pen=None, brush=pg.mkBrush("#f85149"))
        self.added_dots = pg.ScatterPlotItem(size=12, symbol="+", pen=None, brush=pg.mkBrush("#56d364"))
        for item in (self.beat_dots, self.undecided_dots, self.accepted_dots, self.rejected_dots, self.marked_dots,
                     self.added_dots):  # fmt: skip
            self.rr_plot.addItem(item)
        self.sel_lines = [pg.InfiniteLine(angle=90, pen=SELECT_PEN) for _ in range(2)]
        self.cursor_lines = [pg.InfiniteLine(angle=90, pen=CURSOR_PEN) for _ in range(2)]
        self.span_region = pg.LinearRegionItem(movable=True, brush=pg.mkBrush(227, 179, 65, 45))
        self.span_region.hide()
        self.span_region.sigRegionChangeFinished.connect(self._span_moved)
        self.rr_plot.addItem(self.span_region)
        for i, plot in enumerate((self.rr_plot, self.ecg_plot)):
            if plot is not None:
                plot.addItem(self.sel_lines[i])
                plot.addItem(self.cursor_lines[i])
        self.segment_regions: list[pg.LinearRegionItem] = []
        self.plots.scene().sigMouseClicked.connect(self._clicked)
        split = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        split.addWidget(self.plots)
        lower = QtWidgets.QWidget()
        low = QtWidgets.QHBoxLayout(lower)
        low.setContentsMargins(0, 0, 0, 0)
        self.phase_table = QtWidgets.QTableWidget(0, 7)
        self.phase_table.setHorizontalHeaderLabels(["phase", "beats", "RMSSD ms", "corrected %", "grade", "edits",
                                                    "why"])  # fmt: skip
        self.phase_table.horizontalHeader().setStretchLastSection(True)
        self.phase_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.audit_list = QtWidgets.QListWidget()
        low.addWidget(self.phase_table, 3)
        low.addWidget(self.audit_list, 2)
        split.addWidget(lower)
        split.setSizes([520, 200])
        outer.addWidget(split, 1)
        self.message = QtWidgets.QLabel("")
        self.statusBar().addWidget(self.message, 1)

    def _view_all(self) -> None:
        t = self.state.edited.t
        if len(t):
            self.rr_plot.setXRange(float(t[0]) - 2, float(t[-1]) + 2, padding=0)

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def state(self):
        return self.model.state

    @property
    def analysis(self):
        return self.model.analysis

    @property
    def corrections(self) -> np.ndarray:
        return self.model.corrections

    def refresh(self) -> None:
        """Redraw everything from the model (after each edit)."""
        b = self.state.edited
        cut = np.flatnonzero(b.gap_before[1:]) + 1
        self.rr_line.setData(np.insert(b.t, cut, np.nan), np.insert(b.rr_ms, cut, np.nan), connect="finite")
        tl = self.analysis.timeline
        self.corrected_line.setData(tl.t, tl.rr, connect="finite")
        excluded = np.isin(b.t, self.state.excluded_t)
        self.beat_dots.setData(b.t, b.rr_ms, brush=[FADED_BRUSH if x else BEAT_BRUSH for x in excluded],
                               pen=[FADED_PEN if x else NO_PEN for x in excluded],
                               size=[7 if x else 5 for x in excluded])  # fmt: skip
        rr_at = dict(zip(np.round(b.t, 6), b.rr_ms, strict=True))

        def at(times) -> tuple[list[float], list[float]]:
            xs = [float(x) for x in times if round(float(x), 6) in rr_at]
            return xs, [rr_at[round(x, 6)] for x in xs]

        status = [self.model.status(c) for c in self.corrections]
        for dots, name in ((self.undecided_dots, "undecided"), (self.accepted_dots, "accepted"),
                           (self.rejected_dots, "rejected")):  # fmt: skip
            dots.setData(*at([c for c, s in zip(self.corrections, status, strict=True) if s == name]))
        self.marked_dots.setData(*at(self.state.marked_t))
        self.added_dots.setData(*at(self.state.added_t))
        if self.ecg is not None and self.ecg_plot is not None:
            self.ecg_ticks.setData(b.t, np.full(len(b.t), self._tick_y))
        for region in self.segment_regions:
            for plot in (self.rr_plot, self.ecg_plot):
                if plot is not None and region in plot.items:
                    plot.removeItem(region)
        self.segment_regions = []
        for s, e, kind in self.state.segments:
            for plot in filter(None, (self.rr_plot, self.ecg_plot)):
                region = pg.LinearRegionItem((s, e), movable=False, brush=SEGMENT_BRUSHES.get(kind),
                                             pen=pg.mkPen(None))  # fmt: skip
                region.setZValue(-10)
                plot.addItem(region)
                self.segment_regions.append(region)
        if len(b.rr_ms):
            top = float(np.nanpercentile(b.rr_ms, 99.5)) * 1.1
            for label in self._phase_labels:
                label.setPos(label.pos().x(), top)
        self._fill_tables()

    def _fill_tables(self) -> None:
        a = self.analysis
        self.phase_table.setRowCount(len(a.phases))
        for i, (p, r) in enumerate(zip(a.phases, a.review, strict=True)):
            edits_text = ", ".join(f"{n} {k}" for k, n in sorted(r["edits"].items())) or "–"
            cells = [p.name, str(p.n_beats), "–" if p.rmssd_ms is None else f"{p.rmssd_ms:.1f}",
                     "–" if p.corrected_pct is None else f"{p.corrected_pct:.1f}", r["grade"], edits_text,
                     r["grade_reason"]]  # fmt: skip
            for j, text in enumerate(cells):
                self.phase_table.setItem(i, j, QtWidgets.QTableWidgetItem(text))
        self.phase_table.resizeColumnsToContents()
        self.audit_list.clear()
        for e in self.model.audit():
            status = "" if e.in_force or e.action == "undo" else f"  (undone by #{e.undone_by})"
            reason = f" — {e.reason}" if e.reason else ""
            self.audit_list.addItem(f"{e.describe()} · {e.reviewer} · {e.utc[11:19]}{reason}{status}")
        self.audit_list.scrollToBottom()

    def _ecg_at(self, times: np.ndarray) -> np.ndarray:
        idx = np.clip(np.searchsorted(self.ecg.t, times), 0, len(self.ecg.t) - 1)
        return self.ecg.uv[idx].astype(float)

    def say(self, text: str) -> None:
        self.message.setText(text)

    # -- selection ----------------------------------------------------------------------------------------------
    def select_beat(self, t: float) -> None:
        bt = self.state.edited.t
        if not len(bt):
            return
        self.sel_t = float(bt[int(np.argmin(np.abs(bt - t)))])
        for line in self.sel_lines:
            line.setValue(self.sel_t)

    def set_cursor(self, t: float, snap: bool) -> None:
        if snap and self.ecg is not None:
            near = np.flatnonzero(np.abs(self.ecg.t - t) <= R_PEAK_SNAP_S)
            if near.size:
                t = float(self.ecg.t[near[np.argmax(self.ecg.uv[near])]])
        self.cursor_t = t
        for line in self.cursor_lines:
            line.setValue(t)

    def _clicked(self, ev) -> None:
        if ev.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pos = ev.scenePos()
        for plot, snap in ((self.rr_plot, False), (self.ecg_plot, True)):
            if plot is not None and plot.vb.sceneBoundingRect().contains(pos):
                t = plot.vb.mapSceneToView(pos).x()
                self.set_cursor(t, snap)
                self.select_beat(self.cursor_t if snap else t)
                self.say(f"beat at {self.sel_t:.3f} s selected; cursor at {self.cursor_t:.3f} s")
                return

    def step_beat(self, step: int) -> None:
        bt = self.state.edited.t
        if not len(bt):
            return
        i = 0 if self.sel_t is None else int(np.argmin(np.abs(bt - self.sel_t))) + step
        self.select_beat(float(bt[int(np.clip(i, 0, len(bt) - 1))]))
        self._follow()

    def step_correction(self, step: int) -> None:
        c = self.corrections
        if not len(c):
            self.say("no automatic corrections in this session")
            return
        ref = -np.inf if self.sel_t is None else self.sel_t
        later, earlier = c[c > ref + 1e-6], c[c < ref - 1e-6]
        pick = (later[0] if len(later) else c[0]) if step > 0 else (earlier[-1] if len(earlier) else c[-1])
        self.select_beat(float(pick))
        self._follow()
        self.say(f"correction at {pick:.3f} s: A accepts, R rejects")

    def _follow(self) -> None:
        lo, hi = self.rr_plot.vb.viewRange()[0]
        if self.sel_t is not None and not lo <= self.sel_t <= hi:
            half = (hi - lo) / 2
            self.rr_plot.setXRange(self.sel_t - half, self.sel_t + half, padding=0)

    def _span_dragged(self, start: float, end: float, finished: bool) -> None:
        self.span = (start, end)
        self.span_region.setRegion(self.span)
        self.span_region.show()
        if finished:
            self.say(f"span {start:.2f}-{end:.2f} s selected: S stores it as a bad segment")

    def _span_moved(self) -> None:
        if self.span_region.isVisible():
            lo, hi = self.span_region.getRegion()
            self.span = (float(lo), float(hi))

    def set_span_edge(self, edge: int) -> None:
        if self.sel_t is None:
            return
        lo, hi = self.span if self.span else (self.sel_t, self.sel_t)
        lo, hi = (self.sel_t, max(hi, self.sel_t)) if edge == 0 else (min(lo, self.sel_t), self.sel_t)
        self._span_dragged(lo, hi, True)

    # -- edits --------------------------------------------------------------------------------------------------
    def _edit(self, action: str, t: float, **kw) -> bool:
        try:
            edit = self.model.record(action, reviewer=self.reviewer_edit.text(), t=t, reason=self.reason_edit.text(),
                                     **kw)  # fmt: skip
        except (ReviewError, StoreError) as exc:
            self.say(f"not stored: {exc}")
            return False
        self.refresh()
        self.say(f"stored {edit.describe()} by {edit.reviewer}")
        return True

    def decide(self, action: str) -> None:
        c = self.corrections
        if self.sel_t is None or not len(c) or np.min(np.abs(c - self.sel_t)) > CORRECTION_REACH_S:
            self.say("select a highlighted correction first (N / P)")
            return
        self._edit(action, float(c[np.argmin(np.abs(c - self.sel_t))]))

    def beat_edit(self, action: str) -> None:
        if self.sel_t is None:
            self.say("select a beat first (click it, or ← / →)")
            return
        t = self.sel_t
        if self._edit(action, t) and action == "delete":
            self.select_beat(t)

    def add_beat(self) -> None:
        if self.cursor_t is None:
            self.say("click where the beat is (on the ECG it snaps to the R-peak), then B")
            return
        if self._edit("add", self.cursor_t):
            self.select_beat(self.cursor_t)

    def bad_segment(self) -> None:
        if self.span is None or not self.span[1] > self.span[0]:
            self.say("select a span first: Shift-drag on the tachogram, or [ and ] at the selected beat")
            return
        if self._edit("bad-segment", self.span[0], t_end=self.span[1], kind=self.kind_combo.currentText()):
            self.span = None
            self.span_region.hide()

    def undo(self) -> None:
        try:
            done = self.model.undo(reviewer=self.reviewer_edit.text(), reason=self.reason_edit.text())
        except (ReviewError, StoreError) as exc:
            self.say(f"not undone: {exc}")
            return
        self.refresh()
        self.say(f"undid {done.describe()}")


def run_review_window(model, reviewer: str = "") -> int:
    """Open the review window on `model` (a `ReviewSession`) until it is closed; returns 0."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    window = ReviewWindow(model, reviewer)
    window.resize(1400, 860)
    window.show()
    app.exec()
    return 0
