"""`store backup` and `store info`: a consistent copy of a store while it is being recorded into, and what it holds.

The copy is made with SQLite's online backup API from a connection of its own that holds one read snapshot for the
whole copy. In WAL mode a reader never blocks a writer, so a session recording into the store goes on committing
while the pages are copied in steps (and the copy, taken from one snapshot, never restarts and is consistent: it is
the store as it was when the backup began). The copy is written privately (0600) under a temporary name, checked
(`PRAGMA quick_check`), turned into a single self-contained file (rollback journal instead of WAL), and only then
linked to its name; an existing file is never overwritten. Every backup is recorded in the store's `backups` table.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import OutputExistsError, create_private, partial_path
from .store import SCHEMA_VERSION, Store, StoreError, utc_now

BACKUP_STEP_PAGES = 256
"""Pages (4 KiB each) copied per backup step; between steps the GIL and the file are free for the recorder."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    bytes: int
    sessions: int
    pages: int
    steps: int


def _source_connection(path: Path) -> sqlite3.Connection:
    quoted = urllib.parse.quote(str(path.resolve()))
    src = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    src.execute("PRAGMA busy_timeout=5000")
    return src


def backup_store(
    store_path: Path, dest: Path, *, step_pages: int = BACKUP_STEP_PAGES,
    on_step: Callable[[int, int], None] | None = None,
) -> BackupResult:  # fmt: skip
    """Copy the store at `store_path` to the new file `dest` (see the module docstring); `on_step(done, total)`
    reports pages. Raises OutputExistsError when `dest` exists, StoreError when the copy fails."""
    store_path, dest = Path(store_path), Path(dest)
    if not store_path.is_file():
        raise StoreError(f"{store_path}: no store there")
    if os.path.lexists(dest):
        raise OutputExistsError(f"{dest} exists; a backup never replaces a file (name a new one)")
    if dest.resolve() == store_path.resolve():
        raise StoreError(f"{dest} is the store itself")
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = partial_path(dest)
    os.close(create_private(tmp))
    steps = [0]
    pages = [0]

    def progress(_status: int, remaining: int, total: int) -> None:
        steps[0] += 1
        pages[0] = total
        if on_step is not None:
            on_step(total - remaining, total)

    try:
        src = _source_connection(store_path)
        try:
            src.execute("BEGIN")  # one read snapshot for the whole copy: consistent, and never restarted
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            dst = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(dst, pages=max(1, step_pages), progress=progress, sleep=0.001)
                src.execute("COMMIT")
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise StoreError(f"the backup of {store_path} failed its check: {check}")
                dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                n_sessions = dst.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            finally:
                dst.close()
        finally:
            src.close()
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, dest)  # fails if `dest` appeared meanwhile: never replaces a file
        except FileExistsError:
            raise OutputExistsError(f"{dest} exists; a backup never replaces a file (name a new one)") from None
    except sqlite3.Error as exc:
        raise StoreError(f"backup of {store_path} to {dest} failed: {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return BackupResult(dest, dest.stat().st_size, int(n_sessions), pages[0], steps[0])


def record_backup(store: Store, result: BackupResult, by: str) -> None:
    """Note a finished backup in the store (`store info` shows the last one)."""
    with store.transaction():
        store.connection.execute(
            "INSERT INTO backups(utc, by, path, bytes, sessions) VALUES (?,?,?,?,?)",
            (utc_now(), by, str(result.path.resolve()), result.bytes, result.sessions),
        )


def _has_table(store: Store, name: str) -> bool:
    return store.connection.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() \
        is not None  # fmt: skip


def store_info(store: Store) -> dict[str, Any]:
    """Where the store is, its size, schema version, sessions by state and source, participants, the last backup."""
    db = store.connection
    size = sum(p.stat().st_size for p in (store.path, store.path.with_name(store.path.name + "-wal")) if p.exists())
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    by_state: dict[str, int] = {}
    by_source: dict[str, int] = {}
    for info in store.sessions():  # states as the store shows them (a dead recorder's session is interrupted)
        by_state[info.state] = by_state.get(info.state, 0) + 1
        by_source[info.source] = by_source.get(info.source, 0) + 1
    last = None
    if _has_table(store, "backups"):
        r = db.execute("SELECT utc, by, path, bytes, sessions FROM backups ORDER BY id DESC LIMIT 1").fetchone()
        if r is not None:
            last = dict(zip(("utc", "by", "path", "bytes", "sessions"), r, strict=True))
    return {
        "path": str(store.path.resolve()),
        "bytes": size,
        "schema_version": int(row[0]) if row else None,
        "program_schema_version": SCHEMA_VERSION,
        "sessions": sum(by_state.values()),
        "sessions_by_state": dict(sorted(by_state.items())),
        "sessions_by_source": dict(sorted(by_source.items())),
        "excluded_sessions": len(store.exclusions("session")),
        "participants": len(store.participants()),
        "last_backup": last,
    }
