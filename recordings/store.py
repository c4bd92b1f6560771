"""The crash-safe store: one SQLite file in WAL mode holding participants, sessions and everything recorded.

Raw notifications are kept exactly as received (bytes, characteristic UUID, arrival time on the session clock), so a
decoder bug can be fixed and a session re-decoded. Writes are buffered in memory and committed by `flush()`; the live
session flushes at least every 0.5 s, so a killed process loses at most the last half second. When a store is opened,
sessions still marked `running` whose recording process is gone are marked `interrupted`: everything committed stays
readable and analysable.

The file and its directory are created private to the user (0600 / 0700); SQLite gives the WAL and shared-memory
files the same permissions as the database file.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

SCHEMA_VERSION = 2
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
"""

SESSION_STATES = ("running", "completed", "stopped", "interrupted", "imported")
RECORDED_SOURCES = ("live", "simulated", "replay-copy")
"""Sources of sessions recorded by this program; every other session is `imported-<format>`."""
IMPORTED_PREFIX = "imported-"
SOURCE_CHOICES = ("live", "simulated", "replay-copy", "imported")
"""What a source filter accepts; `imported` is every `imported-*` source."""
_LEGACY_SOURCES = {"capture": "imported-capture", "rr": "imported-rr", "polar-sensor-logger": "imported-polar"}
"""Sources written before schema 2, and what they are called now."""
SESSION_TABLES = ("packet_errors", "beats", "heart_rate", "ecg_chunks", "acc_chunks", "markers", "notes",
                  "link_events", "packets")  # fmt: skip
"""Tables holding a session's data (deleted with it, children before `packets`)."""
PARTICIPANT_PATTERN_ENV = "CMT_PARTICIPANT_PATTERN"
PARTICIPANT_RULE = (
    "a participant code is 1-32 ASCII letters, digits, '-' or '_' and contains a digit (P01, "
    f"cmt-07), or matches the lab's pattern in ${PARTICIPANT_PATTERN_ENV}; never a name"
)


class StoreError(RuntimeError):
    """A store that cannot be opened or a request that names something not in it."""


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
    """One SQLite store. Not thread-safe: use it from the thread (the asyncio loop) that opened it."""

    def __init__(self, path: Path | str | None = None, *, recover: bool = True) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        _create_private_file(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
            self._db.executescript(_SCHEMA)
            _migrate(self._db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a recorder store or damaged ({exc})") from exc
        self._in_tx = False
        self._atomic = False
        if recover:
            self.recover_interrupted()

    # -- transactions -----------------------------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def flush(self) -> None:
        """Commit everything written since the last flush (the durability point).

        Inside `transaction()` this waits for the transaction's end, so an import stays all-or-nothing.
        """
        if self._in_tx and not self._atomic:
            self._db.execute("COMMIT")
            self._in_tx = False

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing: everything written inside is committed at the end, or nothing is (on an exception)."""
        if self._atomic:
            raise StoreError("transactions do not nest")
        self.flush()
        self._begin()
        self._atomic = True
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._in_tx = False
            raise
        finally:
            self._atomic = False
        self.flush()

    def close(self) -> None:
        self.flush()
        self._db.close()

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
        week: int | None = None,
    ) -> int:
        """A new session. Its study week is `week`, else the `week` setting, else (for a recording, not an import)
        the participant's next week among sessions of the same source (`next_week`)."""
        pid = self.ensure_participant(participant_id)
        source = normalise_source(source)
        recorded = source in RECORDED_SOURCES
        state = "running" if recorded else "imported"
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

    def end_session(self, session_id: int, state: str = "completed") -> None:
        if state not in SESSION_STATES:
            raise ValueError(f"unknown session state {state!r}")
        self._begin()
        self._db.execute("UPDATE sessions SET state=?, ended_utc=? WHERE id=?", (state, utc_now(), session_id))
        self.flush()

    def recover_interrupted(self) -> list[int]:
        """Mark sessions left `running` by a process that no longer exists as `interrupted`."""
        host = socket.gethostname()
        found = []
        for sid, pid, shost in self._db.execute("SELECT id, pid, host FROM sessions WHERE state='running'").fetchall():
            if shost == host and pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue  # still being recorded, by this process or another one on this machine
            found.append(sid)
        for sid in found:
            self._db.execute("UPDATE sessions SET state='interrupted' WHERE id=?", (sid,))
        return found

    _SESSION_COLUMNS = (
        "SELECT s.id, s.participant_id, s.group_id, s.protocol_name, s.device, s.source, s.started_utc, s.ended_utc,"
        " s.state, s.settings_json, s.week, x.reason FROM sessions s"
        " LEFT JOIN exclusions x ON x.kind='session' AND x.object_id=s.id"
    )

    @staticmethod
    def _session_info(row: Sequence[Any]) -> SessionInfo:
        return SessionInfo(*row[:9], settings=json.loads(row[9]), week=row[10], excluded=row[11])

    def session(self, session_id: int) -> SessionInfo:
        row = self._db.execute(self._SESSION_COLUMNS + " WHERE s.id=?", (session_id,)).fetchone()
        if row is None:
            raise StoreError(f"no session {session_id} in {self.path}")
        return self._session_info(row)

    def sessions(self, participant_id: str | None = None) -> list[SessionInfo]:
        query = self._SESSION_COLUMNS
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
            for table in SESSION_TABLES:
                self._db.execute(f"DELETE FROM {table} WHERE session_id=?", (session_id,))
            self._db.execute("DELETE FROM exclusions WHERE kind='session' AND object_id=?", (session_id,))
            try:
                self._db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
            except sqlite3.IntegrityError as exc:  # a table this version does not know still refers to it
                raise StoreError(f"session {session_id} cannot be deleted: {exc}") from None
            self.audit("delete", "session", session_id, by=by, participant_id=info.participant_id, reason=reason,
                       detail=detail)  # fmt: skip
        return detail

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
        for row in self._db.execute(query + " ORDER BY id", args):
            yield StoredPacket(row[0], row[1], row[2], bytes(row[3]), row[4])

    def packet_errors(self, session_id: int) -> list[tuple[int, str]]:
        return list(
            self._db.execute(
                "SELECT packet_id, error FROM packet_errors WHERE session_id=? ORDER BY packet_id",
                (session_id,),
            )
        )

    def add_beats(self, session_id: int, rows: Iterable[tuple[float, float, bool, float, int | None]]) -> None:
        """Rows of (t, rr_ms, gap_before, arrival_lag_s, packet_id)."""
        self._begin()
        self._db.executemany(
            "INSERT INTO beats(session_id, t, rr_ms, gap_before, arrival_lag_s, packet_id) VALUES (?,?,?,?,?,?)",
            [(session_id, t, rr, int(gap), lag, pid) for t, rr, gap, lag, pid in rows],
        )

    def clear_decoded(self, session_id: int) -> None:
        """Drop the decoded layer of a session (before re-decoding it from its raw packets)."""
        self._begin()
        for table in ("beats", "heart_rate", "ecg_chunks", "acc_chunks", "packet_errors"):
            self._db.execute(f"DELETE FROM {table} WHERE session_id=?", (session_id,))

    def beats(self, session_id: int) -> Beats:
        rows = self._db.execute(
            "SELECT t, rr_ms, gap_before, arrival_lag_s FROM beats WHERE session_id=? ORDER BY t, rowid",
            (session_id,),
        ).fetchall()
        arr = np.array(rows, dtype=float).reshape(-1, 4)
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
