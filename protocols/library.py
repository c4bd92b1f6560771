"""The built-in protocol library (protocols/library/*.toml, one protocol per file named after it)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from protocols.loader import load_protocol, parse_protocol
from protocols.model import Protocol
from protocols.packaged import builtin_or_file, load_packaged


class UnknownProtocolError(LookupError):
    """Neither a built-in protocol name nor an existing protocol file."""


@cache
def _load_builtins() -> dict[str, Protocol]:
    return load_packaged("library", parse_protocol)


def builtin_protocols() -> dict[str, Protocol]:
    """All built-in protocols by name (a fresh dict; the protocols themselves are immutable)."""
    return dict(_load_builtins())


def list_protocols() -> list[str]:
    """Names of the built-in protocols, sorted."""
    return sorted(_load_builtins())


def get_protocol(name_or_path: str | Path) -> Protocol:
    """A built-in protocol by name, or a protocol loaded from a TOML file path (ProtocolError if invalid)."""
    return builtin_or_file(name_or_path, _load_builtins(), load_protocol, "protocol", UnknownProtocolError)
