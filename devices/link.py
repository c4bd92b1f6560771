"""The seam between straps and the rest of the recorder: a raw `Packet` and the `StrapLink` interface.

Everything a strap sends arrives as a `Packet` (bytes exactly as received, which characteristic, arrival time on
the session clock). Real straps (`devices.ble`), the simulator and capture replay all implement `StrapLink`, so the
session records them through one path.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

HEART_RATE_SERVICE_UUID = "0000180d-0000-1000-8000-00805f9b34fb"
HEART_RATE_MEASUREMENT_UUID = "00002a37-0000-1000-8000-00805f9b34fb"
BATTERY_SERVICE_UUID = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL_UUID = "00002a19-0000-1000-8000-00805f9b34fb"
PMD_SERVICE_UUID = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL_POINT_UUID = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA_UUID = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"


@dataclass(frozen=True, slots=True)
class Packet:
    """One notification as received: session-clock arrival time, characteristic UUID, raw bytes, strap id."""

    t: float
    uuid: str
    data: bytes
    device: str = ""


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A change of connection state, with the reason (for example a BlueZ error name), on the session clock."""

    t: float
    device: str
    state: LinkState
    reason: str = ""


PacketSink = Callable[[Packet], None]
EventSink = Callable[[LinkEvent], None]


class StrapLink(Protocol):
    """A source of packets from one strap. `run` streams until `stop` is called, reconnecting as it can."""

    device_id: str

    async def run(self, on_packet: PacketSink, on_event: EventSink) -> None: ...

    def stop(self) -> None: ...
