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

SCHEMA_VERSION = 1
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
    settings_json TEXT NOT NULL DEFAULT '{}'
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

SESSION_STATES = ("running", "completed", "stopped", "interrupted", "imported")


class StoreError(RuntimeError):
    """A store that cannot be opened or a request that names something not in it."""


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
        }


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


def _check_participant_id(participant_id: str) -> str:
    pid = participant_id.strip()
    if not pid or len(pid) > 32 or not all(c.isalnum() or c in "-_" for c in pid):
        raise StoreError(
            f"participant ID {participant_id!r} is not a pseudonymous code: use 1-32 letters, digits, '-' or '_' "
            "(for example P01), never a name"
        )
    return pid


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
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
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
    def ensure_participant(self, participant_id: str) -> str:
        pid = _check_participant_id(participant_id)
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
    ) -> int:
        pid = self.ensure_participant(participant_id)
        state = "running" if source == "live" else "imported"
        cur = self._db.execute(
            "INSERT INTO sessions(participant_id, group_id, protocol_name, protocol_json, device, source,"
            " started_utc, state, pid, host, settings_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
            ),
        )
        self.flush()
        return int(cur.lastrowid)

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

    def session(self, session_id: int) -> SessionInfo:
        row = self._db.execute(
            "SELECT id, participant_id, group_id, protocol_name, device, source, started_utc, ended_utc, state,"
            " settings_json FROM sessions WHERE id=?",
            (session_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no session {session_id} in {self.path}")
        return SessionInfo(*row[:9], settings=json.loads(row[9]))

    def sessions(self, participant_id: str | None = None) -> list[SessionInfo]:
        query = "SELECT id FROM sessions"
        args: tuple[Any, ...] = ()
        if participant_id is not None:
            query += " WHERE participant_id=?"
            args = (participant_id,)
        return [self.session(r[0]) for r in self._db.execute(query + " ORDER BY id", args).fetchall()]

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
