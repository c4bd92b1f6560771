"""Per-update cost of the live metrics against neurokit2 recomputing the same windows.

Run: ``python benchmarks/bench_live_metrics.py [--hours 1] [--every 50]``. Replays a simulated one-hour RR
series (LF + HF modulation and noise), feeds every beat to `LiveMetrics`, and on every `--every`-th beat times
neurokit2 `hrv_time` (60 s window) + `hrv_frequency` (64 s window, normalize=False) on the same beats.
Prints µs per update for each and the ratio. Not part of pytest (no wall-clock assertions in tests).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biofeedback.live.metrics import LiveMetrics


def simulate_rr(duration_s: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t, times, rrs = 0.0, [], []
    while t < duration_s:
        rr = 900 + 50 * math.sin(2 * math.pi * 0.1 * t) + 20 * math.sin(2 * math.pi * 0.25 * t)
        rr += 15 * rng.normal()
        t += rr / 1000.0
        times.append(t)
        rrs.append(rr)
    return np.array(times), np.array(rrs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--every", type=int, default=50, help="time neurokit2 on every N-th beat")
    args = parser.parse_args()
    import neurokit2 as nk

    times, rrs = simulate_rr(args.hours * 3600.0)
    lm = LiveMetrics(window_s=60.0, spectral_window_s=64.0)
    start = time.perf_counter()
    for t, rr in zip(times.tolist(), rrs.tolist(), strict=True):
        lm.add_beat(t, rr)
    live_us = (time.perf_counter() - start) / len(times) * 1e6

    sample = range(200, len(times), args.every)
    nk_total = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in sample:
            t_now = times[i]
            win_t = (times > t_now - 60.0) & (times <= t_now)
            win_f = (times > t_now - 64.0) & (times <= t_now)
            start = time.perf_counter()
            nk.hrv_time({"RRI": rrs[win_t]}, sampling_rate=1000)
            nk.hrv_frequency({"RRI": rrs[win_f], "RRI_Time": times[win_f]}, sampling_rate=1000,
                             normalize=False, interpolation_rate=4)
            nk_total += time.perf_counter() - start
    nk_us = nk_total / len(sample) * 1e6

    print(f"beats replayed           : {len(times)} ({args.hours:g} h simulated)")
    print(f"live update (every beat) : {live_us:10.1f} µs/beat")
    print(f"neurokit2 recompute      : {nk_us:10.1f} µs/update "
          f"(hrv_time + hrv_frequency, {len(sample)} samples)")
    print(f"ratio                    : {nk_us / live_us:10.1f}x")


if __name__ == "__main__":
    main()
