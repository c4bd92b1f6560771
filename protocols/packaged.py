"""Built-in TOML files shipped with the package (protocols, instruments) and finding one by name or path."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Protocol, TypeVar


class _Named(Protocol):
    name: str


T = TypeVar("T", bound=_Named)


def load_packaged(folder: str, parse: Callable[..., T]) -> dict[str, T]:
    """Every `protocols/<folder>/*.toml` (except `_*` templates) parsed by `parse(text, source=...)`, by name.

    A file's name must be the name inside it, so `--protocol NAME` and the file always agree.
    """
    out: dict[str, T] = {}
    for entry in sorted(files("protocols").joinpath(folder).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml") or entry.name.startswith("_"):
            continue
        item = parse(entry.read_text(encoding="utf-8"), source=f"{folder}/{entry.name}")
        if item.name != entry.name.removesuffix(".toml"):
            raise ValueError(f"{folder}/{entry.name}: name {item.name!r} is not its file name")
        out[item.name] = item
    return out


def builtin_or_file(
    name_or_path: str | Path,
    builtins: dict[str, T],
    load: Callable[[Path], T],
    what: str,
    error: type[LookupError],
) -> T:
    """A built-in by name, else the file at that path; `error` says which names exist (and the closest one)."""
    if isinstance(name_or_path, str) and name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path)
    if path.is_file():
        return load(path)
    if path.suffix == ".toml" or len(path.parts) > 1:
        raise error(f"{what} file not found: {str(name_or_path)!r}")
    close = difflib.get_close_matches(str(name_or_path), list(builtins), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise error(
        f"no built-in {what} named {str(name_or_path)!r} and no such file; {hint}"
        f"built-in {what}s: {', '.join(sorted(builtins))}"
    )

