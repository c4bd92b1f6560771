"""A whole simulated session end to end: record, recover after SIGKILL, analyse, export, CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

import app
from biofeedback.analysis.analyze import analyze_session
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from recordings.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cmt_session(tmp_path_factory):
    """cmt-soothing (25 min) on a complying simulated participant, recorded on virtual time (exact, fast)."""
    path = tmp_path_factory.mktemp("cmt") / "store.sqlite"
    store = Store(path)
    session = build_session(
        store, get_protocol("cmt-soothing"), parse_device_specs(["sim"], "P01"), seed=3, clock=LoopClock()
    )
    (sid,) = run_virtual(session.run())
    yield store, sid
    store.close()


def test_session_is_completed_with_every_phase_marked(cmt_session):
    store, sid = cmt_session
    info = store.session(sid)
    assert info.state == "completed"
    protocol = get_protocol("cmt-soothing")
    starts = [m for m in store.markers(sid) if m.kind == "phase_start"]
    assert [m.phase_name for m in starts] == [p.name for p in protocol.phases]
    # markers sit exactly on the protocol's boundaries (the runner is exact; the clock is not)
    for m, planned in zip(starts, protocol.phase_starts_s, strict=True):
        assert m.t == pytest.approx(starts[0].t + planned, abs=1e-9)


def test_phase_table_boundaries_match_protocol_within_one_beat(cmt_session):
    store, sid = cmt_session
    analysis = analyze_session(store, sid)
    protocol = get_protocol("cmt-soothing")
    beats = store.beats(sid)
    for metrics, phase, planned in zip(analysis.phases, protocol.phases, protocol.phase_starts_s, strict=True):
        assert metrics.name == phase.name
        assert metrics.start_s == pytest.approx(planned, abs=0.05)
        assert metrics.end_s - metrics.start_s == pytest.approx(phase.duration_s, abs=1e-6)
        # every measured interval counts, the first of a stretch too (the last phase takes a beat at its end)
        last = phase is protocol.phases[-1]
        inside = beats.t[(beats.t >= metrics.start_s)
                         & ((beats.t <= metrics.end_s) if last else (beats.t < metrics.end_s))]
        expected = phase.duration_s / (60.0 / metrics.mean_hr_bpm)
        assert abs(len(inside) - expected) <= 0.1 * expected + 1
        assert metrics.n_beats == len(inside)


def test_paced_breathing_raises_rmssd_above_baseline(cmt_session):
    store, sid = cmt_session
    phases = {p.kind: p for p in analyze_session(store, sid).phases}
    assert phases["breathing"].rmssd_ms > 1.3 * phases["rest"].rmssd_ms
    assert phases["breathing"].breathing_rate_bpm == pytest.approx(6.0, abs=0.6)
    assert any("LF" in n or "HF" in n for n in phases["breathing"].notes)  # slow breathing: HF not vagal


def test_every_notification_is_kept_raw_and_decoded(cmt_session):
    store, sid = cmt_session
    counts = store.counts(sid)
    assert counts["packets"] >= 25 * 60 * 0.9  # about one notification a second
    decoded = sum(1 for _ in store.packets(sid))
    assert decoded == counts["packets"]
    beats = store.beats(sid)
    assert beats.gap_before.sum() == 1  # only the start: late and bunched deliveries are not gaps
    # after the session the beats were refitted from the raw layer: spacing is the strap's RR (× its drift),
    # no beat is placed after its notification, and the least-delayed notifications sit on the line
    (stretch,) = store.beat_stretches(sid)
    b = 1 + (stretch["drift_ppm"] or 0.0) * 1e-6  # unknown drift (None): fitted with b = 1
    np.testing.assert_allclose(np.diff(beats.t), b * beats.rr_ms[1:] / 1000.0, atol=1e-6)
    assert stretch["drift_ppm"] is None or abs(stretch["drift_ppm"]) < 100
    assert beats.arrival_lag_s.min() >= -1e-9 and beats.arrival_lag_s.min() < 0.05
    assert beats.arrival_lag_s.max() < 4.0


def test_csv_export(cmt_session, tmp_path):
    store, sid = cmt_session
    out = tmp_path / "csv"
    assert app.main(["export", str(sid), "--format", "csv", "--out", str(out), "--store", str(store.path)]) == 0
    with open(out / "phases.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [p.name for p in get_protocol("cmt-soothing").phases]
    assert {"rmssd_ms", "hf_ms2", "lf_ms2", "breathing_rate_bpm", "corrected_pct"} <= set(rows[0])
    new = ("sd1_ms", "sd2_ms", "dfa_alpha1", "sample_entropy", "stress_index", "lf_nu", "hf_nu", "coherence_ratio",
           "coherence_index")  # fmt: skip
    assert set(new) <= set(rows[0])
    assert all(float(r["sd1_ms"]) > 0 and float(r["coherence_ratio"]) > 0 for r in rows if r["kind"] == "breathing")
    settings = json.loads(rows[0]["settings"])
    assert settings["correction"] == "kubios" and "4-16 beats" in settings["dfa_alpha1"]
    for name in ("beats.csv", "markers.csv", "phases.csv"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert not (out / "notes.csv").exists()
    # an existing export is never silently overwritten
    assert app.main(["export", str(sid), "--format", "csv", "--out", str(out), "--store", str(store.path)]) == 2


def test_analyze_json_has_the_documented_fields(cmt_session, capsys):
    store, sid = cmt_session
    assert app.main(["analyze", str(sid), "--json", "--store", str(store.path)]) == 0
    data = json.loads(capsys.readouterr().out)
    keys = {"name", "kind", "start_s", "end_s", "n_beats", "corrected_pct", "mean_hr_bpm", "rmssd_ms", "sdnn_ms",
            "pnn50_pct", "lf_ms2", "hf_ms2", "breathing_rate_bpm", "notes"}  # fmt: skip
    assert len(data["phases"]) == 6
    for phase in data["phases"]:
        assert keys <= set(phase)
    recall = next(p for p in data["phases"] if p["kind"] == "recall")
    assert recall["end_s"] - recall["start_s"] == pytest.approx(120.0)
    assert recall["lf_ms2"] is not None  # exactly 120 s: LF is allowed (>= 120 s)
    assert data["quality"]["malformed_packets"] == 0


def test_killed_recording_is_recovered_as_interrupted(tmp_path):
    store_path = tmp_path / "store.sqlite"
    speed = 20.0
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "session", "run", "--participant", "P09", "--protocol",
         "cmt-soothing", "--device", "sim", "--speed", str(speed), "--headless", "--store", str(store_path)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and n < 400:
            time.sleep(0.2)
            if store_path.exists():
                try:
                    with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
                        n = db.execute("SELECT COUNT(*) FROM beats").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
        assert n >= 400, proc.stderr.read().decode() if proc.poll() is not None else "no beats recorded"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = time.time()
    with Store(store_path) as store:
        (info,) = store.sessions()
        assert info.state == "interrupted"
        beats = store.beats(info.id)
        started = datetime.fromisoformat(info.started_utc).timestamp()
        session_t_at_kill = (killed_at - started) * speed
        # at most 0.5 s of real time (plus a notification interval and the arrival lag) is lost
        assert beats.t[-1] >= session_t_at_kill - (0.5 + 0.3) * speed - 3.0
        analysis = analyze_session(store, info.id)
        assert analysis.phases[0].name == "baseline" or analysis.phases[0].kind == "rest"
        assert analysis.phases[0].n_beats > 100
        assert analysis.windows[-1].ended == "interrupted"
        assert stat.S_IMODE(store_path.stat().st_mode) == 0o600


def test_cli_quick_start_command_prints_table_and_location(tmp_path):
    store_path = tmp_path / "store.sqlite"
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "session", "run", "--participant", "P01", "--protocol", "rest-5min",
         "--device", "sim", "--speed", "300", "--headless", "--store", str(store_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "RMSSD" in result.stdout
    assert str(store_path) in result.stdout.replace("\n", "")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["session", "run", "--device", "sim"], "give --participant"),
        (["session", "run", "--participant", "Jane Doe", "--device", "sim", "--speed", "100"], "pseudonymous"),
        (["session", "run", "--participant", "P01", "--protocol", "nope"], "nope"),
        (["analyze", "999"], "no session 999"),
    ],
)
def test_cli_errors_are_one_clear_line(argv, message, tmp_path, capsys):
    assert app.main([*argv, "--store", str(tmp_path / "s.sqlite")]) == 2
    assert message in capsys.readouterr().err


def test_every_command_has_help():
    parser = app.build_parser()
    commands = [["session", "run"], ["sessions", "list"], ["analyze"], ["export"], ["import", "capture"],
                ["import", "rr"], ["protocols", "list"], ["protocols", "show"], ["protocols", "validate"]]  # fmt: skip
    for cmd in commands:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*cmd, "--help"])
        assert exc.value.code == 0


def test_terminal_view_shows_phase_pacer_and_live_metrics(tmp_path):
    from rich.console import Console

    from biofeedback.live.terminal_view import render

    frames: list[str] = []
    with Store(tmp_path / "s.sqlite") as store:
        session = build_session(
            store, get_protocol("cmt-soothing"), parse_device_specs(["sim"], "P01"), speed=300, seed=1
        )

        async def watch() -> None:
            while session.clock.now() < 420.0:  # into the paced breathing phase
                await asyncio.sleep(0.05)
            console = Console(record=True, width=140)
            console.print(render(session))
            frames.append(console.export_text())
            session.end_session("enough for this test")

        async def main() -> None:
            await asyncio.gather(session.run(), watch())

        asyncio.run(main())
    (frame,) = frames
    assert "soothing-breathing" in frame and "left" in frame
    assert "pacer breathe" in frame  # the pacer cue (in/out)
    row = next(line for line in frame.splitlines() if line.startswith("P01"))
    hr, rmssd = row.split()[4:6]
    assert 40 < float(hr) < 120 and 5 < float(rmssd) < 200
