"""The live session: straps → raw store → decoded beats → live metrics → views, on one session clock.

Acquisition and recording run in one asyncio loop. Every notification is stored raw before it is decoded; the store
is committed at least every `flush_interval_s` of real time. The displays (another thread, Qt's loop) *pull* views
through `participant_view()` / `monitor_view()` and send commands through the thread-safe controls; a display that
stalls or crashes cannot lose a stored beat.

A group session is one `LiveSession` with several straps: each strap is bound to one participant and gets its own
stored session (sharing a group id, the protocol and the clock). One strap failing affects only its participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from devices.physiology import PacerSetting

from devices.clock import Clock
from devices.link import PMD_DATA_UUID, LinkEvent, LinkState, Packet, StrapLink
from protocols.model import Protocol
from protocols.pacer import pacer_size
from protocols.runner import Marker, ProtocolRunner
from recordings.decode import SessionDecoder
from recordings.protocol_json import protocol_to_dict
from recordings.store import Store

from .live_metrics import LiveMetrics
from .view_model import ParticipantView, StrapView, soothing_level

ECG_WINDOW_S = 60.0
RR_WINDOW_S = 300.0


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
    gaps: list = field(default_factory=list)  # [t0, t1 | None]
    ecg: deque = field(default_factory=lambda: deque(maxlen=int(ECG_WINDOW_S * 130 / 73) + 4))
    baseline: list = field(default_factory=list)  # coherence values during the baseline phase
    failed: str = ""


class GuideFromRunner:
    """The simulated participant's breathing guide, read from the protocol runner (devices never see protocols)."""

    def __init__(self, session: LiveSession) -> None:
        self._session = session

    def pacer(self, t: float) -> PacerSetting | None:
        phase = self._session.current_phase()
        if phase is None or phase.pacer is None or self._session.runner.state.paused:
            return None
        p = phase.pacer
        return PacerSetting(p.rate_bpm, p.inhale_fraction / (1.0 - p.inhale_fraction))

    def phase_kind(self, t: float) -> str:
        phase = self._session.current_phase()
        return "rest" if phase is None else str(phase.kind.value)


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
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done = asyncio.Event()
        self._end_state = "completed"
        self._stop_requested = False
        group = store.new_group_id() if len(bindings) > 1 else None
        protocol_dict = protocol_to_dict(protocol)
        self.straps: list[_StrapState] = []
        for b in bindings:
            sid = store.create_session(
                b.participant_id,
                protocol.name,
                protocol_dict,
                b.link.device_id,
                group_id=group,
                settings=settings,
            )
            self.straps.append(_StrapState(b, sid, SessionDecoder(store, sid), LiveMetrics()))
        self.markers: list[tuple[float, str]] = []

    @property
    def session_ids(self) -> list[int]:
        return [s.session_id for s in self.straps]

    def current_phase(self):
        st = self.runner.state
        return None if st.finished or st.phase is None else st.phase

    # -- inputs from the straps -------------------------------------------------------------------------------
    def _on_packet(self, strap: _StrapState, packet: Packet) -> None:
        pid = self.store.add_packet(strap.session_id, packet.t, packet.uuid, packet.data, packet.device)
        rows = strap.decoder.packet(pid, packet.t, packet.uuid, packet.data)
        with self._lock:
            m = strap.decoder.last_measurement
            if m is not None:
                strap.contact = m.contact.name.lower()
            for r in rows:
                snap = strap.metrics.add_beat(r.t, r.rr_ms, r.gap_before)
                artifact = bool(snap.last_beat_artifact) if snap is not None else False
                strap.rr.append((r.t, r.rr_ms, artifact))
                phase = self.current_phase()
                if (
                    snap is not None
                    and snap.coherence is not None
                    and phase is not None
                    and self.runner.state.phase_index == self._baseline_index()
                ):
                    strap.baseline.append(snap.coherence)
            if packet.uuid == PMD_DATA_UUID and strap.decoder.counts.ecg_samples:
                chunks = self.store.ecg_chunks_since(strap.session_id, len(strap.ecg))
                strap.ecg.extend(chunks)

    def _on_event(self, strap: _StrapState, event: LinkEvent) -> None:
        self.store.add_link_event(strap.session_id, event.t, event.device, event.state.value, event.reason)
        with self._lock:
            strap.link_state = event.state.value
            if event.state in (LinkState.DISCONNECTED, LinkState.RECONNECTING):
                if event.state is LinkState.DISCONNECTED:
                    strap.decoder.link_gap()
                    strap.gaps.append([event.t, None])
            elif event.state is LinkState.CONNECTED and strap.gaps and strap.gaps[-1][1] is None:
                strap.gaps[-1][1] = event.t

    def _baseline_index(self) -> int | None:
        for i, phase in enumerate(self.protocol.phases):
            if phase.kind.value == "rest":
                return i
        return None

    # -- markers ---------------------------------------------------------------------------------------------
    def _record_markers(self, markers: Sequence[Marker]) -> None:
        for mk in markers:
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
            if self.on_marker is not None:
                self.on_marker(mk)

    # -- controls (thread-safe; called from the displays or the terminal) --------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is not None and self._loop.is_running() and threading.current_thread() is not self._thread:
            self._loop.call_soon_threadsafe(fn)
        else:
            fn()

    def add_marker(self, label: str, note: str = "") -> None:
        def do() -> None:
            t = self.clock.now()
            for strap in self.straps:
                self.store.add_marker(strap.session_id, t, "manual", label or "marker")
                if note:
                    self.store.add_note(strap.session_id, t, note)
            with self._lock:
                self.markers.append((t, label or "marker"))

        self._call(do)

    def pause(self) -> None:
        self._call(lambda: self._record_markers(self.runner.pause(self.clock.now())))

    def resume(self) -> None:
        self._call(lambda: self._record_markers(self.runner.resume(self.clock.now())))

    def skip_phase(self) -> None:
        self._call(lambda: self._record_markers(self.runner.skip(self.clock.now())))

    def end_session(self, reason: str = "ended by the experimenter") -> None:
        def do() -> None:
            if not self.runner.state.finished:
                self._record_markers(self.runner.stop(self.clock.now(), reason))
            self._end_state = "stopped"
            self._done.set()

        self._call(do)

    # -- views pulled by displays ----------------------------------------------------------------------------
    def participant_view(self, participant_id: str | None = None) -> ParticipantView:
        t = self.clock.now()
        strap = self._strap_for(participant_id)
        st = self.runner.state
        phase = self.current_phase()
        with self._lock:
            snap = strap.metrics.snapshot()
            base = list(strap.baseline)
        pacer = None
        label = None
        feedback = "hidden"
        prompt = ""
        if phase is not None:
            feedback = phase.feedback.value
            prompt = st.current_prompt if hasattr(st, "current_prompt") else phase.prompt
            if phase.pacer is not None and not st.paused:
                pacer = pacer_size(
                    st.elapsed_in_phase(t) if callable(st.elapsed_in_phase) else st.elapsed_in_phase,
                    phase.pacer,
                )
        level = None
        if feedback == "live" and snap is not None and snap.coherence is not None and len(base) >= 10:
            level = soothing_level(snap.coherence, float(np.mean(base)), float(np.std(base)) or 0.05)
        return ParticipantView(
            t=t,
            phase_name=phase.name if phase else "",
            phase_kind=phase.kind.value if phase else "",
            prompt=prompt,
            phase_time_left_s=st.time_left,
            pacer_size=pacer,
            pacer_label=label,
            feedback=feedback,
            soothing_level=level,
            paused=st.paused,
            finished=st.finished,
            message="",
        )

    def _strap_for(self, participant_id: str | None) -> _StrapState:
        if participant_id is None:
            return self.straps[0]
        for s in self.straps:
            if s.binding.participant_id == participant_id:
                return s
        raise KeyError(participant_id)

    def strap_views(self) -> list[StrapView]:
        views = []
        with self._lock:
            for s in self.straps:
                snap = s.metrics.snapshot()
                rr = np.array(s.rr, dtype=float).reshape(-1, 3)
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
                        gaps=[(g0, g1) for g0, g1 in s.gaps],
                        ecg_t=np.zeros(0),
                        ecg_uv=np.zeros(0),
                    )
                )
        return views

    # -- main loop -------------------------------------------------------------------------------------------
    async def run(self) -> list[int]:
        """Run the protocol to its end (or until `end_session`), then close every stored session."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.current_thread()
        self._record_markers(self.runner.start(self.clock.now()))
        tasks = [asyncio.create_task(self._run_strap(s), name=f"strap-{s.binding.participant_id}") for s in self.straps]
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._protocol_loop()
        except asyncio.CancelledError:
            self._end_state = "stopped"
            self._record_markers(self.runner.stop(self.clock.now(), "interrupted by the experimenter"))
            raise
        finally:
            for s in self.straps:
                s.binding.link.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5.0)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            for s in self.straps:
                self.store.end_session(s.session_id, self._end_state)
            self.store.flush()
        return self.session_ids

    async def _protocol_loop(self) -> None:
        while not self._done.is_set():
            markers = self.runner.update(self.clock.now())
            self._record_markers(markers)
            if self.runner.state.finished:
                break
            deadline = self.runner.next_deadline()
            wait = 0.25 if deadline is None else min(max(deadline - self.clock.now(), 0.0), 1.0)
            sleeper = asyncio.create_task(self.clock.sleep(wait))
            done_wait = asyncio.create_task(self._done.wait())
            await asyncio.wait({sleeper, done_wait}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            done_wait.cancel()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.store.flush()

    async def _run_strap(self, strap: _StrapState) -> None:
        try:
            await strap.binding.link.run(lambda p: self._on_packet(strap, p), lambda e: self._on_event(strap, e))
        except Exception as exc:  # one strap failing must not end the others' recording
            strap.failed = f"{type(exc).__name__}: {exc}"
            self.store.add_link_event(
                strap.session_id, self.clock.now(), strap.binding.link.device_id, "closed", strap.failed
            )
            with self._lock:
                strap.link_state = "failed"


def wall_clock_speed(clock: Clock) -> float:
    """How many session seconds pass per real second (for progress displays)."""
    return getattr(clock, "speed", 1.0)


def real_time() -> float:
    return time.monotonic()
