"""The study view: self-report and physiology of a group across weeks, side by side, as in the CMT pilot's Table 1.

Every measure becomes one long-format observation (participant, time point, week, value):

* diary domains ("diary: self-soothing"): the subscale scores of the weekly diary (missing-answer rule applied);
* questionnaire subscales ("example-likert: A"), usually at "pre" and "post";
* physiology per session: RMSSD and HF of every phase ("RMSSD baseline (ms)") and the soothing response,
  RMSSD of the first breathing phase minus RMSSD of the baseline (the phase named "baseline", else the first rest).

Which sessions and answer sets enter is a `StudySelection`: by default finished sessions recorded live (simulated
and imported sessions, and everything excluded with `sessions exclude`, are left out unless asked for), filtered by
protocol and state. A session's week is the week recorded when it was started, else the week of a diary answer set
linked to it; a session with neither is left out, never placed by its order. `SelectionReport` says what was
included and what was left out and why. Several sessions in one week are averaged.

`analyze_study` compares the first and last time point of every measure with the Wilcoxon signed-rank test as SPSS
reports it (`biofeedback.study.stats.wilcoxon_spss`), with mean (SD) and median over the complete pairs, and correlates
the diary's self-soothing with the physiological soothing response across sessions (Spearman). Free text never
enters a result unless `include_text=True`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from biofeedback.analysis.analyze import analyze_session
from biofeedback.study.stats import WilcoxonResult, wilcoxon_spss
from protocols.instruments import DIARY_NAME, InstrumentKind
from recordings.answers import AnswerStore, parse_time_point
from recordings.files import OutputExistsError, open_private_for_write, write_private_text
from recordings.store import SESSION_STATES, SOURCE_CHOICES, BeatOrderError, Store, source_matches

SOOTHING_RESPONSE = "soothing response: RMSSD breathing − baseline (ms)"
DIARY_SOOTHING = "diary: self-soothing"
DIARY_CRITICISM = "diary: self-criticism"
SKIPPED_PHASE_KINDS = ("other", "diary")
SLOW_BREATHING_BPM = 9.0
COLUMNS = ["participant", "time_point", "week", "measure", "source", "value", "session_id"]


@dataclass
class MeasureComparison:
    """One row of the table: a measure at its first and last time point, and the Wilcoxon test between them."""

    measure: str
    source: str
    first: str
    last: str
    n_first: int
    n_last: int
    test: WilcoxonResult | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        t = self.test
        return {
            "measure": self.measure,
            "source": self.source,
            "first": self.first,
            "last": self.last,
            "n_first": self.n_first,
            "n_last": self.n_last,
            "n_pairs": None if t is None else t.n,
            "mean_first": None if t is None else t.mean_before,
            "sd_first": None if t is None else t.sd_before,
            "median_first": None if t is None else t.median_before,
            "mean_last": None if t is None else t.mean_after,
            "sd_last": None if t is None else t.sd_after,
            "median_last": None if t is None else t.median_after,
            "n_nonzero": None if t is None else t.n_nonzero,
            "T": None if t is None else t.t_stat,
            "W_positive": None if t is None else t.w_positive,
            "W_negative": None if t is None else t.w_negative,
            "Z": None if t is None else t.z,
            "p_two_sided": None if t is None else t.p_two_sided,
            "notes": "; ".join(self.notes),
        }


@dataclass
class Correlation:
    x: str
    y: str
    n: int
    rho: float | None
    p: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "n": self.n, "spearman_rho": self.rho, "p": self.p, "note": self.note}


@dataclass
class StudyResult:
    data: pd.DataFrame
    rows: list[MeasureComparison]
    correlation: Correlation
    notes: list[str]
    free_text: list[dict[str, Any]] | None = None
    """Free-text answers, only when asked for with include_text."""
    selection: SelectionReport | None = None
    """What was included and left out, and why."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "participants": sorted(self.data["participant"].unique().tolist()) if len(self.data) else [],
            "table": [r.to_dict() for r in self.rows],
            "correlation": self.correlation.to_dict(),
            "notes": self.notes,
            "observations": _records(self.data),
        }
        if self.selection is not None:
            out["selection"] = self.selection.to_dict()
        if self.free_text is not None:
            out["free_text"] = self.free_text
        return out


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else _plain(v)) for k, v in rec.items()})
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# -- collecting observations --------------------------------------------------------------------------------------


def collect_answers(answers: AnswerStore, chosen: set[int] | None = None) -> list[dict[str, Any]]:
    """One observation per scored subscale of every answer set (or of those `chosen`; free text is not read)."""
    rows = []
    for aset in answers.find():
        if chosen is not None and aset.id not in chosen:
            continue
        inst = answers.instrument(aset.instrument, aset.instrument_version)
        prefix = "diary" if inst.kind is InstrumentKind.DIARY and inst.name == DIARY_NAME else inst.name
        for name, sc in answers.scores(aset).items():
            rows.append({
                "participant": aset.participant_id, "time_point": aset.time_point, "week": aset.week,
                "measure": f"{prefix}: {name}", "source": "diary" if inst.kind is InstrumentKind.DIARY else
                "questionnaire", "value": sc.value, "session_id": aset.session_id,
            })  # fmt: skip
    return rows


class StudySelectionError(ValueError):
    """A study selection that names nothing analysable (no sessions or answers, or a time point not in the data)."""


FINISHED_STATES = tuple(st for st in SESSION_STATES if st != "running")


@dataclass(frozen=True)
class StudySelection:
    """Which sessions and answer sets a study analysis takes (see the module docstring)."""

    sources: tuple[str, ...] = ("live",)
    protocols: tuple[str, ...] = ()
    """Protocol names; empty: every protocol."""
    states: tuple[str, ...] = FINISHED_STATES
    include_excluded: bool = False

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s not in SOURCE_CHOICES]
        if bad or not self.sources:
            raise StudySelectionError(f"unknown source {', '.join(bad) or '(none)'}: use {', '.join(SOURCE_CHOICES)}")
        bad = [s for s in self.states if s not in FINISHED_STATES]
        if bad or not self.states:
            raise StudySelectionError(f"unknown state {', '.join(bad) or '(none)'}: use {', '.join(FINISHED_STATES)}")

    @property
    def simulated(self) -> bool:
        return "simulated" in self.sources

    def describe(self) -> str:
        parts = [f"sources {', '.join(self.sources)}", f"states {', '.join(self.states)}"]
        parts.append(f"protocols {', '.join(self.protocols)}" if self.protocols else "every protocol")
        if self.include_excluded:
            parts.append("excluded sessions and answer sets included")
        return "; ".join(parts)


@dataclass
class SelectionReport:
    """What a study analysis included and what it left out, with the reason for every item left out."""

    selection: StudySelection
    sessions: list[int] = field(default_factory=list)
    sessions_left_out: list[tuple[int, str, str]] = field(default_factory=list)
    """(session id, participant, reason)."""
    answer_sets: list[int] = field(default_factory=list)
    answer_sets_left_out: list[tuple[int, str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line for the selection, one for what was included, one per reason something was left out."""
        out = [f"selection: {self.selection.describe()}",
               f"included: {len(self.sessions)} session(s), {len(self.answer_sets)} answer set(s)"]  # fmt: skip
        for what, items in (("session", self.sessions_left_out), ("answer set", self.answer_sets_left_out)):
            by_reason: dict[str, list[int]] = {}
            for oid, _pid, reason in items:
                by_reason.setdefault(reason, []).append(oid)
            for reason, ids in by_reason.items():
                shown = ", ".join(map(str, ids[:12])) + (f" and {len(ids) - 12} more" if len(ids) > 12 else "")
                out.append(f"left out {len(ids)} {what}(s) ({shown}): {reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "sources": list(sel.sources), "protocols": list(sel.protocols), "states": list(sel.states),
            "include_excluded": sel.include_excluded, "sessions": self.sessions, "answer_sets": self.answer_sets,
            "sessions_left_out": [{"id": i, "participant": p, "reason": r} for i, p, r in self.sessions_left_out],
            "answer_sets_left_out": [{"id": i, "participant": p, "reason": r} for i, p, r in self.answer_sets_left_out],
        }  # fmt: skip


def _source_hint(source: str) -> str:
    wanted = "imported" if source.startswith("imported-") else source
    extra = " or --include-simulated" if wanted == "simulated" else ""
    return f"source {wanted} (add --source {wanted}{extra} to include it)"


def session_reason(info: Any, sel: StudySelection) -> str | None:
    """Why a session is left out of the selection, or None when it is in."""
    if info.state == "running":
        return "still recording"
    if info.excluded is not None and not sel.include_excluded:
        return f"excluded: {info.excluded}"
    if not any(source_matches(info.source, s) for s in sel.sources):
        return _source_hint(info.source)
    if sel.protocols and info.protocol_name not in sel.protocols:
        return f"protocol {info.protocol_name} (not in --protocol {', '.join(sel.protocols)})"
    if info.state not in sel.states:
        return f"state {info.state} (not in --state {', '.join(sel.states)})"
    return None


def select_answer_sets(answers: AnswerStore, selection: StudySelection, report: SelectionReport) -> set[int]:
    """Ids of the answer sets in the selection (excluded and simulated ones are left out unless asked for)."""
    excluded = answers.store.exclusions("answer_set")
    chosen = set()
    for aset in answers.find():
        if aset.id in excluded and not selection.include_excluded:
            report.answer_sets_left_out.append((aset.id, aset.participant_id, f"excluded: {excluded[aset.id]}"))
        elif aset.source == "simulated" and not selection.simulated:
            report.answer_sets_left_out.append((aset.id, aset.participant_id, _source_hint("simulated")))
        else:
            chosen.add(aset.id)
            report.answer_sets.append(aset.id)
    return chosen


def session_weeks(
    store: Store, answers: AnswerStore, selection: StudySelection | None = None,
    report: SelectionReport | None = None,
) -> tuple[dict[int, int], SelectionReport]:  # fmt: skip
    """Week of every selected session (recorded week, else a linked diary's week) and the selection report."""
    selection = selection or StudySelection()
    report = report or SelectionReport(selection)
    linked: dict[int, int] = {}
    for aset in answers.find():
        if aset.session_id is not None and aset.week is not None:
            linked.setdefault(aset.session_id, aset.week)
    weeks: dict[int, int] = {}
    for info in store.sessions():
        reason = session_reason(info, selection)
        week = info.week if info.week is not None else linked.get(info.id)
        if reason is None and week is None:
            reason = "no study week recorded (not placed by its order; `sessions set-week ID N` records one)"
        if reason is not None:
            report.sessions_left_out.append((info.id, info.participant_id, reason))
            continue
        weeks[info.id] = week
        report.sessions.append(info.id)
    return weeks, report


def collect_physiology(
    store: Store, weeks: dict[int, int], on_session: Callable[[int, int], None] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """RMSSD and HF per phase and the soothing response of every session with a week (`on_session(done, total)`
    before each one and at the end, for progress)."""
    rows, notes = [], []
    for i, (sid, week) in enumerate(sorted(weeks.items())):
        if on_session is not None:
            on_session(i, len(weeks))
        info = store.session(sid)
        try:
            analysis = analyze_session(store, sid)
        except (ValueError, IndexError, BeatOrderError) as exc:
            notes.append(f"left out session {sid} ({info.participant_id}): it could not be analysed: {exc}")
            continue
        base = dict(participant=info.participant_id, time_point=f"week {week}", week=week, session_id=sid)
        baseline = breathing = None
        for ph in analysis.phases:
            if ph.kind in SKIPPED_PHASE_KINDS:
                continue
            rows.append({**base, "measure": f"RMSSD {ph.name} (ms)", "source": "physiology", "value": ph.rmssd_ms})
            rows.append({**base, "measure": f"HF {ph.name} (ms²)", "source": "physiology", "value": ph.hf_ms2,
                         "breathing_bpm": ph.breathing_rate_bpm})  # fmt: skip
            if baseline is None and (ph.name == "baseline" or ph.kind == "rest"):
                baseline = ph
            if breathing is None and ph.kind == "breathing":
                breathing = ph
        named = [p for p in analysis.phases if p.name == "baseline"]
        baseline = named[0] if named else baseline
        if baseline is not None and breathing is not None:
            ok = baseline.rmssd_ms is not None and breathing.rmssd_ms is not None
            value = breathing.rmssd_ms - baseline.rmssd_ms if ok else None
            rows.append({**base, "measure": SOOTHING_RESPONSE, "source": "physiology", "value": value})
    if on_session is not None:
        on_session(len(weeks), len(weeks))
    return rows, notes


def collect(
    store: Store, selection: StudySelection | None = None, on_session: Callable[[int, int], None] | None = None
) -> tuple[pd.DataFrame, list[str], SelectionReport]:
    """The selection's observations in long format (no free text), notes, and what was included and left out."""
    answers = AnswerStore(store)
    weeks, report = session_weeks(store, answers, selection)
    chosen = select_answer_sets(answers, report.selection, report)
    phys, phys_notes = collect_physiology(store, weeks, on_session)
    rows = collect_answers(answers, chosen) + phys
    df = pd.DataFrame(rows, columns=[*COLUMNS, "breathing_bpm"])
    if len(df):
        # several sessions of one participant in one week: their mean
        df = (
            df.groupby(["participant", "time_point", "measure", "source"], as_index=False, dropna=False)
            .agg(
                week=("week", "first"),
                value=("value", "mean"),
                session_id=("session_id", "first"),
                breathing_bpm=("breathing_bpm", "mean"),
            )
            .sort_values(["measure", "participant", "week"])
            .reset_index(drop=True)
        )
    return df[[*COLUMNS, "breathing_bpm"]], phys_notes, report


def check_time_points(data: pd.DataFrame, first: str | int | None, last: str | int | None) -> None:
    """Refuse a `first`/`last` time point that no selected observation has (instead of a table of "–")."""
    present = set(data["time_point"]) if len(data) else set()
    weeks = sorted({int(w) for w in data["week"].dropna()}) if len(data) else []
    for flag, value in (("--first", first), ("--last", last)):
        if value is None:
            continue
        label = parse_time_point(value)[0]
        if label not in present:
            have = (f"week {weeks[0]}" if len(weeks) == 1 else f"weeks {weeks[0]}-{weeks[-1]}") if weeks else "no weeks"
            others = sorted(t for t in present if not t.startswith("week "))
            have += f" and {', '.join(others)}" if others else ""
            raise StudySelectionError(f"{flag} {value}: no selected observation is at {label} (the data has {have})")


# -- comparing time points ----------------------------------------------------------------------------------------


def _time_points(sub: pd.DataFrame, first: str | None, last: str | None) -> tuple[str, str] | None:
    labels = set(sub["time_point"])
    if first is None and last is None and {"pre", "post"} <= labels:
        return "pre", "post"
    weeks = sorted(int(w) for w in sub["week"].dropna().unique())
    if not weeks:
        return None
    f = first if first is not None else f"week {weeks[0]}"
    la = last if last is not None else f"week {weeks[-1]}"
    return f, la


def compare(
    data: pd.DataFrame, first: str | int | None = None, last: str | int | None = None
) -> list[MeasureComparison]:
    """Every measure at its first and last time point (or `first`/`last`, e.g. week 1 and week 12)."""
    f_label = None if first is None else parse_time_point(first)[0]
    l_label = None if last is None else parse_time_point(last)[0]
    order = {"diary": 0, "questionnaire": 1, "physiology": 2}
    measures = sorted(data.groupby(["measure", "source"]).groups, key=lambda k: (order.get(k[1], 3), k[0]))
    rows = []
    for measure, source in measures:
        sub = data[(data["measure"] == measure) & (data["source"] == source)]
        has_weeks = sub["week"].notna().any()
        points = _time_points(sub, f_label if has_weeks else None, l_label if has_weeks else None)
        if points is None:
            continue
        a, b = points
        before = sub[sub["time_point"] == a].set_index("participant")["value"]
        after = sub[sub["time_point"] == b].set_index("participant")["value"]
        people = sorted(set(before.index) | set(after.index))
        x = [before.get(p) for p in people]
        y = [after.get(p) for p in people]
        notes: list[str] = []
        test = None
        n_pairs = sum(1 for u, v in zip(x, y, strict=True) if _ok(u) and _ok(v))
        if a == b:
            notes.append(f"only one time point ({a}): nothing to compare")
        elif n_pairs == 0:
            notes.append(f"no participant has values at both {a} and {b}")
        else:
            test = wilcoxon_spss(x, y)
            if test.note:
                notes.append(test.note)
        if measure.startswith("HF ") and sub["breathing_bpm"].notna().any():
            rate = float(np.nanmedian(sub["breathing_bpm"].astype(float)))
            if rate < SLOW_BREATHING_BPM:
                notes.append(f"breathing ~{rate:.1f}/min: RSA lies in LF, so HF does not index vagal activity here")
        rows.append(
            MeasureComparison(measure, source, a, b, int(before.notna().sum()), int(after.notna().sum()), test, notes)
        )
    return rows


def _ok(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def soothing_correlation(data: pd.DataFrame) -> Correlation:
    """Spearman correlation across sessions between diary self-soothing and the soothing response, same week."""
    diary = data[data["measure"] == DIARY_SOOTHING][["participant", "week", "value"]]
    phys = data[data["measure"] == SOOTHING_RESPONSE][["participant", "week", "value"]]
    both = diary.merge(phys, on=["participant", "week"], suffixes=("_diary", "_phys")).dropna()
    n = len(both)
    note = ("pairs are participant-weeks with both a diary and a session; weeks of one participant are not "
            "independent, so read p descriptively")  # fmt: skip
    if n < 3 or both["value_diary"].nunique() < 2 or both["value_phys"].nunique() < 2:
        return Correlation(DIARY_SOOTHING, SOOTHING_RESPONSE, n, None, None, f"n = {n}: too few or constant; {note}")
    res = sps.spearmanr(both["value_diary"], both["value_phys"])
    return Correlation(DIARY_SOOTHING, SOOTHING_RESPONSE, n, float(res.statistic), float(res.pvalue), note)


def free_texts(answers: AnswerStore, chosen: set[int] | None = None) -> list[dict[str, Any]]:
    out = []
    for aset in answers.find(include_text=True):
        if chosen is not None and aset.id not in chosen:
            continue
        for fid, text in (aset.texts or {}).items():
            out.append({"participant": aset.participant_id, "instrument": aset.instrument,
                        "time_point": aset.time_point, "field": fid, "text": text})  # fmt: skip
    return out


def analyze_study(
    store: Store, *, first: str | int | None = None, last: str | int | None = None, include_text: bool = False,
    selection: StudySelection | None = None, on_session: Callable[[int, int], None] | None = None,
) -> StudyResult:  # fmt: skip
    """The study table of the selection; `StudySelectionError` when it holds nothing or lacks `first`/`last`.
    `on_session(done, total)` reports the sessions analysed."""
    data, notes, report = collect(store, selection, on_session)
    if not len(data):
        raise StudySelectionError("nothing to analyse: " + "; ".join(report.lines()))
    check_time_points(data, first, last)
    result = StudyResult(data, compare(data, first, last), soothing_correlation(data), notes, selection=report)
    if include_text:
        result.free_text = free_texts(AnswerStore(store), set(report.answer_sets))
    return result


# -- output -------------------------------------------------------------------------------------------------------


def _f(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _msd(mean: float | None, sd: float | None) -> str:
    return "–" if mean is None else f"{mean:.2f} ({_f(sd)})"


def _p(p: float | None) -> str:
    return "–" if p is None else ("< .001" if p < 0.001 else f"{p:.3f}")


def _peq(p: float | None) -> str:
    shown = _p(p)
    return shown if shown.startswith("<") else f"= {shown}"


TABLE_HEADER = ["Measure", "First", "Mean (SD)", "Median", "Last", "Mean (SD)", "Median", "n", "T", "Z", "p", "Notes"]


def table_rows(result: StudyResult) -> list[list[str]]:
    out = []
    for r in result.rows:
        t = r.test
        out.append([
            r.measure, r.first, _msd(t and t.mean_before, t and t.sd_before), _f(t and t.median_before), r.last,
            _msd(t and t.mean_after, t and t.sd_after), _f(t and t.median_after), "–" if t is None else str(t.n),
            "–" if t is None else _f(t.t_stat, "g"), _f(t and t.z), _p(t and t.p_two_sided), "; ".join(r.notes),
        ])  # fmt: skip
    return out


def markdown(result: StudyResult) -> str:
    lines = ["# Study: first against last time point", ""]
    lines.append("Wilcoxon signed-rank test as SPSS reports it (zero differences dropped, normal approximation with "
                 "tie correction, no continuity correction). Mean (SD) and median over participants with both "
                 "time points; n = pairs.")  # fmt: skip
    lines.append("")
    lines.append("| " + " | ".join(TABLE_HEADER) + " |")
    lines.append("|" + "|".join(["---"] * len(TABLE_HEADER)) + "|")
    for row in table_rows(result):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    c = result.correlation
    lines += ["", "## Diary self-soothing and the physiological soothing response", ""]
    lines.append(f"Spearman rho = {_f(c.rho)}, p {_peq(c.p)}, n = {c.n} participant-weeks ({c.note}).")
    if result.selection is not None:
        lines += ["", "## Included and left out", ""] + [f"- {n}" for n in result.selection.lines()]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def table_csv(result: StudyResult) -> str:
    buf = io.StringIO()
    rows = [r.to_dict() for r in result.rows]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["measure"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_trajectories(data: pd.DataFrame, path: Path, measures: Sequence[str] | None = None) -> Path:
    """Every participant's line across weeks and the group median, one panel per measure, shared week axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weekly = data[data["week"].notna()]
    if measures is None:
        wanted = [DIARY_CRITICISM, DIARY_SOOTHING, SOOTHING_RESPONSE, "RMSSD baseline (ms)"]
        measures = [m for m in wanted if m in set(weekly["measure"])] or sorted(set(weekly["measure"]))[:4]
    fig, axes = plt.subplots(len(measures), 1, sharex=True, figsize=(8, 2.4 * max(1, len(measures))), squeeze=False)
    people = sorted(weekly["participant"].unique())
    colours = plt.get_cmap("tab10")
    for ax, measure in zip(axes[:, 0], measures, strict=True):
        sub = weekly[weekly["measure"] == measure]
        for i, pid in enumerate(people):
            line = sub[sub["participant"] == pid].sort_values("week")
            ax.plot(line["week"], line["value"], marker="o", ms=3, lw=1, alpha=0.6, color=colours(i % 10),
                    label=pid)  # fmt: skip
        med = sub.groupby("week")["value"].median()
        ax.plot(med.index, med.values, color="black", lw=2.5, label="group median")
        ax.set_ylabel(measure.replace(": ", ":\n", 1), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, 1.45), frameon=False)
    axes[-1, 0].set_xlabel("week")
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return path


def plot_correlation(data: pd.DataFrame, corr: Correlation, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diary = data[data["measure"] == DIARY_SOOTHING][["participant", "week", "value"]]
    phys = data[data["measure"] == SOOTHING_RESPONSE][["participant", "week", "value"]]
    both = diary.merge(phys, on=["participant", "week"], suffixes=("_diary", "_phys")).dropna()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for pid, grp in both.groupby("participant"):
        ax.scatter(grp["value_diary"], grp["value_phys"], s=18, label=pid)
    ax.set_xlabel(DIARY_SOOTHING)
    ax.set_ylabel("soothing response (ms)")
    ax.set_title(f"Spearman rho = {_f(corr.rho)}, p {_peq(corr.p)}, n = {corr.n}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_png(fig, path)
    plt.close(fig)
    return path


def _save_png(fig, path: Path) -> None:
    """Save a figure atomically and privately (write_outputs has already refused to replace files without --force)."""
    with open_private_for_write(path, overwrite=True, binary=True) as fh:
        fig.savefig(fh, format="png", dpi=110)


def write_outputs(result: StudyResult, out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Markdown and CSV table, JSON, long data, plots; free text only if the result holds it (include_text)."""
    out_dir = Path(out_dir)
    names = ["study_table.md", "study_table.csv", "study.json", "study_long.csv", "trajectories.png",
             "correlation.png", "free_text.csv"]  # fmt: skip
    for name in names:
        if (out_dir / name).exists() and not overwrite:
            raise OutputExistsError(f"{out_dir / name} exists; not overwriting it (use --force to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = [
        write_private_text(out_dir / "study_table.md", markdown(result), overwrite=overwrite),
        write_private_text(out_dir / "study_table.csv", table_csv(result), overwrite=overwrite),
        write_private_text(out_dir / "study.json", json.dumps(result.to_dict(), indent=2), overwrite=overwrite),
        write_private_text(out_dir / "study_long.csv", result.data.to_csv(index=False), overwrite=overwrite),
    ]
    if len(result.data):
        written.append(plot_trajectories(result.data, out_dir / "trajectories.png"))
        written.append(plot_correlation(result.data, result.correlation, out_dir / "correlation.png"))
    if result.free_text is not None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["participant", "instrument", "time_point", "field", "text"])
        writer.writeheader()
        writer.writerows(result.free_text)
        written.append(write_private_text(out_dir / "free_text.csv", buf.getvalue(), overwrite=overwrite))
    return written
