"""The crash-safe store: one SQLite file in WAL mode holding participants, sessions and everything recorded.

Raw notifications are kept exactly as received (bytes, characteristic UUID, arrival time on the session clock), so a
decoder bug can be fixed and a session re-decoded. Writes are buffered in memory and committed by `flush()`; the live
session flushes at least every 0.5 s, so a killed process loses at most the last half second. When a store is opened,
sessions still marked `running` whose recording process is gone are marked `interrupted`: everything committed stays
readable and analysable.

The file and its directory are created private to the user (0600 / 0700); SQLite gives the WAL and shared-memory
files the same permissions as the database file.

Several processes may write one store (two recorders, an import beside a recording). A write takes SQLite's write
lock with `BEGIN IMMEDIATE`; when another process holds it, the write is retried every few milliseconds for up to
`WRITE_BUSY_BUDGET_S` seconds, then fails with `StoreLockedError`. Writers therefore keep their transactions short
(the live session commits each notification; an import commits in batches of at most `IMPORT_BATCH_S`).
Every SQLite failure becomes one `StoreError` saying what happened: locked (`StoreLockedError`), disk full
(`StoreFullError`), read-only file or folder (`StoreReadOnlyError`), not a store or damaged.

`Store(path, readonly=True)` opens an existing store for reading only (`file:...?mode=ro`): nothing is written, not even
the recovery of interrupted sessions (a `running` session of a process that is gone is *shown* as `interrupted`), so
`sessions list`, `analyze` and `export` work on a read-only store, a full disk, or beside a writer.

One `Store` may be used from several threads: every call holds the store's lock, so `close()` waits for a call in
flight, and a store claimed by a running session (`in_use`) waits for it to end (up to `CLOSE_WAIT_S`) or refuses.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import urllib.parse
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5
"""2: sessions.week, sources `imported-*`, exclusions and audit log; 3: sessions.end_reason (why a session
ended `failed` or `incomplete`) and beat stretches; 4: sessions.uuid (bundles and merges recognise a session by it)
and the `backups` table; 5: review_edits (a researcher's beat review, `recordings.review`)."""
BUSY_TIMEOUT_MS = 20
"""SQLite's own wait for a lock on each attempt; `_retry_busy` retries attempts until `WRITE_BUSY_BUDGET_S`."""
WRITE_BUSY_BUDGET_S = 30.0
"""How long a write (or a read) waits in total for another process's lock before it fails with StoreLockedError."""
BUSY_RETRY_SLEEP_S = 0.002
IMPORT_BATCH_S = 0.1
"""An import commits at least this often (wall-clock seconds), so it never holds the write lock for longer."""
CLOSE_WAIT_S = 30.0
"""`close()` waits this long for a session still recording into the store, then refuses."""
WAL_AUTOCHECKPOINT_PAGES = 1000
"""A commit that leaves the WAL above this many pages (about 4 MB) checkpoints it into the database; with one
connection committing small transactions every flush, the WAL stays near this size for a session of any length."""
WAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024
"""After a checkpoint, a WAL that one large transaction (an import, a re-decode) grew beyond this is truncated back."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS participants (
    id TEXT PRIMARY KEY,
    created_utc TEXT NOT NULL,
    resonance_rate_bpm REAL
);
CREATE TABLE IF NOT EXISTS private_texts (
    id INTEGER PRIMARY KEY,
    participant_id TEXT NOT NULL REFERENCES participants(id),
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    created_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    participant_id TEXT NOT NULL REFERENCES participants(id),
    group_id TEXT,
    protocol_name TEXT NOT NULL,
    protocol_json TEXT NOT NULL,
    device TEXT NOT NULL,
    source TEXT NOT NULL,
    started_utc TEXT NOT NULL,
    ended_utc TEXT,
    state TEXT NOT NULL,
    pid INTEGER,
    host TEXT,
    settings_json TEXT NOT NULL DEFAULT '{}',
    week INTEGER
);
CREATE TABLE IF NOT EXISTS exclusions (
    kind TEXT NOT NULL,
    object_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    excluded_by TEXT NOT NULL,
    excluded_utc TEXT NOT NULL,
    PRIMARY KEY (kind, object_id)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    utc TEXT NOT NULL,
    by TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    object_id INTEGER NOT NULL,
    participant_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS packets (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    uuid TEXT NOT NULL,
    data BLOB NOT NULL,
    device TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS packets_session ON packets(session_id, id);
CREATE TABLE IF NOT EXISTS packet_errors (
    packet_id INTEGER PRIMARY KEY REFERENCES packets(id),
    session_id INTEGER NOT NULL,
    error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS beats (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    rr_ms REAL NOT NULL,
    gap_before INTEGER NOT NULL,
    arrival_lag_s REAL NOT NULL,
    packet_id INTEGER
);
CREATE INDEX IF NOT EXISTS beats_session ON beats(session_id, t);
CREATE TABLE IF NOT EXISTS beat_stretches (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    idx INTEGER NOT NULL,
    reason TEXT NOT NULL,
    t_first REAL NOT NULL,
    t_last REAL NOT NULL,
    n_beats INTEGER NOT NULL,
    n_notifications INTEGER NOT NULL,
    drift_ppm REAL,
    anchor_delay_s REAL NOT NULL,
    median_delay_s REAL NOT NULL,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE IF NOT EXISTS heart_rate (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    hr_bpm INTEGER NOT NULL,
    contact TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS heart_rate_session ON heart_rate(session_id, t);
CREATE TABLE IF NOT EXISTS ecg_chunks (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t_arrival REAL NOT NULL,
    device_ns INTEGER NOT NULL,
    fs_hz REAL NOT NULL,
    n INTEGER NOT NULL,
    samples BLOB NOT NULL,
    packet_id INTEGER
);
CREATE INDEX IF NOT EXISTS ecg_session ON ecg_chunks(session_id, device_ns);
CREATE TABLE IF NOT EXISTS acc_chunks (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t_arrival REAL NOT NULL,
    device_ns INTEGER NOT NULL,
    fs_hz REAL NOT NULL,
    n INTEGER NOT NULL,
    samples BLOB NOT NULL,
    packet_id INTEGER
);
CREATE INDEX IF NOT EXISTS acc_session ON acc_chunks(session_id, device_ns);
CREATE TABLE IF NOT EXISTS markers (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    phase_index INTEGER,
    phase_name TEXT,
    label TEXT NOT NULL,
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS markers_session ON markers(session_id, t);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS link_events (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t REAL NOT NULL,
    device TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lsl_streams (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    channel_count INTEGER NOT NULL,
    nominal_srate REAL NOT NULL,
    info_xml TEXT NOT NULL,
    lsl_zero REAL NOT NULL,
    rate REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lsl_chunks (
    stream_id INTEGER NOT NULL REFERENCES lsl_streams(id),
    t_arrival REAL NOT NULL,
    clock_offset REAL NOT NULL,
    stamps BLOB NOT NULL,
    values_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS lsl_chunks_stream ON lsl_chunks(stream_id);
"""

SESSION_STATES = ("running", "completed", "stopped", "interrupted", "imported", "importing", "failed", "incomplete")
"""`failed`: the recording stopped because the store could not be written; `incomplete`: a strap (or an import)
stopped before the end; both keep their reason in `SessionInfo.end_reason`. `importing`: an import in progress."""
RECORDED_SOURCES = ("live", "simulated", "replay-copy")
"""Sources of sessions recorded by this program; every other session is `imported-<format>`."""
IMPORTED_PREFIX = "imported-"
SOURCE_CHOICES = ("live", "simulated", "replay-copy", "imported")
"""What a source filter accepts; `imported` is every `imported-*` source."""
_LEGACY_SOURCES = {"capture": "imported-capture", "rr": "imported-rr", "polar-sensor-logger": "imported-polar"}
"""Sources written before schema 2, and what they are called now."""
SESSION_TABLES = ("packet_errors", "beats", "beat_stretches", "heart_rate", "ecg_chunks", "acc_chunks", "markers",
                  "notes", "link_events", "review_edits", "packets", "lsl_streams")  # fmt: skip
"""Tables holding a session's data (deleted with it, children before `packets`; `lsl_chunks` hang on `lsl_streams`)."""
PARTICIPANT_PATTERN_ENV = "CMT_PARTICIPANT_PATTERN"
PARTICIPANT_RULE = (
    "a participant code is 1-32 ASCII letters, digits, '-' or '_' and contains a digit (P01, "
    f"cmt-07), or matches the lab's pattern in ${PARTICIPANT_PATTERN_ENV}; never a name"
)


class StoreError(RuntimeError):
    """A store that cannot be opened or a request that names something not in it."""


class BeatOrderError(StoreError):
    """Beat times that do not strictly increase within a session (they cannot be analysed as given)."""


class StoreWriteError(StoreError):
    """The store could not be written; everything committed before stays readable."""


class StoreLockedError(StoreWriteError):
    """Another process held the store's lock for longer than the retry budget."""


class StoreFullError(StoreWriteError):
    """The disk (or file system) holding the store is full."""


class StoreReadOnlyError(StoreWriteError):
    """The store file or its folder cannot be written."""


class StoreClosedError(StoreError):
    """The store was used after `close()`."""


class StoreInUseError(StoreError):
    """`close()` refused: a session is still recording into the store."""


def _sqlite_error(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """One clear StoreError for an SQLite failure (locked, full, read-only, damaged, or as SQLite says)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    folder = path.parent
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreLockedError(
            f"{path} is locked by another program using it (waited {WRITE_BUSY_BUDGET_S:g} s while {doing})"
        )
    if primary == sqlite3.SQLITE_FULL or (primary == sqlite3.SQLITE_IOERR and _disk_full(folder)):
        return StoreFullError(f"the disk holding {path} is full ({doing})")
    if primary == sqlite3.SQLITE_READONLY or (
        primary == sqlite3.SQLITE_CANTOPEN and path.exists() and not os.access(folder, os.W_OK)
    ):
        what = f"the folder {folder} is not writable" if not os.access(folder, os.W_OK) else "the file is read-only"
        return StoreReadOnlyError(f"{path} cannot be written: {what} ({doing})")
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return StoreError(f"{path}: not a recorder store or damaged ({exc})")
    if primary == sqlite3.SQLITE_CANTOPEN:
        return StoreError(f"{path}: cannot be opened ({exc})")
    if primary == sqlite3.SQLITE_IOERR:
        return StoreWriteError(f"{path}: disk I/O error while {doing} ({exc})")
    return StoreError(f"{path}: {exc} ({doing})")


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 64 * 1024
    except OSError:
        return False


_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _BUSY_CODES


class _Rows:
    """A finished statement: its rows (read while the store's lock was held) and `lastrowid`."""

    __slots__ = ("_i", "_rows", "lastrowid", "rowcount")

    def __init__(self, rows: list[Any], lastrowid: int | None, rowcount: int) -> None:
        self._rows, self._i, self.lastrowid, self.rowcount = rows, 0, lastrowid, rowcount

    def fetchone(self) -> Any:
        if self._i >= len(self._rows):
            return None
        self._i += 1
        return self._rows[self._i - 1]

    def fetchall(self) -> list[Any]:
        rows, self._i = self._rows[self._i :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row


class _GuardedConnection:
    """The store's SQLite connection behind its lock: no statement can run while another thread closes it."""

    def __init__(self, store: Store, raw: sqlite3.Connection) -> None:
        self._store = store
        self._raw = raw

    @property
    def in_transaction(self) -> bool:
        return self._store._call(lambda: self._raw.in_transaction, "reading")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> _Rows:
        def run() -> _Rows:
            cur = self._raw.execute(sql, params)
            rows = cur.fetchall() if cur.description is not None else []
            return _Rows(rows, cur.lastrowid, cur.rowcount)

        return self._store._call(run, _doing(sql))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> _Rows:
        def run() -> _Rows:
            cur = self._raw.executemany(sql, seq)
            return _Rows([], cur.lastrowid, cur.rowcount)

        return self._store._call(run, _doing(sql))

    def executescript(self, script: str) -> None:
        self._store._call(lambda: self._raw.executescript(script), "creating tables")


def _doing(sql: str) -> str:
    word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    return "reading" if word in ("SELECT", "PRAGMA", "WITH") else "writing"


def normalise_source(source: str) -> str:
    """The stored name of a session source: `live`, `simulated`, `replay-copy`, else `imported-<format>`."""
    source = _LEGACY_SOURCES.get(source, source.strip())
    if not source or source == IMPORTED_PREFIX:
        raise StoreError("a session needs a source (live, simulated, replay-copy or imported-FORMAT)")
    if source in RECORDED_SOURCES or source.startswith(IMPORTED_PREFIX):
        return source
    return IMPORTED_PREFIX + source


def source_matches(source: str, wanted: str) -> bool:
    """Whether a session's `source` is `wanted`; `imported` matches every `imported-*`."""
    return source == wanted or (wanted == "imported" and source.startswith(IMPORTED_PREFIX))


def default_store_path() -> Path:
    """The embedded default store in the user's data directory (overridable with `--store PATH`)."""
    env = os.environ.get("CMT_STORE")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("cmt-biofeedback", appauthor=False)) / "recordings.sqlite"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class LslStream:
    """An LSL stream recorded into a session (see `Store.add_lsl_stream`)."""

    id: int
    name: str
    type: str
    source_id: str
    channel_count: int
    nominal_srate: float
    info_xml: str
    lsl_zero: float
    rate: float


@dataclass(frozen=True)
class LslSamples:
    lsl_t: np.ndarray  # stamps as the sender set them (its LSL clock)
    t: np.ndarray  # session clock
    values: list  # one list of channel values per sample


def lsl_session_time(stamps: np.ndarray, clock_offset: np.ndarray, lsl_zero: float, rate: float) -> np.ndarray:
    """Session time of LSL stamps: onto the local LSL clock (+ offset), from session time 0, at the clock's rate."""
    return (np.asarray(stamps, dtype=float) + clock_offset - lsl_zero) * rate


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: int
    participant_id: str
    group_id: str | None
    protocol_name: str
    device: str
    source: str
    started_utc: str
    ended_utc: str | None
    state: str
    settings: dict[str, Any]
    end_reason: str | None = None
    week: int | None = None
    """Study week, recorded when the session was started (None for most imports)."""
    excluded: str | None = None
    """Why the session is excluded from study analyses and exports (None: included)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "participant_id": self.participant_id,
            "group_id": self.group_id,
            "protocol": self.protocol_name,
            "device": self.device,
            "source": self.source,
            "started_utc": self.started_utc,
            "ended_utc": self.ended_utc,
            "state": self.state,
            "end_reason": self.end_reason,
            "week": self.week,
            "excluded": self.excluded,
        }


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One exclusion, restore or deletion: who did what to which session or answer set, when and why (no data)."""

    id: int
    utc: str
    by: str
    action: str
    kind: str
    object_id: int
    participant_id: str | None
    reason: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "utc": self.utc, "by": self.by, "action": self.action, "kind": self.kind,
                "object_id": self.object_id, "participant_id": self.participant_id, "reason": self.reason,
                "detail": self.detail}  # fmt: skip


@dataclass(frozen=True, slots=True)
class StoredPacket:
    id: int
    t: float
    uuid: str
    data: bytes
    device: str


@dataclass(frozen=True, slots=True)
class Marker:
    t: float
    kind: str
    phase_index: int | None
    phase_name: str | None
    label: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Beats:
    """Reconstructed beats of one session as arrays: time (s, session clock), RR (ms), gap before the beat."""

    t: np.ndarray
    rr_ms: np.ndarray
    gap_before: np.ndarray
    arrival_lag_s: np.ndarray
    source: str = ""
    """Where the beats came from when they are not the stored strap beats as such (reviewed, ECG R-peaks, …):
    exports write it beside the beats; empty for the stored beats."""


_CODE_CHARS = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_participant_code(code: str, pattern: str | None = None) -> str:
    """The code, stripped, if it follows `PARTICIPANT_RULE` (`pattern`: the lab's regex, default from the env)."""
    pid = code.strip()
    pattern = pattern if pattern is not None else os.environ.get(PARTICIPANT_PATTERN_ENV) or None
    if _CODE_CHARS.fullmatch(pid):
        if any(c.isdigit() for c in pid):
            return pid
        try:
            if pattern is not None and re.fullmatch(pattern, pid):
                return pid
        except re.error as exc:
            raise StoreError(f"${PARTICIPANT_PATTERN_ENV} {pattern!r} is not a regular expression ({exc})") from None
    raise StoreError(f"participant code {code!r} is not a pseudonymous code: {PARTICIPANT_RULE}")


_REVIEW_EDITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_edits (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    utc TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    action TEXT NOT NULL,
    t REAL,
    t_end REAL,
    kind TEXT,
    reason TEXT NOT NULL DEFAULT '',
    undoes INTEGER REFERENCES review_edits(id)
)"""
"""A review edit (accept, reject, mark, unmark, add, delete, bad-segment, undo) of one session's beats: appended,
never updated; raw packets and decoded beats are never touched by a review."""


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store written by an older version up to this schema (columns added with defaults, data kept).

    Schema 2 adds `sessions.week` (taken from the `week` setting where one was recorded), names imported sources
    `imported-<format>`, and marks sessions recorded from simulated straps (device `sim-N`) as `simulated`.
    """
    columns = {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
    if "week" not in columns:
        db.execute("BEGIN IMMEDIATE")
        try:
            if "week" not in {r[1] for r in db.execute("PRAGMA table_info(sessions)")}:  # another process did it
                db.execute("ALTER TABLE sessions ADD COLUMN week INTEGER")
                db.execute(
                    "UPDATE sessions SET week=json_extract(settings_json, '$.week') WHERE json_type(settings_json,"
                    " '$.week')='integer' AND json_extract(settings_json, '$.week') >= 1"
                )
                for old, new in _LEGACY_SOURCES.items():
                    db.execute("UPDATE sessions SET source=? WHERE source=?", (new, old))
                db.execute(
                    "UPDATE sessions SET source='simulated' WHERE source='live' AND (device LIKE 'sim-%'"
                    " OR json_extract(settings_json, '$.study')='simulated')"
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    db.execute(
        "INSERT INTO meta(key, value) VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value"
        " WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
        (str(SCHEMA_VERSION),),
    )


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


class Store:
    """One SQLite store; safe to share between threads (every call holds the store's lock)."""

    def __init__(self, path: Path | str | None = None, *, recover: bool = True, readonly: bool = False) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.readonly = readonly
        self._lock = threading.RLock()
        self._users: dict[object, tuple[str, int]] = {}
        self._users_changed = threading.Condition(self._lock)
        self._closed = False
        self._in_tx = False
        self._atomic = False
        self._last_beat_t: dict[int, float] = {}
        self._has_end_reason = True
        self.write_failure: StoreWriteError | None = None
        """The first write that failed (already raised to its caller); `close()` then does not raise it again."""
        raw = self._open_readonly() if readonly else self._open_writable()
        self._raw = raw
        self._db = _GuardedConnection(self, raw)
        if readonly:
            self._has_end_reason = self._column_exists("sessions", "end_reason")
        else:
            self._migrate()
            if recover:
                try:
                    self.recover_interrupted()
                except StoreWriteError as exc:  # reading still works; the next writer recovers them
                    log.warning("interrupted sessions not marked: %s", exc)

    def _open_writable(self) -> sqlite3.Connection:
        try:
            _create_private_file(self.path)
        except OSError as exc:
            what = "is not writable" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "cannot be used"
            raise StoreReadOnlyError(
                f"cannot create the store {self.path}: the folder {self.path.parent} {what} ({exc.strerror})"
            ) from None
        try:
            raw = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            mode = _retry_busy(lambda: raw.execute("PRAGMA journal_mode").fetchone()[0])
            if mode != "wal":
                _retry_busy(lambda: raw.execute("PRAGMA journal_mode=WAL"))
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.execute("PRAGMA foreign_keys=ON")
            raw.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            raw.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.path, "opening the store") from None
        return raw

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise StoreError(f"{self.path}: no store there")
        quoted = urllib.parse.quote(str(self.path.resolve()))
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            try:
                raw = sqlite3.connect(f"file:{quoted}?mode=ro", uri=True, isolation_level=None,
                                      check_same_thread=False)  # fmt: skip
                raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                _retry_busy(lambda: raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone())
            except sqlite3.OperationalError as exc:
                primary = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
                if primary not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY) or wal.exists():
                    raise
                # a WAL store in a folder nobody can write: no writer can exist, so the file cannot change
                raw = sqlite3.connect(f"file:{quoted}?mode=ro&immutable=1", uri=True, isolation_level=None,
                                      check_same_thread=False)  # fmt: skip
                raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.path, "opening the store to read") from None
        return raw

    def _column_exists(self, table: str, column: str) -> bool:
        return any(r[1] == column for r in self._db.execute(f"PRAGMA table_info({table})").fetchall())

    def _migrate(self) -> None:
        """Create or upgrade the schema; a store already current is not written to."""
        row = None
        if self._db.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone():
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if (row is not None and row[0] == str(SCHEMA_VERSION) and self._column_exists("sessions", "end_reason")
                and self._column_exists("sessions", "week") and self._column_exists("sessions", "uuid")):
            return
        self._begin()
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        if not self._column_exists("sessions", "end_reason"):
            self._db.execute("ALTER TABLE sessions ADD COLUMN end_reason TEXT")
        self.flush()
        with self._lock:
            _migrate(self._raw)  # schema 2: weeks and sources
            _migrate_uuids(self._raw)  # schema 4: session UUIDs and backups
            self._raw.execute(_REVIEW_EDITS_SCHEMA)  # schema 5: the beat review (`recordings.review`)
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.flush()

    # -- locking and errors -----------------------------------------------------------------------------------
    def _call(self, fn: Any, doing: str) -> Any:
        """Run `fn` on the connection under the store's lock; SQLite errors become one clear StoreError."""
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"{self.path}: the store is closed")
            try:
                if self._raw.in_transaction:
                    return fn()
                return _retry_busy(fn)  # outside a transaction a busy statement did nothing: safe to retry
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError):
                    raise
                if self._in_tx and not self._raw.in_transaction:
                    self._in_tx = False  # SQLite rolled the transaction back (full disk, I/O error)
                error = _sqlite_error(exc, self.path, doing)
                if isinstance(error, StoreWriteError) and self.write_failure is None:
                    self.write_failure = error
                raise error from exc

    @contextmanager
    def in_use(self, owner: str) -> Iterator[None]:
        """Claim the store for a writer in another thread (a running session): `close()` waits for it to end."""
        key = object()
        with self._lock:
            self._users[key] = (owner, threading.get_ident())
        try:
            yield
        finally:
            with self._users_changed:
                del self._users[key]
                self._users_changed.notify_all()

    def _check_writable(self) -> None:
        if self.readonly:
            raise StoreReadOnlyError(f"{self.path} was opened read-only")

    # -- transactions -----------------------------------------------------------------------------------------
    def _begin(self) -> None:
        with self._lock:
            if not self._in_tx:
                self._check_writable()
                self._db.execute("BEGIN IMMEDIATE")  # takes the write lock now (retried while another has it)
                self._in_tx = True

    def flush(self) -> None:
        """Commit everything written since the last flush (the durability point).

        Inside `transaction()` this waits for the transaction's end, so an import stays all-or-nothing.
        """
        with self._lock:
            if self._in_tx and not self._atomic:
                try:
                    self._db.execute("COMMIT")
                finally:
                    if not self._closed and not self._raw.in_transaction:
                        self._in_tx = False

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: everything written inside is committed at the end, or nothing is (on an exception)."""
        with self._lock:
            if self._atomic:
                raise StoreError("transactions do not nest")
            self.flush()
            self._begin()
            self._atomic = True
            try:
                yield
            except BaseException:
                if not self._closed and self._raw.in_transaction:
                    self._raw.execute("ROLLBACK")
                self._in_tx = False
                self._last_beat_t.clear()
                raise
            finally:
                self._atomic = False
            self.flush()

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Commit and close. Waits for a call in flight and (up to `timeout_s`) for a session still recording."""
        with self._users_changed:
            me = threading.get_ident()
            if any(tid == me for _o, tid in self._users.values()):
                raise StoreInUseError(f"{self.path}: cannot close the store from the session still recording into it")
            if not self._users_changed.wait_for(lambda: not self._users, timeout=timeout_s):
                owners = ", ".join(o for o, _t in self._users.values())
                raise StoreInUseError(f"{self.path}: not closed, still in use by {owners}")
            if self._closed:
                return
            try:
                self.flush()
            except StoreWriteError as exc:
                if self.write_failure is None or exc is self.write_failure:
                    raise
                log.warning("closing after an earlier write failure: %s", exc)  # reported once, when it happened
            finally:
                self._closed = True
                self._raw.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def atomic(self) -> bool:
        """True inside `transaction()`."""
        return self._atomic

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- participants -----------------------------------------------------------------------------------------
    def check_participant(self, participant_id: str) -> str:
        """The stripped code of a participant already in the store, or a new code that follows `PARTICIPANT_RULE`."""
        pid = participant_id.strip()
        if self._db.execute("SELECT 1 FROM participants WHERE id=?", (pid,)).fetchone() is None:
            pid = check_participant_code(participant_id)
        return pid

    def ensure_participant(self, participant_id: str) -> str:
        """The participant's code, added if new."""
        pid = self.check_participant(participant_id)
        self._begin()
        self._db.execute("INSERT OR IGNORE INTO participants(id, created_utc) VALUES (?, ?)", (pid, utc_now()))
        return pid

    def participants(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM participants ORDER BY id")]

    def set_resonance_rate(self, participant_id: str, rate_bpm: float | None) -> None:
        pid = self.ensure_participant(participant_id)
        self._db.execute("UPDATE participants SET resonance_rate_bpm=? WHERE id=?", (rate_bpm, pid))
        self.flush()

    def resonance_rate(self, participant_id: str) -> float | None:
        row = self._db.execute("SELECT resonance_rate_bpm FROM participants WHERE id=?", (participant_id,)).fetchone()
        return None if row is None else row[0]

    # -- sessions ---------------------------------------------------------------------------------------------
    def create_session(
        self,
        participant_id: str,
        protocol_name: str,
        protocol: dict[str, Any],
        device: str,
        *,
        source: str = "live",
        group_id: str | None = None,
        started_utc: str | None = None,
        settings: dict[str, Any] | None = None,
        state: str | None = None,
        week: int | None = None,
    ) -> int:
        """A new session. Its study week is `week`, else the `week` setting, else (for a recording, not an import)
        the participant's next week among sessions of the same source (`next_week`)."""
        pid = self.ensure_participant(participant_id)
        source = normalise_source(source)
        recorded = source in RECORDED_SOURCES
        state = state or ("running" if recorded else "imported")
        if state not in SESSION_STATES:
            raise ValueError(f"unknown session state {state!r}")
        if week is None and isinstance((settings or {}).get("week"), int):
            week = settings["week"]  # type: ignore[index]
        if week is not None and (not isinstance(week, int) or isinstance(week, bool) or week < 1):
            raise StoreError(f"study week must be a whole number ≥ 1, got {week!r}")
        if week is None and recorded:
            week = self.next_week(pid, source)
        cur = self._db.execute(
            "INSERT INTO sessions(participant_id, group_id, protocol_name, protocol_json, device, source,"
            " started_utc, state, pid, host, settings_json, week) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                pid,
                group_id,
                protocol_name,
                json.dumps(protocol),
                device,
                source,
                started_utc or utc_now(),
                state,
                os.getpid(),
                socket.gethostname(),
                json.dumps(settings or {}),
                week,
            ),
        )
        self.flush()
        return int(cur.lastrowid)

    def next_week(self, participant_id: str, source: str = "live") -> int:
        """The week after the participant's latest included session of `source` (1 for their first)."""
        row = self._db.execute(
            "SELECT MAX(week) FROM sessions WHERE participant_id=? AND source=? AND id NOT IN"
            " (SELECT object_id FROM exclusions WHERE kind='session')",
            (participant_id.strip(), source),
        ).fetchone()
        return 1 if row[0] is None else int(row[0]) + 1

    @staticmethod
    def new_group_id() -> str:
        return uuidlib.uuid4().hex[:12]

    def end_session(self, session_id: int, state: str = "completed", reason: str | None = None) -> None:
        """Set a session's final state (with the reason for `failed`/`incomplete`) and commit."""
        if state not in SESSION_STATES:
            raise ValueError(f"unknown session state {state!r}")
        self._begin()
        self._db.execute(
            "UPDATE sessions SET state=?, ended_utc=?, end_reason=? WHERE id=?", (state, utc_now(), reason, session_id)
        )
        self.flush()

    def set_state(self, session_id: int, state: str) -> None:
        """Only the state (the smallest write there is: it fits where `end_session` no longer does, on a full disk)."""
        if state not in SESSION_STATES:
            raise ValueError(f"unknown session state {state!r}")
        self._begin()
        self._db.execute("UPDATE sessions SET state=? WHERE id=?", (state, session_id))
        self.flush()

    def recover_interrupted(self) -> list[int]:
        """Mark sessions left `running` by a process that no longer exists as `interrupted` (an unfinished
        import as `incomplete`)."""
        found = [
            (sid, state)
            for sid, state, pid, shost in self._db.execute(
                "SELECT id, state, pid, host FROM sessions WHERE state IN ('running', 'importing')"
            ).fetchall()
            if not _owner_alive(pid, shost)
        ]
        if found:
            self._begin()
            for sid, state in found:
                if state == "running":
                    self._db.execute("UPDATE sessions SET state='interrupted' WHERE id=?", (sid,))
                else:
                    self._db.execute(
                        "UPDATE sessions SET state='incomplete', end_reason=? WHERE id=?", (IMPORT_UNFINISHED, sid)
                    )
            self.flush()
            from .decode import rebuild_beats  # same floor; decode builds on the store

            for sid, state in found:
                if state == "running":
                    rebuild_beats(self, sid)  # the live beat times, refitted over the whole recording
        return [sid for sid, _state in found]

    def _session_columns(self) -> str:
        reason = "s.end_reason" if self._has_end_reason else "NULL"
        return (
            "SELECT s.id, s.participant_id, s.group_id, s.protocol_name, s.device, s.source, s.started_utc,"
            f" s.ended_utc, s.state, s.settings_json, s.week, x.reason, {reason}, s.pid, s.host FROM sessions s"
            " LEFT JOIN exclusions x ON x.kind='session' AND x.object_id=s.id"
        )

    def _session_info(self, row: Sequence[Any]) -> SessionInfo:
        state, end_reason = row[8], row[12]
        if self.readonly and state in ("running", "importing") and not _owner_alive(row[13], row[14]):
            # what recovery would record, shown without writing
            state, end_reason = ("interrupted", end_reason) if state == "running" else ("incomplete", IMPORT_UNFINISHED)
        return SessionInfo(*row[:8], state=state, settings=json.loads(row[9]), week=row[10], excluded=row[11],
                           end_reason=end_reason)

    def session(self, session_id: int) -> SessionInfo:
        row = self._db.execute(self._session_columns() + " WHERE s.id=?", (session_id,)).fetchone()
        if row is None:
            raise StoreError(f"no session {session_id} in {self.path}")
        return self._session_info(row)

    def sessions(self, participant_id: str | None = None) -> list[SessionInfo]:
        query = self._session_columns()
        args: tuple[Any, ...] = ()
        if participant_id is not None:
            query += " WHERE s.participant_id=?"
            args = (participant_id,)
        return [self._session_info(r) for r in self._db.execute(query + " ORDER BY s.id", args).fetchall()]

    # -- exclusion, deletion and their audit trail ------------------------------------------------------------
    def exclude(self, kind: str, object_id: int, reason: str, *, by: str, participant_id: str | None = None) -> None:
        """Leave a session or answer set out of study analyses and `export --all` (kept; `restore` undoes it)."""
        if not reason.strip():
            raise StoreError(f"say why {kind.replace('_', ' ')} {object_id} is excluded (--reason)")
        self._begin()
        self._db.execute(
            "INSERT INTO exclusions(kind, object_id, reason, excluded_by, excluded_utc) VALUES (?,?,?,?,?)"
            " ON CONFLICT(kind, object_id) DO UPDATE SET reason=excluded.reason, excluded_by=excluded.excluded_by,"
            " excluded_utc=excluded.excluded_utc",
            (kind, object_id, reason.strip(), by, utc_now()),
        )
        self.audit("exclude", kind, object_id, by=by, participant_id=participant_id, reason=reason.strip())
        self.flush()

    def restore(self, kind: str, object_id: int, *, by: str, participant_id: str | None = None) -> bool:
        """Undo `exclude`; False when it was not excluded."""
        self._begin()
        cur = self._db.execute("DELETE FROM exclusions WHERE kind=? AND object_id=?", (kind, object_id))
        if cur.rowcount:
            self.audit("restore", kind, object_id, by=by, participant_id=participant_id)
        self.flush()
        return bool(cur.rowcount)

    def set_week(self, session_id: int, week: int, *, by: str, reason: str = "") -> int | None:
        """Record the study week of a session (an import, or a correction); audited. Returns the previous week."""
        info = self.session(session_id)
        if not isinstance(week, int) or isinstance(week, bool) or week < 1:
            raise StoreError(f"study week must be a whole number ≥ 1, got {week!r}")
        self._begin()
        self._db.execute("UPDATE sessions SET week=? WHERE id=?", (week, session_id))
        self.audit("set-week", "session", session_id, by=by, participant_id=info.participant_id, reason=reason,
                   detail={"old": info.week, "new": week})  # fmt: skip
        self.flush()
        return info.week

    def exclusions(self, kind: str) -> dict[int, str]:
        """Excluded object ids of `kind` ("session", "answer_set") and why."""
        return dict(self._db.execute("SELECT object_id, reason FROM exclusions WHERE kind=?", (kind,)).fetchall())

    def audit(
        self, action: str, kind: str, object_id: int, *, by: str, participant_id: str | None = None,
        reason: str = "", detail: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Append an audit row (inside the caller's transaction)."""
        self._begin()
        self._db.execute(
            "INSERT INTO audit_log(utc, by, action, kind, object_id, participant_id, reason, detail_json)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (utc_now(), by, action, kind, object_id, participant_id, reason, json.dumps(detail or {})),
        )

    def audit_rows(self, kind: str | None = None) -> list[AuditRow]:
        query = "SELECT id, utc, by, action, kind, object_id, participant_id, reason, detail_json FROM audit_log"
        args: tuple[Any, ...] = () if kind is None else (kind,)
        rows = self._db.execute(query + (" WHERE kind=?" if kind else "") + " ORDER BY id", args).fetchall()
        return [AuditRow(*r[:8], detail=json.loads(r[8])) for r in rows]

    def delete_session(self, session_id: int, *, by: str, reason: str = "") -> dict[str, Any]:
        """Delete a session and everything recorded in it, keeping an audit row of what it was (never its data).

        Answer sets linked to it are kept and unlinked. A session still recording is refused.
        """
        info = self.session(session_id)
        if info.state == "running" and session_id not in self.recover_interrupted():
            raise StoreError(f"session {session_id} is still recording; stop it before deleting it")
        detail: dict[str, Any] = {
            "protocol": info.protocol_name, "source": info.source, "started_utc": info.started_utc,
            "state": info.state, "week": info.week, "counts": self.counts(session_id),
        }  # fmt: skip
        with self.transaction():
            has_answers = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='answer_sets'"
            ).fetchone()
            if has_answers:
                rows = self._db.execute("SELECT id FROM answer_sets WHERE session_id=?", (session_id,)).fetchall()
                linked = [r[0] for r in rows]
                self._db.execute("UPDATE answer_sets SET session_id=NULL WHERE session_id=?", (session_id,))
                detail["unlinked_answer_sets"] = linked
            self.delete_session_rows(session_id)
            self._db.execute("DELETE FROM exclusions WHERE kind='session' AND object_id=?", (session_id,))
            try:
                self._db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
            except sqlite3.IntegrityError as exc:  # a table this version does not know still refers to it
                raise StoreError(f"session {session_id} cannot be deleted: {exc}") from None
            self.audit("delete", "session", session_id, by=by, participant_id=info.participant_id, reason=reason,
                       detail=detail)  # fmt: skip
        return detail

    def delete_session_rows(self, session_id: int) -> None:
        """Delete everything recorded in a session (not the session row), children first; inside a transaction."""
        self._db.execute("DELETE FROM lsl_chunks WHERE stream_id IN (SELECT id FROM lsl_streams WHERE session_id=?)",
                         (session_id,))  # fmt: skip
        for table in SESSION_TABLES:
            self._db.execute(f"DELETE FROM {table} WHERE session_id=?", (session_id,))

    def protocol_dict(self, session_id: int) -> dict[str, Any]:
        row = self._db.execute("SELECT protocol_json FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None:
            raise StoreError(f"no session {session_id} in {self.path}")
        return json.loads(row[0])

    # -- raw layer and decoded data ---------------------------------------------------------------------------
    def add_packet(self, session_id: int, t: float, uuid: str, data: bytes, device: str = "") -> int:
        self._begin()
        cur = self._db.execute(
            "INSERT INTO packets(session_id, t, uuid, data, device) VALUES (?,?,?,?,?)",
            (session_id, t, uuid, bytes(data), device),
        )
        return int(cur.lastrowid)

    def add_packet_error(self, session_id: int, packet_id: int, error: str) -> None:
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO packet_errors(packet_id, session_id, error) VALUES (?,?,?)",
            (packet_id, session_id, error),
        )

    def packets(self, session_id: int, uuid: str | None = None) -> Iterator[StoredPacket]:
        query = "SELECT id, t, uuid, data, device FROM packets WHERE session_id=?"
        args: tuple[Any, ...] = (session_id,)
        if uuid is not None:
            query += " AND uuid=?"
            args += (uuid,)
        last = -1
        while True:  # in pages, so a long session is never held in memory at once
            rows = self._db.execute(query + " AND id>? ORDER BY id LIMIT 5000", (*args, last)).fetchall()
            for row in rows:
                yield StoredPacket(row[0], row[1], row[2], bytes(row[3]), row[4])
            if len(rows) < 5000:
                return
            last = rows[-1][0]

    def packet_errors(self, session_id: int) -> list[tuple[int, str]]:
        return list(
            self._db.execute(
                "SELECT packet_id, error FROM packet_errors WHERE session_id=? ORDER BY packet_id",
                (session_id,),
            )
        )

    def add_beats(self, session_id: int, rows: Iterable[tuple[float, float, bool, float, int | None]]) -> None:
        """Rows of (t, rr_ms, gap_before, arrival_lag_s, packet_id), in decode order.

        Beat times must strictly increase within a session (`recordings.beat_timeline`); a row that does not
        follow the session's previous beat is refused with `BeatOrderError` and nothing of the call is written.
        """
        rows = list(rows)
        if not rows:
            return
        last = self._last_beat_t.get(session_id)
        if last is None:
            row = self._db.execute(
                "SELECT t FROM beats WHERE session_id=? ORDER BY rowid DESC LIMIT 1", (session_id,)
            ).fetchone()
            last = -math.inf if row is None else float(row[0])
        for i, (t, rr, *_rest) in enumerate(rows):
            if not (math.isfinite(t) and t > last):
                raise BeatOrderError(
                    f"session {session_id}: beat at {t!r} s does not follow the previous beat at {last!r} s "
                    f"(row {i} of this write); beat times must strictly increase"
                )
            if not (math.isfinite(rr) and rr > 0):
                raise BeatOrderError(f"session {session_id}: beat at {t:.3f} s has RR {rr!r} ms")
            last = t
        self._begin()
        self._db.executemany(
            "INSERT INTO beats(session_id, t, rr_ms, gap_before, arrival_lag_s, packet_id) VALUES (?,?,?,?,?,?)",
            [(session_id, t, rr, int(gap), lag, pid) for t, rr, gap, lag, pid in rows],
        )
        self._last_beat_t[session_id] = last

    def replace_beats(
        self,
        session_id: int,
        rows: Iterable[tuple[float, float, bool, float, int | None]],
        stretches: Iterable[Any] = (),
    ) -> None:
        """Replace a session's decoded beats (and their stretches) — the rebuild from the raw layer."""
        self._begin()
        self._db.execute("DELETE FROM beats WHERE session_id=?", (session_id,))
        self._db.execute("DELETE FROM beat_stretches WHERE session_id=?", (session_id,))
        self._last_beat_t[session_id] = -math.inf  # the rows start afresh
        self.add_beats(session_id, rows)
        self._db.executemany(
            "INSERT INTO beat_stretches(session_id, idx, reason, t_first, t_last, n_beats, n_notifications, "
            "drift_ppm, anchor_delay_s, median_delay_s) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(session_id, s.index, s.reason, s.t_first, s.t_last, s.n_beats, s.n_notifications,
              None if math.isnan(s.drift_ppm) else s.drift_ppm, s.anchor_delay_s, s.median_delay_s)
             for s in stretches],
        )

    def beat_stretches(self, session_id: int) -> list[dict[str, Any]]:
        """The fitted stretches of a session's beats (empty until the beats were rebuilt); drift None = unknown."""
        names = ("idx", "reason", "t_first", "t_last", "n_beats", "n_notifications", "drift_ppm", "anchor_delay_s",
                 "median_delay_s")  # fmt: skip
        rows = self._db.execute(
            f"SELECT {', '.join(names)} FROM beat_stretches WHERE session_id=? ORDER BY idx", (session_id,)
        ).fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def clear_decoded(self, session_id: int) -> None:
        """Drop the decoded layer of a session (before re-decoding it from its raw packets)."""
        self._begin()
        for table in ("beats", "beat_stretches", "heart_rate", "ecg_chunks", "acc_chunks", "packet_errors"):
            self._db.execute(f"DELETE FROM {table} WHERE session_id=?", (session_id,))
        self._last_beat_t.pop(session_id, None)

    def beats(self, session_id: int) -> Beats:
        """The session's beats in stored (decode) order; never re-sorted.

        Raises `BeatOrderError` naming the session and the first offending beat when the stored times do not
        strictly increase (a store written by an older version): such beats cannot be analysed.
        """
        rows = self._db.execute(
            "SELECT t, rr_ms, gap_before, arrival_lag_s FROM beats WHERE session_id=? ORDER BY rowid",
            (session_id,),
        ).fetchall()
        arr = np.array(rows, dtype=float).reshape(-1, 4)
        bad = np.flatnonzero(np.diff(arr[:, 0]) <= 0) if len(arr) > 1 else []
        if len(bad):
            i = int(bad[0]) + 1
            raise BeatOrderError(
                f"session {session_id}: beat {i} at {arr[i, 0]:.6f} s does not follow beat {i - 1} at "
                f"{arr[i - 1, 0]:.6f} s; re-decode it from the raw layer (`sessions redecode {session_id}`)"
            )
        return Beats(arr[:, 0], arr[:, 1], arr[:, 2].astype(bool), arr[:, 3])

    def add_heart_rate(self, session_id: int, t: float, hr_bpm: int, contact: str) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO heart_rate(session_id, t, hr_bpm, contact) VALUES (?,?,?,?)",
            (session_id, t, hr_bpm, contact),
        )

    def heart_rate(self, session_id: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._db.execute(
            "SELECT t, hr_bpm FROM heart_rate WHERE session_id=? ORDER BY t", (session_id,)
        ).fetchall()
        arr = np.array(rows, dtype=float).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def _add_chunk(
        self, table: str, what: str, session_id: int, t_arrival: float, device_ns: int, fs_hz: float,
        samples: np.ndarray, packet_id: int | None,
    ) -> None:  # fmt: skip
        if samples.size and (samples.min() < -(1 << 31) or samples.max() >= 1 << 31):
            raise ValueError(f"{what} samples must fit int32")
        blob = np.ascontiguousarray(samples, dtype="<i4").tobytes()
        self._begin()
        self._db.execute(
            f"INSERT INTO {table}(session_id, t_arrival, device_ns, fs_hz, n, samples, packet_id)"
            " VALUES (?,?,?,?,?,?,?)",
            (session_id, t_arrival, int(device_ns), fs_hz, len(samples), blob, packet_id),
        )

    def _chunks(self, table: str, session_id: int, width: int) -> list[tuple[float, int, float, np.ndarray]]:
        rows = self._db.execute(
            f"SELECT t_arrival, device_ns, fs_hz, samples FROM {table} WHERE session_id=? ORDER BY device_ns, rowid",
            (session_id,),
        ).fetchall()
        shape = (-1,) if width == 1 else (-1, width)
        return [(t, ns, fs, np.frombuffer(blob, dtype="<i4").reshape(shape)) for t, ns, fs, blob in rows]

    def add_ecg_chunk(
        self, session_id: int, t_arrival: float, device_ns: int, fs_hz: float, samples_uv: np.ndarray,
        packet_id: int | None,
    ) -> None:  # fmt: skip
        """Store one frame of ECG samples (µV, int32) with the device time of its last sample."""
        samples = np.asarray(samples_uv)
        if samples.ndim != 1:
            raise ValueError(f"ECG samples must be one channel (n,), got {samples.shape}")
        self._add_chunk("ecg_chunks", "ECG", session_id, t_arrival, device_ns, fs_hz, samples, packet_id)

    def ecg_chunks(self, session_id: int) -> list[tuple[float, int, float, np.ndarray]]:
        """(arrival t, device ns of last sample, fs, samples µV) per frame, in device-time order."""
        return self._chunks("ecg_chunks", session_id, 1)

    def add_acc_chunk(
        self, session_id: int, t_arrival: float, device_ns: int, fs_hz: float, samples_mg: np.ndarray,
        packet_id: int | None,
    ) -> None:  # fmt: skip
        """Store one frame of accelerometer samples (n, 3) x/y/z in mG with the device time of its last sample."""
        samples = np.asarray(samples_mg)
        if samples.ndim != 2 or samples.shape[1] != 3 or not len(samples):
            raise ValueError(f"ACC samples must have shape (n >= 1, 3), got {samples.shape}")
        self._add_chunk("acc_chunks", "ACC", session_id, t_arrival, device_ns, fs_hz, samples, packet_id)

    def acc_chunks(self, session_id: int) -> list[tuple[float, int, float, np.ndarray]]:
        """(arrival t, device ns of last sample, fs, samples (n, 3) mG int32) per frame, in device-time order."""
        return self._chunks("acc_chunks", session_id, 3)

    def add_marker(
        self,
        session_id: int,
        t: float,
        kind: str,
        label: str,
        *,
        phase_index: int | None = None,
        phase_name: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO markers(session_id, t, kind, phase_index, phase_name, label, detail_json)"
            " VALUES (?,?,?,?,?,?,?)",
            (session_id, t, kind, phase_index, phase_name, label, json.dumps(detail or {})),
        )

    def markers(self, session_id: int) -> list[Marker]:
        rows = self._db.execute(
            "SELECT t, kind, phase_index, phase_name, label, detail_json FROM markers WHERE session_id=?"
            " ORDER BY t, id",
            (session_id,),
        ).fetchall()
        return [Marker(t, k, pi, pn, lab, json.loads(d)) for t, k, pi, pn, lab, d in rows]

    def add_note(self, session_id: int, t: float, text: str) -> None:
        """A free-text experimenter note: sensitive, exported only when explicitly asked for."""
        self._begin()
        self._db.execute("INSERT INTO notes(session_id, t, text) VALUES (?,?,?)", (session_id, t, text))

    def notes(self, session_id: int) -> list[tuple[float, str]]:
        return list(self._db.execute("SELECT t, text FROM notes WHERE session_id=? ORDER BY t", (session_id,)))

    def add_link_event(self, session_id: int, t: float, device: str, state: str, reason: str = "") -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO link_events(session_id, t, device, state, reason) VALUES (?,?,?,?,?)",
            (session_id, t, device, state, reason),
        )

    def link_events(self, session_id: int) -> list[tuple[float, str, str, str]]:
        return list(
            self._db.execute(
                "SELECT t, device, state, reason FROM link_events WHERE session_id=? ORDER BY t, rowid",
                (session_id,),
            )
        )

    # -- Lab Streaming Layer inlets (raw: stamps on the sender's clock and values, exactly as pulled) ------------
    def add_lsl_stream(
        self, session_id: int, name: str, stype: str, source_id: str, channel_count: int, nominal_srate: float,
        info_xml: str, lsl_zero: float, rate: float,
    ) -> int:  # fmt: skip
        """Register a recorded LSL stream; `lsl_zero` is the local LSL time at session time 0 and `rate` the session
        seconds per LSL second (1 unless the session clock is simulated faster). Returns the stream's id."""
        self._begin()
        cur = self._db.execute(
            "INSERT INTO lsl_streams(session_id, name, type, source_id, channel_count, nominal_srate, info_xml,"
            " lsl_zero, rate) VALUES (?,?,?,?,?,?,?,?,?)",
            (session_id, name, stype, source_id, channel_count, nominal_srate, info_xml, lsl_zero, rate),
        )
        return int(cur.lastrowid)

    def add_lsl_chunk(
        self, stream_id: int, t_arrival: float, clock_offset: float, stamps: Sequence[float], values: Sequence
    ) -> None:
        """Store one pulled chunk as received: the sender's LSL stamps, the inlet's clock offset (sender → local LSL
        clock, `time_correction()`) and the samples (numbers or strings)."""
        self._begin()
        self._db.execute(
            "INSERT INTO lsl_chunks(stream_id, t_arrival, clock_offset, stamps, values_json) VALUES (?,?,?,?,?)",
            (stream_id, t_arrival, clock_offset, np.asarray(stamps, dtype="<f8").tobytes(), json.dumps(list(values))),
        )

    def lsl_streams(self, session_id: int) -> list[LslStream]:
        rows = self._db.execute(
            "SELECT id, name, type, source_id, channel_count, nominal_srate, info_xml, lsl_zero, rate"
            " FROM lsl_streams WHERE session_id=? ORDER BY id",
            (session_id,),
        ).fetchall()
        return [LslStream(*r) for r in rows]

    def lsl_samples(self, stream: LslStream) -> LslSamples:
        """A recorded stream's samples in arrival order, with their LSL stamps mapped onto the session clock."""
        stamps, offsets, values = [], [], []
        for blob, offset, vals in self._db.execute(
            "SELECT stamps, clock_offset, values_json FROM lsl_chunks WHERE stream_id=? ORDER BY rowid", (stream.id,)
        ):
            ts = np.frombuffer(blob, dtype="<f8")
            stamps.append(ts)
            offsets.append(np.full(len(ts), offset))
            values.extend(json.loads(vals))
        lsl = np.concatenate(stamps) if stamps else np.zeros(0)
        off = np.concatenate(offsets) if offsets else np.zeros(0)
        return LslSamples(lsl, lsl_session_time(lsl, off, stream.lsl_zero, stream.rate), values)

    def counts(self, session_id: int) -> dict[str, int]:
        out = {}
        for table in (
            "packets", "packet_errors", "beats", "ecg_chunks", "acc_chunks", "markers", "notes", "link_events"
        ):
            out[table] = self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE session_id=?", (session_id,)).fetchone()[
                0
            ]
        return out

    def add_private_text(self, participant_id: str, kind: str, text: str) -> None:
        """Store sensitive free text of a participant (for example their compassionate image description)."""
        pid = self.ensure_participant(participant_id)
        self._db.execute(
            "INSERT INTO private_texts(participant_id, kind, text, created_utc) VALUES (?,?,?,?)",
            (pid, kind, text, utc_now()),
        )
        self.flush()

    def private_texts(self, participant_id: str, kind: str | None = None) -> list[str]:
        query = "SELECT text FROM private_texts WHERE participant_id=?"
        args: Sequence[Any] = (participant_id,)
        if kind is not None:
            query += " AND kind=?"
            args = (participant_id, kind)
        return [r[0] for r in self._db.execute(query + " ORDER BY id", args)]

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for modules of this package that keep tables of their own."""
        return self._db


IMPORT_UNFINISHED = "the import stopped before it finished"


def _owner_alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that wrote a `running` session (this one or another on this machine) still exists."""
    return host == socket.gethostname() and pid is not None and (pid == os.getpid() or _pid_alive(pid))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry_busy(fn: Any, budget_s: float | None = None) -> Any:
    """Call `fn` until it does not fail with SQLITE_BUSY/LOCKED, for at most `budget_s` (WRITE_BUSY_BUDGET_S)."""
    deadline = time.monotonic() + (WRITE_BUSY_BUDGET_S if budget_s is None else budget_s)
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(BUSY_RETRY_SLEEP_S)


# -- schema 4: session UUIDs and the record of backups ----------------------------------------------------------
_LEGACY_UUID_NAMESPACE = uuidlib.UUID("5b1f6c1e-3c1a-4d8e-9a43-1d2f0c7b9e11")
_NEW_UUID_SQL = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2)"
    " || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-'"
    " || lower(hex(randomblob(6)))"
)
"""A random (version 4) UUID in SQL: every new session row gets one from a trigger, whoever inserts it."""


def legacy_session_uuid(session_id: int, participant_id: str, started_utc: str, device: str, protocol: str) -> str:
    """The UUID a session written before schema 4 is given: derived from what it is, so a read-only copy of an old
    store (a merge source) names its sessions exactly as that store will once it is upgraded."""
    name = f"{session_id}|{participant_id}|{started_utc}|{device}|{protocol}"
    return str(uuidlib.uuid5(_LEGACY_UUID_NAMESPACE, name))


def _migrate_uuids(db: sqlite3.Connection) -> None:
    """Schema 4: `sessions.uuid` (unique; older sessions get `legacy_session_uuid`, new ones a random UUID from a
    trigger) and the `backups` table `store backup` records into."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if "uuid" not in {r[1] for r in db.execute("PRAGMA table_info(sessions)")}:
            db.execute("ALTER TABLE sessions ADD COLUMN uuid TEXT")
        rows = db.execute(
            "SELECT id, participant_id, started_utc, device, protocol_name FROM sessions WHERE uuid IS NULL"
        ).fetchall()
        db.executemany("UPDATE sessions SET uuid=? WHERE id=?", [(legacy_session_uuid(*r), r[0]) for r in rows])
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS sessions_uuid ON sessions(uuid)")
        db.execute(
            "CREATE TRIGGER IF NOT EXISTS sessions_new_uuid AFTER INSERT ON sessions WHEN NEW.uuid IS NULL BEGIN"
            f" UPDATE sessions SET uuid={_NEW_UUID_SQL} WHERE id=NEW.id; END"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS backups (id INTEGER PRIMARY KEY, utc TEXT NOT NULL, by TEXT NOT NULL,"
            " path TEXT NOT NULL, bytes INTEGER NOT NULL, sessions INTEGER NOT NULL)"
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
