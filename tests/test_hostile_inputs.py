"""Every hostile or clumsy file and argument: one clear line naming the file and line or field, exit status 2 (an
error in what was asked, not an unexpected failure), and the store exactly as it was.

Each case is a file a broken app, a wrong column, a corrupt copy or an attacker could hand the recorder, built here
byte for byte, and run through the real command line (`app.main`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import app
from recordings.store import Store

PSL_RR = "Phone timestamp;RR-interval [ms]\n"
PSL_ECG = "Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]\n"


def _psl_rr(rows: list[tuple[str, int]]) -> str:
    return PSL_RR + "".join(f"{t};{rr}\n" for t, rr in rows)


def _protocol(phases: str) -> str:
    return 'name = "hostile"\n' + phases


def _phase(name: str, duration: str = "60", extra: str = "") -> str:
    return f'[[phase]]\nname = "{name}"\nkind = "rest"\nduration = {duration}\n{extra}\n'


# (id, command words with {file}, file name, file content (str or bytes), what the one line must say)
CASES = [
    ("rr-nul-byte", ["import", "rr", "{file}", "--participant", "P01"], "rr.txt", b"\x00812\n830\n845\n",
     "line 1: a NUL byte"),
    ("rr-latin-1", ["import", "rr", "{file}", "--participant", "P01"], "rr.txt", "Zeit;RR\n0;812\n".encode("cp1252")
     + b"\xe9\xff\n", "not a text file"),
    ("rr-unix-time-far-future", ["import", "rr", "{file}", "--participant", "P01"], "rr.csv",
     "t,rr\n99999999999999,812\n99999999999999.8,830\n", "time column"),
    ("rr-time-span-of-ages", ["import", "rr", "{file}", "--participant", "P01"], "rr.csv",
     "t,rr\n0,812\n99999999999999999999999999999999,830\n", "a recording is at most 7 days"),
    ("rr-year-9999", ["import", "rr", "{file}", "--participant", "P01"], "rr.csv",
     "time,rr\n9999-01-01T00:00:00,812\n9999-01-01T00:00:01,830\n", "start time 9999-01-01"),
    ("rr-mixed-time-zones", ["import", "rr", "{file}", "--participant", "P01"], "rr.csv",
     "time,rr\n2025-01-01T10:00:00,812\n2025-01-01T10:00:01+01:00,830\n", "with and without a time zone"),
    ("rr-all-implausible", ["import", "rr", "{file}", "--participant", "P01"], "rr.txt", "64000\n90000\n",
     "outside the plausible 200–3000 ms"),
    ("polar-year-0001", ["import", "polar", "{file}", "--participant", "P01"], "x_RR.txt",
     _psl_rr([("0001-01-01T00:00:00.000", 812), ("0001-01-01T00:00:01.000", 830)]), "line 2: 'Phone timestamp'"),
    ("polar-year-9999", ["import", "polar", "{file}", "--participant", "P01"], "x_RR.txt",
     _psl_rr([("2025-03-07T10:00:00.000", 812), ("9999-03-07T10:00:01.000", 830)]), "line 3"),
    ("polar-mixed-time-zones", ["import", "polar", "{file}", "--participant", "P01"], "x_RR.txt",
     _psl_rr([("2025-03-07T10:00:00.000", 812), ("2025-03-07T10:00:01.000+01:00", 830)]), "time zone"),
    ("polar-huge-nanoseconds", ["import", "polar", "{file}", "--participant", "P01"], "x_ECG.txt",
     PSL_ECG + "2025-03-07T10:00:00.000;1000;0;10\n2025-03-07T10:00:00.010;" + "9" * 400 + ";0;12\n",
     "'sensor timestamp [ns]'"),
    ("polar-binary", ["import", "polar", "{file}", "--participant", "P01"], "x_RR.txt", b"\xff\xfe\x00\x01" * 50,
     "not a text file"),
    ("capture-t-1e300", ["import", "capture", "{file}", "--participant", "P01"], "c.jsonl",
     '{"t": 0, "uuid": "2a37", "hex": "10483003"}\n{"t": 1e300, "uuid": "2a37", "hex": "10483003"}\n',
     'line 2: "t"'),
    ("capture-huge-integer-t", ["import", "capture", "{file}", "--participant", "P01"], "c.jsonl",
     '{"t": ' + "9" * 400 + ', "uuid": "2a37", "hex": "10483003"}\n', "line 1"),
    ("capture-5-MB-notification", ["import", "capture", "{file}", "--participant", "P01"], "c.jsonl",
     '{"t": 0, "uuid": "2a37", "hex": "10' + "0004" * 1_250_000 + '"}\n', "512 bytes"),
    ("capture-deeply-nested-json", ["import", "capture", "{file}", "--participant", "P01"], "c.jsonl",
     "[" * 100_000 + "]" * 100_000 + "\n", "line 1"),
    ("capture-latin-1", ["import", "capture", "{file}", "--participant", "P01"], "c.jsonl",
     '{"t": 0, "uuid": "2a37", "hex": "1048", "device": "caf\xe9"}\n'.encode("latin-1"), "c.jsonl"),
    ("protocol-20000-phases", ["protocols", "validate", "{file}"], "p.toml",
     _protocol("".join(_phase(f"p{i}") for i in range(20_000))), "at most 100 phases"),
    ("protocol-phase-of-1e9-s", ["protocols", "validate", "{file}"], "p.toml", _protocol(_phase("a", "1e9")),
     "\"duration\": expected at most 4 h"),
    ("protocol-13-hours", ["protocols", "validate", "{file}"], "p.toml",
     _protocol("".join(_phase(f"p{i}", '"3h 15min"') for i in range(4))), "at most 12 h in all"),
    ("protocol-ratio-1e-31", ["protocols", "validate", "{file}"], "p.toml",
     _protocol(_phase("a", "60", '[phase.pacer]\nrate_bpm = 6\nratio = "0.0000000000000000000000000000001:1"')),
     "pacer.ratio"),
    ("protocol-400-digit-ratio", ["protocols", "validate", "{file}"], "p.toml",
     _protocol(_phase("a", "60", f'[phase.pacer]\nrate_bpm = 6\nratio = "{"4" * 400}:6"')), "pacer.ratio"),
    ("instrument-scale-1e100", ["instrument", "validate", "{file}"], "i.toml",
     'name = "x"\ntitle = "X"\n[scale]\nmin = 0\nmax = ' + "1" + "0" * 100
     + '\n[[item]]\nid = "a"\ntext = "A"\n', "scale"),
    ("session-number-of-400-digits", ["analyze", "9" * 400], None, None, "9999"),
    ("session-number-of-400-digits-exclude", ["sessions", "exclude", "9" * 400, "--reason", "x"], None, None, "9999"),
    ("sim-faults-nan", ["session", "run", "--sim-faults", "disconnect=nan", "--participant", "P01"], None, None,
     "not a finite number"),
    ("full-width-participant-code", ["session", "run", "--participant", "Ｐ０１"], None, None,
     "not a pseudonymous code"),
    ("umlaut-participant-code", ["session", "run", "--participant", "ÄÖÜ1"], None, None,
     "not a pseudonymous code"),
    ("week-beyond-a-study", ["session", "run", "--participant", "P01", "--week", "1001"], None, None,
     "a study week from 1 to 1000"),
    ("preview-width-of-zero", ["protocols", "preview", "cmt-soothing", "--out", "x", "--width", "0"], None, None,
     "a size in pixels from 1 to 16384"),
]


def _rows(path: Path) -> dict[str, int]:
    """Row count of every table: the store's content, as far as a refused input could have changed it."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: db.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        db.close()


@pytest.mark.parametrize(("argv", "name", "content", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_hostile_input_gets_one_clear_line_and_leaves_the_store_unchanged(tmp_path, capsys, argv, name, content,
                                                                            says):  # fmt: skip
    store = tmp_path / "store.sqlite"
    Store(store).close()
    before = _rows(store)
    args = list(argv)
    if name is not None:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        args = [str(path) if a == "{file}" else a for a in args]
    try:
        code = app.main([*args, "--store", str(store)])
    except SystemExit as exc:
        code = exc.code
    _out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "unexpected" not in err
    assert says in lines[0], lines[0]
    if name is not None:
        assert name in lines[0] or str(tmp_path) in lines[0], f"the line does not name the file: {lines[0]}"
    assert len(lines[0]) < 600, "one readable line, not a dump"
    assert _rows(store) == before


def test_the_same_files_with_the_hostile_value_fixed_import(tmp_path, capsys):
    """The refusals above are about the value, not the format: the files import once the value is sane."""
    store = tmp_path / "store.sqlite"
    good = {
        "rr.csv": "time,rr\n2025-01-01T10:00:00,812\n2025-01-01T10:00:01,830\n2025-01-01T10:00:02,845\n",
        "x_RR.txt": _psl_rr([("2025-03-07T10:00:00.000", 812), ("2025-03-07T10:00:01.000", 830)]),
        "c.jsonl": '{"t": 0, "uuid": "2a37", "hex": "10483003"}\n{"t": 1, "uuid": "2a37", "hex": "10483003"}\n',
    }
    kinds = {"rr.csv": "rr", "x_RR.txt": "polar", "c.jsonl": "capture"}
    for name, text in good.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        code = app.main(["import", kinds[name], str(tmp_path / name), "--participant", "P01", "--store", str(store)])
        assert code == 0, capsys.readouterr().err
    assert _rows(store)["sessions"] == 3


def test_an_empty_rr_cell_is_a_gap_not_a_join(tmp_path):
    from recordings.import_formats import parse_rr_table

    rr = parse_rr_table("rr,hr\n812,70\n,70\n830,71\n845,71\n", "x.csv")
    assert [iv.gap_before for iv in rr.intervals] == [False, True, False]
    assert any("empty RR cell" in n for n in rr.notes)


def test_a_byte_order_mark_is_read_as_one(tmp_path, capsys):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf812\n830\n845\n")
    store = tmp_path / "store.sqlite"
    assert app.main(["import", "rr", str(path), "--participant", "P01", "--store", str(store)]) == 0
    with Store(store) as s:
        assert len(s.beats(1).t) == 3  # no interval taken for a header


def test_a_protocol_file_with_a_byte_order_mark_is_read(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_bytes(b"\xef\xbb\xbf" + _protocol(_phase("a")).encode("utf-8"))
    assert app.main(["protocols", "validate", str(path)]) == 0, capsys.readouterr().err


def test_the_rr_range_override_applies_to_imported_files(tmp_path, monkeypatch):
    from recordings.import_formats import parse_rr_table

    text = "812\n3500\n830\n"
    assert [iv.rr_ms for iv in parse_rr_table(text, "x").intervals] == [812.0, 830.0]
    monkeypatch.setenv("CMT_RR_RANGE_MS", "200-4000")
    assert [iv.rr_ms for iv in parse_rr_table(text, "x").intervals] == [812.0, 3500.0, 830.0]


def test_answers_edit_refuses_nan(tmp_path, capsys):
    from protocols.instruments import get_instrument
    from recordings.answers import AnswerStore

    store = tmp_path / "store.sqlite"
    with Store(store) as s:
        instrument = get_instrument("cmt-weekly-diary")
        item = instrument.items[0].id
        aid = AnswerStore(s).add(instrument, "P01", "week 1", {item: 3.0})
    before = _rows(store)
    code = app.main(["answers", "edit", str(aid), "--set", f"{item}=nan", "--store", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and "expected a number" in err, err
    assert _rows(store) == before
