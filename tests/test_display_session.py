"""Both windows against a REAL LiveSession on simulated straps, the session in its background thread as in
`biofeedback.display.app.run_with_displays` (offscreen Qt): disconnect gaps, markers, replay, and a stalled display."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from pyqtgraph.Qt import QtCore, QtWidgets

from biofeedback.display.app import SessionThread
from biofeedback.display.monitor import MonitorWindow
from biofeedback.display.participant import ParticipantWindow
from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.live.replay import build_replay
from devices.simulator import RR_UNITS_PER_S, SimFaults
from protocols.model import Pacer, Phase, Protocol
from recordings.store import Store

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

SHORT = Protocol(
    "short-display-test",
    "three short phases",
    (
        Phase("settle", "rest", 60.0, prompt="Sit comfortably and let your breathing settle.", feedback="hidden"),
        Phase("breathe", "breathing", 90.0, prompt="Breathe gently with the circle.", pacer=Pacer(6.0, 0.4)),
        Phase("image", "imagery", 60.0, prompt="Bring your compassionate image to mind."),
    ),
)


class Running:
    """A session running in the display app's session thread, with both windows pulling from it."""

    def __init__(self, qtbot, session) -> None:
        self.session = session
        self.worker = SessionThread(session)
        self.monitor = MonitorWindow(session, session)
        self.monitor.confirm_end = lambda: True
        pid = session.straps[0].binding.participant_id
        self.participant = ParticipantWindow(session, pid, controls=session)
        for win, size in ((self.monitor, (1280, 800)), (self.participant, (1280, 720))):
            qtbot.addWidget(win)
            win.resize(*size)
            win.show()
            qtbot.waitExposed(win)
        self.worker.start()
        self.qtbot = qtbot

    def wait_for_session_time(self, t: float, timeout_ms: int = 20000) -> None:
        self.qtbot.waitUntil(lambda: self.session.clock.now() >= t or not self.worker.is_alive(), timeout=timeout_ms)

    def finish(self, timeout_ms: int = 30000) -> list[int]:
        self.qtbot.waitUntil(lambda: not self.worker.is_alive(), timeout=timeout_ms)
        if self.worker.error is not None:
            raise self.worker.error
        return self.worker.result


def new_session(store: Store, speed: float, **kw):
    return build_session(store, SHORT, parse_device_specs(["sim"], "P01"), speed=speed, seed=2, **kw)


def test_monitor_shows_the_disconnect_gap_and_screenshots_are_saved(qtbot, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = new_session(store, speed=50, ecg=True, faults={"P01": SimFaults(disconnects=[(40.0, 10.0)])})
    run = Running(qtbot, session)
    run.wait_for_session_time(100.0)  # in the paced phase, after the gap, with a minute of ECG
    qtbot.wait(100)
    view = run.monitor.view
    (strap,) = view.straps
    assert len(strap.gaps) == 1
    g0, g1 = strap.gaps[0]
    # the simulator notices the fault window at its next tick (about a session second at most)
    assert 40.0 <= g0 < 42.0 and 8.0 < g1 - g0 < 11.0
    assert not np.any((strap.rr_t > g0) & (strap.rr_t < g1))  # nothing invented inside the gap
    panel = run.monitor.panels[strap.device_id]
    shaded = [r.getRegion() for r in panel.gap_regions if r.isVisible()]
    assert len(shaded) == 1
    assert shaded[0][1] - shaded[0][0] == pytest.approx(g1 - g0)
    assert panel.ecg_plot.isVisible() and len(strap.ecg_t) > 0
    assert run.participant.view.phase_name == "breathe" and run.participant.view.pacer_size is not None
    ARTIFACTS.mkdir(exist_ok=True)
    assert run.monitor.grab().save(str(ARTIFACTS / "session_monitor_live.png"))
    assert run.participant.grab().save(str(ARTIFACTS / "session_participant_live.png"))
    session.end_session()
    (sid,) = run.finish()
    assert store.session(sid).state == "stopped"
    events = store.link_events(sid)
    (down,) = [i for i, e in enumerate(events) if e[2] == "disconnected"]
    up = next(e for e in events[down:] if e[2] == "connected")
    assert (events[down][0], up[0]) == (g0, g1)  # the monitor's gap is exactly the recorded one
    store.close()


def test_marker_from_the_monitor_lands_in_the_store_at_the_session_time(qtbot, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = new_session(store, speed=50)
    run = Running(qtbot, session)
    run.wait_for_session_time(30.0)
    run.monitor.activateWindow()
    qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is run.monitor)
    shown = run.monitor.view.t  # the session time the monitor is showing (refreshed every frame)
    qtbot.keyClick(run.monitor, QtCore.Qt.Key.Key_M)
    pressed = session.clock.now()
    qtbot.keyClicks(run.monitor.marker_edit, "strap adjusted")
    qtbot.wait(200)  # typing takes a while (10 session seconds here)
    qtbot.keyClick(run.monitor.marker_edit, QtCore.Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: any(label == "note" for _, label in session.markers))
    session.end_session()
    (sid,) = run.finish()
    (manual,) = [m for m in store.markers(sid) if m.kind == "manual"]
    assert manual.label == "note"
    # stamped at the moment M was pressed (the view the monitor showed then), not at Enter: on a loaded machine the
    # view can be a few frames old, so the bound is the view's own time, not the wall clock
    assert shown <= manual.t <= pressed
    assert store.notes(sid) == [(manual.t, "strap adjusted")]
    store.close()


def test_replay_through_the_displays_walks_the_same_phases(qtbot, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    (sid,) = asyncio.run(new_session(store, speed=200).run())
    original = [(m.phase_name, m.t) for m in store.markers(sid) if m.kind == "phase_start"]
    with Store(tmp_path / "replay.sqlite") as copy:
        replay = build_replay(store, sid, speed=100, record_into=copy)
        run = Running(qtbot, replay)
        seen: list[str] = []
        while run.worker.is_alive():
            v = run.monitor.view
            if v is not None and 0 <= v.current_phase_index < len(v.phases):
                name = v.phases[v.current_phase_index][0]
                if not seen or seen[-1] != name:
                    seen.append(name)
                pv = run.participant.view  # pulled at its own frame rate: compare at its own time
                if pv is not None and pv.phase_name:
                    near = {n for n, _k, t0, t1 in v.phases if t0 - 1.0 <= pv.t < t1 + 1.0}
                    assert pv.phase_name in near
            qtbot.wait(15)
        (rid,) = run.finish()
        assert seen == [name for name, _ in original] == ["settle", "breathe", "image"]
        replayed = [(m.phase_name, m.t) for m in copy.markers(rid) if m.kind == "phase_start"]
        assert [n for n, _ in replayed] == [n for n, _ in original]
        assert np.allclose([t for _, t in replayed], [t for _, t in original], atol=1.0)
    store.close()


def test_a_stalled_display_loses_no_beat(qtbot, tmp_path):
    store = Store(tmp_path / "s.sqlite")
    session = new_session(store, speed=50, keep_history=True)  # the simulator keeps its ground truth
    sim = session.straps[0].binding.link
    run = Running(qtbot, session)
    run.wait_for_session_time(20.0)
    stall_start = session.clock.now()
    QtCore.QTimer.singleShot(0, lambda: time.sleep(3.0))  # the GUI thread freezes for 3 s (150 session s)
    qtbot.wait(50)
    stall_end = session.clock.now()
    assert stall_end - stall_start > 100.0
    (sid,) = run.finish()
    beats = store.beats(sid)
    assert beats.gap_before.sum() == 1  # one stretch: only the very first beat starts it
    # ground truth: every beat the simulated heart made, as measured on the strap's (drifting) clock. The strap
    # sends each RR in whole 1/1024 s, carrying the rounding on, so one RR may be off by up to one unit while the
    # running sum stays within one unit (a tolerance of just under one unit made this test fail now and then:
    # wall-clock runs differ in their beats).
    unit_ms = 1000 / RR_UNITS_PER_S
    true_rr = np.array([b.rr_ms for b in sim.beats]) * (1.0 + sim.device_clock_drift_ppm * 1e-6)
    true_t = np.array([b.t_beat for b in sim.beats])
    stored = beats.rr_ms
    n = len(stored)
    offsets = [k for k in range(len(true_rr) - n + 1) if np.all(np.abs(true_rr[k : k + n] - stored) <= unit_ms + 1e-6)]
    assert len(offsets) == 1, "stored beats are not one unbroken run of the simulated heart's beats"
    k = offsets[0]
    assert np.max(np.abs(np.cumsum(stored) - np.cumsum(true_rr[k : k + n]))) <= unit_ms + 1e-6  # no rounding lost
    first, last = true_t[k], true_t[k + n - 1]
    assert first < stall_start and last > stall_end  # the stall lies inside the unbroken stored run
    assert last > SHORT.total_duration_s - 2.0  # and the run reaches the end of the session
    assert np.sum((true_t >= first) & (true_t <= last)) == n  # not one beat in that span is missing
    store.close()
