"""Bluetooth Battery Level (characteristic 0x2A19 of the Battery Service 0x180F): decode and encode, pure functions.

The value is one unsigned byte, the charge in percent (0–100). Straps without the Battery Service simply have no
level (None); a strap's level is read once on connecting and followed by notifications where it offers them.
"""

from __future__ import annotations

from devices.errors import DecodeError

LOW_BATTERY_PCT = 20
"""Below this charge the experimenter is warned (a strap may not last a session)."""


def decode_battery_level(data: bytes) -> int:
    """The charge in percent; DecodeError for anything but one byte of 0–100."""
    if len(data) != 1:
        raise DecodeError(f"battery level must be 1 byte, got {len(data)}", field="battery_level", offset=0,
                          data=data)  # fmt: skip
    if data[0] > 100:
        raise DecodeError(f"battery level {data[0]} % is above 100 %", field="battery_level", offset=0, data=data)
    return data[0]


def encode_battery_level(percent: int) -> bytes:
    """One Battery Level value (what a strap sends)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"battery level must be 0-100 %, got {percent}")
    return bytes([percent])


def battery_words(percent: int | None) -> str:
    """"battery 87 %", "battery 15 % — low, charge or replace it", or "" when the strap reports none."""
    if percent is None:
        return ""
    if percent < LOW_BATTERY_PCT:
        return f"battery {percent} % — low, charge or replace it"
    return f"battery {percent} %"
