"""LSL outlets of a running simulated session, received by inlets on a loopback-only LSL configuration."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.live.session import SessionListener
from protocols.model import Pacer, Phase, PhaseKind, Protocol
from recordings.beat_timeline import LIVE_SLEW_FRACTION
from recordings.ecg_time import map_ecg_chunks
from recordings.store import Store

PROTOCOL = Protocol(
    "lsl-test",
    "three short phases",
    (
        Phase("baseline", PhaseKind.REST, 20.0),
        Phase("breathing", PhaseKind.BREATHING, 20.0, pacer=Pacer(6.0)),
        Phase("recovery", PhaseKind.RECOVERY, 20.0),
    ),
)


def _pull_all(inlet, quiet_s: float = 1.0) -> tuple[list, np.ndarray]:
    """Everything the inlet has or receives until it stays quiet for `quiet_s` seconds."""
    values, stamps = [], []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        chunk, ts = inlet.pull_chunk(timeout=0.2)
        if ts:
            values.extend(chunk)
            stamps.extend(ts)
            last = time.monotonic()
    return values, np.asarray(stamps)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A 60 s protocol at ×10 with ECG, and what LSL inlets received of it."""
    import pylsl

    from biofeedback.live.lsl_outlets import LslOutlets

    store = Store(tmp_path_factory.mktemp("store") / "store.sqlite")
    session = build_session(store, PROTOCOL, parse_device_specs(["sim"], "P07"), speed=10, seed=5, ecg=True)
    outlets = LslOutlets(session)
    session.add_listener(outlets)
    device = session.straps[0].binding.link.device_id
    inlets = {}
    for kind in ("ecg", "rr", "hr"):
        (info,) = pylsl.resolve_byprop("source_id", f"cmt-biofeedback/{device}/{kind}", timeout=10)
        inlets[kind] = pylsl.StreamInlet(info, max_buflen=360)
    (info,) = pylsl.resolve_byprop("type", "Markers", timeout=10)
    inlets["markers"] = pylsl.StreamInlet(info, max_buflen=360)
    for inlet in inlets.values():
        inlet.open_stream(timeout=10)
    full_infos = {k: inlet.info(timeout=10) for k, inlet in inlets.items()}

    async def run():
        async def manual():
            await session.clock.sleep(45.0)
            session.add_marker("door knock", note="private: never streamed")

        task = asyncio.create_task(manual())
        ids = await session.run()
        await task
        return ids

    (sid,) = asyncio.run(run())
    received = {k: _pull_all(inlet) for k, inlet in inlets.items()}
    corrections = {k: inlet.time_correction(timeout=5) for k, inlet in inlets.items()}
    outlets.close()
    yield store, sid, outlets, received, corrections, full_infos
    store.close()


def test_stream_metadata_names_the_strap_and_participant(streamed):
    _store, _sid, _outlets, _received, _corr, infos = streamed
    ecg = infos["ecg"]
    assert ecg.type() == "ECG"
    assert ecg.nominal_srate() == pytest.approx(130.0)
    assert ecg.channel_format() == 1  # cf_float32
    assert ecg.source_id() == "cmt-biofeedback/sim-1/ecg"
    ch = ecg.desc().child("channels").child("channel")
    assert (ch.child_value("label"), ch.child_value("unit"), ch.child_value("type")) == ("ECG", "microvolts", "ECG")
    assert ecg.desc().child_value("participant_id") == "P07"
    rr = infos["rr"]
    assert rr.nominal_srate() == 0.0  # irregular
    assert rr.desc().child("channels").child("channel").child_value("unit") == "milliseconds"
    assert infos["markers"].channel_format() == 3  # cf_string


def test_markers_arrive_at_the_phase_boundaries(streamed):
    store, sid, outlets, received, _corr, _ = streamed
    labels, stamps = received["markers"]
    labels = [v[0] for v in labels]
    # one machine, one clock: stamps arrive exactly as pushed (the inlets' time correction is checked separately)
    pairs = list(zip(labels, stamps, strict=True))
    starts = {lab.split(": ", 1)[1]: ts for lab, ts in pairs if lab.startswith("phase_start")}
    assert list(starts) == [p.name for p in PROTOCOL.phases]
    session_start = next(m.t for m in store.markers(sid) if m.kind == "session_start")
    for planned, ts in zip(PROTOCOL.phase_starts_s, starts.values(), strict=True):
        assert ts == pytest.approx(outlets.offset + session_start + planned, abs=1e-6)
    ends = [ts for lab, ts in zip(labels, stamps, strict=True) if lab.startswith("phase_end")]
    assert len(ends) == 3
    assert ends[-1] == pytest.approx(outlets.offset + session_start + PROTOCOL.total_duration_s, abs=1e-6)
    manual = [m for m in store.markers(sid) if m.kind == "manual"]
    (knock,) = [ts for lab, ts in zip(labels, stamps, strict=True) if lab == "manual"]
    assert knock == pytest.approx(outlets.offset + manual[0].t, abs=1e-6)
    assert not any("private" in lab or "door knock" in lab for lab in labels)  # free text only with include_text
    # the offset maps session time onto the LSL clock of this machine (stamps are not left at zero)
    assert abs(outlets.offset - time.monotonic()) < 60


def test_rr_stream_equals_the_stored_beats(streamed):
    store, sid, outlets, received, _corr, _ = streamed
    values, stamps = received["rr"]
    values = np.asarray(values)
    stamps = np.asarray(stamps)
    beats = store.beats(sid)
    assert len(beats.t) > 40
    np.testing.assert_allclose(values[:, 0], beats.rr_ms, rtol=1e-6)
    np.testing.assert_array_equal(values[:, 1].astype(bool), beats.gap_before)
    # live stamps are the live beat times: spaced by the RR inside a stretch (within the documented 2 % while the
    # anchor settles); the stored beats were refitted after the session and stay within a notification of them
    inside = ~values[1:, 1].astype(bool)
    spacing = np.diff(stamps)[inside] * 1000.0
    np.testing.assert_allclose(spacing, values[1:, 0][inside], rtol=LIVE_SLEW_FRACTION + 1e-6)
    assert np.max(np.abs(stamps - (outlets.offset + beats.t))) < 1.0


def test_heart_rate_stream_equals_the_strap_values(streamed):
    store, sid, outlets, received, _corr, _ = streamed
    values, stamps = received["hr"]
    t, bpm = store.heart_rate(sid)
    keep = bpm > 0
    np.testing.assert_array_equal(np.asarray(values)[:, 0], bpm[keep])
    np.testing.assert_allclose(stamps, outlets.offset + t[keep], atol=1e-6)


def test_inlets_see_the_same_clock_as_the_outlets(streamed):
    *_, corr, _infos = streamed
    assert all(abs(c) < 1.0 for c in corr.values()), corr  # one machine: LSL's round-trip estimate is ~0


def test_ecg_stream_has_every_sample_at_130_hz_on_the_session_clock(streamed):
    store, sid, outlets, received, _corr, _ = streamed
    values, stamps = received["ecg"]
    stored = np.concatenate([s for _t, _ns, _fs, s in store.ecg_chunks(sid)])
    np.testing.assert_array_equal(np.asarray(values)[:, 0], stored.astype(np.float32))
    dt = np.diff(stamps)
    assert np.all(dt > 0)
    # samples are spaced by the strap's own clock (1/130 s) except where a better offset is slewed in, at most half a
    # sample per 73-sample frame (a late first notification makes the first offset too large): the mean rate stays
    # within that budget
    assert np.median(dt) == pytest.approx(1 / 130.0, rel=1e-6)
    slew_budget = 0.5 / 73
    assert (len(stamps) - 1) / (stamps[-1] - stamps[0]) == pytest.approx(130.0, rel=slew_budget)
    # each frame arrives after its last sample: stamps run ahead of the arrival time only by what is left of the
    # first frame's own extra delay (its lag over the least one), which the slew takes off at half a sample a frame
    # (a loaded machine delays that first frame by tenths of a session second at ×10; this once failed a flat 50 ms)
    chunks = store.ecg_chunks(sid)
    last_per_frame = stamps[72::73]
    arrivals = np.array([t for t, _ns, _fs, _s in chunks])[: len(last_per_frame)]
    device_s = np.array([ns for _t, ns, _fs, _s in chunks])[: len(last_per_frame)] / 1e9
    first_excess = (arrivals[0] - device_s[0]) - float(np.min(arrivals - device_s))
    left = np.maximum(0.0, first_excess - np.arange(len(last_per_frame)) * 0.5 / 130.0)
    lag = (arrivals + outlets.offset) - last_per_frame
    assert np.all(lag > -(left + 0.05))
    assert np.median(lag) < 0.5


def test_device_clock_map_recovers_sample_times_despite_delivery_jitter():
    from recordings.ecg_time import DeviceClockMap

    rng = np.random.default_rng(1)
    drift = 20e-6
    cmap = DeviceClockMap(window=100)
    errors = []
    for k in range(2000):
        true_last = 3.0 + (k * 73 + 72) / 130.0 / (1 + drift)  # session time of the frame's last sample
        device_ns = 10**18 + round((k * 73 + 72) * 1e9 / 130.0)
        arrival = true_last + 0.02 + rng.exponential(0.05)
        times = cmap.sample_times(arrival, device_ns, 73)
        errors.append(times[-1] - true_last)
    late = np.abs(errors[200:])
    assert np.max(late) < 0.03  # jitter of up to hundreds of ms is gone; only the fixed latency remains
    assert np.all(np.asarray(errors) > -1e-9)


def test_a_failing_listener_is_dropped_and_recording_goes_on(tmp_path):
    class Broken(SessionListener):
        calls = 0

        def beats(self, strap, rows):
            Broken.calls += 1
            raise RuntimeError("consumer went away")

    store = Store(tmp_path / "s.sqlite")
    proto = Protocol("short", "", (Phase("baseline", PhaseKind.REST, 20.0),))
    session = build_session(store, proto, parse_device_specs(["sim"], "P01"), speed=50, seed=1)
    session.add_listener(Broken())
    (sid,) = asyncio.run(session.run())
    assert Broken.calls == 1
    assert session.listeners == []
    assert store.session(sid).state == "completed"
    assert len(store.beats(sid).t) > 15
    store.close()


def test_device_clock_map_never_steps_time_backwards():
    from recordings.ecg_time import DeviceClockMap

    cmap = DeviceClockMap(window=5)
    last = -np.inf
    rng = np.random.default_rng(3)
    for k in range(500):
        device_ns = round((k * 73 + 72) * 1e9 / 130.0)
        arrival = (k * 73 + 72) / 130.0 + rng.choice([0.4, 0.01])  # lag drops sharply now and then
        times = cmap.sample_times(arrival, device_ns, 73)
        assert times[0] > last and np.all(np.diff(times) > 0)
        last = times[-1]


# -- consumers that subscribe late (LabRecorder), --lsl-wait, lingering outlets, free text, measured ECG rate ----
SHORT = Protocol("lsl-short", "", (Phase("baseline", PhaseKind.REST, 10.0), Phase("recovery", PhaseKind.REST, 6.0)))


def _unique_pid() -> str:
    """A participant code no other process on this machine streams (stream lookups go by it)."""
    return f"L{uuid.uuid4().hex[:8]}"


class _LateConsumer(threading.Thread):
    """Like LabRecorder: resolves this participant's streams some time after they appear, subscribes to each in
    turn, and records until `session_end` has arrived and the streams stayed quiet (or they disappear)."""

    def __init__(self, pid: str, delay_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.delay_s = pid, delay_s
        self.opened: list[float] = []
        self.markers: list[str] = []
        self.rr: list[float] = []

    def run(self) -> None:
        import pylsl

        time.sleep(self.delay_s)
        infos = pylsl.resolve_bypred(f"desc/participant_id='{self.pid}' or desc/participants='{self.pid}'",
                                     minimum=4, timeout=10)  # fmt: skip
        inlets = {}
        for info in sorted(infos, key=lambda i: i.type()):
            inlet = pylsl.StreamInlet(info, max_buflen=60)
            # when it began to subscribe: the outlet cannot have this consumer before, while open_stream may return
            # (on this thread) a little after the outlet has seen it (1.4 ms after the clock started, once, loaded)
            self.opened.append(time.monotonic())
            inlet.open_stream(timeout=5)
            inlets[info.type()] = inlet
            time.sleep(0.1)
        deadline = time.monotonic() + 20
        quiet_since = None
        while time.monotonic() < deadline:
            got = False
            for kind, inlet in inlets.items():
                chunk, ts = inlet.pull_chunk(timeout=0.05)
                got |= bool(ts)
                if kind == "Markers":
                    self.markers += [c[0] for c in chunk]
                elif kind == "RR":
                    self.rr += [c[0] for c in chunk]
            if got or not any(m.startswith("session_end") for m in self.markers):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 1.0:
                return


def _run_short(store, pid: str, *, wait: int | None, include_text: bool = False, speed: float = 20):
    from biofeedback.live.lsl_outlets import LslOutlets

    session = build_session(store, SHORT, parse_device_specs(["sim"], pid), speed=speed, seed=2)
    outlets = LslOutlets(session, include_text=include_text)
    session.add_listener(outlets)
    consumer = _LateConsumer(pid, delay_s=0.5)
    consumer.start()
    progress: list[int] = []
    waited = None
    if wait is not None:
        waited = outlets.wait_for_consumers(wait, timeout_s=20, on_progress=progress.append)
    clock_start = time.monotonic()

    async def run():
        async def manual():
            await session.clock.sleep(14.0)
            session.add_marker("door knock", note="private")

        task = asyncio.create_task(manual())
        ids = await session.run()
        await task
        return ids

    (sid,) = asyncio.run(run())
    outlets.close()  # lingers while the consumer takes the last samples
    consumer.join(timeout=25)
    return sid, consumer, waited, progress, clock_start


def test_lsl_wait_holds_the_clock_until_late_consumers_subscribe_and_every_marker_arrives(tmp_path):
    from biofeedback.live.lsl_outlets import marker_text

    pid = _unique_pid()
    with Store(tmp_path / "s.sqlite") as store:
        sid, consumer, waited, progress, clock_start = _run_short(store, pid, wait=4)
        assert waited is True and progress[0] == 0 and progress == sorted(progress)
        assert len(consumer.opened) == 4 and clock_start > consumer.opened[-1]  # every stream subscribed first
        stored = [marker_text(m) for m in store.markers(sid)]
        assert stored[0].startswith("session_start") and stored[-1] == "session_end: session ended"
        assert consumer.markers == stored  # all of them, in order: session_start, the first phase_start ... end
        assert consumer.markers[1] == "phase_start: baseline"
        assert "manual" in consumer.markers and not any("door knock" in m for m in consumer.markers)
        np.testing.assert_allclose(consumer.rr, store.beats(sid).rr_ms, rtol=1e-6)  # nothing lost at either end


def test_without_waiting_a_late_consumer_misses_the_start(tmp_path):
    pid = _unique_pid()
    with Store(tmp_path / "s.sqlite") as store:
        # 5.3 s of session: the consumer subscribes about 1 s in, after session_start, well before the end
        _sid, consumer, _w, _p, _t = _run_short(store, pid, wait=None, include_text=True, speed=3)
    assert consumer.markers and not any(m.startswith("session_start") for m in consumer.markers)
    assert consumer.markers[-1] == "session_end: session ended"  # the lingering outlets still deliver the end
    assert "manual: door knock" in consumer.markers  # the label only with include_text


def test_cli_lsl_wait_without_consumers_fails_in_one_line_and_stops_the_sessions(tmp_path, capsys):
    import app

    store = tmp_path / "s.sqlite"
    code = app.main(["session", "run", "--participant", _unique_pid(), "--protocol", "cmt-soothing", "--device",
                     "sim", "--speed", "100", "--headless", "--lsl", "--lsl-wait", "2", "--lsl-wait-timeout", "0.3",
                     "--store", str(store)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "only 0 of 2 LSL streams had a consumer after 0.3 s" in err and "Traceback" not in err
    with Store(store) as st:
        assert [s.state for s in st.sessions()] == ["stopped"]


def test_ecg_metadata_carries_the_rate_measured_in_the_straps_last_session(tmp_path):
    import pylsl

    from biofeedback.live.lsl_outlets import LslOutlets

    pid = _unique_pid()
    with Store(tmp_path / "s.sqlite") as store:
        first = build_session(store, SHORT, parse_device_specs(["sim"], pid), speed=50, seed=4, ecg=True)
        (sid,) = asyncio.run(first.run())
        measured = map_ecg_chunks(store.ecg_chunks(sid)).fs_hz
        assert abs(measured - 130.0) > 1e-3  # the simulated strap's clock drifts, as a real one does
        second = build_session(store, SHORT, parse_device_specs(["sim"], pid), speed=50, seed=4, ecg=True)
        outlets = LslOutlets(second)
        (info,) = pylsl.resolve_bypred(f"type='ECG' and desc/participant_id='{pid}'", timeout=10)
        full = pylsl.StreamInlet(info).info(timeout=10)
        outlets.close()
    assert full.nominal_srate() == pytest.approx(measured, abs=1e-6)
    desc = full.desc()
    assert float(desc.child_value("measured_srate")) == pytest.approx(measured, abs=1e-4)
    assert desc.child_value("device_nominal_srate") == "130"
    assert desc.child_value("srate_source") == f"measured on the host clock in session {sid}"


_OUTLET_SCRIPT = """
import sys, time, pylsl
outlet = pylsl.StreamOutlet(pylsl.StreamInfo("other-run", "RR", 1, 0, pylsl.cf_float32, sys.argv[1]))
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("same_run", [True, False])
def test_streams_of_another_test_run_are_invisible(tmp_path, same_run):
    """Two suites at once on one machine: each run's LSL session id keeps its streams to itself."""
    import pylsl

    config = os.environ["LSLAPICFG"]
    if not same_run:  # another run: the same loopback file with a session id of its own
        text = Path(config).read_text(encoding="utf-8")
        other = tmp_path / "other.cfg"
        other.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("SessionID")) + "\n")
        config = str(other)
    source_id = f"cmt-tests-isolation-{uuid.uuid4().hex}"
    proc = subprocess.Popen([sys.executable, "-c", _OUTLET_SCRIPT, source_id], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "LSLAPICFG": config})
    try:
        assert proc.stdout.readline().strip() == "ready"
        found = pylsl.resolve_byprop("source_id", source_id, timeout=3.0 if same_run else 2.0)
        assert len(found) == (1 if same_run else 0)
    finally:
        proc.kill()
        proc.wait()
