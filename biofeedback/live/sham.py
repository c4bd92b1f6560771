"""The sham feedback signal: a slow, smooth, plausible-looking level that is not the participant's physiology.

Used when a phase's feedback is `sham` (blinded control conditions). Deterministic for a seed, so a sham session can
be reproduced; its range and pace resemble real soothing feedback (changes over tens of seconds).
"""

from __future__ import annotations

import math

import numpy as np


def sham_level(t: float, seed: int = 0) -> float:
    """A 0..1 level at session time `t`: a sum of three slow sinusoids with seeded periods and phases."""
    rng = np.random.default_rng([seed, 7919])
    periods = rng.uniform(40.0, 160.0, 3)
    phases = rng.uniform(0.0, 2 * math.pi, 3)
    x = sum(math.sin(2 * math.pi * t / p + ph) for p, ph in zip(periods, phases, strict=True)) / 3.0
    return 0.5 + 0.4 * x
