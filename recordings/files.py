"""Writing output files safely: private to the user, never silently overwriting, nothing partial left behind.

Every file is written to `.NAME.partial` in the target folder and renamed over `NAME` only when complete. The temp
file is created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600, forced with fchmod whatever the umask), so a
symlink planted at that name is never followed and a planted file never lends its mode to the export. A stale
partial (left by a killed export, or planted) is unlinked first: unlinking removes the name, never what a symlink
points to. A rerun therefore leaves no `.partial` behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_CREATE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class OutputExistsError(FileExistsError):
    """An export would replace an existing file; pass overwrite=True (`--force`) to allow it."""


def partial_path(path: Path) -> Path:
    """The temporary name `path` is written under before it is renamed into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def remove_stale(path: Path) -> None:
    """Remove whatever is at `path` without following it: a file or symlink is unlinked, a real folder deleted."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def create_private(path: Path) -> int:
    """Create `path` exclusively as a new private (0600) file and return its descriptor; never follows a symlink."""
    try:
        fd = os.open(path, _CREATE_FLAGS, 0o600)
    except FileExistsError:
        remove_stale(path)  # a stale or planted partial: drop the name, then create it anew (O_EXCL again)
        fd = os.open(path, _CREATE_FLAGS, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_private_for_write(path: Path, *, overwrite: bool = False, binary: bool = False) -> Iterator[IO]:
    """Write `path` via a private temporary file that replaces it only when writing succeeded."""
    path = Path(path)
    tmp = partial_path(path)
    if os.path.lexists(tmp):
        remove_stale(tmp)  # leftovers of a killed export go even when this run is refused
    if os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{path} exists; not overwriting it (use --force to replace it)")
    if path.is_dir() and not path.is_symlink():
        raise OutputExistsError(f"{path} is a folder; not replacing it")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = create_private(tmp)
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


def clean_partials(folder: Path, names: list[str]) -> None:
    """Remove partials of `names` left in `folder` by a killed export, before deciding what already exists."""
    for name in names:
        tmp = partial_path(Path(folder) / name)
        if os.path.lexists(tmp):
            remove_stale(tmp)
