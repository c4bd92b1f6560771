"""Readiness before the clock starts: every strap connected, skin contact detected and beats arriving for a while.

`wait_until_ready` runs the straps' links on their own (nothing is stored: no session exists yet) and returns once
every strap has delivered beats without a break for `READY_BEATS_S`, or raises `NotReadyError` at the timeout with
each strap that was not ready and why (its link state and the link's last reason, no skin contact, no beats). The
session then starts with links of its own, so the clock starts at 0 with everyone ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from biofeedback.live.session import StrapBinding
from devices.clock import Clock
from devices.errors import DecodeError
from devices.heart_rate import SensorContact, decode_heart_rate
from devices.link import HEART_RATE_MEASUREMENT_UUID, LinkEvent, LinkState, Packet

READY_BEATS_S = 10.0
"""Beats must arrive without a break (no gap, skin contact throughout) for this long before a strap is ready."""
BEAT_BREAK_S = 5.0
"""No notification with beats for longer than this breaks the run of beats. Over BLE a notification can arrive
late, held back with the next, or after a skipped tick (2–3 s without beats is normal); one late delivery is not a
gap in the recording either (`recordings.beat_timeline`)."""
CHECK_EVERY_S = 0.25


@dataclass
class StrapReadiness:
    """What one strap has shown so far while waiting (session-clock seconds of the waiting clock)."""

    participant_id: str
    device_id: str
    link_state: str = LinkState.CONNECTING.value
    reason: str = ""
    contact: str = "unknown"
    beats_since: float | None = None
    last_beat_t: float | None = None

    def ready(self, now: float, need_s: float = READY_BEATS_S) -> bool:
        return self.status(now, need_s) == "ready"

    def status(self, now: float, need_s: float = READY_BEATS_S) -> str:
        """"ready", or in words why not yet."""
        if self.link_state != LinkState.CONNECTED.value:
            state = {"connecting": "not connected yet", "reconnecting": "not connected (retrying)",
                     "disconnected": "link lost", "closed": "link closed", "failed": "strap failed"}.get(
                self.link_state, self.link_state)  # fmt: skip
            return f"{state}: {explain(self.reason)}" if self.reason else state
        if self.contact == SensorContact.SUPPORTED_NOT_DETECTED.value:
            return "connected, but no skin contact (moisten the electrodes, check the strap sits snugly)"
        if self.beats_since is None or self.last_beat_t is None or now - self.last_beat_t > BEAT_BREAK_S:
            return "connected, but no beats arriving"
        steady = self.last_beat_t - self.beats_since
        if steady < need_s:
            return f"beats arriving for {steady:.0f} of {need_s:.0f} s"
        return "ready"


HINTS = {
    "FileNotFoundError": "no Bluetooth service to talk to (Linux: is the bluetooth service running? "
                         "`systemctl status bluetooth`)",
    "BleakBluetoothNotAvailableError": "Bluetooth is off or there is no adapter",
    "BleakDeviceNotFoundError": "strap not found: is it worn (straps sleep without skin contact) and in range?",
}  # fmt: skip


def explain(reason: str) -> str:
    """A link's last reason without its retry countdown, with a hint in words for the causes we know."""
    reason = reason.split("; retrying in")[0]
    hint = next((h for name, h in HINTS.items() if name in reason), "")
    return f"{hint} ({reason})" if hint else reason


class NotReadyError(RuntimeError):
    """Some strap was not ready by the timeout; `straps` says which and why."""

    def __init__(self, straps: Sequence[StrapReadiness], now: float, timeout_s: float) -> None:
        self.straps = list(straps)
        waiting = [s for s in straps if not s.ready(now)]
        super().__init__(
            f"not ready after {timeout_s:g} s: "
            + "; ".join(f"{s.participant_id} ({s.device_id}) {s.status(now)}" for s in waiting)
        )


def _on_packet(state: StrapReadiness, packet: Packet) -> None:
    if packet.uuid != HEART_RATE_MEASUREMENT_UUID:
        return
    try:
        m = decode_heart_rate(packet.data)
    except DecodeError:
        return  # a malformed packet says nothing about readiness; the recording will keep and count them
    state.contact = m.contact.value
    if m.contact is SensorContact.SUPPORTED_NOT_DETECTED:
        state.beats_since = None
        return
    if not m.rr_1024:
        return
    broken = state.last_beat_t is None or packet.t - state.last_beat_t > BEAT_BREAK_S
    if broken or state.beats_since is None:
        state.beats_since = packet.t
    state.last_beat_t = packet.t


def _on_event(state: StrapReadiness, event: LinkEvent) -> None:
    state.link_state = event.state.value
    if event.reason:
        state.reason = event.reason
    if event.state is not LinkState.CONNECTED:
        state.beats_since = None
    else:
        state.reason = ""


async def wait_until_ready(
    bindings: Sequence[StrapBinding],
    clock: Clock,
    timeout_s: float,
    *,
    need_s: float = READY_BEATS_S,
    on_update: Callable[[list[StrapReadiness], float], None] | None = None,
) -> list[StrapReadiness]:
    """Run the links until every strap is ready (see the module docstring); their links are stopped either way.

    `on_update(states, now)` is called every `CHECK_EVERY_S` (for a live display of who is ready)."""
    if timeout_s <= 0:
        raise ValueError(f"the ready timeout must be > 0 s, got {timeout_s:g}")
    clock.restart()
    states = [StrapReadiness(b.participant_id, b.link.device_id) for b in bindings]

    async def run(binding: StrapBinding, state: StrapReadiness) -> None:
        try:
            await binding.link.run(lambda p: _on_packet(state, p), lambda e: _on_event(state, e))
        except Exception as exc:  # a strap that cannot even start: that is its reason
            state.link_state = "failed"
            state.reason = f"{type(exc).__name__}: {exc}"

    tasks = [asyncio.create_task(run(b, s)) for b, s in zip(bindings, states, strict=True)]
    try:
        while True:
            now = clock.now()
            if on_update is not None:
                on_update(states, now)
            if all(s.ready(now, need_s) for s in states):
                return [dataclasses.replace(s) for s in states]  # as they were, not as stopping leaves them
            if now >= timeout_s:
                raise NotReadyError([dataclasses.replace(s) for s in states], now, timeout_s)
            await clock.sleep(CHECK_EVERY_S)
    finally:
        for b in bindings:
            b.link.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5.0)
