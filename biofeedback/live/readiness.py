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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from biofeedback.live.session import StrapBinding
from devices.battery import LOW_BATTERY_PCT, battery_words, decode_battery_level
from devices.clock import Clock, sleep_unless
from devices.errors import DecodeError
from devices.heart_rate import SensorContact, decode_heart_rate
from devices.link import BATTERY_LEVEL_UUID, HEART_RATE_MEASUREMENT_UUID, LinkEvent, LinkState, Packet

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
    battery_pct: int | None = None

    def steady_s(self, now: float) -> float:
        """Seconds of beats without a break so far (0 while none are arriving)."""
        if self.beats_since is None or self.last_beat_t is None or now - self.last_beat_t > BEAT_BREAK_S:
            return 0.0
        return self.last_beat_t - self.beats_since

    @property
    def battery_low(self) -> bool:
        return self.battery_pct is not None and self.battery_pct < LOW_BATTERY_PCT

    def battery_note(self) -> str:
        """"battery 87 %", a warning below LOW_BATTERY_PCT, or "" when the strap reports no level."""
        return battery_words(self.battery_pct)

    def cause(self) -> str:
        """Why the link is not up, in two words ("no adapter", "Bluetooth off", "strap not found" ...), or ""."""
        return "" if self.link_state == LinkState.CONNECTED.value else cause(self.reason)[0]

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


CAUSES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    # (any of these in the link's reason, the cause in two words, what to do)
    (("FileNotFoundError", "org.freedesktop.DBus.Error.ServiceUnknown"), "no Bluetooth service",
     "no Bluetooth service to talk to (Linux: is the bluetooth service running? `systemctl status bluetooth`)"),
    (("NO_BLUETOOTH", "NO_BLE_CENTRAL_ROLE", "No Bluetooth adapters"), "no adapter",
     "no Bluetooth adapter found (plug in the USB Bluetooth adapter, or check it in the system's settings)"),
    (("POWERED_OFF", "org.bluez.Error.NotReady", "No powered Bluetooth adapters"), "Bluetooth off",
     "Bluetooth is off (Linux: `bluetoothctl power on`; Windows, macOS: turn Bluetooth on in Settings)"),
    (("DENIED_BY", "AccessDenied", "PermissionError", "NotAuthorized", "NotPermitted", "unauthorized"), "permission",
     "no permission to use Bluetooth (macOS: allow it for the terminal in Privacy & Security → Bluetooth; Linux: "
     "the user may need the `bluetooth` group)"),
    (("org.bluez.Error.InProgress", "AlreadyConnected", "le-connection-abort-by-remote"), "held by another app",
     "the strap is busy: another app may be holding it (close Polar Beat/Flow on phones nearby and other "
     "recorders)"),
    (("BleakBluetoothNotAvailableError",), "Bluetooth not available", "Bluetooth is off or there is no adapter"),
    (("BleakDeviceNotFoundError", "advertising within", "not found"), "strap not found",
     "strap not found: is it worn (straps sleep without skin contact), in range, and not held by another app "
     "(a phone's Polar Beat/Flow)?"),
)  # fmt: skip


def cause(reason: str) -> tuple[str, str]:
    """(the cause in two words, what to do) for a link's reason, or ("", "") when it is none we know."""
    return next(((name, hint) for needles, name, hint in CAUSES if any(n in reason for n in needles)), ("", ""))


def explain(reason: str) -> str:
    """A link's last reason without its retry countdown, with a hint in words for the causes we know."""
    reason = reason.split("; retrying in")[0]
    hint = cause(reason)[1]
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
    if packet.uuid == BATTERY_LEVEL_UUID:
        with contextlib.suppress(DecodeError):
            state.battery_pct = decode_battery_level(packet.data)
        return
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


class ReadinessWatch:
    """The straps' links run on their own (nothing stored) while their readiness is followed; thread-safe reads.

    `run()` (in an asyncio loop) streams until `stop()` (from any thread) or until its `until(states, now)` is true;
    `snapshot()` gives a copy of every strap's state and the time, for a display in another thread."""

    def __init__(self, bindings: Sequence[StrapBinding], clock: Clock, need_s: float = READY_BEATS_S) -> None:
        self.bindings = list(bindings)
        self.clock = clock
        self.need_s = need_s
        self.states = [StrapReadiness(b.participant_id, b.link.device_id) for b in self.bindings]
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_asked = False

    def snapshot(self) -> tuple[list[StrapReadiness], float]:
        with self._lock:
            return [dataclasses.replace(s) for s in self.states], self.clock.now()

    def stop(self) -> None:
        """End `run()` soon (safe from any thread, before or during the run)."""
        self._stop_asked = True
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _locked(self, fn: Callable, state: StrapReadiness) -> Callable:
        def call(item: object) -> None:
            with self._lock:
                fn(state, item)

        return call

    async def run(
        self,
        until: Callable[[list[StrapReadiness], float], bool] | None = None,
        on_update: Callable[[list[StrapReadiness], float], None] | None = None,
    ) -> list[StrapReadiness]:
        """Run the links until `stop()` or `until`; returns the states as they were then (links stopped either way)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_asked:
            self._stop.set()
        self.clock.restart()

        async def run_link(binding: StrapBinding, state: StrapReadiness) -> None:
            try:
                await binding.link.run(self._locked(_on_packet, state), self._locked(_on_event, state))
            except Exception as exc:  # a strap that cannot even start: that is its reason
                with self._lock:
                    state.link_state = "failed"
                    state.reason = f"{type(exc).__name__}: {exc}"

        tasks = [asyncio.create_task(run_link(b, s)) for b, s in zip(self.bindings, self.states, strict=True)]
        try:
            while not self._stop.is_set():
                states, now = self.snapshot()
                if on_update is not None:
                    on_update(states, now)
                if until is not None and until(states, now):
                    return states
                await sleep_unless(self.clock, CHECK_EVERY_S, self._stop)
            return self.snapshot()[0]
        finally:
            for b in self.bindings:
                b.link.stop()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5.0)


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
    timed_out: list[float] = []

    def until(states: list[StrapReadiness], now: float) -> bool:
        if all(s.ready(now, need_s) for s in states):
            return True
        if now >= timeout_s:
            timed_out.append(now)
            return True
        return False

    states = await ReadinessWatch(bindings, clock, need_s).run(until, on_update)
    if timed_out:
        raise NotReadyError(states, timed_out[0], timeout_s)
    return states
