"""Command line of the biofeedback session recorder: parses arguments, calls one function per command, prints.

Run `python app.py --help` (or any command with `--help`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _piped_width() -> int:
    """Width of piped output: $COLUMNS when set, else wide enough to read a table in a log."""
    try:
        return max(20, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 160


# Piped output (logs, CI) gets a table wide enough to read; a terminal keeps its own width.
# Markup is off: names, prompts, notes and file names are printed as written (`ecg [uV]` stays); styles are given
# with rich Text instead.
console = Console(markup=False) if sys.stdout.isatty() else Console(width=_piped_width(), markup=False)
err_console = Console(stderr=True, markup=False)


class UserError(Exception):
    """An error to show to the user as one clear line (exit status 2)."""


# -- helpers ---------------------------------------------------------------------------------------------------


def _open_store(args: argparse.Namespace, *, readonly: bool = False):
    """The store of `--store` (or the default). Reading commands open it read-only: they never write or wait."""
    from recordings.store import Store, default_store_path

    store = getattr(args, "store", None)
    path = Path(store) if store else default_store_path()
    return Store(path, readonly=readonly and path.exists())


def _store_path(args: argparse.Namespace) -> Path:
    from recordings.store import default_store_path

    store = getattr(args, "store", None)
    return Path(store) if store else default_store_path()


def _lab_protocols(args: argparse.Namespace) -> Path:
    """The lab's own protocol folder ($CMT_PROTOCOL_DIR, else `protocols/` beside the store)."""
    from protocols.library import lab_protocol_dir

    return lab_protocol_dir(_store_path(args))


def _fmt(value, spec=".1f") -> str:
    return "–" if value is None else format(value, spec)


TEXT_MIN_WIDTH = 12


@dataclasses.dataclass
class Tabular:
    """A table as data: printed as a rich table that never cuts a number, or as CSV / JSON (`--csv`, `--json`)."""

    title: str
    columns: list[str]
    numeric: set[str]
    rows: list[list[str]]
    records: list[dict[str, Any]] | None = None
    """What `--json` prints (default: one object per row, column name to shown value)."""

    def text_widths(self) -> list[int]:
        """Width a text column keeps at least (its longest cell, up to `TEXT_MIN_WIDTH`; more folds)."""
        return [min(TEXT_MIN_WIDTH, max([len(c), *(len(r[i]) for r in self.rows)])) for i, c in enumerate(self.columns)]

    def rich_table(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for col, need in zip(self.columns, self.text_widths(), strict=True):
            if col in self.numeric:
                table.add_column(col, justify="right", no_wrap=True, overflow="fold")
            else:
                table.add_column(col, overflow="fold", min_width=need)
        for row in self.rows:
            table.add_row(*row)
        return table

    def vertical(self) -> Text:
        """One block per row (`column: value`), for terminals too narrow for the table."""
        out = Text(self.title + "\n", style="bold")
        width = max((len(c) for c in self.columns), default=0)
        for row in self.rows:
            out.append("\n")
            for col, value in zip(self.columns, row, strict=True):
                out.append(f"{col:>{width}}  ", style="dim")
                out.append(value + "\n")
        return out


def _numbers_intact(tab: Tabular, width: int) -> bool:
    """Whether the rich table at `width` columns shows every numeric cell whole on one line."""
    probe = Console(width=width, file=open(os.devnull, "w"), color_system=None, record=True)  # noqa: SIM115
    probe.print(tab.rich_table())
    lines = probe.export_text().splitlines()
    probe.file.close()
    shown = [(i, None if c in tab.numeric else need) for i, (c, need) in enumerate(zip(tab.columns, tab.text_widths(),
                                                                                      strict=True))]  # fmt: skip
    # a number whole on one line; a text cell's first characters on one line (the rest may fold below)
    return all(any(row[i][:need] in line for line in lines) for row in tab.rows for i, need in shown)


def _print_tabular(tab: Tabular, args: argparse.Namespace | None = None) -> None:
    """`--json`, `--csv`, else a table (vertical when the terminal is too narrow to show every number whole)."""
    if args is not None and getattr(args, "json", False):
        records = tab.records if tab.records is not None else [dict(zip(tab.columns, r, strict=True)) for r in tab.rows]
        print(json.dumps(records, indent=2))
    elif args is not None and getattr(args, "csv", False):
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(tab.columns)
        writer.writerows(tab.rows)
    elif _numbers_intact(tab, console.width):
        console.print(tab.rich_table())
    else:
        console.print(tab.vertical())


def _phase_tabular(analysis) -> Tabular:
    cols = [
        ("phase", None), ("kind", None), ("start s", ".1f"), ("end s", ".1f"), ("beats", "d"),
        ("corr %", ".1f"), ("HR", ".1f"), ("RMSSD", ".1f"), ("SDNN", ".1f"), ("pNN50", ".1f"),
        ("LF ms²", ".0f"), ("HF ms²", ".0f"), ("breaths/min", ".1f"), ("grade", None), ("edits", "d"),
    ]  # fmt: skip
    rows = []
    for i, p in enumerate(analysis.phases):
        review = analysis.review[i] if analysis.review else {"grade": "–", "n_edits": 0}
        values = [p.name, p.kind, p.start_s, p.end_s, p.n_beats, p.corrected_pct, p.mean_hr_bpm, p.rmssd_ms,
                  p.sdnn_ms, p.pnn50_pct, p.lf_ms2, p.hf_ms2, p.breathing_rate_bpm, review["grade"],
                  review["n_edits"]]  # fmt: skip
        rows.append([str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    title = (f"Session {analysis.session.id} · {analysis.session.participant_id} · {analysis.session.protocol_name}"
             f" · beats {analysis.beats} · correction {analysis.correction}")  # fmt: skip
    return Tabular(title, [c for c, _ in cols], {c for c, spec in cols if spec is not None}, rows)


def _index_table(analysis) -> Tabular:
    """The further indices per phase, for the experimenter (coherence ratio: HeartMath; index: the project's)."""
    cols = [
        ("phase", None), ("SD1", ".1f"), ("SD2", ".1f"), ("DFA α1", ".2f"), ("SampEn", ".2f"), ("stress idx", ".0f"),
        ("LF nu", ".0f"), ("HF nu", ".0f"), ("coh. ratio", ".2f"), ("coh. index", ".2f"),
    ]  # fmt: skip
    rows = []
    for p in analysis.phases:
        values = [p.name, p.sd1_ms, p.sd2_ms, p.dfa_alpha1, p.sample_entropy, p.stress_index, p.lf_nu, p.hf_nu,
                  p.coherence_ratio, p.coherence_index]  # fmt: skip
        rows.append([str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    return Tabular("Further indices (settings: analyze --json, index_settings)", [c for c, _ in cols],
                   {c for c, spec in cols if spec is not None}, rows)


def _print_notes(analysis) -> None:
    for p in analysis.phases:
        for note in p.notes:
            console.print(Text.assemble("  ", (f"{p.name}:", "dim"), f" {note}"))
    for st in analysis.quality.get("beat_stretches", []):
        drift = "unknown (too short)" if st["drift_ppm"] is None else f"{st['drift_ppm']:+.1f} ppm"
        console.print(Text.assemble("  ", ("beat timing:", "dim"),
                                    f" stretch {st['idx'] + 1} ({st['reason']}, {st['n_beats']} beats from "
                                    f"{st['t_first']:.1f} s): strap clock drift {drift}, first notification "
                                    f"{st['anchor_delay_s'] * 1000:.0f} ms late, median delay "
                                    f"{st['median_delay_s'] * 1000:.0f} ms"))  # fmt: skip


def _print_ecg_agreement(analysis) -> None:
    """Sessions with ECG: per phase, how the ECG's R peaks agree with the strap's beats (`analysis.ecg_beats`)."""
    if analysis.ecg_agreement is None:
        if "ecg_beats" in analysis.quality:
            console.print(f"ECG beats: none ({analysis.quality['ecg_beats']})", markup=False, highlight=False)
        return
    cols = [("phase", None), ("strap beats", "d"), ("ECG beats", "d"), ("matched", "d"), ("strap only", "d"),
            ("ECG only", "d"), ("intervals", "d"), ("median |ΔRR| ms", ".1f"), ("|ΔRR| > 20 ms %", ".1f"),
            ("offset ms", ".0f")]  # fmt: skip
    rows = []
    for a in analysis.ecg_agreement:
        values = [a.phase, a.strap_beats, a.ecg_beats, a.matched, a.strap_only, a.ecg_only, a.intervals,
                  a.median_abs_drr_ms, a.over_20ms_pct, a.offset_ms]  # fmt: skip
        rows.append([str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    _print_tabular(Tabular("ECG beats (neurokit2 R peaks) against the strap's beats", [c for c, _ in cols],
                           {c for c, spec in cols if spec is not None}, rows))  # fmt: skip


def _breath_table(analysis) -> Tabular | None:
    """Breath by breath from chest movement (ACC): measured rate beside the pacer, compliance, RSA per breath."""
    if not any(p.n_breaths is not None for p in analysis.phases):
        return None
    cols = [("phase", None), ("pacer /min", ".1f"), ("measured /min", ".1f"), ("breaths", "d"),
            ("on pacer %", ".0f"), ("RSA p–t bpm", ".1f")]  # fmt: skip
    rows = []
    for p in analysis.phases:
        values = [p.name, p.pacer_rate_bpm, p.acc_breathing_rate_bpm, p.n_breaths, p.pacer_compliance_pct,
                  p.rsa_p2t_bpm]  # fmt: skip
        rows.append([str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    from biofeedback.analysis.breath_cycles import COMPLIANCE_TOLERANCE

    title = (f"Breathing from chest movement (on pacer: breaths within ±{COMPLIANCE_TOLERANCE:.0%} of its period; "
             "RSA: median peak-to-trough HR per breath)")  # fmt: skip
    return Tabular(title, [c for c, _ in cols], {c for c, spec in cols if spec is not None}, rows)


def _synchrony_tables(result) -> tuple[Tabular, Tabular]:
    """Group synchrony per phase (Fisher-z mean r, surrogate p) and every pair's r."""
    cols = [("phase", None), ("kind", None), ("participants", "d"), ("pairs", "d"), ("mean r", ".2f"),
            ("p", ".3f"), ("chance 95% r", ".2f")]  # fmt: skip
    rows = []
    for ph in result.phases:
        values = [ph.name, ph.kind, len(ph.participants), len(ph.pairs), ph.mean_r, ph.p_value, ph.surrogate_95_r]
        rows.append([str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    who = ", ".join(f"{pid} (session {sid})" for pid, sid in result.sessions.items())
    phases = Tabular(f"Group synchrony · group {result.group_id} · {who}", [c for c, _ in cols],
                     {c for c, spec in cols if spec is not None}, rows)  # fmt: skip
    pair_rows = [[ph.name, a, b, f"{r:.2f}", f"{s:.0f}"] for ph in result.phases for a, b, r, s in ph.pairs]
    pairs = Tabular("Pairwise heart-rate correlation", ["phase", "a", "b", "r", "joint s"], {"r", "joint s"}, pair_rows)
    return phases, pairs


def _analyze_group(args: argparse.Namespace) -> int:
    from biofeedback.analysis.synchrony import SETTINGS, group_synchrony

    with _open_store(args, readonly=True) as store:
        result = group_synchrony(store, args.session, correction=args.correction)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    phases, pairs = _synchrony_tables(result)
    if args.csv:
        _print_tabular(phases, args)
        return 0
    _print_tabular(phases)
    _print_tabular(pairs)
    for ph in result.phases:
        for note in ph.notes:
            console.print(Text.assemble("  ", (f"{ph.name}:", "dim"), f" {note}"))
    console.print(Text.assemble("  ", ("method:", "dim"), f" {SETTINGS['synchrony']}; seed {result.seed}"))
    return 0


# -- commands --------------------------------------------------------------------------------------------------


def _headless_diary_note(session) -> str | None:
    """One line for a headless run of a protocol with diary phases: they just wait; answers are entered later."""
    diaries = [ph for ph in session.protocol.phases if ph.kind.value == "diary"]
    if not diaries:
        return None
    names = ", ".join(
        f"{ph.name} ({ph.duration_s:g} s)" if ph.duration_s < 60 else f"{ph.name} ({ph.duration_s / 60:g} min)"
        for ph in diaries
    )
    week = session.settings.get("week")
    week_arg = f"--week {week}" if week is not None else "--week N"
    if len(session.straps) == 1:
        strap = session.straps[0]
        who, sid, extra = strap.binding.participant_id, str(strap.session_id), ""
    else:
        who, sid = "ID", "SID"
        extra = " (sessions " + ", ".join(f"{s.binding.participant_id}: {s.session_id}" for s in session.straps) + ")"
    command = f"diary add --participant {who} {week_arg} --session {sid}"
    return f"Diary phase {names}: without windows it just waits; enter the answers afterwards with `{command}`{extra}."


def _wait_for_straps(args: argparse.Namespace, specs, faults) -> None:
    """--start-when-ready: wait (on links of its own, recording nothing) until every strap is ready, or fail."""
    from biofeedback.live.readiness import READY_BEATS_S, NotReadyError
    from biofeedback.live.recorder import wait_for_straps

    if args.ready_timeout <= 0:
        raise UserError(f"--ready-timeout must be > 0 s, got {args.ready_timeout:g}")
    shown: dict[str, str] = {}

    def update(states, now: float) -> None:
        for st in states:
            words = st.status(now) + (f" · {st.battery_note()}" if st.battery_note() else "")
            key = words.split(":")[0].split(" for ")[0]  # a line per change of state, not per second or retry
            if shown.get(st.participant_id) != key:
                shown[st.participant_id] = key
                console.print(f"  {st.participant_id} ({st.device_id}): {words}", highlight=False)

    console.print(f"Waiting for {len(specs)} strap(s): connected, skin contact, beats for {READY_BEATS_S:g} s "
                  f"(at most {args.ready_timeout:g} s)")  # fmt: skip
    try:
        wait_for_straps(specs, args.ready_timeout, speed=args.speed, seed=args.seed, faults=faults, on_update=update)
    except NotReadyError as exc:
        raise UserError(f"{exc}. Nothing was recorded.") from None
    console.print("Every strap is ready: starting the protocol.")


def _participant_screens(args: argparse.Namespace, specs) -> dict[str, int]:
    """--participant-screen P01=2: checked against the screens there are before anything is recorded."""
    if not args.participant_screen:
        return {}
    if args.headless:
        raise UserError("--participant-screen places the participants' windows: leave out --headless")
    from biofeedback.display.screens import ScreenChoiceError, check_screen_choices, parse_screen_choices

    try:
        choices = parse_screen_choices(args.participant_screen)
        check_screen_choices([s.participant_id for s in specs], choices)
    except ScreenChoiceError as exc:
        raise UserError(str(exc)) from None
    return choices


def _ready_screen(args: argparse.Namespace, specs, faults, title: str):
    """Display mode: the ready screen (links of its own, nothing recorded) until Start, Start without …, or Cancel."""
    from biofeedback.display.ready import run_ready_screen
    from biofeedback.live.recorder import make_links
    from biofeedback.live.session import StrapBinding
    from devices.clock import ScaledClock

    clock = ScaledClock(args.speed)
    links = make_links(specs, clock, lambda: None, seed=args.seed, faults=faults)
    bindings = [StrapBinding(link, spec.participant_id) for link, spec in zip(links, specs, strict=True)]
    choice = run_ready_screen(bindings, clock, title, auto_start=args.start_when_ready)
    for pid, reason in (choice.left_out if choice else {}).items():
        console.print(f"Left out at the ready screen: {pid} ({reason})", highlight=False)
    return choice


def cmd_session_run(args: argparse.Namespace) -> int:
    from biofeedback.live.recorder import parse_device_specs, plan_session, run_session_blocking
    from protocols.library import get_protocol

    specs = parse_device_specs(args.device or ["sim"], args.participant)
    protocol = get_protocol(args.protocol, lab_dir=_lab_protocols(args))
    _check_web_args(args)
    with _open_store(args) as store:
        plan = plan_session(store, protocol, specs, pacer_rate=args.pacer_rate, week=args.week,
                            sim_faults=args.sim_faults or [], speed=args.speed, seed=args.seed, ecg=args.ecg,
                            acc=args.acc)  # fmt: skip  (shared with the console's Start)
        protocol = plan.protocol
        if args.start_when_ready and args.headless:
            _wait_for_straps(args, specs, plan.faults)
        screens = _participant_screens(args, specs)
        if not args.headless:
            choice = _ready_screen(args, specs, plan.faults, protocol.name)
            if choice is None:
                print("cancelled at the ready screen: nothing was recorded", file=sys.stderr)
                return 1
            kept = tuple(s for s in plan.specs if s.participant_id in choice.participants)
            settings = {**plan.settings, "left_out_at_start": choice.left_out} if choice.left_out else plan.settings
            plan = dataclasses.replace(plan, specs=kept, settings=settings)
        session = plan.build(store, on_alert=_alert)
        who = ", ".join(f"{st.binding.participant_id} (week {store.session(st.session_id).week})"
                        for st in session.straps)  # fmt: skip
        console.print(Text.assemble("Recording ", (protocol.name, "bold"), f" ({protocol.total_duration_s / 60:.0f} "
                                    f"min) for {who} at speed ×{args.speed:g} into {store.path}"))  # fmt: skip
        outlets = None
        if args.lsl:
            from biofeedback.live.lsl_outlets import LslOutlets

            outlets = LslOutlets(session, include_text=args.include_text)
            session.add_listener(outlets)
            console.print(f"Lab Streaming Layer: streaming {len(outlets.stream_names)} streams, "
                          f"{', '.join(outlets.stream_names)}")  # fmt: skip
            if args.lsl_wait and args.headless:  # with windows the monitor asks (and --lsl-wait N starts waiting)
                _wait_for_lsl_consumers(store, session, outlets, args.lsl_wait, args.lsl_wait_timeout)
        if protocol.marker_stream and protocol.marker_stream not in (args.lsl_in or []):
            args.lsl_in = [*(args.lsl_in or []), protocol.marker_stream]  # its markers start/end phases
        if args.lsl_in:
            from biofeedback.live.lsl_inlets import LslInError, LslInlets

            try:
                inlets = LslInlets(session, args.lsl_in)
            except LslInError as exc:
                for sid in session.session_ids:
                    store.end_session(sid, "stopped")
                raise UserError(str(exc)) from exc
            session.add_listener(inlets)
            console.print(f"Lab Streaming Layer: recording {', '.join(args.lsl_in)}")
        web = _web_display(session, args)
        try:
            if args.headless:
                if note := _headless_diary_note(session):
                    console.print(note, highlight=False, soft_wrap=True)
                ids = run_session_blocking(session, view=sys.stdout.isatty())
            else:
                from biofeedback.display.app import run_with_displays

                gate = None
                if outlets is not None:
                    from biofeedback.live.lsl_outlets import ConsumerGate

                    gate = ConsumerGate(outlets, args.lsl_wait_timeout)
                    if args.lsl_wait:
                        gate.start_when(args.lsl_wait)
                if web is None:
                    kept = {pid: n for pid, n in screens.items() if pid in {s.participant_id for s in plan.specs}}
                    ids = run_with_displays(session, participant_screens=kept, lsl_gate=gate,
                                            on_note=lambda line: console.print(line, highlight=False))
                else:  # the participants' displays are their pages; the monitor shows their QR codes
                    ids = run_with_displays(session, participant_windows=False, web_links=web.urls, lsl_gate=gate)
        finally:
            if outlets is not None:
                outlets.close()
            if web is not None:
                web.close_sync()
        from biofeedback.analysis.analyze import (
            analyze_session,  # neurokit2 takes seconds to load: not before it is needed
        )

        if session.failure:  # already told, at the moment it happened (the alert line)
            return 1
        if session.runner.state.t is None:  # the monitor closed before the session clock started
            console.print("The monitor was closed before the session clock started: nothing was recorded.")
            return 0
        for sid in ids:
            analysis = analyze_session(store, sid)
            _print_tabular(_phase_tabular(analysis))
            _print_tabular(_index_table(analysis))
            if (breaths := _breath_table(analysis)) is not None:
                _print_tabular(breaths)
            _print_notes(analysis)
        if problems := session.problems():
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            console.print(f"Recording incomplete: sessions {', '.join(map(str, ids))} in {store.path}")
            return 1
        console.print(f"Recording saved: sessions {', '.join(map(str, ids))} in {store.path}")
    return 0


def _check_web_args(args: argparse.Namespace) -> None:
    """Refuse web display options that cannot work before anything is recorded."""
    if not args.web_display:
        if args.web_host is not None or args.web_port is not None:
            raise UserError("--web-host and --web-port need --web-display")
        return
    try:
        import biofeedback.live.web_display  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--web-display needs the web extra: pip install -e '.[web]' ({exc})") from None


def _web_display(session, args: argparse.Namespace):
    """--web-display: bind the participants' pages now and print each participant's own URL (None without it)."""
    if not args.web_display:
        return None
    from biofeedback.live.web_display import WebDisplay, WebDisplayError

    port = 8765 if args.web_port is None else args.web_port
    try:
        web = WebDisplay(session, args.web_host or "127.0.0.1", port)
    except WebDisplayError as exc:
        for sid in session.session_ids:
            session.store.end_session(sid, "stopped")
        raise UserError(f"{exc}. Nothing was recorded.") from None
    session.add_listener(web)
    where = "" if args.headless else "; the monitor shows them as QR codes"
    console.print(f"Web display: each participant opens their own page (keep the links private{where}):")
    for pid, url in web.urls.items():
        console.print(f"  {pid}: {url}", highlight=False, soft_wrap=True)
    return web


def _alert(line: str) -> None:
    """A strap or the store stopped recording: one line on the terminal at once (never wrapped)."""
    print(f"error: {line}", file=sys.stderr, flush=True)


def _wait_for_lsl_consumers(store, session, outlets, n: int, timeout_s: float) -> None:
    """Hold the session clock until `n` LSL streams have a consumer; on timeout the unused sessions are stopped."""
    n = min(n, len(outlets.stream_names))
    console.print(f"Waiting for consumers on {n} of the streams (start recording in LabRecorder) ...")
    if not outlets.wait_for_consumers(n, timeout_s, lambda have: console.print(f"  {have} of {n} streams consumed")):
        have = outlets.consumed_streams()
        outlets.close(linger_s=0)
        for sid in session.session_ids:
            store.end_session(sid, "stopped")
        raise UserError(f"only {have} of {n} LSL streams had a consumer after {timeout_s:g} s: start recording in "
                        f"LabRecorder (or an inlet) first, or lower --lsl-wait")  # fmt: skip
    console.print(f"{n} streams consumed: starting the session clock")


def cmd_replay(args: argparse.Namespace) -> int:
    from biofeedback.live.recorder import run_session_blocking
    from biofeedback.live.replay import build_replay

    if args.speed <= 0:
        raise UserError(f"--speed must be > 0, got {args.speed:g}")
    with _open_store(args, readonly=True) as store:
        session = build_replay(store, args.session, speed=args.speed)
    info = session.protocol
    console.print(Text.assemble(f"Replaying session {args.session} (", (info.name, "bold"),
                                f", {len(session.link.packets)} packets) at speed ×{args.speed:g}; nothing is "
                                "recorded"))  # fmt: skip
    if args.headless:
        run_session_blocking(session, view=sys.stdout.isatty())
    else:
        from biofeedback.display.app import run_with_displays

        run_with_displays(session)
    console.print(f"Replay finished: {session.link.delivered} of {len(session.link.packets)} packets played")
    return 0


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from biofeedback.study.session_filter import select_sessions

    with _open_store(args, readonly=True) as store:
        sessions = select_sessions(store, participant=args.participant, protocol=args.protocol, week=args.week,
                                   state=args.state, source=args.source)  # fmt: skip
        cols = ["id", "participant", "protocol", "week", "source", "device", "started (UTC)", "state", "beats",
                "excluded"]  # fmt: skip
        rows = [[str(s.id), s.participant_id, s.protocol_name, _fmt(s.week, "d"), s.source, s.device, s.started_utc,
                 s.state if not s.end_reason else f"{s.state}: {s.end_reason}", str(store.counts(s.id)["beats"]),
                 s.excluded or ""] for s in sessions]  # fmt: skip
        tab = Tabular(f"Sessions in {store.path}", cols, {"id", "week", "beats", "started (UTC)"}, rows,
                      records=[s.to_dict() for s in sessions])  # fmt: skip
        _print_tabular(tab, args)
    return 0


def _confirm(question: str, args: argparse.Namespace) -> None:
    """Ask before something that cannot be undone; `--yes` answers for scripts, and without a terminal it is needed."""
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{question} Not confirmed: no terminal to ask on; add --yes to confirm")
    reply = console.input(Text(f"{question} Type yes to confirm: "))
    if reply.strip().lower() not in ("y", "yes"):
        raise UserError("not confirmed; nothing was deleted")


def _who(args: argparse.Namespace) -> str:
    return getattr(args, "by", None) or getpass.getuser()


def cmd_sessions_exclude(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.session(args.session)
        store.exclude("session", info.id, args.reason, by=_who(args), participant_id=info.participant_id)
    console.print(f"session {info.id} ({info.participant_id}) is excluded from study analyses and exports "
                  f"(`sessions restore {info.id}` undoes it)", markup=False, highlight=False)  # fmt: skip
    return 0


def cmd_sessions_restore(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.session(args.session)
        if not store.restore("session", info.id, by=_who(args), participant_id=info.participant_id):
            raise UserError(f"session {info.id} is not excluded")
    console.print(f"session {info.id} ({info.participant_id}) is included again", highlight=False)
    return 0


def cmd_sessions_set_week(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        old = store.set_week(args.session, args.week, by=_who(args), reason=args.reason)
    was = "no week" if old is None else f"week {old}"
    console.print(f"session {args.session} is now in week {args.week} (was {was})")
    return 0


def cmd_sessions_redecode(args: argparse.Namespace) -> int:
    from recordings.decode import redecode_session

    with _open_store(args) as store:
        info = store.session(args.session)
        if info.state == "running":
            raise UserError(f"session {info.id} is still recording; re-decode it once it has ended")
        counts = redecode_session(store, info.id)
    console.print(f"session {args.session} re-decoded from its {counts.packets} raw packets: {counts.beats} beats, "
                  f"{counts.malformed} malformed packets")  # fmt: skip
    return 0


def cmd_sessions_delete(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        info = store.session(args.session)
        beats = store.counts(info.id)["beats"]
        _confirm(f"Delete session {info.id} ({info.participant_id}, {info.protocol_name}, {info.started_utc[:16]}, "
                 f"{beats} beats) and everything recorded in it?", args)  # fmt: skip
        detail = store.delete_session(info.id, by=_who(args), reason=args.reason)
    unlinked = detail.get("unlinked_answer_sets") or []
    extra = f"; answer sets {', '.join(map(str, unlinked))} kept, no longer linked to it" if unlinked else ""
    console.print(f"deleted session {info.id}; an audit row keeps what it was (not its data){extra}",
                  highlight=False)  # fmt: skip
    return 0


def cmd_sessions_audit(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        rows = store.audit_rows()
    cols = ["id", "when (UTC)", "by", "action", "what", "participant", "reason"]
    shown = [[str(r.id), r.utc, r.by, r.action, f"{r.kind.replace('_', ' ')} {r.object_id}", r.participant_id or "",
              r.reason] for r in rows]  # fmt: skip
    title = "Audit trail: exclusions, restores, week changes, deletions"
    _print_tabular(Tabular(title, cols, {"id", "when (UTC)"}, shown, records=[r.to_dict() for r in rows]), args)
    return 0


def _resonance_tabular(assessment) -> Tabular:
    cols = [("phase", None), ("paced /min", "g"), ("beats", "d"), ("corr %", ".1f"), ("RSA bpm", ".1f"),
            ("LF peak ms²", ".0f"), ("LF ms²", ".0f"), ("peak /min", ".2f"), ("ACC /min", ".2f"), ("sync", ".2f"),
            ("smooth", ".2f"), ("LF peaks", "d"), ("votes", "d"), ("score", ".2f"), ("usable", None)]  # fmt: skip
    rows = []
    for r in assessment.rates:
        values = [r.phase, r.rate_bpm, r.n_beats, r.corrected_pct, r.rsa_amplitude_bpm, r.lf_peak_ms2, r.lf_ms2,
                  r.peak_bpm, r.acc_rate_bpm, r.phase_sync_plv, r.smoothness, r.n_lf_peaks,
                  len(r.votes) if r.eligible else None, r.score, "yes" if r.eligible else "no"]  # fmt: skip
        rows.append([str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    title = f"Resonance assessment · session {assessment.session_id} · {assessment.participant_id}"
    return Tabular(title, [c for c, _ in cols], {c for c, spec in cols if spec is not None}, rows)


def _print_resonance(assessment) -> None:
    _print_tabular(_resonance_tabular(assessment))
    for r in assessment.rates:
        for note in r.notes:
            console.print(Text.assemble("  ", (f"{r.phase}:", "dim"), f" {note}"))
    if assessment.resonance_rate_bpm is None:
        console.print(f"Resonance rate: not named ({assessment.reason})")
    else:
        console.print(Text.assemble("Resonance rate: ", (f"{assessment.resonance_rate_bpm:g} breaths/min", "bold"),
                                    f" ({assessment.reason})"))  # fmt: skip
        if len(assessment.close_rates_bpm) > 1:
            console.print(f"  close: {', '.join(f'{r:g}' for r in assessment.close_rates_bpm)} /min")
    console.print("  criteria (Shaffer & Meehan 2020): sync = HR-breathing phase locking (needs --acc), RSA bpm = "
                  "peak-to-trough HR, LF ms², LF peak ms², smooth = share of HR variance at the pacer rate, LF peaks "
                  "(fewer is better); each gives a vote to its best rate; most votes, then score, then the faster "
                  "rate", style="dim", highlight=False)  # fmt: skip


def _save_resonance(store, assessment, machine: bool = False) -> None:
    """Store the named rate; the message goes to stderr when stdout carries JSON or CSV (`machine`)."""
    from biofeedback.analysis.resonance import NotAnAssessmentError, save_resonance_rate

    try:
        rate = save_resonance_rate(store, assessment)
    except NotAnAssessmentError as exc:
        raise UserError(str(exc)) from None
    (err_console if machine else console).print(
        f"Saved {rate:g} breaths/min as the resonance rate of {assessment.participant_id}; later sessions pace at it "
        "unless --pacer-rate is given", markup=False, highlight=False)  # fmt: skip


def cmd_analyze(args: argparse.Namespace) -> int:
    from biofeedback.analysis.analyze import analyze_session
    from biofeedback.analysis.resonance import assess_session, is_resonance_assessment

    if getattr(args, "group", False):
        return _analyze_group(args)
    with _open_store(args, readonly=not args.save_resonance) as store:
        analysis = analyze_session(store, args.session, correction=args.correction, beats=args.beats)
        assessment = None
        if is_resonance_assessment(store.protocol_dict(args.session)):
            assessment = assess_session(store, args.session, correction=args.correction,
                                        beats=getattr(args, "beats", None))
        elif args.save_resonance:
            raise UserError(f"session {args.session} is not a resonance assessment: nothing to save")
        if args.json:
            out = analysis.to_dict()
            if assessment is not None:
                out["resonance"] = assessment.to_dict()
            print(json.dumps(out, indent=2))
        elif args.csv:
            _print_tabular(_phase_tabular(analysis), args)
        else:
            _print_tabular(_phase_tabular(analysis))
            _print_tabular(_index_table(analysis))
            if (breaths := _breath_table(analysis)) is not None:
                _print_tabular(breaths)
            _print_notes(analysis)
            _print_ecg_agreement(analysis)


            _print_beat_source(analysis.beats_note, _phase_edit_lines(analysis))
            if assessment is not None:
                _print_resonance(assessment)
        if args.save_resonance and assessment is not None:
            _save_resonance(store, assessment, machine=args.json or args.csv)
    return 0


def cmd_resonance_save(args: argparse.Namespace) -> int:
    from biofeedback.analysis.resonance import NotAnAssessmentError, assess_session

    with _open_store(args) as store:
        try:
            assessment = assess_session(store, args.session, correction=args.correction,
                                        beats=getattr(args, "beats", None))
        except NotAnAssessmentError as exc:
            raise UserError(str(exc)) from None
        if args.json:
            print(json.dumps(assessment.to_dict(), indent=2))
        elif args.csv:
            _print_tabular(_resonance_tabular(assessment), args)
        else:
            _print_resonance(assessment)
        _save_resonance(store, assessment, machine=args.json or args.csv)
    return 0


def _export_sessions(args: argparse.Namespace, store) -> list[int]:
    """The sessions an export names: one SESSION, `--participant ID` or `--all`."""
    chosen = [args.session is not None, args.participant is not None, args.all]
    if sum(chosen) != 1:
        raise UserError("name exactly one of: a SESSION id, --participant ID, --all")
    if args.session is not None:
        store.session(args.session)  # raises a clear error when it does not exist
        return [args.session]
    from biofeedback.study.prepost import SelectionReport, session_reason

    selection = _study_selection(args)
    report = SelectionReport(selection)
    ids = []
    for info in store.sessions(args.participant):
        reason = session_reason(info, selection)
        if reason is None:
            ids.append(info.id)
        else:
            report.sessions_left_out.append((info.id, info.participant_id, reason))
    report.sessions = ids
    for line in report.lines()[1:]:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    if not ids:
        who = f" for participant {args.participant}" if args.participant else ""
        raise UserError(f"no sessions{who} to export in {store.path} ({selection.describe()})")
    return ids


PROGRESS_LINE_S = 1.0
"""Piped progress: a line after each this many seconds of work, and the last line when the work is done."""


class Progress:
    """Progress of long work, always on stderr (never mixed into stdout's tables, JSON or CSV): a bar on a
    terminal, plain lines `progress: WHAT DONE/TOTAL DETAIL` when stderr is piped (logs, CI, headless runs)."""

    def __init__(self, what: str, total: int | None = None) -> None:
        import time

        self.what, self.total, self.done, self.detail = what, total, 0, ""
        self._clock = time.monotonic
        self._bar = None
        self._last_line = self._clock()  # quick work prints only its last line; a failure none (its error is one line)
        self._printed: tuple[int, int | None] | None = None

    def __enter__(self) -> Progress:
        if err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err_console, transient=True)  # fmt: skip
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        self.done, self.detail = done, detail
        self.total = total if total is not None else self.total
        if self._bar is not None:
            label = f"{self.what} {detail}".strip()
            self._bar.update(self._task, completed=done, total=self.total, description=label)
        elif self._clock() - self._last_line >= PROGRESS_LINE_S:
            self._line()

    def advance(self, n: int = 1, detail: str = "") -> None:
        self.update(self.done + n, detail=detail)

    def step(self, name: str, steps: Sequence[str]) -> None:
        """A named step of a fixed list (the report's `REPORT_STEPS`)."""
        self.update(list(steps).index(name), len(steps), name)

    def _line(self) -> None:
        self._last_line = self._clock()
        self._printed = (self.done, self.total)
        of = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(f"progress: {self.what} {self.done}{of} {self.detail}".rstrip() + "\n")
        sys.stderr.flush()

    def __exit__(self, exc_type, *rest) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, *rest)
        elif exc_type is None and self._printed != (self.done, self.total):
            self._line()


def _progress(what: str = "", total: int | None = None) -> Progress:
    return Progress(what, total)


@contextmanager
def _step_progress(what: str, steps: Sequence[str]) -> Iterator[Callable[[str], None]]:
    """Progress of work by its named `steps` (an `on_step` callback to hand to it), ending with `done`."""
    with _progress(what) as progress:
        yield lambda name: progress.step(name, steps)
        progress.update(len(steps), len(steps), "done")


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    written: list[Path] = []
    with _open_store(args, readonly=True) as store:
        ids = _export_sessions(args, store)
        if args.format == "bids":
            from recordings.export_bids import default_dataset_info_path, export_bids, load_dataset_info

            info_path = Path(args.dataset_info) if args.dataset_info else default_dataset_info_path(store.path)
            dataset_info = load_dataset_info(info_path) if args.dataset_info or info_path.is_file() else None
            if dataset_info is not None:
                console.print(f"dataset information from {info_path}")
            with _progress(f"BIDS export to {out}", len(ids)) as progress:
                result = export_bids(store, out, ids, include_text=args.include_text, overwrite=args.force,
                                     on_session=lambda sid: progress.advance(detail=f"session {sid}"),
                                     dataset_info=dataset_info,
                                     beats_for=lambda sid: _say_beats(store, sid, args.beats).beats)  # fmt: skip
            for sid in result.kept_sessions:
                console.print(f"kept session {sid}: already in {out} (use --force to rewrite it)")
            for sid in result.redone_sessions:
                console.print(f"redid session {sid}: its folder in {out} was incomplete (an interrupted export)")
            console.print(f"wrote sessions {result.exported_sessions or 'none'} into BIDS dataset {out} "
                          f"({len(result.written)} files, index files updated)")  # fmt: skip
            return 0
        if args.format == "table":
            from biofeedback.study.long_table import write_long_table

            for sid in ids:
                _say_beats(store, sid, args.beats)
            with _progress(f"table of {len(ids)} sessions", len(ids)) as progress:
                path = write_long_table(store, ids, out, correction=args.correction, overwrite=args.force,
                                        on_session=lambda sid: progress.advance(detail=f"session {sid}"),
                                        beats=args.beats)  # fmt: skip
            console.print(f"wrote {path} (sessions {ids}, one row per session × phase × index)")
            return 0
        with _progress(f"{args.format} export to {out}", len(ids)) as progress:
            for sid in ids:
                written += _export_one(store, sid, args, out)
                progress.advance(detail=f"session {sid}")
    for path in written:
        console.print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from biofeedback.analysis.report import REPORT_STEPS, write_report

    with _open_store(args, readonly=True) as store:
        with _step_progress(f"report of session {args.session}", REPORT_STEPS) as on_step:
            out = write_report(store, args.session, Path(args.out), overwrite=args.force, correction=args.correction,
                               include_text=args.include_text, beats=args.beats, on_step=on_step)  # fmt: skip
        _say_beats(store, args.session, args.beats)
    console.print(f"wrote {out}")
    return 0


def _edit_counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "no edits"


def _phase_edit_lines(analysis) -> list[str]:
    return [f"{p.name}: {_edit_counts_text(r['edits'])}, grade {r['grade']} ({r['grade_reason']})"
            for p, r in zip(analysis.phases, analysis.review, strict=True)]  # fmt: skip


def _print_beat_source(note: str, lines: Sequence[str]) -> None:
    console.print(Text.assemble(("beats:", "dim"), f" {note}"), highlight=False)
    for line in lines:
        console.print(Text.assemble("  ", ("edits", "dim"), f" {line}"), highlight=False)


def _say_beats(store, sid: int, source: str | None):
    """Select the beats of `source` for session `sid` and say which, with the review's edits per phase."""
    from biofeedback.analysis.analyze import phase_windows
    from biofeedback.analysis.beat_source import select_beats

    selection = select_beats(store, sid, source)
    lines = []
    if selection.source == "reviewed":
        for w in phase_windows(store, sid):
            counts: dict[str, int] = {}
            for e in selection.audit:
                end = e.t_end if e.action == "bad-segment" else e.t
                if e.in_force and e.t < w.end_s and end >= w.start_s:
                    counts[e.action] = counts.get(e.action, 0) + 1
            lines.append(f"{w.name}: {_edit_counts_text(counts)}")
    console.print(Text.assemble((f"session {sid} beats:", "dim"), f" {selection.describe()}"), highlight=False)
    for line in lines:
        console.print(Text.assemble("  ", ("edits", "dim"), f" {line}"), highlight=False)
    return selection


def _reviewer(args: argparse.Namespace) -> str:
    code = args.reviewer or os.environ.get("CMT_REVIEWER")
    if not code:
        raise UserError("say who reviews: --reviewer CODE (initials such as AB, or a pseudonymous code; or set "
                        "$CMT_REVIEWER)")  # fmt: skip
    from recordings.review import check_reviewer

    return check_reviewer(code)


REVIEW_EDIT_OPTIONS = ("mark", "unmark", "delete", "add", "accept", "reject")


def cmd_review(args: argparse.Namespace) -> int:
    from biofeedback.analysis.beat_source import record_edit
    from recordings.review import undo_last

    edits = [(name, getattr(args, name)) for name in REVIEW_EDIT_OPTIONS if getattr(args, name) is not None]
    edits += [("bad-segment", args.mark_bad)] if args.mark_bad is not None else []
    if sum([bool(edits), args.undo, args.list]) > 1 or len(edits) > 1:
        raise UserError("give one of: an edit (--mark, --unmark, --delete, --add, --accept, --reject, --mark-bad), "
                        "--undo, --list; or none to open the review window")  # fmt: skip
    if args.list:
        return _review_list(args)
    if edits or args.undo:
        who = _reviewer(args)
        with _open_store(args) as store:
            store.session(args.session)
            if args.undo:
                done = undo_last(store, args.session, reviewer=who, reason=args.reason)
                console.print(f"undid {done.describe()} (the audit keeps both)", highlight=False)
                return 0
            action, value = edits[0]
            if action == "bad-segment":
                start, end = value
                edit = record_edit(store, args.session, action, reviewer=who, t=start, t_end=end, kind=args.kind,
                                   reason=args.reason)  # fmt: skip
            else:
                edit = record_edit(store, args.session, action, reviewer=who, t=value, reason=args.reason)
        console.print(f"stored {edit.describe()} by {edit.reviewer} (`review {args.session} --undo` takes it back)",
                      highlight=False)  # fmt: skip
        return 0
    from biofeedback.analysis.review_session import ReviewSession
    from biofeedback.display.review import run_review_window

    reviewer = args.reviewer or os.environ.get("CMT_REVIEWER") or ""
    with _open_store(args) as store:
        return run_review_window(ReviewSession(store, args.session), reviewer)


def _review_list(args: argparse.Namespace) -> int:
    from biofeedback.analysis.analyze import analyze_session
    from biofeedback.analysis.beat_source import select_beats

    with _open_store(args, readonly=True) as store:
        selection = select_beats(store, args.session, None)
        analysis = analyze_session(store, args.session, beats=selection.source)
        audit = selection.audit
        cols = ["id", "when (UTC)", "reviewer", "edit", "reason", "status"]
        rows = [[str(e.id), e.utc, e.reviewer, e.describe().split(" ", 1)[1], e.reason,
                 "undo" if e.action == "undo" else ("in force" if e.in_force else f"undone by #{e.undone_by}")]
                for e in audit]  # fmt: skip
        title = f"Review of session {args.session}: every edit, undone ones included"
        _print_tabular(Tabular(title, cols, {"id"}, rows, records=[e.to_dict() for e in audit]), args)
        if not (args.json or args.csv):
            tl = analysis.timeline
            review = selection.review
            accepted = review.accepted_t if review is not None else []
            shown = [[f"{t:.3f}", "accepted" if any(abs(a - t) < 0.001 for a in accepted) else "undecided"]
                     for t in tl.event_t]  # fmt: skip
            shown += [[f"{t:.3f}", "rejected"] for t in tl.rejected_t]
            shown.sort(key=lambda r: float(r[0]))
            _print_tabular(Tabular("Automatic corrections", ["first replaced beat s", "status"],
                                   {"first replaced beat s"}, shown))  # fmt: skip
            _print_beat_source(analysis.beats_note, _phase_edit_lines(analysis))
    return 0


def _export_one(store, sid: int, args: argparse.Namespace, out: Path) -> list[Path]:
    from biofeedback.study.session_export import export_session

    if args.format in ("csv", "edf", "kubios"):
        _say_beats(store, sid, args.beats)
    return export_session(store, sid, args.format, out, correction=args.correction, include_text=args.include_text,
                          overwrite=args.force, own_folder=args.session is None, beats=args.beats)  # fmt: skip


def cmd_import_capture(args: argparse.Namespace) -> int:
    from recordings.capture import import_capture

    with _open_store(args) as store, _progress(f"import of {args.file}") as progress:
        sid, counts = import_capture(store, Path(args.file), args.participant, device=args.device,
                                     on_packet=lambda done, total: progress.update(done, total, "packets"))
    console.print(
        f"imported session {sid}: {counts.packets} packets, {counts.beats} beats, {counts.malformed} malformed "
        f"(kept raw), {counts.ecg_samples} ECG samples"
    )
    return 0


def _print_import(store, sid: int, what: str) -> None:
    info = store.session(sid)
    counts = store.counts(sid)
    n_ecg = sum(len(c[3]) for c in store.ecg_chunks(sid)) if counts["ecg_chunks"] else 0
    console.print(f"imported session {sid} ({info.settings.get('format', info.source)}): {counts['beats']} beats, "
                  f"{n_ecg} ECG samples, {counts['markers']} markers from {what} into {store.path}")  # fmt: skip
    for note in info.settings.get("import_notes", []):
        console.print(Text.assemble("  ", ("note:", "dim"), f" {note}"), highlight=False)


def cmd_import_rr(args: argparse.Namespace) -> int:
    from recordings.import_events import import_rr_with_events
    from recordings.import_rr import import_rr
    from recordings.import_session import IMPORT_STEPS

    with _open_store(args) as store:
        with _step_progress(f"import of {args.file}", IMPORT_STEPS) as on_step:
            if args.events:
                sid = import_rr_with_events(store, Path(args.file), args.participant, Path(args.events), args.column,
                                            unit=args.unit, streams=args.stream or (), on_step=on_step)  # fmt: skip
            else:
                sid = import_rr(store, Path(args.file), args.participant, column=args.column, unit=args.unit,
                                streams=args.stream or (), on_step=on_step)  # fmt: skip
        _print_import(store, sid, args.file)
    return 0


def cmd_import_polar(args: argparse.Namespace) -> int:
    from recordings.import_polar import import_polar
    from recordings.import_session import IMPORT_STEPS

    with _open_store(args) as store:
        with _step_progress(f"import of {', '.join(args.files)}", IMPORT_STEPS) as on_step:
            sid = import_polar(store, [Path(f) for f in args.files], args.participant, on_step=on_step)
        _print_import(store, sid, f"{len(args.files)} Polar Sensor Logger file(s)")
    return 0


def cmd_protocols_list(args: argparse.Namespace) -> int:
    from protocols.library import builtin_protocols, lab_protocols

    lab = lab_protocols(_lab_protocols(args))
    rows = [[name, f"{proto.total_duration_s / 60:.1f}", str(len(proto.phases)), proto.description, where]
            for where, found in (("built-in", builtin_protocols()), (str(lab.folder), lab.protocols))
            for name, proto in found.items()]  # fmt: skip
    _print_tabular(Tabular("Protocols (built-in and the lab's own)", ["name", "minutes", "phases", "description",
                                                                      "from"], {"minutes", "phases"}, rows), args)
    for problem in lab.problems:
        err_console.print(f"not a valid protocol: {problem}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_protocols_show(args: argparse.Namespace) -> int:
    from protocols.library import get_protocol

    proto = get_protocol(args.name, lab_dir=_lab_protocols(args))
    plain = {"markup": False, "highlight": False}  # names and prompts are printed as written, brackets included
    console.print(Text.assemble((proto.name, "bold"), f" (version {proto.version}): {proto.description}"))
    for i, ph in enumerate(proto.phases):
        pacer = f", pacer {ph.pacer.rate_bpm:g}/min" if ph.pacer else ""
        console.print(f"{i + 1}. {ph.name} [{ph.kind.value}] {ph.duration_s / 60:g} min, feedback {ph.feedback.value}"
                      f"{pacer}", **plain)  # fmt: skip
        if ph.prompt:
            console.print(Text.assemble("   ", (ph.prompt, "italic")))
        for p in ph.prompts:
            console.print(Text.assemble(f"   at {p.at_s:g} s: ", (p.text, "italic")))
    return 0


def cmd_protocols_preview(args: argparse.Namespace) -> int:
    from biofeedback.display.preview import render_preview
    from protocols.library import get_protocol

    protocol = get_protocol(args.name, lab_dir=_lab_protocols(args))
    written = render_preview(protocol, Path(args.out), size=(args.width, args.height), overwrite=args.force)
    for path, phase in zip(written, protocol.phases, strict=True):
        console.print(Text.assemble(f"{path}  ", (f"{phase.name} at {phase.duration_s / 2:g} s", "dim")))
    console.print(f"{len(written)} frames of {protocol.name!r} (soothing visual shown neutral) in {args.out}")
    return 0


def cmd_protocols_validate(args: argparse.Namespace) -> int:
    from protocols.loader import load_protocol

    proto = load_protocol(Path(args.file))
    console.print(f"{args.file}: valid protocol {proto.name!r}, {len(proto.phases)} phases, "
                  f"{proto.total_duration_s / 60:g} min")  # fmt: skip
    return 0


def cmd_devices_scan(args: argparse.Namespace) -> int:
    import asyncio

    from devices.ble import BluetoothUnavailableError, scan

    try:
        straps = asyncio.run(scan(timeout_s=args.timeout))
    except BluetoothUnavailableError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in straps], indent=2))
        return 0
    if not straps:
        console.print(f"No heart-rate straps found in {args.timeout:g} s. Is the strap worn (it sleeps when dry)?")
        return 0
    rows = [[s.name, s.address, str(s.rssi), "yes" if s.has_pmd else "no"] for s in straps]
    _print_tabular(Tabular("Heart-rate straps nearby", ["name", "address", "signal dBm", "Polar ECG (PMD)"],
                           {"address", "signal dBm"}, rows), args)  # fmt: skip
    return 0


def cmd_participants_add(args: argparse.Namespace) -> int:
    from biofeedback.study.participants import add_participant

    with _open_store(args) as store:
        pid, new = add_participant(store, args.code)
    console.print(f"added participant {pid} to {store.path}" if new else f"{pid} is already in {store.path}",
                  highlight=False)  # fmt: skip
    return 0


def cmd_participants_list(args: argparse.Namespace) -> int:
    from biofeedback.study.participants import participant_records

    with _open_store(args) as store:
        records = participant_records(store)
    cols = ["participant", "sessions", "weeks", "diaries", "answer sets"]
    rows = [[r.participant_id, str(len(r.sessions)),
             ", ".join(str(w) for w in sorted({s.week for s in r.sessions if s.week is not None})) or "–",
             str(len(r.diaries)), str(len(r.answers))] for r in records]  # fmt: skip
    _print_tabular(Tabular(f"Participants in {store.path}", cols, {"sessions", "diaries", "answer sets"}, rows), args)
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """The lab console window (also what `cmt-biofeedback` without a command opens)."""
    from biofeedback.display.console import run_console

    return run_console(_store_path(args))


# -- instruments, answers and the study view -------------------------------------------------------------------


def _key_values(pairs: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{what} {pair!r}: expected ID=VALUE")
        out[key.strip()] = value
    return out


def _enter_answers(args: argparse.Namespace, instrument_name: str, time_point: str | None) -> int:
    from biofeedback.study.answer_entry import ask_answers, confirm, summary_table
    from protocols.instruments import get_instrument
    from recordings.answers import AnswerStore, PendingAnswers, parse_time_point, read_answer_file

    instrument = get_instrument(instrument_name)
    with _open_store(args) as store:
        answers = AnswerStore(store)
        if args.from_file:
            pending = read_answer_file(args.from_file, instrument, participant_id=args.participant,
                                       time_point=time_point, session_id=args.session)  # fmt: skip
            ids = answers.add_many(pending, instrument, by=args.by, source="file")
            console.print(f"saved {len(ids)} {instrument.name} answer set(s) from {args.from_file}")
            return 0
        if not args.participant or time_point is None:
            raise UserError("give --participant and the time point (or --from FILE)")
        label = parse_time_point(time_point)[0]
        store.check_participant(args.participant)  # refused before any question is asked
        if answers.find_one(args.participant, instrument.name, label) is not None:
            raise UserError(f"{args.participant} already has {instrument.name} answers for {label}; "
                            "use `answers edit` to change them")  # fmt: skip
        entry = Console()  # the entry prompts of answer_entry style themselves with rich markup
        values, texts = ask_answers(instrument, entry)
        entry.print(summary_table(instrument, values, texts))
        if not confirm(entry):
            console.print("Nothing was saved.")
            return 1
        pending = [PendingAnswers(args.participant, time_point, values, texts, args.session)]
        (set_id,) = answers.add_many(pending, instrument, by=args.by, source="terminal")
        console.print(f"Saved as answer set {set_id} ({args.participant}, {label}). Thank you.")
    return 0


def cmd_diary_add(args: argparse.Namespace) -> int:
    return _enter_answers(args, args.instrument, None if args.week is None else f"week {args.week}")


def cmd_instrument_answer(args: argparse.Namespace) -> int:
    return _enter_answers(args, args.name, args.time)


def cmd_instrument_list(args: argparse.Namespace) -> int:
    from protocols.instruments import builtin_instruments

    rows = [[name, inst.kind.value, str(len(inst.items)), ", ".join(s.name for s in inst.subscales), inst.title]
            for name, inst in builtin_instruments().items()]  # fmt: skip
    _print_tabular(Tabular("Built-in instruments", ["name", "kind", "items", "subscales", "title"], {"items"}, rows),
                   args)  # fmt: skip
    return 0


def cmd_instrument_show(args: argparse.Namespace) -> int:
    from protocols.instruments import get_instrument

    inst = get_instrument(args.name)
    console.print(Text.assemble((inst.name, "bold"), f" ({inst.kind.value}, version {inst.version}): {inst.title}"))
    if inst.description:
        console.print(inst.description, highlight=False, markup=False)
    console.print(f"scale {inst.scale.describe()}", highlight=False, markup=False)
    for n, item in enumerate(inst.items, start=1):
        extra = (" [reverse]" if item.reverse else "") + (f" scale {item.scale.describe()}" if item.scale != inst.scale
                                                          else "")  # fmt: skip
        console.print(f"{n}. [{item.id}] {item.text} → {', '.join(item.subscales) or '–'}{extra}", highlight=False,
                      markup=False)  # fmt: skip
    for sub in inst.subscales:
        console.print(f"subscale {sub.name}: {sub.method.value} of {', '.join(sub.items)}; {sub.missing.describe()}",
                      highlight=False, markup=False)  # fmt: skip
    for field in inst.texts:
        console.print(f"free text [{field.id}]: {field.prompt}", highlight=False, markup=False)
    return 0


def cmd_instrument_validate(args: argparse.Namespace) -> int:
    from protocols.instruments import load_instrument

    inst = load_instrument(Path(args.file))
    console.print(f"{args.file}: valid instrument {inst.name!r}, {len(inst.items)} items, subscales "
                  f"{', '.join(s.name for s in inst.subscales) or 'none'}")  # fmt: skip
    return 0


def cmd_answers_list(args: argparse.Namespace) -> int:
    from recordings.answers import AnswerStore

    with _open_store(args) as store:
        answers = AnswerStore(store)
        sets = answers.find(args.participant, args.instrument, include_text=args.include_text)
        excluded = store.exclusions("answer_set")
        cols = ["id", "participant", "instrument", "time point", "session", "scores", "entered by", "source",
                "excluded"]  # fmt: skip
        rows = []
        for a in sets:
            scores = ", ".join(f"{k} {'–' if v.value is None else format(v.value, 'g')}{'*' if v.prorated else ''}"
                               for k, v in answers.scores(a).items())  # fmt: skip
            rows.append([str(a.id), a.participant_id, a.instrument, a.time_point, str(a.session_id or "–"), scores,
                         a.entered_by, a.source, excluded.get(a.id, "")])  # fmt: skip
        records = [{**a.to_dict(include_text=args.include_text), "excluded": excluded.get(a.id)} for a in sets]
        _print_tabular(Tabular(f"Answer sets in {store.path}", cols, {"id", "session"}, rows, records=records), args)
        if not (args.json or args.csv):
            console.print("* prorated (an item was skipped)", style="dim", markup=False)
    return 0


def cmd_answers_exclude(args: argparse.Namespace) -> int:
    from recordings.answers import AnswerStore

    with _open_store(args) as store:
        aset = AnswerStore(store).get(args.id)
        store.exclude("answer_set", aset.id, args.reason, by=_who(args), participant_id=aset.participant_id)
    console.print(f"answer set {aset.id} ({aset.participant_id}, {aset.instrument}, {aset.time_point}) is excluded "
                  f"from study analyses (`answers restore {aset.id}` undoes it)", markup=False)  # fmt: skip
    return 0


def cmd_answers_restore(args: argparse.Namespace) -> int:
    from recordings.answers import AnswerStore

    with _open_store(args) as store:
        aset = AnswerStore(store).get(args.id)
        if not store.restore("answer_set", aset.id, by=_who(args), participant_id=aset.participant_id):
            raise UserError(f"answer set {aset.id} is not excluded")
    console.print(f"answer set {aset.id} ({aset.participant_id}) is included again", markup=False)
    return 0


def cmd_answers_delete(args: argparse.Namespace) -> int:
    from recordings.answers import AnswerStore

    with _open_store(args) as store:
        answers = AnswerStore(store)
        aset = answers.get(args.id)
        _confirm(f"Delete answer set {aset.id} ({aset.participant_id}, {aset.instrument}, {aset.time_point}) and its "
                 "edit history?", args)  # fmt: skip
        answers.delete(aset.id, by=_who(args), reason=args.reason)
    console.print(f"deleted answer set {aset.id}; an audit row keeps what it was (not the answers)", markup=False)
    return 0


def cmd_answers_show(args: argparse.Namespace) -> int:
    from recordings.answers import AnswerStore

    with _open_store(args) as store:
        answers = AnswerStore(store)
        aset = answers.get(args.id, include_text=args.include_text)
        history = answers.history(args.id, include_text=args.include_text)
        scores = {k: v.to_dict() for k, v in answers.scores(aset).items()}
        if args.json:
            out = {**aset.to_dict(include_text=args.include_text), "scores": scores,
                   "edits": [e.to_dict() for e in history]}  # fmt: skip
            print(json.dumps(out, indent=2))
            return 0
        console.print(aset.to_dict(include_text=args.include_text))
        console.print(scores)
        for e in history:
            console.print(f"{e.edited_utc} {e.edited_by}: {e.field} {e.old!r} → {e.new!r} {e.reason}", highlight=False)
    return 0


def cmd_answers_edit(args: argparse.Namespace) -> int:
    from recordings.answers import AnswerStore, parse_cell

    values = {}
    for key, raw in _key_values(args.set, "--set").items():
        value = parse_cell(raw)
        if isinstance(value, str):
            raise UserError(f"--set {key}={raw}: expected a number, or nothing to mark the item skipped")
        values[key] = value
    texts = {k: (v or None) for k, v in _key_values(args.text, "--text").items()}
    with _open_store(args) as store:
        edits = AnswerStore(store).edit(args.id, values=values, texts=texts, time_point=args.time,
                                        session_id=args.session, by=args.by, reason=args.reason)  # fmt: skip
    if not edits:
        console.print("nothing changed")
    for e in edits:
        console.print(f"answer set {args.id}: {e.field} {e.old!r} → {e.new!r} (by {e.edited_by})", highlight=False)
    return 0


def _study_selection(args: argparse.Namespace):
    """The `StudySelection` of `--source`, `--include-simulated`, `--protocol`, `--state`, `--include-excluded`."""
    from biofeedback.study.prepost import FINISHED_STATES, StudySelection

    sources = list(dict.fromkeys(getattr(args, "source", None) or ["live"]))
    if args.include_simulated and "simulated" not in sources:
        sources.append("simulated")
    states = tuple(getattr(args, "state", None) or FINISHED_STATES)
    protocols = tuple(getattr(args, "protocol", None) or ())
    return StudySelection(sources=tuple(sources), protocols=protocols, states=states,
                          include_excluded=getattr(args, "include_excluded", False))  # fmt: skip


def cmd_study_analyze(args: argparse.Namespace) -> int:
    from biofeedback.study.prepost import analyze_study, markdown, table_csv, write_outputs

    with _open_store(args) as store, _progress("study: analysing sessions") as progress:
        result = analyze_study(store, first=args.first, last=args.last, include_text=args.include_text,
                               selection=_study_selection(args),
                               on_session=lambda done, total: progress.update(done, total))  # fmt: skip
    if args.out:
        for path in write_outputs(result, Path(args.out), overwrite=args.force):
            err_console.print(f"wrote {path}", markup=False, highlight=False)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif args.csv:
        sys.stdout.write(table_csv(result))
    elif not args.out:
        console.print(markdown(result), highlight=False, markup=False)
    if args.json or args.csv or args.out:  # the selection still goes to the terminal, beside the data
        for line in result.selection.lines() if result.selection else []:
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_study_simulate(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from biofeedback.study.simulate import SHORT_PROTOCOL, simulate_study_into
    from protocols.library import get_protocol
    from recordings.store import default_store_path

    protocol = SHORT_PROTOCOL if args.protocol is None else get_protocol(args.protocol)
    if not (1 <= args.participants <= 99 and 2 <= args.weeks <= 104 and 0 <= args.miss_rate < 1):
        raise UserError("--participants must be 1-99, --weeks 2-104 and --miss-rate in [0, 1)")
    if args.store:
        path = Path(args.store)
    else:  # a store of its own, never the lab's default store
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        path = default_store_path().parent / "simulations" / f"study-{stamp}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = simulate_study_into(path, into_existing=args.into_store, participants=args.participants,
                                 weeks=args.weeks, speed=args.speed, seed=args.seed, miss_rate=args.miss_rate,
                                 protocol=protocol, progress=lambda msg: console.print(msg, highlight=False),
                                 )  # fmt: skip
    n = sum(len(v) for v in result.sessions.values())
    console.print(f"simulated {len(result.participants)} participants over {result.weeks} weeks into {path}: {n} "
                  f"sessions, {result.diaries} diaries, {len(result.missed_sessions)} missed sessions, "
                  f"{len(result.missed_diaries)} missed diaries (source `simulated`: `study analyze --store {path} "
                  "--include-simulated` analyses them)", markup=False, highlight=False)  # fmt: skip
    return 0


# -- bundles, backups and merges -------------------------------------------------------------------------------


def cmd_import_bundle(args: argparse.Namespace) -> int:
    from recordings.bundle import import_bundle

    with _open_store(args) as store, _progress(f"import of {args.file}", 1) as progress:
        sid = import_bundle(store, Path(args.file), by=_who(args))
        progress.update(1)
        info = store.session(sid)
        counts = store.counts(sid)
    console.print(f"imported session {sid} ({info.participant_id}, {info.protocol_name}, {info.source}, "
                  f"{info.state}, started {info.started_utc}): {counts['packets']} packets, {counts['beats']} "
                  f"beats, {counts['markers']} markers from {args.file}", markup=False, highlight=False,
                  soft_wrap=True)  # fmt: skip
    return 0


def _existing_store_path(args: argparse.Namespace) -> Path:
    from recordings.store import default_store_path

    path = Path(args.store) if getattr(args, "store", None) else default_store_path()
    if not path.is_file():
        raise UserError(f"no store at {path}")
    return path


def cmd_store_backup(args: argparse.Namespace) -> int:
    from recordings.backup import backup_store, record_backup
    from recordings.store import Store

    path = _existing_store_path(args)
    with _progress(f"backup to {args.path}") as progress:
        result = backup_store(path, Path(args.path), on_step=lambda done, total: progress.update(done, total))
    console.print(f"backed up {path} to {result.path}: {result.sessions} sessions, {result.bytes} bytes "
                  f"({result.pages} pages in {result.steps} steps), checked", markup=False,
                  highlight=False, soft_wrap=True)  # fmt: skip
    with Store(path) as store:
        record_backup(store, result, _who(args))  # a read-only store: the copy is made, then this one line says so
    return 0


def cmd_store_info(args: argparse.Namespace) -> int:
    from recordings.backup import store_info
    from recordings.store import Store

    with Store(_existing_store_path(args), readonly=True) as store:
        info = store_info(store)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    last = info["last_backup"]
    rows = [
        ["location", info["path"]],
        ["size", f"{info['bytes'] / 1e6:.1f} MB ({info['bytes']} bytes)"],
        ["schema version", f"{info['schema_version']} (this program: {info['program_schema_version']})"],
        ["sessions", f"{info['sessions']} ({info['excluded_sessions']} excluded)"],
        ["  by state", ", ".join(f"{k} {v}" for k, v in info["sessions_by_state"].items()) or "–"],
        ["  by source", ", ".join(f"{k} {v}" for k, v in info["sessions_by_source"].items()) or "–"],
        ["participants", str(info["participants"])],
        ["last backup", "never" if last is None else f"{last['utc']} to {last['path']} by {last['by']} "
                                                      f"({last['sessions']} sessions)"],
    ]  # fmt: skip
    for key, value in rows:
        console.print(f"{key:<16}{value}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_store_merge(args: argparse.Namespace) -> int:
    from recordings.bundle import merge_store

    other = Path(args.other)
    if not other.is_file():
        raise UserError(f"no store at {other}")
    with _open_store(args) as store, _progress(f"merge of {other}") as progress:
        result = merge_store(store, other, by=_who(args),
                             progress=lambda done, total, what: progress.update(done, total, what))  # fmt: skip
    if args.json:
        print(json.dumps({"brought": [{"other_id": o, "id": n, "participant": p} for o, n, p in result.brought],
                          "skipped": [{"other_id": o, "reason": r} for o, r in result.skipped],
                          "participants_added": result.participants_added, "answer_sets": result.answer_sets,
                          "private_texts": result.private_texts, "notes": result.notes}, indent=2))  # fmt: skip
        return 0
    for o, n, p in result.brought:
        console.print(f"brought session {o} of {other} in as session {n} ({p})", markup=False, highlight=False,
                      soft_wrap=True)
    for o, reason in result.skipped:
        console.print(f"skipped session {o}: {reason}", markup=False, highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"skipped {note}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"merged {other}: {len(result.brought)} sessions brought, {len(result.skipped)} skipped, "
                  f"{len(result.participants_added)} new participants, {result.answer_sets} answer sets, "
                  f"{result.private_texts} private texts", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    return 0


# -- parser ----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        _print_error(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def whole_number(lo: int, hi: int, what: str = "a whole number") -> Callable[[str], int]:
    """An argparse type: a whole number from `lo` to `hi`, refused in one line otherwise."""

    def parse(text: str) -> int:
        value = int(text) if re.fullmatch(r"[+-]?\d{1,30}", text.strip()) else None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} from {lo} to {hi}, got {text[:30]!r}")
        return value

    parse.whole_number_range = (lo, hi)  # type: ignore[attr-defined]
    return parse


record_id = whole_number(1, 2**63 - 1, "an id")
"""A session or answer-set id: a positive whole number a SQLite row id can hold."""
study_week = whole_number(1, 1000, "a study week")
pixels = whole_number(1, 16384, "a size in pixels")


def _add_store(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    p.add_argument("--store", metavar="PATH", default=default,
                   help="SQLite store (default: $CMT_STORE or the user's data directory); accepted before or "
                        "after the command")  # fmt: skip


def _add_formats(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="print JSON instead of a table")
    group.add_argument("--csv", action="store_true", help="print CSV instead of a table")


def _add_selection(p: argparse.ArgumentParser) -> None:
    from recordings.store import SOURCE_CHOICES

    p.add_argument("--source", action="append", choices=SOURCE_CHOICES,
                   help="take sessions of this source (repeatable; default: live only; imported = every import)")
    p.add_argument("--include-simulated", action="store_true", help="also take simulated sessions and answers")
    p.add_argument("--include-excluded", action="store_true", help="also take excluded sessions and answer sets")


def _add_beats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beats", choices=["reviewed", "auto", "strap", "ecg"], default=None,
                   help="which beats: reviewed (the researcher's review), auto (automatic correction), strap (as "
                        "recorded, no correction), ecg (R-peaks of the ECG); default reviewed when the session has "
                        "a review, else auto")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="app.py", description="Biofeedback session recorder for compassion-focused research.")
    _add_store(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent, name: str, fn: Callable, help_: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        _add_store(p)
        return p

    session = sub.add_parser("session", help="record sessions").add_subparsers(dest="sub", required=True)
    p = command(session, "run", cmd_session_run, "run a protocol and record one or more straps")
    p.add_argument("--participant", help="pseudonymous participant ID (for a single strap)")
    p.add_argument("--protocol", default="cmt-soothing", help="built-in protocol name or a TOML file")
    p.add_argument("--device", action="append", metavar="DEV[=ID]",
                   help="'sim', a Bluetooth address or name prefix, optionally bound to a participant "
                        "(repeat for a group: --device sim=P01 --device sim=P02)")  # fmt: skip
    p.add_argument("--speed", type=_positive_float, default=1.0,
                   help="simulated time per real second (simulator only)")  # fmt: skip
    p.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=0, help="seed of the simulated participant(s)")
    p.add_argument("--ecg", action="store_true", help="also record raw ECG (Polar H10 PMD, or simulated)")
    p.add_argument("--acc", action="store_true",
                   help="also record the chest strap's accelerometer (Polar H10 PMD, or simulated): phase "
                        "breathing rates then come from chest movement")  # fmt: skip
    p.add_argument("--pacer-rate", type=_positive_float, help="breathing pacer rate for paced phases (breaths/min)")
    p.add_argument("--sim-faults", action="append", metavar="[ID:]KIND=N,...",
                   help="faults of simulated straps, events per hour: disconnect=N, contact=N (contact loss), "
                        "malformed=N (bursts of malformed packets); BLE timing: latency=MAX_S (default 0.3), "
                        "bunch=SHARE held back (default 0.05), drift=PPM of the strap clock (default: drawn "
                        "within ±50); battery=PERCENT reported (default 90) or none; prefix ID: for one participant "
                        "only")  # fmt: skip
    p.add_argument("--headless", action="store_true", help="no windows: a live view in the terminal")
    p.add_argument("--start-when-ready", action="store_true",
                   help="start the protocol only once every strap is connected with skin contact and beats "
                        "arriving for 10 s; otherwise stop with the reason, recording nothing")  # fmt: skip
    p.add_argument("--ready-timeout", type=float, default=120.0, metavar="S",
                   help="with --start-when-ready: give up after S seconds (session seconds: --speed applies)")
    p.add_argument("--participant-screen", action="append", metavar="ID=N",
                   help="put participant ID's window on screen N (numbered from 1 as Qt lists them; repeatable); "
                        "by default each participant gets a screen of their own while there are enough")  # fmt: skip
    p.add_argument("--week", type=study_week,
                   help="study week of this session (default: the participant's next week); links it to that "
                        "week's diary")  # fmt: skip
    p.add_argument("--lsl", action="store_true",
                   help="stream ECG, RR, heart rate and markers on Lab Streaming Layer (LabRecorder)")  # fmt: skip
    p.add_argument("--lsl-wait", type=whole_number(0, 100), default=0, metavar="N",
                   help="with --lsl: start the session clock only once N of the streams have a consumer "
                        "(e.g. LabRecorder recording them), so session_start and the first phase are not "
                        "missed")  # fmt: skip
    p.add_argument("--lsl-wait-timeout", type=float, default=300.0, metavar="S",
                   help="with --lsl-wait: give up after S seconds (default 300)")  # fmt: skip
    p.add_argument("--lsl-in", action="append", metavar="NAME",
                   help="record the LSL stream of this name (markers or numeric: PsychoPy, skin conductance, "
                        "respiration) on the session clock; repeat for several")  # fmt: skip
    p.add_argument("--include-text", action="store_true",
                   help="with --lsl: stream manual markers' labels (free text, sensitive); otherwise "
                        "just 'manual'")  # fmt: skip
    p.add_argument("--web-display", action="store_true",
                   help="serve each participant's display as a web page of its own (tablets, phones): the URLs "
                        "are printed and shown as QR codes on the monitor")  # fmt: skip
    p.add_argument("--web-host", metavar="ADDRESS",
                   help="with --web-display: the address to serve on (default 127.0.0.1, this computer only; "
                        "0.0.0.0 for the lab's network)")  # fmt: skip
    p.add_argument("--web-port", type=int, metavar="N", help="with --web-display: the port (default 8765; 0: any)")

    sessions = sub.add_parser("sessions", help="list, exclude, restore and delete recorded sessions").add_subparsers(
        dest="sub", required=True)  # fmt: skip
    p = command(sessions, "list", cmd_sessions_list, "list sessions in the store")
    _add_formats(p)
    p.add_argument("--participant")
    p.add_argument("--source", help="only this source (live, simulated, replay-copy, imported, imported-FORMAT)")
    p.add_argument("--state", help="only this state (completed, stopped, interrupted, imported, running)")
    p.add_argument("--week", type=study_week, help="only this study week")
    p.add_argument("--protocol", help="only sessions of this protocol")
    p = command(sessions, "exclude", cmd_sessions_exclude,
                "leave a session out of study analyses and exports (kept; `sessions restore` undoes it)")  # fmt: skip
    p.add_argument("session", type=record_id)
    p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(sessions, "restore", cmd_sessions_restore, "include an excluded session again")
    p.add_argument("session", type=record_id)
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(sessions, "redecode", cmd_sessions_redecode,
                "rebuild a session's decoded layer (beats, heart rate, ECG) from its raw packets; the raw layer is "
                "never changed")  # fmt: skip
    p.add_argument("session", type=record_id)
    p = command(sessions, "set-week", cmd_sessions_set_week,
                "record a session's study week (imports have none; or correct one); audited")  # fmt: skip
    p.add_argument("session", type=record_id)
    p.add_argument("week", type=study_week)
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(sessions, "delete", cmd_sessions_delete,
                "delete a session and its data for good; an audit row keeps what it was, when and by whom")  # fmt: skip
    p.add_argument("session", type=record_id)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(sessions, "audit", cmd_sessions_audit,
                "the audit trail: exclusions, restores, week changes and deletions")  # fmt: skip
    _add_formats(p)

    command(sub, "console", cmd_console, "the lab console: participants, protocols, straps, start, sessions")

    parts = sub.add_parser("participants", help="participant codes").add_subparsers(dest="sub", required=True)
    p = command(parts, "add", cmd_participants_add, "add a pseudonymous participant code (the code rule is checked)")
    p.add_argument("code")
    _add_formats(command(parts, "list", cmd_participants_list,
                         "participants with their sessions, weeks, diaries and answer sets"))  # fmt: skip

    p = command(sub, "replay", cmd_replay, "play a stored session's raw packets through the live displays")
    p.add_argument("session", type=record_id)
    p.add_argument("--speed", type=_positive_float, default=1.0, help="playback speed (2 = twice as fast)")
    p.add_argument("--headless", action="store_true", help="no windows: a live view in the terminal")

    p = command(sub, "analyze", cmd_analyze, "per-phase HRV of a session")
    p.add_argument("session", type=record_id)
    _add_formats(p)
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    _add_beats(p)
    p.add_argument("--save-resonance", action="store_true",
                   help="resonance assessments: store the named rate for the participant's later sessions")  # fmt: skip
    p.add_argument("--group", action="store_true",
                   help="group sessions: per-phase heart-rate synchrony of everyone recorded with SESSION")  # fmt: skip

    resonance = sub.add_parser("resonance", help="resonance breathing rate").add_subparsers(dest="sub", required=True)
    p = command(resonance, "save", cmd_resonance_save,
                "name the resonance rate of a resonance-assessment session and store it for the participant",
                )  # fmt: skip
    p.add_argument("session", type=record_id)
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    _add_formats(p)

    p = command(sub, "export", cmd_export, "export sessions to files (BIDS, EDF+, Kubios RR text, CSV, raw capture)")
    p.add_argument("session", type=record_id, nargs="?", help="session id (or use --participant / --all)")
    p.add_argument("--participant", metavar="ID", help="every session of this participant")
    p.add_argument("--all", action="store_true",
                   help="every session in the store (live, not excluded, unless --source / --include-...)")
    _add_selection(p)
    p.add_argument("--format", required=True,
                   choices=["bids", "edf", "kubios", "csv", "capture", "table", "bundle"],
                   help="table: one long CSV (session × phase × index) of all named sessions; bundle: one file per "
                        "session carrying everything recorded in it (`import bundle` reads it back)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (for bids: the dataset root)")
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    _add_beats(p)
    p.add_argument("--include-text", action="store_true",
                   help="also export free-text notes and typed marker labels (sensitive)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.add_argument("--dataset-info", metavar="FILE.toml",
                   help="bids: the lab's dataset.toml (Name, Authors, License, Institution); "
                   "default: dataset.toml beside the store file, when there")  # fmt: skip

    p = command(sub, "report", cmd_report, "write a session report: one self-contained HTML file")
    p.add_argument("session", type=record_id)
    p.add_argument("--out", required=True, metavar="FILE.html")
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    _add_beats(p)
    p.add_argument("--include-text", action="store_true",
                   help="also include free-text notes and typed marker labels (sensitive)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing report")

    p = command(sub, "review", cmd_review,
                "review a session's beats: a window (RR tachogram, ECG, automatic corrections), or one edit from "
                "the command line; every edit is stored with time, reviewer and reason, raw and decoded beats "
                "never change")  # fmt: skip
    p.add_argument("session", type=int)
    p.add_argument("--reviewer", metavar="CODE", help="who reviews: initials (AB) or a pseudonymous code "
                   "(default $CMT_REVIEWER)")  # fmt: skip
    p.add_argument("--reason", default="", help="why (kept with the edit)")
    p.add_argument("--list", action="store_true", help="list every edit (undone ones too) and the automatic "
                   "corrections with their status")  # fmt: skip
    _add_formats(p)
    for name, what in (("mark", "mark the beat at T s as an artifact"), ("unmark", "take back the mark at T s"),
                       ("delete", "delete the beat at T s"), ("add", "add a beat at T s"),
                       ("accept", "accept the automatic correction at T s"),
                       ("reject", "reject the automatic correction at T s (keep the beats as recorded)")):
        p.add_argument(f"--{name}", type=float, metavar="T", help=what)
    p.add_argument("--mark-bad", type=float, nargs=2, metavar=("START", "END"),
                   help="mark START-END s as a bad segment, left out of analysis like a gap")  # fmt: skip
    p.add_argument("--kind", choices=["noise", "movement", "other"], default="noise",
                   help="kind of a bad segment (default noise)")  # fmt: skip
    p.add_argument("--undo", action="store_true", help="undo the latest edit in force (the audit keeps both)")

    devices = sub.add_parser("devices", help="Bluetooth straps").add_subparsers(dest="sub", required=True)
    p = command(devices, "scan", cmd_devices_scan, "list straps advertising the Heart Rate Service")
    p.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S", help="seconds to listen (default 5)")
    _add_formats(p)

    imp = sub.add_parser("import", help="import recordings").add_subparsers(dest="sub", required=True)
    p = command(imp, "capture", cmd_import_capture, "import a raw JSON Lines capture as a new session")
    p.add_argument("file")
    p.add_argument("--participant", required=True)
    p.add_argument("--device", help="the strap to import from a capture of several straps")
    p = command(imp, "rr", cmd_import_rr,
                "import RR intervals: plain text, Welltory, CSV (with a time column), Empatica IBI.csv, Polar .hrm, "
                "FIT hrv, XDF (recognised by content)")  # fmt: skip
    p.add_argument("file")
    p.add_argument("--participant", required=True)
    p.add_argument("--column", help="CSV column holding the RR intervals")
    p.add_argument("--unit", choices=["ms", "s"],
                   help="unit of the RR values in a text or CSV file (default ms; a file that names its unit keeps it)")
    p.add_argument("--stream", action="append", metavar="NAME",
                   help="XDF: the RR (and/or ECG) stream to import when the file has several (repeatable); a "
                        "stream of this recorder brings its strap's ECG along")  # fmt: skip
    p.add_argument("--events", metavar="EVENTS.tsv",
                   help="phases and markers: tab-separated onset, duration, trial_type[, phase_kind]; seconds since "
                        "the start of the RR series")  # fmt: skip
    p = command(imp, "polar", cmd_import_polar,
                "import Polar Sensor Logger files (ECG, RR, PPI, HR, ACC, MARKER) of one recording as one session")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--participant", required=True)

    protos = sub.add_parser("protocols", help="protocol library").add_subparsers(dest="sub", required=True)
    _add_formats(command(protos, "list", cmd_protocols_list,
                         "list built-in protocols and the lab's own ($CMT_PROTOCOL_DIR, else protocols/ beside the "
                         "store)"))  # fmt: skip
    p = command(protos, "show", cmd_protocols_show, "show a protocol's phases and prompts")
    p.add_argument("name")
    p = command(protos, "preview", cmd_protocols_preview,
                "render the participant display at the middle of every phase to PNG files")  # fmt: skip
    p.add_argument("name", help="built-in protocol name or a TOML file")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--width", type=pixels, default=1280)
    p.add_argument("--height", type=pixels, default=720)
    p.add_argument("--force", action="store_true", help="replace existing PNG files")
    p = command(protos, "validate", cmd_protocols_validate, "check a protocol TOML file")
    p.add_argument("file")

    diary = sub.add_parser("diary", help="weekly diary").add_subparsers(dest="sub", required=True)
    p = command(diary, "add", cmd_diary_add, "enter a weekly diary (interactively, or a CSV/JSON file)")
    p.add_argument("--participant", help="pseudonymous participant ID")
    p.add_argument("--week", type=study_week, help="week number (1, 2, ...)")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="CSV or JSON file of answers (batch entry)")
    p.add_argument("--session", type=record_id, help="the session these answers belong to")
    p.add_argument("--by", help="who enters the answers (default: the operating-system user)")
    p.add_argument("--instrument", default="cmt-weekly-diary", help="diary instrument name or TOML file")

    inst = sub.add_parser("instrument", help="questionnaires and diaries").add_subparsers(dest="sub", required=True)
    _add_formats(command(inst, "list", cmd_instrument_list, "list built-in instruments"))
    p = command(inst, "show", cmd_instrument_show, "show an instrument's items, scales and subscales")
    p.add_argument("name")
    p = command(inst, "validate", cmd_instrument_validate, "check an instrument TOML file")
    p.add_argument("file")
    p = command(inst, "answer", cmd_instrument_answer, "enter answers to an instrument")
    p.add_argument("name", help="built-in instrument name or TOML file")
    p.add_argument("--participant")
    p.add_argument("--time", help="time point: pre, post, follow-up, week 3, ...")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="CSV or JSON file of answers (batch entry)")
    p.add_argument("--session", type=record_id)
    p.add_argument("--by", help="who enters the answers (default: the operating-system user)")

    ans = sub.add_parser("answers", help="stored answers").add_subparsers(dest="sub", required=True)
    p = command(ans, "list", cmd_answers_list, "list answer sets with their scores")
    p.add_argument("--participant")
    p.add_argument("--instrument")
    _add_formats(p)
    p.add_argument("--include-text", action="store_true", help="include free-text answers (sensitive)")
    p = command(ans, "show", cmd_answers_show, "show one answer set and its edit history")
    p.add_argument("id", type=record_id)
    p.add_argument("--json", action="store_true")
    p.add_argument("--include-text", action="store_true", help="include free-text answers (sensitive)")
    p = command(ans, "edit", cmd_answers_edit, "change answers; every change is kept in an audit trail")
    p.add_argument("id", type=record_id, help="answer set id (see `answers list`)")
    p.add_argument("--set", action="append", metavar="ITEM=VALUE", help="new answer (empty value: skipped)")
    p.add_argument("--text", action="append", metavar="FIELD=TEXT", help="new free text (empty: removed)")
    p.add_argument("--time", help="move the answers to another time point")
    p.add_argument("--session", type=record_id, help="link the answers to a session")
    p.add_argument("--by", help="who makes the change (default: the operating-system user)")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p = command(ans, "exclude", cmd_answers_exclude, "leave an answer set out of study analyses (kept)")
    p.add_argument("id", type=record_id)
    p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(ans, "restore", cmd_answers_restore, "include an excluded answer set again")
    p.add_argument("id", type=record_id)
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(ans, "delete", cmd_answers_delete, "delete an answer set for good; an audit row keeps what it was")
    p.add_argument("id", type=record_id)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.add_argument("--by", help="who (default: the operating-system user)")

    study = sub.add_parser("study", help="the study across weeks").add_subparsers(dest="sub", required=True)
    p = command(study, "analyze", cmd_study_analyze, "first vs last time point of every measure (Wilcoxon, SPSS)")
    p.add_argument("--first", help="first time point (default: the earliest week; pre for questionnaires)")
    p.add_argument("--last", help="last time point (default: the latest week; post for questionnaires)")
    _add_formats(p)
    _add_selection(p)
    p.add_argument("--protocol", action="append", help="only sessions of this protocol (repeatable)")
    p.add_argument("--state", action="append", choices=["completed", "stopped", "interrupted", "imported"],
                   help="only sessions in this state (repeatable; default: every finished session)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="write table (Markdown, CSV), JSON, long data and plots here")
    p.add_argument("--include-text", action="store_true", help="also output free-text answers (sensitive)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p = command(study, "simulate", cmd_study_simulate, "record a simulated weekly group study")
    p.add_argument("--participants", type=whole_number(1, 50), default=6)
    p.add_argument("--weeks", type=whole_number(1, 104), default=12)
    p.add_argument("--speed", type=_positive_float,
                   help="run at this multiple of real time (default: as fast as possible)")  # fmt: skip
    p.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=0)
    p.add_argument("--miss-rate", type=float, default=0.1, help="chance a participant misses a week's session")
    p.add_argument("--protocol", help="weekly protocol (default: a short simulation-sized cmt-soothing)")
    p.add_argument("--into-store", action="store_true",
                   help="allow writing into an existing store (default: --store must name a new file; without "
                        "--store a new store under the data directory)")  # fmt: skip
    p = command(imp, "bundle", cmd_import_bundle,
                "import a session bundle (`export --format bundle`) as it was recorded; refused if already here")
    p.add_argument("file")
    p.add_argument("--by", help="who imports it (default: the operating-system user)")

    store_cmd = sub.add_parser("store", help="back up, inspect and merge stores").add_subparsers(dest="sub",
                                                                                                required=True)
    p = command(store_cmd, "backup", cmd_store_backup,
                "copy the store to a new file, consistently, even while a session is recording")  # fmt: skip
    p.add_argument("path", metavar="PATH", help="the new backup file (never overwritten)")
    p.add_argument("--by", help="who (default: the operating-system user)")
    p = command(store_cmd, "info", cmd_store_info,
                "where the store is, its size, schema, sessions by state and source, participants, last backup")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = command(store_cmd, "merge", cmd_store_merge,
                "bring another store's sessions, participants and answers in (read-only on OTHER; no duplicates; "
                "all or nothing)")  # fmt: skip
    p.add_argument("other", metavar="OTHER", help="the other store file (for example another laptop's backup)")
    p.add_argument("--by", help="who (default: the operating-system user)")
    p.add_argument("--json", action="store_true", help="print what was brought and skipped as JSON")
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors in what was asked (exit 2). Those of biofeedback's modules are taken only from modules already
    loaded: an error cannot come from a module never imported, and loading the study code (neurokit2) to print
    one line would take seconds."""
    lazy = (("biofeedback.live.recorder", "DeviceSpecError"), ("biofeedback.study.answer_entry", "EntryAborted"),
            ("biofeedback.study.prepost", "StudySelectionError"))  # fmt: skip
    loaded = tuple(getattr(sys.modules[m], name) for m, name in lazy if m in sys.modules)
    from devices.errors import DecodeError
    from protocols.instruments import AnswerError, InstrumentError, UnknownInstrumentError
    from protocols.library import UnknownProtocolError
    from protocols.loader import ProtocolError
    from recordings.answers import AnswerFileError, TimePointError
    from recordings.capture import ImportFormatError
    from recordings.ecg_time import EcgTimeError
    from recordings.export_bids import BidsExportError
    from recordings.export_edf import EdfExportError
    from recordings.export_kubios import KubiosExportError
    from recordings.files import OutputExistsError
    from recordings.store import StoreError

    return (UserError, DecodeError, UnknownProtocolError, ProtocolError, ImportFormatError, OutputExistsError,
            StoreError, FileNotFoundError, EcgTimeError, BidsExportError, EdfExportError, KubiosExportError,
            InstrumentError, UnknownInstrumentError, AnswerError, AnswerFileError, TimePointError, *loaded)  # fmt: skip


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _print_error(message: str) -> None:
    """One line on stderr, printed as plain text (brackets in file names and column names stay)."""
    err_console.print(Text.assemble(("error: ", "bold"), _one_line(message)), soft_wrap=True, highlight=False)


def _silence_stdout() -> None:
    """After a closed pipe (`... | head`): send the rest of stdout nowhere, so exiting does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and a non-zero exit status, never a traceback.

    Without a command (only `--store PATH`, or nothing) it opens the lab console.
    Exit status: 2 for errors in what was asked (bad arguments, missing sessions, invalid files, refused values),
    1 for an unexpected failure (a bug; `CMT_DEBUG=1` shows its traceback), 130 on Ctrl-C, 141 on a closed pipe.
    """
    os.umask(0o077)  # everything this process creates is private to the user
    argv = list(sys.argv[1:] if argv is None else argv)
    only_store = (len(argv) == 2 and argv[0] == "--store") or (len(argv) == 1 and argv[0].startswith("--store="))
    if not argv or only_store:  # `cmt-biofeedback` alone opens the lab console (`--help` lists the commands)
        argv = [*argv, "console"]
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except _known_errors() as exc:
        _print_error(str(exc))
        return 2
    except (ValueError, OSError) as exc:  # refused values and unreadable / unwritable files
        _print_error(str(exc) or type(exc).__name__)
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except Exception as exc:
        if os.environ.get("CMT_DEBUG"):
            raise
        _print_error(f"unexpected {type(exc).__name__}: {exc} (run with CMT_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
