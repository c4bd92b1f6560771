"""A recording never fails quietly: a locked store, a full disk, a read-only store, a strap that dies, close races.

The disk-full and read-only tests use a real size-limited or read-only file system (a tmpfs mounted for the test,
which needs root); without root they use what a normal user has: a `PRAGMA max_page_count` limit (SQLite's own
SQLITE_FULL, the same error a full disk gives) and a folder and file without write permission.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import app
import recordings.store as store_mod
from biofeedback.analysis.analyze import analyze_session
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.clock import ScaledClock
from devices.heart_rate import encode_heart_rate
from devices.simulator import SimulatedStrap
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from protocols.model import Phase, PhaseKind, Protocol
from recordings.capture import import_capture
from recordings.store import Store, StoreClosedError, StoreFullError, StoreInUseError, StoreLockedError

ROOT = Path(__file__).resolve().parents[1]
SHORT = Protocol("short", "one minute at rest", (Phase("baseline", PhaseKind.REST, 60.0),))


# -- helpers -----------------------------------------------------------------------------------------------------
def _recorded_store(path: Path, seconds: float = 60.0) -> int:
    protocol = Protocol("short", "rest", (Phase("baseline", PhaseKind.REST, seconds),))
    with Store(path) as store:
        session = build_session(store, protocol, parse_device_specs(["sim"], "P01"), seed=1, clock=LoopClock())
        (sid,) = run_virtual(session.run())
    return sid


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Another process that takes the store's write lock and keeps it `seconds`; returns once it holds it."""
    code = (
        "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None);"
        "db.execute('BEGIN IMMEDIATE'); db.execute(\"INSERT INTO meta VALUES ('holder', 'x')\");"
        "print('held', flush=True); time.sleep(float(sys.argv[2])); db.execute('ROLLBACK')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                          capture_output=True).returncode == 0  # fmt: skip


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def read_only_store(tmp_path):
    """A recorded store on a read-only file system (root: a tmpfs remounted ro) or in a folder nobody may write."""
    src = tmp_path / "src.sqlite"
    sid = _recorded_store(src)
    mnt = tmp_path / "ro"
    if _mount_tmpfs(mnt, "16m"):
        shutil.copy2(src, mnt / "store.sqlite")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "store.sqlite", sid
        _umount(mnt)
    elif os.geteuid() != 0:
        mnt.mkdir()
        shutil.copy2(src, mnt / "store.sqlite")
        (mnt / "store.sqlite").chmod(0o400)
        mnt.chmod(0o500)
        yield mnt / "store.sqlite", sid
        mnt.chmod(0o700)
    else:
        pytest.skip("root without tmpfs mounts: cannot make a read-only store here")


# -- a store locked by another process ---------------------------------------------------------------------------
def test_a_locked_store_opens_at_once_reads_work_and_a_write_says_locked(tmp_path, monkeypatch, capsys):
    path = tmp_path / "store.sqlite"
    sid = _recorded_store(path)
    holder = _hold_write_lock(path, 4.0)
    try:
        t0 = time.monotonic()
        with Store(path) as store:  # opening writes nothing, so it does not wait for the lock
            assert store.session(sid).state == "completed"
            assert time.monotonic() - t0 < 1.5
            monkeypatch.setattr(store_mod, "WRITE_BUSY_BUDGET_S", 0.3)
            with pytest.raises(StoreLockedError, match="is locked by another program"):
                store.add_marker(sid, 1.0, "manual", "x")
        assert app.main(["sessions", "list", "--json", "--store", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)[0]["state"] == "completed"
        assert app.main(["analyze", str(sid), "--json", "--store", str(path)]) == 0
        assert time.monotonic() - t0 < 3.5
    finally:
        holder.wait()


def test_a_write_waits_for_a_lock_held_briefly_by_another_process(tmp_path):
    path = tmp_path / "store.sqlite"
    with Store(path) as store:
        holder = _hold_write_lock(path, 1.0)
        sid = store.create_session("P01", "x", {}, "sim")  # waits (within the budget) instead of failing
        holder.wait()
        assert store.session(sid).state == "running"


# -- two recorders and an import on one store --------------------------------------------------------------------
def _capture_file(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            data = encode_heart_rate(70, [840 + (i % 7)])
            fh.write(json.dumps({"t": i * 0.85, "uuid": "2a37", "hex": data.hex()}) + "\n")
    return path


def test_two_recorders_and_an_import_on_one_store_keep_every_packet(tmp_path):
    path = tmp_path / "store.sqlite"
    Store(path).close()
    capture = _capture_file(tmp_path / "big.jsonl", 40_000)
    results: dict[str, tuple[int, int, str]] = {}
    errors: list[BaseException] = []

    def record(pid: str, seed: int) -> None:
        try:
            with Store(path) as store:
                session = build_session(store, SHORT, parse_device_specs(["sim"], pid), seed=seed,
                                        clock=ScaledClock(20.0))  # fmt: skip
                delivered = [0]
                inner = session._on_packet

                def counting(strap, packet):
                    delivered[0] += 1
                    inner(strap, packet)

                session._on_packet = counting
                (sid,) = asyncio.run(session.run())
                results[pid] = (delivered[0], store.counts(sid)["packets"], store.session(sid).state)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def do_import() -> None:
        try:
            with Store(path) as store:
                sid, counts = import_capture(store, capture, "P09")
                results["import"] = (40_000, counts.packets, store.session(sid).state)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=do_import), threading.Thread(target=record, args=("P01", 1)),
               threading.Thread(target=record, args=("P02", 2))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)  # generous: a loaded machine is slow, and a hang must still end the test
    assert not any(t.is_alive() for t in threads), "a recorder or the import did not finish"
    assert not errors, errors
    assert results["import"] == (40_000, 40_000, "imported")
    for pid in ("P01", "P02"):
        sent, stored, state = results[pid]
        # at ×20 beside an import each commit may wait for the import's batch, so how many packets the strap got
        # to send in its 3 s varies with the machine's load; every one sent is stored and the session completes
        assert sent >= 1 and stored == sent and state == "completed", (pid, results[pid])


# -- disk full ---------------------------------------------------------------------------------------------------
def test_disk_full_mid_recording_stops_at_once_with_one_line_and_keeps_what_was_committed(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "1500k"):
        pytest.skip("no tmpfs mount (needs root): test_store_page_limit_... covers the same path without one")
    try:
        path = mnt / "store.sqlite"
        result = subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "session", "run", "--participant", "P01", "--protocol",
             "cmt-soothing", "--device", "sim", "--ecg", "--speed", "200", "--headless", "--store", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert "Traceback" not in result.stderr
        assert len(lines) <= 3 and "is full" in result.stderr and "kept up to" in result.stderr, result.stderr
        assert "Recording saved" not in result.stdout
        # everything committed stays readable, on the full disk, by the reading commands
        listed = subprocess.run([sys.executable, str(ROOT / "app.py"), "sessions", "list", "--json", "--store",
                                 str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        (info,) = json.loads(listed.stdout)
        assert info["state"] in ("failed", "interrupted")
        with Store(path, readonly=True) as store:
            assert store.counts(info["id"])["beats"] > 20
    finally:
        _umount(mnt)


def test_store_page_limit_mid_recording_ends_the_session_failed_with_the_reason(tmp_path):
    """SQLite's own size limit gives the same SQLITE_FULL as a full disk (works without root)."""
    path = tmp_path / "store.sqlite"
    store = Store(path)
    session = build_session(store, get_protocol("cmt-soothing"), parse_device_specs(["sim"], "P01"), seed=2,
                            clock=LoopClock(), ecg=True)  # fmt: skip
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count={pages + 60}")
    alerts: list[str] = []
    session.on_alert = alerts.append
    (sid,) = run_virtual(session.run())
    assert len(alerts) == 1 and "is full" in alerts[0] and "kept up to" in alerts[0]
    assert "full" in session.failure
    assert session.problems() == [f"session {sid} (P01) failed: {session.failure}"]
    assert session.monitor_view().alerts == tuple(alerts)
    t_fail = session.runner.state.t
    assert t_fail is not None and t_fail < 25 * 60 - 1  # stopped at once, not at the protocol's end
    store.close()
    with Store(path, readonly=True) as ro:
        info = ro.session(sid)
        # the full store takes not even the state change: it stays `running` until a later opening (by another
        # process) sees the recorder gone and marks it interrupted; never `completed`
        assert info.state in ("failed", "running")
        assert ro.counts(sid)["packets"] > 0
        analyze_session(ro, sid)  # what was committed is analysable


# -- read-only store ---------------------------------------------------------------------------------------------
def test_list_analyze_export_work_on_a_read_only_store(read_only_store, tmp_path, capsys):
    path, sid = read_only_store
    before = path.read_bytes()
    assert app.main(["sessions", "list", "--json", "--store", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == sid
    assert app.main(["analyze", str(sid), "--json", "--store", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["phases"]
    out = tmp_path / "out"
    assert app.main(["export", str(sid), "--format", "csv", "--out", str(out), "--store", str(path)]) == 0
    assert (out / "beats.csv").exists()
    assert path.read_bytes() == before


def test_writing_to_a_read_only_store_says_read_only_not_damaged(read_only_store, capsys):
    path, _sid = read_only_store
    rc = app.main(["session", "run", "--participant", "P02", "--protocol", "rest-5min", "--device", "sim",
                   "--speed", "1000", "--headless", "--store", str(path)])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "damaged" not in err and ("not writable" in err or "read-only" in err), err
    rc = app.main(["sessions", "list", "--store", str(path.parent / "new" / "store.sqlite")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "not writable" in err and "damaged" not in err, err


# -- a strap task that dies --------------------------------------------------------------------------------------
def _dying_strap(monkeypatch, who: str = "sim-1", after: int = 20) -> None:
    real_run = SimulatedStrap.run

    async def run(self, on_packet, on_event):
        if self.device_id != who:
            return await real_run(self, on_packet, on_event)
        n = [0]

        def counting(p):
            n[0] += 1
            if n[0] > after:
                raise RuntimeError("strap firmware crashed")
            on_packet(p)

        await real_run(self, counting, on_event)

    monkeypatch.setattr(SimulatedStrap, "run", run)


def test_a_strap_task_that_dies_marks_its_session_incomplete_and_the_run_exits_nonzero(tmp_path, monkeypatch,
                                                                                        capsys):  # fmt: skip
    _dying_strap(monkeypatch, after=5)
    path = tmp_path / "store.sqlite"
    rc = app.main(["session", "run", "--participant", "P01", "--protocol", "rest-5min", "--device", "sim",
                   "--speed", "300", "--headless", "--store", str(path)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1
    assert "strap firmware crashed" in captured.err and "Recording saved" not in captured.out
    with Store(path, readonly=True) as store:
        (info,) = store.sessions()
        assert info.state == "incomplete" and "strap firmware crashed" in info.end_reason
        assert store.counts(info.id)["packets"] == 5


def test_in_a_group_only_the_dead_straps_session_is_incomplete(tmp_path, monkeypatch):
    _dying_strap(monkeypatch, who="sim-2")
    with Store(tmp_path / "store.sqlite") as store:
        session = build_session(store, SHORT, parse_device_specs(["sim=P01", "sim=P02"], None), clock=LoopClock())
        alerts: list[str] = []
        session.on_alert = alerts.append
        a, b = run_virtual(session.run())
        assert store.session(a).state == "completed"
        assert store.session(b).state == "incomplete"
        assert len(alerts) == 1 and alerts[0].startswith("P02:")
        assert session.problems() == [f"session {b} (P02) incomplete: RuntimeError: strap firmware crashed"]


def test_a_decoder_exception_is_a_packet_error_and_the_strap_goes_on(tmp_path, monkeypatch):
    from recordings.decode import SessionDecoder

    real = SessionDecoder._heart_rate
    calls = [0]

    def flaky(self, packet_id, t, data):
        calls[0] += 1
        if calls[0] == 5:
            raise OverflowError("a value no strap sends")
        return real(self, packet_id, t, data)

    monkeypatch.setattr(SessionDecoder, "_heart_rate", flaky)
    with Store(tmp_path / "store.sqlite") as store:
        session = build_session(store, SHORT, parse_device_specs(["sim"], "P01"), clock=LoopClock())
        (sid,) = run_virtual(session.run())
        assert store.session(sid).state == "completed"
        (err,) = store.packet_errors(sid)
        assert "OverflowError" in err[1]
        assert store.counts(sid)["packets"] > 60


def test_the_cli_refuses_an_ecg_speed_the_simulator_cannot_run(tmp_path, capsys):
    rc = app.main(["session", "run", "--participant", "P01", "--protocol", "rest-5min", "--device", "sim", "--ecg",
                   "--speed", "1000", "--headless", "--store", str(tmp_path / "s.sqlite")])  # fmt: skip
    assert rc == 2 and "too fast with --ecg" in " ".join(capsys.readouterr().err.split())


# -- closing while another thread writes -------------------------------------------------------------------------
def test_close_while_another_thread_writes_waits_and_later_writes_are_refused(tmp_path):
    code = """
import sys, threading
from recordings.store import Store
import recordings.store
StoreClosedError = getattr(recordings.store, "StoreClosedError", ())
store = Store(sys.argv[1])
sid = store.create_session("P01", "x", {}, "sim")
outcome = []
started = threading.Event()
def writer():
    try:
        for i in range(200000):
            store.add_packet(sid, i * 0.01, "2a37", b"\\x10\\x48\\x00\\x04" * 8)
            if i % 50 == 0:
                store.flush()
            started.set()
    except StoreClosedError:
        outcome.append("refused")
    except Exception as exc:  # anything else (sqlite3.ProgrammingError) is a failure
        outcome.append(type(exc).__name__)
t = threading.Thread(target=writer)
t.start()
started.wait()
store.close()
t.join()
print(outcome[0] if outcome else "finished")
"""
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.sqlite")], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "refused"
        (tmp_path / "s.sqlite").unlink()


def test_a_store_is_not_closed_under_a_running_session(tmp_path):
    store = Store(tmp_path / "store.sqlite")
    session = build_session(store, SHORT, parse_device_specs(["sim"], "P01"), clock=ScaledClock(30.0))
    worker = threading.Thread(target=lambda: asyncio.run(session.run()))
    worker.start()
    time.sleep(0.3)
    with pytest.raises(StoreInUseError, match="still in use"):
        store.close(timeout_s=0.2)
    store.close()  # waits for the session to end
    assert not worker.is_alive() or worker.join(timeout=1) is None
    with pytest.raises(StoreClosedError):
        store.sessions()
    with Store(tmp_path / "store.sqlite", readonly=True) as ro:
        assert ro.session(session.session_ids[0]).state == "completed"


def test_full_error_is_classified_from_sqlite(tmp_path):
    err = store_mod._sqlite_error(_full_error(tmp_path), tmp_path / "s.sqlite", "writing")
    assert isinstance(err, StoreFullError) and "is full" in str(err)


def _full_error(tmp_path: Path) -> sqlite3.OperationalError:
    db = sqlite3.connect(tmp_path / "full.sqlite")
    db.execute("CREATE TABLE t(x BLOB)")
    db.commit()
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0] + 1}")
    try:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 4000,))
    except sqlite3.OperationalError as exc:
        return exc
    raise AssertionError("no SQLITE_FULL")


def test_the_monitor_shows_the_alert(tmp_path, monkeypatch, qtbot):
    from biofeedback.display.monitor import MonitorWindow

    _dying_strap(monkeypatch, who="sim-2")
    with Store(tmp_path / "store.sqlite") as store:
        session = build_session(store, SHORT, parse_device_specs(["sim=P01", "sim=P02"], None), clock=LoopClock())
        session.on_alert = lambda line: None
        run_virtual(session.run())
        win = MonitorWindow(session, session)
        qtbot.addWidget(win)
        win.refresh()
        assert not win.alert_label.isHidden()
        assert "P02: strap sim-2 stopped recording" in win.alert_label.text()
