"""Replay of recorded packets as a `StrapLink`: stored notifications come out again at their own times.

`ReplayLink` takes packets (and optionally the link events recorded with them) and delivers each one when the
injected clock reaches its stored time, unchanged: same bytes, same characteristic, same session time. Through a
`ScaledClock(speed)` a recording plays back `speed` times faster than it was made; the session pipeline downstream
(decoder, live metrics, displays) cannot tell a replay from a strap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from devices.clock import Clock, sleep_unless
from devices.link import EventSink, LinkEvent, LinkState, Packet, PacketSink


class ReplayLink:
    """A `StrapLink` that plays back `packets` (and recorded `events`) at their stored session times.

    Events recorded as CLOSED are not repeated: the link emits its own CLOSED when the recording ends or
    `stop()` is called. Without recorded events, CONNECTED is announced at the first packet's time.
    """

    def __init__(
        self,
        packets: Iterable[Packet],
        clock: Clock,
        *,
        device_id: str = "replay",
        events: Iterable[LinkEvent] = (),
    ) -> None:
        self.device_id = device_id
        self.clock = clock
        self.packets = sorted(packets, key=lambda p: p.t)
        self.events = sorted((e for e in events if e.state is not LinkState.CLOSED), key=lambda e: e.t)
        if not self.events and self.packets:
            self.events = [LinkEvent(self.packets[0].t, device_id, LinkState.CONNECTED, "replay")]
        self.delivered = 0
        """Packets handed on so far."""
        self._stop_event = asyncio.Event()
        self._stopped = False

    def stop(self) -> None:
        """End `run()` promptly; packets not yet due are not delivered."""
        self._stopped = True
        self._stop_event.set()

    async def _wait_until(self, t: float) -> None:
        delay = t - self.clock.now()
        if delay <= 0 or self._stopped:
            return
        await sleep_unless(self.clock, delay, self._stop_event)

    async def run(self, on_packet: PacketSink, on_event: EventSink) -> None:
        """Deliver everything in time order (an event before a packet of the same time), then CLOSED."""
        items: list[tuple[float, int, Packet | LinkEvent]] = [(e.t, 0, e) for e in self.events]
        items += [(p.t, 1, p) for p in self.packets]
        items.sort(key=lambda item: (item[0], item[1]))
        reason = "end of recording"
        try:
            for t, _, item in items:
                await self._wait_until(t)
                if self._stopped:
                    reason = "stopped"
                    break
                if isinstance(item, Packet):
                    on_packet(item)
                    self.delivered += 1
                else:
                    on_event(item)
        finally:
            on_event(LinkEvent(self.clock.now(), self.device_id, LinkState.CLOSED, reason))
