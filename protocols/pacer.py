"""Pure breathing-pacer waveform: exact at any time into a phase, so a display can jump after a stall."""

from __future__ import annotations

import math
from typing import Literal

from protocols.model import Pacer

Stage = Literal["inhale", "exhale"]


def _check_time(t_in_phase: float) -> None:
    if not (math.isfinite(t_in_phase) and t_in_phase >= 0):
        raise ValueError(f"time into the phase must be a finite number >= 0 s, got {t_in_phase!r}")


def pacer_phase(t_in_phase: float, pacer: Pacer) -> tuple[float, Stage]:
    """(fraction 0..1 of the breath cycle, "inhale" or "exhale"); each breath starts with the inhale."""
    _check_time(t_in_phase)
    cycle = math.fmod(t_in_phase, pacer.period_s) / pacer.period_s
    return cycle, ("inhale" if cycle < pacer.inhale_fraction else "exhale")


def pacer_stage_progress(t_in_phase: float, pacer: Pacer) -> float:
    """How far (0..1) into the current inhale or exhale the pacer is."""
    cycle, stage = pacer_phase(t_in_phase, pacer)
    f = pacer.inhale_fraction
    return cycle / f if stage == "inhale" else (cycle - f) / (1.0 - f)


def pacer_size(t_in_phase: float, pacer: Pacer) -> float:
    """Pacer size 0..1: raised-cosine rise over the inhale, fall over the exhale; smooth at the joins."""
    u = pacer_stage_progress(t_in_phase, pacer)
    _, stage = pacer_phase(t_in_phase, pacer)
    rise = 0.5 - 0.5 * math.cos(math.pi * u)
    return rise if stage == "inhale" else 1.0 - rise
