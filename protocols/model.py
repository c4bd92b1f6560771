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

    `start_on_marker` / `end_on_marker` name a marker value on the protocol's `marker_stream` (an LSL stream such
    as PsychoPy's) that starts / ends the phase: the boundary lands on the marker's session time (see the runner).
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
    start_on_marker: str | None = None
    end_on_marker: str | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("phase name must not be empty")
        for key in ("start_on_marker", "end_on_marker"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"phase {self.name!r}: {key} must be a non-empty marker value, got {value!r}")
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


DEFAULT_MARKER_TIMEOUT_S = 300.0
"""How long past its planned end a phase waits for the marker that ends it, unless the protocol says otherwise."""


@dataclass(frozen=True)
class Protocol:
    """A named, versioned sequence of phases with unique names.

    `marker_stream` names the LSL stream (recorded with --lsl-in) whose markers start/end phases that say
    `start_on_marker`/`end_on_marker`; a phase waiting for its marker ends by itself `marker_timeout_s` after its
    planned end (the fallback, recorded as `ended = "marker timeout"`).
    """

    name: str
    description: str
    phases: tuple[Phase, ...]
    version: str = "1"
    marker_stream: str | None = None
    marker_timeout_s: float = DEFAULT_MARKER_TIMEOUT_S
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
        _check_markers(self.name, phases, self.marker_stream, self.marker_timeout_s)
        starts, total = [], 0.0
        for ph in phases:
            starts.append(total)
            total += ph.duration_s
        object.__setattr__(self, "_starts", tuple(starts))

    def boundary_marker(self, index: int) -> str | None:
        """The marker value that ends phase `index` (its `end_on_marker`, or the next phase's `start_on_marker`)."""
        own = self.phases[index].end_on_marker
        if own is not None or index + 1 >= len(self.phases):
            return own
        return self.phases[index + 1].start_on_marker

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


def _check_markers(name: str, phases: tuple[Phase, ...], stream: str | None, timeout_s: float) -> None:
    """Marker-driven boundaries need a stream, cannot start the first phase and name each boundary once."""
    if stream is not None and not (isinstance(stream, str) and stream.strip()):
        raise ValueError(f"protocol {name!r}: marker_stream must be a non-empty LSL stream name, got {stream!r}")
    if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"protocol {name!r}: marker_timeout must be > 0 s, got {timeout_s!r}")
    for i, ph in enumerate(phases):
        for key in ("start_on_marker", "end_on_marker"):
            value = getattr(ph, key)
            if value is not None and stream is None:
                raise ValueError(f"protocol {name!r}: phase {ph.name!r} has {key} = {value!r} but the protocol names "
                                 "no marker_stream (the LSL stream the marker comes from)")  # fmt: skip
        if i == 0 and ph.start_on_marker is not None:
            raise ValueError(f"protocol {name!r}: the first phase {ph.name!r} cannot start on a marker: it starts "
                             "with the session (put a phase before it that ends on the marker)")  # fmt: skip
        if i > 0 and ph.start_on_marker is not None and phases[i - 1].end_on_marker is not None:
            raise ValueError(f"protocol {name!r}: phase {phases[i - 1].name!r} ends on "
                             f"{phases[i - 1].end_on_marker!r} and phase {ph.name!r} starts on "
                             f"{ph.start_on_marker!r}: one boundary, one marker (keep one of them)")  # fmt: skip
