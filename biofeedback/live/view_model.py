"""The snapshot contract between the live session and the Qt displays (no Qt here).

The session fills these frozen dataclasses; the displays *pull* them at their own frame rate through a
`ViewSource` and act only through `SessionControls`. A display can stall or crash unnoticed by the session.

Times are seconds on the session clock. Everything participant-facing is already decided by the session
(pacer size from the pacer waveform at `t`, a soothing level relative to the participant's own baseline,
whether feedback is live, hidden or sham); the participant display only draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

FEEDBACK_MODES = ("live", "hidden", "sham")
Feedback = Literal["live", "hidden", "sham"]
PACER_LABELS = ("breathe in", "breathe out")


def _check_unit(name: str, value: float | None) -> None:
    if value is not None and not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be within 0..1 or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class ParticipantView:
    """What one participant's screen shows at session time `t`.

    `pacer_size` (0..1) is the pacer waveform at `t` (None: no pacer in this phase, e.g. grounding);
    `soothing_level` (0..1) is relative to the participant's own baseline (`soothing_level()`), None: neutral.
    With `feedback="hidden"` the display ignores `soothing_level`; `"sham"` is drawn exactly like `"live"`
    (the session supplies the sham level), so the participant cannot tell them apart.
    `instrument` names the diary or questionnaire this participant is asked to fill in now (a diary phase they
    have not yet answered or set aside); None otherwise. Displays that know no forms may ignore it.
    `paused` is true while this participant or the experimenter has paused; `self_paused` only for the
    participant's own pause or stop (their Continue ends that, never the experimenter's pause).
    `replay`: a stored session is being watched; nothing is recorded and the controls do nothing.
    """

    t: float
    phase_name: str
    phase_kind: str
    prompt: str
    phase_time_left_s: float
    pacer_size: float | None = None
    pacer_label: str | None = None
    feedback: Feedback = "hidden"
    soothing_level: float | None = None
    paused: bool = False
    finished: bool = False
    message: str = ""
    instrument: str | None = None
    self_paused: bool = False
    replay: bool = False

    def __post_init__(self) -> None:
        _check_unit("pacer_size", self.pacer_size)
        _check_unit("soothing_level", self.soothing_level)
        if self.feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {FEEDBACK_MODES}, got {self.feedback!r}")
        if self.pacer_label is not None and self.pacer_label not in PACER_LABELS:
            raise ValueError(f"pacer_label must be one of {PACER_LABELS} or None, got {self.pacer_label!r}")

    @property
    def shows_feedback(self) -> bool:
        """True when the soothing visual follows `soothing_level` (live or sham, with a level available)."""
        return self.feedback != "hidden" and self.soothing_level is not None


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=float)


@dataclass(frozen=True, slots=True, eq=False)
class StrapView:
    """One strap as the experimenter sees it: link and skin contact, live metrics, recent RR and ECG.

    `rr_t` are beat times (session clock) of the intervals `rr_ms`; `rr_corrected[i]` marks a corrected beat.
    `gaps` are (t0, t1) spans without data (disconnects), never filled with invented beats; `contact_gaps` the
    spans the strap reported no skin contact. Metrics are None while not yet computable; they are the last
    computed values, so a display compares `last_beat_t` (None: no beat yet) with the time to tell stale from
    live. `ecg_t`/`ecg_uv` are empty for straps without ECG. `battery_pct` is the strap's last Battery Level (None:
    not reported).
    """

    device_id: str
    participant_id: str
    link_state: str
    contact: str
    hr_bpm: float | None = None
    rmssd_ms: float | None = None
    coherence: float | None = None
    artifacts: int = 0
    rr_t: np.ndarray = field(default_factory=_empty)
    rr_ms: np.ndarray = field(default_factory=_empty)
    rr_corrected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    gaps: list[tuple[float, float]] = field(default_factory=list)
    ecg_t: np.ndarray = field(default_factory=_empty)
    ecg_uv: np.ndarray = field(default_factory=_empty)
    contact_gaps: list[tuple[float, float]] = field(default_factory=list)
    last_beat_t: float | None = None
    battery_pct: int | None = None

    def __post_init__(self) -> None:
        if not (len(self.rr_t) == len(self.rr_ms) == len(self.rr_corrected)):
            raise ValueError(
                f"strap {self.device_id}: rr_t, rr_ms and rr_corrected differ in length "
                f"({len(self.rr_t)}, {len(self.rr_ms)}, {len(self.rr_corrected)})"
            )
        if len(self.ecg_t) != len(self.ecg_uv):
            raise ValueError(
                f"strap {self.device_id}: ecg_t and ecg_uv differ in length "
                f"({len(self.ecg_t)}, {len(self.ecg_uv)})"
            )
        for t0, t1 in (*self.gaps, *self.contact_gaps):
            if t1 < t0:
                raise ValueError(f"strap {self.device_id}: gap ends before it starts ({t0}, {t1})")


EXPERIMENTER = "experimenter"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One entry of the experimenter's event log: what happened at `t`, in whose records, and who did it.

    `kind` is the stored marker kind (phase_start, prompt, pause, manual, participant, diary ...); `participants`
    are the sessions it was stored in (empty: every participant's); `by` is `EXPERIMENTER`, a participant code,
    or empty for the protocol itself.
    """

    t: float
    kind: str
    label: str
    participants: tuple[str, ...] = ()
    by: str = ""

    def applies_to(self, participant_id: str) -> bool:
        return not self.participants or participant_id in self.participants

    def describe(self) -> str:
        """The log line's words, e.g. "marker: distress, for P03" or "P03 paused (their own display)"."""
        who = ", ".join(self.participants) if self.participants else "the whole group"
        if self.kind == "participant":
            return f"{self.by} {self.label} (their own display)"
        if self.kind == "manual":
            return f"marker: {self.label}, for {who}"
        if self.kind in ("pause", "resume", "skip", "stop"):
            by = f" by the {self.by}" if self.by == EXPERIMENTER else (f" by {self.by}" if self.by else "")
            return f"group {self.label}{by}"
        if self.kind == "diary":
            return f"diary {self.label.removeprefix('diary ')} by {who}"
        words = {"phase_start": "phase start", "phase_end": "phase end", "prompt": "prompt",
                 "session_start": "session start", "session_end": "session end"}
        return f"{words.get(self.kind, self.kind)}: {self.label}"


@dataclass(frozen=True, slots=True)
class ParticipantAlert:
    """A participant who has paused or stopped their own display, since `t`: the experimenter must see it."""

    participant_id: str
    state: Literal["paused", "stopped"]
    t: float


@dataclass(frozen=True, slots=True)
class MonitorView:
    """The experimenter's view of the whole session at time `t`.

    `phases` are (name, kind, start_s, end_s) on the session clock; `current_phase_index` is -1 before the
    first and len(phases) after the last phase. `markers` are (t, label); `events` the same moments and more
    (per-participant ones) with their kind, targets and author; `participant_alerts` the participants paused
    or stopped now; `alerts` lines the experimenter must see at once: a strap or the store stopped recording.
    `replay`: a stored session is being watched; nothing is recorded and the controls do nothing.
    `waiting_for_marker`: the marker (from the protocol's LSL `marker_stream`) the current phase, past its planned
    duration, waits for before it ends; None otherwise.
    """

    t: float
    protocol_name: str
    phases: list[tuple[str, str, float, float]]
    current_phase_index: int
    phase_time_left_s: float
    paused: bool
    straps: list[StrapView]
    markers: list[tuple[float, str]] = field(default_factory=list)
    alerts: tuple[str, ...] = ()
    events: list[SessionEvent] = field(default_factory=list)
    participant_alerts: list[ParticipantAlert] = field(default_factory=list)
    replay: bool = False
    waiting_for_marker: str | None = None


class SessionControls(Protocol):
    """What the experimenter's monitor may ask of the session. Calls return at once; the session records them."""

    def add_marker(self, label: str, note: str, t: float | None = None, participant_id: str | None = None) -> None:
        """A marker at session time `t` (None: now) in one participant's session (None: everyone's); the note
        is private free text."""
        ...

    def pause(self) -> None:
        """The experimenter pauses the whole group (only the experimenter resumes it)."""
        ...

    def resume(self) -> None: ...

    def skip_phase(self) -> None: ...

    def end_session(self) -> None: ...


class ParticipantControls(Protocol):
    """What a participant's display may ask: about this participant only, never the group."""

    def participant_pause(self, participant_id: str | None) -> None: ...

    def participant_resume(self, participant_id: str | None) -> None: ...

    def participant_stop(self, participant_id: str | None) -> None: ...


class ViewSource(Protocol):
    """Snapshots pulled by the displays at their frame rate; must be cheap and must not block."""

    def participant_view(self, participant_id: str | None) -> ParticipantView: ...

    def monitor_view(self) -> MonitorView: ...


SOOTHING_FULL_AT_SD = 2.0
"""Baseline SDs above the participant's baseline mean at which the soothing visual is at its fullest."""


def soothing_level(current: float, baseline_mean: float, baseline_sd: float) -> float:
    """Map a soothing metric (e.g. RMSSD or coherence) to 0..1 relative to the participant's own baseline.

    0 at or below the baseline mean (the neutral look: being below baseline is never shown as worse),
    rising smoothly (smoothstep, no visible jump) to 1 at `SOOTHING_FULL_AT_SD` baseline SDs above it,
    clamped there.
    """
    for name, value in (("current", current), ("baseline_mean", baseline_mean), ("baseline_sd", baseline_sd)):
        if not math.isfinite(value):
            raise ValueError(f"soothing_level: {name} must be finite, got {value!r}")
    if baseline_sd <= 0:
        raise ValueError(f"soothing_level: baseline_sd must be > 0, got {baseline_sd!r}")
    x = min(max((current - baseline_mean) / (baseline_sd * SOOTHING_FULL_AT_SD), 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)
