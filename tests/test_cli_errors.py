"""A terminal people can trust: every command refuses a bad argument in one line (no traceback, non-zero exit),
errors keep their brackets, a closed pipe is quiet, `--store` works before and after every command, and tables
never cut a number at 80 or 100 columns."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

import app
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.virtual_time import LoopClock, run_virtual
from protocols.library import get_protocol
from recordings.store import Store

APP = Path(app.__file__)


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every runnable command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


LEAVES = list(_leaves(app.build_parser()))
IDS = [" ".join(p) for p, _ in LEAVES]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = app.main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def _required(parser: argparse.ArgumentParser, tmp_path: Path) -> list[str]:
    """Arguments that make the command run, each one a value that names nothing (a missing id, file or name)."""
    argv: list[str] = []
    for action in parser._actions:
        if action.option_strings and not action.required:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        if action.choices:
            value = sorted(action.choices)[0]
        elif action.type is int or hasattr(action.type, "whole_number_range"):
            value = "999"
        else:
            value = str(tmp_path / "missing" / "P99")
        argv += [*action.option_strings[:1], value]
    return argv


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=IDS)
def test_every_command_refuses_an_unknown_option_in_one_line(path, parser, tmp_path, capsys):
    code, _, err = _run([*path, *_required(parser, tmp_path), "--no-such-option"], capsys)
    _one_line_error(code, err)
    assert "--no-such-option" in err


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=IDS)
def test_every_typed_option_refuses_a_bad_value_in_one_line(path, parser, tmp_path, capsys):
    typed = [a for a in parser._actions if a.type is not None and a.option_strings]
    for action in typed:
        code, _, err = _run([*path, action.option_strings[0], "not-a-number", "--store", str(tmp_path / "s.sqlite")],
                            capsys)  # fmt: skip
        _one_line_error(code, err)
        assert action.option_strings[0] in err


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=IDS)
def test_every_command_with_arguments_fails_cleanly_on_values_that_name_nothing(path, parser, tmp_path, capsys):
    argv = _required(parser, tmp_path)
    if not argv:
        pytest.skip("takes no required argument")
    code, _, err = _run([*path, *argv, "--store", str(tmp_path / "s.sqlite")], capsys)
    _one_line_error(code, err)


@pytest.mark.parametrize(("argv", "words"), [
    (["session", "run", "--device", "sim", "--participant", "P01", "--speed", "0", "--headless"], "--speed"),
    (["session", "run", "--device", "sim", "--participant", "P01", "--pacer-rate", "-2", "--headless"], "--pacer-rate"),
    (["replay", "1", "--speed", "-1"], "--speed"),
    (["session", "run", "--device", "sim", "--participant", "P01", "--week", "0", "--headless"], "--week"),
    (["session", "run", "--device", "sim", "--participant", "Anna", "--headless"], "contains a digit"),
])  # fmt: skip
def test_refused_values_say_why(argv, words, tmp_path, capsys):
    code, _, err = _run([*argv, "--store", str(tmp_path / "s.sqlite")], capsys)
    _one_line_error(code, err)
    assert words in err
    assert not (tmp_path / "s.sqlite").exists() or not Store(tmp_path / "s.sqlite").sessions()


def test_errors_keep_bracketed_text(tmp_path, capsys):
    code, _, err = _run(["protocols", "validate", str(tmp_path / "ecg [uV].toml")], capsys)
    _one_line_error(code, err)
    assert "ecg [uV].toml" in err
    code, _, err = _run(["protocols", "show", "[bold]calm[/bold]"], capsys)
    _one_line_error(code, err)
    assert "'[bold]calm[/bold]'" in err
    # and so does ordinary output: phase kinds and item ids are printed in brackets
    code, out, _ = _run(["protocols", "show", "cmt-soothing"], capsys)
    assert code == 0 and "1. baseline [rest] 5 min" in out
    code, out, _ = _run(["instrument", "show", "cmt-weekly-diary"], capsys)
    assert code == 0 and re.search(r"^1\. \[[a-z_]+\] ", out, re.M)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, int]:
    """A store holding one short simulated session of the full soothing protocol (virtual time)."""
    path = tmp_path_factory.mktemp("cli") / "store.sqlite"
    with Store(path) as store:
        session = build_session(store, get_protocol("cmt-soothing"), parse_device_specs(["sim"], "P01"),
                                clock=LoopClock())  # fmt: skip
        (sid,) = run_virtual(session.run())
    return path, sid


def test_store_works_before_and_after_every_command(recorded, capsys):
    path, sid = recorded
    before = _run(["--store", str(path), "sessions", "list", "--json"], capsys)
    after = _run(["sessions", "list", "--json", "--store", str(path)], capsys)
    assert before[0] == after[0] == 0
    assert json.loads(before[1]) == json.loads(after[1]) and json.loads(before[1])[0]["id"] == sid
    for _path, parser in LEAVES:  # every command accepts it in both places
        assert any("--store" in a.option_strings for a in parser._actions), _path


def test_closed_pipe_is_quiet(recorded):
    path, sid = recorded
    env = {**os.environ, "PYTHONPATH": str(APP.parent)}
    proc = subprocess.run(f"{sys.executable} {APP} analyze {sid} --json --store '{path}' | head -c 10",
                          shell=True, capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert proc.stdout == '{\n  "sessi'
    assert proc.stderr == "", proc.stderr
    closed = subprocess.Popen([sys.executable, str(APP), "sessions", "list", "--json", "--store", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    closed.stdout.close()
    err = closed.stderr.read().decode()
    assert closed.wait(timeout=120) == 141 and "Traceback" not in err and err == ""


def _numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+(?:\.\d+)?", text)


@pytest.mark.parametrize("width", [80, 100])
def test_tables_never_cut_a_number(recorded, width, monkeypatch, capsys):
    path, sid = recorded
    buf = io.StringIO()
    monkeypatch.setattr(app, "console", Console(file=buf, width=width, color_system=None))
    assert app.main(["analyze", str(sid), "--store", str(path)]) == 0
    shown = buf.getvalue()
    assert "…" not in shown
    assert max(len(line) for line in shown.splitlines()) <= width
    assert app.main(["analyze", str(sid), "--csv", "--store", str(path)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["phase", "kind", "start s"] and len(rows) > 3
    for row in rows[1:]:
        phase_lines = [line for line in shown.splitlines() if row[0] in line]
        assert phase_lines, f"phase {row[0]} cut at {width} columns"
        for cell in row[2:]:
            if cell != "–":
                assert any(cell in line.split() for line in shown.splitlines()), (cell, width)
    # a table of long numbers and similar long names, as in the issue (72.4, 8015, compassionate-*)
    tab = app.Tabular("t", ["phase", "HR", "LF ms²", *[f"col {i}" for i in range(9)]], {"HR", "LF ms²"} | {
        f"col {i}" for i in range(9)}, [["compassionate-image", "72.4", "8015", *["12345.6"] * 9],
                                         ["compassionate-self", "80.1", "7", *["1.0"] * 9]])  # fmt: skip
    buf.truncate(0)
    buf.seek(0)
    app._print_tabular(tab)
    shown = buf.getvalue()
    assert "compassionate-i" in shown and "compassionate-s" in shown
    assert {"72.4", "8015", "12345.6", "80.1"} <= set(_numbers(shown))
    assert max(len(line) for line in shown.splitlines()) <= width


def test_unexpected_failures_are_one_line_too(monkeypatch, capsys):
    def boom(args):
        raise KeyError("a bug")

    monkeypatch.delenv("CMT_DEBUG", raising=False)
    args = app.build_parser().parse_args(["protocols", "list"])
    args.func = boom
    monkeypatch.setattr(app, "build_parser", lambda: _Fixed(args))
    code, _, err = _run(["protocols", "list"], capsys)
    assert code == 1
    _one_line_error(code, err)
    assert "KeyError" in err and "CMT_DEBUG" in err


class _Fixed:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def parse_args(self, argv):
        return self.args
