"""Bluetooth Heart Rate Measurement (characteristic 0x2A37): decode and encode, pure functions.

Layout (little endian): a flags byte, then the heart rate (uint8, or uint16 when flags bit 0 is set), then
the energy expended (uint16 kJ, when bit 3 is set), then zero or more RR intervals (uint16 each, 1/1024 s
units, oldest first, when bit 4 is set). Bits 1-2 give sensor contact: 0b00/0b01 contact not supported, 0b10
supported but not detected, 0b11 detected. Reserved bits 5-7 are ignored, as the specification asks. Bytes
after the last field when the RR flag is clear are reported as malformed, not silently dropped.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from devices.errors import DecodeError, check_notification_size

_HR_UINT16 = 0x01
_CONTACT_SHIFT = 1
_ENERGY_PRESENT = 0x08
_RR_PRESENT = 0x10
_UINT16_MAX = 0xFFFF


class SensorContact(enum.Enum):
    NOT_SUPPORTED = "not_supported"
    SUPPORTED_NOT_DETECTED = "supported_not_detected"
    DETECTED = "detected"


_CONTACT_FROM_BITS = {
    0b00: SensorContact.NOT_SUPPORTED,
    0b01: SensorContact.NOT_SUPPORTED,
    0b10: SensorContact.SUPPORTED_NOT_DETECTED,
    0b11: SensorContact.DETECTED,
}
_CONTACT_TO_BITS = {
    SensorContact.NOT_SUPPORTED: 0b00,
    SensorContact.SUPPORTED_NOT_DETECTED: 0b10,
    SensorContact.DETECTED: 0b11,
}


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """One decoded 0x2A37 notification. RR intervals stay in raw 1/1024 s units, oldest first."""

    heart_rate_bpm: int
    contact: SensorContact
    energy_expended_kj: int | None
    rr_1024: tuple[int, ...]

    @property
    def rr_ms(self) -> tuple[float, ...]:
        """RR intervals in milliseconds, exactly (value * 1000 / 1024 is exact in binary floating point)."""
        return tuple(rr * 1000 / 1024 for rr in self.rr_1024)


def _uint16(data: bytes, offset: int, field: str) -> int:
    if offset + 2 > len(data):
        have = max(len(data) - offset, 0)
        raise DecodeError(f"truncated uint16 (needs 2 bytes, {have} left)",
                          field=field, offset=offset, data=data)
    return data[offset] | (data[offset + 1] << 8)


def decode_heart_rate(data: bytes) -> HeartRateMeasurement:
    """Decode one Heart Rate Measurement notification. Raises `DecodeError` on malformed bytes."""
    data = bytes(data)
    check_notification_size(data)
    if not data:
        raise DecodeError("empty notification", field="flags", offset=0, data=data)
    flags = data[0]
    offset = 1
    if flags & _HR_UINT16:
        heart_rate = _uint16(data, offset, "heart_rate (uint16)")
        offset += 2
    else:
        if len(data) < 2:
            raise DecodeError("truncated uint8 (needs 1 byte, 0 left)", field="heart_rate (uint8)",
                              offset=offset, data=data)
        heart_rate = data[offset]
        offset += 1
    contact = _CONTACT_FROM_BITS[(flags >> _CONTACT_SHIFT) & 0b11]
    energy = None
    if flags & _ENERGY_PRESENT:
        energy = _uint16(data, offset, "energy_expended")
        offset += 2
    rr: tuple[int, ...] = ()
    if flags & _RR_PRESENT:
        remaining = len(data) - offset
        if remaining % 2:
            raise DecodeError("dangling odd byte after RR intervals", field="rr_interval",
                              offset=len(data) - 1, data=data)
        rr = tuple(_uint16(data, i, "rr_interval") for i in range(offset, len(data), 2))
    elif offset < len(data):
        raise DecodeError(f"{len(data) - offset} unexpected trailing byte(s) (RR flag not set)",
                          field="trailing", offset=offset, data=data)
    return HeartRateMeasurement(heart_rate_bpm=heart_rate, contact=contact, energy_expended_kj=energy,
                                rr_1024=rr)


def _check_uint16(name: str, value: int) -> None:
    if not 0 <= value <= _UINT16_MAX:
        raise ValueError(f"{name} must be in 0..65535, got {value}")


def encode_heart_rate(
    heart_rate_bpm: int,
    rr_1024: Sequence[int] = (),
    contact: SensorContact = SensorContact.DETECTED,
    energy_expended_kj: int | None = None,
    force_uint16: bool = False,
) -> bytes:
    """Build a Heart Rate Measurement notification (the inverse of `decode_heart_rate`).

    The heart rate is sent as uint16 when it exceeds 255 or when `force_uint16` is set. The RR flag is set
    whenever `rr_1024` is non-empty. Out-of-range values raise `ValueError`.
    """
    _check_uint16("heart_rate_bpm", heart_rate_bpm)
    wide = force_uint16 or heart_rate_bpm > 0xFF
    flags = (_HR_UINT16 if wide else 0) | (_CONTACT_TO_BITS[contact] << _CONTACT_SHIFT)
    body = bytearray(heart_rate_bpm.to_bytes(2 if wide else 1, "little"))
    if energy_expended_kj is not None:
        _check_uint16("energy_expended_kj", energy_expended_kj)
        flags |= _ENERGY_PRESENT
        body += energy_expended_kj.to_bytes(2, "little")
    if len(rr_1024):
        flags |= _RR_PRESENT
        for rr in rr_1024:
            _check_uint16("rr_1024 value", rr)
            body += int(rr).to_bytes(2, "little")
    return bytes([flags]) + bytes(body)
