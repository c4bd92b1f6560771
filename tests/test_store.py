"""The store: private files, WAL, sessions, the raw layer, recovery of interrupted sessions, beat reconstruction."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys

import numpy as np
import pytest

from devices.heart_rate import encode_heart_rate
from devices.link import HEART_RATE_MEASUREMENT_UUID
from recordings.beat_timeline import LiveBeatTimeline
from recordings.capture import (
    ImportFormatError,
    export_capture,
    import_capture,
    parse_capture,
)
from recordings.decode import redecode_session
from recordings.files import OutputExistsError
from recordings.import_rr import import_rr, parse_rr_text
from recordings.store import Store, StoreError


def test_store_file_is_private_and_wal(tmp_path):
    path = tmp_path / "sub" / "store.sqlite"
    with Store(path) as store:
        sid = store.create_session("P01", "rest-5min", {"phases": []}, "sim")
        store.add_packet(sid, 0.5, HEART_RATE_MEASUREMENT_UUID, b"\x00\x48")
        store.flush()
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_participant_ids_must_be_pseudonymous_codes(store_path):
    with Store(store_path) as store:
        with pytest.raises(StoreError, match="pseudonymous"):
            store.ensure_participant("Jane Doe")
        assert store.ensure_participant(" P-07 ") == "P-07"


def test_uncommitted_writes_are_invisible_until_flush(store_path):
    store = Store(store_path)
    sid = store.create_session("P01", "x", {}, "sim")
    store.add_marker(sid, 1.0, "note", "hello")
    other = sqlite3.connect(store_path)
    assert other.execute("SELECT COUNT(*) FROM markers").fetchone()[0] == 0
    store.flush()
    assert other.execute("SELECT COUNT(*) FROM markers").fetchone()[0] == 1
    store.close()


def test_running_session_of_a_dead_process_is_marked_interrupted(store_path):
    code = (
        "import sys, os; sys.path.insert(0, os.getcwd());"
        "from recordings.store import Store;"
        f"s = Store({str(store_path)!r}); sid = s.create_session('P01', 'x', {{}}, 'sim');"
        "s.add_marker(sid, 0.0, 'session_start', 'start'); s.flush(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())
    with Store(store_path) as store:
        (info,) = store.sessions()
        assert info.state == "interrupted"
        assert len(store.markers(info.id)) == 1


def test_own_running_session_is_not_interrupted(store_path):
    with Store(store_path) as store:
        sid = store.create_session("P01", "x", {}, "sim")
        assert store.recover_interrupted() == []
        assert store.session(sid).state == "running"


def test_not_a_store_is_refused_clearly(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a recorder store"):
        Store(bad)


# -- beat reconstruction -------------------------------------------------------------------------------------


def test_first_notification_lays_beats_back_from_arrival():
    tl = LiveBeatTimeline()
    rows = tl.add(10.0, [1024, 512])
    assert [r.t for r in rows] == [9.5, 10.0]
    assert [r.rr_ms for r in rows] == [1000.0, 500.0]
    assert [r.gap_before for r in rows] == [True, False]


def test_chain_follows_rr_sum_and_tracks_lag():
    tl = LiveBeatTimeline()
    tl.add(1.0, [1024])
    rows = tl.add(2.3, [1024])  # arrives 0.3 s after the beat
    assert rows[0].t == pytest.approx(2.0)
    assert rows[0].arrival_lag_s == pytest.approx(0.3)
    assert not rows[0].gap_before


def test_explicit_gap_never_invents_an_interval():
    tl = LiveBeatTimeline()
    tl.add(1.0, [1024])
    tl.mark_gap()
    rows = tl.add(30.0, [1024])
    assert rows[0].gap_before and rows[0].t == 30.0 and rows[0].rr_ms == 1000.0


def test_one_late_notification_is_not_a_gap():
    tl = LiveBeatTimeline()
    tl.add(1.0, [1024])
    rows = tl.add(6.0, [1024])  # five seconds late, carrying one beat
    assert not rows[0].gap_before and rows[0].t == pytest.approx(2.0)


def test_better_anchor_is_slewed_in_without_moving_beats():
    tl = LiveBeatTimeline()
    first = tl.add(1.0, [1024])  # this notification was late: the next one shows the chain 0.2 s earlier
    rows = first + tl.add(1.8, [1024]) + tl.add(2.8, [1024]) + tl.add(3.8, [1024])
    spacing = np.diff([r.t for r in rows])
    assert np.all(np.abs(spacing - 1.0) <= 0.02 + 1e-12)  # at most 2 % of RR per beat
    assert spacing[0] < 1.0  # moving towards the better anchor


# -- captures and RR files -----------------------------------------------------------------------------------


def _write_capture(path, n=120, gap_at=None):
    lines = []
    beat_t = 0.0
    for i in range(n):
        rr = [800 + (i % 7) * 10]
        beat_t += rr[0] / 1024
        if gap_at is not None and i == gap_at:
            beat_t += 5.0
            lines.append(json.dumps({"t": beat_t - 0.5, "event": "disconnected", "reason": "test"}))
        t = beat_t + (0.03 if i % 3 else 0.01)  # arrival a little after the beat
        lines.append(json.dumps({"t": t, "uuid": "2a37", "hex": encode_heart_rate(70, rr).hex(), "device": "sim-1"}))
    lines.append(json.dumps({"t": t + 0.2, "uuid": "2a37", "hex": "11"}))  # malformed: truncated
    path.write_text("\n".join(lines) + "\n")
    return path


def test_capture_round_trip_gives_identical_beats(tmp_path, store_path):
    cap = _write_capture(tmp_path / "in.jsonl", gap_at=50)
    with Store(store_path) as store:
        sid, counts = import_capture(store, cap, "P01")
        assert counts.malformed == 1 and counts.beats == 120
        first = store.beats(sid)
        assert first.gap_before.sum() == 2  # start of recording and the disconnect
        out = export_capture(store, sid, tmp_path / "out")
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        with pytest.raises(OutputExistsError):
            export_capture(store, sid, tmp_path / "out")
    with Store(tmp_path / "other.sqlite") as other:  # the same recording twice in one store is refused (its UUID)
        sid2, _ = import_capture(other, out, "P01")
        second = other.beats(sid2)
        np.testing.assert_array_equal(first.t, second.t)
        np.testing.assert_array_equal(first.rr_ms, second.rr_ms)
        np.testing.assert_array_equal(first.gap_before, second.gap_before)
        assert len(other.packet_errors(sid2)) == 1


def test_redecode_rebuilds_the_same_beats_from_raw(tmp_path, store_path):
    cap = _write_capture(tmp_path / "in.jsonl", gap_at=30)
    with Store(store_path) as store:
        sid, _ = import_capture(store, cap, "P01")
        before = store.beats(sid)
        counts = redecode_session(store, sid)
        after = store.beats(sid)
        assert counts.beats == len(before.t)
        np.testing.assert_array_equal(before.t, after.t)
        np.testing.assert_array_equal(before.gap_before, after.gap_before)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"t": 1, "uuid": "2a37", "hex": "0048"}\n{"t": 2, "uuid": "2a37", "hex": "zz"}', 'line 2: "hex"'),
        ('{"t": 1, "uuid": "2a37", "hex": "0048"}\n{"t": 0.5, "uuid": "2a37", "hex": "0048"}', "backwards"),
        ('{"t": 1, "uuid": "2a37", "hex": "0048"}\nnot json', "line 2: not valid JSON"),
        ('{"t": "x", "uuid": "2a37", "hex": "0048"}', 'line 1: "t"'),
        ('{"t": 1, "uuid": "heart", "hex": "0048"}', "not a characteristic UUID"),
        ('{"t": 1, "uuid": "2a37", "hex": "0048", "extra": 1}', "unknown field"),
    ],
)
def test_broken_capture_is_refused_with_line(text, message):
    with pytest.raises(ImportFormatError, match=message):
        parse_capture(text, "cap.jsonl")


def test_broken_capture_leaves_nothing_behind(tmp_path, store_path):
    cap = tmp_path / "bad.jsonl"
    cap.write_text('{"t": 1, "uuid": "2a37", "hex": "0048"}\n{"t": 2}\n')
    with Store(store_path) as store:
        with pytest.raises(ImportFormatError):
            import_capture(store, cap, "P01")
        assert store.sessions() == []


def test_rr_file_plain_and_csv(tmp_path, store_path, shared_data):
    plain = tmp_path / "rr.txt"
    plain.write_text("800\n810\n790\n")
    assert parse_rr_text(plain.read_text()) == [800.0, 810.0, 790.0]
    with pytest.raises(ImportFormatError, match="seconds"):
        parse_rr_text("0.8\n0.81\n", "rr.txt")
    with Store(store_path) as store:
        sid = import_rr(store, shared_data / "polar_h10_dhyb_ibi.csv", "P02", column="ibi_ms")
        beats = store.beats(sid)
        assert len(beats.t) == 620
        assert beats.t[-1] == pytest.approx(beats.rr_ms.sum() / 1000.0)
        markers = store.markers(sid)
        assert [m.kind for m in markers] == ["phase_start", "phase_end"]
        assert markers[0].phase_name == "whole"


def test_an_import_that_fails_after_creating_its_session_leaves_nothing(store_path):
    with Store(store_path) as store:
        with pytest.raises(RuntimeError), store.transaction():
            store.create_session("P01", "x", {}, "rr-file", source="rr")  # commits on its own outside a transaction
            raise RuntimeError("broken input found late")
        assert store.sessions() == []
        assert store.participants() == []


def test_a_capture_of_two_straps_is_imported_one_strap_at_a_time(tmp_path, store_path):
    lines = []
    for i in range(30):
        for dev, rr in (("strap-a", 800), ("strap-b", 1000)):
            t = (i + 1) * 1.0 + (0.01 if dev == "strap-b" else 0.0)
            data = encode_heart_rate(60, [rr * 1024 // 1000]).hex()
            lines.append(json.dumps({"t": t, "uuid": "2a37", "hex": data, "device": dev}))
    cap = tmp_path / "group.jsonl"
    cap.write_text("\n".join(lines))
    with Store(store_path) as store:
        with pytest.raises(ImportFormatError, match="several straps"):
            import_capture(store, cap, "P01")
        sid, counts = import_capture(store, cap, "P02", device="strap-b")
        assert counts.beats == 30
        assert set(np.round(store.beats(sid).rr_ms)) == {1000.0}


def test_deleting_a_session_with_lsl_streams_takes_its_chunks_too(store_path):
    """`sessions delete` of a session recorded with --lsl-in (its chunks hang on its streams, not on the session)."""
    with Store(store_path) as store:
        sid = store.create_session("P01", "x", {}, "sim")
        stream = store.add_lsl_stream(sid, "PsychoPy", "Markers", "psy-1", 1, 0.0, "<info/>", 1000.25, 1.0)
        store.add_lsl_chunk(stream, 3.0, 0.001, [1002.0], [["start"]])
        store.end_session(sid, "completed")
        store.delete_session(sid, by="ra1")
        assert store.sessions() == []
        db = store.connection
        assert db.execute("SELECT COUNT(*) FROM lsl_streams").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM lsl_chunks").fetchone()[0] == 0
