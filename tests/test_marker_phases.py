"""Phases started and ended by markers of another program (PsychoPy over LSL) when the protocol says so."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import numpy as np
import pytest

from protocols.loader import ProtocolError, parse_protocol
from protocols.model import Phase, PhaseKind, Protocol
from protocols.runner import ProtocolRunner
from recordings.protocol_json import protocol_from_dict, protocol_to_dict
from recordings.store import Store

TOML = """
name = "psychopy-imagery"
marker_stream = "PsychoPy"
marker_timeout = "20s"

[[phase]]
name = "baseline"
kind = "rest"
duration = 10

[[phase]]
name = "imagery"
kind = "imagery"
duration = 30
start_on_marker = "imagery_start"
end_on_marker = "imagery_end"

[[phase]]
name = "recovery"
kind = "recovery"
duration = 10
"""


def _phases(markers) -> list[tuple[str, str, float, str]]:
    return [(m.kind, m.phase_name, m.t, m.detail.get("ended", "")) for m in markers if m.kind.startswith("phase")]


# -- the model, the loader and the stored copy ---------------------------------------------------------------------


def test_toml_options_load_and_survive_the_stored_copy():
    p = parse_protocol(TOML)
    assert (p.marker_stream, p.marker_timeout_s) == ("PsychoPy", 20.0)
    assert [p.boundary_marker(i) for i in range(3)] == ["imagery_start", "imagery_end", None]
    assert protocol_from_dict(protocol_to_dict(p)) == p


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('marker_stream = "PsychoPy"\n', ""),
         'phase 2 ("imagery"): field "start_on_marker": expected a top-level marker_stream'),
        (lambda t: t.replace('duration = 10\n', 'duration = 10\nstart_on_marker = "go"\n', 1),
         'phase 1 ("baseline"): field "start_on_marker": expected no start marker on the first phase'),
        (lambda t: t.replace('duration = 10\n', 'duration = 10\nend_on_marker = "go"\n', 1),
         'phase 2 ("imagery"): field "start_on_marker": expected one marker per boundary, but phase \'baseline\' '
         "already ends on 'go'"),
        (lambda t: t.replace('end_on_marker = "imagery_end"', "end_on_marker = 3"),
         'field "end_on_marker": expected a non-empty marker value such as "imagery_start", got 3'),
        (lambda t: t.replace('"20s"', '"soon"'), 'field "marker_timeout": expected a positive duration'),
        (lambda t: t.replace("start_on_marker", "start_on_mraker"), "start_on_mraker"),
    ],
)
def test_invalid_marker_options_are_refused_with_the_place_and_the_fix(edit, message):
    with pytest.raises(ProtocolError) as info:
        parse_protocol(edit(TOML), source="p.toml")
    assert message in str(info.value)


def test_model_refuses_a_marker_without_a_stream():
    with pytest.raises(ValueError, match="names no marker_stream"):
        Protocol("x", "", (Phase("a", PhaseKind.REST, 5), Phase("b", PhaseKind.REST, 5, start_on_marker="go")))


# -- the runner (pure) ----------------------------------------------------------------------------------------------


def test_a_late_marker_holds_the_phase_open_and_the_boundary_is_the_marker_time():
    r = ProtocolRunner(parse_protocol(TOML))
    out = r.start(0.0)
    out += r.update(15.0)  # baseline planned to end at 10: it waits for imagery_start
    assert r.state.phase.name == "baseline" and r.state.waiting_for_marker == "imagery_start"
    assert r.next_deadline() == 30.0  # 10 s planned + 20 s timeout
    out += r.on_marker("imagery_end", 15.5, 15.6)  # not this boundary's marker: nothing happens
    out += r.on_marker("imagery_start", 16.25, 16.4)  # arrived 0.15 s after it was sent
    assert r.state.phase.name == "imagery"
    out += r.on_marker("imagery_end", 30.0, 30.1)  # before imagery's planned 30 s: it ends there
    out += r.update(45.0)
    assert _phases(out) == [
        ("phase_start", "baseline", 0.0, ""), ("phase_end", "baseline", 16.25, "marker"),
        ("phase_start", "imagery", 16.25, ""), ("phase_end", "imagery", 30.0, "marker"),
        ("phase_start", "recovery", 30.0, ""), ("phase_end", "recovery", 40.0, "completed"),
    ]  # fmt: skip
    ends = [m for m in out if m.kind == "phase_end"]
    assert ends[0].detail["marker"] == "imagery_start" and ends[0].detail["marker_t"] == 16.25


def test_without_its_marker_a_phase_ends_after_the_timeout_and_old_markers_are_ignored():
    r = ProtocolRunner(parse_protocol(TOML))
    out = r.start(0.0)
    out += r.on_marker("imagery_start", -2.0, 1.0)  # sent before the session (a buffered sample): ignored
    out += r.update(29.9)
    assert r.state.phase.name == "baseline"
    out += r.update(31.0)
    (end,) = [m for m in out if m.kind == "phase_end"]
    assert (end.t, end.detail["ended"], end.detail["waited_for"]) == (30.0, "marker timeout", "imagery_start")
    out = r.on_marker("imagery_end", 29.0, 32.0)  # stamped before imagery began at 30: not its end
    assert _phases(out) == [] and r.state.phase.name == "imagery"
    out = r.skip(33.0)  # the experimenter can always move on
    assert _phases(out)[0][3] == "skipped"


# -- a live session with a real LSL marker outlet -----------------------------------------------------------------


class _PsychoPy(threading.Thread):
    """Sends `imagery_start` / `imagery_end` when the session clock reads the given times."""

    def __init__(self, name: str, clock, plan: list[tuple[float, str]], look=None) -> None:
        import pylsl

        super().__init__(daemon=True)
        self.clock, self.plan, self.look = clock, plan, look
        self.seen: list = []
        self.outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "Markers", 1, 0.0, pylsl.cf_string, name))
        self.sent: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        for at, value in self.plan:
            while self.clock.now() < at and not self.stop.is_set():
                time.sleep(0.005)
            if self.stop.is_set():
                return
            if self.look is not None:
                self.seen.append(self.look())  # what the experimenter's monitor shows just before the marker
            self.outlet.push_sample([value])
            self.sent.append((self.clock.now(), value))


def test_psychopy_markers_open_and_close_the_phase_in_a_live_session(tmp_path):
    from biofeedback.live.lsl_inlets import LslInlets
    from biofeedback.live.recorder import build_session, parse_device_specs
    from biofeedback.live.replay import build_replay

    name = f"PsychoPy-{uuid.uuid4().hex[:8]}"
    proto = parse_protocol(TOML.replace('"PsychoPy"', f'"{name}"').replace("duration = 10", "duration = 4")
                           .replace("duration = 30", "duration = 6"))  # fmt: skip
    with Store(tmp_path / "s.sqlite") as store:
        session = build_session(store, proto, parse_device_specs(["sim"], "P11"), speed=2.0, seed=2)
        sender = _PsychoPy(name, session.clock, [(5.5, "imagery_start"), (8.5, "imagery_end")],
                           look=lambda: session.monitor_view().waiting_for_marker)
        session.add_listener(LslInlets(session, [name]))
        sender.start()
        (sid,) = asyncio.run(session.run())
        sender.stop.set()
        sender.join()
        (stream,) = store.lsl_streams(sid)
        got = store.lsl_samples(stream)
        phases = _phases(store.markers(sid))
        with Store(tmp_path / "replay.sqlite") as into:  # a replay walks the same marker-set boundaries
            replay = build_replay(store, sid, speed=4.0, record_into=into)
            (rid,) = asyncio.run(replay.run())
            replayed = _phases(into.markers(rid))
    assert [v[0] for v in got.values] == ["imagery_start", "imagery_end"]
    t_start, t_end = got.t
    np.testing.assert_allclose([t_start, t_end], [t for t, _ in sender.sent], atol=0.05)  # one machine, ×2 clock
    assert phases == [
        ("phase_start", "baseline", pytest.approx(0.0, abs=0.01), ""),
        ("phase_end", "baseline", pytest.approx(t_start, abs=1e-9), "marker"),
        ("phase_start", "imagery", pytest.approx(t_start, abs=1e-9), ""),
        ("phase_end", "imagery", pytest.approx(t_end, abs=1e-9), "marker"),
        ("phase_start", "recovery", pytest.approx(t_end, abs=1e-9), ""),
        ("phase_end", "recovery", pytest.approx(t_end + 4.0, abs=1e-9), "completed"),
    ]  # fmt: skip
    assert 5.4 < t_start < 5.8 and 8.4 < t_end < 8.8  # baseline held past its 4 s; imagery ended before its 6 s
    assert [(k, n, e) for k, n, _, e in replayed] == [(k, n, e) for k, n, _, e in phases]
    np.testing.assert_allclose([t for *_, t, _ in replayed][1:5], [t for *_, t, _ in phases][1:5], atol=0.05)
    assert sender.seen == ["imagery_start", None]  # the monitor said what baseline waited for; imagery was in time


def test_the_command_line_records_the_protocols_marker_stream_by_itself(tmp_path, capsys):
    import app

    name = f"absent-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "p.toml"
    path.write_text(TOML.replace('"PsychoPy"', f'"{name}"'))
    store = tmp_path / "s.sqlite"
    code = app.main(["session", "run", "--participant", "P01", "--protocol", str(path), "--device", "sim",
                     "--speed", "100", "--headless", "--store", str(store)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"no LSL stream named '{name}' found within 5 s" in err and "Traceback" not in err
