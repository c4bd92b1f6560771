"""The participant and monitor displays, offscreen, driven by a fake session built from the view-model."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyqtgraph.Qt import QtCore, QtGui, QtWidgets

from biofeedback.display import participant as dp
from biofeedback.display.monitor import MonitorWindow, rr_connect
from biofeedback.display.participant import (
    ParticipantState,
    ParticipantWindow,
    pacer_radius,
    participant_layout,
    render_participant_image,
    render_participant_png,
)
from biofeedback.live.view_model import MonitorView, ParticipantView, StrapView, soothing_level

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BREATH_PERIOD_S = 10.0  # 6 breaths/min
PROMPT = "Let your breath find a slower, soothing rhythm. When the mind wanders, gently bring it back."
PHASES = [
    ("Settling in", "baseline", 0.0, 180.0),
    ("Soothing rhythm breathing", "breathing", 180.0, 480.0),
    ("Compassionate image", "imagery", 480.0, 780.0),
    ("Self-critical recall", "recall", 780.0, 960.0),
    ("Return to the image", "imagery", 960.0, 1140.0),
    ("Rest", "rest", 1140.0, 1260.0),
]


def pacer_wave(t: float) -> tuple[float, str]:
    """A 6/min pacer: size 0..1 and whether breathing in (what the session would compute)."""
    phase = (t % BREATH_PERIOD_S) / BREATH_PERIOD_S
    return 0.5 - 0.5 * math.cos(2 * math.pi * phase), ("breathe in" if phase < 0.5 else "breathe out")


def polar_strap(
    shared_data: Path, t: float, device: str, participant: str, gap: tuple[float, float]
) -> StrapView:
    """Real Polar H10 data up to `t` with a disconnect `gap` cut out: a slow breather's IBI stream for the
    tachogram, and a (different) H10 recording for the last minute of 130 Hz ECG."""
    ibi = pd.read_csv(shared_data / "polar_h10_dhyb_ibi.csv")
    ibi = ibi[(ibi.t_s <= t) & ~((ibi.t_s >= gap[0]) & (ibi.t_s < gap[1]))]
    rr_ms = ibi.ibi_ms.to_numpy(float)
    local = pd.Series(rr_ms).rolling(9, center=True, min_periods=1).median().to_numpy()
    corrected = np.abs(rr_ms - local) > 0.2 * local  # a stand-in for the session's artifact correction
    ecg = pd.read_csv(shared_data / "polar_h10_detectpvc_ecg130hz_rr.csv", usecols=["t_s", "ecg"])
    ecg = ecg[(ecg.t_s > t - 60) & (ecg.t_s <= t)]
    diffs = np.diff(rr_ms[~corrected])
    return StrapView(
        device_id=device,
        participant_id=participant,
        link_state="connected",
        contact="ok",
        hr_bpm=float(60000 / np.median(rr_ms[-10:])),
        rmssd_ms=float(np.sqrt(np.mean(diffs[-60:] ** 2))),
        coherence=0.42,
        artifacts=int(corrected.sum()),
        rr_t=ibi.t_s.to_numpy(float),
        rr_ms=rr_ms,
        rr_corrected=corrected,
        gaps=[gap],
        ecg_t=ecg.t_s.to_numpy(float),
        ecg_uv=ecg.ecg.to_numpy(float) * 1000,
    )


class FakeSession:
    """A ViewSource and SessionControls at once, recording every control call."""

    def __init__(self, straps: list[StrapView] | None = None, t: float = 300.0) -> None:
        self.t = t
        self.paused = False
        self.self_paused = False
        self.feedback = "live"
        self.level: float | None = 0.6
        self.phase_index = 1
        self.straps = straps or []
        self.markers: list[tuple[float, str]] = [(205.0, "note"), (250.0, "technical")]
        self.calls: list[tuple] = []
        self.participant_pulls = 0
        self.fail = False

    def participant_view(self, participant_id: str | None) -> ParticipantView:
        self.participant_pulls += 1
        if self.fail:
            raise RuntimeError("session busy")
        size, label = pacer_wave(self.t)
        name, kind, _start, end = PHASES[self.phase_index]
        return ParticipantView(
            t=self.t,
            phase_name=name,
            phase_kind=kind,
            prompt=PROMPT,
            phase_time_left_s=end - self.t,
            pacer_size=size,
            pacer_label=label,
            feedback=self.feedback,
            soothing_level=self.level,
            paused=self.paused,
            self_paused=self.self_paused,
        )

    def monitor_view(self) -> MonitorView:
        return MonitorView(
            t=self.t,
            protocol_name="CMT week 3 — soothing rhythm",
            phases=PHASES,
            current_phase_index=self.phase_index,
            phase_time_left_s=PHASES[self.phase_index][3] - self.t,
            paused=self.paused,
            straps=self.straps,
            markers=self.markers,
        )

    def add_marker(self, label: str, note: str, t: float | None = None, participant_id: str | None = None) -> None:
        self.calls.append(("add_marker", label, note) if t is None else ("add_marker", label, note, t))

    def participant_pause(self, pid: str | None) -> None:
        self.calls.append(("participant_pause", pid))
        self.paused = self.self_paused = True

    def participant_resume(self, pid: str | None) -> None:
        self.calls.append(("participant_resume", pid))
        self.paused = self.self_paused = False

    def participant_stop(self, pid: str | None) -> None:
        self.calls.append(("participant_stop", pid))
        self.paused = self.self_paused = True

    def pause(self) -> None:
        self.calls.append(("pause",))
        self.paused = True

    def resume(self) -> None:
        self.calls.append(("resume",))
        self.paused = False

    def skip_phase(self) -> None:
        self.calls.append(("skip_phase",))
        self.phase_index += 1

    def end_session(self) -> None:
        self.calls.append(("end_session",))


def to_array(img: QtGui.QImage) -> np.ndarray:
    img = img.convertToFormat(QtGui.QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    return (
        np.frombuffer(img.constBits(), np.uint8, count=h * bpl)
        .reshape(h, bpl)[:, : w * 3]
        .reshape(h, w, 3)
        .copy()
    )


def red_pixels(rgb: np.ndarray) -> int:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((r > 180) & (g < 100) & (b < 100)))


def measured_pacer_radius(rgb: np.ndarray) -> float:
    """Half the horizontal extent of the pacer's pale rim along the row through the pacer centre."""
    h, w, _ = rgb.shape
    lay = participant_layout(w, h)
    row = rgb[round(lay.center_y)].astype(int)
    rim = np.array([dp.PACER_RIM.red(), dp.PACER_RIM.green(), dp.PACER_RIM.blue()])
    cols = np.flatnonzero(np.all(np.abs(row - rim) < 22, axis=1))
    assert len(cols) >= 2, "no pacer rim found"
    return (cols.max() - cols.min() + 1) / 2


def view(**kw) -> ParticipantView:
    base = dict(
        t=200.0,
        phase_name="Soothing rhythm breathing",
        phase_kind="breathing",
        prompt=PROMPT,
        phase_time_left_s=280.0,
        pacer_size=0.6,
        pacer_label="breathe in",
        feedback="live",
        soothing_level=0.5,
    )
    base.update(kw)
    return ParticipantView(**base)


# --- view model --------------------------------------------------------------------------------


def test_soothing_level_is_relative_to_own_baseline_smooth_and_clamped():
    assert soothing_level(40.0, 40.0, 10.0) == 0.0
    assert soothing_level(10.0, 40.0, 10.0) == 0.0  # below baseline looks neutral, never "worse"
    assert soothing_level(60.0, 40.0, 10.0) == 1.0
    assert soothing_level(90.0, 40.0, 10.0) == 1.0
    xs = np.linspace(30, 70, 401)
    ys = np.array([soothing_level(x, 40.0, 10.0) for x in xs])
    assert np.all(np.diff(ys) >= 0) and 0 < soothing_level(50.0, 40.0, 10.0) < 1
    assert np.max(np.abs(np.diff(ys))) < 0.01  # no jumps
    # the same absolute value means different things for different people
    assert soothing_level(50.0, 40.0, 10.0) > soothing_level(50.0, 45.0, 10.0)


@pytest.mark.parametrize(
    ("args", "match"), [((1.0, 1.0, 0.0), "baseline_sd"), ((math.nan, 1.0, 1.0), "current")]
)
def test_soothing_level_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        soothing_level(*args)


def test_views_reject_out_of_range_values():
    with pytest.raises(ValueError, match="pacer_size"):
        view(pacer_size=1.2)
    with pytest.raises(ValueError, match="feedback"):
        view(feedback="score")
    with pytest.raises(ValueError, match="rr_t, rr_ms"):
        StrapView(
            "d", "p", "connected", "ok", rr_t=np.zeros(3), rr_ms=np.zeros(2), rr_corrected=np.zeros(3, bool)
        )


# --- participant display ------------------------------------------------------------------------


def test_drawn_pacer_size_follows_the_session_clock_even_after_a_stall(qtbot):
    session = FakeSession()
    win = ParticipantWindow(session, "P01", fps=60)
    qtbot.addWidget(win)
    win.resize(1280, 720)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: session.participant_pulls >= 5)  # the timer pulls on its own
    win.timer.stop()
    for t in (180.0, 182.5, 184.0, 186.2, 253.7):  # the last jump is a 67 s stall
        session.t = t
        win.refresh()
        rgb = to_array(win.grab().toImage())
        expected = pacer_radius(pacer_wave(t)[0], win.width(), win.height())
        assert measured_pacer_radius(rgb) == pytest.approx(expected, abs=2.0)


def test_hidden_feedback_is_identical_whatever_the_soothing_level(qapp):
    hidden = [
        to_array(render_participant_image(view(feedback="hidden", soothing_level=s)))
        for s in (0.0, 0.3, 1.0, None)
    ]
    for img in hidden[1:]:
        assert np.array_equal(img, hidden[0])
    live_low = to_array(render_participant_image(view(soothing_level=0.0)))
    live_high = to_array(render_participant_image(view(soothing_level=1.0)))
    assert not np.array_equal(live_low, live_high)  # live feedback does move
    assert np.array_equal(live_low, hidden[0])  # its lowest level is the neutral look, nothing worse
    assert np.array_equal(to_array(render_participant_image(view(soothing_level=None))), hidden[0])


def test_sham_is_drawn_exactly_like_live(qapp):
    assert np.array_equal(
        to_array(render_participant_image(view(feedback="sham", soothing_level=0.8))),
        to_array(render_participant_image(view(feedback="live", soothing_level=0.8))),
    )


@pytest.mark.parametrize(
    "kw",
    [
        dict(soothing_level=1.0),
        dict(soothing_level=0.0),
        dict(paused=True, message=""),
        dict(finished=True, message="Thank you. Take a moment before you get up."),
        dict(pacer_size=None),
    ],
)
def test_participant_palette_has_no_red(qapp, kw):
    assert red_pixels(to_array(render_participant_image(view(**kw)))) == 0


def test_prompts_cross_fade_between_phases(qapp):
    first = view(t=100.0, phase_name="A", prompt="Notice the breath.", pacer_size=None)
    second = view(t=101.0, phase_name="B", prompt="Bring your compassionate image to mind.", pacer_size=None)
    state = ParticipantState()
    state.update(first)
    state.update(second)  # the phase changes at t = 101
    halfway = dataclasses.replace(second, t=101.0 + dp.FADE_S / 2)
    state.update(halfway)
    mid = to_array(render_participant_image(halfway, state=state))
    alone_first = to_array(render_participant_image(dataclasses.replace(first, t=halfway.t)))
    alone_second = to_array(render_participant_image(halfway))
    assert not np.array_equal(mid, alone_first) and not np.array_equal(mid, alone_second)
    later = dataclasses.replace(second, t=101.0 + dp.FADE_S)
    state.update(later)
    assert np.array_equal(
        to_array(render_participant_image(later, state=state)), to_array(render_participant_image(later))
    )


def test_participant_can_always_pause_and_stop_neutrally(qtbot):
    session = FakeSession()
    win = ParticipantWindow(session, "P01")
    qtbot.addWidget(win)
    win.show()
    assert win.pause_button.isVisible() and win.stop_button.isVisible()
    qtbot.mouseClick(win.pause_button, QtCore.Qt.MouseButton.LeftButton)
    assert session.calls == [("participant_pause", "P01")]  # their own display only, never the group's
    assert win.pause_button.text() == "Continue"
    qtbot.mouseClick(win.pause_button, QtCore.Qt.MouseButton.LeftButton)
    assert session.calls[-1] == ("participant_resume", "P01")
    qtbot.mouseClick(win.stop_button, QtCore.Qt.MouseButton.LeftButton)
    assert session.calls[-1] == ("participant_stop", "P01")
    assert not {("end_session",), ("pause",), ("resume",)} & set(session.calls)


def test_participant_window_needs_controls_and_survives_a_failing_source(qtbot):
    class ViewsOnly:
        def participant_view(self, pid):
            return view()

    with pytest.raises(ValueError, match="pause"):
        ParticipantWindow(ViewsOnly())
    session = FakeSession()
    win = ParticipantWindow(session)
    qtbot.addWidget(win)
    before = win.view
    session.fail = True
    win.refresh()
    assert win.view is before


def test_participant_screenshots(qtbot, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    path = render_participant_png(view(soothing_level=0.9), ARTIFACTS / "participant_live.png")
    render_participant_png(
        view(feedback="hidden", pacer_size=0.2, pacer_label="breathe out"),
        ARTIFACTS / "participant_hidden.png",
    )
    render_participant_png(view(paused=True), ARTIFACTS / "participant_paused.png")
    img = QtGui.QImage(str(path))
    assert (img.width(), img.height()) == (1280, 720)
    session = FakeSession()
    win = ParticipantWindow(session)
    qtbot.addWidget(win)
    win.resize(1280, 720)
    win.show()
    qtbot.waitExposed(win)
    grab = win.grab().toImage()
    assert grab.save(str(ARTIFACTS / "participant_window.png"))
    assert red_pixels(to_array(grab)) == 0


# --- monitor --------------------------------------------------------------------------------


@pytest.fixture
def monitor(qtbot, shared_data):
    strap = polar_strap(shared_data, 300.0, "H10-A1B2C3", "P01", gap=(200.0, 231.5))
    session = FakeSession([strap])
    win = MonitorWindow(session, session)
    win.confirm_end = lambda: True
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is win)
    return win, session


def test_monitor_shades_a_disconnect_gap_and_breaks_the_tachogram(monitor):
    win, _session = monitor
    panel = win.panels["H10-A1B2C3"]
    shaded = [r.getRegion() for r in panel.gap_regions if r.isVisible()]
    assert shaded == [pytest.approx((200.0 - 300.0, 231.5 - 300.0))]  # x is seconds before now (t = 300)
    rr_t = np.array([198.0, 199.0, 232.0, 233.0])
    assert rr_connect(rr_t, [(200.0, 231.5)]).tolist() == [True, False, True, True]
    assert panel.ecg_plot.isVisible()
    x0, x1 = panel.ecg_plot.viewRange()[0]
    assert x1 - x0 == pytest.approx(60.0, rel=0.01)


def test_monitor_keyboard_marker_with_note(monitor, qtbot):
    win, session = monitor
    pressed_at = win.view.t
    qtbot.keyClick(win, QtCore.Qt.Key.Key_M)
    assert win.marker_edit.hasFocus()
    session.t += 7.0  # typing the note takes a while; the marker is for the moment M was pressed
    qtbot.keyClicks(win.marker_edit, "participant coughed, moved strap")
    qtbot.keyClick(win.marker_edit, QtCore.Qt.Key.Key_Return)
    assert session.calls == [("add_marker", "note", "participant coughed, moved strap", pressed_at)]
    assert not win.marker_edit.hasFocus()


def test_monitor_space_toggles_pause_and_n_skips_and_ctrl_q_ends(monitor, qtbot):
    win, session = monitor
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Space)
    assert session.calls == [("pause",)]
    assert "PAUSED" in win.phase_label.text()
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Space)
    assert session.calls == [("pause",), ("resume",)]
    qtbot.keyClick(win, QtCore.Qt.Key.Key_N)
    assert session.calls[-1] == ("skip_phase",)
    win.confirm_end = lambda: False
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Q, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert ("end_session",) not in session.calls
    win.confirm_end = lambda: True
    qtbot.keyClick(win, QtCore.Qt.Key.Key_Q, QtCore.Qt.KeyboardModifier.ControlModifier)
    assert session.calls[-1] == ("end_session",)


def test_monitor_group_session_and_screenshot(qtbot, shared_data, monitor):
    win, _ = monitor
    win.grab().save(str(ARTIFACTS / "monitor_single.png"))
    straps = []
    for i in range(6):
        s = polar_strap(
            shared_data, 300.0, f"H10-{i:02d}", f"P0{i + 1}", gap=(100.0 + 20 * i, 110.0 + 20 * i)
        )
        if i == 2:
            s = dataclasses.replace(s, link_state="reconnecting", contact="lost")
        if i == 4:  # an HR-only strap: no ECG
            s = dataclasses.replace(s, ecg_t=np.zeros(0), ecg_uv=np.zeros(0), link_state="disconnected")
        straps.append(s)
    session = FakeSession(straps)
    group = MonitorWindow(session, session)
    qtbot.addWidget(group)
    group.resize(1600, 900)
    group.show()
    qtbot.waitExposed(group)
    assert len(group.panels) == 6
    positions = {group.grid.getItemPosition(group.grid.indexOf(p))[:2] for p in group.panels.values()}
    assert len({c for _r, c in positions}) >= 2  # a grid, not a column
    assert not group.panels["H10-04"].ecg_plot.isVisible()
    assert group.panels["H10-00"].ecg_plot.isVisible()
    ARTIFACTS.mkdir(exist_ok=True)
    assert group.grab().save(str(ARTIFACTS / "monitor_group.png"))


def test_paused_frame_shows_no_pacer_only_the_message(qapp):
    paused = to_array(render_participant_image(view(pacer_size=0.8, paused=True)))
    assert np.array_equal(paused, to_array(render_participant_image(view(pacer_size=None, paused=True))))
    no_message = to_array(render_participant_image(view(pacer_size=None, paused=False)))
    assert not np.array_equal(paused, no_message)  # the gentle paused message is there
