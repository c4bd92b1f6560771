"""Portable recordings: store backup during a recording, session bundles, store merge, exact capture round trip,
and progress lines on a pipe."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

import app
from biofeedback.live.recorder import build_session, parse_device_specs, parse_sim_faults
from devices.clock import ScaledClock
from devices.virtual_time import LoopClock, run_virtual
from protocols.instruments import DIARY_NAME, get_instrument
from protocols.model import Phase, PhaseKind, Protocol
from recordings import review
from recordings.answers import AnswerStore
from recordings.backup import backup_store, store_info
from recordings.bundle import BundleError, DuplicateSessionError, export_bundle, import_bundle, merge_store
from recordings.capture import ImportFormatError, export_capture, import_capture
from recordings.files import OutputExistsError
from recordings.store import SCHEMA_VERSION, Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = Protocol("short", "rest then paced", (Phase("baseline", PhaseKind.REST, 40.0),
                                                 Phase("paced", PhaseKind.BREATHING, 40.0)))  # fmt: skip
DIARY = get_instrument(DIARY_NAME)
WEEK = {"sc_often": 6, "sc_powerful": 5, "sc_intrusive": 4, "sc_hard_to_dismiss": 7,
        "ss_often": 1, "ss_powerful": 2, "ss_accessible": 0, "ss_warm": 3}  # fmt: skip
SECRET = "my image is my grandmother's kitchen"


def _record(store: Store, participant: str, seed: int = 1, *, everything: bool = True) -> int:
    """A recorded session with rows in every session table (ECG, ACC, faults, a typed marker, a note, LSL, answers)."""
    faults = parse_sim_faults(["disconnect=120,malformed=240"], [participant], seed=seed) if everything else None
    session = build_session(store, PROTOCOL, parse_device_specs(["sim"], participant), seed=seed, clock=LoopClock(),
                            ecg=everything, acc=everything, faults=faults)  # fmt: skip
    (sid,) = run_virtual(session.run())
    if everything:
        store.add_marker(sid, 12.5, "manual", "typed: participant yawned", detail={"by": "experimenter"})
        store.add_note(sid, 12.5, "seemed tired today")
        stream = store.add_lsl_stream(sid, "PsychoPy", "Markers", "psy-1", 1, 0.0, "<info/>", 1000.25, 1.0)
        store.add_lsl_chunk(stream, 3.0, 0.001, [1002.0, 1003.5], [["start"], ["stop"]])
        answers = AnswerStore(store)
        set_id = answers.add(DIARY, participant, seed, WEEK, {"week_notes": SECRET}, session_id=sid)
        answers.edit(set_id, values={"sc_often": 8}, texts={"week_notes": "kitchen"}, by="ra2", reason="re-checked")
        store.exclude("answer_set", set_id, "paper form unclear", by="ra2")
        review.add_edit(store, sid, "mark", t=float(store.beats(sid).t[10]), reviewer="AB", reason="looks ectopic")
        review.add_edit(store, sid, "bad-segment", t=20.0, t_end=25.0, kind="movement", reviewer="AB", reason="moved")
        review.undo_last(store, sid, reviewer="AB", reason="not a movement after all")
        store.flush()
    return sid


def _session_tables(db: sqlite3.Connection) -> list[str]:
    """Every table holding session rows, found from the schema (a table added later is compared too)."""
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return [n for n in names if "session_id" in {c[1] for c in db.execute(f"PRAGMA table_info({n})")}
            and n not in ("sessions",)]  # fmt: skip


def dump_session(path: Path, sid: int) -> dict[str, list[tuple]]:
    """Every row of a session in every table, in stored order, with local ids replaced by their rank."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        packets = [r[0] for r in db.execute("SELECT id FROM packets WHERE session_id=? ORDER BY id", (sid,))]
        streams = [r[0] for r in db.execute("SELECT id FROM lsl_streams WHERE session_id=? ORDER BY id", (sid,))]
        answers = db.execute("SELECT 1 FROM sqlite_master WHERE name='answer_sets'").fetchone() is not None
        sets = [r[0] for r in db.execute("SELECT id FROM answer_sets WHERE session_id=? ORDER BY id", (sid,))] \
            if answers else []  # fmt: skip
        edits = [r[0] for r in db.execute("SELECT id FROM review_edits WHERE session_id=? ORDER BY id", (sid,))]
        by_rank = {i: dict(zip(ids, range(len(ids)), strict=True))
                   for i, ids in enumerate((packets, streams, sets, edits))}  # fmt: skip
        rank = {"packet_id": by_rank[0], "stream_id": by_rank[1], "set_id": by_rank[2], "object_id": by_rank[2],
                "undoes": by_rank[3]}

        def rows(table: str, where: str, args: list) -> list[tuple]:
            cols = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
            out = []
            for row in db.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY rowid", args):
                out.append(tuple(rank[c].get(v, v) if c in rank and v is not None else v
                                 for c, v in zip(cols, row, strict=True) if c not in ("id", "session_id")))  # fmt: skip
            return out

        out = {t: rows(t, "session_id=?", [sid]) for t in _session_tables(db)}
        marks = ",".join("?" * len(streams))
        out["lsl_chunks"] = rows("lsl_chunks", f"stream_id IN ({marks})", streams)
        smarks = ",".join("?" * len(sets))
        for table in ("answer_values", "answer_texts", "answer_edits"):
            out[table] = rows(table, f"set_id IN ({smarks})", sets) if answers else []
        out["answer_exclusions"] = rows("exclusions", f"kind='answer_set' AND object_id IN ({smarks})", sets)
        out["session_exclusion"] = list(db.execute(
            "SELECT reason, excluded_by, excluded_utc FROM exclusions WHERE kind='session' AND object_id=?", (sid,)))
        session = rows("sessions", "id=?", [sid])
        cols = [c[1] for c in db.execute("PRAGMA table_info(sessions)") if c[1] != "id"]
        out["sessions"] = [tuple(v for c, v in zip(cols, r, strict=True) if c != "pid") for r in session]
        pid = db.execute("SELECT participant_id FROM sessions WHERE id=?", (sid,)).fetchone()[0]
        out["participants"] = list(db.execute("SELECT * FROM participants WHERE id=?", (pid,)))
        return out
    finally:
        db.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("rec") / "a.sqlite"
    with Store(path) as store:
        sid = _record(store, "P01")
        store.exclude("session", sid, "a practice run", by="ra1")
    return path, sid


def _unchanged(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {n: db.execute(f"SELECT COUNT(*) FROM {n}").fetchone()[0] for n in names}
        return {n: c for n, c in counts.items() if c}  # an empty table created on the way is no change
    finally:
        db.close()


# -- bundles -------------------------------------------------------------------------------------------------------
def test_bundle_round_trip_keeps_every_table_and_the_raw_bytes(recorded, tmp_path):
    src, sid = recorded
    with Store(src, readonly=True) as store:
        bundle = export_bundle(store, sid, tmp_path / "out", include_text=True)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    dst = tmp_path / "b.sqlite"
    with Store(dst) as store:
        store.create_session("P07", "x", {}, "sim-9", source="simulated")  # the ids of the two stores differ
        new = import_bundle(store, bundle, by="ra3")
        assert new != sid
        with pytest.raises(DuplicateSessionError, match=r"already in .* as session"):
            import_bundle(store, bundle, by="ra3")
        src_packets = [p.data for p in Store(src, readonly=True).packets(sid)]
        assert [p.data for p in store.packets(new)] == src_packets  # bytes exact
    before, after = dump_session(src, sid), dump_session(dst, new)
    assert set(before) == set(after)
    for table, rows in before.items():
        assert rows == after[table], table
    for table in ("packets", "packet_errors", "beats", "beat_stretches", "heart_rate", "ecg_chunks", "acc_chunks",
                  "markers", "notes", "link_events", "lsl_chunks", "review_edits", "answer_values", "answer_texts",
                  "answer_edits",
                  "answer_exclusions", "session_exclusion"):  # fmt: skip
        assert before[table], f"the recorded session has no {table}: the test would prove nothing"


def test_bundle_without_include_text_leaves_free_text_out(recorded, tmp_path):
    src, sid = recorded
    with Store(src, readonly=True) as store:
        bundle = export_bundle(store, sid, tmp_path)
    with zipfile.ZipFile(bundle) as zf:
        everything = b"".join(zf.read(n) for n in zf.namelist())
    assert b"seemed tired" not in everything and b"yawned" not in everything and b"kitchen" not in everything
    assert b"looks ectopic" not in everything  # a reviewer's reason is free text too
    with Store(tmp_path / "b.sqlite") as store:
        new = import_bundle(store, bundle, by="ra3")
        assert store.notes(new) == []
        assert store.counts(new)["packets"] == Store(src, readonly=True).counts(sid)["packets"]


def test_duplicate_bundle_is_refused_with_one_line(recorded, tmp_path, capsys):
    src, sid = recorded
    out = tmp_path / "out"
    assert app.main(["--store", str(src), "export", str(sid), "--format", "bundle", "--out", str(out)]) == 0
    (bundle,) = out.iterdir()
    dst = tmp_path / "b.sqlite"
    assert app.main(["--store", str(dst), "import", "bundle", str(bundle)]) == 0
    capsys.readouterr()
    counts = _unchanged(dst)
    assert app.main(["--store", str(dst), "import", "bundle", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already in" in err and "not importing it twice" in err
    assert _unchanged(dst) == counts


def _rewrite(bundle: Path, out: Path, member: str, change) -> Path:
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(out, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            zout.writestr(name, change(data) if name == member else data)
    return out


def _first_row(data: bytes, fn) -> bytes:
    lines = data.split(b"\n")
    row = json.loads(lines[0])
    fn(row)
    lines[0] = json.dumps(row).encode()
    return b"\n".join(lines)


HOSTILE = {
    "truncated": None,
    "wrong type": ("beats.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(0, "soon"))),
    "huge number": ("heart_rate.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(1, 10**400))),
    "huge float": ("beats.jsonl", lambda d: d.replace(b",", b",1e999,", 1)),
    "dangling packet": ("beats.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(4, 987654321))),
    "bad bytes": ("packets.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(3, "not base64!"))),
    "sample count": ("ecg_chunks.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(3, 10**6))),
    "bad manifest": ("manifest.json", lambda d: d.replace(b'"uuid": "', b'"uuid": "x', 1)),
    "running": ("manifest.json", lambda d: d.replace(b'"state": "completed"', b'"state": "running"', 1)),
    "a name": ("manifest.json", lambda d: d.replace(b'"P01"', b'"Anna"')),
    "not json": ("markers.jsonl", lambda d: b"{" + d),
    "detail not an object": ("markers.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(5, "[1]"))),
    "lone surrogate": ("link_events.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(1, "\ud800"))),
    "fs zero": ("acc_chunks.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(2, 0))),
    "lsl values": ("lsl_chunks.jsonl", lambda d: _first_row(d, lambda r: r.__setitem__(4, "[]"))),
    "not a zip": None,
}


@pytest.fixture(scope="module")
def bundle_and_store(recorded, tmp_path_factory) -> tuple[Path, Path]:
    """A good bundle, and a store with one other session to import it into."""
    src, sid = recorded
    folder = tmp_path_factory.mktemp("hostile")
    with Store(src, readonly=True) as store:
        bundle = export_bundle(store, sid, folder)
    with Store(folder / "b.sqlite") as store:
        _record(store, "P02", everything=False)
    return bundle, folder / "b.sqlite"


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_bundle_gets_one_line_and_leaves_the_store_unchanged(bundle_and_store, tmp_path, capsys, kind):
    bundle, prepared = bundle_and_store
    if kind == "truncated":
        bad = tmp_path / "bad.zip"
        bad.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    elif kind == "not a zip":
        bad = tmp_path / "bad.zip"
        bad.write_text('{"format": "cmt-session-bundle"}')
    else:
        bad = _rewrite(bundle, tmp_path / "bad.zip", *HOSTILE[kind])
    dst = tmp_path / "b.sqlite"
    shutil.copy(prepared, dst)
    counts = _unchanged(dst)
    assert app.main(["--store", str(dst), "import", "bundle", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert _unchanged(dst) == counts
    with pytest.raises(BundleError), Store(dst) as store:
        import_bundle(store, bad, by="x")


# -- merge ---------------------------------------------------------------------------------------------------------
def test_merge_of_two_stores_with_overlapping_ids(tmp_path):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with Store(a) as store:
        a1 = _record(store, "P01", 1)
        a2 = _record(store, "P02", 2, everything=False)
    with Store(b) as store:
        b1 = _record(store, "P01", 3)  # the same ids (1, 2) and the same participant code on the other laptop
        b2 = _record(store, "P03", 4, everything=False)
        AnswerStore(store).add(DIARY, "P03", 9, WEEK)  # an answer set without a session
    assert (a1, a2) == (b1, b2)
    before_b = _unchanged(b)
    with Store(a) as store:
        result = merge_store(store, b, by="ra1")
        assert [(o, p) for o, _n, p in result.brought] == [(b1, "P01"), (b2, "P03")]
        assert result.participants_added == ["P03"] and result.answer_sets == 2
        new_ids = [n for _o, n, _p in result.brought]
        assert set(new_ids).isdisjoint({a1, a2})
        again = merge_store(store, b, by="ra1")
        assert again.brought == [] and len(again.skipped) == 2 and again.answer_sets == 0
        assert len(store.sessions()) == 4
        assert sorted(s.participant_id for s in store.sessions()) == ["P01", "P01", "P02", "P03"]
        merged_set = AnswerStore(store).find(participant_id="P01")
        assert {s.session_id for s in merged_set} == {a1, new_ids[0]}  # answers moved with their sessions
    assert _unchanged(b) == before_b  # read-only on OTHER
    for o, n in ((b1, new_ids[0]), (b2, new_ids[1])):
        theirs, ours = dump_session(b, o), dump_session(a, n)
        if o == b1:  # P01 was already here: matched by code, the local participant row is kept
            theirs.pop("participants"), ours.pop("participants")
        assert theirs == ours
    with Store(b) as store:  # and the other way round: A's sessions arrive, B's own are skipped
        back = merge_store(store, a, by="ra2")
        assert len(back.brought) == 2 and len(back.skipped) == 2


def test_merge_is_all_or_nothing(tmp_path, monkeypatch):
    import recordings.bundle as bundle_mod

    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with Store(a) as store:
        _record(store, "P01", 1, everything=False)
    with Store(b) as store:
        _record(store, "P02", 2, everything=False)
        _record(store, "P03", 3, everything=False)
    with Store(a) as store:
        running = store.create_session("P04", "x", {}, "sim-4", source="simulated")  # recording, in this process
        with pytest.raises(StoreError, match=f"session.s. {running} are being written"):
            merge_store(store, b, by="x")
        store.end_session(running)
    before = _unchanged(a)
    calls = []
    real = bundle_mod.insert_session

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "insert_session", failing)
    with Store(a) as store, pytest.raises(OSError):
        merge_store(store, b, by="x")
    assert _unchanged(a) == before


def test_store_merge_cli_prints_what_it_brought_and_skipped(tmp_path, capsys):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    with Store(a) as store:
        _record(store, "P01", 1, everything=False)
    with Store(b) as store:
        _record(store, "P02", 2, everything=False)
    assert app.main(["--store", str(a), "store", "merge", str(b)]) == 0
    out = capsys.readouterr().out
    assert "brought session 1" in out and "1 sessions brought, 0 skipped" in out
    assert app.main(["--store", str(a), "store", "merge", str(b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["brought"] == [] and result["skipped"][0]["reason"].startswith("already here as session")


# -- backup --------------------------------------------------------------------------------------------------------
def test_backup_while_a_session_records(tmp_path, capsys):
    path = tmp_path / "a.sqlite"
    with Store(path) as store:
        _record(store, "P02", 2, everything=False)  # something to copy already
    protocol = Protocol("long", "rest", (Phase("baseline", PhaseKind.REST, 300.0),))
    store = Store(path)
    session = build_session(store, protocol, parse_device_specs(["sim"], "P01"), seed=1, clock=ScaledClock(60.0))
    worker = threading.Thread(target=lambda: asyncio.run(session.run()))
    worker.start()
    try:
        while not session.session_ids or store.counts(session.session_ids[0])["packets"] < 20:
            worker.join(0.02)
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

        def committed() -> int:
            return reader.execute("SELECT COUNT(*) FROM packets WHERE session_id=?",
                                  (session.session_ids[0],)).fetchone()[0]  # fmt: skip

        packets_before = committed()
        steps = []

        def slow_step(done: int, total: int) -> None:  # a slow disk: the copy takes a while
            steps.append(done)
            time.sleep(0.01)

        result = backup_store(path, tmp_path / "copy.sqlite", step_pages=2, on_step=slow_step)
        packets_after = committed()
        reader.close()
        assert len(steps) > 10 and worker.is_alive()
        assert packets_after > packets_before  # the recorder kept committing during the backup
        with pytest.raises(OutputExistsError):
            backup_store(path, tmp_path / "copy.sqlite")
    finally:
        session.end_session("test over")
        worker.join(timeout=30)
        store.close()
    copy = result.path
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".copy*"))
    db = sqlite3.connect(copy)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    sid = session.session_ids[0]
    n = db.execute("SELECT COUNT(*) FROM packets WHERE session_id=?", (sid,)).fetchone()[0]
    assert packets_before <= n <= packets_after
    # consistent: every decoded beat of the copy points at a packet that is in the copy
    assert db.execute("SELECT COUNT(*) FROM beats b LEFT JOIN packets p ON p.id=b.packet_id WHERE b.packet_id IS NOT"
                      " NULL AND p.id IS NULL").fetchone()[0] == 0  # fmt: skip
    db.close()
    with Store(copy) as restored:
        assert len(restored.sessions()) == 2


def test_store_backup_and_info_cli(tmp_path, capsys):
    path = tmp_path / "a.sqlite"
    with Store(path) as store:
        _record(store, "P01", 1, everything=False)
    assert app.main(["--store", str(path), "store", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["last_backup"] is None and info["sessions_by_source"] == {"simulated": 1}
    assert info["schema_version"] == SCHEMA_VERSION and info["participants"] == 1 and info["bytes"] > 0
    assert app.main(["--store", str(path), "store", "backup", str(tmp_path / "b.sqlite"), "--by", "ra1"]) == 0
    assert "1 sessions" in capsys.readouterr().out
    assert app.main(["--store", str(path), "store", "backup", str(tmp_path / "b.sqlite")]) == 2
    assert "never replaces" in capsys.readouterr().err
    assert app.main(["--store", str(path), "store", "info"]) == 0
    out = capsys.readouterr().out
    assert "last backup" in out and "b.sqlite by ra1" in out and "completed 1" in out
    with Store(path, readonly=True) as store:
        assert store_info(store)["last_backup"]["sessions"] == 1
    assert app.main(["--store", str(tmp_path / "none.sqlite"), "store", "info"]) == 2


# -- capture round trip --------------------------------------------------------------------------------------------
def test_capture_round_trip_is_exact(recorded, tmp_path):
    src, sid = recorded
    with Store(src, readonly=True) as store:
        cap = export_capture(store, sid, tmp_path, include_text=True)
        info = store.session(sid)
    dst = tmp_path / "b.sqlite"
    with Store(dst) as store:
        store.create_session("P07", "x", {}, "sim-9", source="simulated")
        new, _counts = import_capture(store, cap, "P01")
        got = store.session(new)
        assert (got.protocol_name, got.started_utc, got.device, got.week) == (info.protocol_name, info.started_utc,
                                                                              info.device, info.week)  # fmt: skip
        assert store.protocol_dict(new) == Store(src, readonly=True).protocol_dict(sid)
    before, after = dump_session(src, sid), dump_session(dst, new)
    # a capture is the raw layer plus what was run: not the notes, LSL streams or answers (a bundle carries those)
    for table in ("packets", "packet_errors", "beats", "beat_stretches", "heart_rate", "ecg_chunks", "acc_chunks",
                  "markers", "link_events"):  # fmt: skip
        if table == "markers":  # a capture lists them in time order (the manual one was added after the run)
            before[table].sort(key=lambda row: row[0])
        assert before[table] == after[table], table
        assert before[table]


def test_a_capture_imported_twice_is_refused_by_its_session_uuid(recorded, tmp_path):
    src, sid = recorded
    with Store(src, readonly=True) as store:
        cap = export_capture(store, sid, tmp_path)
    dst = tmp_path / "b.sqlite"
    with Store(dst) as store:
        first, _ = import_capture(store, cap, "P01")
        before = store.counts(first)
        with pytest.raises(ImportFormatError, match=f"already in the store as session {first}"):
            import_capture(store, cap, "P01")
        assert [s.id for s in store.sessions()] == [first]
        assert store.counts(first) == before
    with Store(src) as store, pytest.raises(ImportFormatError, match=f"as session {sid} "):
        import_capture(store, cap, "P01")  # back into the store it came from: the same recording


def test_capture_without_a_header_still_imports_as_one_whole_phase(tmp_path):
    cap = tmp_path / "c.jsonl"
    cap.write_text("".join(json.dumps({"t": i * 0.8, "uuid": "2a37", "hex": "1048" + "0003"}) + "\n"
                           for i in range(20)))  # fmt: skip
    with Store(tmp_path / "s.sqlite") as store:
        sid, _ = import_capture(store, cap, "P01")
        assert store.session(sid).protocol_name == "whole"
        assert [m.kind for m in store.markers(sid)] == ["phase_start", "phase_end"]


# -- progress ------------------------------------------------------------------------------------------------------
def _run_app(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip


def test_progress_lines_when_piped_and_never_in_machine_output(recorded, tmp_path):
    src, sid = recorded
    out = tmp_path / "out"
    r = _run_app("--store", str(src), "export", str(sid), "--format", "bundle", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"progress: bundle export to {out} 1/1 session {sid}" in r.stderr.splitlines()
    assert "progress:" not in r.stdout
    (bundle,) = out.iterdir()
    dst = tmp_path / "b.sqlite"
    r = _run_app("--store", str(dst), "import", "bundle", str(bundle))
    assert r.returncode == 0 and "progress: import of" in r.stderr and "progress:" not in r.stdout
    r = _run_app("--store", str(dst), "store", "backup", str(tmp_path / "copy.sqlite"))
    lines = [line for line in r.stderr.splitlines() if line.startswith("progress: backup to")]
    assert r.returncode == 0 and lines and lines[-1].split()[-1].split("/")[0] == lines[-1].split()[-1].split("/")[1]
    with Store(src, readonly=True) as store:
        cap = export_capture(store, sid, tmp_path)
    r = _run_app("--store", str(tmp_path / "c.sqlite"), "import", "capture", str(cap), "--participant", "P01")
    n = len(cap.read_text().splitlines()) - 1 - len(dump_session(src, sid)["markers"]) - len(
        dump_session(src, sid)["link_events"])
    assert r.returncode == 0 and f"progress: import of {cap} {n}/{n} packets" in r.stderr.splitlines(), r.stderr
    r = _run_app("--store", str(dst), "store", "merge", str(src), "--json")
    assert r.returncode == 0 and "progress: merge of" in r.stderr
    json.loads(r.stdout)  # stdout is JSON only


def test_report_shows_its_steps_when_piped(recorded, tmp_path, capsys):
    src, sid = recorded
    assert app.main(["--store", str(src), "report", str(sid), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr()
    assert f"progress: report of session {sid} 6/6 done" in out.err and "progress:" not in out.out


def test_bundle_bytes_are_base64_of_the_raw_packets(recorded, tmp_path):
    src, sid = recorded
    with Store(src, readonly=True) as store:
        bundle = export_bundle(store, sid, tmp_path)
        raw = [p.data for p in store.packets(sid)]
    with zipfile.ZipFile(bundle) as zf:
        rows = [json.loads(line) for line in zf.read("packets.jsonl").splitlines()]
    assert [base64.b64decode(r[3]) for r in rows] == raw


def _make_schema_3(path: Path) -> None:
    """Turn a store back into what a version before session UUIDs wrote."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("DROP TRIGGER sessions_new_uuid; DROP INDEX sessions_uuid; ALTER TABLE sessions DROP COLUMN uuid;"
                     " DROP TABLE backups; UPDATE meta SET value='3' WHERE key='schema_version';")  # fmt: skip
    db.close()


def test_older_stores_get_uuids_and_merge_from_them_read_only_is_stable(tmp_path):
    old, here = tmp_path / "old.sqlite", tmp_path / "here.sqlite"
    with Store(old) as store:
        _record(store, "P01", 1, everything=False)
    _make_schema_3(old)
    with Store(here) as store:
        first = merge_store(store, old, by="ra1")  # read-only on the old store: it stays at schema 3
        assert len(first.brought) == 1
        uuid_here = store.connection.execute("SELECT uuid FROM sessions").fetchone()[0]
    db = sqlite3.connect(old)
    assert "uuid" not in {c[1] for c in db.execute("PRAGMA table_info(sessions)")}
    db.close()
    with Store(old) as store:  # upgraded: its session gets the same UUID the merge gave it
        assert store.connection.execute("SELECT uuid FROM sessions").fetchone()[0] == uuid_here
        sid = store.create_session("P02", "x", {}, "sim-2", source="simulated", state="completed")
        new_uuid = store.connection.execute("SELECT uuid FROM sessions WHERE id=?", (sid,)).fetchone()[0]
        assert len(new_uuid) == 36 and new_uuid[14] == "4" and new_uuid != uuid_here
    with Store(here) as store:
        again = merge_store(store, old, by="ra1")
        assert [s for s, _r in again.skipped] == [1] and len(again.brought) == 1


def test_a_bundle_that_inflates_beyond_its_limit_is_refused(recorded, tmp_path, monkeypatch):
    import recordings.bundle as bundle_mod

    src, sid = recorded
    with Store(src, readonly=True) as store:
        bundle = export_bundle(store, sid, tmp_path)
    bomb = _rewrite(bundle, tmp_path / "bomb.zip", "link_events.jsonl", lambda d: d + b"[" * 2_000_000)
    monkeypatch.setattr(bundle_mod, "MAX_MEMBER_BYTES", 1_000_000)
    with pytest.raises(BundleError, match=r"too large|inflates beyond its limit"):
        bundle_mod.read_bundle(bomb)
    monkeypatch.setattr(bundle_mod, "MAX_MEMBER_BYTES", 1 << 31)
    with pytest.raises(BundleError, match="not JSON"):  # and nested too deep for a parser: one line too
        bundle_mod.read_bundle(bomb)
