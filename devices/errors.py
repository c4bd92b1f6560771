"""The one error every strap decoder raises on malformed bytes, and the largest notification a strap can send."""

from __future__ import annotations

MAX_ATTRIBUTE_BYTES = 512
"""Bluetooth Core Specification, Vol 3 Part F 3.2.9: an attribute value is at most 512 octets, so no notification
from a strap can be longer; a longer one (a hostile or corrupt capture) is refused before decoding."""
_SHOWN_BYTES = 64


class DecodeError(ValueError):
    """Malformed strap bytes: which field is truncated or invalid, at which byte offset, in which packet.

    `field`, `offset` and `data` are kept as attributes so callers can log or store them; the raw packet
    itself is never altered (it stays in the raw layer and can be re-decoded once a decoder is fixed).
    """

    def __init__(self, problem: str, *, field: str, offset: int, data: bytes) -> None:
        self.problem = problem
        self.field = field
        self.offset = offset
        self.data = bytes(data)
        packet = self.data[:_SHOWN_BYTES].hex(" ") or "(empty)"
        if len(self.data) > _SHOWN_BYTES:
            packet += " …"
        super().__init__(
            f"{problem}: field {field!r} at byte offset {offset} of a {len(self.data)}-byte packet [{packet}]"
        )

    def __reduce__(self):  # keeps the error picklable (e.g. across process pools)
        return (_rebuild, (self.problem, self.field, self.offset, self.data))


def _rebuild(problem: str, field: str, offset: int, data: bytes) -> DecodeError:
    return DecodeError(problem, field=field, offset=offset, data=data)


def check_notification_size(data: bytes) -> None:
    """DecodeError when `data` is longer than any Bluetooth attribute value (`MAX_ATTRIBUTE_BYTES`)."""
    if len(data) > MAX_ATTRIBUTE_BYTES:
        raise DecodeError(f"longer than the {MAX_ATTRIBUTE_BYTES} bytes a Bluetooth notification can carry",
                          field="length", offset=MAX_ATTRIBUTE_BYTES, data=data)
