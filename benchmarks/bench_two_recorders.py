"""Two recorders and a capture import on one store at the same time: does every strap keep every packet?

Run: ``python benchmarks/bench_two_recorders.py [--speed 20] [--protocol rest-5min] [--import-lines 300000]``.
Starts three processes on one fresh store: two recorders (one simulated strap each, `ScaledClock` at `--speed`) and,
a moment later, `import capture` of a generated capture of `--import-lines` notifications. Each recorder counts the
packets its strap delivered (sent) and reads back what the store holds for its session (stored), and times its
longest single notification (store write included: how long another writer kept it waiting). Prints per strap:
packets stored / sent (goal 100 %), the session's state, the longest notification; for the import: lines, seconds,
state. Not part of pytest (wall-clock numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child_recorder(store_path: str, participant: str, protocol: str, speed: float, seed: int) -> None:
    from biofeedback.live.recorder import build_session, parse_device_specs
    from protocols.library import get_protocol
    from recordings.store import Store

    with Store(store_path) as store:
        session = build_session(store, get_protocol(protocol), parse_device_specs(["sim"], participant), speed=speed,
                                seed=seed)  # fmt: skip
        sent = [0]
        longest = [0.0]
        inner = session._on_packet

        def counting(strap, packet):
            sent[0] += 1
            t0 = time.perf_counter()
            inner(strap, packet)
            longest[0] = max(longest[0], time.perf_counter() - t0)

        session._on_packet = counting
        (sid,) = asyncio.run(session.run())
        info = store.session(sid)
        reason = getattr(info, "end_reason", None)  # (also runs against older stores' code, for comparison)
        print(json.dumps({"participant": participant, "sent": sent[0], "stored": store.counts(sid)["packets"],
                          "state": info.state, "reason": reason, "longest_s": longest[0]}))  # fmt: skip


def _child_import(store_path: str, capture: str) -> None:
    from recordings.capture import import_capture
    from recordings.store import Store

    t0 = time.perf_counter()
    with Store(store_path) as store:
        sid, counts = import_capture(store, Path(capture), "P09")
        state = store.session(sid).state
    print(json.dumps({"packets": counts.packets, "seconds": time.perf_counter() - t0, "state": state}))


def _write_capture(path: Path, n: int) -> None:
    from devices.heart_rate import encode_heart_rate

    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"t": i * 0.85, "uuid": "2a37", "hex": encode_heart_rate(70, [870]).hex()}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", type=float, default=20.0)
    ap.add_argument("--protocol", default="rest-5min")
    ap.add_argument("--import-lines", type=int, default=300_000)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "recorder":
            _child_recorder(rest[0], rest[1], args.protocol, args.speed, int(rest[2]))
        else:
            _child_import(rest[0], rest[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.sqlite"
        capture = Path(tmp) / "capture.jsonl"
        _write_capture(capture, args.import_lines)
        from recordings.store import Store

        Store(store).close()
        me = [sys.executable, __file__, "--speed", str(args.speed), "--protocol", args.protocol]
        procs = [subprocess.Popen([*me, "--child", "recorder", str(store), pid, str(seed)], stdout=subprocess.PIPE,
                                  text=True) for pid, seed in (("P01", 1), ("P02", 2))]  # fmt: skip
        time.sleep(2.0)  # both recording before the import starts
        procs.append(subprocess.Popen([*me, "--child", "import", str(store), str(capture)], stdout=subprocess.PIPE,
                                      text=True))  # fmt: skip
        outs = [p.communicate()[0] for p in procs]
        codes = [p.returncode for p in procs]
    print(f"two recorders at ×{args.speed:g} ({args.protocol}) and an import of {args.import_lines} lines, one store")
    for out, code in zip(outs, codes, strict=True):
        last = out.strip().splitlines()[-1] if out.strip() else "{}"
        r = json.loads(last)
        if "participant" in r:
            pct = 100.0 * r["stored"] / r["sent"] if r["sent"] else float("nan")
            print(f"  {r['participant']}: stored {r['stored']} / sent {r['sent']} packets = {pct:.1f} %, state "
                  f"{r['state']}{' (' + r['reason'] + ')' if r['reason'] else ''}, longest notification "
                  f"{r['longest_s'] * 1000:.0f} ms, exit {code}")  # fmt: skip
        elif "packets" in r:
            print(f"  import: {r['packets']} packets in {r['seconds']:.1f} s, state {r['state']}, exit {code}")
        else:
            print(f"  a process failed (exit {code})")


if __name__ == "__main__":
    main()
