"""The live session: straps → raw store → decoded beats → live metrics → views, on one session clock.

Acquisition and recording run in one asyncio loop. Every notification is stored raw before it is decoded; the store
is committed at least every `flush_interval_s` of real time. The displays (another thread, Qt's loop) *pull* views
through `participant_view()` / `monitor_view()` and send commands through the thread-safe controls; a display that
stalls or crashes cannot lose a stored beat.

A group session is one `LiveSession` with several straps: each strap is bound to one participant and gets its own
stored session (sharing a group id, the protocol and the clock). One strap failing affects only its participant.

A diary phase names an instrument: each participant's view carries its name until they send the form
(`submit_answers`) or set it aside (`skip_diary`). Answers go to the answer store, linked to the participant, their
session and the time point; only a neutral marker ("diary submitted" / "diary skipped") enters the recording, so
no answer ever reaches markers, LSL or exports. Once everyone has responded, the phase ends early.

Nothing stops quietly. Each notification (with what it decodes to) is committed at once, so two recorders and an
import can share one store (see `recordings.store`). When the store cannot be written (full disk, read-only, locked
beyond the retry budget) the whole recording stops at once and every session ends `failed` with the reason; a strap
whose task dies ends `incomplete` with the reason while the others go on. Either way the experimenter is told at once
(`on_alert`, and `MonitorView.alerts`), and `problems()` lists what happened for the command's exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from biofeedback.live.metrics import LiveMetrics
from biofeedback.live.sham import sham_level
from biofeedback.live.view_model import (
    EXPERIMENTER,
    MonitorView,
    ParticipantAlert,
    ParticipantView,
    SessionEvent,
    StrapView,
    soothing_level,
)
from devices.clock import Clock, sleep_unless
from devices.link import LinkEvent, LinkState, Packet, StrapLink
from devices.physiology import PacerSetting
from devices.polar_pmd import EcgFrame
from devices.replay import ReplayLink
from devices.simulator import SimulatedStrap
from protocols.instruments import Instrument, check_answers, get_instrument
from protocols.model import Phase, PhaseKind, Protocol
from protocols.pacer import pacer_phase, pacer_size
from protocols.runner import Marker, ProtocolRunner
from recordings.answers import AnswerStore, TimePointError, parse_time_point
from recordings.decode import ECG_FS_HZ, BeatRow, SessionDecoder, rebuild_beats
from recordings.ecg_time import DeviceClockMap
from recordings.protocol_json import protocol_to_dict
from recordings.store import Store, StoreError, StoreWriteError

log = logging.getLogger(__name__)

ECG_WINDOW_S = 60.0
DRAIN_S = 1.5
"""After the protocol ends, connected straps may deliver this much more (session seconds) before they stop."""
DIARY_SUBMITTED = "diary submitted"
DIARY_SKIPPED = "diary skipped"
DIARY_THANKS = "Thank you. We will go on in a moment."
DIARY_EVERYONE = "everyone has sent or set aside the diary"
PARTICIPANT = "participant"
"""Marker kind of a participant's own pause, continue or stop: stored in their session only, `detail["by"]` says who."""
SELF_PAUSED_MESSAGE = "Paused. Take all the time you need. The experimenter has been let know."
SELF_STOPPED_MESSAGE = (
    "You have stopped, and that is completely fine. The experimenter has been let know and will be with you soon."
)
GROUP_PAUSED_MESSAGE = "The session is paused for a moment. Take all the time you need."


@dataclass
class RunningStats:
    """Count, mean and (population) standard deviation of a stream of numbers, in O(1) memory (Welford)."""

    n: int = 0
    mean: float = 0.0
    _m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(max(self._m2, 0.0) / self.n) if self.n else 0.0


@dataclass
class StrapBinding:
    """A strap and the participant wearing it."""

    link: StrapLink
    participant_id: str


@dataclass
class _StrapState:
    binding: StrapBinding
    session_id: int
    decoder: SessionDecoder
    metrics: LiveMetrics
    link_state: str = LinkState.CONNECTING.value
    contact: str = "unknown"
    rr: deque = field(default_factory=lambda: deque(maxlen=2000))  # (t, rr_ms, artifact)
    gaps: list = field(default_factory=list)  # [t0, t1 | None], only those still inside the `rr` window
    ecg: deque = field(default_factory=lambda: deque(maxlen=int(ECG_WINDOW_S * ECG_FS_HZ / 50) + 4))
    baseline: RunningStats = field(default_factory=RunningStats)  # live coherence during the baseline phase
    failed: str = ""
    """Why this strap's recording stopped before the end (its session ends `incomplete`); empty while it runs."""
    last_packet_t: float = -1.0
    ecg_clock: DeviceClockMap = field(default_factory=DeviceClockMap)
    own_pause: str = ""  # "paused" or "stopped" by the participant themselves, since `own_pause_t`
    own_pause_t: float = 0.0
    contact_gaps: list = field(default_factory=list)  # [t0, t1 | None] while the strap reported no skin contact
    last_beat_t: float | None = None
    battery_pct: int | None = None


NO_CONTACT = "supported not detected"


def _track_contact(strap: _StrapState, t: float) -> None:
    """Open a contact gap when the strap reports no skin contact, close it when contact is back."""
    gaps = strap.contact_gaps
    open_gap = bool(gaps) and gaps[-1][1] is None
    if strap.contact == NO_CONTACT and not open_gap:
        oldest = strap.rr[0][0] if strap.rr else t
        while gaps and gaps[0][1] is not None and gaps[0][1] < oldest:
            gaps.pop(0)  # closed before the oldest beat still shown
        gaps.append([t, None])
    elif strap.contact != NO_CONTACT and open_gap:
        gaps[-1][1] = t



def link_source(link: StrapLink) -> str:
    """The stored source of a session recorded from `link`: `simulated`, `replay-copy` or `live`."""
    if isinstance(link, SimulatedStrap):
        return "simulated"
    return "replay-copy" if isinstance(link, ReplayLink) else "live"

class SessionListener:
    """Receives what the session records, as it is recorded (for example LSL outlets); every method is optional.

    Called in the session's asyncio thread right after the data is stored: a listener must only hand data on
    (never block). A listener that raises is dropped with a logged warning; recording goes on.
    `strap` is the index of the strap in `LiveSession.straps`.
    """

    def session_started(self, session: LiveSession) -> None:
        """The session clock reads 0 now (called before the first marker)."""

    def beats(self, strap: int, rows: Sequence[BeatRow]) -> None:
        """New beats (session-clock times, RR in ms) decoded from one notification."""

    def heart_rate(self, strap: int, t: float, bpm: int, contact: str) -> None:
        """The strap's own heart rate from one notification that arrived at session time `t`."""

    def ecg(self, strap: int, times: np.ndarray, frame: EcgFrame) -> None:
        """One decoded ECG frame (µV) and its samples' session times, mapped from the strap's own clock."""

    def marker(self, marker: Marker) -> None:
        """A protocol marker (phase start/end, prompt, pause ...) or a manual one (kind `manual`)."""

    def session_ended(self) -> None:
        """The session is over and stored."""


class GuideFromRunner:
    """The simulated participant's breathing guide, read from the protocol runner (devices never see protocols)."""

    def __init__(self, session: LiveSession) -> None:
        self._session = session

    def pacer(self, t: float) -> PacerSetting | None:
        st = self._session.runner.state
        if st.phase is None or st.phase.pacer is None or st.paused:
            return None
        p = st.phase.pacer
        return PacerSetting(p.rate_bpm, p.inhale_fraction / (1.0 - p.inhale_fraction))

    def phase_kind(self, t: float) -> str:
        phase = self._session.runner.state.phase
        return "rest" if phase is None else phase.kind.value


class LiveSession:
    """Runs one protocol on one clock with one or more straps, recording everything into `store`."""

    def __init__(
        self,
        store: Store,
        protocol: Protocol,
        bindings: Sequence[StrapBinding],
        clock: Clock,
        *,
        flush_interval_s: float = 0.25,
        settings: dict | None = None,
        on_marker: Callable[[Marker], None] | None = None,
        listeners: Sequence[SessionListener] = (),
        on_alert: Callable[[str], None] | None = None,
    ) -> None:
        if not bindings:
            raise ValueError("a session needs at least one strap")
        ids = [b.participant_id for b in bindings]
        if len(set(ids)) != len(ids):
            raise ValueError(f"each strap needs its own participant; got {ids}")
        self.store = store
        self.protocol = protocol
        self.clock = clock
        self.runner = ProtocolRunner(protocol)
        self.flush_interval_s = flush_interval_s
        self.on_marker = on_marker
        self.on_alert = on_alert
        """Called (in the session's thread) with one line as soon as a strap or the store stops recording."""
        self.alerts: list[str] = []
        self.failure = ""
        """Why the whole recording stopped early (the store could not be written); empty if it did not."""
        self._ended_states: dict[int, tuple[str, str | None]] = {}
        self.listeners: list[SessionListener] = list(listeners)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: asyncio.Event | None = None
        self._end_state = "completed"
        self.markers: list[tuple[float, str]] = []
        self.events: list[SessionEvent] = []
        self._prompt = ""
        self._phase_starts: dict[int, float] = {}
        self._phase_ends: dict[int, float] = {}
        self._baseline_index = next((i for i, ph in enumerate(protocol.phases) if ph.kind.value == "rest"), None)
        self.settings = dict(settings or {})
        # diary phases: their instruments (loaded now, so a broken file fails before anyone is recorded) and who
        # has responded in each ({phase index: {participant: DIARY_SUBMITTED | DIARY_SKIPPED}})
        self._instruments: dict[int, Instrument] = {
            i: get_instrument(ph.instrument)
            for i, ph in enumerate(protocol.phases)
            if ph.kind is PhaseKind.DIARY and ph.instrument is not None
        }
        self._diary_done: dict[int, dict[str, str]] = {}
        self._answers: AnswerStore | None = None
        group = store.new_group_id() if len(bindings) > 1 else None
        protocol_dict = protocol_to_dict(protocol)
        self.straps: list[_StrapState] = []
        for b in bindings:
            sid = store.create_session(
                b.participant_id, protocol.name, protocol_dict, b.link.device_id, group_id=group, settings=settings,
                source=link_source(b.link),
            )
            self.straps.append(_StrapState(b, sid, SessionDecoder(store, sid), LiveMetrics()))

    @property
    def session_ids(self) -> list[int]:
        return [s.session_id for s in self.straps]

    def current_phase(self) -> Phase | None:
        return self.runner.state.phase

    def add_listener(self, listener: SessionListener) -> None:
        """Register a listener before `run()` (see `SessionListener`)."""
        self.listeners.append(listener)

    def _notify(self, method: str, *args: object) -> None:
        for listener in list(self.listeners):
            try:
                getattr(listener, method)(*args)
            except Exception as exc:  # a listener must never cost a stored beat
                self.listeners.remove(listener)
                log.warning("listener %s dropped after %s: %s", type(listener).__name__, type(exc).__name__, exc)

    # -- inputs from the straps -------------------------------------------------------------------------------
    def _on_packet(self, strap: _StrapState, packet: Packet) -> None:
        if self.failure:
            return
        try:
            self._record_packet(strap, packet)
        except StoreWriteError as exc:  # never raised into the link (bleak would only log it)
            self._store_failed(exc)

    def _record_packet(self, strap: _StrapState, packet: Packet) -> None:
        pid = self.store.add_packet(strap.session_id, packet.t, packet.uuid, packet.data, packet.device)
        strap.last_packet_t = packet.t
        before = strap.decoder.last_measurement
        try:
            rows = strap.decoder.packet(pid, packet.t, packet.uuid, packet.data)
        except StoreError:
            raise
        except Exception as exc:  # a decoder bug must not stop the strap: the raw packet is kept, the error noted
            self.store.add_packet_error(strap.session_id, pid, f"decoder failed: {type(exc).__name__}: {exc}")
            strap.decoder.link_gap()
            rows = []
        self.store.flush()  # one short transaction per notification: other writers wait microseconds, not seconds
        with self._lock:
            m = strap.decoder.last_measurement
            if m is not None:
                strap.contact = m.contact.name.lower().replace("_", " ")
                _track_contact(strap, packet.t)
            if rows:
                strap.last_beat_t = rows[-1].t
            strap.battery_pct = strap.decoder.battery_pct
            in_baseline = self.runner.state.phase_index == self._baseline_index
            for r in rows:
                snap = strap.metrics.add_beat(r.t, r.rr_ms, r.gap_before)
                strap.rr.append((r.t, r.rr_ms, bool(snap is not None and snap.last_beat_artifact)))
                if in_baseline and snap is not None and snap.coherence is not None:
                    strap.baseline.add(snap.coherence)
            frame = strap.decoder.take_ecg_frame()
            ecg_times = None
            if frame is not None:  # sample times from the strap's own clock, so delivery jitter stays out
                ecg_times = strap.ecg_clock.sample_times(packet.t, frame.timestamp_ns, len(frame.samples_uv))
                strap.ecg.append((ecg_times, frame.samples_uv))
        if self.listeners:
            index = self.straps.index(strap)
            if rows:
                self._notify("beats", index, rows)
            if m is not None and m is not before:
                self._notify("heart_rate", index, packet.t, m.heart_rate_bpm, strap.contact)
            if frame is not None:
                self._notify("ecg", index, ecg_times, frame)

    def _on_event(self, strap: _StrapState, event: LinkEvent) -> None:
        if not self.failure:
            try:
                self.store.add_link_event(strap.session_id, event.t, event.device, event.state.value, event.reason)
                self.store.flush()
            except StoreWriteError as exc:
                self._store_failed(exc)
        with self._lock:
            strap.link_state = event.state.value
            if event.state is LinkState.DISCONNECTED:
                strap.decoder.link_gap()
                oldest = strap.rr[0][0] if strap.rr else event.t
                while strap.gaps and strap.gaps[0][1] is not None and strap.gaps[0][1] < oldest:
                    strap.gaps.pop(0)  # closed before the oldest beat still shown
                strap.gaps.append([event.t, None])
            elif event.state is LinkState.CONNECTED and strap.gaps and strap.gaps[-1][1] is None:
                strap.gaps[-1][1] = event.t

    # -- markers ---------------------------------------------------------------------------------------------
    def _record_markers(self, markers: Sequence[Marker], by: str = "") -> None:
        """Store protocol markers in every participant's session; `by` (the experimenter) for their actions."""
        for mk in markers:
            if by and mk.kind in ("pause", "resume", "skip", "stop"):
                mk = Marker(mk.t, mk.kind, mk.phase_index, mk.phase_name, mk.label, {**mk.detail, "by": by})
            for strap in self.straps:
                self.store.add_marker(
                    strap.session_id,
                    mk.t,
                    mk.kind,
                    mk.label,
                    phase_index=mk.phase_index,
                    phase_name=mk.phase_name,
                    detail=dict(mk.detail),
                )
            with self._lock:
                self.markers.append((mk.t, mk.label))
                self.events.append(SessionEvent(mk.t, mk.kind, mk.label, by=str(mk.detail.get("by", ""))))
                if mk.kind == "phase_start":
                    self._phase_starts[mk.phase_index] = mk.t
                    self._prompt = self.protocol.phases[mk.phase_index].prompt
                    for strap in self.straps:
                        strap.metrics.set_pacer(mk.detail.get("pacer_bpm"))
                elif mk.kind == "phase_end":
                    self._phase_ends[mk.phase_index] = mk.t
                elif mk.kind == "prompt":
                    self._prompt = mk.label
            if mk.kind == "phase_end" and mk.detail.get("ended") == "marker timeout":
                self._alert(f"phase {mk.phase_name!r} ended without its marker {mk.detail.get('waited_for')!r}, "
                            f"{mk.detail.get('timeout_s'):g} s after its planned end")  # fmt: skip
            if self.on_marker is not None:
                self.on_marker(mk)
            self._notify("marker", mk)
        self.store.flush()

    # -- controls (thread-safe; called from the displays or the terminal) --------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                fn()
            except StoreWriteError as exc:
                self._store_failed(exc)

        loop = self._loop
        if loop is not None and loop.is_running() and threading.current_thread() is not self._thread:
            loop.call_soon_threadsafe(guarded)
        else:
            guarded()

    def add_marker(self, label: str, note: str = "", t: float | None = None, participant_id: str | None = None) -> None:
        """A manual marker at session time `t` (default: now) in `participant_id`'s session only (None: in
        everyone's); the note is stored beside it as private free text, in the same sessions only."""
        targets = self.straps if participant_id is None else [self._strap_for(participant_id)]
        label = label or "marker"
        target = "group" if participant_id is None else targets[0].binding.participant_id

        def do() -> None:
            now = self.clock.now()
            at = now if t is None else min(t, now)
            for strap in targets:
                self.store.add_marker(strap.session_id, at, "manual", label, detail={"by": EXPERIMENTER,
                                                                                     "target": target})
                if note:
                    self.store.add_note(strap.session_id, at, note)
            self.store.flush()
            pids = () if participant_id is None else (target,)
            with self._lock:
                self.markers.append((at, label if participant_id is None else f"{label} ({target})"))
                self.events.append(SessionEvent(at, "manual", label, pids, EXPERIMENTER))
            detail = {"by": EXPERIMENTER, "target": target}
            self._notify("marker", Marker(at, "manual", None, None, label, detail))  # type: ignore[arg-type]

        self._call(do)

    def lsl_marker(self, stream: str, value: str, t: float) -> None:
        """A marker `value` at session time `t` on LSL stream `stream` (from `LslInlets`): when it is the protocol's
        `marker_stream`, it may start or end a phase (`ProtocolRunner.on_marker`)."""
        if stream != self.protocol.marker_stream:
            return

        def do() -> None:
            if self.runner.state.started and not self.runner.state.finished:
                self._record_markers(self.runner.on_marker(value, t, self.clock.now()))

        self._call(do)

    def pause(self) -> None:
        """The experimenter pauses the whole group (recorded in every session, by the experimenter)."""
        self._call(lambda: self._record_markers(self.runner.pause(self.clock.now()), by=EXPERIMENTER))

    def resume(self) -> None:
        """The experimenter resumes the group; a participant's own pause stays until they continue."""
        self._call(lambda: self._record_markers(self.runner.resume(self.clock.now()), by=EXPERIMENTER))

    def skip_phase(self) -> None:
        self._call(lambda: self._record_markers(self.runner.skip(self.clock.now()), by=EXPERIMENTER))

    # -- a participant's own controls (thread-safe; their display only, recorded in their session only) ---------
    def participant_pause(self, participant_id: str | None) -> None:
        """This participant pauses their own display; the others and the protocol clock go on."""
        self._participant_action(participant_id, "paused")

    def participant_resume(self, participant_id: str | None) -> None:
        """This participant continues after their own pause or stop (an experimenter's pause stays)."""
        self._participant_action(participant_id, "continued")

    def participant_stop(self, participant_id: str | None) -> None:
        """This participant stops: their display pauses and the experimenter is alerted; the session goes on."""
        self._participant_action(participant_id, "stopped")

    def _participant_action(self, participant_id: str | None, action: str) -> None:
        strap = self._strap_for(participant_id)
        pid = strap.binding.participant_id

        def do() -> None:
            if self.runner.state.finished:
                return
            with self._lock:
                before = strap.own_pause
                unchanged = not before if action == "continued" else before in (action, "stopped")
                if unchanged:
                    return  # nothing changes (already paused, already stopped): nothing to record
                t = self.clock.now()
                strap.own_pause = "" if action == "continued" else action
                strap.own_pause_t = t
                self.events.append(SessionEvent(t, PARTICIPANT, action, (pid,), pid))
            st = self.runner.state
            self.store.add_marker(strap.session_id, t, PARTICIPANT, action, phase_index=st.phase_index,
                                  phase_name=None if st.phase is None else st.phase.name, detail={"by": pid})
            if action != "continued":
                log.warning("%s %s their display at %.1f s", pid, action, t)
            self._notify("marker", Marker(t, PARTICIPANT, st.phase_index, None, action, {"by": pid}))  # type: ignore[arg-type]

        self._call(do)

    @property
    def replay(self) -> bool:
        """True when this session replays a stored one (the displays then record nothing)."""
        return "replay_of" in self.settings

    def end_session(self, reason: str = "ended by the experimenter") -> None:
        def do() -> None:
            if not self.runner.state.finished:
                self._record_markers(self.runner.stop(self.clock.now(), reason), by=EXPERIMENTER)
                self._end_state = "stopped"
            if self._done is not None:
                self._done.set()

        self._call(do)

    # -- diary phases (thread-safe; called from the participant's form) -----------------------------------------
    def instrument(self, name: str) -> Instrument:
        """The instrument a diary phase of this protocol asks (by the name a `ParticipantView` carries)."""
        for inst in self._instruments.values():
            if inst.name == name:
                return inst
        raise KeyError(f"protocol {self.protocol.name!r} asks no instrument {name!r}")

    def diary_time_point(self, participant_id: str) -> str:
        """Where answers given in this session belong: "week N" from the `week` setting, else the start date."""
        strap = self._strap_for(participant_id)
        week = self.settings.get("week")
        if week is None:
            week = self.store.session(strap.session_id).week  # the participant's next week, given by the store
        if week is not None:
            try:
                return parse_time_point(week)[0]
            except TimePointError:
                log.warning("session setting week=%r is not a study week; using the session date", week)
        return f"session {self.store.session(strap.session_id).started_utc[:10]}"

    def _open_diary(self, participant_id: str) -> tuple[int, Instrument]:
        """The latest diary phase started so far, if this participant has not yet responded to it."""
        current = self.runner.state.phase_index
        with self._lock:
            started = set(self._phase_starts) | ({current} if current is not None else set())
            started = sorted((i for i in started if i in self._instruments), reverse=True)
            if not started:
                raise RuntimeError("no diary phase has started: enter answers afterwards with `diary add --session`")
            index = started[0]
            done = self._diary_done.setdefault(index, {})
            if participant_id in done:
                raise RuntimeError(f"{participant_id} has already responded to the diary ({done[participant_id]})")
        return index, self._instruments[index]

    def submit_answers(
        self, participant_id: str, values: Mapping[str, float | None], texts: Mapping[str, str] | None = None
    ) -> Future[int]:
        """Store a participant's answers to the running diary phase's instrument; returns the answer set id.

        The answers are checked at once (AnswerError, nothing recorded); storing happens in the session's thread,
        and the returned future holds the answer set id or the storing error. Free text goes only to the answer
        store. When every participant has responded, the phase ends early.
        """
        strap = self._strap_for(participant_id)
        index, inst = self._open_diary(participant_id)
        check_answers(inst, values, texts)
        values, texts = dict(values), dict(texts or {})
        with self._lock:
            if participant_id in self._diary_done[index]:
                raise RuntimeError(f"{participant_id} has already responded to the diary")
            self._diary_done[index][participant_id] = DIARY_SUBMITTED
        future: Future[int] = Future()

        def do() -> None:
            try:
                set_id, label = self._store_answers(strap, inst, values, texts)
            except Exception as exc:  # kept in the future for the caller; the session goes on
                log.error("diary answers of %s could not be stored: %s", participant_id, exc)
                future.set_exception(exc)
                self._diary_marker(strap, index, DIARY_SUBMITTED, instrument=inst.name, stored=False)
            else:
                future.set_result(set_id)
                self._diary_marker(strap, index, DIARY_SUBMITTED, instrument=inst.name, time_point=label,
                                   answer_set=set_id)  # fmt: skip
            self._end_diary_if_all_responded(index)

        self._call(do)
        return future

    def skip_diary(self, participant_id: str) -> None:
        """The participant set the form aside ("Not now"): recorded neutrally; answers can be entered later."""
        strap = self._strap_for(participant_id)
        index, inst = self._open_diary(participant_id)
        with self._lock:
            self._diary_done[index].setdefault(participant_id, DIARY_SKIPPED)

        def do() -> None:
            self._diary_marker(strap, index, DIARY_SKIPPED, instrument=inst.name)
            self._end_diary_if_all_responded(index)

        self._call(do)

    def _store_answers(self, strap: _StrapState, inst: Instrument, values: dict, texts: dict) -> tuple[int, str]:
        if self._answers is None:
            self._answers = AnswerStore(self.store)
        pid = strap.binding.participant_id
        label = self.diary_time_point(pid)
        if self._answers.find_one(pid, inst.name, label) is not None:
            taken = label
            label = f"session {strap.session_id}"  # never lose answers: keep them under this session instead
            log.warning("%s already has %s answers for %s; these are stored for %s", pid, inst.name, taken, label)
        set_id = self._answers.add(inst, pid, label, values, texts, session_id=strap.session_id, by=pid,
                                   source="form")  # fmt: skip
        return set_id, label

    def _diary_marker(self, strap: _StrapState, index: int, label: str, **detail: object) -> None:
        """A neutral marker in this participant's own recording (never any answer or free text)."""
        t = self.clock.now()
        name = self.protocol.phases[index].name
        self.store.add_marker(strap.session_id, t, "diary", label, phase_index=index, phase_name=name,
                              detail=dict(detail))  # fmt: skip
        self.store.flush()
        pid = strap.binding.participant_id
        with self._lock:
            self.markers.append((t, f"{label} ({pid})" if len(self.straps) > 1 else label))
            self.events.append(SessionEvent(t, "diary", label, (pid,), pid))
        self._notify("marker", Marker(t, "diary", index, name, label, {"participant_id": pid}))  # type: ignore[arg-type]

    def _end_diary_if_all_responded(self, index: int) -> None:
        everyone = {s.binding.participant_id for s in self.straps}
        with self._lock:
            all_done = everyone <= set(self._diary_done.get(index, {}))
        st = self.runner.state
        if all_done and not st.finished and st.phase_index == index:
            self._record_markers(self.runner.skip(self.clock.now(), reason=DIARY_EVERYONE))

    # -- views pulled by displays ----------------------------------------------------------------------------
    def _position(self, t: float) -> tuple[float, float]:
        """(seconds into the current phase, seconds left) at session time `t`, pauses respected."""
        st = self.runner.state
        if st.phase is None:
            return 0.0, 0.0
        elapsed = st.elapsed_in_phase_s + (0.0 if st.paused or st.t is None else max(0.0, t - st.t))
        elapsed = min(elapsed, st.phase.duration_s)
        return elapsed, st.phase.duration_s - elapsed

    def phase_position(self, t: float) -> tuple[float, float]:
        """(seconds into the current phase, seconds left) at session time `t`, pauses respected (public)."""
        return self._position(t)

    def participant_view(self, participant_id: str | None = None) -> ParticipantView:
        """What the participant's screen shows now (pacer from the session clock, so exact after a stall)."""
        t = self.clock.now()
        strap = self._strap_for(participant_id)
        st = self.runner.state
        phase = st.phase
        if phase is None:
            message = "Thank you. The session has ended." if st.finished else "We will begin shortly."
            return ParticipantView(t, "", "", "", 0.0, finished=st.finished, message=message, replay=self.replay)
        elapsed, left = self._position(t)
        size = label = None
        if phase.pacer is not None and not st.paused:
            size = pacer_size(elapsed, phase.pacer)
            label = "breathe in" if pacer_phase(elapsed, phase.pacer)[1] == "inhale" else "breathe out"
        feedback = phase.feedback.value
        level = None
        if feedback == "live":
            with self._lock:
                snap = strap.metrics.snapshot()
                n, mean, sd = strap.baseline.n, strap.baseline.mean, strap.baseline.std
            if snap is not None and snap.coherence is not None and n >= 10:
                level = soothing_level(snap.coherence, mean, max(sd, 0.05))
        elif feedback == "sham":
            level = sham_level(t, seed=strap.session_id)
        instrument = message = None
        inst = self._instruments.get(st.phase_index) if st.phase_index is not None else None
        if inst is not None:
            with self._lock:
                responded = strap.binding.participant_id in self._diary_done.get(st.phase_index, {})
            instrument, message = (None, DIARY_THANKS) if responded else (inst.name, None)
        own = strap.own_pause
        if own:
            size = label = None
            message = SELF_STOPPED_MESSAGE if own == "stopped" else SELF_PAUSED_MESSAGE
        elif st.paused:
            message = GROUP_PAUSED_MESSAGE
        return ParticipantView(
            t=t,
            phase_name=phase.name,
            phase_kind=phase.kind.value,
            prompt=self._prompt,
            phase_time_left_s=left,
            pacer_size=size,
            pacer_label=label,
            feedback=feedback,
            soothing_level=level,
            paused=st.paused or bool(own),
            finished=False,
            message=message or "",
            instrument=instrument,
            self_paused=bool(own),
            replay=self.replay,
        )

    def _strap_for(self, participant_id: str | None) -> _StrapState:
        if participant_id is None:
            return self.straps[0]
        for s in self.straps:
            if s.binding.participant_id == participant_id:
                return s
        raise KeyError(f"no strap bound to participant {participant_id!r}")

    def strap_views(self) -> list[StrapView]:
        views = []
        t = self.clock.now()
        with self._lock:
            for s in self.straps:
                snap = s.metrics.snapshot()
                rr = np.array(s.rr, dtype=float).reshape(-1, 3)
                recent = [(et, ev) for et, ev in s.ecg if et[-1] >= t - ECG_WINDOW_S]
                views.append(
                    StrapView(
                        device_id=s.binding.link.device_id,
                        participant_id=s.binding.participant_id,
                        link_state=s.link_state,
                        contact=s.contact,
                        hr_bpm=None if snap is None else snap.hr_bpm,
                        rmssd_ms=None if snap is None else snap.rmssd_ms,
                        coherence=None if snap is None else snap.coherence,
                        artifacts=0 if snap is None else snap.artifacts_total,
                        rr_t=rr[:, 0],
                        rr_ms=rr[:, 1],
                        rr_corrected=rr[:, 2].astype(bool),
                        gaps=[(g0, t if g1 is None else g1) for g0, g1 in s.gaps],
                        contact_gaps=[(g0, max(g0, t) if g1 is None else g1) for g0, g1 in s.contact_gaps],
                        last_beat_t=s.last_beat_t,
                        battery_pct=s.battery_pct,
                        ecg_t=np.concatenate([et for et, _ in recent]) if recent else np.zeros(0),
                        ecg_uv=np.concatenate([ev for _, ev in recent]).astype(float) if recent else np.zeros(0),
                    )
                )
        return views

    def monitor_view(self) -> MonitorView:
        """The experimenter's view: every strap, the protocol timeline (actual so far, planned after), markers."""
        t = self.clock.now()
        st = self.runner.state
        _elapsed, left = self._position(t)
        with self._lock:
            markers = list(self.markers)
            alerts = tuple(self.alerts)
            events = list(self.events)
            starts = dict(self._phase_starts)
            ends = dict(self._phase_ends)
            participant_alerts = [ParticipantAlert(s.binding.participant_id, s.own_pause, s.own_pause_t)  # type: ignore[arg-type]
                      for s in self.straps if s.own_pause and not st.finished]
        phases = []
        cursor = 0.0
        for i, ph in enumerate(self.protocol.phases):
            start = starts.get(i, cursor)
            end = t + left if i == st.phase_index else ends.get(i, start + ph.duration_s)
            phases.append((ph.name, ph.kind.value, start, end))
            cursor = end
        current = len(phases) if st.finished else (-1 if st.phase_index is None else st.phase_index)
        return MonitorView(
            t=t,
            protocol_name=self.protocol.name,
            phases=phases,
            current_phase_index=current,
            phase_time_left_s=left,
            paused=st.paused,
            straps=self.strap_views(),
            markers=markers,
            events=events,
            alerts=alerts,
            participant_alerts=participant_alerts,
            replay=self.replay,
            waiting_for_marker=st.waiting_for_marker,
        )

    # -- main loop -------------------------------------------------------------------------------------------
    async def run(self) -> list[int]:
        """Run the protocol to its end (or until `end_session`), then close every stored session.

        The store is claimed (`Store.in_use`) until every session is closed, so it cannot be closed under it.
        """
        with self.store.in_use(f"the session recording {', '.join(map(str, self.session_ids))}"):
            return await self._run()

    async def _run(self) -> list[int]:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.current_thread()
        self._done = asyncio.Event()
        self.clock.restart()  # 0 on the session clock is the moment the session starts
        self._notify("session_started", self)
        try:
            self._record_markers(self.runner.start(self.clock.now()))
        except StoreWriteError as exc:
            self._store_failed(exc)
        tasks = [
            asyncio.create_task(self._run_strap(s), name=f"strap-{s.binding.participant_id}") for s in self.straps
        ]
        flusher = asyncio.create_task(self._flush_loop())
        try:
            try:
                await self._protocol_loop()
                if not self.failure:
                    await self._drain(self.clock.now() + DRAIN_S)
            except StoreWriteError as exc:
                self._store_failed(exc)
        except asyncio.CancelledError:
            self._end_state = "stopped"
            if not self.runner.state.finished and not self.failure:
                with contextlib.suppress(StoreWriteError):
                    self._record_markers(self.runner.stop(self.clock.now(), "interrupted from the keyboard"))
            raise
        finally:
            for s in self.straps:
                s.binding.link.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5.0)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            self._close_sessions()
            self._notify("session_ended")
        return self.session_ids

    def _close_sessions(self) -> None:
        """Give every stored session its final state and reason (as far as the store still takes writes).

        First the live beat times are refitted over the whole recording from the raw layer (the design map).
        """
        for s in self.straps:
            if not self.failure:
                try:
                    rebuild_beats(self.store, s.session_id)
                except StoreWriteError as exc:
                    self._store_failed(exc)
        for s in self.straps:
            if self.failure:
                state, reason = "failed", self.failure
            elif s.failed:
                state, reason = "incomplete", s.failed
            else:
                state, reason = self._end_state, None
            self._ended_states[s.session_id] = (state, reason)
            try:
                self.store.end_session(s.session_id, state, reason)
            except StoreWriteError as exc:
                if not self.failure:
                    self._store_failed(exc)
                    state, reason = "failed", self.failure
                    self._ended_states[s.session_id] = (state, reason)
                with contextlib.suppress(StoreWriteError):  # else it shows as interrupted when next opened
                    self.store.set_state(s.session_id, state)
        with contextlib.suppress(StoreWriteError):
            self.store.flush()

    def problems(self) -> list[str]:
        """One line per stored session that did not end as planned (empty after a clean run)."""
        out = []
        for s in self.straps:
            state, reason = self._ended_states.get(s.session_id, (None, None))
            if state in ("failed", "incomplete"):
                out.append(f"session {s.session_id} ({s.binding.participant_id}) {state}: {reason}")
        return out

    def _alert(self, line: str) -> None:
        with self._lock:
            self.alerts.append(line)
        if self.on_alert is not None:
            try:
                self.on_alert(line)
            except Exception:  # the alert hook must not hide the alert
                log.exception("alert hook failed")
        else:
            log.error("%s", line)

    def _kept(self) -> str:
        """What the store holds of each strap (read only: works on a full disk)."""
        parts = []
        for s in self.straps:
            try:
                c = self.store.counts(s.session_id)
            except StoreError:
                return "what was committed before stays in the store"
            parts.append(f"{s.binding.participant_id}: {c['packets']} packets, {c['beats']} beats")
        return f"kept up to t={self.clock.now():.0f} s ({'; '.join(parts)})"

    def _store_failed(self, exc: StoreError) -> None:
        """The store cannot be written: stop every strap at once and end the recording as `failed`."""
        if self.failure:
            return
        self.failure = str(exc)
        for s in self.straps:
            s.binding.link.stop()
            with self._lock:
                s.link_state = "failed"
        if self._done is not None:
            self._done.set()
        self._alert(f"recording stopped: {exc}; {self._kept()}")

    async def _protocol_loop(self) -> None:
        assert self._done is not None
        while not self._done.is_set():
            self._record_markers(self.runner.update(self.clock.now()))
            if self.runner.state.finished:
                break
            deadline = self.runner.next_deadline()
            wait = 1.0 if deadline is None else min(max(deadline - self.clock.now(), 0.0), 1.0)
            await sleep_unless(self.clock, wait, self._done)

    async def _drain(self, until: float, timeout_s: float = 3.0) -> None:
        """Let connected straps deliver the beats of the last seconds (their notifications lag the beats)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            waiting = [
                s for s in self.straps if s.link_state == LinkState.CONNECTED.value and s.last_packet_t < until
            ]
            if not waiting:
                return
            await asyncio.sleep(0.01)

    async def _flush_loop(self) -> None:
        while not self.failure:
            await asyncio.sleep(self.flush_interval_s)
            try:
                self.store.flush()
            except StoreWriteError as exc:
                self._store_failed(exc)

    async def _run_strap(self, strap: _StrapState) -> None:
        try:
            await strap.binding.link.run(lambda p: self._on_packet(strap, p), lambda e: self._on_event(strap, e))
        except StoreWriteError as exc:
            self._store_failed(exc)
        except Exception as exc:  # one strap failing must not end the others' recording
            strap.failed = f"{type(exc).__name__}: {exc}"
            with self._lock:
                strap.link_state = "failed"
            self._alert(f"{strap.binding.participant_id}: strap {strap.binding.link.device_id} stopped recording at "
                        f"t={self.clock.now():.0f} s ({strap.failed}); the others go on")  # fmt: skip
            try:
                self.store.add_link_event(
                    strap.session_id, self.clock.now(), strap.binding.link.device_id, "closed", strap.failed
                )
                self.store.flush()
            except StoreWriteError as store_exc:
                self._store_failed(store_exc)
