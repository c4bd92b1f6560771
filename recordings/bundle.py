"""Session bundles (`export --format bundle`, `import bundle`) and `store merge`: sessions moved between stores whole.

A bundle is one zip file holding `manifest.json` (format, version, the session row, its participant, its exclusion)
and one JSON Lines member per table (`packets.jsonl`, `beats.jsonl`, ...), one JSON array of the table's columns per
row, in stored order; bytes are base64. It carries everything recorded in the session: the protocol as run, markers,
link events, raw packets (bytes exact), decoded beats and stretches, heart rate, ECG and ACC chunks, LSL-in streams
and chunks, the answer sets linked to the session (with their instrument definitions and edit trail), start time,
source, week and state. Free text (notes, free-text answers and their edits, typed manual-marker labels) is in it only
with `include_text`. Floats are written with Python's shortest exact repr, so every value reads back identical.

Reading a bundle trusts nothing: member sizes are capped, every row is checked against the column types declared
here (integers within 64 bits, finite floats, JSON text that parses, base64 bytes whose length fits the samples),
references (packet ids, stream ids, answer set ids) must point inside the bundle, and the whole bundle is parsed and
checked before the store is touched; any problem is one `BundleError` line and the store is unchanged.

Every session has a UUID (`sessions.uuid`, schema 4): importing a bundle whose session is already in the store is
refused, and `merge_store` skips sessions the store already has. Rows get new local ids (packets, streams, answer
sets); participants are matched by their code.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid as uuidlib
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .answers import AnswerStore, _redact
from .files import open_private_for_write
from .import_formats import ImportFormatError
from .privacy import exportable_label, fixed_labels
from .store import SESSION_STATES, Store, StoreError, check_participant_code, legacy_session_uuid, normalise_source

FORMAT = "cmt-session-bundle"
VERSION = 1
MAX_MEMBER_BYTES = 1 << 31
"""A member that inflates beyond this is refused (a zip bomb or not a bundle)."""
MAX_LINE_BYTES = 64 << 20
INT64 = 1 << 63

# Column types: i int64, f finite float, s text, j JSON text, b bytes (base64 in the file); "?" allows null.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "packets": (("id", "i"), ("t", "f"), ("uuid", "s"), ("data", "b"), ("device", "s")),
    "packet_errors": (("packet_id", "i"), ("error", "s")),
    "beats": (("t", "f"), ("rr_ms", "f"), ("gap_before", "i"), ("arrival_lag_s", "f"), ("packet_id", "i?")),
    "beat_stretches": (("idx", "i"), ("reason", "s"), ("t_first", "f"), ("t_last", "f"), ("n_beats", "i"),
                       ("n_notifications", "i"), ("drift_ppm", "f?"), ("anchor_delay_s", "f"),
                       ("median_delay_s", "f")),
    "heart_rate": (("t", "f"), ("hr_bpm", "i"), ("contact", "s")),
    "ecg_chunks": (("t_arrival", "f"), ("device_ns", "i"), ("fs_hz", "f"), ("n", "i"), ("samples", "b"),
                   ("packet_id", "i?")),
    "acc_chunks": (("t_arrival", "f"), ("device_ns", "i"), ("fs_hz", "f"), ("n", "i"), ("samples", "b"),
                   ("packet_id", "i?")),
    "markers": (("t", "f"), ("kind", "s"), ("phase_index", "i?"), ("phase_name", "s?"), ("label", "s"),
                ("detail_json", "j")),
    "notes": (("t", "f"), ("text", "s")),
    "link_events": (("t", "f"), ("device", "s"), ("state", "s"), ("reason", "s")),
    "lsl_streams": (("id", "i"), ("name", "s"), ("type", "s"), ("source_id", "s"), ("channel_count", "i"),
                    ("nominal_srate", "f"), ("info_xml", "s"), ("lsl_zero", "f"), ("rate", "f")),
    "lsl_chunks": (("stream_id", "i"), ("t_arrival", "f"), ("clock_offset", "f"), ("stamps", "b"),
                   ("values_json", "j")),
    "review_edits": (("id", "i"), ("utc", "s"), ("reviewer", "s"), ("action", "s"), ("t", "f?"), ("t_end", "f?"),
                     ("kind", "s?"), ("reason", "s"), ("undoes", "i?")),
    "instrument_defs": (("name", "s"), ("version", "s"), ("toml", "s"), ("stored_utc", "s")),
    "answer_sets": (("id", "i"), ("instrument", "s"), ("instrument_version", "s"), ("time_point", "s"),
                    ("week", "i?"), ("answered_utc", "s"), ("entered_by", "s"), ("source", "s")),
    "answer_values": (("set_id", "i"), ("item_id", "s"), ("value", "f?")),
    "answer_texts": (("set_id", "i"), ("field_id", "s"), ("text", "s")),
    "answer_edits": (("set_id", "i"), ("field", "s"), ("old_json", "j"), ("new_json", "j"), ("edited_by", "s"),
                     ("edited_utc", "s"), ("reason", "s")),
    "answer_exclusions": (("set_id", "i"), ("reason", "s"), ("excluded_by", "s"), ("excluded_utc", "s")),
}  # fmt: skip
SESSION_TABLES = ("packets", "packet_errors", "beats", "beat_stretches", "heart_rate", "ecg_chunks", "acc_chunks",
                  "markers", "notes", "link_events", "lsl_streams", "lsl_chunks", "review_edits")  # fmt: skip
ANSWER_TABLES = ("instrument_defs", "answer_sets", "answer_values", "answer_texts", "answer_edits",
                 "answer_exclusions")  # fmt: skip
SESSION_FIELDS: tuple[tuple[str, str], ...] = (
    ("uuid", "s"), ("participant_id", "s"), ("group_id", "s?"), ("protocol_name", "s"), ("protocol_json", "j"),
    ("device", "s"), ("source", "s"), ("started_utc", "s"), ("ended_utc", "s?"), ("state", "s"), ("host", "s?"),
    ("settings_json", "j"), ("week", "i?"), ("end_reason", "s?"),
)  # fmt: skip
PARTICIPANT_FIELDS = (("id", "s"), ("created_utc", "s"), ("resonance_rate_bpm", "f?"))
EXCLUSION_FIELDS = (("reason", "s"), ("excluded_by", "s"), ("excluded_utc", "s"))
_BYTES_PER_SAMPLE = {"ecg_chunks": 4, "acc_chunks": 12}


class BundleError(ImportFormatError):
    """A bundle that cannot be read or imported (one line: which file, what is wrong)."""


class DuplicateSessionError(StoreError):
    """The session of a bundle is already in the store (same UUID)."""


@dataclass
class SessionData:
    """One session and everything recorded in it, with the ids of the store it came from."""

    session: dict[str, Any]
    participant: dict[str, Any]
    exclusion: dict[str, Any] | None
    rows: dict[str, list[list[Any]]] = field(default_factory=dict)
    include_text: bool = False


# -- reading a session out of a store ------------------------------------------------------------------------------


def _tables(db: Any) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()}


def _columns(db: Any, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()}


def _select(db: Any, table: str, cols: tuple[tuple[str, str], ...], have: set[str]) -> str:
    present = _columns(db, table) if table in have else set()
    return ", ".join(name if name in present else "NULL" for name, _t in cols)


def session_uuids(db: Any) -> dict[int, str]:
    """Session id → UUID of a store (a store older than schema 4, opened read-only, gets `legacy_session_uuid`)."""
    if "uuid" in _columns(db, "sessions"):
        rows = db.execute("SELECT id, uuid, participant_id, started_utc, device, protocol_name FROM sessions")
    else:
        rows = db.execute("SELECT id, NULL, participant_id, started_utc, device, protocol_name FROM sessions")
    return {r[0]: r[1] or legacy_session_uuid(r[0], *r[2:]) for r in rows.fetchall()}


def read_session(store: Store, session_id: int, *, include_text: bool = False) -> SessionData:
    """Everything of one session (and its answer sets) as rows; free text only with `include_text`."""
    db = store.connection
    info = store.session(session_id)  # the state as shown (a dead recorder's `running` session is `interrupted`)
    if info.state in ("running", "importing"):
        raise StoreError(f"session {session_id} is still {info.state}; wait until it has ended")
    have = _tables(db)
    cols = _select(db, "sessions", SESSION_FIELDS[1:], have)
    row = db.execute(f"SELECT {cols} FROM sessions WHERE id=?", (session_id,)).fetchone()
    session = dict(zip([n for n, _t in SESSION_FIELDS[1:]], row, strict=True))
    session["uuid"] = session_uuids(db)[session_id]
    session["state"] = info.state
    prow = db.execute("SELECT id, created_utc, resonance_rate_bpm FROM participants WHERE id=?",
                      (info.participant_id,)).fetchone()  # fmt: skip
    participant = dict(zip([n for n, _t in PARTICIPANT_FIELDS], prow, strict=True))
    xrow = db.execute("SELECT reason, excluded_by, excluded_utc FROM exclusions WHERE kind='session' AND object_id=?",
                      (session_id,)).fetchone()  # fmt: skip
    exclusion = None if xrow is None else dict(zip([n for n, _t in EXCLUSION_FIELDS], xrow, strict=True))
    data = SessionData(session, participant, exclusion, include_text=include_text)
    for table in SESSION_TABLES:
        if table == "notes" and not include_text:
            data.rows[table] = []
            continue
        if table not in have:
            data.rows[table] = []
            continue
        sel = _select(db, table, TABLES[table], have)
        if table == "lsl_chunks":
            where = "stream_id IN (SELECT id FROM lsl_streams WHERE session_id=?)"
        else:
            where = "session_id=?"
        data.rows[table] = [list(r) for r in db.execute(f"SELECT {sel} FROM {table} WHERE {where} ORDER BY rowid",
                                                         (session_id,)).fetchall()]  # fmt: skip
    if not include_text:
        fixed = fixed_labels(json.loads(session["protocol_json"]))
        for r in data.rows["markers"]:
            r[4] = exportable_label(r[1], r[4], fixed, False)
        for r in data.rows["review_edits"]:
            r[7] = ""  # a reviewer's reason is free text
    data.rows.update(read_answers(db, "session_id=?", (session_id,), include_text=include_text))
    return data


def read_answers(db: Any, where: str, args: tuple[Any, ...], *, include_text: bool) -> dict[str, list[list[Any]]]:
    """The answer sets matching `where` (on `answer_sets`) with their values, texts, edits, exclusions, instruments."""
    have = _tables(db)
    out: dict[str, list[list[Any]]] = {t: [] for t in ANSWER_TABLES}
    if "answer_sets" not in have:
        return out
    sets = db.execute(f"SELECT {_select(db, 'answer_sets', TABLES['answer_sets'], have)}, participant_id, session_id"
                      f" FROM answer_sets WHERE {where} ORDER BY id", args).fetchall()  # fmt: skip
    ids = [r[0] for r in sets]
    out["answer_sets"] = [list(r) for r in sets]  # two extra columns: participant, session (used by a merge)
    marks = ",".join("?" * len(ids))
    if not ids:
        return out

    def rows(table: str, sql_where: str) -> list[list[Any]]:
        if table not in have:
            return []
        sel = _select(db, table, TABLES[table], have)
        return [list(r) for r in db.execute(f"SELECT {sel} FROM {table} WHERE {sql_where} ORDER BY rowid",
                                            ids).fetchall()]  # fmt: skip

    out["answer_values"] = rows("answer_values", f"set_id IN ({marks})")
    out["answer_texts"] = rows("answer_texts", f"set_id IN ({marks})") if include_text else []
    edits = rows("answer_edits", f"set_id IN ({marks})")
    if not include_text:
        for r in edits:
            if str(r[1]).startswith("text:"):
                r[2], r[3] = json.dumps(_redact(json.loads(r[2]))), json.dumps(_redact(json.loads(r[3])))
    out["answer_edits"] = edits
    out["answer_exclusions"] = [list(r) for r in db.execute(
        f"SELECT object_id, reason, excluded_by, excluded_utc FROM exclusions WHERE kind='answer_set' AND object_id IN"
        f" ({marks}) ORDER BY object_id", ids).fetchall()]  # fmt: skip
    if "instrument_defs" in have:
        pairs = sorted({(r[1], r[2]) for r in sets})
        out["instrument_defs"] = [list(r) for name, version in pairs for r in db.execute(
            "SELECT name, version, toml, stored_utc FROM instrument_defs WHERE name=? AND version=?",
            (name, version)).fetchall()]  # fmt: skip
    return out


# -- the bundle file -----------------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes | memoryview) else value


def write_bundle(data: SessionData, path: Path, *, overwrite: bool = False) -> Path:
    """Write `data` as a bundle at `path` (private, atomic: a partial file never has the name)."""
    manifest = {
        "format": FORMAT, "version": VERSION, "include_text": data.include_text, "session": data.session,
        "participant": data.participant, "exclusion": data.exclusion,
        "tables": {t: len(data.rows.get(t, [])) for t in TABLES},
    }  # fmt: skip
    with (open_private_for_write(path, overwrite=overwrite, binary=True) as fh,
          zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf):
            zf.writestr("manifest.json", json.dumps(manifest, indent=1, allow_nan=False))
            for table in TABLES:
                width = len(TABLES[table])
                with zf.open(f"{table}.jsonl", "w", force_zip64=True) as member:
                    for row in data.rows.get(table, []):
                        line = json.dumps([_encode(v) for v in row[:width]], separators=(",", ":"), allow_nan=False)
                        member.write(line.encode("utf-8") + b"\n")
    return Path(path)


def export_bundle(store: Store, session_id: int, out_dir: Path, *, include_text: bool = False,
                  overwrite: bool = False) -> Path:  # fmt: skip
    """Write one session's bundle into `out_dir` as `sub-<code>_session-<id>_bundle.zip`."""
    data = read_session(store, session_id, include_text=include_text)
    path = Path(out_dir) / f"sub-{data.participant['id']}_session-{session_id}_bundle.zip"
    return write_bundle(data, path, overwrite=overwrite)


def _check(value: Any, kind: str, where: str) -> Any:
    """`value` if it has the column type `kind` (as described at TABLES), bytes decoded; else BundleError."""
    if value is None:
        if kind.endswith("?"):
            return None
        raise BundleError(f"{where}: missing value")
    base = kind.rstrip("?")
    if base == "i":
        if isinstance(value, bool) or not isinstance(value, int) or not -INT64 <= value < INT64:
            raise BundleError(f"{where}: expected a whole number within 64 bits, got {_short(value)}")
        return value
    if base == "f":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BundleError(f"{where}: expected a number, got {_short(value)}")
        if isinstance(value, int) and not -INT64 <= value < INT64:
            raise BundleError(f"{where}: number out of range: {_short(value)}")
        if not math.isfinite(value):
            raise BundleError(f"{where}: number is not finite")
        return float(value)
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected text, got {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"{where}: text that is not valid Unicode") from None
    if base == "j":
        try:
            json.loads(value)
        except (ValueError, RecursionError):
            raise BundleError(f"{where}: not JSON text") from None
    if base == "b":
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise BundleError(f"{where}: not base64 bytes") from None
    return value


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit int"
    return text if len(text) <= 40 else text[:37] + "..."


def _record(obj: Any, fields: tuple[tuple[str, str], ...], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BundleError(f"{where}: expected an object")
    missing = [n for n, _k in fields if n not in obj]
    if missing:
        raise BundleError(f"{where}: missing {', '.join(missing)}")
    return {n: _check(obj[n], k, f"{where}.{n}") for n, k in fields}


def _member_lines(zf: zipfile.ZipFile, name: str, src: str) -> Iterator[tuple[int, bytes]]:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise BundleError(f"{src}: no {name} in it (not a session bundle, or damaged)") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise BundleError(f"{src}: {name} is too large ({info.file_size} bytes)")
    total = 0
    with zf.open(info) as fh:
        lineno = 0
        while line := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            total += len(line)
            if total > MAX_MEMBER_BYTES or len(line) > MAX_LINE_BYTES:
                raise BundleError(f"{src}: {name} inflates beyond its limit (not a session bundle)")
            yield lineno, line


def read_bundle(path: Path) -> SessionData:
    """Parse and check a whole bundle (see the module docstring); raises BundleError with one line."""
    src = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _read(zf, src)
    except BundleError:
        raise
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise BundleError(f"{src}: not a readable session bundle (damaged or truncated: {exc})") from None
    except (UnicodeDecodeError, RecursionError, MemoryError) as exc:
        raise BundleError(f"{src}: not a session bundle ({type(exc).__name__})") from None
    except ValueError as exc:  # e.g. an int of too many digits
        raise BundleError(f"{src}: not a session bundle ({exc})") from None


def _read(zf: zipfile.ZipFile, src: str) -> SessionData:
    raw = b"".join(line for _n, line in _member_lines(zf, "manifest.json", src))
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{src}: manifest.json is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{src}: not a session bundle (manifest format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{src}: bundle version {_short(manifest.get('version'))}; this program reads {VERSION}")
    session = _record(manifest.get("session"), SESSION_FIELDS, f"{src}: session")
    participant = _record(manifest.get("participant"), PARTICIPANT_FIELDS, f"{src}: participant")
    exclusion = manifest.get("exclusion")
    exclusion = None if exclusion is None else _record(exclusion, EXCLUSION_FIELDS, f"{src}: exclusion")
    _check_session(session, participant, src)
    data = SessionData(session, participant, exclusion, include_text=manifest.get("include_text") is True)
    for table, cols in TABLES.items():
        out = data.rows[table] = []
        for lineno, line in _member_lines(zf, f"{table}.jsonl", src):
            where = f"{src}: {table}.jsonl line {lineno}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BundleError(f"{where}: not JSON ({exc})") from None
            except RecursionError:
                raise BundleError(f"{where}: not JSON (nested too deep)") from None
            if not isinstance(row, list) or len(row) != len(cols):
                raise BundleError(f"{where}: expected a list of {len(cols)} values")
            out.append([_check(v, k, f"{where}: {n}") for v, (n, k) in zip(row, cols, strict=True)])
    _check_references(data, src)
    return data


def _check_session(session: dict[str, Any], participant: dict[str, Any], src: str) -> None:
    try:
        session["uuid"] = str(uuidlib.UUID(session["uuid"]))
        check_participant_code(participant["id"])
        session["source"] = normalise_source(session["source"])
    except (ValueError, StoreError) as exc:
        raise BundleError(f"{src}: {exc}") from None
    if session["participant_id"] != participant["id"]:
        raise BundleError(f"{src}: the session's participant is not the bundle's participant")
    if session["state"] not in SESSION_STATES or session["state"] in ("running", "importing"):
        raise BundleError(f"{src}: session state {session['state']!r} cannot be imported")
    if session["week"] is not None and session["week"] < 1:
        raise BundleError(f"{src}: study week {session['week']} is not ≥ 1")
    for key in ("protocol_json", "settings_json"):
        if not isinstance(json.loads(session[key]), dict):
            raise BundleError(f"{src}: session {key} is not a JSON object")


def _check_references(data: SessionData, src: str) -> None:
    rows = data.rows
    packets = {r[0] for r in rows["packets"]}
    if len(packets) != len(rows["packets"]):
        raise BundleError(f"{src}: packets.jsonl repeats a packet id")
    for table, col in (("packet_errors", 0), ("beats", 4), ("ecg_chunks", 5), ("acc_chunks", 5)):
        for i, r in enumerate(rows[table], start=1):
            if r[col] is not None and r[col] not in packets:
                raise BundleError(f"{src}: {table}.jsonl line {i}: packet {r[col]} is not in the bundle")
    last = -math.inf
    for i, r in enumerate(rows["beats"], start=1):
        if not (r[0] > last and r[1] > 0):
            raise BundleError(f"{src}: beats.jsonl line {i}: beat times must increase and RR be > 0")
        last = r[0]
    for table, width in _BYTES_PER_SAMPLE.items():
        for i, r in enumerate(rows[table], start=1):
            if r[3] < 0 or len(r[4]) != r[3] * width:
                raise BundleError(f"{src}: {table}.jsonl line {i}: {r[3]} samples do not match {len(r[4])} bytes")
            if not r[2] > 0:
                raise BundleError(f"{src}: {table}.jsonl line {i}: sampling rate {r[2]} is not > 0")
    for i, r in enumerate(rows["markers"], start=1):
        if not isinstance(json.loads(r[5]), dict):
            raise BundleError(f"{src}: markers.jsonl line {i}: detail is not a JSON object")
    for i, r in enumerate(rows["lsl_chunks"], start=1):
        values = json.loads(r[4])
        if not isinstance(values, list) or len(values) * 8 != len(r[3]):
            raise BundleError(f"{src}: lsl_chunks.jsonl line {i}: values do not match the stamps")
    streams = {r[0] for r in rows["lsl_streams"]}
    for i, r in enumerate(rows["lsl_chunks"], start=1):
        if r[0] not in streams or len(r[3]) % 8:
            raise BundleError(f"{src}: lsl_chunks.jsonl line {i}: unknown stream or stamps not 8-byte floats")
    seen: set[int] = set()
    for i, r in enumerate(rows["review_edits"], start=1):
        if r[0] in seen or (r[8] is not None and r[8] not in seen):
            raise BundleError(f"{src}: review_edits.jsonl line {i}: repeats an edit id or undoes an edit not before it")
        seen.add(r[0])
    sets = {r[0] for r in rows["answer_sets"]}
    for table in ("answer_values", "answer_texts", "answer_edits", "answer_exclusions"):
        for i, r in enumerate(rows[table], start=1):
            if r[0] not in sets:
                raise BundleError(f"{src}: {table}.jsonl line {i}: answer set {r[0]} is not in the bundle")
    defs = {(r[0], r[1]) for r in rows["instrument_defs"]}
    for i, r in enumerate(rows["answer_sets"], start=1):
        if (r[1], r[2]) not in defs:
            raise BundleError(f"{src}: answer_sets.jsonl line {i}: instrument {r[1]} {r[2]} is not in the bundle")


# -- writing sessions into a store ---------------------------------------------------------------------------------


def local_session(store: Store, session_uuid: str) -> int | None:
    row = store.connection.execute("SELECT id FROM sessions WHERE uuid=?", (session_uuid,)).fetchone()
    return None if row is None else int(row[0])


def _ensure_participant(store: Store, participant: dict[str, Any]) -> bool:
    """Add the participant (matched by code) if the store does not have them; True when added."""
    db = store.connection
    if db.execute("SELECT 1 FROM participants WHERE id=?", (participant["id"],)).fetchone():
        if participant.get("resonance_rate_bpm") is not None:
            db.execute("UPDATE participants SET resonance_rate_bpm=? WHERE id=? AND resonance_rate_bpm IS NULL",
                       (participant["resonance_rate_bpm"], participant["id"]))  # fmt: skip
        return False
    db.execute("INSERT INTO participants(id, created_utc, resonance_rate_bpm) VALUES (?,?,?)",
               (participant["id"], participant["created_utc"], participant.get("resonance_rate_bpm")))  # fmt: skip
    return True


def _insert(store: Store, table: str, cols: list[str], rows: list[list[Any]]) -> None:
    if rows:
        store.connection.executemany(
            f"INSERT INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows
        )


def insert_session(store: Store, data: SessionData, *, by: str, origin: str) -> int:
    """Write one session (inside the caller's `store.transaction()`) with new local ids; returns its id.

    Its answer sets are written with it (see `insert_answers`). Raises DuplicateSessionError if its UUID is here.
    """
    s = data.session
    existing = local_session(store, s["uuid"])
    if existing is not None:
        raise DuplicateSessionError(f"session {s['uuid']} is already in {store.path} as session {existing}; "
                                    "not importing it twice")  # fmt: skip
    db = store.connection
    _ensure_participant(store, data.participant)
    names = [n for n, _k in SESSION_FIELDS]
    cur = db.execute(f"INSERT INTO sessions({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     [s[n] for n in names])  # fmt: skip
    sid = int(cur.lastrowid)
    if data.exclusion is not None:
        x = data.exclusion
        db.execute("INSERT INTO exclusions(kind, object_id, reason, excluded_by, excluded_utc) VALUES"
                   " ('session',?,?,?,?)", (sid, x["reason"], x["excluded_by"], x["excluded_utc"]))  # fmt: skip
    packet_ids: dict[int, int] = {}
    for row in data.rows["packets"]:
        cur = db.execute("INSERT INTO packets(session_id, t, uuid, data, device) VALUES (?,?,?,?,?)",
                         (sid, *row[1:]))  # fmt: skip
        packet_ids[row[0]] = int(cur.lastrowid)

    def pid(value: int | None) -> int | None:
        return None if value is None else packet_ids[value]

    rows = data.rows
    _insert(store, "packet_errors", ["packet_id", "session_id", "error"],
            [[pid(r[0]), sid, r[1]] for r in rows["packet_errors"]])  # fmt: skip
    for table in ("beats", "ecg_chunks", "acc_chunks"):
        cols = [n for n, _k in TABLES[table]]
        _insert(store, table, ["session_id", *cols], [[sid, *r[:-1], pid(r[-1])] for r in rows[table]])
    for table in ("beat_stretches", "heart_rate", "markers", "notes", "link_events"):
        cols = [n for n, _k in TABLES[table]]
        _insert(store, table, ["session_id", *cols], [[sid, *r] for r in rows[table]])
    stream_ids: dict[int, int] = {}
    for row in rows["lsl_streams"]:
        cols = [n for n, _k in TABLES["lsl_streams"][1:]]
        marks = ", ".join("?" * (len(cols) + 1))
        cur = db.execute(f"INSERT INTO lsl_streams(session_id, {', '.join(cols)}) VALUES ({marks})", (sid, *row[1:]))
        stream_ids[row[0]] = int(cur.lastrowid)
    _insert(store, "lsl_chunks", [n for n, _k in TABLES["lsl_chunks"]],
            [[stream_ids[r[0]], *r[1:]] for r in rows["lsl_chunks"]])  # fmt: skip
    edit_ids: dict[int, int] = {}
    for row in rows["review_edits"]:  # in order: an undo follows the edit it undoes
        cols = [n for n, _k in TABLES["review_edits"][1:]]
        values = [*row[1:-1], None if row[-1] is None else edit_ids[row[-1]]]
        cur = db.execute(f"INSERT INTO review_edits(session_id, {', '.join(cols)}) VALUES "
                         f"({', '.join('?' * (len(cols) + 1))})", (sid, *values))  # fmt: skip
        edit_ids[row[0]] = int(cur.lastrowid)
    for r in rows["answer_sets"]:
        del r[len(TABLES["answer_sets"]):]  # a bundle's answer sets all belong to its session and participant
        r += [data.participant["id"], s["uuid"]]
    insert_answers(store, rows, {s["uuid"]: sid}, by=by, notes=None)
    store.audit("import", "session", sid, by=by, participant_id=data.participant["id"],
                detail={"uuid": s["uuid"], "from": origin})  # fmt: skip
    return sid


def insert_answers(
    store: Store, rows: dict[str, list[list[Any]]], sessions: dict[Any, int], *, by: str, notes: list[str] | None
) -> int:
    """Write answer sets (each row ends with participant code and session key, looked up in `sessions`) with new
    ids. One already in the store (same participant, instrument, time point) is skipped with a note when `notes` is
    given, else refused. Returns how many were written."""
    db = store.connection
    width = len(TABLES["answer_sets"])
    for name, version, toml, stored in rows["instrument_defs"]:
        here = db.execute("SELECT toml FROM instrument_defs WHERE name=? AND version=?", (name, version)).fetchone()
        if here is None:
            db.execute("INSERT INTO instrument_defs(name, version, toml, stored_utc) VALUES (?,?,?,?)",
                       (name, version, toml, stored))  # fmt: skip
        elif here[0] != toml:
            raise StoreError(f"instrument {name} version {version} differs from the one in {store.path}; "
                             "a changed instrument needs a new version")  # fmt: skip
    set_ids: dict[int, int] = {}
    for r in rows["answer_sets"]:
        old, participant, session_key = r[0], r[width], r[width + 1]
        instrument, time_point = r[1], r[3]
        here = db.execute("SELECT id FROM answer_sets WHERE participant_id=? AND instrument=? AND time_point=?",
                          (participant, instrument, time_point)).fetchone()  # fmt: skip
        if here is not None:
            message = (f"answer set {old} ({participant}, {instrument}, {time_point}): already in the store as "
                       f"answer set {here[0]}")  # fmt: skip
            if notes is None:
                raise StoreError(message + "; not importing it twice")
            notes.append(message)
            continue
        cur = db.execute(
            "INSERT INTO answer_sets(participant_id, instrument, instrument_version, time_point, week, session_id,"
            " answered_utc, entered_by, source) VALUES (?,?,?,?,?,?,?,?,?)",
            (participant, instrument, r[2], time_point, r[4], sessions.get(session_key), r[5], r[6], r[7]),
        )
        set_ids[old] = int(cur.lastrowid)
    for table, cols in (("answer_values", "set_id, item_id, value"), ("answer_texts", "set_id, field_id, text"),
                        ("answer_edits", "set_id, field, old_json, new_json, edited_by, edited_utc, reason")):
        _insert(store, table, cols.split(", "), [[set_ids[r[0]], *r[1:]] for r in rows[table] if r[0] in set_ids])
    for r in rows["answer_exclusions"]:
        if r[0] in set_ids:
            db.execute("INSERT INTO exclusions(kind, object_id, reason, excluded_by, excluded_utc) VALUES"
                       " ('answer_set',?,?,?,?)", (set_ids[r[0]], *r[1:]))  # fmt: skip
    return len(set_ids)


def import_bundle(store: Store, path: Path, *, by: str) -> int:
    """Import a bundle as a new session (all or nothing); refused when its session is already in the store."""
    data = read_bundle(Path(path))
    existing = local_session(store, data.session["uuid"])
    if existing is not None:
        raise DuplicateSessionError(f"{path}: its session is already in {store.path} as session {existing} "
                                    f"(UUID {data.session['uuid']}); not importing it twice")  # fmt: skip
    AnswerStore(store)  # the answer tables exist before the transaction
    with store.transaction():
        return insert_session(store, data, by=by, origin=Path(path).name)


# -- merging another store -----------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    brought: list[tuple[int, int, str]] = field(default_factory=list)
    """(id in the other store, new local id, participant) of every session brought in."""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(id in the other store, why) of every session left out."""
    participants_added: list[str] = field(default_factory=list)
    answer_sets: int = 0
    private_texts: int = 0
    notes: list[str] = field(default_factory=list)


def merge_store(
    store: Store, other_path: Path, *, by: str, progress: Callable[[int, int, str], None] | None = None
) -> MergeResult:
    """Bring every session, participant and answer set of the store at `other_path` (opened read-only) into `store`,
    skipping sessions it already has (by UUID) and answer sets it already has; one transaction: all or nothing.
    Refused while a session records into `store` (it would wait for the merge's write lock)."""
    other_path = Path(other_path)
    if other_path.resolve() == store.path.resolve():
        raise StoreError(f"{other_path} is this store; nothing to merge")
    busy = [info.id for info in store.sessions() if info.state in ("running", "importing")]
    if busy:
        raise StoreError(f"session(s) {', '.join(map(str, busy))} are being written into {store.path}; merge when "
                         "they have ended (a merge holds the store's write lock until it is done)")  # fmt: skip
    result = MergeResult()
    AnswerStore(store)
    with Store(other_path, readonly=True) as other:
        odb = other.connection
        uuids = session_uuids(odb)
        infos = other.sessions()
        local = {u: local_session(store, u) for u in uuids.values()}
        with store.transaction():
            for pid, created, rate in odb.execute(
                "SELECT id, created_utc, resonance_rate_bpm FROM participants ORDER BY id"
            ).fetchall():
                if _ensure_participant(store, {"id": pid, "created_utc": created, "resonance_rate_bpm": rate}):
                    result.participants_added.append(pid)
            session_map: dict[Any, int] = {u: sid for u, sid in local.items() if sid is not None}
            for i, info in enumerate(infos, start=1):
                if progress is not None:
                    progress(i - 1, len(infos), f"session {info.id}")
                if local[uuids[info.id]] is not None:
                    result.skipped.append((info.id, f"already here as session {local[uuids[info.id]]}"))
                    continue
                if info.state in ("running", "importing"):
                    result.skipped.append((info.id, f"still {info.state} in {other_path}"))
                    continue
                data = read_session(other, info.id, include_text=True)
                for table in ANSWER_TABLES:
                    data.rows[table] = []  # answers are brought below, all at once
                new = insert_session(store, data, by=by, origin=str(other_path))
                session_map[uuids[info.id]] = new
                result.brought.append((info.id, new, info.participant_id))
            answers = read_answers(odb, "1", (), include_text=True)
            for r in answers["answer_sets"]:
                r[-1] = None if r[-1] is None else uuids.get(r[-1])
            result.answer_sets = insert_answers(store, answers, session_map, by=by, notes=result.notes)
            if "private_texts" in _tables(odb):
                for pid, kind, text, created in odb.execute(
                    "SELECT participant_id, kind, text, created_utc FROM private_texts ORDER BY id"
                ).fetchall():
                    if store.connection.execute(
                        "SELECT 1 FROM private_texts WHERE participant_id=? AND kind=? AND text=? AND created_utc=?",
                        (pid, kind, text, created),
                    ).fetchone() is None:
                        _insert(store, "private_texts", ["participant_id", "kind", "text", "created_utc"],
                                [[pid, kind, text, created]])  # fmt: skip
                        result.private_texts += 1
            if progress is not None:
                progress(len(infos), len(infos), "committing")
    return result
