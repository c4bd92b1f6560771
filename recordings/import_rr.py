"""Import an RR file of any recognised format (`import_formats`) as a new session.

The session clock's 0 is the start of the first interval, or the file's own 0 when its time column counts seconds
from a start it names (Empatica's start time, a relative `t_s` column). The recording's start time (UTC) comes
from the file when it has one, otherwise it is the import time (and the notes say so). The session is written in
short batches and is all or nothing (`import_session`). Every interval is stored,
the first and the last included; gaps come from the file (0 values, missing beats in its time column). What was
recognised and everything noticed on the way is kept in the session's settings (`format`, `import_notes`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .beat_stretches import Stretches, place_beats
from .import_formats import ImportFormatError, RRFile, read_rr_file, sniff
from .import_session import ImportBatches, importing_session, no_step
from .store import Store

WHOLE_PHASE = {"name": "whole", "description": "imported recording without markers", "phases": []}
_ECG_CHUNK = 73


def parse_rr_text(text: str, source: str = "<rr>", column: str | None = None, unit: str | None = None) -> list[float]:
    """The valid RR intervals (ms) of a text file, in order (see `import_formats.parse_rr_table`)."""
    from .import_formats import parse_rr_table

    return [iv.rr_ms for iv in parse_rr_table(text, source, column=column, unit=unit).intervals]


def rr_file_beats(rr: RRFile) -> tuple[Stretches, datetime | None, list[str], list[tuple[float, str]]]:
    """Beat times on the session clock, the start the clock's 0 stands for, notes, and the file's markers."""
    st = place_beats(rr.intervals)
    notes = list(st.notes)
    start, markers = rr.start_utc, list(rr.markers)
    firsts = [t for t, _ in markers] + ([float(st.t[0] - st.rr_ms[0] / 1000.0)] if len(st.t) else [])
    begin = min(firsts, default=0.0)
    if begin < 0:  # something began before the file's 0: move 0 there, so nothing is negative
        st.t = st.t - begin
        markers = [(t - begin, label) for t, label in markers]
        if start is not None:
            start = start + timedelta(seconds=begin)
        notes.append(f"session clock 0 moved {-begin:.3f} s earlier, to the start of the first interval")
    return st, start, notes, markers


def _utc(start: datetime | None) -> str | None:
    if start is None:
        return None
    if start.tzinfo is None:
        start = start.astimezone()
    return start.astimezone(UTC).isoformat(timespec="milliseconds")


@contextmanager
def store_rr_file(
    store: Store, rr: RRFile, participant_id: str, path: Path, *, protocol: dict[str, Any] | None = None,
    source: str = "rr", extra_settings: dict[str, Any] | None = None, on_step: Callable[[str], None] = no_step,
) -> Iterator[tuple[ImportBatches, Stretches]]:  # fmt: skip
    """Create the session in short batches (`import_session`): beats, ECG, markers; without phases one phase
    `whole`. The caller adds what else it has inside the `with`; the session is `imported` when it ends."""
    st, start, notes, markers = rr_file_beats(rr)
    if start is None:
        notes.append("the file has no start time: the session's start is the import time")
    settings = {"imported_from": Path(path).name, "format": rr.format, "import_notes": rr.notes + notes,
                **(extra_settings or {})}  # fmt: skip
    on_step("storing")
    with importing_session(store, participant_id, (protocol or WHOLE_PHASE)["name"], protocol or WHOLE_PHASE,
                           "rr-file", source=source, started_utc=_utc(start), settings=settings) as batch:  # fmt: skip
        sid = batch.sid
        batch.beats((float(t), float(v), bool(g), float(lag), None)
                    for t, v, g, lag in zip(st.t, st.rr_ms, st.gap_before, st.lag_s, strict=True))  # fmt: skip
        if rr.ecg is not None:
            t_ecg, uv = rr.ecg
            fs = 1.0 / float(np.median(np.diff(t_ecg))) if len(t_ecg) > 1 else 130.0
            for s in range(0, len(uv), _ECG_CHUNK):
                e = min(s + _ECG_CHUNK, len(uv))
                store.add_ecg_chunk(sid, float(t_ecg[e - 1]), round(float(t_ecg[e - 1]) * 1e9), fs,
                                    np.round(uv[s:e]).astype(np.int32), None)  # fmt: skip
                batch.due()
        if protocol is None:
            t_end = float(st.t[-1]) if len(st.t) else (float(rr.ecg[0][-1]) if rr.ecg is not None else 0.0)
            _whole_and_file_markers(store, sid, markers, t_end)
        yield batch, st


def _whole_and_file_markers(store: Store, sid: int, markers: list[tuple[float, str]], t_end: float) -> None:
    """Phase markers a file carries (`phase_start: NAME` / `phase_end: NAME`, as this recorder streams them) become
    phases; without any, one phase `whole`; every other marker is kept as a point marker."""
    opened: dict[str, float] = {}
    phases: list[tuple[float, float, str]] = []
    points = []
    for t, label in markers:
        kind, _, name = label.partition(": ")
        if kind == "phase_start" and name:
            opened[name] = t
        elif kind == "phase_end" and name in opened:
            phases.append((opened.pop(name), t, name))
        else:
            points.append((t, label))
    if not phases:
        phases = [(0.0, max(t_end, max((t for t, _ in markers), default=0.0)), "whole")]
    for i, (a, b, name) in enumerate(sorted(phases)):
        store.add_marker(sid, a, "phase_start", name, phase_index=i, phase_name=name, detail={"kind": "rest"})
        store.add_marker(sid, b, "phase_end", name, phase_index=i, phase_name=name, detail={"ended": "completed"})
    for t, label in points:
        store.add_marker(sid, t, "manual", label)


def import_rr(
    store: Store, path: Path, participant_id: str, column: str | None = None, protocol: dict[str, Any] | None = None,
    unit: str | None = None, streams: Sequence[str] = (), on_step: Callable[[str], None] = no_step,
) -> int:  # fmt: skip
    """Create a session from an RR file recognised by its content; returns the session id. `streams` names the
    RR/ECG streams of an XDF file to import (see `import_formats.choose_xdf_streams`); `on_step` hears the
    `IMPORT_STEPS` as they begin.

    A Polar Sensor Logger file is imported as `import_polar` would (alone; give a recording's files together there).
    """
    plain = protocol is None and column is None and unit is None and not streams
    if plain and sniff(Path(path).read_bytes()[:4096]) == "psl":
        from .import_polar import import_polar

        return import_polar(store, [Path(path)], participant_id, on_step=on_step)
    on_step("reading")
    rr = read_rr_file(Path(path), column=column, unit=unit, streams=streams)
    if not rr.intervals and rr.ecg is None:
        raise ImportFormatError(f"{path}: no RR intervals found")
    with store_rr_file(store, rr, participant_id, path, protocol=protocol, on_step=on_step) as (batch, _):
        return batch.sid
