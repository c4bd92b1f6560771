"""Protocol runner: a pure state machine driven by session-clock times passed in (it never reads a clock).

Every call takes the current time `t` and returns the markers that became due up to and including `t`, each
stamped with its exact time (a phase boundary at 300.0 s is marked 300.0 even if `update` is first called at
300.7). Phase time excludes paused time, so a pause pushes every later boundary and prompt back by its length.
Stopping and skipping are recorded neutrally: a participant who stops early has not failed anything.

A phase whose end is a marker (its `end_on_marker`, or the next phase's `start_on_marker`) runs on past its planned
duration until `on_marker(value, t_marker, t_now)` brings that marker; the boundary is `t_marker` (the marker's
session time, which may lie a little before `t_now`, when it arrived), also when the marker comes before the
planned end. A marker whose time lies before the current phase started, or that is not the current phase's
boundary, changes nothing. Without the marker the phase ends by itself `protocol.marker_timeout_s` after its planned
end (`ended = "marker timeout"`); skipping it (the experimenter) works as for any phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.model import Phase, Protocol

MarkerKind = Literal[
    "session_start", "phase_start", "phase_end", "pause", "resume", "skip", "stop", "session_end", "prompt"
]


@dataclass(frozen=True)
class Marker:
    """An event on the session clock. `phase_index` counts from 0."""

    t: float
    kind: MarkerKind
    phase_index: int | None
    phase_name: str | None
    label: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunnerState:
    """The runner as of the last time it was given."""

    started: bool
    finished: bool
    paused: bool
    phase_index: int | None
    phase: Phase | None
    elapsed_in_phase_s: float
    remaining_in_phase_s: float
    t: float | None
    waiting_for_marker: str | None = None
    """The marker the current phase is waiting for, once past its planned duration (else None)."""


class ProtocolRunner:
    """Steps through a protocol's phases and timed prompts as times are passed in."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self._started = False
        self._finished = False
        self._last_t: float | None = None
        self._index = 0
        self._phase_start = 0.0  # session time the current phase started
        self._paused_in_phase = 0.0  # completed pauses within the current phase
        self._paused_since: float | None = None
        self._next_prompt = 0  # index of the next timed prompt in the current phase
        self._state_cache: RunnerState | None = None

    # ---- time bookkeeping -------------------------------------------------------------------------------

    def _accept_time(self, t: float) -> float:
        self._state_cache = None  # every public call that takes a time may change the state
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"time must be a finite number of seconds, got {t!r}")
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"time went backwards: got {t!r} after {self._last_t!r}")
        self._last_t = t
        return t

    def _require_started(self, action: str) -> None:
        if not self._started:
            raise RuntimeError(f"cannot {action}: the runner has not been started (call start(t) first)")

    @property
    def _phase(self) -> Phase:
        return self.protocol.phases[self._index]

    def _elapsed(self, t: float) -> float:
        now = self._paused_since if self._paused_since is not None else t
        return max(0.0, now - self._phase_start - self._paused_in_phase)

    def _at_phase_time(self, elapsed: float) -> float:
        """Session time at which the (unpaused) current phase reaches `elapsed` seconds."""
        return self._phase_start + self._paused_in_phase + elapsed

    def _marker(self, t: float, kind: MarkerKind, label: str, /, **detail: Any) -> Marker:
        if self._finished or not self._started:
            return Marker(t, kind, None, None, label, detail)
        return Marker(t, kind, self._index, self._phase.name, label, detail)

    # ---- transitions --------------------------------------------------------------------------------------

    def _begin_phase(self, index: int, t: float) -> list[Marker]:
        self._index, self._phase_start, self._paused_in_phase, self._next_prompt = index, t, 0.0, 0
        if self._paused_since is not None:
            self._paused_since = t  # a pause carried over from a skipped phase belongs to this phase from now
        ph = self._phase
        detail: dict[str, Any] = {
            "kind": ph.kind.value, "planned_s": ph.duration_s, "feedback": ph.feedback.value,
            "pacer_bpm": ph.pacer.rate_bpm if ph.pacer else None,
        }  # fmt: skip
        if ph.instrument is not None:
            detail["instrument"] = ph.instrument
        return [self._marker(t, "phase_start", ph.name, **detail), *self._due_prompts(t)]

    def _phase_end_marker(self, t: float, ended: str, **extra: Any) -> Marker:
        ph = self._phase
        paused = self._paused_in_phase + (t - self._paused_since if self._paused_since is not None else 0.0)
        return self._marker(t, "phase_end", ph.name, planned_s=ph.duration_s, elapsed_s=self._elapsed(t),
                            paused_s=paused, ended=ended, **extra)

    def _end_phase(self, t: float, ended: str, **extra: Any) -> list[Marker]:
        out = [self._phase_end_marker(t, ended, **extra)]
        if self._index + 1 < len(self.protocol.phases):
            out += self._begin_phase(self._index + 1, t)
        else:
            self._finished = True
            self._paused_since = None
            out.append(self._marker(t, "session_end", "session ended", ended=ended))
        return out

    def _due_prompts(self, t: float) -> list[Marker]:
        out = []
        prompts = self._phase.prompts
        while self._paused_since is None and self._next_prompt < len(prompts):
            p = prompts[self._next_prompt]
            at = self._at_phase_time(p.at_s)
            if at > t:
                break
            out.append(self._marker(at, "prompt", p.text, at_s=p.at_s, prompt_index=self._next_prompt))
            self._next_prompt += 1
        return out

    def _planned_end(self) -> tuple[float, str, dict[str, Any]]:
        """When the current (unpaused) phase ends by itself, how that is recorded, and the detail."""
        marker = self.protocol.boundary_marker(self._index)
        if marker is None:
            return self._at_phase_time(self._phase.duration_s), "completed", {}
        timeout = self.protocol.marker_timeout_s
        return self._at_phase_time(self._phase.duration_s + timeout), "marker timeout", {"waited_for": marker,
                                                                                        "timeout_s": timeout}

    def _advance(self, t: float) -> list[Marker]:
        out: list[Marker] = []
        while self._started and not self._finished and self._paused_since is None:
            out += self._due_prompts(t)
            end, ended, extra = self._planned_end()
            if end > t:
                break
            out += self._end_phase(end, ended, **extra)
        return out

    # ---- public API ---------------------------------------------------------------------------------------

    def start(self, t: float) -> list[Marker]:
        """Start the session at `t`: session_start, then the first phase (and any prompt at 0 s)."""
        if self._started:
            raise RuntimeError("the runner has already been started")
        t = self._accept_time(t)
        self._started = True
        first = Marker(t, "session_start", None, None, self.protocol.name,
                       {"protocol": self.protocol.name, "version": self.protocol.version,
                        "planned_s": self.protocol.total_duration_s})
        return [first, *self._begin_phase(0, t)]

    def update(self, t: float) -> list[Marker]:
        """Markers due up to `t` (phase boundaries, prompts, session end), each at its exact time."""
        self._require_started("update")
        t = self._accept_time(t)
        return self._advance(t)

    def pause(self, t: float) -> list[Marker]:
        """Pause at `t` (no-op if already paused or finished). Phase time stands still until resume."""
        self._require_started("pause")
        t = self._accept_time(t)
        out = self._advance(t)
        if self._finished or self._paused_since is not None:
            return out
        out.append(self._marker(t, "pause", "paused", elapsed_s=self._elapsed(t)))
        self._paused_since = t
        return out

    def resume(self, t: float) -> list[Marker]:
        """Resume at `t` (no-op if not paused); later boundaries move back by the pause length."""
        self._require_started("resume")
        t = self._accept_time(t)
        if self._finished or self._paused_since is None:
            return self._advance(t)
        paused = t - self._paused_since
        self._paused_in_phase += paused
        self._paused_since = None
        return [self._marker(t, "resume", "resumed", paused_s=paused), *self._advance(t)]

    def skip(self, t: float, reason: str = "") -> list[Marker]:
        """End the current phase at `t` and start the next one (a pause carries over into it).

        A `reason` (e.g. "everyone has answered the diary") is kept in the skip marker's detail.
        """
        self._require_started("skip")
        t = self._accept_time(t)
        out = self._advance(t)
        if self._finished:
            return out
        extra = {"reason": reason} if reason else {}
        out.append(self._marker(t, "skip", "phase skipped", elapsed_s=self._elapsed(t),
                                remaining_s=self._phase.duration_s - self._elapsed(t), **extra))
        out += self._end_phase(t, "skipped")
        return out + self._advance(t)

    def stop(self, t: float, reason: str = "") -> list[Marker]:
        """Stop the session at `t`; recorded neutrally with the optional `reason`."""
        self._require_started("stop")
        t = self._accept_time(t)
        out = self._advance(t)
        if self._finished:
            return out
        out.append(self._marker(t, "stop", f"stopped: {reason}" if reason else "stopped", reason=reason,
                                elapsed_s=self._elapsed(t)))
        out.append(self._phase_end_marker(t, "stopped"))
        self._finished = True
        self._paused_since = None
        out.append(self._marker(t, "session_end", "session ended", ended="stopped", reason=reason))
        return out

    def on_marker(self, value: str, t_marker: float, t_now: float) -> list[Marker]:
        """A marker `value` stamped `t_marker` arrived at `t_now`: if it is the current phase's boundary marker (and
        not from before the phase started), the phase ends at `t_marker` and the next begins there."""
        self._require_started("take a marker")
        t_now = self._accept_time(t_now)
        t_marker = float(t_marker)
        if not math.isfinite(t_marker):
            raise ValueError(f"marker time must be a finite number of seconds, got {t_marker!r}")
        at = min(t_marker, t_now)
        out = self._advance(at)  # whatever was due before the marker (normally already given)
        if (self._finished or at < self._phase_start or self.protocol.boundary_marker(self._index) != value):
            return out + self._advance(t_now)
        out += self._end_phase(at, "marker", marker=value, marker_t=t_marker)
        return out + self._advance(t_now)

    def next_deadline(self) -> float | None:
        """Session time of the next prompt or phase boundary; None if not started, paused or finished."""
        if not self._started or self._finished or self._paused_since is not None:
            return None
        end = self._planned_end()[0]
        prompts = self._phase.prompts
        if self._next_prompt < len(prompts):
            return min(end, self._at_phase_time(prompts[self._next_prompt].at_s))
        return end

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def state(self) -> RunnerState:
        """Where the run is as of the last time passed in (cached until the next call that takes a time)."""
        if self._state_cache is None:
            self._state_cache = self._compute_state()
        return self._state_cache

    def _compute_state(self) -> RunnerState:
        if not self._started or self._finished:
            return RunnerState(self._started, self._finished, False, None, None, 0.0, 0.0, self._last_t)
        assert self._last_t is not None
        elapsed = self._elapsed(self._last_t)
        marker = self.protocol.boundary_marker(self._index)
        waiting = marker if marker is not None and elapsed >= self._phase.duration_s else None
        return RunnerState(True, False, self._paused_since is not None, self._index, self._phase, elapsed,
                           max(0.0, self._phase.duration_s - elapsed), self._last_t, waiting)
