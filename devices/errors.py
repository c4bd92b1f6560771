"""The one error every strap decoder raises on malformed bytes."""

from __future__ import annotations


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
        packet = self.data.hex(" ") or "(empty)"
        super().__init__(
            f"{problem}: field {field!r} at byte offset {offset} of a {len(self.data)}-byte packet [{packet}]"
        )

    def __reduce__(self):  # keeps the error picklable (e.g. across process pools)
        return (_rebuild, (self.problem, self.field, self.offset, self.data))


def _rebuild(problem: str, field: str, offset: int, data: bytes) -> DecodeError:
    return DecodeError(problem, field=field, offset=offset, data=data)
