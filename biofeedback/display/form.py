"""A calm Qt form in which a participant answers a diary or questionnaire on the lab computer.

One block per item: the wording, a row of round choices for the scale with its anchor labels (a slider for scales
with more than 11 points), and a quiet "leave this one out" link that clears an answer: any item can be skipped.
Optional free-text boxes follow. "Done" calls `on_submit(values, texts)` (skipped items are None); "Not now" calls
`on_cancel()`. Nothing is scored or judged on screen, and the colours are the participant display's calm palette.

How a session opens it: a protocol phase of kind `diary` names its `instrument`; during that phase
`biofeedback.display.diary.host_diary_forms` lays this form over each participant window and sends the answers to
`LiveSession.submit_answers` (stored with the session id and week, source "form"); "Not now" calls
`LiveSession.skip_diary` (recorded neutrally, never as a failure). The phase ends once everyone has responded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyqtgraph.Qt import QtCore, QtWidgets

from protocols.instruments import Instrument, Item

MAX_RADIO_POINTS = 11
STYLE = """
QWidget#form { background: #13233a; }
QLabel { color: #f1ede4; font-size: 15px; }
QLabel#title { font-size: 22px; font-weight: 600; }
QLabel#instructions, QLabel#anchor { color: #bcd6d8; }
QLabel#anchor { font-size: 12px; }
QFrame#item { background: #1a3049; border-radius: 10px; }
QRadioButton { color: #f1ede4; font-size: 14px; spacing: 4px; }
QRadioButton::indicator { width: 12px; height: 12px; border-radius: 8px; border: 2px solid #60aab0;
                          background: #13233a; }
QRadioButton::indicator:checked { background: #eccc92; border: 2px solid #ffbe6c; }
QPushButton { background: #60aab0; color: #13233a; border-radius: 8px; padding: 8px 22px; font-size: 15px; }
QPushButton#quiet { background: transparent; color: #bcd6d8; padding: 2px 6px; font-size: 12px;
                    text-decoration: underline; }
QPlainTextEdit { background: #1d4756; color: #f1ede4; border-radius: 6px; font-size: 14px; }
QSlider::groove:horizontal { height: 6px; background: #1d4756; border-radius: 3px; }
QSlider::handle:horizontal { background: #96dcd4; width: 18px; margin: -6px 0; border-radius: 9px; }
QScrollArea { border: none; }
"""

Values = dict[str, float | None]
Texts = dict[str, str]


class _ItemChoice(QtWidgets.QFrame):
    """One item: wording, choices and a way to leave it out."""

    def __init__(self, number: int, total: int, item: Item) -> None:
        super().__init__()
        self.setObjectName("item")
        self.item = item
        layout = QtWidgets.QVBoxLayout(self)
        text = QtWidgets.QLabel(f"{number} of {total}.  {item.text}")
        text.setWordWrap(True)
        layout.addWidget(text)
        sc = item.scale
        self.group: QtWidgets.QButtonGroup | None = None
        self.slider: QtWidgets.QSlider | None = None
        self._slider_set = False
        if sc.max - sc.min + 1 <= MAX_RADIO_POINTS:
            grid = QtWidgets.QGridLayout()
            self.group = QtWidgets.QButtonGroup(self)
            for col, value in enumerate(sc.values):
                button = QtWidgets.QRadioButton(str(value))
                button.setAccessibleName(f"{value}" + (f" ({sc.label(value)})" if sc.label(value) else ""))
                self.group.addButton(button, value)
                grid.addWidget(button, 0, col, QtCore.Qt.AlignmentFlag.AlignHCenter)
                if sc.label(value):
                    anchor = QtWidgets.QLabel(sc.label(value))
                    anchor.setObjectName("anchor")
                    anchor.setWordWrap(True)
                    anchor.setAlignment(QtCore.Qt.AlignmentFlag.AlignHCenter | QtCore.Qt.AlignmentFlag.AlignTop)
                    grid.addWidget(anchor, 1, col)
            layout.addLayout(grid)
        else:
            self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
            self.slider.setRange(sc.min, sc.max)
            self.slider.setValue((sc.min + sc.max) // 2)
            self.slider.valueChanged.connect(self._touched)
            layout.addWidget(self.slider)
            anchors = QtWidgets.QLabel("   ·   ".join(f"{v} = {t}" for v, t in sc.labels))
            anchors.setObjectName("anchor")
            layout.addWidget(anchors)
        leave = QtWidgets.QPushButton("leave this one out")
        leave.setObjectName("quiet")
        leave.clicked.connect(self.clear)
        layout.addWidget(leave, 0, QtCore.Qt.AlignmentFlag.AlignRight)

    def _touched(self, _value: int) -> None:
        self._slider_set = True

    def value(self) -> float | None:
        if self.group is not None:
            button = self.group.checkedButton()
            return None if button is None else float(self.group.id(button))
        assert self.slider is not None
        return float(self.slider.value()) if self._slider_set else None

    def set_value(self, value: float | None) -> None:
        if value is None:
            self.clear()
        elif self.group is not None:
            self.group.button(int(value)).setChecked(True)
        else:
            assert self.slider is not None
            self.slider.setValue(int(value))
            self._slider_set = True

    def clear(self) -> None:
        if self.group is not None:
            self.group.setExclusive(False)
            for button in self.group.buttons():
                button.setChecked(False)
            self.group.setExclusive(True)
        else:
            self._slider_set = False


class InstrumentForm(QtWidgets.QWidget):
    """The form; `on_submit(values, texts)` gets every item's answer (None when left out) and non-empty texts."""

    def __init__(
        self,
        instrument: Instrument,
        on_submit: Callable[[Values, Texts], None],
        on_cancel: Callable[[], None] | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.instrument = instrument
        self._on_submit = on_submit
        self._on_cancel = on_cancel
        self.setObjectName("form")
        self.setStyleSheet(STYLE)
        self.setAttribute(QtCore.Qt.WidgetAttribute.WA_StyledBackground, True)
        outer = QtWidgets.QVBoxLayout(self)
        title = QtWidgets.QLabel(instrument.title)
        title.setObjectName("title")
        outer.addWidget(title)
        if instrument.instructions:
            instructions = QtWidgets.QLabel(instrument.instructions.strip())
            instructions.setObjectName("instructions")
            instructions.setWordWrap(True)
            outer.addWidget(instructions)
        body = QtWidgets.QWidget()
        body.setObjectName("form")
        column = QtWidgets.QVBoxLayout(body)
        self.choices = [_ItemChoice(n, len(instrument.items), it) for n, it in enumerate(instrument.items, start=1)]
        for choice in self.choices:
            column.addWidget(choice)
        self.text_boxes: dict[str, QtWidgets.QPlainTextEdit] = {}
        for field in instrument.texts:
            label = QtWidgets.QLabel(field.prompt)
            label.setWordWrap(True)
            column.addWidget(label)
            box = QtWidgets.QPlainTextEdit()
            box.setFixedHeight(80)
            column.addWidget(box)
            self.text_boxes[field.id] = box
        column.addStretch(1)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        buttons = QtWidgets.QHBoxLayout()
        buttons.addStretch(1)
        self.cancel_button = QtWidgets.QPushButton("Not now")
        self.cancel_button.setObjectName("quiet")
        self.cancel_button.clicked.connect(self.cancel)
        self.done_button = QtWidgets.QPushButton("Done")
        self.done_button.clicked.connect(self.submit)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.done_button)
        outer.addLayout(buttons)

    def choice(self, item_id: str) -> _ItemChoice:
        for c in self.choices:
            if c.item.id == item_id:
                return c
        raise KeyError(item_id)

    def answers(self) -> tuple[Values, Texts]:
        values = {c.item.id: c.value() for c in self.choices}
        texts = {k: box.toPlainText().strip() for k, box in self.text_boxes.items() if box.toPlainText().strip()}
        return values, texts

    def submit(self) -> None:
        self._on_submit(*self.answers())

    def cancel(self) -> None:
        if self._on_cancel is not None:
            self._on_cancel()


def render_form_png(form: InstrumentForm, path: Path, size: tuple[int, int] = (820, 1100)) -> Path:
    """Save what the form looks like (offscreen rendering works with QT_QPA_PLATFORM=offscreen)."""
    form.resize(*size)
    form.grab().save(str(path))
    return Path(path)
