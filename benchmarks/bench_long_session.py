"""Memory and store growth of a long simulated session with ECG: a short run against a long one.

Run: ``python benchmarks/bench_long_session.py [--hours 8] [--baseline-hours 1] [--speed S]``. Records a
`--baseline-hours` and an `--hours` session (one simulated strap with 130 Hz ECG, one long rest phase), each in a
fresh subprocess so that peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that run alone. By default
the session runs on virtual time (`devices.virtual_time`): the clock jumps to the next timer whenever the loop is
idle, so the simulator can never fall behind and the run takes as long as the work does. `--speed S` uses a
`ScaledClock` (S × real time) instead; the honesty line then shows whether the simulator kept up (late packets
show up as extra gaps before beats and large arrival lags).

Prints per run: real time, session hours, beats, ECG samples, peak RSS and RSS over the session, the largest WAL
seen, the store's size after a checkpoint (database + WAL) and per hour, rows per table; then the ratios. Not part
of pytest (no wall-clock assertions in tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 1024 * 1024
SAMPLE_EVERY_S = 60.0
TRACE_EVERY = 30
"""RSS and WAL are sampled every minute of session time; the printed RSS trace keeps every 30th sample."""
TABLES = ("packets", "packet_errors", "beats", "heart_rate", "ecg_chunks", "markers", "link_events")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def child(hours: float, speed: float | None, ecg: bool) -> dict:
    """One recorded session in this process; returns what the parent prints."""
    from biofeedback.live.recorder import build_session, parse_device_specs
    from devices.clock import ScaledClock
    from devices.virtual_time import LoopClock, VirtualTimeLoop
    from protocols.model import Phase, PhaseKind, Protocol
    from recordings.store import Store

    protocol = Protocol("long-rest", "One long resting phase", (Phase("rest", PhaseKind.REST, hours * 3600.0),))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.sqlite"
        wal = Path(str(path) + "-wal")
        store = Store(path)
        clock = LoopClock() if speed is None else ScaledClock(speed)
        session = build_session(
            store, protocol, parse_device_specs(["sim"], "P01"), speed=speed or 1.0, seed=7, ecg=ecg, clock=clock
        )
        trace: list[tuple[float, float, float]] = []  # (session h, RSS MB, WAL MB)
        wal_peak = 0

        async def sample() -> None:
            nonlocal wal_peak
            while True:
                wal_peak = max(wal_peak, _file_size(wal))
                trace.append((clock.now() / 3600.0, _rss_mb(), _file_size(wal) / MB))
                await clock.sleep(SAMPLE_EVERY_S)

        async def main() -> list[int]:
            sampler = asyncio.create_task(sample())
            try:
                return await session.run()
            finally:
                sampler.cancel()

        t0 = time.perf_counter()
        if speed is None:
            with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
                (sid,) = runner.run(main())
        else:
            (sid,) = asyncio.run(main())
        real_s = time.perf_counter() - t0
        wal_peak = max(wal_peak, _file_size(wal))
        db = store.connection
        rows = {t: db.execute(f"SELECT COUNT(*) FROM {t} WHERE session_id=?", (sid,)).fetchone()[0] for t in TABLES}
        gaps_before = int(db.execute("SELECT SUM(gap_before) FROM beats WHERE session_id=?", (sid,)).fetchone()[0])
        max_lag = db.execute("SELECT MAX(arrival_lag_s) FROM beats WHERE session_id=?", (sid,)).fetchone()[0]
        ecg_samples = db.execute("SELECT COALESCE(SUM(n), 0) FROM ecg_chunks WHERE session_id=?", (sid,)).fetchone()[0]
        table_bytes = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        wal_end = _file_size(wal)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = _file_size(path) + _file_size(wal)
        duration_h = float(db.execute("SELECT MAX(t) FROM beats WHERE session_id=?", (sid,)).fetchone()[0]) / 3600
        store.close()
    return {
        "hours": duration_h,
        "real_s": real_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_trace": trace[::TRACE_EVERY] + trace[-1:],
        "wal_peak_mb": wal_peak / MB,
        "wal_end_mb": wal_end / MB,
        "store_mb": size / MB,
        "rows": rows,
        "table_mb": {k: v / MB for k, v in sorted(table_bytes.items(), key=lambda kv: -kv[1])[:6]},
        "ecg_samples": int(ecg_samples),
        "gaps_before": gaps_before,
        "max_arrival_lag_s": max_lag,
    }


def run_child(hours: float, speed: float | None, ecg: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--hours", str(hours)]
    if speed is not None:
        cmd += ["--speed", str(speed)]
    if not ecg:
        cmd.append("--no-ecg")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(r: dict) -> None:
    print(f"  real time          {r['real_s']:8.1f} s  ({r['hours'] * 3600 / r['real_s']:.0f}× real time)")
    print(f"  session            {r['hours']:8.2f} h")
    print(f"  beats              {r['rows']['beats']:8d}   ECG samples {r['ecg_samples']:,}")
    print(f"  peak RSS           {r['peak_rss_mb']:8.1f} MB")
    trace = "  ".join(f"{h:.1f}h:{rss:.0f}" for h, rss, _ in r["rss_trace"])
    print(f"  RSS over session   {trace}  (MB)")
    print(f"  WAL                peak {r['wal_peak_mb']:.2f} MB, {r['wal_end_mb']:.2f} MB at the end")
    print(f"  store (checkpoint) {r['store_mb']:8.2f} MB = {r['store_mb'] / r['hours']:.2f} MB per hour")
    print("  rows               " + ", ".join(f"{k} {v}" for k, v in r["rows"].items()))
    print("  largest tables     " + ", ".join(f"{k} {v:.1f} MB" for k, v in r["table_mb"].items()))
    print(f"  honesty            {r['gaps_before']} gap(s) before beats (1 = only the start), "
          f"max arrival lag {r['max_arrival_lag_s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--baseline-hours", type=float, default=1.0)
    parser.add_argument("--speed", type=float, default=None, help="ScaledClock speed (default: virtual time)")
    parser.add_argument("--no-ecg", dest="ecg", action="store_false")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.hours, args.speed, args.ecg)))
        return
    clock = "virtual time" if args.speed is None else f"ScaledClock ×{args.speed:g}"
    print(f"long simulated session, ECG {'on' if args.ecg else 'off'}, {clock}")
    results = []
    for hours in (args.baseline_hours, args.hours):
        print(f"\n{hours:g}-hour run")
        results.append(run_child(hours, args.speed, args.ecg))
        report(results[-1])
    short, long = results
    ratio = long["peak_rss_mb"] / short["peak_rss_mb"]
    print(f"\npeak RSS {long['hours']:.3g} h / {short['hours']:.3g} h: "
          f"{long['peak_rss_mb']:.1f} / {short['peak_rss_mb']:.1f} MB = {ratio:.3f}")
    print(f"store per hour: {short['store_mb'] / short['hours']:.2f} MB ({short['hours']:.3g} h run), "
          f"{long['store_mb'] / long['hours']:.2f} MB ({long['hours']:.3g} h run)")
    print(f"real time per session hour: {short['real_s'] / short['hours']:.1f} s (short run), "
          f"{long['real_s'] / long['hours']:.1f} s (long run)")


if __name__ == "__main__":
    main()
