'''Load protocols from TOML, with errors naming the file, phase, field, what was expected and what was found.

Format (one file = one protocol)::

    name = "cmt-soothing"              # required, non-empty
    description = "..."                # optional text for the experimenter
    version = "1"                      # optional, string or integer (default "1")
    marker_stream = "PsychoPy"         # optional: the LSL stream (recorded with --lsl-in, added by itself) whose
                                       # markers start/end phases that name one (start_on_marker/end_on_marker)
    marker_timeout = "5min"            # optional (default 5 min): a phase waiting for its end marker ends by
                                       # itself this long after its planned end (recorded "marker timeout")

    [[phase]]                          # one table per phase, in order; at least one
    name = "baseline"                  # required, unique within the protocol
    kind = "rest"                      # required: rest breathing grounding imagery recall refocus recovery
                                       #           diary meditation other
    duration = "5min"                  # required: seconds (300, 90.5) or "90s", "5min", "2min 30s", "1h"
    prompt = "..."                     # optional text shown to the participant for the whole phase
    feedback = "live"                  # optional: live (default), hidden, sham
    show_numbers = false               # optional: show numbers on the participant display (default false)
    instrument = "cmt-weekly-diary"    # kind "diary" only (and there it defaults to "cmt-weekly-diary"): the
                                       # diary or questionnaire answered in this phase, a built-in instrument's
                                       # name or the path of an instrument TOML file (relative to this file)
    start_on_marker = "imagery_start"  # optional: the phase starts when this marker arrives on marker_stream (the
                                       # phase before runs on past its duration until then); not on the first phase
    end_on_marker = "imagery_end"      # optional: the phase ends when this marker arrives; either way the boundary
                                       # is the marker's time on the session clock. A marker sent before the phase
                                       # it would end started is ignored (it is still recorded).

    [phase.pacer]                      # optional breathing pacer for this phase
    rate_bpm = 6.0                     # required, 2-30 breaths per minute
    ratio = "4:6"                      # optional inhale:exhale proportion (default "4:6")

    [[phase.prompts]]                  # optional prompts appearing during the phase
    at = "45s"                         # required: time into the phase, >= 0 and before its end
    text = "..."                       # required

Unknown fields are rejected with a suggestion. Every problem in a file is reported at once in one
`ProtocolError`; phases are numbered from 1 in messages.
'''

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocols.file_problems import FileProblems, TableChecker, closest, parse_toml, read_text, show
from protocols.file_problems import Problem as BaseProblem
from protocols.instruments import DIARY_NAME, InstrumentError, builtin_instruments, load_instrument
from protocols.model import (
    DEFAULT_MARKER_TIMEOUT_S,
    INHALE_FRACTION_RANGE,
    MAX_PHASE_S,
    MAX_PHASES,
    MAX_PROMPTS_PER_PHASE,
    MAX_PROTOCOL_S,
    MAX_TEXT_CHARS,
    PACER_RATE_RANGE_BPM,
    FeedbackMode,
    Pacer,
    Phase,
    PhaseKind,
    Protocol,
    TimedPrompt,
)

TOP_FIELDS = ("name", "description", "version", "phase", "marker_stream", "marker_timeout")
PHASE_FIELDS = ("name", "kind", "duration", "prompt", "feedback", "show_numbers", "pacer", "prompts", "instrument",
                "start_on_marker", "end_on_marker")  # fmt: skip
PACER_FIELDS = ("rate_bpm", "ratio")
PROMPT_FIELDS = ("at", "text")
DEFAULT_RATIO = (4.0, 6.0)

_UNIT_SECONDS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_RATIO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Problem(BaseProblem):
    """One validation problem; `phase_index` counts from 1, `field` is a dotted path in the phase or file."""

    phase_index: int | None = None
    phase_name: str | None = None

    def location(self) -> str | None:
        if self.phase_index is None:
            return self.where
        shown = json.dumps(self.phase_name, ensure_ascii=False) if self.phase_name else "unnamed"
        return f"phase {self.phase_index} ({shown})"


class ProtocolError(FileProblems):
    """A protocol file is invalid; `problems` lists every problem found (the message shows them all)."""


def parse_duration(value: Any, *, allow_zero: bool = False) -> float | None:
    """Seconds from a TOML number or a string like "90s", "5min", "2min 30s", "1.5h"; None if bad."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _DURATION_PART.finditer(text):
                if m.start() != pos or m.group(2) not in _UNIT_SECONDS:
                    return None
                seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
                pos = m.end()
            if pos == 0 or pos != len(text):
                return None
    else:
        return None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        return None
    return seconds


class _Checker(TableChecker):
    """Collects problems while reading one protocol file (located by phase)."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.phase_index: int | None = None
        self.phase_name: str | None = None

    def problem(self, field: str | None, message: str) -> Problem:
        return Problem(self.source, message, field=field, phase_index=self.phase_index, phase_name=self.phase_name)

    def text(self, table: dict[str, Any], key: str, field: str, *, required: bool) -> str | None:
        if key not in table:
            if required:
                self.add(field, "required field is missing: expected a non-empty string")
            return None
        value = table[key]
        if not isinstance(value, str) or (required and not value.strip()):
            self.add(field, f"expected a {'non-empty ' if required else ''}string, got {show(value)}")
            return None
        return value

    def choice(self, table: dict[str, Any], key: str, field: str, enum: type, *, required: bool) -> Any:
        valid = ", ".join(m.value for m in enum)
        if key not in table:
            if required:
                self.add(field, f"required field is missing: expected one of {valid}")
            return None
        value = table[key]
        if isinstance(value, str) and value.strip().lower() in {m.value for m in enum}:
            return enum(value.strip().lower())
        else:
            close = closest(str(value), [m.value for m in enum])
            hint = f' (did you mean "{close}"?)' if close else ""
            self.add(field, f"expected one of {valid}, got {show(value)}{hint}")
            return None

    def duration(self, table: dict[str, Any], key: str, field: str, *, allow_zero: bool) -> float | None:
        like = '0, 45 or "1min"' if allow_zero else '300 or "5min"'
        what = "a duration of 0 or more" if allow_zero else "a positive duration"
        if key not in table:
            self.add(field, f"required field is missing: expected {what} like {like}")
            return None
        seconds = parse_duration(table[key], allow_zero=allow_zero)
        if seconds is None:
            self.add(field, f"expected {what} like {like}, got {show(table[key])}")
        return seconds


def parse_protocol(text: str, source: str = "<string>", base_dir: str | Path | None = None) -> Protocol:
    """Parse protocol TOML `text` (`source` names it in messages); ProtocolError lists all problems.

    Relative instrument paths are taken from `base_dir` (the protocol file's folder), else the working directory.
    """
    data = parse_toml(text, source, ProtocolError)

    ck = _Checker(source)
    ck.unknown_fields(data, TOP_FIELDS, "", "top-level")
    name = ck.text(data, "name", "name", required=True)
    description = ck.text(data, "description", "description", required=False) or ""
    version = data.get("version", "1")
    if isinstance(version, bool) or not isinstance(version, str | int) or not str(version).strip():
        ck.add("version", f'expected a version string like "1.2" or an integer, got {show(version)}')
        version = "1"

    raw_phases = data.get("phase")
    phases: list[Phase] = []
    if raw_phases is None:
        ck.add("phase", "required: expected at least one [[phase]] table, got none")
    elif not isinstance(raw_phases, list) or not all(isinstance(p, dict) for p in raw_phases):
        ck.add("phase", f"expected [[phase]] tables (note the double brackets), got {show(raw_phases)}")
    elif not raw_phases:
        ck.add("phase", "expected at least one [[phase]] table, got an empty array")
    elif len(raw_phases) > MAX_PHASES:
        ck.add("phase", f"expected at most {MAX_PHASES} phases, got {len(raw_phases)}")
    else:
        seen: dict[str, int] = {}
        for i, raw in enumerate(raw_phases, start=1):
            phase = _parse_phase(ck, i, raw, base_dir)
            if phase is None:
                continue
            if phase.name in seen:
                ck.add("name", f"expected a name not used by another phase, but phase {seen[phase.name]} "
                               f"is also called {show(phase.name)}")
            else:
                seen[phase.name] = i
                phases.append(phase)
        ck.phase_index = ck.phase_name = None
        total = sum(p.duration_s for p in phases)
        if total > MAX_PROTOCOL_S:
            ck.add("phase", f"expected phases lasting at most {MAX_PROTOCOL_S / 3600:g} h in all, "
                            f"got {total / 3600:.4g} h")
    stream = ck.text(data, "marker_stream", "marker_stream", required=False)
    if stream is not None and not stream.strip():
        ck.add("marker_stream", "expected the name of an LSL stream, got an empty string")
        stream = None
    timeout = DEFAULT_MARKER_TIMEOUT_S
    if "marker_timeout" in data:
        timeout = ck.duration(data, "marker_timeout", "marker_timeout", allow_zero=False) or timeout
    _check_marker_phases(ck, phases, stream, raw_phases if isinstance(raw_phases, list) else [])

    if ck.problems:
        raise ProtocolError(ck.problems)
    assert name is not None
    return Protocol(name=name, description=description, phases=tuple(phases), version=str(version),
                    marker_stream=stream, marker_timeout_s=timeout)  # fmt: skip


def _check_marker_phases(ck: _Checker, phases: list[Phase], stream: str | None, raw: list) -> None:
    """Marker boundaries: a marker_stream to come from, not the first phase's start, one marker per boundary."""
    for i, ph in enumerate(phases):
        where = next((j for j, r in enumerate(raw, 1) if isinstance(r, dict) and r.get("name") == ph.name), i + 1)
        ck.phase_index, ck.phase_name = where, ph.name
        for key in ("start_on_marker", "end_on_marker"):
            if getattr(ph, key) is not None and stream is None:
                ck.add(key, 'expected a top-level marker_stream = "<LSL stream name>" naming where the marker '
                            "comes from, got none")  # fmt: skip
        if i == 0 and ph.start_on_marker is not None:
            ck.add("start_on_marker", "expected no start marker on the first phase: it starts with the session "
                                      "(put a phase before it that ends on the marker)")  # fmt: skip
        if i > 0 and ph.start_on_marker is not None and phases[i - 1].end_on_marker is not None:
            ck.add("start_on_marker", f"expected one marker per boundary, but phase {phases[i - 1].name!r} already "
                                      f"ends on {phases[i - 1].end_on_marker!r}")  # fmt: skip
    ck.phase_index = ck.phase_name = None


def _parse_phase(ck: _Checker, index: int, raw: dict[str, Any], base_dir: str | Path | None) -> Phase | None:
    before = len(ck.problems)
    ck.phase_index = index
    raw_name = raw.get("name")
    ck.phase_name = raw_name if isinstance(raw_name, str) and raw_name.strip() else None
    ck.unknown_fields(raw, PHASE_FIELDS, "", "phase")
    name = ck.text(raw, "name", "name", required=True)
    kind = ck.choice(raw, "kind", "kind", PhaseKind, required=True)
    duration = ck.duration(raw, "duration", "duration", allow_zero=False)
    if duration is not None and duration > MAX_PHASE_S:
        ck.add("duration", f"expected at most {MAX_PHASE_S / 3600:g} h, got {show(raw['duration'])}")
    prompt = ck.text(raw, "prompt", "prompt", required=False) or ""
    if len(prompt) > MAX_TEXT_CHARS:
        ck.add("prompt", f"expected at most {MAX_TEXT_CHARS} characters, got {len(prompt)}")
    feedback = ck.choice(raw, "feedback", "feedback", FeedbackMode, required=False) or FeedbackMode.LIVE
    show_numbers = raw.get("show_numbers", False)
    if not isinstance(show_numbers, bool):
        ck.add("show_numbers", f"expected true or false, got {show(show_numbers)}")
    pacer = _parse_pacer(ck, raw["pacer"]) if "pacer" in raw else None
    prompts = _parse_prompts(ck, raw["prompts"], duration) if "prompts" in raw else ()
    instrument = _parse_instrument(ck, raw, kind, base_dir)
    markers = {}
    for key in ("start_on_marker", "end_on_marker"):
        if key in raw:
            value = raw[key]
            if isinstance(value, str) and value.strip():
                markers[key] = value
            else:
                ck.add(key, f'expected a non-empty marker value such as "imagery_start", got {show(value)}')
    if len(ck.problems) > before:
        return None
    assert name is not None and kind is not None and duration is not None
    return Phase(name, kind, duration, prompt, prompts, pacer, feedback, bool(show_numbers), instrument, **markers)


def _parse_instrument(
    ck: _Checker, raw: dict[str, Any], kind: PhaseKind | None, base_dir: str | Path | None
) -> str | None:
    """The phase's instrument: a built-in name as given, a file as its resolved path; checked by loading it."""
    if "instrument" not in raw:
        return DIARY_NAME if kind is PhaseKind.DIARY else None
    value = raw["instrument"]
    builtins = sorted(builtin_instruments())
    expected = f"the name of a built-in instrument ({', '.join(builtins)}) or the path of an instrument TOML file"
    if kind is not None and kind is not PhaseKind.DIARY:
        ck.add("instrument", f'expected only on a phase of kind "diary", got it on kind "{kind.value}"')
        return None
    if not isinstance(value, str) or not value.strip():
        ck.add("instrument", f"expected {expected}, got {show(value)}")
        return None
    text = value.strip()
    if text in builtins:
        return text
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        if path.suffix == ".toml" or len(Path(text).parts) > 1:
            ck.add("instrument", f"expected an instrument TOML file, got {show(value)}: no such file ({path})")
        else:
            close = closest(text, builtins)
            hint = f' (did you mean "{close}"?)' if close else ""
            ck.add("instrument", f"expected {expected}, got {show(value)}{hint}")
        return None
    try:
        load_instrument(path)
    except InstrumentError as exc:
        ck.add("instrument", f"expected a valid instrument file, got {show(value)}: {exc}")
        return None
    except OSError as exc:
        ck.add("instrument", f"expected a readable instrument file, got {show(value)} ({exc.strerror or exc})")
        return None
    return str(path.resolve())


def _parse_pacer(ck: _Checker, raw: Any) -> Pacer | None:
    if not isinstance(raw, dict):
        ck.add("pacer", f"expected a [phase.pacer] table with rate_bpm and ratio, got {show(raw)}")
        return None
    ck.unknown_fields(raw, PACER_FIELDS, "pacer.", "pacer")
    lo, hi = PACER_RATE_RANGE_BPM
    rate = raw.get("rate_bpm")
    expected = f"breaths per minute from {lo:g} to {hi:g}"
    ok_rate = isinstance(rate, int | float) and not isinstance(rate, bool) and lo <= rate <= hi
    if "rate_bpm" not in raw:
        ck.add("pacer.rate_bpm", f"required field is missing: expected {expected}")
    elif not ok_rate:
        ck.add("pacer.rate_bpm", f"expected {expected}, got {show(rate)}")
    inhale, exhale = DEFAULT_RATIO
    ratio = raw.get("ratio", "4:6")
    m = _RATIO.match(ratio) if isinstance(ratio, str) and len(ratio) <= 40 else None
    if m is None or not all(0 < float(x) < math.inf for x in (m[1], m[2])):
        ck.add("pacer.ratio", f'expected inhale:exhale as positive numbers like "4:6", got {show(ratio)}')
        return None
    inhale, exhale = float(m[1]), float(m[2])
    lo_f, hi_f = INHALE_FRACTION_RANGE
    if not lo_f <= inhale / (inhale + exhale) <= hi_f:
        ck.add("pacer.ratio", f"expected inhale:exhale from 1:{(1 - lo_f) / lo_f:g} to {hi_f / (1 - hi_f):g}:1, "
                              f"got {show(ratio)}")  # fmt: skip
        return None
    return Pacer.from_ratio(float(rate), inhale, exhale) if ok_rate else None


def _parse_prompts(ck: _Checker, raw: Any, duration: float | None) -> tuple[TimedPrompt, ...]:
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        ck.add("prompts", f"expected [[phase.prompts]] tables with at and text, got {show(raw)}")
        return ()
    if len(raw) > MAX_PROMPTS_PER_PHASE:
        ck.add("prompts", f"expected at most {MAX_PROMPTS_PER_PHASE} prompts in a phase, got {len(raw)}")
        return ()
    out = []
    for j, item in enumerate(raw, start=1):
        prefix = f"prompts[{j}]."
        ck.unknown_fields(item, PROMPT_FIELDS, prefix, "prompt")
        at = ck.duration(item, "at", prefix + "at", allow_zero=True)
        text = ck.text(item, "text", prefix + "text", required=True)
        if at is not None and duration is not None and at >= duration:
            got = show(item["at"])
            ck.add(prefix + "at", f"expected a time before the phase ends ({duration:g} s), got {got}")
            continue
        if text is not None and len(text) > MAX_TEXT_CHARS:
            ck.add(prefix + "text", f"expected at most {MAX_TEXT_CHARS} characters, got {len(text)}")
            continue
        if at is not None and text is not None:
            out.append(TimedPrompt(at, text))
    return tuple(out)


def load_protocol(path: str | Path) -> Protocol:
    """Load a protocol TOML file; errors name the file as given. Raises ProtocolError or OSError."""
    text = read_text(path, ProtocolError)
    return parse_protocol(text, source=str(path), base_dir=Path(path).parent)
