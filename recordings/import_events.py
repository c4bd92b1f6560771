"""RR text plus an events TSV (`onset`, `duration`, `trial_type`, optional `phase_kind`) that defines the phases.

Times in the events file are seconds on the clock the imported session gets: for an RR file without times, since
the start of the series (time 0 is the beat before the first interval; beat i is at the sum of the first i+1
intervals); for a file with a time column, that column's seconds (see `import_rr`). A row with a
duration is a phase (`trial_type` is its name); a row with duration 0 is a point marker. Phases must not overlap and
must lie within the RR series. Any problem is refused with file, line and column; nothing is stored.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .import_formats import ImportFormatError, read_rr_file
from .import_rr import rr_file_beats, store_rr_file
from .import_session import no_step
from .store import Store

PHASE_KINDS = {"rest", "breathing", "grounding", "imagery", "recall", "refocus", "recovery", "diary", "meditation",
               "other"}  # fmt: skip
_END_SLACK_S = 2.0


@dataclass(frozen=True, slots=True)
class EventRow:
    onset: float
    duration: float
    trial_type: str
    kind: str
    line: int


def _guess_kind(name: str) -> str:
    low = name.lower()
    for word, kind in (("baseline", "rest"), ("rest", "rest"), ("breath", "breathing"), ("imag", "imagery"),
                       ("recall", "recall"), ("ground", "grounding"), ("recover", "recovery")):  # fmt: skip
        if word in low:
            return kind
    return "other"


def parse_events_tsv(text: str, source: str = "<events>", series_end_s: float | None = None) -> list[EventRow]:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in ("onset", "duration", "trial_type") if c not in fields]
    if missing:
        raise ImportFormatError(
            f"{source}: line 1: missing column(s) {missing}; expected a tab-separated header with onset, duration, "
            f"trial_type (got {fields})"
        )
    rows: list[EventRow] = []
    for lineno, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if None in row or any(row.get(c, "") == "" for c in ("onset", "duration", "trial_type")):
            raise ImportFormatError(f"{source}: line {lineno}: onset, duration and trial_type are all required")
        values = {}
        for col in ("onset", "duration"):
            try:
                values[col] = float(row[col])
            except ValueError:
                where = f"{source}: line {lineno}, column {col!r}"
                raise ImportFormatError(f"{where}: {row[col]!r} is not a number of seconds") from None
            if not math.isfinite(values[col]) or values[col] < 0:
                raise ImportFormatError(f"{source}: line {lineno}, column {col!r}: {row[col]} must be ≥ 0 seconds")
        kind = row.get("phase_kind") or _guess_kind(row["trial_type"])
        if kind not in PHASE_KINDS:
            raise ImportFormatError(f"{source}: line {lineno}, column 'phase_kind': {kind!r} is not one of "
                                    f"{sorted(PHASE_KINDS)}")  # fmt: skip
        end = values["onset"] + values["duration"]
        if series_end_s is not None and end > series_end_s + _END_SLACK_S:
            raise ImportFormatError(
                f"{source}: line {lineno}: event ends at {end:g} s, after the RR series ({series_end_s:.1f} s); "
                "are the onsets in seconds since the first beat?"
            )
        rows.append(EventRow(values["onset"], values["duration"], row["trial_type"], kind, lineno))
    phases = sorted((r for r in rows if r.duration > 0), key=lambda r: r.onset)
    for a, b in itertools.pairwise(phases):
        if b.onset < a.onset + a.duration - 1e-9:
            raise ImportFormatError(f"{source}: line {b.line}: phase {b.trial_type!r} starts at {b.onset:g} s, "
                                    f"inside phase {a.trial_type!r} (line {a.line})")  # fmt: skip
    if not rows:
        raise ImportFormatError(f"{source}: no events after the header")
    return rows


def import_rr_with_events(
    store: Store, rr_path: Path, participant_id: str, events_path: Path, column: str | None = None,
    unit: str | None = None, streams: Sequence[str] = (), on_step: Callable[[str], None] = no_step,
) -> int:  # fmt: skip
    """A session from an RR file (any recognised format) whose phases and markers come from an events TSV;
    `on_step` hears the `IMPORT_STEPS` as they begin."""
    on_step("reading")
    rr = read_rr_file(Path(rr_path), column=column, unit=unit, streams=streams)
    if not rr.intervals:
        raise ImportFormatError(f"{rr_path}: no RR intervals found")
    st, _, _, _ = rr_file_beats(rr)
    try:
        events_text = Path(events_path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFormatError(f"{events_path}: not UTF-8 text, so not an events TSV") from None
    events = parse_events_tsv(events_text, str(events_path), float(st.t[-1]))
    phases = sorted((e for e in events if e.duration > 0), key=lambda e: e.onset)
    protocol = {
        "name": Path(events_path).stem,
        "description": "imported RR intervals with phases from an events file",
        "phases": [{"name": p.trial_type, "kind": p.kind, "duration_s": p.duration} for p in phases],
    }
    with store_rr_file(store, rr, participant_id, rr_path, protocol=protocol, on_step=on_step,
                       extra_settings={"events_from": Path(events_path).name}) as (batch, _):  # fmt: skip
        sid = batch.sid
        for i, p in enumerate(phases):
            detail = {"kind": p.kind, "feedback": "n/a", "pacer_bpm": None}
            store.add_marker(sid, p.onset, "phase_start", p.trial_type, phase_index=i, phase_name=p.trial_type,
                             detail=detail)  # fmt: skip
            store.add_marker(sid, p.onset + p.duration, "phase_end", p.trial_type, phase_index=i,
                             phase_name=p.trial_type, detail={"ended": "completed"})  # fmt: skip
        for e in events:
            if e.duration == 0:
                store.add_marker(sid, e.onset, "manual", e.trial_type)
    return sid
