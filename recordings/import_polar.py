"""Import Polar Sensor Logger exports (`;`-separated text with phone and sensor timestamps) into a new session.

Recognised by their header (the first line), whatever the file is called:

- ECG: `Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]` — one row per sample.
- RR: `Phone timestamp;RR-interval [ms]` (newer apps), or an HR file with an `RR-interval [ms]` column, for example
  `Phone timestamp;sensor timestamp [ns];HR [bpm];RR-interval [ms]` (a cell may hold several RR values).
- PPI (optical sensors: Verity Sense, OH1): `Phone timestamp;PP-interval [ms];error estimate [ms];blocker;contact;
  contact;hr [bpm]` — PP intervals become beats; one the sensor flags (`blocker` 1) or measured without skin contact
  is not used and leaves a gap. Its `hr [bpm]` column does not make it an HR file.
- HR only: `Phone timestamp;HR [bpm]…` — stored as heart rate, no beats; 0 bpm is no skin contact (stored as
  `supported_not_detected`), not a reason to refuse the file.
- ACC: `Phone timestamp;sensor timestamp [ns];X [mg];Y [mg];Z [mg]` — into `acc_chunks` as chest movement when it
  is a chest strap's (an H10 rate of 25/50/100/200 Hz and no PPI in the recording); an optical arm sensor's ACC
  is not imported, with the reason (a breathing rate from arm movement would be wrong).
- MARKER: `Phone timestamp;Marker start/stop` with `MARKER_START`/`MARKER_STOP` rows — each pair becomes a phase
  (`marked 1`, …); an unpaired one a point marker.

Several files of one recording go into one session. The session clock's 0 is the earliest phone timestamp (or
the start of the first interval, if earlier); the phone writes local civil time without a zone, which is taken as
this computer's local time for the session's UTC start. Beat times follow the RR intervals per stretch, placed by
the phone's stamps (`beat_stretches`): a phone timestamp that steps backwards is tolerated and noted. ECG frames
keep the sensor timestamps, which `ecg_time` maps onto the session clock. A broken file (wrong columns, wrong
units, truncated or garbled rows, sensor time going backwards) is refused with its file and line, and nothing is
stored; what was tolerated is kept in the session's settings as `import_notes`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from .beat_stretches import Interval, Stretches, place_beats
from .import_formats import ImportFormatError
from .import_session import importing_session, no_step
from .limits import MAX_RECORDING_S, LimitError, check_span, check_start, rr_range_ms, rr_range_text
from .store import Store

PHONE = "Phone timestamp"
ECG_UNITS_OK = "ecg [uV]"
WHOLE = {"name": "whole", "description": "imported Polar Sensor Logger recording", "phases": []}


@dataclass
class PolarFile:
    path: str
    kind: str  # "ecg", "rr", "ppi", "hr", "acc" or "marker"
    phone: list[datetime] = field(default_factory=list)
    sensor_ns: list[int] = field(default_factory=list)
    ecg_uv: list[int] = field(default_factory=list)
    rr_ms: list[list[float]] = field(default_factory=list)
    rr_gap: list[bool] = field(default_factory=list)  # per row: the sensor says its interval is invalid / no contact
    lines: list[int] = field(default_factory=list)
    hr: list[float] = field(default_factory=list)
    acc_mg: list[tuple[int, int, int]] = field(default_factory=list)
    marker: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


KINDS = {
    "ecg": "ECG (ecg [uV])",
    "rr": "RR (RR-interval [ms])",
    "ppi": "PP intervals (PP-interval [ms])",
    "hr": "heart rate (HR [bpm])",
    "acc": "accelerometer (X/Y/Z [mg])",
    "marker": "markers (Marker start/stop)",
}


def _phone_time(cell: str, where: str) -> datetime:
    try:
        phone = datetime.fromisoformat(cell.strip())
    except ValueError:
        raise ImportFormatError(f"{where}: {PHONE!r} {cell!r} is not a date and time (YYYY-MM-DDTHH:MM:SS)") from None
    try:
        return check_start(phone, f"{where}: {PHONE!r}")  # type: ignore[return-value]
    except LimitError as exc:
        raise ImportFormatError(str(exc)) from None


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


def _kind(header: list[str], source: str) -> str:
    lowered = [h.lower() for h in header]
    wrong_ecg = [h for h in header if h.lower().startswith("ecg") and h != ECG_UNITS_OK]
    wrong_rr = [h for h in header if h.lower().startswith("rr") and h.lower() != "rr-interval [ms]"]
    if ECG_UNITS_OK.lower() in lowered:
        if "sensor timestamp [ns]" not in lowered:
            raise ImportFormatError(f"{source}: line 1: an ECG file needs a 'sensor timestamp [ns]' column")
        return "ecg"
    if wrong_ecg:
        raise ImportFormatError(f"{source}: line 1: ECG column {wrong_ecg[0]!r} is not µV; expected {ECG_UNITS_OK!r}")
    if "pp-interval [ms]" in lowered:
        return "ppi"  # before HR: a PPI file has an `hr [bpm]` column too
    if "rr-interval [ms]" in lowered:
        return "rr"
    if wrong_rr:
        raise ImportFormatError(f"{source}: line 1: RR column {wrong_rr[0]!r} is not ms; expected 'RR-interval [ms]'")
    if {"x [mg]", "y [mg]", "z [mg]"} <= set(lowered):
        if "sensor timestamp [ns]" not in lowered:
            raise ImportFormatError(f"{source}: line 1: an ACC file needs a 'sensor timestamp [ns]' column")
        return "acc"
    if any(h.startswith("marker") for h in lowered):
        return "marker"
    if "hr [bpm]" in lowered:
        return "hr"
    raise ImportFormatError(
        f"{source}: line 1: a Polar Sensor Logger header with none of the columns expected for "
        f"{', '.join(KINDS.values())}; got {header}"
    )


def _rr_values(cell: str, where: str, what: str) -> list[float]:
    values = [_number(v, where, what) for v in cell.replace(",", " ").split()]
    for v in values:
        if 0 < v <= 3.0:
            raise ImportFormatError(f"{where}: RR {v:g} ms is no heartbeat interval: seconds? RR must be in ms")
    return values


def parse_polar_text(text: str, source: str = "<polar>") -> PolarFile:
    """Parse one Polar Sensor Logger file; raises ImportFormatError naming `source`, the line and the column.

    Tolerated and noted rather than refused: a phone timestamp that steps backwards (the app stamps rows as they
    reach the phone), 0 bpm (no skin contact), RR/PP values of 0, PP intervals the sensor flags as invalid.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ImportFormatError(f"{source}: empty file")
    header = [h.strip() for h in lines[0].rstrip(";").split(";")]
    if header[0] != PHONE:
        raise ImportFormatError(
            f"{source}: line 1: not a Polar Sensor Logger file (expected a ';'-separated header starting with "
            f"{PHONE!r}, got {lines[0][:40]!r}; other RR files are imported with `import rr`)"
        )
    kind = _kind(header, source)
    out = PolarFile(source, kind)
    ecg_col = _column(header, ECG_UNITS_OK)
    rr_col = _column(header, "RR-interval [ms]", "PP-interval [ms]")
    hr_col = _column(header, "HR [bpm]")
    ns_col = _column(header, "sensor timestamp [ns]")
    blocker_col = _column(header, "blocker")
    contact_cols = [i for i, h in enumerate(header) if h.lower() == "contact"]
    xyz = [_column(header, f"{a} [mg]") for a in "XYZ"]
    mark_col = next((i for i, h in enumerate(header) if h.lower().startswith("marker")), None)
    needed = max(c for c in (ecg_col, rr_col, hr_col, ns_col, mark_col, *xyz, 0) if c is not None)
    last_phone: datetime | None = None
    last_ns: int | None = None
    backwards: list[tuple[int, float]] = []
    zeros, invalid, no_contact = [], 0, 0
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        where = f"{source}: line {lineno}"
        cells = raw.split(";")
        if kind in ("ecg", "acc", "ppi") and len(cells) <= needed:
            raise ImportFormatError(f"{where}: {len(cells)} fields, expected {len(header)} (truncated row?)")
        phone = _phone_time(cells[0], where)
        if last_phone is not None and (phone.tzinfo is None) != (last_phone.tzinfo is None):
            raise ImportFormatError(f"{where}: {PHONE!r} mixes times with and without a time zone")
        if last_phone is not None and phone < last_phone:
            backwards.append((lineno, (last_phone - phone).total_seconds()))
        last_phone = phone
        if kind in ("ecg", "acc"):
            ns_cell = cells[ns_col].strip()
            if not ns_cell.lstrip("-").isdigit():
                raise ImportFormatError(f"{where}: 'sensor timestamp [ns]' {ns_cell!r} is not an integer")
            ns = int(ns_cell) if len(ns_cell) <= 20 else 2**63
            if not -(2**63) <= ns < 2**63 or (out.sensor_ns and (ns - out.sensor_ns[0]) / 1e9 > MAX_RECORDING_S):
                raise ImportFormatError(f"{where}: 'sensor timestamp [ns]' {ns_cell[:24]!r} is outside the "
                                        f"{MAX_RECORDING_S / 86400:g} days a recording may span")  # fmt: skip
            if last_ns is not None and ns <= last_ns:
                raise ImportFormatError(f"{where}: 'sensor timestamp [ns]' does not increase ({ns} after {last_ns})")
            if kind == "ecg":
                value = _number(cells[ecg_col], where, "ecg [uV]")
                if abs(value) > 100_000:
                    raise ImportFormatError(f"{where}: ECG {value:g} µV is not a chest-strap ECG value (units?)")
                out.ecg_uv.append(round(value))
            else:
                out.acc_mg.append(tuple(round(_number(cells[c], where, f"{'XYZ'[k]} [mg]"))
                                        for k, c in enumerate(xyz)))  # fmt: skip
            out.sensor_ns.append(ns)
            last_ns = ns
        elif kind in ("rr", "ppi"):
            cell = cells[rr_col].strip() if rr_col < len(cells) else ""
            if not cell:
                continue  # an HR row without beats
            values = _rr_values(cell, where, header[rr_col])
            bad = False
            if kind == "ppi":
                if blocker_col is not None and cells[blocker_col].strip() == "1":
                    bad, invalid = True, invalid + 1
                if len(contact_cols) >= 2 and cells[contact_cols[1]].strip() == "1" and \
                        cells[contact_cols[0]].strip() == "0":  # fmt: skip
                    bad, no_contact = True, no_contact + 1
            if any(v == 0 for v in values):
                zeros.append(lineno)
            out.rr_ms.append(values)
            out.rr_gap.append(bad)
        elif kind == "hr":
            cell = cells[hr_col].strip() if hr_col < len(cells) else ""
            if not cell:
                continue
            hr = _number(cell, where, "HR [bpm]")
            if hr == 0:
                zeros.append(lineno)
            elif not 20 <= hr <= 250:
                raise ImportFormatError(f"{where}: HR {hr:g} bpm is outside 20–250 bpm")
            out.hr.append(hr)
        else:
            label = cells[mark_col].strip() if mark_col < len(cells) else ""
            if label not in ("MARKER_START", "MARKER_STOP"):
                raise ImportFormatError(f"{where}: marker {label!r}: expected MARKER_START or MARKER_STOP")
            out.marker.append(label)
        out.phone.append(phone)
        out.lines.append(lineno)
    if not out.phone:
        raise ImportFormatError(f"{source}: no data rows after the header")
    try:
        check_span(((p - out.phone[0]).total_seconds() for p in out.phone), f"{source}: {PHONE!r}")
    except LimitError as exc:
        raise ImportFormatError(str(exc)) from None
    name = Path(source).name
    for lineno, step in backwards:
        out.notes.append(f"{name}: line {lineno}: the phone timestamp steps back {step:.3f} s (tolerated)")
    if zeros and kind == "hr":
        out.notes.append(f"{name}: {len(zeros)} row(s) of 0 bpm (no skin contact), first at line {zeros[0]}: "
                         "stored as no contact")  # fmt: skip
    elif zeros:
        out.notes.append(f"{name}: {len(zeros)} row(s) with an interval of 0, first at line {zeros[0]}: a gap")
    if invalid:
        out.notes.append(f"{name}: {invalid} PP interval(s) the sensor flags as invalid (blocker): not used, a gap")
    if no_contact:
        out.notes.append(f"{name}: {no_contact} PP interval(s) without skin contact: not used, a gap")
    return out


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFormatError(f"{path}: not a text file, so not Polar Sensor Logger output (FIT, XDF and other RR "
                                "files are imported with `import rr`)") from None  # fmt: skip


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


H10_ACC_RATES_HZ = (25.0, 50.0, 100.0, 200.0)


def _acc_frames(f: PolarFile, t0: datetime, fs: float) -> list[tuple[float, int, float, np.ndarray]]:
    phone_s = np.array([(p - t0).total_seconds() for p in f.phone])
    ns = np.array(f.sensor_ns, dtype=np.int64)
    xyz = np.array(f.acc_mg, dtype=np.int32).reshape(-1, 3)
    step = 36
    return [(float(phone_s[min(s + step, len(ns)) - 1]), int(ns[min(s + step, len(ns)) - 1]), fs,
             xyz[s:s + step]) for s in range(0, len(ns), step)]  # fmt: skip


def _acc_refusal(f: PolarFile, files: Sequence[PolarFile]) -> tuple[str | None, float]:
    """Why an ACC file is not chest movement (None when it is taken as an H10's) and its nominal rate."""
    ns = np.array(f.sensor_ns, dtype=np.int64)
    fs = 1e9 / float(np.median(np.diff(ns))) if len(ns) > 1 else 0.0
    name = Path(f.path).name
    if any(o.kind == "ppi" for o in files):
        return (f"{name}: accelerometer of an optical sensor (the recording has PP intervals): it is arm or "
                "forearm movement, not chest movement, so it is not imported (a breathing rate from it would be "
                "wrong)"), fs  # fmt: skip
    nominal = min(H10_ACC_RATES_HZ, key=lambda r: abs(r - fs))
    if abs(fs - nominal) > 0.02 * nominal:
        return (f"{name}: accelerometer at {fs:.1f} Hz is not a Polar H10 chest strap's (25/50/100/200 Hz; "
                "52 Hz is an optical arm sensor's): not imported as chest movement"), fs  # fmt: skip
    return None, nominal


def _marker_phases(f: PolarFile, t0: datetime) -> tuple[list[tuple[float, float]], list[tuple[float, str]], list[str]]:
    """MARKER_START/STOP pairs → (start, stop) spans; unpaired ones → point markers, noted."""
    spans, points, notes = [], [], []
    open_t: float | None = None
    name = Path(f.path).name
    for phone, label, line in zip(f.phone, f.marker, f.lines, strict=True):
        t = (phone - t0).total_seconds()
        if label == "MARKER_START":
            if open_t is not None:
                points.append((open_t, "MARKER_START"))
                notes.append(f"{name}: a MARKER_START without a stop before line {line}: kept as a point marker")
            open_t = t
        elif open_t is None:
            points.append((t, "MARKER_STOP"))
            notes.append(f"{name}: line {line}: MARKER_STOP without a start: kept as a point marker")
        else:
            spans.append((open_t, t))
            open_t = None
    if open_t is not None:
        points.append((open_t, "MARKER_START"))
        notes.append(f"{name}: the last MARKER_START has no stop: kept as a point marker")
    return spans, points, notes


def import_polar(
    store: Store, paths: Sequence[Path], participant_id: str, on_step: Callable[[str], None] = no_step
) -> int:
    """Create one session from one or more Polar Sensor Logger files of the same recording.

    MARKER_START/STOP pairs become phases `marked 1`, `marked 2`, … (without markers: one phase `whole`); what
    was noticed on the way (no contact, phone time stepping back, ACC not imported) is kept in the session's
    settings as `import_notes`. `on_step` hears the `IMPORT_STEPS` as they begin.
    """
    if not paths:
        raise ImportFormatError("no Polar Sensor Logger files given")
    on_step("reading")
    files = [parse_polar_text(_read_text(Path(p)), str(p)) for p in paths]
    notes = [n for f in files for n in f.notes]
    beat_files = [Path(f.path).name for f in files if f.kind in ("rr", "ppi")]
    if len(beat_files) > 1:
        raise ImportFormatError(f"{', '.join(beat_files)}: several files of beats in one recording; import each "
                                "sensor's files as its own session")  # fmt: skip
    accs = []
    for f in (f for f in files if f.kind == "acc"):
        reason, fs = _acc_refusal(f, files)
        if reason is None:
            accs.append((f, fs))
        elif len(files) == 1:
            raise ImportFormatError(reason)
        else:
            notes.append(reason)
    used = [f for f in files if f.kind != "acc" or any(f is a for a, _ in accs)]
    if all(f.kind == "marker" for f in used):
        raise ImportFormatError(f"{files[0].path}: only markers: import them together with the recording's HR, RR, "
                                "PPI or ECG files")  # fmt: skip
    t0 = min(min(f.phone) for f in used)
    beats, beat_notes = _place_rr(files, t0)
    notes += beat_notes
    first_beat = min((float(st.t[0] - st.rr_ms[0] / 1000.0) for st in beats if len(st.t)), default=0.0)
    if first_beat < 0:  # the first interval began before the first row's stamp: the session clock starts there
        t0 += timedelta(seconds=first_beat)
        for st in beats:
            st.t = st.t - first_beat
    t_end = max((max(f.phone) - t0).total_seconds() for f in used)
    started = t0.astimezone() if t0.tzinfo is None else t0
    spans, points = [], []
    for f in (f for f in files if f.kind == "marker"):
        s, p, n = _marker_phases(f, t0)
        spans, points, notes = spans + s, points + p, notes + n
    phases = [(a, b, f"marked {i + 1}") for i, (a, b) in enumerate(sorted(spans))] or [(0.0, t_end, "whole")]
    protocol = {"name": "marked" if spans else "whole", "description": "imported Polar Sensor Logger recording",
                "phases": [{"name": n, "kind": "other", "duration_s": b - a} for a, b, n in phases if spans]}
    on_step("storing")
    with importing_session(
        store,
        participant_id,
        protocol["name"],
        protocol,
        "Polar Sensor Logger",
        source="polar-sensor-logger",
        started_utc=started.astimezone(tz=None).isoformat(timespec="milliseconds"),
        settings={"imported_from": [Path(p).name for p in paths], "format": "Polar Sensor Logger",
                  "kinds": [f.kind for f in files], "import_notes": notes},
    ) as batch:  # fmt: skip
        sid = batch.sid
        for f in files:
            if f.kind == "ecg":
                for t, ns, fs, samples in _ecg_frames(f, t0):
                    store.add_ecg_chunk(sid, t, ns, fs, samples, None)
                    batch.due()
            elif f.kind == "hr":
                for phone, hr in zip(f.phone, f.hr, strict=True):
                    contact = "supported_not_detected" if hr == 0 else "unknown"
                    store.add_heart_rate(sid, (phone - t0).total_seconds(), round(hr), contact)
                    batch.due()
        for f, fs in accs:
            for t, ns, fsn, samples in _acc_frames(f, t0, fs):
                store.add_acc_chunk(sid, t, ns, fsn, samples, None)
                batch.due()
        for st in beats:
            batch.beats((float(t), float(v), bool(g), float(lag), None)
                        for t, v, g, lag in zip(st.t, st.rr_ms, st.gap_before, st.lag_s, strict=True))
        for i, (a, b, name) in enumerate(phases):
            kind = "other" if spans else "rest"
            store.add_marker(sid, a, "phase_start", name, phase_index=i, phase_name=name, detail={"kind": kind})
            store.add_marker(sid, b, "phase_end", name, phase_index=i, phase_name=name,
                             detail={"ended": "completed"})  # fmt: skip
        for t, label in points:
            store.add_marker(sid, t, "manual", label)
    return sid


def _place_rr(files: Sequence[PolarFile], t0: datetime) -> tuple[list[Stretches], list[str]]:
    """Beat times of each RR/PPI file: the RR chain per stretch, placed by the phone stamps; invalid rows are gaps."""
    beats, notes = [], []
    lo, hi = rr_range_ms()
    for f in (f for f in files if f.kind in ("rr", "ppi")):
        intervals: list[Interval] = []
        implausible: list[int] = []
        pending_gap, skipped = False, 0.0
        for phone, values, bad, line in zip(f.phone, f.rr_ms, f.rr_gap, f.lines, strict=True):
            t_row = (phone - t0).total_seconds()
            for k, v in enumerate(values):
                if v and not lo <= v <= hi:  # not a heartbeat interval: a gap of unknown length
                    implausible.append(line)
                    pending_gap, skipped = True, 0.0
                    continue
                if v == 0 or bad:  # a flagged interval still tells how long it was; a 0 does not
                    skipped = skipped + v if v and (not pending_gap or skipped) else 0.0
                    pending_gap = True
                    continue
                intervals.append(Interval(v, t_row if k == len(values) - 1 else None, pending_gap, line, skipped))
                pending_gap, skipped = False, 0.0
        if implausible:
            notes.append(f"{Path(f.path).name}: {len(implausible)} interval(s) outside the plausible {rr_range_text()} "
                         f"(first on line {implausible[0]}): not used, a gap")  # fmt: skip
        if not intervals:
            raise ImportFormatError(f"{f.path}: no valid intervals (all are 0, flagged invalid or outside "
                                    f"{rr_range_text()})")  # fmt: skip
        st = place_beats(intervals)
        notes += [f"{Path(f.path).name}: {n}" for n in st.notes]
        beats.append(st)
    return beats, notes
