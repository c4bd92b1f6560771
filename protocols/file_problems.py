"""Precise, collected problems in the TOML files labs write (protocols, instruments).

Every problem names the file, where in it (line and column for syntax errors, the table such as a phase or an item),
the field, and what was expected against what was found. A file's problems are all reported together.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


@dataclass(frozen=True)
class Problem:
    """One problem; `where` names the table (for example `item 3 ("sc_often")`), `field` a dotted key."""

    source: str
    message: str
    where: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def location(self) -> str | None:
        return self.where

    def __str__(self) -> str:
        parts = [self.source]
        if self.line is not None:
            parts.append(f"line {self.line}, column {self.column}")
        where = self.location()
        if where is not None:
            parts.append(where)
        if self.field is not None:
            parts.append(f'field "{self.field}"')
        parts.append(self.message)
        return ": ".join(parts)


class FileProblems(ValueError):
    """A file with problems; `problems` lists every one found (the message shows them all)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        lines = [str(p) for p in problems]
        if len(lines) == 1:
            text = lines[0]
        else:
            text = f"{problems[0].source}: {len(lines)} problems:\n" + "\n".join(f"  {ln}" for ln in lines)
        super().__init__(text)


class TableChecker:
    """Collects a file's problems while its tables are read; `where` names the table being read."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        self.where: str | None = None

    def problem(self, field: str | None, message: str) -> Problem:
        return Problem(self.source, message, self.where, field)

    def add(self, field: str | None, message: str) -> None:
        self.problems.append(self.problem(field, message))

    def unknown_fields(self, table: dict[str, Any], allowed: tuple[str, ...], prefix: str, what: str) -> None:
        """A problem for every key not in `allowed` (typos get a "did you mean")."""
        for key in table:
            if key in allowed:
                continue
            close = closest(key, allowed)
            hint = f'did you mean "{close}"? ' if close else ""
            self.add(prefix + key, f"unknown {what} field; {hint}expected one of: {', '.join(allowed)}")


def show(value: Any) -> str:
    """How a TOML value is shown after "got"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def closest(word: str, options: list[str] | tuple[str, ...]) -> str | None:
    """The option a typo most likely meant, ignoring case: a prefix match first, else the closest spelling."""
    lowered = {o.lower(): o for o in options}
    w = word.strip().lower()
    prefixed = [o for o in lowered if len(w) >= 3 and (o.startswith(w) or w.startswith(o))]
    if prefixed:
        return lowered[min(prefixed, key=lambda o: abs(len(o) - len(w)))]
    close = difflib.get_close_matches(w, list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def parse_toml(text: str, source: str, error: type[FileProblems]) -> dict[str, Any]:
    """The TOML document, or `error` naming the line and column of the syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_POS.match(str(exc))
        if m:
            problem = Problem(source, f"TOML syntax error: {m['msg']}", line=int(m["line"]), column=int(m["col"]))
        else:
            problem = Problem(source, f"TOML syntax error: {exc}")
        raise error([problem]) from None


def read_text(path: str | Path, error: type[FileProblems]) -> str:
    """A file's UTF-8 text; undecodable bytes become `error` naming the file as given (OSError passes through)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark is read as one
    except UnicodeDecodeError as exc:
        raise error([Problem(str(path), f"expected UTF-8 text, got undecodable bytes ({exc.reason})")]) from None
