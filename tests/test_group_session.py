"""Group sessions: six simulated straps on one protocol and clock; one drops twice and affects only its wearer."""

from __future__ import annotations

import numpy as np
import pytest

from biofeedback.analysis.analyze import analyze_session
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.simulator import SimFaults
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from recordings.store import Store

PIDS = [f"P0{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("group") / "store.sqlite")
    faults = {
        "P03": SimFaults(
            disconnects=[(200.0, 12.0), (700.0, 25.0)],
            malformed_bursts=[(400.0, 3.0)],
            contact_loss=[(1000.0, 6.0)],
        )
    }
    specs = parse_device_specs([f"sim={p}" for p in PIDS], None)
    # virtual time: exact and as fast as the CPU allows, so a loaded machine cannot blur the fault windows
    session = build_session(store, get_protocol("cmt-soothing"), specs, seed=10, faults=faults, clock=LoopClock())
    ids = run_virtual(session.run())
    yield store, dict(zip(PIDS, ids, strict=True))
    store.close()


def test_every_participant_has_a_complete_session(group):
    store, ids = group
    infos = [store.session(sid) for sid in ids.values()]
    assert len({i.group_id for i in infos}) == 1 and infos[0].group_id
    for pid, sid in ids.items():
        info = store.session(sid)
        assert info.participant_id == pid and info.state == "completed"
        beats = store.beats(sid)
        assert beats.t[0] < 5.0 and beats.t[-1] > 1495.0  # connected within a few seconds, recorded to the end
        starts = [m.t for m in store.markers(sid) if m.kind == "phase_start"]
        assert len(starts) == 6


def test_markers_are_on_one_clock(group):
    store, ids = group
    marker_times = [[m.t for m in store.markers(sid)] for sid in ids.values()]
    for times in marker_times[1:]:
        assert times == marker_times[0]


def test_dropouts_are_gaps_only_for_their_wearer(group):
    store, ids = group
    for pid, sid in ids.items():
        beats = store.beats(sid)
        events = [e[2] for e in store.link_events(sid)]
        if pid == "P03":
            assert events.count("disconnected") == 2
            gap_times = beats.t[beats.gap_before][1:]
            # two disconnects, a contact loss, and the beats lost in the malformed burst: each an explicit gap
            assert len(gap_times) == 4
            for t0 in (200.0, 400.0, 700.0, 1000.0):
                assert np.any((gap_times > t0) & (gap_times < t0 + 30.0))
            for t0, dur in [(200.0, 12.0), (700.0, 25.0)]:
                assert not np.any((beats.t > t0 + 0.5) & (beats.t < t0 + dur - 0.5))
            assert len(store.packet_errors(sid)) >= 1  # the malformed burst is kept and explained
        else:
            assert "disconnected" not in events
            assert beats.gap_before.sum() == 1
            assert store.packet_errors(sid) == []


def test_no_interval_is_invented_across_a_gap(group):
    store, ids = group
    beats = store.beats(ids["P03"])
    # an interval that spans a 12 s disconnect would be > 3 s; every stored RR is a real strap interval
    assert beats.rr_ms.max() < 2000.0


def test_each_participant_analyses(group):
    store, ids = group
    for pid, sid in ids.items():
        analysis = analyze_session(store, sid)
        rest = next(p for p in analysis.phases if p.kind == "rest")
        breathing = next(p for p in analysis.phases if p.kind == "breathing")
        assert rest.rmssd_ms is not None and breathing.rmssd_ms is not None
        if pid == "P03":
            assert analysis.quality["disconnects"] == 2
            assert analysis.quality["gaps"] == 4
