"""Breath by breath from the chest-movement waveform: RSA per breath (peak-to-trough HR) and pacer compliance.

Input: the breathing waveform (`recordings.breathing`, mG on the session clock, NaN in gaps), the phase's
chest-movement breathing rate (`acc_breathing`, which has already judged the rhythm clear enough to trust) and the
corrected beats (`hrv.corrected_beats`, the NN intervals the HRV analysis uses).

- **Breath cycles.** Troughs of the waveform within the phase (``scipy.signal.find_peaks`` on the negated signal,
  at least 0.6 of the phase's breathing period apart, standing out by at least 0.3 SD of the phase's waveform, as
  `acc_breathing` counts breaths). A cycle runs from one trough to the next inside one gap-free stretch of the
  waveform; both troughs lie in the phase. The waveform's polarity is arbitrary (see `recordings.breathing`), so
  a "trough" is the end of inhaling or of exhaling, the same one throughout a stretch; a cycle's duration does not
  depend on which.
- **RSA per breath**, the peak-valley method (Grossman, van Beek & Wientjes 1990, Psychophysiology 27:702-714, in its
  heart-rate form as used in resonance-breathing work, Lehrer et al. 2000): for each cycle, the highest minus the
  lowest instantaneous heart rate (60000 / NN) of the beats inside it. Because the polarity is not known, the
  extremes are taken over the whole cycle instead of inhalation and exhalation separately; with RSA in phase with
  breathing this is the same number. A cycle counts only when its beats are all usable and in one gap-free run and
  there are at least `MIN_BEATS_PER_CYCLE`; the phase value is the median over cycles (robust to a cough or a sigh).
- **Pacer compliance**: the share of cycles whose duration lies within ±`COMPLIANCE_TOLERANCE` (10 %) of the pacer's
  period (at 6/min: 9-11 s, i.e. 5.45-6.67 breaths/min), in %; the measured rate beside the pacer is the
  chest-movement rate. 10 % is about the breath-to-breath variation of someone following a pacer well and half the
  0.5-1/min steps between the rates of a resonance assessment, so a participant one step off scores low.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import find_peaks

from biofeedback.analysis.hrv import CorrectedBeats
from recordings.breathing import BreathingWaveform

COMPLIANCE_TOLERANCE = 0.10
"""A breath follows the pacer when its duration is within this fraction of the pacer's period."""
MIN_BEATS_PER_CYCLE = 3
MIN_CYCLES = 3
"""Fewer complete breath cycles than this in a phase: no RSA per breath and no compliance."""


@dataclass
class PhaseBreaths:
    """Breath cycles of one phase: (start, end) session seconds, RSA per cycle (bpm, NaN = not usable) and summary."""

    cycles: list[tuple[float, float]] = field(default_factory=list)
    rsa_bpm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rsa_p2t_bpm: float | None = None
    pacer_compliance_pct: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def durations_s(self) -> np.ndarray:
        return np.array([b - a for a, b in self.cycles], dtype=float)


def breath_cycles(t: np.ndarray, values: np.ndarray, rate_bpm: float) -> list[tuple[float, float]]:
    """Trough-to-trough cycles of a breathing waveform (times `t`, values with NaN gaps) breathing at ~`rate_bpm`."""
    t = np.asarray(t, dtype=float)
    values = np.asarray(values, dtype=float)
    if len(t) < 3 or not np.isfinite(rate_bpm) or rate_bpm <= 0:
        return []
    finite = np.isfinite(values)
    if not finite.any():
        return []
    fs = 1.0 / float(np.median(np.diff(t)))
    sd = float(np.std(values[finite]))
    distance = max(1, int(0.6 * fs * 60.0 / rate_bpm))
    cycles: list[tuple[float, float]] = []
    edges = np.diff(np.concatenate([[0], finite.astype(np.int8), [0]]))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        if b - a < 3:
            continue
        troughs, _ = find_peaks(-values[a:b], distance=distance, prominence=0.3 * sd)
        times = t[a:b][troughs]
        cycles += [(float(x), float(y)) for x, y in itertools.pairwise(times)]
    return cycles


def rsa_per_cycle(cycles: list[tuple[float, float]], beats: CorrectedBeats) -> np.ndarray:
    """Peak-to-trough heart rate (bpm) within each cycle; NaN where the cycle's beats are too few or not clean."""
    out = np.full(len(cycles), np.nan)
    for i, (a, b) in enumerate(cycles):
        lo, hi = np.searchsorted(beats.t, [a, b], side="left")
        rr = beats.rr[lo:hi]
        if hi - lo < MIN_BEATS_PER_CYCLE or not np.all(np.isfinite(rr)) or len(np.unique(beats.seg[lo:hi])) != 1:
            continue
        hr = 60000.0 / rr
        out[i] = float(hr.max() - hr.min())
    return out


def pacer_compliance_pct(durations_s: np.ndarray, pacer_bpm: float) -> float:
    """Share (%) of breath durations within ±COMPLIANCE_TOLERANCE of the pacer's period."""
    period = 60.0 / pacer_bpm
    within = np.abs(np.asarray(durations_s, dtype=float) - period) <= COMPLIANCE_TOLERANCE * period
    return float(100.0 * within.mean())


def phase_breaths(
    waveform: BreathingWaveform,
    beats: CorrectedBeats,
    start_s: float,
    end_s: float,
    rate_bpm: float,
    pacer_bpm: float | None,
) -> PhaseBreaths:
    """Breath cycles, median RSA per breath and (paced phases) compliance of one phase (see the module doc)."""
    t, values = waveform.window(start_s, end_s)
    out = PhaseBreaths(cycles=breath_cycles(t, values, rate_bpm))
    out.rsa_bpm = rsa_per_cycle(out.cycles, beats)
    if len(out.cycles) < MIN_CYCLES:
        out.notes.append(f"only {len(out.cycles)} complete breath cycles in the chest movement; "
                         f"RSA per breath and pacer compliance need ≥ {MIN_CYCLES}")  # fmt: skip
        return out
    usable = out.rsa_bpm[np.isfinite(out.rsa_bpm)]
    if len(usable) >= MIN_CYCLES:
        out.rsa_p2t_bpm = float(np.median(usable))
    else:
        out.notes.append(f"RSA per breath: only {len(usable)} of {len(out.cycles)} breaths have ≥ "
                         f"{MIN_BEATS_PER_CYCLE} clean beats")  # fmt: skip
    if pacer_bpm is not None:
        out.pacer_compliance_pct = pacer_compliance_pct(out.durations_s, pacer_bpm)
    return out
