"""Beat-time error against the truth under a real strap's timing, live and after the whole-session rebuild.

Run: ``python benchmarks/bench_beat_timing.py [--hours 1]``. For strap clock drifts of −50, 0 and +50 ppm, a
simulated strap (`devices.simulator.SimulatedStrap`, default latency 0–300 ms, 5 % held back, skipped ticks, a late
first notification) streams for the given time on virtual time; its notifications go through the live timeline
(`LiveBeatTimeline`) and the whole-session fit (`fit_beat_times`), and every reconstructed beat is compared with the
beat the model produced. Prints median and maximum |error| in ms per case. Not part of pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devices.clock import ManualClock
from devices.heart_rate import decode_heart_rate
from devices.link import HEART_RATE_MEASUREMENT_UUID, Packet
from devices.physiology import SimParticipant
from devices.simulator import SimFaults, SimulatedStrap
from recordings.beat_timeline import LiveBeatTimeline, Notification, fit_beat_times


def record(hours: float, drift_ppm: float, seed: int) -> tuple[SimulatedStrap, list[Packet], float]:
    clock = ManualClock()
    strap = SimulatedStrap("sim-bench", clock, SimParticipant(seed=seed), faults=SimFaults(drift_ppm=drift_ppm),
                           keep_history=True)
    packets: list[Packet] = []
    events = []

    async def main() -> None:
        async def stop_later() -> None:
            while clock.now() < hours * 3600.0:
                await asyncio.sleep(0)
            strap.stop()

        await asyncio.gather(strap.run(packets.append, events.append), stop_later())

    asyncio.run(main())
    return strap, [p for p in packets if p.uuid == HEART_RATE_MEASUREMENT_UUID], events[1].t


def errors(strap: SimulatedStrap, packets: list[Packet], t_connect: float) -> tuple[np.ndarray, np.ndarray]:
    notes = [Notification(i, p.t, decode_heart_rate(p.data).rr_1024) for i, p in enumerate(packets)]
    live = LiveBeatTimeline()
    live_t = np.array([r.t for n in notes for r in live.add(n.t, n.rr_1024, n.packet_id)])
    rows, _ = fit_beat_times(notes)
    fit_t = np.array([r.t for r in rows])
    truth = np.array([b.t_beat for b in strap.beats if b.t_beat > t_connect])[: fit_t.size]
    return live_t - truth, fit_t - truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(f"{args.hours:g} h per case; |error| against the model's beats, ms")
    print(f"{'drift ppm':>10} {'beats':>7} {'live median':>12} {'live max':>9} {'rebuilt median':>15}"
          f" {'rebuilt max':>12}")
    for drift in (-50.0, 0.0, 50.0):
        strap, packets, t_connect = record(args.hours, drift, args.seed)
        live, fit = errors(strap, packets, t_connect)
        print(f"{drift:>10g} {fit.size:>7d} {np.median(np.abs(live)) * 1e3:>12.1f} {np.max(np.abs(live)) * 1e3:>9.1f}"
              f" {np.median(np.abs(fit)) * 1e3:>15.1f} {np.max(np.abs(fit)) * 1e3:>12.1f}")
    print("goal after the rebuild: median <= 5 ms, max <= 30 ms")


if __name__ == "__main__":
    main()
