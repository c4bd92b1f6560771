'''Diary and questionnaire instruments: a TOML format, precise validation, and pure scoring.

Format (one file = one instrument)::

    name = "cmt-weekly-diary"          # required: letters, digits, "-" or "_"
    title = "Weekly diary"             # required text shown to the participant
    version = "1"                      # optional, string or integer (default "1")
    kind = "diary"                     # optional: diary (interval-contingent, per week) or questionnaire (default)
    instructions = """..."""           # optional text shown before the items
    description = "..."                # optional note for the experimenter (source, licence, scoring key)

    [scale]                            # required default response scale (whole numbers)
    min = 0
    max = 10
    labels = { 0 = "not at all", 10 = "very much" }    # optional anchors; keys are values within the scale

    [[item]]                           # one table per item, in the order shown; at least one
    id = "sc_often"                    # required, unique: a name or an item number (id = 7)
    text = "..."                       # required wording shown to the participant
    subscales = ["self-criticism"]     # optional: the subscale(s) this item counts towards (or subscale = "x")
    reverse = false                    # optional: score as (min + max - answer)
    [item.scale]                       # optional: this item's own scale, same fields as [scale]

    [[subscale]]                       # one table per subscale
    name = "self-criticism"            # required, unique
    title = "..."                      # optional display name
    items = ["sc_often", 3]            # optional: members by item id (added to those naming it in `subscales`)
    method = "sum"                     # optional: sum (default) or mean
    missing = { rule = "prorate", max_missing = 1 }   # optional; default: any missing item -> missing score

    [[text]]                           # optional free-text fields (always optional to fill in; sensitive)
    id = "week_notes"
    prompt = "..."

Missing answers: with rule "complete" (the default) a subscale with any unanswered item has no score. With rule
"prorate", up to `max_missing` unanswered items are allowed: the score is the mean of the answered (reverse-scored)
items times the number of items (for method "sum"), and the score carries a note saying it was prorated.

Every problem in a file is reported at once in one `InstrumentError`; items are numbered from 1 in messages.
Built-in instruments live in protocols/instruments/*.toml (files starting with "_" are templates, not built in).
'''

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from .file_problems import FileProblems, TableChecker, closest, parse_toml, read_text, show
from .packaged import builtin_or_file, load_packaged

TOP_FIELDS = ("name", "title", "version", "kind", "instructions", "description", "scale", "item", "subscale", "text")
SCALE_FIELDS = ("min", "max", "labels")
SCALE_LIMIT = 1000
"""Largest |min| or |max| of a response scale."""
MAX_SCALE_POINTS = 101
"""Most answer points on one scale (0–100, a visual analogue scale, is the widest in use)."""
ITEM_FIELDS = ("id", "text", "subscale", "subscales", "reverse", "scale")
SUBSCALE_FIELDS = ("name", "title", "items", "method", "missing")
MISSING_FIELDS = ("rule", "max_missing")
TEXT_FIELDS = ("id", "prompt")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class InstrumentKind(StrEnum):
    DIARY = "diary"
    QUESTIONNAIRE = "questionnaire"


class MissingRule(StrEnum):
    COMPLETE = "complete"
    PRORATE = "prorate"


class ScoreMethod(StrEnum):
    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True)
class ResponseScale:
    """Whole-number answers from `min` to `max`; `labels` are anchor texts for some values."""

    min: int
    max: int
    labels: tuple[tuple[int, str], ...] = ()

    def label(self, value: int) -> str | None:
        return dict(self.labels).get(value)

    def contains(self, value: float) -> bool:
        return float(value).is_integer() and self.min <= value <= self.max

    @property
    def values(self) -> range:
        return range(self.min, self.max + 1)

    def describe(self) -> str:
        anchors = ", ".join(f"{v} = {t}" for v, t in self.labels)
        return f"{self.min}–{self.max}" + (f" ({anchors})" if anchors else "")


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    scale: ResponseScale
    subscales: tuple[str, ...] = ()
    reverse: bool = False

    def scored(self, answer: float) -> float:
        """The answer as it counts towards subscales (reversed if the item is reverse-scored)."""
        return self.scale.min + self.scale.max - answer if self.reverse else float(answer)


@dataclass(frozen=True)
class MissingPolicy:
    rule: MissingRule = MissingRule.COMPLETE
    max_missing: int = 0

    def describe(self) -> str:
        if self.rule is MissingRule.PRORATE:
            return f"prorated when at most {self.max_missing} item(s) are unanswered, else missing"
        return "missing when any item is unanswered"


@dataclass(frozen=True)
class Subscale:
    name: str
    title: str
    items: tuple[str, ...]
    method: ScoreMethod = ScoreMethod.SUM
    missing: MissingPolicy = MissingPolicy()


@dataclass(frozen=True)
class TextField:
    id: str
    prompt: str


@dataclass(frozen=True)
class Instrument:
    """A validated questionnaire or diary (immutable)."""

    name: str
    title: str
    scale: ResponseScale
    items: tuple[Item, ...]
    subscales: tuple[Subscale, ...] = ()
    texts: tuple[TextField, ...] = ()
    version: str = "1"
    kind: InstrumentKind = InstrumentKind.QUESTIONNAIRE
    instructions: str = ""
    description: str = ""
    source_text: str = field(default="", repr=False, compare=False)
    """The TOML the instrument was parsed from (kept with stored answers, so they stay interpretable)."""

    def item(self, item_id: str) -> Item:
        for it in self.items:
            if it.id == item_id:
                return it
        raise KeyError(f"instrument {self.name!r} has no item {item_id!r}; items: {[i.id for i in self.items]}")

    @property
    def item_ids(self) -> tuple[str, ...]:
        return tuple(i.id for i in self.items)

    @property
    def text_ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.texts)


# -- validation problems ------------------------------------------------------------------------------------------


class InstrumentError(FileProblems):
    """An instrument file is invalid; `problems` lists every problem found (the message shows them all)."""


class AnswerError(ValueError):
    """Answers that do not fit an instrument; `problems` lists every one (unknown items, values off the scale)."""

    def __init__(self, instrument: str, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"answers to {instrument!r}: " + "; ".join(problems))


def _suggest(value: str, options: list[str]) -> str:
    """' (did you mean "x"?)' for the closest option; "" when none is close."""
    close = closest(value, options)
    return f' (did you mean "{close}"?)' if close else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker(TableChecker):
    """Collects problems while reading one instrument file (located by item or subscale)."""

    def text(self, table: dict[str, Any], key: str, field: str, *, required: bool) -> str | None:
        if key not in table:
            if required:
                self.add(field, "required field is missing: expected a non-empty string")
            return None
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            self.add(field, f"expected a non-empty string, got {show(value)}")
            return None
        return value.strip()

    def ident(self, table: dict[str, Any], key: str, field: str) -> str | None:
        """A name or an item number (an integer id becomes its decimal string)."""
        if key not in table:
            self.add(field, 'required field is missing: expected a name like "sc_often" or an item number')
            return None
        value = table[key]
        if _is_int(value) and value >= 0:
            return str(value)
        if isinstance(value, str) and _NAME.match(value.strip()):
            return value.strip()
        self.add(field, f"expected a name of letters, digits, '-' or '_' or an item number, got {show(value)}")
        return None

    def choice(self, table: dict[str, Any], key: str, field: str, enum: type[StrEnum]) -> Any:
        if key not in table:
            return None
        value = table[key]
        valid = [m.value for m in enum]
        if isinstance(value, str) and value.strip().lower() in valid:
            return enum(value.strip().lower())
        close = difflib.get_close_matches(str(value), valid, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        self.add(field, f"expected one of {', '.join(valid)}, got {show(value)}{hint}")
        return None


def _parse_scale(ck: _Checker, raw: Any, field: str) -> ResponseScale | None:
    if not isinstance(raw, dict):
        ck.add(field, f"expected a table with min, max and optional labels, got {show(raw)}")
        return None
    ck.unknown_fields(raw, SCALE_FIELDS, field + ".", "scale")
    lo, hi = raw.get("min"), raw.get("max")
    ok = True
    for key, value in (("min", lo), ("max", hi)):
        if key not in raw:
            ck.add(f"{field}.{key}", "required field is missing: expected a whole number")
            ok = False
        elif not _is_int(value):
            ck.add(f"{field}.{key}", f"expected a whole number, got {show(value)}")
            ok = False
    if not ok:
        return None
    if hi <= lo:
        ck.add(f"{field}.max", f"expected a number above min ({lo}), got {hi!r}")
        return None
    if max(abs(lo), abs(hi)) > SCALE_LIMIT or hi - lo + 1 > MAX_SCALE_POINTS:
        ck.add(f"{field}.max", f"expected a scale within ±{SCALE_LIMIT} of at most {MAX_SCALE_POINTS} points "
                               f"(e.g. 0–100), got {lo}–{hi}")  # fmt: skip
        return None
    labels: list[tuple[int, str]] = []
    raw_labels = raw.get("labels", {})
    if not isinstance(raw_labels, dict):
        ck.add(f"{field}.labels", f'expected a table like {{ {lo} = "not at all" }}, got {show(raw_labels)}')
    else:
        for key, text in raw_labels.items():
            try:
                value = int(key)
            except ValueError:
                value = None
            if value is None or not lo <= value <= hi:
                ck.add(f"{field}.labels", f"expected label keys that are values from {lo} to {hi}, got {show(key)}")
            elif not isinstance(text, str) or not text.strip():
                ck.add(f"{field}.labels.{key}", f"expected a non-empty label text, got {show(text)}")
            else:
                labels.append((value, text.strip()))
    return ResponseScale(lo, hi, tuple(sorted(labels)))


def _names(ck: _Checker, raw: Any, field: str) -> tuple[str, ...]:
    """A string or a list of strings/numbers (subscale names or item ids)."""
    values = [raw] if isinstance(raw, str | int) and not isinstance(raw, bool) else raw
    if not isinstance(values, list) or not all(_is_int(v) or isinstance(v, str) for v in values):
        ck.add(field, f"expected a name or a list of names, got {show(raw)}")
        return ()
    return tuple(str(v).strip() for v in values)


def parse_instrument(text: str, source: str = "<string>") -> Instrument:
    """Parse instrument TOML `text` (`source` names it in messages); InstrumentError lists all problems."""
    data = parse_toml(text, source, InstrumentError)

    ck = _Checker(source)
    ck.unknown_fields(data, TOP_FIELDS, "", "top-level")
    name = ck.text(data, "name", "name", required=True)
    if name is not None and not _NAME.match(name):
        ck.add("name", f"expected letters, digits, '-' or '_' (it names the instrument on the command line), "
                       f"got {show(name)}")  # fmt: skip
    title = ck.text(data, "title", "title", required=True)
    instructions = ck.text(data, "instructions", "instructions", required=False) or ""
    description = ck.text(data, "description", "description", required=False) or ""
    kind = ck.choice(data, "kind", "kind", InstrumentKind) or InstrumentKind.QUESTIONNAIRE
    version = data.get("version", "1")
    if isinstance(version, bool) or not isinstance(version, str | int) or not str(version).strip():
        ck.add("version", f'expected a version string like "1.2" or an integer, got {show(version)}')
        version = "1"
    scale = None
    if "scale" not in data:
        ck.add("scale", "required: expected a [scale] table with min and max")
    else:
        scale = _parse_scale(ck, data["scale"], "scale")

    # a broken [scale] is reported once; a stand-in lets the items and subscales still be checked
    items = _parse_items(ck, data.get("item"), scale or ResponseScale(0, 1))
    subscales = _parse_subscales(ck, data.get("subscale", []), items)
    texts = _parse_texts(ck, data.get("text", []), {i.id for i in items})
    if ck.problems:
        raise InstrumentError(ck.problems)
    assert name is not None and title is not None and scale is not None
    members = {s.name: s.items for s in subscales}
    final_items = tuple(
        Item(i.id, i.text, i.scale, tuple(s for s in members if i.id in members[s]), i.reverse) for i in items
    )
    return Instrument(name, title, scale, final_items, subscales, texts, str(version), kind, instructions,
                      description, text)  # fmt: skip


def _parse_items(ck: _Checker, raw: Any, scale: ResponseScale | None) -> list[Item]:
    ck.where = None
    if raw is None:
        ck.add("item", "required: expected at least one [[item]] table, got none")
        return []
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw) or not raw:
        ck.add("item", f"expected [[item]] tables (note the double brackets), got {show(raw)}")
        return []
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, entry in enumerate(raw, start=1):
        raw_id = entry.get("id")
        ck.where = f"item {n}" + (f" ({show(str(raw_id))})" if isinstance(raw_id, str | int) else "")
        ck.unknown_fields(entry, ITEM_FIELDS, "", "item")
        item_id = ck.ident(entry, "id", "id")
        if item_id is not None and item_id in seen:
            ck.add("id", f"expected an id not used by another item, but item {seen[item_id]} is also {item_id!r}")
        elif item_id is not None:
            seen[item_id] = n
        text = ck.text(entry, "text", "text", required=True)
        if "subscale" in entry and "subscales" in entry:
            ck.add("subscales", 'expected either "subscale" or "subscales", got both')
        subs = _names(ck, entry.get("subscales", entry.get("subscale", [])), "subscales")
        reverse = entry.get("reverse", False)
        if not isinstance(reverse, bool):
            ck.add("reverse", f"expected true or false, got {show(reverse)}")
        own = _parse_scale(ck, entry["scale"], "scale") if "scale" in entry else scale
        if item_id is not None and text is not None and own is not None and seen[item_id] == n:
            # kept despite other problems of this item, so that later checks do not cascade from it
            items.append(Item(item_id, text, own, subs, reverse is True))
    ck.where = None
    return items


def _parse_subscales(ck: _Checker, raw: Any, items: list[Item]) -> tuple[Subscale, ...]:
    ck.where = None
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        ck.add("subscale", f"expected [[subscale]] tables, got {show(raw)}")
        return ()
    item_ids = [i.id for i in items]
    out: list[Subscale] = []
    declared = {e["name"] for e in raw if isinstance(e.get("name"), str)}
    for n, entry in enumerate(raw, start=1):
        raw_name = entry.get("name")
        ck.where = f"subscale {n}" + (f" ({show(raw_name)})" if isinstance(raw_name, str) else "")
        ck.unknown_fields(entry, SUBSCALE_FIELDS, "", "subscale")
        name = ck.text(entry, "name", "name", required=True)
        if name is not None and any(s.name == name for s in out):
            ck.add("name", f"expected a name not used by another subscale, got {show(name)} twice")
            continue
        title = ck.text(entry, "title", "title", required=False) or name
        method = ck.choice(entry, "method", "method", ScoreMethod) or ScoreMethod.SUM
        listed = _names(ck, entry.get("items", []), "items")
        for item_id in listed:
            if item_id not in item_ids:
                hint = _suggest(item_id, item_ids)
                ck.add("items", f"expected ids of items in this file, got {show(item_id)}{hint}")
        members = [i.id for i in items if i.id in listed or (name is not None and name in i.subscales)]
        missing = _parse_missing(ck, entry.get("missing"), len(members))
        if name is None:
            continue
        if not members:
            ck.add("items", "expected at least one item: list them here or name this subscale in items' subscales")
            continue
        reversed_scales = {(items[item_ids.index(m)].scale.min, items[item_ids.index(m)].scale.max) for m in members}
        if len(reversed_scales) > 1 and method is ScoreMethod.SUM:
            ck.add("items", f"expected items on one response scale for a sum, got scales {sorted(reversed_scales)}")
        out.append(Subscale(name, title or name, tuple(members), method, missing or MissingPolicy()))
    ck.where = None
    for n, item in enumerate(items, start=1):
        for sub in item.subscales:
            if sub not in declared:
                ck.where = f"item {n} ({show(item.id)})"
                hint = _suggest(sub, sorted(declared))
                ck.add("subscales", f"expected a subscale declared in a [[subscale]] table, got {show(sub)}{hint}")
    ck.where = None
    return tuple(out)


def _parse_missing(ck: _Checker, raw: Any, n_items: int) -> MissingPolicy | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        ck.add("missing", f'expected a table like {{ rule = "prorate", max_missing = 1 }}, got {show(raw)}')
        return None
    ck.unknown_fields(raw, MISSING_FIELDS, "missing.", "missing-answer rule")
    rule = ck.choice(raw, "rule", "missing.rule", MissingRule)
    if "rule" not in raw:
        ck.add("missing.rule", "required field is missing: expected complete or prorate")
    if rule is None:
        return None
    if rule is MissingRule.COMPLETE:
        if "max_missing" in raw and raw["max_missing"] != 0:
            ck.add(
                "missing.max_missing", f'expected 0 (or no value) with rule "complete", got {show(raw["max_missing"])}'
            )
        return MissingPolicy()
    max_missing = raw.get("max_missing")
    if "max_missing" not in raw:
        ck.add("missing.max_missing", 'required with rule "prorate": expected a whole number of items, e.g. 1')
        return None
    if not _is_int(max_missing) or max_missing < 0 or (n_items and max_missing >= n_items):
        upper = f" and below the subscale's {n_items} items" if n_items else ""
        ck.add("missing.max_missing", f"expected a whole number from 0{upper}, got {show(max_missing)}")
        return None
    return MissingPolicy(MissingRule.PRORATE, max_missing)


def _parse_texts(ck: _Checker, raw: Any, item_ids: set[str]) -> tuple[TextField, ...]:
    ck.where = None
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        ck.add("text", f"expected [[text]] tables with id and prompt, got {show(raw)}")
        return ()
    out: list[TextField] = []
    for n, entry in enumerate(raw, start=1):
        raw_id = entry.get("id")
        ck.where = f"text field {n}" + (f" ({show(raw_id)})" if isinstance(raw_id, str) else "")
        ck.unknown_fields(entry, TEXT_FIELDS, "", "text field")
        tid = ck.ident(entry, "id", "id")
        prompt = ck.text(entry, "prompt", "prompt", required=True)
        if tid is not None and (tid in item_ids or any(t.id == tid for t in out)):
            ck.add("id", f"expected an id not used by an item or another text field, got {show(tid)}")
        elif tid is not None and prompt is not None:
            out.append(TextField(tid, prompt))
    ck.where = None
    return tuple(out)


def load_instrument(path: str | Path) -> Instrument:
    """Load an instrument TOML file; errors name the file as given. Raises InstrumentError or OSError."""
    text = read_text(path, InstrumentError)
    return parse_instrument(text, source=str(path))


# -- built-in instruments -----------------------------------------------------------------------------------------

DIARY_NAME = "cmt-weekly-diary"
"""The built-in weekly self-monitoring diary (domains "self-criticism" and "self-soothing")."""


class UnknownInstrumentError(LookupError):
    """Neither a built-in instrument name nor an existing instrument file."""


@cache
def _load_builtins() -> dict[str, Instrument]:
    return load_packaged("instruments", parse_instrument)


def builtin_instruments() -> dict[str, Instrument]:
    return dict(_load_builtins())


def get_instrument(name_or_path: str | Path) -> Instrument:
    """A built-in instrument by name, or one loaded from a TOML file path (InstrumentError if invalid)."""
    return builtin_or_file(name_or_path, _load_builtins(), load_instrument, "instrument", UnknownInstrumentError)


# -- answers and scoring (pure) -----------------------------------------------------------------------------------


def check_answers(
    instrument: Instrument, values: Mapping[str, float | None], texts: Mapping[str, str] | None = None
) -> dict[str, float | None]:
    """Every item's answer (None = skipped) after checking ids and scale ranges; AnswerError lists all problems."""
    problems = []
    known = set(instrument.item_ids)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown item {key!r}{hint}")
    for key in texts or {}:
        if key not in instrument.text_ids:
            problems.append(f"unknown text field {key!r}; text fields: {list(instrument.text_ids) or 'none'}")
    out: dict[str, float | None] = {}
    for item in instrument.items:
        value = values.get(item.id)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[item.id] = None
        elif isinstance(value, bool) or not isinstance(value, int | float) or not item.scale.contains(value):
            problems.append(f"item {item.id!r}: expected a whole number from {item.scale.min} to {item.scale.max}, "
                            f"got {show(value)}")  # fmt: skip
        else:
            out[item.id] = float(value)
    if problems:
        raise AnswerError(instrument.name, problems)
    return out


@dataclass(frozen=True)
class SubscaleScore:
    name: str
    title: str
    value: float | None
    n_items: int
    n_answered: int
    prorated: bool = False
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "value": self.value, "n_items": self.n_items,
                "n_answered": self.n_answered, "prorated": self.prorated, "note": self.note}  # fmt: skip


def score(instrument: Instrument, values: Mapping[str, float | None]) -> dict[str, SubscaleScore]:
    """Subscale scores of one set of answers (reverse items reversed, the missing-answer rule applied)."""
    answers = check_answers(instrument, values)
    out: dict[str, SubscaleScore] = {}
    for sub in instrument.subscales:
        scored = [instrument.item(i).scored(answers[i]) for i in sub.items if answers[i] is not None]
        n, k = len(sub.items), len(scored)
        missing = n - k
        prorated = False
        note = None
        if missing == 0:
            value: float | None = sum(scored) if sub.method is ScoreMethod.SUM else sum(scored) / n
        elif sub.missing.rule is MissingRule.PRORATE and missing <= sub.missing.max_missing:
            mean = sum(scored) / k
            value = mean * n if sub.method is ScoreMethod.SUM else mean
            prorated = True
            note = f"prorated from {k} of {n} items ({missing} unanswered)"
        else:
            value = None
            allowed = sub.missing.max_missing if sub.missing.rule is MissingRule.PRORATE else 0
            note = f"missing: {missing} of {n} items unanswered (at most {allowed} allowed)"
        out[sub.name] = SubscaleScore(sub.name, sub.title, value, n, k, prorated, note)
    return out
