"""The monitor's LSL start bar: how many streams have a consumer, "Start when N connected" (the --lsl-wait wait)
and "Start now", with real pylsl inlets connecting before the session clock starts."""

from __future__ import annotations

import time

import pytest
from pyqtgraph.Qt import QtWidgets

from biofeedback.display.app import SessionThread
from biofeedback.display.monitor import MonitorWindow
from biofeedback.live.recorder import build_session, parse_device_specs
from protocols.model import Phase, PhaseKind, Protocol
from recordings.store import Store

SHORT = Protocol("lsl-start", "", (Phase("baseline", PhaseKind.REST, 20.0),))


def _inlet(source_id: str):
    import pylsl

    (info,) = pylsl.resolve_byprop("source_id", source_id, timeout=10)
    inlet = pylsl.StreamInlet(info, max_buflen=60)
    inlet.open_stream(timeout=10)
    return inlet


def _pull_until(inlet, want: str, timeout_s: float = 15.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(v.startswith(want) for v in got):
        chunk, _ = inlet.pull_chunk(timeout=0.2)
        got += [c[0] for c in chunk]
    return got


@pytest.fixture
def running(qtbot, tmp_path):
    from biofeedback.live.lsl_outlets import ConsumerGate, LslOutlets

    store = Store(tmp_path / "s.sqlite")
    session = build_session(store, SHORT, parse_device_specs(["sim"], "P21"), speed=20, seed=4)
    outlets = LslOutlets(session)
    session.add_listener(outlets)
    gate = ConsumerGate(outlets, timeout_s=30)
    monitor = MonitorWindow(session, session, lsl_gate=gate)
    monitor.confirm_end = lambda: True
    qtbot.addWidget(monitor)
    monitor.show()
    qtbot.waitExposed(monitor)
    worker = SessionThread(session, gate)
    worker.start()
    yield session, outlets, gate, monitor, worker
    gate.abandon()
    worker.join(timeout=30)
    outlets.close(linger_s=0)
    store.close()


def test_start_when_two_connected_waits_for_real_inlets_and_nothing_is_missed(running, qtbot):
    session, outlets, gate, monitor, worker = running
    bar = monitor.lsl_bar
    device = session.straps[0].binding.link.device_id
    assert bar.isVisible() and len(outlets.stream_names) == 4
    qtbot.waitUntil(lambda: "0 of 4 streams have a consumer" in bar.status.text())
    bar.count.setValue(2)
    assert bar.when_button.text() == "Start when 2 connected"
    bar.when_button.click()
    markers = _inlet(f"cmt-biofeedback/{device}/markers")  # one consumer: still waiting
    qtbot.waitUntil(lambda: "1 of 4 streams have a consumer" in bar.status.text(), timeout=10000)
    assert "starting when 2 are connected" in bar.status.text()
    qtbot.wait(300)
    assert not gate.is_open and session.runner.state.t is None  # the session clock has not started
    rr = _inlet(f"cmt-biofeedback/{device}/rr")
    qtbot.waitUntil(lambda: gate.is_open, timeout=10000)
    qtbot.waitUntil(lambda: bar.isHidden())
    got = _pull_until(markers, "phase_start")
    assert got[:2] == ["session_start: lsl-start", "phase_start: baseline"]  # the first markers were not missed
    qtbot.waitUntil(lambda: not worker.is_alive(), timeout=30000)
    assert worker.error is None and worker.result == session.session_ids
    chunk, _ = rr.pull_chunk(timeout=1.0)
    assert chunk  # the consumer that opened the gate receives the beats
    assert _pull_until(markers, "session_end")[-1] == "session_end: session ended"


def test_start_now_starts_with_nobody_listening_and_a_timeout_says_so(running, qtbot):
    session, _outlets, gate, monitor, worker = running
    bar = monitor.lsl_bar
    gate.timeout_s = 0.3
    bar.count.setValue(1)
    bar.when_button.click()
    qtbot.waitUntil(lambda: "only 0 of 1 streams had a consumer after 0.3 s" in bar.status.text(), timeout=10000)
    assert not gate.is_open and worker.is_alive()  # still waiting for the experimenter's choice
    bar.now_button.click()
    qtbot.waitUntil(lambda: session.runner.state.t is not None, timeout=10000)
    qtbot.waitUntil(bar.isHidden)
    qtbot.waitUntil(lambda: not worker.is_alive(), timeout=30000)
    assert worker.result == session.session_ids


def test_closing_the_monitor_before_the_start_records_nothing(tmp_path, qtbot):
    from biofeedback.display import app as display_app
    from biofeedback.live.lsl_outlets import ConsumerGate, LslOutlets

    with Store(tmp_path / "s.sqlite") as store:
        session = build_session(store, SHORT, parse_device_specs(["sim"], "P22"), speed=20, seed=4)
        outlets = LslOutlets(session)
        gate = ConsumerGate(outlets, timeout_s=30)
        app = QtWidgets.QApplication.instance()

        def close_monitor() -> None:
            (monitor,) = [w for w in app.topLevelWidgets() if isinstance(w, MonitorWindow) and w.isVisible()]
            assert not monitor.lsl_bar.isHidden()
            app.quit()

        from pyqtgraph.Qt import QtCore

        QtCore.QTimer.singleShot(500, close_monitor)
        ids = display_app.run_with_displays(session, participant_windows=False, lsl_gate=gate)
        outlets.close(linger_s=0)
        assert ids == session.session_ids
        (info,) = store.sessions()
        assert info.state == "stopped" and store.markers(info.id) == []
    # and no quit is left pending for the next event loop of this process (Qt 6 posts quit() as an event)
    loop, fired = QtCore.QEventLoop(), []
    QtCore.QTimer.singleShot(50, lambda: (fired.append(True), loop.quit()))
    loop.exec()
    assert fired, "a leftover quit ended the next event loop before its timer"


def test_the_monitor_header_says_which_marker_a_phase_waits_for(qtbot):
    from biofeedback.live.view_model import MonitorView

    class Source:
        def monitor_view(self) -> MonitorView:
            return MonitorView(t=65.0, protocol_name="psychopy", phases=[("baseline", "rest", 0.0, 65.0)],
                               current_phase_index=0, phase_time_left_s=0.0, paused=False, straps=[],
                               waiting_for_marker="imagery_start")  # fmt: skip

    monitor = MonitorWindow(Source(), None)
    qtbot.addWidget(monitor)
    assert monitor.lsl_bar is None  # no LSL outlets: no start bar
    assert "waiting for marker <b>imagery_start</b>" in monitor.phase_label.text()
