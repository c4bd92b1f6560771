"""The participant's Qt form for an instrument: answering, leaving items out, free text, offscreen rendering."""

from __future__ import annotations

from pathlib import Path

from PySide6 import QtGui

from biofeedback.display.form import InstrumentForm, render_form_png
from protocols.instruments import get_instrument, parse_instrument, score

ROOT = Path(__file__).resolve().parents[1]


def test_form_returns_answers_with_skips_and_text_and_renders(qtbot):
    diary = get_instrument("cmt-weekly-diary")
    got = []
    form = InstrumentForm(diary, on_submit=lambda v, t: got.append((v, t)))
    qtbot.addWidget(form)
    chosen = {"sc_often": 7, "sc_powerful": 3, "sc_intrusive": 0, "ss_often": 10, "ss_powerful": 4,
              "ss_accessible": 2, "ss_warm": 6}  # fmt: skip
    for item_id, value in chosen.items():
        form.choice(item_id).group.button(value).click()
    form.choice("sc_hard_to_dismiss").group.button(9).click()
    form.choice("sc_hard_to_dismiss").clear()  # changed their mind: left out
    form.text_boxes["week_notes"].setPlainText("  the sea again  ")
    form.show()
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    png = render_form_png(form, out / "instrument_form.png")
    form.done_button.click()
    assert len(got) == 1
    values, texts = got[0]
    assert values == {**{k: float(v) for k, v in chosen.items()}, "sc_hard_to_dismiss": None}
    assert texts == {"week_notes": "the sea again"}
    # the form's answers score like any other: one item left out of four is prorated
    assert score(diary, values)["self-criticism"].prorated
    image = QtGui.QImage(str(png))
    assert image.width() == 820 and image.height() == 1100
    # the calm dark background, not a blank white widget
    assert QtGui.QColor(image.pixel(5, 5)).lightness() < 80


def test_form_cancel_and_slider_for_wide_scales(qtbot):
    inst = parse_instrument("""
name = "vas"
title = "How are you right now?"
[scale]
min = 0
max = 100
labels = { 0 = "not at all", 100 = "completely" }
[[item]]
id = "calm"
text = "How calm do you feel?"
""")
    cancelled, submitted = [], []
    form = InstrumentForm(inst, on_submit=lambda v, t: submitted.append(v), on_cancel=lambda: cancelled.append(1))
    qtbot.addWidget(form)
    assert form.answers()[0] == {"calm": None}  # an untouched slider is not an answer
    form.choice("calm").slider.setValue(64)
    assert form.answers()[0] == {"calm": 64.0}
    form.cancel_button.click()
    assert cancelled == [1] and submitted == []
