"""RR files written by other apps, recognised by their content (never by file name): pure parsers.

Recognised:

- plain RR text: one value per line (CRLF or LF, a header line allowed), or all on one line separated by spaces
  (Welltory's export); decimal commas (`812,5`) are read as decimals;
- CSV/TSV/`;`-separated with a header: the RR column by name (or `--column`) and, when present, a time column
  (`t`, `t_s`, `time`, `timestamp`, …: seconds, Unix time or ISO date-time), used for gaps and the start time;
- Empatica E4 `IBI.csv`: a first line `<Unix start>, IBI`, then `seconds since start, IBI in seconds`;
- Polar `.hrm`: a `[Params]` header (date and start time) and RR in ms in `[HRData]`;
- Garmin/ANT FIT: `hrv` messages (RR in s, read with `fitdecode`), start time from the file;
- XDF from LabRecorder (read with `pyxdf`): an RR stream (ms, LSL time stamps) and `Markers` streams.

A value of 0 is not an interval (apps write it for "no beat" or as an end marker): it is skipped and starts a
gap, and the notes say so; so do values outside the plausible RR range (`limits.rr_range_ms`, 200–3000 ms unless
`$CMT_RR_RANGE_MS` says otherwise) and, in a table without a time column, an empty RR cell (missing data; with
a time column the times say where beats are missing). A UTF-8 byte-order mark is read as one; a text with NUL
bytes is not text. Times must span at most `limits.MAX_RECORDING_S`, a start time lie within
`limits.check_start`. Units are milliseconds unless the format says
otherwise or `unit="s"` is given; values that look like seconds without that are refused with a hint. Anything not
recognised is refused with one line saying what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from .beat_stretches import Interval
from .limits import LimitError, check_span, check_start, rr_range_ms, timestamp_utc

RR_NAMES = ("rr", "rr_ms", "rr (ms)", "rr [ms]", "rr-interval", "rr-interval [ms]", "rr_interval", "ibi", "ibi_ms",
            "ibi (ms)", "ibi [ms]", "ibi_s", "rr_s", "nn", "interval", "pp-interval [ms]", "ppi")  # fmt: skip
TIME_NAMES = ("t", "t_s", "time", "time_s", "time (s)", "time [s]", "timestamp", "timestamp_s", "seconds",
              "phone timestamp", "datetime", "date_time")  # fmt: skip
EXPECTED = (
    "expected RR intervals as one number per line, numbers separated by spaces on one line, a CSV with an RR "
    "column, an Empatica IBI.csv, a Polar .hrm, a FIT file with hrv messages, an XDF file or Polar Sensor Logger text"
)


class ImportFormatError(ValueError):
    """An input file that cannot be imported; the message names the file and the line."""


class UnrecognisedFile(ImportFormatError):
    """A file whose content is none of the recognised formats; the message says what was expected."""


@dataclass
class RRFile:
    """An imported RR series: intervals in file order with their times on the session clock when the file has them."""

    format: str
    intervals: list[Interval]
    start_utc: datetime | None = None
    markers: list[tuple[float, str]] = field(default_factory=list)  # (session s, label)
    notes: list[str] = field(default_factory=list)
    ecg: tuple[np.ndarray, np.ndarray] | None = None  # (session s, µV) from an XDF ECG stream


def sniff(data: bytes) -> str:
    """The format of a file's content: fit, xdf, psl, hrm, empatica or text."""
    if len(data) >= 12 and data[8:12] == b".FIT":
        return "fit"
    if data.startswith(b"XDF:"):
        return "xdf"
    head = data[:4096].lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"Phone timestamp"):
        return "psl"
    if head.startswith(b"[Params]") or b"[HRData]" in data:
        return "hrm"
    first = head.split(b"\n", 1)[0].strip()
    if re.fullmatch(rb"\d{9,11}(\.\d*)?\s*,\s*IBI", first):
        return "empatica"
    return "text"


def read_rr_file(
    path: Path, *, column: str | None = None, unit: str | None = None, streams: Sequence[str] = ()
) -> RRFile:
    """Recognise and parse one file; raises UnrecognisedFile/ImportFormatError with one line naming the file.

    `streams` names the XDF streams to import (`--stream`); any other format refuses it."""
    try:
        rr = _read_rr_file(path, column=column, unit=unit, streams=streams)
        check_start(rr.start_utc, f"{path}")
        check_span((iv.t_s for iv in rr.intervals if iv.t_s is not None), f"{path}")
        check_span((t for t, _ in rr.markers), f"{path}: markers")
    except LimitError as exc:
        raise ImportFormatError(str(exc)) from None
    return rr


def _read_rr_file(path: Path, *, column: str | None, unit: str | None, streams: Sequence[str]) -> RRFile:
    data = Path(path).read_bytes()
    kind = sniff(data)
    source = str(path)
    if kind == "fit":
        return parse_fit(path)
    if kind == "xdf":
        return parse_xdf(path, streams)
    if streams:
        raise ImportFormatError(f"{source}: --stream chooses streams of an XDF file, and this is not one")
    if kind == "psl":
        raise UnrecognisedFile(f"{source}: a Polar Sensor Logger file: import it with `import polar`")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnrecognisedFile(f"{source}: not a text file and not FIT or XDF; {EXPECTED}") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise UnrecognisedFile(f"{source}: line {line}: a NUL byte, so not a text file; {EXPECTED}")
    if kind == "hrm":
        return parse_hrm(text, source)
    if kind == "empatica":
        return parse_empatica(text, source)
    return parse_rr_table(text, source, column=column, unit=unit)


# -- values --------------------------------------------------------------------------------------------------------


def _number(cell: str, where: str, decimal_comma: bool = False) -> float:
    s = cell.strip()
    if decimal_comma:
        s = s.replace(",", ".")
    try:
        value = float(s)
    except ValueError:
        raise ImportFormatError(f"{where}: {cell.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ImportFormatError(f"{where}: {cell.strip()!r} is not a finite number")
    return value


def to_intervals(
    values: Sequence[float], source: str, *, unit: str, unit_given: bool, times: Sequence[float | None] | None = None,
    lines: Sequence[int | None] | None = None, gap_flags: Sequence[bool] | None = None,
) -> tuple[list[Interval], list[str]]:  # fmt: skip
    """Values in `unit` → intervals in ms; 0 and out-of-range values become gaps (noted); seconds without the unit
    said are refused."""
    scale = 1000.0 if unit == "s" else 1.0
    rr_min, rr_max = rr_range_ms()
    vals = np.asarray(values, dtype=float)
    if not len(vals):
        raise ImportFormatError(f"{source}: no RR intervals found; {EXPECTED}")
    positive = vals[vals > 0]
    if not unit_given and unit == "ms" and len(positive) and 0.2 <= float(np.median(positive)) <= 3.0:
        raise ImportFormatError(f"{source}: RR values like {positive[0]:g} look like seconds, not ms: give --unit s")
    if np.any(vals < 0):
        i = int(np.flatnonzero(vals < 0)[0])
        raise ImportFormatError(f"{source}: line {lines[i] if lines else i + 1}: RR {vals[i]:g} is negative")
    out: list[Interval] = []
    zeros: list[int | None] = []
    bad: list[tuple[int | None, float]] = []
    pending_gap = False
    for i, v in enumerate(vals):
        line = lines[i] if lines else i + 1
        ms = v * scale
        if gap_flags is not None and gap_flags[i]:
            pending_gap = True
        if v == 0:
            zeros.append(line)
            pending_gap = True
            continue
        if not rr_min <= ms <= rr_max:
            bad.append((line, ms))
            pending_gap = True
            continue
        out.append(Interval(float(ms), None if times is None else times[i], pending_gap, line))
        pending_gap = False
    notes = []
    if zeros:
        where = f"line {zeros[0]}" if len(zeros) == 1 else f"{len(zeros)} lines, first {zeros[0]}"
        notes.append(f"{len(zeros)} value(s) of 0 ({where}): not an interval, skipped as a gap")
    if bad:
        shown = ", ".join(f"line {ln}: {ms:g} ms" for ln, ms in bad[:3])
        notes.append(f"{len(bad)} value(s) outside the plausible {rr_min:g}–{rr_max:g} ms skipped as gaps ({shown})")
    if not out:
        raise ImportFormatError(
            f"{source}: no valid RR intervals (all are 0 or outside the plausible {rr_min:g}–{rr_max:g} ms; "
            "$CMT_RR_RANGE_MS overrides)"
        )
    return out, notes


def _unit(unit: str | None, default: str = "ms") -> tuple[str, bool]:
    if unit is None:
        return default, False
    if unit not in ("ms", "s"):
        raise ImportFormatError(f"unit {unit!r}: expected ms or s")
    return unit, True


# -- text tables ---------------------------------------------------------------------------------------------------

_DEC_COMMA = re.compile(r"^\s*-?\d+,\d+\s*$")


def _parse_time(cell: str, where: str) -> float | datetime:
    s = cell.strip()
    try:
        return float(s.replace(",", ".")) if re.fullmatch(r"-?\d+([.,]\d+)?", s) else datetime.fromisoformat(s)
    except ValueError:
        raise ImportFormatError(f"{where}: time {s!r} is neither seconds nor a date and time (ISO 8601)") from None


def _times_to_session(raw: list[float | datetime], source: str) -> tuple[list[float], datetime | None, str]:
    """Session-clock seconds from a time column, its absolute start if it has one, and what it was taken as."""
    if all(isinstance(x, datetime) for x in raw):
        if len({x.tzinfo is None for x in raw}) > 1:  # type: ignore[union-attr]
            raise ImportFormatError(f"{source}: the time column mixes times with and without a time zone")
        dts = [x if x.tzinfo else x.astimezone() for x in raw]  # type: ignore[union-attr]
        t0 = min(dts)
        check_start(t0, f"{source}: time column")
        check_start(max(dts), f"{source}: time column")
        out = [(d - t0).total_seconds() for d in dts]
        check_span(out, f"{source}: time column")
        return out, t0, "date-times (local time unless the file names a zone)"
    if any(isinstance(x, datetime) for x in raw):
        raise ImportFormatError(f"{source}: the time column mixes numbers and date-times")
    nums = [float(x) for x in raw]  # type: ignore[arg-type]
    big = min(nums)
    if big > 1e11:  # Unix time in ms
        t0 = timestamp_utc(big / 1000.0, f"{source}: time column")
        out, how = [(x - big) / 1000.0 for x in nums], "Unix time in ms"
    elif big > 1e8:  # Unix time in s
        t0 = timestamp_utc(big, f"{source}: time column")
        out, how = [x - big for x in nums], "Unix time in s"
    else:
        t0, out, how = None, nums, "seconds"
    check_span(out, f"{source}: time column")
    return out, t0, how


def parse_rr_table(text: str, source: str = "<rr>", *, column: str | None = None, unit: str | None = None) -> RRFile:
    """Plain RR text, Welltory's one-line list, or a delimited table with an RR column and maybe a time column."""
    rows = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1)
            if ln.strip() and not ln.lstrip().startswith("#")]  # fmt: skip
    if not rows:
        raise UnrecognisedFile(f"{source}: empty; {EXPECTED}")
    unit_, given = _unit(unit)
    first = rows[0][1]
    delim = next((d for d in (";", "\t", ",") if d in first), None)
    if delim == "," and all(_DEC_COMMA.match(r) for _, r in rows[1:] or rows) and (
        _DEC_COMMA.match(first) or (not any(c.isdigit() for c in first) and "," not in first)
    ):  # a header with commas names columns: then "0,812" is two cells, not a decimal
        delim = None  # one column of decimal-comma numbers
    if delim is None and column is None:
        return _single_column(rows, source, unit_, given)
    return _table(rows, source, delim or ",", column, unit, unit_, given)


def _single_column(rows: list[tuple[int, str]], source: str, unit: str, given: bool) -> RRFile:
    header = None
    try:
        _number(rows[0][1].split()[0], "", True)
    except ValueError:
        header, rows = rows[0][1], rows[1:]
        if not rows:
            raise UnrecognisedFile(f"{source}: a header {header[:40]!r} and no values; {EXPECTED}") from None
        if re.search(r"\b(s|sec|seconds)\b|\[s\]|\(s\)|_s\b", header.lower()) and not given:
            unit = "s"
    values, lines = [], []
    fmt = "RR text, one value per line"
    if len(rows) == 1 and len(rows[0][1].split()) > 1:
        fmt = "RR values separated by spaces on one line (Welltory)"
    for ln, row in rows:
        if len(row.split()) > 1 and len(rows) > 1:
            raise UnrecognisedFile(f"{source}: line {ln}: several values on a line; {EXPECTED}")
        for tok in row.split():
            try:
                values.append(_number(tok, f"{source}: line {ln}", decimal_comma=True))
            except ImportFormatError as exc:
                raise UnrecognisedFile(f"{exc}; {EXPECTED}") from None
            lines.append(ln)
    intervals, notes = to_intervals(values, source, unit=unit, unit_given=given, lines=lines)
    if any("," in r for _, r in rows):
        notes.insert(0, "decimal commas read as decimal points")
    return RRFile(fmt, intervals, notes=notes)


def _table(rows: list[tuple[int, str]], source: str, delim: str, column: str | None, unit_arg: str | None,
           unit: str, given: bool) -> RRFile:  # fmt: skip
    header = [h.strip() for h in rows[0][1].split(delim)]
    lowered = [h.lower() for h in header]
    numeric_header = all(re.fullmatch(r"-?\d+([.,]\d+)?", h) for h in header if h)
    decimal_comma = delim != ","
    if numeric_header:
        if column is not None:
            raise UnrecognisedFile(f"{source}: no header line, so no column {column!r}; {EXPECTED}")
        data_rows = rows
        if len(header) == 1:
            return _single_column(rows, source, unit, given)
        if len(header) != 2:
            raise UnrecognisedFile(f"{source}: {len(header)} columns and no header naming the RR column; {EXPECTED}")
        rr_col, t_col = 1, 0
        fmt = "two columns without a header (time s, RR)"
    else:
        data_rows = rows[1:]
        if column is not None:
            if column.lower() not in lowered:
                raise UnrecognisedFile(f"{source}: no column {column!r} in header {header}")
            rr_col = lowered.index(column.lower())
        else:
            rr_col = next((lowered.index(n) for n in RR_NAMES if n in lowered), None)
            if rr_col is None:
                raise UnrecognisedFile(f"{source}: no RR column in header {header}; give one with --column")
        t_col = next((lowered.index(n) for n in TIME_NAMES if n in lowered and lowered.index(n) != rr_col), None)
        name = lowered[rr_col]
        if unit_arg is None and (name.endswith(("_s", "[s]", "(s)")) or name in ("ibi_s", "rr_s")):
            unit, given = "s", True
        fmt = f"delimited table, RR column {header[rr_col]!r}" + (f", time column {header[t_col]!r}"
                                                                    if t_col is not None else "")  # fmt: skip
    values, lines, raw_t, gaps = [], [], [], []
    empty: list[int] = []
    gap_next = False
    for ln, row in data_rows:
        cells = row.split(delim)
        if rr_col >= len(cells) or not cells[rr_col].strip():
            if t_col is None:  # missing data: the beats on either side are not neighbours
                empty.append(ln)
                gap_next = True
            continue  # with a time column (e.g. an HR-only row), the times say whether beats are missing
        values.append(_number(cells[rr_col], f"{source}: line {ln}, column {rr_col + 1}", decimal_comma))
        lines.append(ln)
        gaps.append(gap_next)
        gap_next = False
        if t_col is not None:
            raw_t.append(_parse_time(cells[t_col], f"{source}: line {ln}, column {t_col + 1}"))
    notes: list[str] = []
    start = None
    times: list[float | None] | None = None
    if t_col is not None and raw_t:
        t_s, start, how = _times_to_session(raw_t, source)
        times = list(t_s)
        notes.append(f"time column taken as {how}")
    intervals, more = to_intervals(values, source, unit=unit, unit_given=given, times=times, lines=lines,
                                   gap_flags=gaps)  # fmt: skip
    if empty:
        notes.append(f"{len(empty)} empty RR cell(s) (first on line {empty[0]}): missing data, kept as gaps")
    if decimal_comma and any("," in r.split(delim)[rr_col] for _, r in data_rows if rr_col < len(r.split(delim))):
        notes.insert(0, "decimal commas read as decimal points")
    return RRFile(fmt, intervals, start_utc=start, notes=notes + more)


# -- other apps' formats -------------------------------------------------------------------------------------------


def parse_empatica(text: str, source: str = "<IBI.csv>") -> RRFile:
    """Empatica E4 IBI.csv: `<Unix start>, IBI`, then `seconds since start, IBI (s)`; missing beats are gaps."""
    lines = text.splitlines()
    start = timestamp_utc(_number(lines[0].split(",")[0], f"{source}: line 1, column 1"), f"{source}: line 1")
    values, times, nums = [], [], []
    for ln, row in enumerate(lines[1:], start=2):
        if not row.strip():
            continue
        cells = row.split(",")
        if len(cells) != 2:
            raise ImportFormatError(
                f"{source}: line {ln}: expected 'seconds since start, IBI in seconds', got {row[:40]!r}"
            )
        times.append(_number(cells[0], f"{source}: line {ln}, column 1"))
        values.append(_number(cells[1], f"{source}: line {ln}, column 2"))
        nums.append(ln)
    intervals, notes = to_intervals(values, source, unit="s", unit_given=True, times=times, lines=nums)
    return RRFile("Empatica E4 IBI.csv (s, offsets from the start time)", intervals, start_utc=start,
                  notes=["session clock 0 is the E4's start time in the first line", *notes])  # fmt: skip


def parse_hrm(text: str, source: str = "<hrm>") -> RRFile:
    """Polar .hrm in R-R mode (`Interval=238`): [Params] Date/StartTime and RR in ms, the first column of [HRData]
    (further columns, if SMode turns them on, are speed, cadence, …)."""
    sections: dict[str, list[tuple[int, str]]] = {}
    current = None
    for ln, row in enumerate(text.splitlines(), start=1):
        s = row.strip()
        if s.startswith("[") and s.endswith("]"):
            current = s[1:-1]
            sections[current] = []
        elif current is not None and s:
            sections[current].append((ln, s))
    if "HRData" not in sections:
        raise UnrecognisedFile(f"{source}: a Polar .hrm file needs an [HRData] section; {EXPECTED}")
    params = dict(r.split("=", 1) for _, r in sections.get("Params", []) if "=" in r)
    start = None
    if "Date" in params and "StartTime" in params:
        try:
            day = datetime.strptime(params["Date"].strip(), "%Y%m%d")
            h, m, sec = params["StartTime"].strip().split(":")
            start = (day + timedelta(hours=int(h), minutes=int(m), seconds=float(sec))).astimezone()
        except ValueError:
            start = None
    interval = params.get("Interval", "").strip()
    if interval != "238":
        raise UnrecognisedFile(f"{source}: a Polar .hrm with heart rate every {interval or '?'} s, not RR intervals "
                               "(expected Interval=238 in [Params])")  # fmt: skip
    values, lines = [], []
    for ln, row in sections["HRData"]:
        values.append(_number(row.split()[0], f"{source}: line {ln}"))  # RR first; other columns per SMode
        lines.append(ln)
    intervals, notes = to_intervals(values, source, unit="ms", unit_given=True, lines=lines)
    if start is None:
        notes.append("no Date/StartTime in [Params]: the start time is the import time")
    return RRFile("Polar .hrm (RR in ms in [HRData])", intervals, start_utc=start, notes=notes)


def parse_fit(path: Path) -> RRFile:
    """FIT `hrv` messages (up to five RR in s each; 0xFFFF = none) through fitdecode; start from the first record."""
    import fitdecode

    source = str(path)
    values: list[float] = []
    start = None
    created = None
    try:
        with fitdecode.FitReader(str(path), check_crc=fitdecode.CrcCheck.RAISE) as reader:
            for frame in reader:
                if not isinstance(frame, fitdecode.FitDataMessage):
                    continue
                if frame.name == "hrv" and frame.has_field("time"):
                    raw = frame.get_value("time")
                    values += [float(v) for v in (raw if isinstance(raw, tuple | list) else [raw]) if v is not None]
                elif frame.name == "file_id" and frame.has_field("time_created"):
                    created = frame.get_value("time_created")
                elif start is None and frame.name in ("record", "session") and frame.has_field("timestamp"):
                    start = frame.get_value("start_time") if frame.has_field("start_time") else frame.get_value(
                        "timestamp")  # fmt: skip
    except fitdecode.FitError as exc:
        raise ImportFormatError(f"{source}: not a readable FIT file ({exc})") from None
    if not values:
        raise UnrecognisedFile(f"{source}: a FIT file without hrv messages (RR intervals); record with HRV logging")
    intervals, notes = to_intervals(values, source, unit="s", unit_given=True)
    notes.append("hrv messages carry no times: beats follow the RR sum from the activity's first record")
    start = start or created
    return RRFile("FIT hrv messages (RR in s)", intervals, start_utc=start if isinstance(start, datetime) else None,
                  notes=notes)  # fmt: skip


def choose_xdf_streams(
    streams: Sequence[dict], source: str, names: Sequence[str] = ()
) -> tuple[dict | None, dict | None, list[str]]:
    """The RR stream and the ECG stream of one participant in an XDF file, and notes; pure.

    Without `names`, a file with one RR and/or one ECG stream is unambiguous; several of a kind are refused with the
    candidates listed. `names` (stream names, from `--stream`) pick them; an RR stream of this recorder
    (source id `cmt-biofeedback/<device>/rr`) brings the ECG of the same strap with it.
    """

    def info(s, key):
        v = s["info"].get(key, [""])
        return (v[0] if isinstance(v, list) and v else v) or ""

    def kind(s) -> str:
        t = info(s, "type").lower()
        return "rr" if t in ("rr", "ibi") else t

    candidates = [s for s in streams if kind(s) in ("rr", "ecg") and len(s["time_stamps"])]
    by_name: dict[str, list[dict]] = {}
    for s in candidates:
        by_name.setdefault(info(s, "name"), []).append(s)

    def listing(kinds: Sequence[str] = ("rr", "ecg")) -> str:
        return ", ".join(f"{info(s, 'name')!r} ({info(s, 'type')}, {len(s['time_stamps'])} samples)"
                         for s in candidates if kind(s) in kinds)  # fmt: skip

    notes: list[str] = []
    if names:
        chosen = []
        for name in dict.fromkeys(names):
            found = by_name.get(name, [])
            if not found:
                raise ImportFormatError(f"{source}: no RR or ECG stream named {name!r} in this XDF file; its RR/ECG "
                                        f"streams: {listing() or 'none'}")  # fmt: skip
            if len(found) > 1:
                raise ImportFormatError(f"{source}: {len(found)} streams are named {name!r} (source ids "
                                        f"{', '.join(info(s, 'source_id') for s in found)}): the file cannot tell "
                                        "them apart")  # fmt: skip
            chosen.append(found[0])
        rr = [s for s in chosen if kind(s) == "rr"]
        ecg = [s for s in chosen if kind(s) == "ecg"]
        for k, got in (("RR", rr), ("ECG", ecg)):
            if len(got) > 1:
                raise ImportFormatError(f"{source}: --stream names {len(got)} {k} streams "
                                        f"({', '.join(repr(info(s, 'name')) for s in got)}); a session holds one "
                                        "participant: name one RR and/or one ECG stream")  # fmt: skip
        if rr and not ecg:  # this recorder's own streams: the ECG of the same strap comes along
            sid = info(rr[0], "source_id")
            if sid.endswith("/rr"):
                ecg = [s for s in candidates if kind(s) == "ecg" and info(s, "source_id") == sid[:-3] + "/ecg"]
        left = sorted(info(s, "name") for s in candidates if s not in rr + ecg)
        if left:
            notes.append(f"streams not imported: {', '.join(left)}")
        return (rr[0] if rr else None), (ecg[0] if ecg else None), notes
    rr = [s for s in candidates if kind(s) == "rr"]
    ecg = [s for s in candidates if kind(s) == "ecg"]
    if len(rr) > 1 or len(ecg) > 1:
        raise ImportFormatError(f"{source}: several RR/ECG streams, one participant per session: choose with "
                                "--stream NAME (repeat for an RR and an ECG stream); candidates: "
                                f"{listing()}")  # fmt: skip
    return (rr[0] if rr else None), (ecg[0] if ecg else None), notes


def parse_xdf(path: Path, streams_named: Sequence[str] = ()) -> RRFile:
    """XDF (LabRecorder): an RR/IBI stream (ms) with its LSL stamps as beat times, an ECG and the Markers streams.

    Several RR or ECG streams (a group, or several devices) are chosen by name with `streams_named`
    (see `choose_xdf_streams`)."""
    import pyxdf

    source = str(path)
    try:
        streams, header = pyxdf.load_xdf(str(path), synchronize_clocks=True, dejitter_timestamps=False)
    except Exception as exc:  # pyxdf raises whatever its parser meets; report it on one line
        raise ImportFormatError(f"{source}: not a readable XDF file ({type(exc).__name__}: {exc})") from None

    def info(s, key):
        v = s["info"].get(key, [""])
        return (v[0] if isinstance(v, list) and v else v) or ""

    chosen_rr, chosen_ecg, notes = choose_xdf_streams(streams, source, streams_named)
    rr = [chosen_rr] if chosen_rr is not None else []
    ecg = [chosen_ecg] if chosen_ecg is not None else []
    marks = [s for s in streams if info(s, "type").lower() == "markers" and len(s["time_stamps"])]
    if not rr and not ecg:
        kinds = sorted({info(s, "type") for s in streams})
        raise UnrecognisedFile(f"{source}: an XDF file without an RR or ECG stream (stream types {kinds})")
    stamps = [s["time_stamps"][0] for s in rr + ecg + marks]
    if rr:
        s = rr[0]
        v = np.asarray(s["time_series"], dtype=float)
        rr_ms = v[:, 0] if v.ndim == 2 else v
        stamps.append(float(s["time_stamps"][0] - rr_ms[0] / 1000.0))
    t0 = float(min(stamps))
    intervals: list[Interval] = []
    if rr:
        s = rr[0]
        v = np.asarray(s["time_series"], dtype=float)
        rr_ms = v[:, 0] if v.ndim == 2 else v
        flags = list(v[:, 1] > 0.5) if v.ndim == 2 and v.shape[1] > 1 else None
        times = [float(x) - t0 for x in s["time_stamps"]]
        intervals, more = to_intervals(list(rr_ms), source, unit="ms", unit_given=True, times=times,
                                       gap_flags=flags)  # fmt: skip
        notes += [f"RR from stream {info(s, 'name')!r}", *more]
    ecg_data = None
    if ecg:
        s = ecg[0]
        ecg_data = (np.asarray(s["time_stamps"], float) - t0, np.asarray(s["time_series"], float)[:, 0])
        notes.append(f"ECG from stream {info(s, 'name')!r}")
    markers = []
    for s in marks:
        for ts, sample in zip(s["time_stamps"], s["time_series"], strict=True):
            markers.append((float(ts) - t0, str(sample[0])))
    start = None
    dt = header.get("info", {}).get("datetime", [None])[0] if isinstance(header, dict) else None
    if dt:
        try:
            start = datetime.fromisoformat(dt)
            notes.append("start time from the XDF file header (when LabRecorder started)")
        except ValueError:
            start = None
    return RRFile("XDF (LabRecorder)", intervals, start_utc=start, markers=sorted(markers), notes=notes,
                  ecg=ecg_data)  # fmt: skip
