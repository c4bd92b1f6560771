"""The built-in protocol library (protocols/library/*.toml, one protocol per file named after it), and the lab's own
folder of protocols (`$CMT_PROTOCOL_DIR`, else `protocols/` beside the store file), found by name the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from protocols.loader import ProtocolError, load_protocol, parse_protocol
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


LAB_PROTOCOLS_ENV = "CMT_PROTOCOL_DIR"


def lab_protocol_dir(store_path: Path | str) -> Path:
    """The lab's own protocol folder: `$CMT_PROTOCOL_DIR`, else the `protocols` folder beside the store file."""
    env = os.environ.get(LAB_PROTOCOLS_ENV)
    return Path(env) if env else Path(store_path).parent / "protocols"


@dataclass(frozen=True)
class LabProtocols:
    """The valid protocols of a lab folder by name, and each file that is not one (file: precise error)."""

    folder: Path
    protocols: dict[str, Protocol]
    problems: list[str]


def lab_protocols(folder: Path | str | None) -> LabProtocols:
    """Every `*.toml` in `folder` (none when it does not exist); an invalid file is a problem, not a crash.

    A lab protocol is found by the name inside it; one with a built-in's name is refused (the built-in is meant)."""
    folder = Path(folder) if folder is not None else Path()
    found: dict[str, Protocol] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return LabProtocols(folder, found, problems)
    builtins = _load_builtins()
    for path in sorted(folder.glob("*.toml")):
        try:
            proto = load_protocol(path)
        except (ProtocolError, OSError) as exc:
            problems.append(" ".join(str(exc).split()))
            continue
        if proto.name in builtins:
            problems.append(f"{path}: {proto.name!r} is the name of a built-in protocol; rename it")
        else:
            found[proto.name] = proto
    return LabProtocols(folder, found, problems)


def get_protocol(name_or_path: str | Path, lab_dir: Path | str | None = None) -> Protocol:
    """A built-in protocol by name, a lab protocol (in `lab_dir`) by name, or a protocol loaded from a TOML file path
    (ProtocolError if invalid)."""
    if lab_dir is not None and isinstance(name_or_path, str) and name_or_path not in _load_builtins():
        lab = lab_protocols(lab_dir)
        if name_or_path in lab.protocols:
            return lab.protocols[name_or_path]
        known = {**_load_builtins(), **lab.protocols}
        return builtin_or_file(name_or_path, known, load_protocol, "protocol", UnknownProtocolError)
    return builtin_or_file(name_or_path, _load_builtins(), load_protocol, "protocol", UnknownProtocolError)
