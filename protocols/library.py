"""The built-in protocol library (protocols/library/*.toml, one protocol per file named after it)."""

from __future__ import annotations

import difflib
from functools import cache
from importlib.resources import files
from pathlib import Path

from protocols.loader import load_protocol, parse_protocol
from protocols.model import Protocol


class UnknownProtocolError(LookupError):
    """Neither a built-in protocol name nor an existing protocol file."""


@cache
def _load_builtins() -> dict[str, Protocol]:
    out: dict[str, Protocol] = {}
    for entry in sorted(files("protocols").joinpath("library").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        protocol = parse_protocol(entry.read_text(encoding="utf-8"), source=f"library/{entry.name}")
        if protocol.name != entry.name.removesuffix(".toml"):
            raise ValueError(f"library/{entry.name}: protocol name {protocol.name!r} is not its file name")
        out[protocol.name] = protocol
    return out


def builtin_protocols() -> dict[str, Protocol]:
    """All built-in protocols by name (a fresh dict; the protocols themselves are immutable)."""
    return dict(_load_builtins())


def list_protocols() -> list[str]:
    """Names of the built-in protocols, sorted."""
    return sorted(_load_builtins())


def get_protocol(name_or_path: str | Path) -> Protocol:
    """A built-in protocol by name, or a protocol loaded from a TOML file path (ProtocolError if invalid)."""
    builtins = _load_builtins()
    if isinstance(name_or_path, str) and name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path)
    if path.is_file():
        return load_protocol(path)
    looks_like_path = path.suffix == ".toml" or len(path.parts) > 1
    if looks_like_path:
        raise UnknownProtocolError(f"protocol file not found: {str(name_or_path)!r}")
    close = difflib.get_close_matches(str(name_or_path), list(builtins), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownProtocolError(
        f"no built-in protocol named {str(name_or_path)!r} and no such file; {hint}"
        f"built-in protocols: {', '.join(sorted(builtins))}"
    )
