"""Long sessions keep memory flat: what is held in memory is bounded by window sizes, not by session length.

A 2-hour simulated session with ECG runs on virtual time (`devices.virtual_time`), then the structures that
used to grow with the session are inspected: the simulator's beats and breathing history, the ECG generator's
beats, the session's per-strap deques and baseline, the live-metric windows, and the WAL file. No wall-clock
assertions (the benchmark benchmarks/bench_long_session.py measures RSS and time).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.live.session import RunningStats
from devices.ecg_synth import EcgStream, ecg_samples
from devices.link import LinkEvent, Packet
from devices.physiology import BREATH_STEP_S, BeatModel, ScheduledGuide, SimParticipant
from devices.simulator import HISTORY_S, SimulatedStrap
from devices.virtual_time import LoopClock, VirtualTimeLoop, run_virtual
from protocols.model import Phase, PhaseKind, Protocol
from recordings.store import Store

HOURS = 2.0
WAL_CHECK_EVERY_S = 30.0
FORGET_BLOCK = 64  # beats dropped at a time by the simulator and the ECG stream
TRIM_BLOCK_S = 1024 * BREATH_STEP_S  # breathing history dropped at a time


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """One strap with ECG, one 2-hour rest phase, recorded on virtual time; WAL size sampled every 30 s."""
    path = tmp_path_factory.mktemp("long") / "store.sqlite"
    wal = Path(str(path) + "-wal")
    store = Store(path)
    protocol = Protocol("long-rest", "one long rest", (Phase("rest", PhaseKind.REST, HOURS * 3600.0),))
    clock = LoopClock()
    session = build_session(store, protocol, parse_device_specs(["sim"], "P01"), seed=5, ecg=True, clock=clock)
    wal_sizes: list[int] = []

    async def main() -> list[int]:
        async def watch_wal() -> None:
            while True:
                wal_sizes.append(wal.stat().st_size if wal.exists() else 0)
                await asyncio.sleep(WAL_CHECK_EVERY_S)

        watcher = asyncio.create_task(watch_wal())
        try:
            return await session.run()
        finally:
            watcher.cancel()

    (sid,) = run_virtual(main())
    yield session, store, sid, wal_sizes, path
    store.close()


@pytest.mark.slow
def test_two_hours_are_recorded_completely(long_run):
    session, store, sid, _, _ = long_run
    beats = store.beats(sid)
    strap = session.straps[0].binding.link
    assert store.session(sid).state == "completed"
    assert beats.t[-1] >= HOURS * 3600 - 2
    # every beat the model produced is stored, except the few before connecting and in the last lookahead
    assert strap.beats_produced - 5 <= beats.t.size <= strap.beats_produced
    assert int(beats.gap_before.sum()) == 1  # only the start: virtual time never lets the strap fall behind
    n_ecg = sum(chunk.size for *_, chunk in store.ecg_chunks(sid))
    assert n_ecg == pytest.approx(130 * HOURS * 3600, rel=0.001)


@pytest.mark.slow
def test_simulator_keeps_only_recent_beats_and_breathing(long_run):
    session, store, sid, _, _ = long_run
    strap = session.straps[0].binding.link
    beats = store.beats(sid)
    max_hr = 60000.0 / beats.rr_ms.min()
    assert strap.beats_produced > 7000
    newest = strap.beats[-1].t_beat
    assert newest - strap.beats[0].t_beat <= HISTORY_S + FORGET_BLOCK * beats.rr_ms.max() / 1000
    assert len(strap.beats) <= FORGET_BLOCK + (HISTORY_S + 5.0) * max_hr / 60
    assert newest - strap.model.history_start <= HISTORY_S + TRIM_BLOCK_S + 5.0
    with pytest.raises(ValueError, match="kept history"):
        strap.model.breathing_signal(10.0)
    # the ECG generator holds only the beats its next samples can reach
    assert strap.ecg_stream is not None
    assert strap.ecg_stream.beats_held <= FORGET_BLOCK + 10


@pytest.mark.slow
def test_session_deques_baseline_and_live_windows_are_bounded(long_run):
    session, store, sid, _, _ = long_run
    state = session.straps[0]
    n_beats = store.beats(sid).t.size
    for name in ("rr", "ecg"):
        held = getattr(state, name)
        assert held.maxlen is not None and len(held) == held.maxlen  # full, and no larger
    assert state.rr.maxlen < n_beats / 3
    assert isinstance(state.baseline, RunningStats)
    assert state.baseline.n > n_beats / 2  # coherence of the whole rest phase, summarised in O(1)
    assert 0.0 < state.baseline.mean < 1.0
    assert state.gaps == []
    snap = state.metrics.snapshot()
    max_hr = 60000.0 / store.beats(sid).rr_ms.min()
    assert 0 < snap.n_beats_window <= state.metrics.window_s * max_hr / 60 + 1
    grid_t, _ = state.metrics.tachogram()
    assert grid_t.size == round(state.metrics.spectral_window_s * state.metrics.resample_hz)
    view = session.strap_views()[0]
    assert view.rr_t.size == state.rr.maxlen
    assert view.ecg_t[-1] - view.ecg_t[0] <= 60.0 + 1.0


@pytest.mark.slow
def test_wal_is_checkpointed_during_the_session(long_run):
    _, _, _, wal_sizes, path = long_run
    assert len(wal_sizes) >= HOURS * 3600 / WAL_CHECK_EVERY_S - 1
    # SQLite's automatic checkpoint (1000 pages) keeps resetting the WAL while the database keeps growing
    assert max(wal_sizes) < 6 * 1024 * 1024
    assert path.stat().st_size > 2 * max(wal_sizes)


def test_bounded_breathing_history_gives_the_same_beats_and_signal():
    guide = ScheduledGuide()
    full, bounded = BeatModel(SimParticipant(seed=4)), BeatModel(SimParticipant(seed=4), history_s=60.0)
    t_full = t_bounded = 0.0
    for _ in range(900):
        a, b = full.next_beat(t_full, guide), bounded.next_beat(t_bounded, guide)
        assert a == b
        t_full, t_bounded = a.t_beat, b.t_beat
    recent = np.linspace(t_full - 60.0, t_full, 500)
    np.testing.assert_array_equal(full.breathing_signal(recent), bounded.breathing_signal(recent))
    assert t_full - 60.0 - TRIM_BLOCK_S <= bounded.history_start <= t_full - 60.0
    assert full.history_start == 0.0
    with pytest.raises(ValueError, match="kept history"):
        bounded.breathing_signal(t_full - 200.0)
    with pytest.raises(ValueError, match="history_s"):
        BeatModel(SimParticipant(), history_s=0.0)


def test_ecg_stream_forgets_old_beats_and_still_equals_the_batch():
    model = BeatModel(SimParticipant(seed=8))
    t, times = 0.0, []
    while t < 20 * 60 + 5:
        t = model.next_beat(t, ScheduledGuide()).t_beat
        times.append(t)
    beats = np.array(times)
    end = 20 * 60.0
    batch = ecg_samples(beats, 0.0, end, seed=3, breathing=model.breathing_signal)
    stream = EcgStream(t_start=0.0, seed=3, breathing=model.breathing_signal)
    chunks, given, known, held = [], 0, 0.0, []
    while stream.next_sample_time < end - 1e-9:
        known += 0.56
        new = beats[given:][beats[given:] < known]
        given += new.size
        stream.extend(new, complete_until=known)
        chunks.append(stream.samples_until(min(end, stream.ready_until))[1])
        held.append(stream.beats_held)
    np.testing.assert_array_equal(np.concatenate(chunks), batch)
    assert given > 1000
    assert max(held) <= FORGET_BLOCK + 10


def _record_strap(keep_history: bool, duration: float) -> tuple[SimulatedStrap, list[Packet], list[LinkEvent]]:
    packets: list[Packet] = []
    events: list[LinkEvent] = []
    clock = LoopClock()
    strap = SimulatedStrap("sim-A", clock, SimParticipant(seed=2), ecg=True, keep_history=keep_history)

    async def main() -> None:
        clock.restart()

        async def stop_later() -> None:
            await asyncio.sleep(duration)
            strap.stop()

        await asyncio.gather(strap.run(packets.append, events.append), stop_later())

    run_virtual(main())
    return strap, packets, events


def test_strap_without_history_sends_exactly_the_same_packets():
    kept, kept_packets, kept_events = _record_strap(True, 900.0)
    bounded, packets, events = _record_strap(False, 900.0)
    assert [(p.t, p.uuid, p.data) for p in packets] == [(p.t, p.uuid, p.data) for p in kept_packets]
    assert events == kept_events
    assert len(kept.beats) == kept.beats_produced == bounded.beats_produced > 1000
    assert len(bounded.beats) < 300
    assert [b.t_beat for b in bounded.beats] == [b.t_beat for b in kept.beats[-len(bounded.beats):]]


def test_virtual_time_jumps_to_timers_in_order_and_threads_can_wake_it():
    order: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = LoopClock()
        clock.restart()

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            order.append((name, clock.now()))

        await asyncio.gather(sleeper("hour", 3600.0), sleeper("minute", 60.0), sleeper("day", 86400.0))
        # nothing scheduled: the loop blocks for real until another thread calls in
        done = loop.create_future()
        threading.Timer(0.01, loop.call_soon_threadsafe, (done.set_result, "woken")).start()
        assert await done == "woken"
        assert clock.now() == 86400.0

    run_virtual(main())
    assert order == [("minute", 60.0), ("hour", 3600.0), ("day", 86400.0)]
    with pytest.raises(RuntimeError, match="inside the loop"):
        LoopClock().now()
    loop = VirtualTimeLoop(start=5.0)
    try:
        assert loop.time() == 5.0
        loop.advance(-1.0)
        assert loop.time() == 5.0
    finally:
        loop.close()


def test_running_stats_match_numpy():
    values = np.random.default_rng(1).normal(0.4, 0.1, 5000)
    stats = RunningStats()
    for v in values:
        stats.add(float(v))
    assert stats.n == values.size
    assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
    assert stats.std == pytest.approx(values.std(), rel=1e-9)
    assert RunningStats().std == 0.0


def test_wal_grown_by_one_large_transaction_is_truncated_back(tmp_path):
    from recordings.store import WAL_SIZE_LIMIT_BYTES

    path = tmp_path / "big.sqlite"
    wal = Path(str(path) + "-wal")
    store = Store(path)
    sid = store.create_session("P01", "p", {}, "sim")
    blob = bytes(range(256)) * 8
    with store.transaction():  # about 20 MB in one transaction, like importing a long capture
        for i in range(10_000):
            store.add_packet(sid, float(i), "2a37", blob)
    grown = wal.stat().st_size
    store.add_marker(sid, 1.0, "manual", "after")  # the next transaction resets the checkpointed WAL
    store.flush()
    assert grown > 2 * WAL_SIZE_LIMIT_BYTES
    assert wal.stat().st_size <= WAL_SIZE_LIMIT_BYTES
    assert store.counts(sid)["packets"] == 10_000
    store.close()
