"""A seeded beat-by-beat model of one participant's heart, for the simulated strap.

Pure numpy and deterministic for a seed. The RR interval of each beat is

    RR = base(HR, stress, soothing) − RSA(breathing) + Mayer wave (~0.1 Hz) + slow drift + jitter

where breathing is a phase-continuous oscillator (its instantaneous rate is integrated, so a pacer
change never makes the breath jump), RSA raises heart rate on inhale and lowers it on exhale, and its
amplitude follows a baroreflex resonance curve peaking near 6 breaths/min (0.1 Hz), as described by
Vaschillo and Lehrer. Autonomic state moves smoothly (first-order lag) towards the target set by the
phase kind: soothing phases ("breathing", "imagery", "refocus", "grounding", "recovery") raise vagal
tone; "recall" raises HR and lowers RSA. Premature (ectopic) beats with a compensatory pause and beats
the strap fails to detect (a doubled RR) are drawn per beat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

RESONANCE_HZ = 0.1
"""Baroreflex resonance frequency: RSA is largest when breathing at about 6 breaths/min."""
RESONANCE_DAMPING = 0.35
RSA_FLOOR = 0.2
"""Share of the RSA gain that does not depend on breathing rate (the direct vagal path)."""
BREATH_STEP_S = 0.05
"""Integration step of the breathing and Mayer oscillators (s)."""
AUTONOMIC_TAU_S = 15.0
"""Time constant with which vagal tone and stress follow a change of phase (s)."""
ECTOPIC_PREMATURITY = 0.62
"""A premature beat arrives after this fraction of the expected RR; the pause makes the pair sum to 2 RR."""

SOOTHING_WEIGHT: dict[str, float] = {
    "breathing": 1.0,
    "imagery": 1.0,
    "grounding": 0.8,
    "refocus": 0.6,
    "recovery": 0.4,
}
"""How strongly each phase kind engages soothing; kinds not listed (like "rest") are neutral."""
STRESS_WEIGHT: dict[str, float] = {"recall": 1.0}


@dataclass(frozen=True, slots=True)
class PacerSetting:
    """A breathing pacer: breaths per minute and the inhale:exhale duration ratio (1.0 = equal)."""

    rate_bpm: float
    inhale_exhale_ratio: float = 1.0

    def __post_init__(self) -> None:
        if not (1.0 <= self.rate_bpm <= 40.0):
            raise ValueError(f"pacer rate must be within 1-40 breaths/min, got {self.rate_bpm}")
        if not (0.1 <= self.inhale_exhale_ratio <= 10.0):
            raise ValueError(f"inhale:exhale ratio must be within 0.1-10, got {self.inhale_exhale_ratio}")


class BreathingGuide(Protocol):
    """What the session tells the participant at time t: the pacer (None = breathe freely) and the phase."""

    def pacer(self, t: float) -> PacerSetting | None: ...

    def phase_kind(self, t: float) -> str: ...


@dataclass(frozen=True, slots=True)
class GuideSegment:
    """From `t_start` (s) on: the phase kind and the pacer (None = spontaneous breathing)."""

    t_start: float
    kind: str
    pacer: PacerSetting | None = None


@dataclass(frozen=True)
class ScheduledGuide:
    """A `BreathingGuide` from a fixed timetable of segments (sorted by start; before the first: "rest")."""

    segments: tuple[GuideSegment, ...] = ()

    def __post_init__(self) -> None:
        starts = [s.t_start for s in self.segments]
        if starts != sorted(starts):
            raise ValueError(f"guide segments must be sorted by t_start, got starts {starts}")

    def _at(self, t: float) -> GuideSegment | None:
        current = None
        for seg in self.segments:
            if seg.t_start <= t:
                current = seg
            else:
                break
        return current

    def pacer(self, t: float) -> PacerSetting | None:
        seg = self._at(t)
        return seg.pacer if seg else None

    def phase_kind(self, t: float) -> str:
        seg = self._at(t)
        return seg.kind if seg else "rest"


REST_GUIDE = ScheduledGuide()
"""Spontaneous breathing at rest for the whole session."""


@dataclass(frozen=True)
class SimParticipant:
    """The physiology of one simulated participant. Rates are per beat; gains are documented per field."""

    seed: int = 0
    baseline_hr_bpm: float = 72.0
    rsa_gain: float = 60.0
    """RR modulation by breathing (ms, half peak-to-trough) at resonance breathing (6/min), baseline tone."""
    mayer_amplitude: float = 15.0
    """RR modulation (ms) of the ~0.1 Hz Mayer (blood-pressure) wave."""
    noise_ms: float = 8.0
    """Standard deviation of independent beat-to-beat RR jitter (ms)."""
    spontaneous_breath_bpm: float = 14.0
    complies_with_pacer: bool = True
    ectopic_rate: float = 0.0
    missed_beat_rate: float = 0.0
    soothing_response: float = 0.5
    """0-1: in soothing phases RSA grows by up to this fraction and HR falls by up to a tenth of it."""
    stress_response: float = 0.5
    """0-1: in 'recall' HR rises by up to 20 % of this and RSA shrinks by up to 70 % of this."""
    drift_ms: float = 15.0
    """Standard deviation (ms) of the slow (very-low-frequency) wandering of the mean RR."""

    def __post_init__(self) -> None:
        if not (30.0 <= self.baseline_hr_bpm <= 200.0):
            raise ValueError(f"baseline_hr_bpm must be within 30-200, got {self.baseline_hr_bpm}")
        if not (3.0 <= self.spontaneous_breath_bpm <= 40.0):
            raise ValueError(f"spontaneous_breath_bpm must be within 3-40, got {self.spontaneous_breath_bpm}")
        for name in ("ectopic_rate", "missed_beat_rate", "soothing_response", "stress_response"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be within 0-1, got {value}")
        for name in ("rsa_gain", "mayer_amplitude", "noise_ms", "drift_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class SimBeat:
    """One beat as the strap reports it: time of the beat (s), RR since the previous reported beat (ms).

    `missed`: the strap did not detect the previous beat, so `rr_ms` spans two true intervals; the undetected
    beat's true time is `undetected_t` (it is still in the ECG). `ectopic`: this beat came prematurely.
    """

    t_beat: float
    rr_ms: float
    ectopic: bool = False
    missed: bool = False
    undetected_t: float | None = None


def resonance_gain(breath_hz: float) -> float:
    """RSA amplitude relative to its value at resonance (1.0 at `RESONANCE_HZ`, smaller away from it)."""
    x = breath_hz / RESONANCE_HZ
    z = RESONANCE_DAMPING
    peak = 2.0 * z / math.sqrt((1.0 - x * x) ** 2 + (2.0 * z * x) ** 2)
    return RSA_FLOOR + (1.0 - RSA_FLOOR) * peak


def breath_waveform(phase: float, inhale_fraction: float) -> float:
    """Lung volume in [-1, 1] at breath-cycle phase (cycles, any real): rises on inhale, falls on exhale."""
    p = phase % 1.0
    if p < inhale_fraction:
        return -math.cos(math.pi * p / inhale_fraction)
    return math.cos(math.pi * (p - inhale_fraction) / (1.0 - inhale_fraction))


@dataclass
class _OscState:
    t: float = 0.0
    breath_phase: float = 0.0  # cycles
    mayer_phase: float = 0.0  # cycles
    breath_rate_jitter: float = 0.0  # relative deviation of spontaneous rate (slow random walk)
    inhale_fraction: float = 0.5
    vagal: float = 0.0  # 0..1 engagement of soothing
    stress: float = 0.0  # 0..1 engagement of threat
    drift: float = 0.0  # ms


@dataclass
class BeatModel:
    """Generates a participant's beats one after the other: call `next_beat` with the previous beat's time."""

    participant: SimParticipant
    _rng: np.random.Generator = field(init=False, repr=False)
    _osc: _OscState = field(init=False, repr=False)
    _history_t: list[float] = field(init=False, repr=False)
    _history_v: list[float] = field(init=False, repr=False)
    _last_beat_t: float | None = field(init=False, default=None, repr=False)
    _pending_pause_ms: float | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.participant.seed)
        self._osc = _OscState(
            breath_phase=float(self._rng.uniform(0, 1)), mayer_phase=float(self._rng.uniform(0, 1))
        )
        self._history_t = []
        self._history_v = []

    # -- breathing -------------------------------------------------------------------------------------------
    def _breath_rate_hz(self, t: float, guide: BreathingGuide) -> tuple[float, float]:
        """Instantaneous breathing frequency (Hz) and inhale fraction at t."""
        p = self.participant
        pacer = guide.pacer(t)
        if pacer is not None and p.complies_with_pacer:
            return pacer.rate_bpm / 60.0, pacer.inhale_exhale_ratio / (1.0 + pacer.inhale_exhale_ratio)
        rate = p.spontaneous_breath_bpm * (1.0 - 0.15 * self._osc.vagal + 0.1 * self._osc.stress)
        return rate / 60.0, 0.42

    def _advance(self, t_target: float, guide: BreathingGuide) -> None:
        """Integrate oscillators and autonomic state from the model's time up to `t_target`."""
        osc, p, rng = self._osc, self.participant, self._rng
        if not self._history_t:
            self._record()
        while osc.t < t_target - 1e-12:
            dt = min(BREATH_STEP_S, t_target - osc.t)
            f_breath, inhale = self._breath_rate_hz(osc.t, guide)
            complying = guide.pacer(osc.t) is not None and p.complies_with_pacer
            wander = 0.02 if complying else 0.12
            osc.breath_rate_jitter += -osc.breath_rate_jitter * dt / 20.0 + wander * math.sqrt(
                2 * dt / 20.0
            ) * float(rng.standard_normal())
            osc.breath_phase += f_breath * (1.0 + osc.breath_rate_jitter) * dt
            osc.inhale_fraction = inhale
            osc.mayer_phase += RESONANCE_HZ * (1.0 + 0.1 * math.sin(0.013 * osc.t)) * dt
            kind = guide.phase_kind(osc.t)
            k = dt / AUTONOMIC_TAU_S
            osc.vagal += (SOOTHING_WEIGHT.get(kind, 0.0) - osc.vagal) * k
            osc.stress += (STRESS_WEIGHT.get(kind, 0.0) - osc.stress) * k
            osc.drift += -osc.drift * dt / 30.0 + p.drift_ms * math.sqrt(2 * dt / 30.0) * float(
                rng.standard_normal()
            )
            osc.t += dt
            self._record()

    def _record(self) -> None:
        self._history_t.append(self._osc.t)
        self._history_v.append(breath_waveform(self._osc.breath_phase, self._osc.inhale_fraction))

    def breathing_signal(
        self, t: float | np.ndarray, guide: BreathingGuide | None = None
    ) -> np.ndarray | float:
        """Lung volume in [-1, 1] (rising = inhale) at session time(s) t.

        Times already simulated are read from the model's history; later times need `guide` to simulate ahead.
        """
        t_arr = np.asarray(t, dtype=float)
        t_max = float(np.max(t_arr)) if t_arr.size else 0.0
        if t_max > self._osc.t + 1e-9:
            if guide is None:
                raise ValueError(
                    f"breathing_signal at t={t_max:.3f} s is beyond the simulated {self._osc.t:.3f} s: "
                    "pass a guide"
                )
            self._advance(t_max, guide)
        if not self._history_t:
            self._record()
        out = np.interp(t_arr, self._history_t, self._history_v)
        return float(out) if np.ndim(out) == 0 else out

    # -- beats -----------------------------------------------------------------------------------------------
    def _expected_rr_ms(self, t: float) -> float:
        """The RR (ms) the sinus node would produce for a beat starting at t, given the current state."""
        p, osc = self.participant, self._osc
        shift = -0.1 * p.soothing_response * osc.vagal + 0.2 * p.stress_response * osc.stress
        hr = p.baseline_hr_bpm * (1.0 + shift)
        return 60000.0 / hr + osc.drift

    def _rsa_ms(self, t: float, guide: BreathingGuide) -> float:
        p, osc = self.participant, self._osc
        f_breath, _ = self._breath_rate_hz(t, guide)
        tone = (1.0 + p.soothing_response * osc.vagal) * (1.0 - 0.7 * p.stress_response * osc.stress)
        amplitude = p.rsa_gain * resonance_gain(f_breath) * tone
        lag_s = 0.5  # heart rate follows lung volume with a short delay
        volume = float(self.breathing_signal(max(0.0, t - lag_s)))
        return amplitude * volume  # positive on inhale → shorter RR

    def _sinus_rr_ms(self, t_prev: float, guide: BreathingGuide) -> float:
        """One sinus RR starting at t_prev: state is evaluated at the interval's expected midpoint."""
        p, osc = self.participant, self._osc
        self._advance(t_prev, guide)
        rough = self._expected_rr_ms(t_prev)
        t_mid = t_prev + 0.5 * rough
        self._advance(t_mid, guide)
        rr = self._expected_rr_ms(t_mid) - self._rsa_ms(t_mid, guide)
        rr += p.mayer_amplitude * math.sin(2 * math.pi * osc.mayer_phase)
        rr += p.noise_ms * float(self._rng.standard_normal())
        return float(np.clip(rr, 250.0, 2500.0))

    def next_beat(self, t: float, guide: BreathingGuide) -> SimBeat:
        """The beat after the one at session time `t` (the first call: the first beat after t).

        Calls must move forward: `t` is normally the previous returned `t_beat`.
        """
        if self._last_beat_t is not None and t < self._last_beat_t - 1e-9:
            raise ValueError(f"next_beat must move forward: t={t} is before last beat {self._last_beat_t}")
        p = self.participant
        rr, ectopic = self._one_true_interval(t, guide)
        t_beat = t + rr / 1000.0
        if not ectopic and self._pending_pause_ms is None and float(self._rng.uniform()) < p.missed_beat_rate:
            rr2, ectopic2 = self._one_true_interval(t_beat, guide)
            t_end = t_beat + rr2 / 1000.0
            beat = SimBeat(t_end, rr + rr2, ectopic=ectopic2, missed=True, undetected_t=t_beat)
        else:
            beat = SimBeat(t_beat, rr, ectopic=ectopic)
        self._last_beat_t = beat.t_beat
        self._advance(beat.t_beat, guide)
        return beat

    def _one_true_interval(self, t: float, guide: BreathingGuide) -> tuple[float, bool]:
        """The next true RR (ms) and whether its closing beat is premature."""
        if self._pending_pause_ms is not None:
            pause, self._pending_pause_ms = self._pending_pause_ms, None
            self._advance(t, guide)
            return pause, False
        rr = self._sinus_rr_ms(t, guide)
        if float(self._rng.uniform()) < self.participant.ectopic_rate:
            premature = rr * ECTOPIC_PREMATURITY
            self._pending_pause_ms = 2.0 * rr - premature
            return premature, True
        return rr, False
