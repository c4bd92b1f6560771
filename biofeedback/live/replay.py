"""Replaying a stored session through the live pipeline and displays, without recording a new session.

The stored raw packets and link events feed a `devices.replay.ReplayLink`; the protocol is rebuilt from the copy
stored with the session (`protocol_from_dict`), and the experimenter's stored actions (pause, resume, skip, stop and
manual markers) are repeated at their stored times, so the replay walks through the same phases at the same session
times as the recording; so are phase boundaries that another program's LSL marker set (`ended = "marker"`).
Free-text notes are not replayed (they are sensitive and not needed to watch a session).

Nothing is written to the user's store: the replayed `LiveSession` needs a store of its own (it is the same code as
a live session), so it records into a private temporary store that is deleted when the replay ends. Pass
`record_into` to keep the replay instead (tests do, to compare it with the original).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from biofeedback.live.session import LiveSession, StrapBinding
from devices.clock import Clock, ScaledClock
from devices.link import LinkEvent, LinkState, Packet
from devices.replay import ReplayLink
from recordings.protocol_json import protocol_from_dict
from recordings.store import Store, StoreError

CONTROL_KINDS = ("pause", "resume", "skip", "stop")


@dataclass(frozen=True, slots=True)
class ReplayAction:
    """An experimenter action to repeat at session time `t`: pause, resume, skip, stop, or a manual marker."""

    t: float
    kind: str
    label: str = ""


class ReplaySession(LiveSession):
    """A `LiveSession` that also repeats the recorded experimenter actions at their times."""

    def __init__(self, *args, actions: Sequence[ReplayAction] = (), cleanup: Callable[[], None] | None = None,
                 **kwargs) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.actions = sorted(actions, key=lambda a: a.t)
        self._cleanup = cleanup

    @property
    def link(self) -> ReplayLink:
        return self.straps[0].binding.link  # type: ignore[return-value]

    def _act(self, action: ReplayAction) -> None:
        if action.kind == "pause":
            self.pause()
        elif action.kind == "resume":
            self.resume()
        elif action.kind == "skip":
            self.skip_phase()
        elif action.kind == "stop":
            self.end_session(action.label.removeprefix("stopped: ") or "stopped in the recording")
        elif action.kind == "lsl_marker":
            self.lsl_marker(self.protocol.marker_stream or "", action.label, action.t)
        else:
            self.add_marker(action.label)

    async def _repeat_actions(self) -> None:
        for action in self.actions:
            delay = action.t - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            if self.runner.state.finished:
                return
            self._act(action)

    async def run(self) -> list[int]:
        actor: asyncio.Task | None = None

        async def start_actor() -> None:
            nonlocal actor
            await asyncio.sleep(0)  # after run() has restarted the clock and started the protocol
            actor = asyncio.create_task(self._repeat_actions())

        starter = asyncio.ensure_future(start_actor())
        try:
            return await super().run()
        finally:
            starter.cancel()
            if actor is not None:
                actor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await actor
            if self._cleanup is not None:
                self.store.close()
                self._cleanup()


def stored_actions(store: Store, session_id: int) -> list[ReplayAction]:
    """The experimenter's and participant's recorded actions of a session, in time order."""
    out = []
    for mk in store.markers(session_id):
        if mk.kind in CONTROL_KINDS:
            out.append(ReplayAction(mk.t, mk.kind, mk.label))
        elif mk.kind == "manual":
            out.append(ReplayAction(mk.t, "marker", mk.label))
        elif mk.kind == "phase_end" and mk.detail.get("ended") == "marker":
            out.append(ReplayAction(float(mk.detail.get("marker_t", mk.t)), "lsl_marker", str(mk.detail["marker"])))
    return sorted(out, key=lambda a: a.t)


def build_replay(
    source: Store,
    session_id: int,
    *,
    speed: float = 1.0,
    clock: Clock | None = None,
    record_into: Store | None = None,
) -> ReplaySession:
    """A session replaying stored session `session_id` of `source` (see the module docstring for what is kept)."""
    info = source.session(session_id)
    packets = [Packet(p.t, p.uuid, p.data, p.device) for p in source.packets(session_id)]
    if not packets:
        raise StoreError(f"session {session_id} has no raw packets to replay (imported RR files have none)")
    events = []
    for t, device, state, reason in source.link_events(session_id):
        try:
            events.append(LinkEvent(t, device, LinkState(state), reason))
        except ValueError:  # "failed" and other non-link states are recorded for people, not replayed
            continue
    protocol = protocol_from_dict(source.protocol_dict(session_id))
    clock = clock or ScaledClock(speed)
    link = ReplayLink(packets, clock, device_id=info.device or "replay", events=events)
    cleanup = None
    store = record_into
    if store is None:
        tmp = tempfile.mkdtemp(prefix="cmt-replay-")
        store = Store(Path(tmp) / "replay.sqlite", recover=False)
        cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
    return ReplaySession(
        store,
        protocol,
        [StrapBinding(link, info.participant_id)],
        clock,
        settings={"replay_of": session_id, "speed": speed},
        actions=stored_actions(source, session_id),
        cleanup=cleanup,
    )
