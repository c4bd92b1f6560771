"""Replay: stored packets come back at their times through the live pipeline, with the same phases, unrecorded."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import numpy as np
import pytest

import app
from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.live.replay import build_replay
from devices.clock import ManualClock, ScaledClock
from devices.link import HEART_RATE_MEASUREMENT_UUID, LinkEvent, LinkState, Packet
from devices.replay import ReplayLink
from devices.simulator import SimFaults
from devices.virtual_time import LoopClock, run_virtual
from protocols.model import Pacer, Phase, Protocol
from recordings.store import Store

SHORT = Protocol(
    "short-test",
    "three short phases",
    (
        Phase("settle", "rest", 40.0, prompt="Sit comfortably.", feedback="hidden"),
        Phase("breathe", "breathing", 60.0, prompt="Breathe with the circle.", pacer=Pacer(6.0, 0.4)),
        Phase("image", "imagery", 50.0, prompt="Bring your image to mind."),
    ),
)


async def run_with_actions(session, actions) -> list[int]:
    """Run a session and call its controls at the given session times (as an experimenter would)."""

    async def act() -> None:
        for t, fn in actions:
            await session.clock.sleep(max(0.0, t - session.clock.now()))
            fn()

    actor = asyncio.ensure_future(act())
    try:
        return await session.run()
    finally:
        actor.cancel()


def phase_starts(store: Store, sid: int) -> list[tuple[str, float]]:
    return [(m.phase_name, m.t) for m in store.markers(sid) if m.kind == "phase_start"]


def ends(store: Store, sid: int) -> list[str]:
    return [m.detail.get("ended") for m in store.markers(sid) if m.kind == "phase_end"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """SHORT with ECG (on virtual time), a 6 s disconnect, and a pause, a marker and a skip by the experimenter."""
    path = tmp_path_factory.mktemp("replay") / "store.sqlite"
    store = Store(path)
    session = build_session(  # virtual time: exact whatever the machine's load
        store, SHORT, parse_device_specs(["sim"], "P03"), seed=4, ecg=True, clock=LoopClock(),
        faults={"P03": SimFaults(disconnects=[(20.0, 6.0)])},
    )  # fmt: skip
    actions = [(55.0, session.pause), (63.0, session.resume), (80.0, lambda: session.add_marker("coughed")),
               (95.0, session.skip_phase)]  # fmt: skip
    (sid,) = run_virtual(run_with_actions(session, actions))
    yield store, sid
    store.close()


def test_replay_link_delivers_stored_packets_unchanged_at_their_times():
    clock = ManualClock()
    packets = [Packet(t, HEART_RATE_MEASUREMENT_UUID, bytes([0x10, 60 + i, 0, 4]), "H10") for i, t in
               enumerate([1.0, 2.0, 5.0, 6.0])]  # fmt: skip
    events = [LinkEvent(0.5, "H10", LinkState.CONNECTED), LinkEvent(3.0, "H10", LinkState.DISCONNECTED, "x"),
              LinkEvent(4.5, "H10", LinkState.CONNECTED), LinkEvent(9.0, "H10", LinkState.CLOSED)]  # fmt: skip
    link = ReplayLink(packets, clock, device_id="H10", events=events)
    got: list = []

    async def main() -> None:
        await link.run(
            lambda p: got.append(("packet", clock.now(), p)), lambda e: got.append(("event", clock.now(), e))
        )

    asyncio.run(main())
    delivered = [p for kind, _, p in got if kind == "packet"]
    assert delivered == packets  # same objects: bytes, uuid, device and stored time untouched
    for _kind, now, item in got[:-1]:
        assert now == pytest.approx(item.t)  # each came out when the clock reached its stored time
    states = [item.state for kind, _, item in got if kind == "event"]
    assert states == [LinkState.CONNECTED, LinkState.DISCONNECTED, LinkState.CONNECTED, LinkState.CLOSED]
    assert got[-1][2].reason == "end of recording"
    assert link.delivered == 4


def test_replay_link_stops_promptly():
    clock = ScaledClock(1.0)
    link = ReplayLink([Packet(0.0, "u", b"a"), Packet(60.0, "u", b"b")], clock)
    got: list = []

    async def main() -> None:
        task = asyncio.create_task(link.run(got.append, got.append))
        await asyncio.sleep(0.05)
        link.stop()
        await asyncio.wait_for(task, 1.0)

    asyncio.run(main())
    assert link.delivered == 1
    assert got[-1].state is LinkState.CLOSED and got[-1].reason == "stopped"


def test_replay_walks_the_same_phases_and_decodes_the_same_beats(recorded, tmp_path):
    store, sid = recorded
    assert ends(store, sid) == ["completed", "skipped", "completed"]
    with Store(tmp_path / "replay.sqlite") as copy:
        session = build_replay(store, sid, speed=100, record_into=copy, clock=LoopClock())
        (rid,) = run_virtual(session.run())
        assert copy.session(rid).settings["replay_of"] == sid
        original, replayed = phase_starts(store, sid), phase_starts(copy, rid)
        assert [n for n, _ in replayed] == [n for n, _ in original] == ["settle", "breathe", "image"]
        # the same session times (virtual time: no scheduling jitter)
        assert np.allclose([t for _, t in replayed], [t for _, t in original], atol=0.01)
        assert ends(copy, rid) == ends(store, sid)
        kinds = [m.kind for m in copy.markers(rid) if m.kind in ("pause", "resume", "skip", "manual")]
        assert kinds == ["pause", "resume", "manual", "skip"]
        assert copy.notes(rid) == []
        a, b = store.beats(sid), copy.beats(rid)
        # the same raw packets decode to the same beats and gaps (the disconnect is replayed as an event)
        np.testing.assert_array_equal(a.t, b.t)
        np.testing.assert_array_equal(a.rr_ms, b.rr_ms)
        np.testing.assert_array_equal(a.gap_before, b.gap_before)
        assert [e[2] for e in copy.link_events(rid)].count("disconnected") == 1
        assert copy.counts(rid)["ecg_chunks"] == store.counts(sid)["ecg_chunks"] > 0


def test_cli_replay_records_nothing(recorded, tmp_path, capsys):
    store, sid = recorded
    store.flush()
    before = {s.id for s in store.sessions()}
    temp_before = set(Path(tempfile.gettempdir()).glob("cmt-replay-*"))
    assert app.main(["replay", str(sid), "--speed", "300", "--headless", "--store", str(store.path)]) == 0
    out = capsys.readouterr().out
    n = store.counts(sid)["packets"]
    assert f"Replay finished: {n} of {n} packets played" in out
    assert {s.id for s in Store(store.path).sessions()} == before
    assert set(Path(tempfile.gettempdir()).glob("cmt-replay-*")) == temp_before  # its private store is gone


def test_replay_of_a_session_without_packets_is_a_clear_error(tmp_path, capsys):
    rr = tmp_path / "rr.txt"
    rr.write_text("\n".join(["800", "810", "790"] * 30))
    path = tmp_path / "s.sqlite"
    assert app.main(["import", "rr", str(rr), "--participant", "P01", "--store", str(path)]) == 0
    capsys.readouterr()
    assert app.main(["replay", "1", "--headless", "--store", str(path)]) == 2
    assert "no raw packets to replay" in capsys.readouterr().err
