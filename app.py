"""Command line of the biofeedback session recorder: parses arguments, calls one function per command, prints.

Run `python app.py --help` (or any command with `--help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

# Piped output (logs, CI) gets a table wide enough to read; a terminal keeps its own width.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True)


class UserError(Exception):
    """An error to show to the user as one clear line (exit status 2)."""


# -- helpers ---------------------------------------------------------------------------------------------------


def _open_store(args: argparse.Namespace):
    from recordings.store import Store, default_store_path

    return Store(Path(args.store) if args.store else default_store_path())


def _fmt(value, spec=".1f") -> str:
    return "–" if value is None else format(value, spec)


def _phase_table(analysis) -> Table:
    table = Table(
        title=f"Session {analysis.session.id} · {analysis.session.participant_id} · "
        f"{analysis.session.protocol_name} · correction {analysis.correction}"
    )
    cols = [
        ("phase", None), ("kind", None), ("start s", ".1f"), ("end s", ".1f"), ("beats", "d"),
        ("corr %", ".1f"), ("HR", ".1f"), ("RMSSD", ".1f"), ("SDNN", ".1f"), ("pNN50", ".1f"),
        ("LF ms²", ".0f"), ("HF ms²", ".0f"), ("breaths/min", ".1f"),
    ]  # fmt: skip
    for name, _ in cols:
        table.add_column(name, justify="left" if _ is None else "right")
    for p in analysis.phases:
        values = [p.name, p.kind, p.start_s, p.end_s, p.n_beats, p.corrected_pct, p.mean_hr_bpm, p.rmssd_ms,
                  p.sdnn_ms, p.pnn50_pct, p.lf_ms2, p.hf_ms2, p.breathing_rate_bpm]  # fmt: skip
        table.add_row(*[str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    return table


def _print_notes(analysis) -> None:
    for p in analysis.phases:
        for note in p.notes:
            console.print(f"  [dim]{p.name}:[/dim] {note}")


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
    import asyncio

    from biofeedback.readiness import READY_BEATS_S, NotReadyError, wait_until_ready
    from biofeedback.recorder import make_links
    from biofeedback.session import StrapBinding
    from devices.clock import ScaledClock

    if args.ready_timeout <= 0:
        raise UserError(f"--ready-timeout must be > 0 s, got {args.ready_timeout:g}")
    clock = ScaledClock(args.speed)
    links = make_links(specs, clock, lambda: None, seed=args.seed, faults=faults)
    bindings = [StrapBinding(link, spec.participant_id) for link, spec in zip(links, specs, strict=True)]
    shown: dict[str, str] = {}

    def update(states, now: float) -> None:
        for st in states:
            words = st.status(now)
            key = words.split(":")[0].split(" for ")[0]  # a line per change of state, not per second or retry
            if shown.get(st.participant_id) != key:
                shown[st.participant_id] = key
                console.print(f"  {st.participant_id} ({st.device_id}): {words}", highlight=False)

    console.print(f"Waiting for {len(specs)} strap(s): connected, skin contact, beats for {READY_BEATS_S:g} s "
                  f"(at most {args.ready_timeout:g} s)")  # fmt: skip
    try:
        asyncio.run(wait_until_ready(bindings, clock, args.ready_timeout, on_update=update))
    except NotReadyError as exc:
        raise UserError(f"{exc}. Nothing was recorded.") from None
    console.print("Every strap is ready: starting the protocol.")


def cmd_session_run(args: argparse.Namespace) -> int:
    from biofeedback.recorder import build_session, parse_device_specs, parse_sim_faults, run_session_blocking
    from protocols.library import get_protocol

    specs = parse_device_specs(args.device or ["sim"], args.participant)
    protocol = get_protocol(args.protocol)
    with _open_store(args) as store:
        rate = args.pacer_rate
        if rate is None and len(specs) == 1:
            rate = store.resonance_rate(specs[0].participant_id)
        if rate is not None:
            protocol = protocol.with_pacer_rate(rate)
        settings = {} if args.week is None else {"week": args.week}
        sims = [s.participant_id for s in specs if s.simulated]
        faults = parse_sim_faults(args.sim_faults or [], sims, args.seed)
        if args.speed != 1.0 and not all(s.simulated for s in specs):
            raise UserError("--speed other than 1 only makes sense with simulated straps")
        if args.start_when_ready:
            _wait_for_straps(args, specs, faults)
        session = build_session(store, protocol, specs, speed=args.speed, seed=args.seed, ecg=args.ecg,
                                acc=args.acc, settings=settings, faults=faults)  # fmt: skip
        console.print(
            f"Recording [bold]{protocol.name}[/bold] ({protocol.total_duration_s / 60:.0f} min) for "
            f"{', '.join(s.participant_id for s in specs)} at speed ×{args.speed:g} into {store.path}"
        )
        outlets = None
        if args.lsl:
            from biofeedback.lsl_outlets import LslOutlets

            outlets = LslOutlets(session)
            session.add_listener(outlets)
            console.print(f"Lab Streaming Layer: streaming {', '.join(outlets.stream_names)}")
        try:
            if args.headless:
                if note := _headless_diary_note(session):
                    console.print(note, highlight=False, soft_wrap=True)
                ids = run_session_blocking(session, view=sys.stdout.isatty())
            else:
                from biofeedback.display_app import run_with_displays

                ids = run_with_displays(session)
        finally:
            if outlets is not None:
                outlets.close()
        from biofeedback.analysis import analyze_session  # neurokit2 takes seconds to load: not before it is needed

        for sid in ids:
            analysis = analyze_session(store, sid)
            console.print(_phase_table(analysis))
            _print_notes(analysis)
        console.print(f"Recording saved: sessions {', '.join(map(str, ids))} in {store.path}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from biofeedback.recorder import run_session_blocking
    from biofeedback.replay import build_replay

    if args.speed <= 0:
        raise UserError(f"--speed must be > 0, got {args.speed:g}")
    with _open_store(args) as store:
        session = build_replay(store, args.session, speed=args.speed)
    info = session.protocol
    console.print(f"Replaying session {args.session} ([bold]{info.name}[/bold], {len(session.link.packets)} packets) "
                  f"at speed ×{args.speed:g}; nothing is recorded")  # fmt: skip
    if args.headless:
        run_session_blocking(session, view=sys.stdout.isatty())
    else:
        from biofeedback.display_app import run_with_displays

        run_with_displays(session)
    console.print(f"Replay finished: {session.link.delivered} of {len(session.link.packets)} packets played")
    return 0


def cmd_sessions_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        sessions = store.sessions(args.participant)
        if args.json:
            print(json.dumps([s.to_dict() for s in sessions], indent=2))
            return 0
        table = Table(title=f"Sessions in {store.path}")
        for col in ("id", "participant", "protocol", "device", "started (UTC)", "state", "beats"):
            table.add_column(col)
        for s in sessions:
            table.add_row(str(s.id), s.participant_id, s.protocol_name, s.device, s.started_utc, s.state,
                          str(store.counts(s.id)["beats"]))  # fmt: skip
        console.print(table)
    return 0


def _resonance_table(assessment) -> Table:
    table = Table(title=f"Resonance assessment · session {assessment.session_id} · {assessment.participant_id}")
    cols = [("phase", None), ("paced /min", "g"), ("beats", "d"), ("corr %", ".1f"), ("RSA bpm", ".1f"),
            ("LF peak ms²", ".0f"), ("LF ms²", ".0f"), ("peak /min", ".2f"), ("score", ".2f"),
            ("usable", None)]  # fmt: skip
    for name, spec in cols:
        table.add_column(name, justify="left" if spec is None else "right")
    for r in assessment.rates:
        values = [r.phase, r.rate_bpm, r.n_beats, r.corrected_pct, r.rsa_amplitude_bpm, r.lf_peak_ms2, r.lf_ms2,
                  r.peak_bpm, r.score, "yes" if r.eligible else "no"]  # fmt: skip
        table.add_row(*[str(v) if spec is None else _fmt(v, spec) for v, (_, spec) in zip(values, cols, strict=True)])
    return table


def _print_resonance(assessment) -> None:
    console.print(_resonance_table(assessment))
    for r in assessment.rates:
        for note in r.notes:
            console.print(f"  [dim]{r.phase}:[/dim] {note}")
    if assessment.resonance_rate_bpm is None:
        console.print(f"Resonance rate: not named ({assessment.reason})")
    else:
        console.print(
            f"Resonance rate: [bold]{assessment.resonance_rate_bpm:g} breaths/min[/bold] ({assessment.reason})"
        )
        if len(assessment.close_rates_bpm) > 1:
            console.print(f"  close: {', '.join(f'{r:g}' for r in assessment.close_rates_bpm)} /min")


def _save_resonance(store, assessment) -> None:
    from biofeedback.resonance import NotAnAssessmentError, save_resonance_rate

    try:
        rate = save_resonance_rate(store, assessment)
    except NotAnAssessmentError as exc:
        raise UserError(str(exc)) from None
    console.print(f"Saved {rate:g} breaths/min as the resonance rate of {assessment.participant_id}; "
                  "later sessions pace at it unless --pacer-rate is given")  # fmt: skip


def cmd_analyze(args: argparse.Namespace) -> int:
    from biofeedback.analysis import analyze_session
    from biofeedback.resonance import assess_session, is_resonance_assessment

    with _open_store(args) as store:
        analysis = analyze_session(store, args.session, correction=args.correction)
        assessment = None
        if is_resonance_assessment(store.protocol_dict(args.session)):
            assessment = assess_session(store, args.session, correction=args.correction)
        elif args.save_resonance:
            raise UserError(f"session {args.session} is not a resonance assessment: nothing to save")
        if args.json:
            out = analysis.to_dict()
            if assessment is not None:
                out["resonance"] = assessment.to_dict()
            print(json.dumps(out, indent=2))
        else:
            console.print(_phase_table(analysis))
            _print_notes(analysis)
            if assessment is not None:
                _print_resonance(assessment)
        if args.save_resonance and assessment is not None:
            _save_resonance(store, assessment)
    return 0


def cmd_resonance_save(args: argparse.Namespace) -> int:
    from biofeedback.resonance import NotAnAssessmentError, assess_session

    with _open_store(args) as store:
        try:
            assessment = assess_session(store, args.session, correction=args.correction)
        except NotAnAssessmentError as exc:
            raise UserError(str(exc)) from None
        _print_resonance(assessment)
        _save_resonance(store, assessment)
    return 0


def _export_sessions(args: argparse.Namespace, store) -> list[int]:
    """The sessions an export names: one SESSION, `--participant ID` or `--all`."""
    chosen = [args.session is not None, args.participant is not None, args.all]
    if sum(chosen) != 1:
        raise UserError("name exactly one of: a SESSION id, --participant ID, --all")
    if args.session is not None:
        store.session(args.session)  # raises a clear error when it does not exist
        return [args.session]
    ids = [s.id for s in store.sessions(args.participant)]
    if not ids:
        who = f" for participant {args.participant}" if args.participant else ""
        raise UserError(f"no sessions{who} in {store.path}")
    return ids


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    written: list[Path] = []
    with _open_store(args) as store:
        ids = _export_sessions(args, store)
        if args.format == "bids":
            from recordings.export_bids import export_bids

            with _progress() as progress:
                task = progress.add_task(f"BIDS export to {out}", total=len(ids))
                result = export_bids(store, out, ids, include_text=args.include_text, overwrite=args.force,
                                     on_session=lambda _sid: progress.advance(task))  # fmt: skip
            for sid in result.kept_sessions:
                console.print(f"kept session {sid}: already in {out} (use --force to rewrite it)")
            console.print(f"wrote sessions {result.exported_sessions or 'none'} into BIDS dataset {out} "
                          f"({len(result.written)} files, index files updated)")  # fmt: skip
            return 0
        with _progress() as progress:
            task = progress.add_task(f"{args.format} export to {out}", total=len(ids))
            for sid in ids:
                written += _export_one(store, sid, args, out)
                progress.advance(task)
    for path in written:
        console.print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from biofeedback.report import REPORT_STEPS, write_report

    with _open_store(args) as store, Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("report", total=len(REPORT_STEPS))

        def step(name: str) -> None:
            progress.update(task, description=name, completed=REPORT_STEPS.index(name))

        out = write_report(store, args.session, Path(args.out), overwrite=args.force, correction=args.correction,
                           include_text=args.include_text, on_step=step)  # fmt: skip
        progress.update(task, completed=len(REPORT_STEPS))
    console.print(f"wrote {out}")
    return 0


def _export_one(store, sid: int, args: argparse.Namespace, out: Path) -> list[Path]:
    if args.format == "capture":
        from recordings.capture import export_capture

        return [export_capture(store, sid, out, overwrite=args.force)]
    if args.format == "csv":
        from biofeedback.analysis import analyze_session
        from recordings.export_csv import export_csv

        phases = [p.to_dict() for p in analyze_session(store, sid, args.correction).phases]
        folder = out if args.session is not None else out / f"session-{sid}"
        return export_csv(store, sid, folder, phases=phases, include_text=args.include_text, overwrite=args.force)
    if args.format == "edf":
        from recordings.export_bids import bids_label
        from recordings.export_edf import export_edf

        info = store.session(sid)
        path = out / f"sub-{bids_label(info.participant_id)}_ses-{sid}.edf"
        return [export_edf(store, sid, path, include_text=args.include_text, overwrite=args.force)]
    if args.format == "kubios":
        from recordings.export_kubios import export_kubios

        return export_kubios(store, sid, out, overwrite=args.force)
    raise UserError(f"unknown export format {args.format!r}")


def cmd_import_capture(args: argparse.Namespace) -> int:
    from recordings.capture import import_capture

    with _open_store(args) as store:
        sid, counts = import_capture(store, Path(args.file), args.participant, device=args.device)
    console.print(
        f"imported session {sid}: {counts.packets} packets, {counts.beats} beats, {counts.malformed} malformed "
        f"(kept raw), {counts.ecg_samples} ECG samples"
    )
    return 0


def cmd_import_rr(args: argparse.Namespace) -> int:
    from recordings.capture import import_rr
    from recordings.import_events import import_rr_with_events

    with _open_store(args) as store:
        if args.events:
            sid = import_rr_with_events(store, Path(args.file), args.participant, Path(args.events), args.column)
        else:
            sid = import_rr(store, Path(args.file), args.participant, column=args.column)
        counts = store.counts(sid)
    phases = f", {counts['markers']} markers from {args.events}" if args.events else ""
    console.print(f"imported session {sid}: {counts['beats']} beats from {args.file}{phases} into {store.path}")
    return 0


def cmd_import_polar(args: argparse.Namespace) -> int:
    from recordings.import_polar import import_polar

    with _open_store(args) as store:
        sid = import_polar(store, [Path(f) for f in args.files], args.participant)
        counts = store.counts(sid)
        n_ecg = sum(len(c[3]) for c in store.ecg_chunks(sid))
    console.print(f"imported session {sid}: {counts['beats']} beats, {n_ecg} ECG samples from "
                  f"{len(args.files)} Polar Sensor Logger file(s) into {store.path}")  # fmt: skip
    return 0


def cmd_protocols_list(args: argparse.Namespace) -> int:
    from protocols.library import builtin_protocols

    table = Table(title="Built-in protocols")
    for col in ("name", "minutes", "phases", "description"):
        table.add_column(col)
    for name, proto in builtin_protocols().items():
        table.add_row(name, f"{proto.total_duration_s / 60:.1f}", str(len(proto.phases)), proto.description)
    console.print(table)
    return 0


def cmd_protocols_show(args: argparse.Namespace) -> int:
    from protocols.library import get_protocol

    proto = get_protocol(args.name)
    console.print(f"[bold]{proto.name}[/bold] (version {proto.version}): {proto.description}")
    for i, ph in enumerate(proto.phases):
        pacer = f", pacer {ph.pacer.rate_bpm:g}/min" if ph.pacer else ""
        console.print(f"{i + 1}. {ph.name} [{ph.kind.value}] {ph.duration_s / 60:g} min, feedback {ph.feedback.value}"
                      f"{pacer}")  # fmt: skip
        if ph.prompt:
            console.print(f"   [italic]{ph.prompt}[/italic]")
        for p in ph.prompts:
            console.print(f"   at {p.at_s:g} s: [italic]{p.text}[/italic]")
    return 0


def cmd_protocols_preview(args: argparse.Namespace) -> int:
    from biofeedback.preview import render_preview
    from protocols.library import get_protocol

    protocol = get_protocol(args.name)
    written = render_preview(protocol, Path(args.out), size=(args.width, args.height), overwrite=args.force)
    for path, phase in zip(written, protocol.phases, strict=True):
        console.print(f"{path}  [dim]{phase.name} at {phase.duration_s / 2:g} s[/dim]")
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

    from devices.ble import scan

    straps = asyncio.run(scan(timeout_s=args.timeout))
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in straps], indent=2))
        return 0
    if not straps:
        console.print(f"No heart-rate straps found in {args.timeout:g} s. Is the strap worn (it sleeps when dry)?")
        return 0
    table = Table(title="Heart-rate straps nearby")
    for col in ("name", "address", "signal dBm", "Polar ECG (PMD)"):
        table.add_column(col)
    for s in straps:
        table.add_row(s.name, s.address, str(s.rssi), "yes" if s.has_pmd else "no")
    console.print(table)
    return 0


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
    from biofeedback.answer_entry import ask_answers, confirm, summary_table
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
        if answers.find_one(args.participant, instrument.name, label) is not None:
            raise UserError(f"{args.participant} already has {instrument.name} answers for {label}; "
                            "use `answers edit` to change them")  # fmt: skip
        values, texts = ask_answers(instrument, console)
        console.print(summary_table(instrument, values, texts))
        if not confirm(console):
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

    table = Table(title="Built-in instruments")
    for col in ("name", "kind", "items", "subscales", "title"):
        table.add_column(col)
    for name, inst in builtin_instruments().items():
        table.add_row(name, inst.kind.value, str(len(inst.items)), ", ".join(s.name for s in inst.subscales),
                      inst.title)  # fmt: skip
    console.print(table)
    return 0


def cmd_instrument_show(args: argparse.Namespace) -> int:
    from protocols.instruments import get_instrument

    inst = get_instrument(args.name)
    console.print(f"[bold]{inst.name}[/bold] ({inst.kind.value}, version {inst.version}): {inst.title}")
    if inst.description:
        console.print(inst.description, highlight=False)
    console.print(f"scale {inst.scale.describe()}", highlight=False)
    for n, item in enumerate(inst.items, start=1):
        extra = (" [reverse]" if item.reverse else "") + (f" scale {item.scale.describe()}" if item.scale != inst.scale
                                                          else "")  # fmt: skip
        console.print(f"{n}. [{item.id}] {item.text} → {', '.join(item.subscales) or '–'}{extra}", highlight=False)
    for sub in inst.subscales:
        console.print(f"subscale {sub.name}: {sub.method.value} of {', '.join(sub.items)}; {sub.missing.describe()}",
                      highlight=False)  # fmt: skip
    for field in inst.texts:
        console.print(f"free text [{field.id}]: {field.prompt}", highlight=False)
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
        if args.json:
            print(json.dumps([a.to_dict(include_text=args.include_text) for a in sets], indent=2))
            return 0
        table = Table(title=f"Answer sets in {store.path}")
        for col in ("id", "participant", "instrument", "time point", "session", "scores", "entered by"):
            table.add_column(col)
        for a in sets:
            scores = ", ".join(f"{k} {'–' if v.value is None else format(v.value, 'g')}{'*' if v.prorated else ''}"
                               for k, v in answers.scores(a).items())  # fmt: skip
            table.add_row(str(a.id), a.participant_id, a.instrument, a.time_point, str(a.session_id or "–"), scores,
                          a.entered_by)  # fmt: skip
        console.print(table)
        console.print("[dim]* prorated (an item was skipped)[/dim]")
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


def cmd_study_analyze(args: argparse.Namespace) -> int:
    from biofeedback.study import analyze_study, markdown, write_outputs

    with _open_store(args) as store:
        result = analyze_study(store, first=args.first, last=args.last, include_text=args.include_text)
    if args.out:
        for path in write_outputs(result, Path(args.out), overwrite=args.force):
            err_console.print(f"wrote {path}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.out:
        console.print(markdown(result), highlight=False)
    return 0


def cmd_study_simulate(args: argparse.Namespace) -> int:
    from biofeedback.study_sim import SHORT_PROTOCOL, simulate_study
    from protocols.library import get_protocol

    protocol = SHORT_PROTOCOL if args.protocol is None else get_protocol(args.protocol)
    if not (1 <= args.participants <= 99 and 2 <= args.weeks <= 104 and 0 <= args.miss_rate < 1):
        raise UserError("--participants must be 1-99, --weeks 2-104 and --miss-rate in [0, 1)")
    with _open_store(args) as store:
        result = simulate_study(store, participants=args.participants, weeks=args.weeks, speed=args.speed,
                                seed=args.seed, miss_rate=args.miss_rate, protocol=protocol,
                                progress=lambda msg: console.print(msg, highlight=False))  # fmt: skip
        n = sum(len(v) for v in result.sessions.values())
        console.print(f"simulated {len(result.participants)} participants over {result.weeks} weeks into "
                      f"{store.path}: {n} sessions, {result.diaries} diaries, {len(result.missed_sessions)} missed "
                      f"sessions, {len(result.missed_diaries)} missed diaries")  # fmt: skip
    return 0


# -- parser ----------------------------------------------------------------------------------------------------


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH", help="SQLite store (default: the user's data directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Biofeedback session recorder for compassion-focused research."
    )
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
    p.add_argument("--speed", type=float, default=1.0, help="simulated time per real second (simulator only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated participant(s)")
    p.add_argument("--ecg", action="store_true", help="also record raw ECG (Polar H10 PMD, or simulated)")
    p.add_argument("--acc", action="store_true",
                   help="also record the chest strap's accelerometer (Polar H10 PMD, or simulated): phase "
                        "breathing rates then come from chest movement")  # fmt: skip
    p.add_argument("--pacer-rate", type=float, help="breathing pacer rate for paced phases (breaths/min)")
    p.add_argument("--sim-faults", action="append", metavar="[ID:]KIND=N,...",
                   help="faults of simulated straps, events per hour: disconnect=N, contact=N (contact loss), "
                        "malformed=N (bursts of malformed packets); prefix ID: for one participant only")  # fmt: skip
    p.add_argument("--headless", action="store_true", help="no windows: a live view in the terminal")
    p.add_argument("--start-when-ready", action="store_true",
                   help="start the protocol only once every strap is connected with skin contact and beats "
                        "arriving for 10 s; otherwise stop with the reason, recording nothing")  # fmt: skip
    p.add_argument("--ready-timeout", type=float, default=120.0, metavar="S",
                   help="with --start-when-ready: give up after S seconds (session seconds: --speed applies)")
    p.add_argument("--week", type=int, help="study week of this session (links it to that week's diary)")
    p.add_argument("--lsl", action="store_true",
                   help="stream ECG, RR, heart rate and markers on Lab Streaming Layer (LabRecorder)")  # fmt: skip

    sessions = sub.add_parser("sessions", help="list recorded sessions").add_subparsers(dest="sub", required=True)
    p = command(sessions, "list", cmd_sessions_list, "list sessions in the store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--participant")

    p = command(sub, "replay", cmd_replay, "play a stored session's raw packets through the live displays")
    p.add_argument("session", type=int)
    p.add_argument("--speed", type=float, default=1.0, help="playback speed (2 = twice as fast)")
    p.add_argument("--headless", action="store_true", help="no windows: a live view in the terminal")

    p = command(sub, "analyze", cmd_analyze, "per-phase HRV of a session")
    p.add_argument("session", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    p.add_argument("--save-resonance", action="store_true",
                   help="resonance assessments: store the named rate for the participant's later sessions")  # fmt: skip

    resonance = sub.add_parser("resonance", help="resonance breathing rate").add_subparsers(dest="sub", required=True)
    p = command(resonance, "save", cmd_resonance_save,
                "name the resonance rate of a resonance-assessment session and store it for the participant",
                )  # fmt: skip
    p.add_argument("session", type=int)
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")

    p = command(sub, "export", cmd_export, "export sessions to files (BIDS, EDF+, Kubios RR text, CSV, raw capture)")
    p.add_argument("session", type=int, nargs="?", help="session id (or use --participant / --all)")
    p.add_argument("--participant", metavar="ID", help="every session of this participant")
    p.add_argument("--all", action="store_true", help="every session in the store")
    p.add_argument("--format", required=True, choices=["bids", "edf", "kubios", "csv", "capture"])
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (for bids: the dataset root)")
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    p.add_argument("--include-text", action="store_true", help="also export free-text notes (sensitive)")
    p.add_argument("--force", action="store_true", help="replace existing output files")

    p = command(sub, "report", cmd_report, "write a session report: one self-contained HTML file")
    p.add_argument("session", type=int)
    p.add_argument("--out", required=True, metavar="FILE.html")
    p.add_argument("--correction", choices=["kubios", "none"], default="kubios")
    p.add_argument("--include-text", action="store_true", help="also include free-text notes (sensitive)")
    p.add_argument("--force", action="store_true", help="replace an existing report")

    devices = sub.add_parser("devices", help="Bluetooth straps").add_subparsers(dest="sub", required=True)
    p = devices.add_parser("scan", help="list straps advertising the Heart Rate Service",
                           description="list straps advertising the Heart Rate Service")  # fmt: skip
    p.set_defaults(func=cmd_devices_scan)
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to listen (default 5)")
    p.add_argument("--json", action="store_true")

    imp = sub.add_parser("import", help="import recordings").add_subparsers(dest="sub", required=True)
    p = command(imp, "capture", cmd_import_capture, "import a raw JSON Lines capture as a new session")
    p.add_argument("file")
    p.add_argument("--participant", required=True)
    p.add_argument("--device", help="the strap to import from a capture of several straps")
    p = command(imp, "rr", cmd_import_rr, "import RR intervals (ms; one per line or a CSV column)")
    p.add_argument("file")
    p.add_argument("--participant", required=True)
    p.add_argument("--column", help="CSV column holding RR in ms")
    p.add_argument("--events", metavar="EVENTS.tsv",
                   help="phases and markers: tab-separated onset, duration, trial_type[, phase_kind]; seconds since "
                        "the start of the RR series")  # fmt: skip
    p = command(imp, "polar", cmd_import_polar, "import Polar Sensor Logger files (ECG, RR, HR) as one new session")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--participant", required=True)

    protos = sub.add_parser("protocols", help="protocol library").add_subparsers(dest="sub", required=True)
    command(protos, "list", cmd_protocols_list, "list built-in protocols")
    p = command(protos, "show", cmd_protocols_show, "show a protocol's phases and prompts")
    p.add_argument("name")
    p = command(protos, "preview", cmd_protocols_preview,
                "render the participant display at the middle of every phase to PNG files")  # fmt: skip
    p.add_argument("name", help="built-in protocol name or a TOML file")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--force", action="store_true", help="replace existing PNG files")
    p = command(protos, "validate", cmd_protocols_validate, "check a protocol TOML file")
    p.add_argument("file")

    diary = sub.add_parser("diary", help="weekly diary").add_subparsers(dest="sub", required=True)
    p = command(diary, "add", cmd_diary_add, "enter a weekly diary (interactively, or a CSV/JSON file)")
    p.add_argument("--participant", help="pseudonymous participant ID")
    p.add_argument("--week", type=int, help="week number (1, 2, ...)")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="CSV or JSON file of answers (batch entry)")
    p.add_argument("--session", type=int, help="the session these answers belong to")
    p.add_argument("--by", help="who enters the answers (default: the operating-system user)")
    p.add_argument("--instrument", default="cmt-weekly-diary", help="diary instrument name or TOML file")

    inst = sub.add_parser("instrument", help="questionnaires and diaries").add_subparsers(dest="sub", required=True)
    command(inst, "list", cmd_instrument_list, "list built-in instruments")
    p = command(inst, "show", cmd_instrument_show, "show an instrument's items, scales and subscales")
    p.add_argument("name")
    p = command(inst, "validate", cmd_instrument_validate, "check an instrument TOML file")
    p.add_argument("file")
    p = command(inst, "answer", cmd_instrument_answer, "enter answers to an instrument")
    p.add_argument("name", help="built-in instrument name or TOML file")
    p.add_argument("--participant")
    p.add_argument("--time", help="time point: pre, post, follow-up, week 3, ...")
    p.add_argument("--from", dest="from_file", metavar="FILE", help="CSV or JSON file of answers (batch entry)")
    p.add_argument("--session", type=int)
    p.add_argument("--by", help="who enters the answers (default: the operating-system user)")

    ans = sub.add_parser("answers", help="stored answers").add_subparsers(dest="sub", required=True)
    p = command(ans, "list", cmd_answers_list, "list answer sets with their scores")
    p.add_argument("--participant")
    p.add_argument("--instrument")
    p.add_argument("--json", action="store_true")
    p.add_argument("--include-text", action="store_true", help="include free-text answers (sensitive)")
    p = command(ans, "show", cmd_answers_show, "show one answer set and its edit history")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.add_argument("--include-text", action="store_true", help="include free-text answers (sensitive)")
    p = command(ans, "edit", cmd_answers_edit, "change answers; every change is kept in an audit trail")
    p.add_argument("id", type=int, help="answer set id (see `answers list`)")
    p.add_argument("--set", action="append", metavar="ITEM=VALUE", help="new answer (empty value: skipped)")
    p.add_argument("--text", action="append", metavar="FIELD=TEXT", help="new free text (empty: removed)")
    p.add_argument("--time", help="move the answers to another time point")
    p.add_argument("--session", type=int, help="link the answers to a session")
    p.add_argument("--by", help="who makes the change (default: the operating-system user)")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")

    study = sub.add_parser("study", help="the study across weeks").add_subparsers(dest="sub", required=True)
    p = command(study, "analyze", cmd_study_analyze, "first vs last time point of every measure (Wilcoxon, SPSS)")
    p.add_argument("--first", help="first time point (default: the earliest week; pre for questionnaires)")
    p.add_argument("--last", help="last time point (default: the latest week; post for questionnaires)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", metavar="DIR", help="write table (Markdown, CSV), JSON, long data and plots here")
    p.add_argument("--include-text", action="store_true", help="also output free-text answers (sensitive)")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p = command(study, "simulate", cmd_study_simulate, "record a simulated weekly group study")
    p.add_argument("--participants", type=int, default=6)
    p.add_argument("--weeks", type=int, default=12)
    p.add_argument("--speed", type=float, help="run at this multiple of real time (default: as fast as possible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--miss-rate", type=float, default=0.1, help="chance a participant misses a week's session")
    p.add_argument("--protocol", help="weekly protocol (default: a short simulation-sized cmt-soothing)")
    return parser


def _known_errors() -> tuple[type[BaseException], ...]:
    from biofeedback.answer_entry import EntryAborted
    from biofeedback.recorder import DeviceSpecError
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

    return (UserError, DeviceSpecError, DecodeError, UnknownProtocolError, ProtocolError, ImportFormatError,
            OutputExistsError, StoreError, FileNotFoundError, EcgTimeError, BidsExportError, EdfExportError,
            KubiosExportError, InstrumentError, UnknownInstrumentError, AnswerError, AnswerFileError, EntryAborted,
            TimePointError)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # everything this process creates is private to the user
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _known_errors() as exc:
        err_console.print(f"[bold]error:[/bold] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
