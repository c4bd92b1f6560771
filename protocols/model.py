"""Protocol and phase model: immutable values describing a scripted session (no I/O, no clock)."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from enum import StrEnum

PACER_RATE_RANGE_BPM: tuple[float, float] = (2.0, 30.0)
"""Pacer rates accepted, in breaths per minute (inclusive)."""
INHALE_FRACTION_RANGE: tuple[float, float] = (0.1, 0.9)
"""Inhale share of a breath a protocol file may ask for (inclusive): from 1:9 to 9:1 inhale:exhale."""
MAX_PHASE_S = 4 * 3600.0
"""Longest phase a protocol file may have (4 h)."""
MAX_PROTOCOL_S = 12 * 3600.0
"""Longest protocol (sum of its phases, 12 h): a lab session, not a recording of days."""
MAX_PHASES = 100
"""Most phases in one protocol."""
MAX_PROMPTS_PER_PHASE = 200
"""Most timed prompts in one phase."""
MAX_TEXT_CHARS = 5000
"""Longest prompt text (characters)."""


class PhaseKind(StrEnum):
    """What a phase asks of the participant; analysis groups phases by kind."""

    REST = "rest"
    BREATHING = "breathing"
    GROUNDING = "grounding"
    IMAGERY = "imagery"
    RECALL = "recall"
    REFOCUS = "refocus"
    RECOVERY = "recovery"
    DIARY = "diary"
    MEDITATION = "meditation"
    OTHER = "other"


class FeedbackMode(StrEnum):
    """What the participant display shows of the physiology: the real signal, nothing, or a sham signal."""

    LIVE = "live"
    HIDDEN = "hidden"
    SHAM = "sham"


@dataclass(frozen=True)
class Pacer:
    """A breathing pacer: `rate_bpm` breaths per minute, inhaling for `inhale_fraction` of each breath."""

    rate_bpm: float
    inhale_fraction: float = 0.4

    def __post_init__(self) -> None:
        lo, hi = PACER_RATE_RANGE_BPM
        if not (math.isfinite(self.rate_bpm) and lo <= self.rate_bpm <= hi):
            raise ValueError(f"pacer rate must be {lo:g}-{hi:g} breaths/min, got {self.rate_bpm!r}")
        if not (math.isfinite(self.inhale_fraction) and 0.0 < self.inhale_fraction < 1.0):
            raise ValueError(f"inhale fraction must be in (0, 1), got {self.inhale_fraction!r}")

    @classmethod
    def from_ratio(cls, rate_bpm: float, inhale: float, exhale: float) -> Pacer:
        """A pacer whose inhale:exhale durations are in the proportion `inhale`:`exhale` (e.g. 4:6)."""
        if not (inhale > 0 and exhale > 0 and math.isfinite(inhale) and math.isfinite(exhale)):
            raise ValueError(f"inhale:exhale parts must be positive numbers, got {inhale!r}:{exhale!r}")
        return cls(rate_bpm=rate_bpm, inhale_fraction=inhale / (inhale + exhale))

    @property
    def period_s(self) -> float:
        """Seconds per breath."""
        return 60.0 / self.rate_bpm

    @property
    def inhale_s(self) -> float:
        return self.period_s * self.inhale_fraction

    @property
    def exhale_s(self) -> float:
        return self.period_s - self.inhale_s


@dataclass(frozen=True)
class TimedPrompt:
    """A prompt shown `at_s` seconds into its phase (phase time excludes paused time)."""

    at_s: float
    text: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.at_s) and self.at_s >= 0):
            raise ValueError(f"prompt time must be >= 0 s, got {self.at_s!r}")
        if not self.text.strip():
            raise ValueError("prompt text must not be empty")


@dataclass(frozen=True)
class Phase:
    """One scripted phase. `prompts` are sorted by time and fall inside the phase.

    `instrument` (kind `diary` only) names the diary or questionnaire the participant answers during the phase: a
    built-in instrument's name or the path of an instrument TOML file.
    """

    name: str
    kind: PhaseKind
    duration_s: float
    prompt: str = ""
    prompts: tuple[TimedPrompt, ...] = ()
    pacer: Pacer | None = None
    feedback: FeedbackMode = FeedbackMode.LIVE
    show_numbers: bool = False
    instrument: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("phase name must not be empty")
        object.__setattr__(self, "kind", PhaseKind(self.kind))
        if self.instrument is not None:
            if not (isinstance(self.instrument, str) and self.instrument.strip()):
                raise ValueError(f"phase {self.name!r}: instrument must be a non-empty name or path")
            if self.kind is not PhaseKind.DIARY:
                raise ValueError(f"phase {self.name!r}: only a diary phase names an instrument, not a "
                                 f"{self.kind.value} phase")  # fmt: skip
        object.__setattr__(self, "feedback", FeedbackMode(self.feedback))
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"phase {self.name!r}: duration must be > 0 s, got {self.duration_s!r}")
        prompts = tuple(sorted(self.prompts, key=lambda p: p.at_s))
        for p in prompts:
            if p.at_s >= self.duration_s:
                raise ValueError(
                    f"phase {self.name!r}: prompt at {p.at_s:g} s is outside the {self.duration_s:g} s phase"
                )
        object.__setattr__(self, "prompts", prompts)


@dataclass(frozen=True)
class PhasePosition:
    """Where a protocol time falls: phase `index`, starting `start_s` into the protocol, `elapsed_s` in."""

    index: int
    phase: Phase
    start_s: float
    elapsed_s: float

    @property
    def remaining_s(self) -> float:
        return self.phase.duration_s - self.elapsed_s


@dataclass(frozen=True)
class Protocol:
    """A named, versioned sequence of phases with unique names."""

    name: str
    description: str
    phases: tuple[Phase, ...]
    version: str = "1"
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("protocol name must not be empty")
        phases = tuple(self.phases)
        if not phases:
            raise ValueError(f"protocol {self.name!r} has no phases")
        seen: set[str] = set()
        for ph in phases:
            if ph.name in seen:
                raise ValueError(f"protocol {self.name!r}: phase name {ph.name!r} is used twice")
            seen.add(ph.name)
        object.__setattr__(self, "phases", phases)
        object.__setattr__(self, "version", str(self.version))
        starts, total = [], 0.0
        for ph in phases:
            starts.append(total)
            total += ph.duration_s
        object.__setattr__(self, "_starts", tuple(starts))

    @property
    def total_duration_s(self) -> float:
        return self._starts[-1] + self.phases[-1].duration_s

    @property
    def phase_starts_s(self) -> tuple[float, ...]:
        """Planned start of each phase, in seconds from the protocol start (no pauses)."""
        return self._starts

    def phase_at(self, t: float) -> PhasePosition | None:
        """The phase running `t` s into an unpaused run; None if `t` is before 0 or at/after the end."""
        if not (0.0 <= t < self.total_duration_s):
            return None
        i = bisect_right(self._starts, t) - 1
        return PhasePosition(i, self.phases[i], self._starts[i], t - self._starts[i])

    def phase_named(self, name: str) -> Phase:
        for ph in self.phases:
            if ph.name == name:
                return ph
        names = [p.name for p in self.phases]
        raise KeyError(f"protocol {self.name!r} has no phase {name!r}; phases: {names}")

    def with_pacer_rate(self, rate_bpm: float) -> Protocol:
        """A copy whose paced phases all use `rate_bpm` (e.g. a participant's resonance rate), ratio kept."""
        phases = tuple(
            replace(ph, pacer=replace(ph.pacer, rate_bpm=rate_bpm)) if ph.pacer is not None else ph
            for ph in self.phases
        )
        return replace(self, phases=phases)
