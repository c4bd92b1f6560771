"""Writing output files safely: private to the user, never silently overwriting, nothing partial left behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class OutputExistsError(FileExistsError):
    """An export would replace an existing file; pass overwrite=True (`--force`) to allow it."""


@contextlib.contextmanager
def open_private_for_write(path: Path, *, overwrite: bool = False, binary: bool = False) -> Iterator[IO]:
    """Write `path` via a private temporary file that replaces it only when writing succeeded."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; not overwriting it (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.partial")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8", newline=None) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_private_text(path: Path, text: str, *, overwrite: bool = False) -> Path:
    with open_private_for_write(path, overwrite=overwrite) as fh:
        fh.write(text)
    return Path(path)
