"""A heart-rate strap's notification timing as a pure function (for property tests and benchmarks).

The same model as `devices.simulator.SimulatedStrap`, without the event loop: beats happen on the session clock;
the strap measures their RR on its own clock (fast by `drift_ppm`), quantised to 1/1024 s with the remainder
carried; about once a second of strap time it notifies the RR completed since its previous notification (a share of
ticks skipped); BLE delivers in order, late by a uniform latency, some packets held back and delivered with the next,
the first notification later still.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RR_UNITS_PER_S = 1024


@dataclass(frozen=True)
class StrapTiming:
    drift_ppm: float = 0.0
    latency_s: tuple[float, float] = (0.0, 0.3)
    bunch_fraction: float = 0.05
    skipped_tick_fraction: float = 0.02
    first_delay_s: tuple[float, float] = (0.2, 0.8)
    tick_jitter_s: float = 0.02


@dataclass(frozen=True)
class Delivery:
    arrival: float
    rr_1024: tuple[int, ...]
    beat_index: tuple[int, ...]
    """Index (into the true beats) of each RR's ending beat."""


def deliveries(beat_t: np.ndarray, timing: StrapTiming, rng: np.random.Generator, t_start: float = 0.0
               ) -> list[Delivery]:
    """Heart-rate notifications as the host receives them, for true beats at `beat_t` (session s, increasing).

    Beat 0 only starts the first interval (the strap reports RR ending at beats 1, 2, …).
    """
    beat_t = np.asarray(beat_t, dtype=float)
    rate = 1.0 + timing.drift_ppm * 1e-6
    rr_exact = np.diff(beat_t) * rate * RR_UNITS_PER_S
    units = np.zeros(rr_exact.size, dtype=int)
    carry = 0.0
    for i, x in enumerate(rr_exact):
        units[i] = round(x + carry)
        carry = x + carry - units[i]
    out: list[Delivery] = []
    held: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    last_due = -np.inf
    tick = t_start
    next_beat = 1
    first = True
    while next_beat < beat_t.size:
        strap_step = 1.0 + float(np.clip(rng.normal(0, timing.tick_jitter_s), -3 * timing.tick_jitter_s,
                                         3 * timing.tick_jitter_s))
        tick += strap_step / rate
        if not first and rng.uniform() < timing.skipped_tick_fraction:
            continue
        end = int(np.searchsorted(beat_t, tick, side="right"))
        idx = tuple(range(next_beat, max(next_beat, end)))
        next_beat = max(next_beat, end)
        payload = (tuple(int(units[i - 1]) for i in idx), idx)
        if not first and rng.uniform() < timing.bunch_fraction:
            held.append(payload)
            continue
        delay = float(rng.uniform(*timing.latency_s))
        if first:
            delay += float(rng.uniform(*timing.first_delay_s))
            first = False
        due = max(tick + delay, last_due)
        last_due = due
        for rr, ix in [*held, payload]:
            out.append(Delivery(due, rr, ix))
        held.clear()
    return out
