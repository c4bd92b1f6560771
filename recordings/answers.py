"""Diary and questionnaire answers in the store: linked to participant, time point and optionally a session.

One *answer set* is one participant's answers to one instrument (name + version) at one time point ("week 3",
"pre", "post", "follow-up"). Every item is stored, skipped ones as NULL. The instrument's TOML is stored once per
name and version, so answers stay interpretable even when the lab's file changes later (a changed file must get a
new version). Free-text answers are sensitive: they are returned only when `include_text=True` is asked for.

Answers are editable; every change is recorded in `answer_edits` (who, when, what it was, what it became, why).
Old and new free text in that trail is redacted unless `include_text=True`.
"""

from __future__ import annotations

import csv
import getpass
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.instruments import AnswerError, Instrument, SubscaleScore, check_answers, parse_instrument, score
from recordings.store import Store, StoreError, utc_now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instrument_defs (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    toml TEXT NOT NULL,
    stored_utc TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS answer_sets (
    id INTEGER PRIMARY KEY,
    participant_id TEXT NOT NULL REFERENCES participants(id),
    instrument TEXT NOT NULL,
    instrument_version TEXT NOT NULL,
    time_point TEXT NOT NULL,
    week INTEGER,
    session_id INTEGER REFERENCES sessions(id),
    answered_utc TEXT NOT NULL,
    entered_by TEXT NOT NULL,
    source TEXT NOT NULL,
    UNIQUE (participant_id, instrument, time_point)
);
CREATE TABLE IF NOT EXISTS answer_values (
    set_id INTEGER NOT NULL REFERENCES answer_sets(id),
    item_id TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (set_id, item_id)
);
CREATE TABLE IF NOT EXISTS answer_texts (
    set_id INTEGER NOT NULL REFERENCES answer_sets(id),
    field_id TEXT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (set_id, field_id)
);
CREATE TABLE IF NOT EXISTS answer_edits (
    id INTEGER PRIMARY KEY,
    set_id INTEGER NOT NULL REFERENCES answer_sets(id),
    field TEXT NOT NULL,
    old_json TEXT NOT NULL,
    new_json TEXT NOT NULL,
    edited_by TEXT NOT NULL,
    edited_utc TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS answer_edits_set ON answer_edits(set_id, id);
"""

_WEEK = re.compile(r"^(?:w|wk|week)?\s*0*(\d{1,3})$")
_LABEL = re.compile(r"^[a-z][a-z0-9 _-]{0,31}$")
_SKIPPED = {"", "na", "n/a", "-", "skip", "skipped"}
RESERVED_COLUMNS = ("participant", "week", "time", "session")


class TimePointError(ValueError):
    """A time point that is neither a week nor a short label."""


class AnswerStoreError(StoreError):
    """A request the answer store cannot fulfil (duplicate entry, unknown answer set, changed instrument...)."""


def parse_time_point(value: str | int) -> tuple[str, int | None]:
    """("week N", N) for "week 3", "W3", "wk 03" or 3; (label, None) for labels like "pre", "post", "follow-up"."""
    text = " ".join(str(value).strip().lower().split())
    m = _WEEK.match(text)
    if m:
        week = int(m[1])
        if week < 1:
            raise TimePointError(f"time point {value!r}: weeks count from 1")
        return f"week {week}", week
    if not _LABEL.match(text):
        raise TimePointError(
            f'time point {value!r}: expected a week ("week 3", "W3" or 3) or a short label such as pre, post '
            "or follow-up (letters first, then letters, digits, spaces, '-' or '_', at most 32)"
        )
    return text, None


def default_editor() -> str:
    """Who is making an entry or edit when no --by is given: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"


@dataclass(frozen=True)
class AnswerSet:
    id: int
    participant_id: str
    instrument: str
    instrument_version: str
    time_point: str
    week: int | None
    session_id: int | None
    answered_utc: str
    entered_by: str
    source: str
    values: dict[str, float | None]
    texts: dict[str, str] | None = None
    """Free-text answers, or None when they were not asked for (they are sensitive)."""

    def to_dict(self, *, include_text: bool = False) -> dict[str, Any]:
        out = {
            "id": self.id,
            "participant_id": self.participant_id,
            "instrument": self.instrument,
            "instrument_version": self.instrument_version,
            "time_point": self.time_point,
            "week": self.week,
            "session_id": self.session_id,
            "answered_utc": self.answered_utc,
            "entered_by": self.entered_by,
            "source": self.source,
            "values": self.values,
        }
        if include_text and self.texts is not None:
            out["texts"] = self.texts
        return out


@dataclass(frozen=True)
class AnswerEdit:
    set_id: int
    field: str
    old: Any
    new: Any
    edited_by: str
    edited_utc: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "field": self.field, "old": self.old, "new": self.new,
                "edited_by": self.edited_by, "edited_utc": self.edited_utc, "reason": self.reason}  # fmt: skip


def _redact(value: Any) -> Any:
    return None if value is None else f"<free text, {len(str(value))} characters>"


class AnswerStore:
    """Answer sets in a `Store` (tables created on first use)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._db = store.connection
        store.flush()
        self._db.executescript(_SCHEMA)

    # -- instruments ------------------------------------------------------------------------------------------
    def _remember_instrument(self, instrument: Instrument) -> None:
        row = self._db.execute(
            "SELECT toml FROM instrument_defs WHERE name=? AND version=?", (instrument.name, instrument.version)
        ).fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO instrument_defs(name, version, toml, stored_utc) VALUES (?,?,?,?)",
                (instrument.name, instrument.version, instrument.source_text, utc_now()),
            )
        elif row[0] != instrument.source_text and parse_instrument(row[0]) != instrument:
            raise AnswerStoreError(
                f"instrument {instrument.name!r} version {instrument.version} in the store differs from this one: "
                "give the changed file a new `version` so earlier answers keep their meaning"
            )

    def instrument(self, name: str, version: str | None = None) -> Instrument:
        """The instrument definition stored with answers (the newest stored version if none is given)."""
        query = "SELECT toml, version FROM instrument_defs WHERE name=?"
        args: tuple[Any, ...] = (name,)
        if version is not None:
            query += " AND version=?"
            args += (version,)
        row = self._db.execute(query + " ORDER BY stored_utc DESC, rowid DESC", args).fetchone()
        if row is None:
            raise AnswerStoreError(f"no answers to instrument {name!r}" + (f" version {version}" if version else ""))
        return parse_instrument(row[0], source=f"store:{name}@{row[1]}")

    def instrument_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT instrument FROM answer_sets ORDER BY instrument")]

    # -- entering ---------------------------------------------------------------------------------------------
    def add(
        self,
        instrument: Instrument,
        participant_id: str,
        time_point: str | int,
        values: Mapping[str, float | None],
        texts: Mapping[str, str] | None = None,
        *,
        session_id: int | None = None,
        by: str | None = None,
        source: str = "terminal",
        answered_utc: str | None = None,
    ) -> int:
        """Store one answer set; AnswerError for answers off the instrument, AnswerStoreError for a duplicate."""
        return self.add_many(
            [
                PendingAnswers(
                    participant_id, str(time_point), dict(values), dict(texts or {}), session_id, answered_utc
                )
            ],
            instrument,
            by=by,
            source=source,
        )[0]

    def add_many(
        self, pending: list[PendingAnswers], instrument: Instrument, *, by: str | None = None, source: str = "file"
    ) -> list[int]:
        """Store several answer sets all-or-nothing: every problem is checked before anything is written."""
        problems: list[str] = []
        rows = []
        seen: set[tuple[str, str]] = set()
        for n, p in enumerate(pending, start=1):
            where = p.origin or (f"entry {n}" if len(pending) > 1 else "")
            prefix = f"{where}: " if where else ""
            try:
                pid = self.store.check_participant(p.participant_id)
                label, week = parse_time_point(p.time_point)
                checked = check_answers(instrument, p.values, p.texts)
                self._check_session(p.session_id, pid)
            except (ValueError, StoreError) as exc:
                problems.append(prefix + str(exc))
                continue
            if (pid, label) in seen or self.find_one(pid, instrument.name, label) is not None:
                problems.append(
                    f"{prefix}{pid} already has {instrument.name} answers for {label}: "
                    "change them with `answers edit` (kept with an audit trail) instead of entering them again"
                )
                continue
            seen.add((pid, label))
            texts = {k: v.strip() for k, v in p.texts.items() if v and v.strip()}
            rows.append((pid, label, week, checked, texts, p.session_id, p.answered_utc))
        if problems:
            raise AnswerError(instrument.name, problems)
        who = by or default_editor()
        ids = []
        self.store.flush()
        with self.store.transaction():
            self._remember_instrument(instrument)
            for pid, label, week, checked, texts, sid, when in rows:
                self.store.ensure_participant(pid)
                cur = self._db.execute(
                    "INSERT INTO answer_sets(participant_id, instrument, instrument_version, time_point, week,"
                    " session_id, answered_utc, entered_by, source) VALUES (?,?,?,?,?,?,?,?,?)",
                    (pid, instrument.name, instrument.version, label, week, sid, when or utc_now(), who, source),
                )
                set_id = int(cur.lastrowid)
                self._db.executemany(
                    "INSERT INTO answer_values(set_id, item_id, value) VALUES (?,?,?)",
                    [(set_id, k, v) for k, v in checked.items()],
                )
                self._db.executemany(
                    "INSERT INTO answer_texts(set_id, field_id, text) VALUES (?,?,?)",
                    [(set_id, k, v) for k, v in texts.items()],
                )
                ids.append(set_id)
        return ids

    def _check_session(self, session_id: int | None, participant_id: str) -> None:
        if session_id is None:
            return
        info = self.store.session(session_id)
        if info.participant_id != participant_id:
            raise AnswerStoreError(f"session {session_id} was recorded for {info.participant_id}, not {participant_id}")

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, set_id: int, *, include_text: bool = False) -> AnswerSet:
        row = self._db.execute(
            "SELECT id, participant_id, instrument, instrument_version, time_point, week, session_id, answered_utc,"
            " entered_by, source FROM answer_sets WHERE id=?",
            (set_id,),
        ).fetchone()
        if row is None:
            raise AnswerStoreError(f"no answer set {set_id} in {self.store.path}")
        values = dict(self._db.execute("SELECT item_id, value FROM answer_values WHERE set_id=?", (set_id,)))
        inst = self.instrument(row[2], row[3])
        ordered = {i: values.get(i) for i in inst.item_ids}
        texts = None
        if include_text:
            texts = dict(self._db.execute("SELECT field_id, text FROM answer_texts WHERE set_id=?", (set_id,)))
        return AnswerSet(*row, values=ordered, texts=texts)

    def find(
        self,
        participant_id: str | None = None,
        instrument: str | None = None,
        time_point: str | None = None,
        *,
        include_text: bool = False,
    ) -> list[AnswerSet]:
        query, args = "SELECT id FROM answer_sets WHERE 1=1", []
        if participant_id is not None:
            query += " AND participant_id=?"
            args.append(participant_id)
        if instrument is not None:
            query += " AND instrument=?"
            args.append(instrument)
        if time_point is not None:
            query += " AND time_point=?"
            args.append(parse_time_point(time_point)[0])
        query += " ORDER BY participant_id, instrument, week IS NULL, week, answered_utc, id"
        return [self.get(r[0], include_text=include_text) for r in self._db.execute(query, args).fetchall()]

    def find_one(self, participant_id: str, instrument: str, time_point: str) -> AnswerSet | None:
        found = self.find(participant_id, instrument, time_point)
        return found[0] if found else None

    def scores(self, answer_set: AnswerSet) -> dict[str, SubscaleScore]:
        return score(self.instrument(answer_set.instrument, answer_set.instrument_version), answer_set.values)

    # -- editing ----------------------------------------------------------------------------------------------
    def edit(
        self,
        set_id: int,
        *,
        values: Mapping[str, float | None] | None = None,
        texts: Mapping[str, str | None] | None = None,
        time_point: str | int | None = None,
        session_id: int | None = None,
        by: str | None = None,
        reason: str = "",
    ) -> list[AnswerEdit]:
        """Change an answer set; every field that really changes is written to the audit trail, all or nothing."""
        current = self.get(set_id, include_text=True)
        inst = self.instrument(current.instrument, current.instrument_version)
        merged = {**current.values, **(values or {})}
        check_answers(inst, merged, {k: v for k, v in (texts or {}).items() if v})
        changes: list[tuple[str, Any, Any]] = []
        for key, new in (values or {}).items():
            new_v = None if new is None else float(new)
            if current.values[key] != new_v:
                changes.append((f"item:{key}", current.values[key], new_v))
        assert current.texts is not None
        for key, new_t in (texts or {}).items():
            if key not in inst.text_ids:
                raise AnswerError(inst.name, [f"unknown text field {key!r}; text fields: {list(inst.text_ids)}"])
            new_t = new_t.strip() if new_t and new_t.strip() else None
            if current.texts.get(key) != new_t:
                changes.append((f"text:{key}", current.texts.get(key), new_t))
        if time_point is not None:
            label = parse_time_point(time_point)[0]
            if label != current.time_point:
                if self.find_one(current.participant_id, current.instrument, label) is not None:
                    raise AnswerStoreError(
                        f"{current.participant_id} already has {current.instrument} answers for {label}"
                    )
                changes.append(("time_point", current.time_point, label))
        if session_id is not None and session_id != current.session_id:
            self._check_session(session_id, current.participant_id)
            changes.append(("session_id", current.session_id, session_id))
        who, when = by or default_editor(), utc_now()
        self.store.flush()
        with self.store.transaction():
            for name, old, new in changes:
                kind, _, key = name.partition(":")
                if kind == "item":
                    self._db.execute(
                        "UPDATE answer_values SET value=? WHERE set_id=? AND item_id=?", (new, set_id, key)
                    )
                elif kind == "text":
                    self._db.execute("DELETE FROM answer_texts WHERE set_id=? AND field_id=?", (set_id, key))
                    if new is not None:
                        self._db.execute(
                            "INSERT INTO answer_texts(set_id, field_id, text) VALUES (?,?,?)", (set_id, key, new)
                        )
                elif name == "time_point":
                    self._db.execute(
                        "UPDATE answer_sets SET time_point=?, week=? WHERE id=?",
                        (new, parse_time_point(new)[1], set_id),
                    )
                else:
                    self._db.execute("UPDATE answer_sets SET session_id=? WHERE id=?", (new, set_id))
                self._db.execute(
                    "INSERT INTO answer_edits(set_id, field, old_json, new_json, edited_by, edited_utc, reason)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (set_id, name, json.dumps(old), json.dumps(new), who, when, reason),
                )
        return [
            AnswerEdit(set_id, n, *((_redact(o), _redact(v)) if n.startswith("text:") else (o, v)), who, when, reason)
            for n, o, v in changes
        ]

    def delete(self, set_id: int, *, by: str, reason: str = "") -> dict[str, Any]:
        """Delete an answer set, its answers, texts and edit history; an audit row says what it was (no answers)."""
        aset = self.get(set_id)
        n_texts = self._db.execute("SELECT COUNT(*) FROM answer_texts WHERE set_id=?", (set_id,)).fetchone()[0]
        detail = {"instrument": aset.instrument, "time_point": aset.time_point, "session_id": aset.session_id,
                  "answered_utc": aset.answered_utc, "entered_by": aset.entered_by, "source": aset.source,
                  "values": len(aset.values), "texts": n_texts}  # fmt: skip
        with self.store.transaction():
            for table in ("answer_values", "answer_texts", "answer_edits"):
                self._db.execute(f"DELETE FROM {table} WHERE set_id=?", (set_id,))
            self._db.execute("DELETE FROM exclusions WHERE kind='answer_set' AND object_id=?", (set_id,))
            self._db.execute("DELETE FROM answer_sets WHERE id=?", (set_id,))
            self.store.audit("delete", "answer_set", set_id, by=by, participant_id=aset.participant_id,
                             reason=reason, detail=detail)  # fmt: skip
        return detail

    def history(self, set_id: int, *, include_text: bool = False) -> list[AnswerEdit]:
        """The audit trail of an answer set, oldest first; free text redacted unless `include_text`."""
        self.get(set_id)
        out = []
        for name, old, new, who, when, reason in self._db.execute(
            "SELECT field, old_json, new_json, edited_by, edited_utc, reason FROM answer_edits WHERE set_id=?"
            " ORDER BY id",
            (set_id,),
        ):
            old_v, new_v = json.loads(old), json.loads(new)
            if name.startswith("text:") and not include_text:
                old_v, new_v = _redact(old_v), _redact(new_v)
            out.append(AnswerEdit(set_id, name, old_v, new_v, who, when, reason))
        return out


# -- batch entry from files ---------------------------------------------------------------------------------------


@dataclass
class PendingAnswers:
    """Answers read from a form, a prompt or a file, not yet stored."""

    participant_id: str
    time_point: str
    values: dict[str, float | None]
    texts: dict[str, str] = field(default_factory=dict)
    session_id: int | None = None
    answered_utc: str | None = None
    origin: str = ""
    """Where the answers came from, for messages (e.g. "answers.csv: row 3")."""


class AnswerFileError(ValueError):
    """A batch answer file that cannot be read; every problem is listed with file, row and column."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        text = (
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)
        )
        super().__init__(text)


def parse_cell(raw: Any) -> float | str | None:
    """A cell as an answer: None when skipped, a float, or the raw text when it is not a number."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        return str(raw)
    if isinstance(raw, int | float):
        return float(raw)
    text = str(raw).strip()
    if text.lower() in _SKIPPED:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text  # "nan" or "inf" is not an answer: refused as text would be


def read_answer_file(
    path: str | Path,
    instrument: Instrument,
    *,
    participant_id: str | None = None,
    time_point: str | None = None,
    session_id: int | None = None,
) -> list[PendingAnswers]:
    """Answer sets from a CSV (one row each) or JSON file (an object or a list of objects).

    Columns/keys: `participant`, `week` or `time`, optional `session`, then one per item id and per text field
    id (JSON may instead nest them under "answers" and "texts"). Empty cells, NA and "-" mean skipped. The
    keyword arguments fill in what the file leaves out. AnswerFileError lists every problem with row and column.
    """
    p = Path(path)
    problems: list[str] = []
    try:
        raw_text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnswerFileError([f"{path}: expected UTF-8 text, got undecodable bytes ({exc.reason})"]) from None
    records: list[tuple[str, dict[str, Any]]] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(raw_text)
        except json.JSONDecodeError as exc:
            raise AnswerFileError([f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"]) from None
        data = [data] if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise AnswerFileError([f"{path}: expected a JSON object or a list of objects"])
        for n, obj in enumerate(data, start=1):
            flat = {k: v for k, v in obj.items() if k not in ("answers", "texts")}
            for nested in ("answers", "texts"):
                if nested in obj:
                    if not isinstance(obj[nested], dict):
                        problems.append(f'{path}: entry {n}: "{nested}": expected an object of id: value')
                    else:
                        flat.update(obj[nested])
            records.append((f"{path}: entry {n}", flat))
    elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
        reader = csv.DictReader(raw_text.splitlines(), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        for row in reader:
            if None in row:
                problems.append(f"{path}: line {reader.line_num}: more cells than header columns")
                continue
            if all((v or "").strip() == "" for v in row.values()):
                continue
            records.append((f"{path}: row {len(records) + 1} (line {reader.line_num})", dict(row)))
    else:
        raise AnswerFileError([f"{path}: expected a .csv, .tsv or .json file, got {p.suffix or 'no extension'!r}"])

    known = set(instrument.item_ids) | set(instrument.text_ids) | set(RESERVED_COLUMNS)
    out = []
    for where, rec in records:
        rec = {str(k).strip(): v for k, v in rec.items()}
        for key in rec:
            if key not in known:
                problems.append(f'{where}: column "{key}": not an item, text field or one of {RESERVED_COLUMNS}')
        pid = str(rec.get("participant") or participant_id or "").strip()
        tp_raw = rec.get("week") if rec.get("week") not in (None, "") else rec.get("time")
        tp = str(tp_raw).strip() if tp_raw not in (None, "") else time_point
        if not pid:
            problems.append(f'{where}: column "participant": missing (or give --participant)')
        if not tp:
            problems.append(f'{where}: column "week"/"time": missing (or give --week/--time)')
        sid: int | None = session_id
        if rec.get("session") not in (None, ""):
            try:
                sid = int(str(rec["session"]).strip())
            except ValueError:
                problems.append(f'{where}: column "session": expected a session number, got {rec["session"]!r}')
        values: dict[str, float | None] = {}
        for item in instrument.items:
            value = parse_cell(rec.get(item.id))
            if isinstance(value, str) or (value is not None and not item.scale.contains(value)):
                problems.append(
                    f'{where}: column "{item.id}": expected a whole number from {item.scale.min} to '
                    f"{item.scale.max} or an empty cell, got {rec.get(item.id)!r}"
                )
            else:
                values[item.id] = value
        texts = {t: str(rec[t]) for t in instrument.text_ids if rec.get(t) not in (None, "")}
        out.append(PendingAnswers(pid, tp or "", values, texts, sid, origin=where))
    if problems:
        raise AnswerFileError(problems)
    if not out:
        raise AnswerFileError([f"{path}: no answers found"])
    return out
