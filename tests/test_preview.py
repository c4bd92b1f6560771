"""protocols preview: the participant display at the middle of every phase, as PNG files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pyqtgraph.Qt import QtGui

import app
from biofeedback.display.participant import render_participant_image
from biofeedback.display.preview import phase_view, preview_views
from protocols.library import get_protocol
from protocols.model import Pacer, Phase, Protocol, TimedPrompt
from protocols.pacer import pacer_size


def pixels(img: QtGui.QImage) -> np.ndarray:
    img = img.convertToFormat(QtGui.QImage.Format.Format_RGB32)
    return np.frombuffer(img.constBits(), dtype=np.uint8).reshape(img.height(), img.width(), 4).copy()


def test_views_show_what_the_session_would_at_mid_phase():
    protocol = get_protocol("resonance-assessment")
    previews = preview_views(protocol)
    assert [p.phase.name for p in previews] == [ph.name for ph in protocol.phases]
    for p in previews:
        ph = p.phase
        assert p.view.t == pytest.approx(protocol.phase_starts_s[p.index] + ph.duration_s / 2)
        assert p.view.prompt == ph.prompt and p.view.feedback == ph.feedback.value
        assert p.view.soothing_level is None and not p.view.shows_feedback  # neutral: no physiology yet
        if ph.pacer is None:
            assert p.view.pacer_size is None
        else:
            assert p.view.pacer_size == pytest.approx(pacer_size(ph.duration_s / 2, ph.pacer))


def test_timed_prompts_replace_the_phase_prompt_once_due():
    phase = Phase("image", "imagery", 120.0, prompt="Begin.", prompts=(TimedPrompt(30.0, "Notice its warmth."),),
                  pacer=Pacer(5.0, 0.4))  # fmt: skip
    protocol = Protocol("p", "", (phase,))
    assert phase_view(protocol, 0, 10.0).prompt == "Begin."
    mid = phase_view(protocol, 0, 60.0)
    assert mid.prompt == "Notice its warmth."
    assert mid.pacer_label == "breathe in"  # 60 s into 12 s breaths: a new inhale starts
    assert phase_view(protocol, 0, 6.0).pacer_label == "breathe out"  # 4.8 s inhale, then out
    with pytest.raises(ValueError, match="outside it"):
        phase_view(protocol, 0, 121.0)


def test_cli_writes_one_png_per_phase_and_will_not_overwrite(tmp_path, capsys, qapp):
    out = tmp_path / "preview"
    assert app.main(["protocols", "preview", "cmt-soothing", "--out", str(out)]) == 0
    protocol = get_protocol("cmt-soothing")
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [p.file_name for p in preview_views(protocol)]
    previews = preview_views(protocol)
    for path, p in zip(files, previews, strict=True):
        img = QtGui.QImage(str(path))
        assert (img.width(), img.height()) == (1280, 720)
        # the file is exactly the participant display's frame for that view
        assert np.array_equal(pixels(img), pixels(render_participant_image(p.view)))
    paced = next(p for p in previews if p.view.pacer_size is not None)
    without_pacer = render_participant_image(dataclasses.replace(paced.view, pacer_size=None, pacer_label=None))
    assert not np.array_equal(pixels(QtGui.QImage(str(out / paced.file_name))), pixels(without_pacer))
    capsys.readouterr()
    assert app.main(["protocols", "preview", "cmt-soothing", "--out", str(out)]) == 2
    assert "not overwriting" in capsys.readouterr().err
    assert app.main(["protocols", "preview", "cmt-soothing", "--out", str(out), "--force"]) == 0


def test_no_builtin_prompt_is_clipped_on_the_participant_screen(qapp):
    from pyqtgraph.Qt import QtCore, QtGui

    from biofeedback.display.participant import _fitting_font, participant_layout
    from protocols.library import builtin_protocols

    flags = int(QtCore.Qt.AlignmentFlag.AlignCenter | QtCore.Qt.TextFlag.TextWordWrap)
    for width, height in ((1280, 720), (1920, 1080), (1024, 768)):
        lay = participant_layout(width, height)
        rect = lay.prompt_rect
        px = min(height, width * 9 / 16) * 0.052
        for proto in builtin_protocols().values():
            for phase in proto.phases:
                for text in [phase.prompt, *(p.text for p in phase.prompts)]:
                    font = _fitting_font(text, rect.width(), rect.height(), px)
                    box = QtGui.QFontMetricsF(font).boundingRect(QtCore.QRectF(rect), flags, text)
                    assert box.height() <= rect.height(), (proto.name, phase.name, text[:40])
