"""Import Polar Sensor Logger exports (`;`-separated text with phone and sensor timestamps) into a new session.

Recognised by their header (the first line):

- ECG: `Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]` — one row per sample.
- RR: `Phone timestamp;RR-interval [ms]` (newer apps), or an HR file with an `RR-interval [ms]` column, for example
  `Phone timestamp;sensor timestamp [ns];HR [bpm];RR-interval [ms]` (a cell may hold several RR values).
- HR only: `Phone timestamp;HR [bpm];HRV [ms];Breathing interval [rpm];` — stored as heart rate, no beats.

Several files of one recording (for example `..._ECG.txt` and `..._RR.txt`) go into one session. The session
clock's 0 is the earliest phone timestamp; the phone writes local civil time without a zone, which is taken as this
computer's local time for the session's UTC start. Beat times are reconstructed from the RR values and the phone's
arrival times exactly as for live data (`beat_timeline.fit_beat_times`); ECG frames keep the sensor timestamps, which
`ecg_time` maps onto the session clock. A broken file (wrong columns, wrong units, truncated or garbled rows,
time going backwards) is refused with its file and line, and nothing is stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .beat_timeline import Notification, fit_beat_times
from .capture import ImportFormatError
from .store import Store

PHONE = "Phone timestamp"
ECG_UNITS_OK = "ecg [uV]"
WHOLE = {"name": "whole", "description": "imported Polar Sensor Logger recording", "phases": []}


@dataclass
class PolarFile:
    path: str
    kind: str  # "ecg", "rr" or "hr"
    phone: list[datetime] = field(default_factory=list)
    sensor_ns: list[int] = field(default_factory=list)
    ecg_uv: list[int] = field(default_factory=list)
    rr_ms: list[list[float]] = field(default_factory=list)
    hr: list[float] = field(default_factory=list)


def _phone_time(cell: str, where: str) -> datetime:
    try:
        return datetime.fromisoformat(cell.strip())
    except ValueError:
        raise ImportFormatError(f"{where}: {PHONE!r} {cell!r} is not a date and time (YYYY-MM-DDTHH:MM:SS)") from None


def _number(cell: str, where: str, what: str) -> float:
    try:
        value = float(cell.strip().replace(",", "."))
    except ValueError:
        raise ImportFormatError(f"{where}: {what} {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise ImportFormatError(f"{where}: {what} {cell!r} is not a finite number")
    return value


def _column(header: list[str], *names: str) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    return None


def parse_polar_text(text: str, source: str = "<polar>") -> PolarFile:
    """Parse one Polar Sensor Logger file; raises ImportFormatError naming `source`, the line and the column."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ImportFormatError(f"{source}: empty file")
    header = [h.strip() for h in lines[0].rstrip(";").split(";")]
    if header[0] != PHONE:
        raise ImportFormatError(
            f"{source}: line 1: not a Polar Sensor Logger file (expected a ';'-separated header starting with "
            f"{PHONE!r}, got {lines[0][:80]!r})"
        )
    ecg_col = _column(header, ECG_UNITS_OK)
    rr_col = _column(header, "RR-interval [ms]")
    hr_col = _column(header, "HR [bpm]")
    ns_col = _column(header, "sensor timestamp [ns]")
    wrong_ecg = [h for h in header if h.lower().startswith("ecg") and h != ECG_UNITS_OK]
    wrong_rr = [h for h in header if h.lower().startswith("rr") and h.lower() != "rr-interval [ms]"]
    if ecg_col is None and wrong_ecg:
        raise ImportFormatError(f"{source}: line 1: ECG column {wrong_ecg[0]!r} is not µV; expected {ECG_UNITS_OK!r}")
    if rr_col is None and wrong_rr:
        raise ImportFormatError(f"{source}: line 1: RR column {wrong_rr[0]!r} is not ms; expected 'RR-interval [ms]'")
    if ecg_col is not None:
        if ns_col is None:
            raise ImportFormatError(f"{source}: line 1: an ECG file needs a 'sensor timestamp [ns]' column")
        out = PolarFile(source, "ecg")
    elif rr_col is not None:
        out = PolarFile(source, "rr")
    elif hr_col is not None:
        out = PolarFile(source, "hr")
    else:
        raise ImportFormatError(
            f"{source}: line 1: no 'ecg [uV]', 'RR-interval [ms]' or 'HR [bpm]' column in header {header}"
        )
    last_phone: datetime | None = None
    last_ns: int | None = None
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        where = f"{source}: line {lineno}"
        cells = raw.split(";")
        needed = max(c for c in (ecg_col, rr_col, hr_col, ns_col, 0) if c is not None)
        if out.kind == "ecg" and len(cells) <= needed:
            raise ImportFormatError(f"{where}: {len(cells)} fields, expected {len(header)} (truncated row?)")
        phone = _phone_time(cells[0], where)
        if last_phone is not None and phone < last_phone:
            raise ImportFormatError(f"{where}: {PHONE!r} goes backwards ({phone} after {last_phone})")
        if out.kind == "ecg":
            ns_cell = cells[ns_col].strip()
            if not ns_cell.lstrip("-").isdigit():
                raise ImportFormatError(f"{where}: 'sensor timestamp [ns]' {ns_cell!r} is not an integer")
            ns = int(ns_cell)
            if last_ns is not None and ns <= last_ns:
                raise ImportFormatError(f"{where}: 'sensor timestamp [ns]' does not increase ({ns} after {last_ns})")
            value = _number(cells[ecg_col], where, "ecg [uV]")
            if abs(value) > 100_000:
                raise ImportFormatError(f"{where}: ECG {value:g} µV is not a chest-strap ECG value (units?)")
            out.sensor_ns.append(ns)
            out.ecg_uv.append(round(value))
            last_ns = ns
        elif out.kind == "rr":
            cell = cells[rr_col].strip() if rr_col < len(cells) else ""
            if not cell:
                continue  # an HR row without beats
            values = [_number(v, where, "RR-interval [ms]") for v in cell.replace(",", " ").split()]
            for v in values:
                if not 200.0 <= v <= 3000.0:
                    hint = " (seconds? RR must be in milliseconds)" if 0.2 <= v <= 3.0 else ""
                    raise ImportFormatError(f"{where}: RR {v:g} ms is outside 200–3000 ms{hint}")
            out.rr_ms.append(values)
        else:
            cell = cells[hr_col].strip() if hr_col < len(cells) else ""
            if not cell:
                continue
            hr = _number(cell, where, "HR [bpm]")
            if not 20 <= hr <= 250:
                raise ImportFormatError(f"{where}: HR {hr:g} bpm is outside 20–250 bpm")
            out.hr.append(hr)
        out.phone.append(phone)
        last_phone = phone
    if not out.phone:
        raise ImportFormatError(f"{source}: no data rows after the header")
    return out


def _ecg_frames(f: PolarFile, t0: datetime) -> list[tuple[float, int, float, np.ndarray]]:
    """Rows of one phone timestamp are one frame; if every row has its own stamp, blocks of 73 samples."""
    phone_s = np.array([(p - t0).total_seconds() for p in f.phone])
    ns = np.array(f.sensor_ns, dtype=np.int64)
    uv = np.array(f.ecg_uv, dtype=np.int32)
    fs = 1e9 / float(np.median(np.diff(ns))) if len(ns) > 1 else 130.0
    starts = np.flatnonzero(np.concatenate([[True], np.diff(phone_s) != 0]))
    if len(starts) > 0.5 * len(ns):
        starts = np.arange(0, len(ns), 73)
    ends = np.append(starts[1:], len(ns))
    return [(float(phone_s[e - 1]), int(ns[e - 1]), fs, uv[s:e]) for s, e in zip(starts, ends, strict=True)]


def import_polar(store: Store, paths: Sequence[Path], participant_id: str) -> int:
    """Create one session from one or more Polar Sensor Logger files of the same recording."""
    if not paths:
        raise ImportFormatError("no Polar Sensor Logger files given")
    files = [parse_polar_text(Path(p).read_text(encoding="utf-8-sig"), str(p)) for p in paths]
    t0 = min(f.phone[0] for f in files)
    t_end = max((f.phone[-1] - t0).total_seconds() for f in files)
    started = t0.astimezone() if t0.tzinfo is None else t0
    with store.transaction():
        sid = store.create_session(
            participant_id,
            "whole",
            WHOLE,
            "Polar Sensor Logger",
            source="polar-sensor-logger",
            started_utc=started.astimezone(tz=None).isoformat(timespec="milliseconds"),
            settings={"imported_from": [Path(p).name for p in paths]},
        )
        for f in files:
            if f.kind == "ecg":
                for t, ns, fs, samples in _ecg_frames(f, t0):
                    store.add_ecg_chunk(sid, t, ns, fs, samples, None)
            elif f.kind == "rr":
                # the strap's 1/1024 s units drive the time chain (phone times as arrivals, whole-file fit);
                # the file's ms values are stored as given
                notes = [
                    Notification(None, (phone - t0).total_seconds(),
                                 tuple(u for v in values if (u := round(v * 1.024)) > 0))
                    for phone, values in zip(f.phone, f.rr_ms, strict=True)
                ]
                fitted, _stretches = fit_beat_times(notes)
                values_ms = [v for values in f.rr_ms for v in values if round(v * 1.024)]
                store.add_beats(sid, [(r.t, v, r.gap_before, r.arrival_lag_s, None)
                                      for r, v in zip(fitted, values_ms, strict=True)])
            else:
                for phone, hr in zip(f.phone, f.hr, strict=True):
                    store.add_heart_rate(sid, (phone - t0).total_seconds(), round(hr), "unknown")
        beats = store.beats(sid)
        start = min(0.0, float(beats.t[0])) if len(beats.t) else 0.0
        store.add_marker(sid, start, "phase_start", "whole", phase_index=0, phase_name="whole",
                         detail={"kind": "rest"})  # fmt: skip
        store.add_marker(sid, t_end, "phase_end", "whole", phase_index=0, phase_name="whole",
                         detail={"kind": "rest"})  # fmt: skip
    store.end_session(sid, "imported")
    return sid
