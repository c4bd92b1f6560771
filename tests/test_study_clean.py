"""Study data stays clean: sources and weeks recorded with every session, a migration for older stores, the study
view's selection and its account of what it left out, exclusion / restore / deletion with an audit trail, exports
that leave simulated and imported sessions out, simulations in a store of their own, one participant-code rule."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import app
import biofeedback.study.simulate as study_sim
from biofeedback.live.recorder import build_session, parse_device_specs
from biofeedback.study.prepost import StudySelection, analyze_study, session_weeks
from biofeedback.study.simulate import SHORT_PROTOCOL, is_simulation_store, simulate_study_into
from devices.virtual_time import LoopClock, run_virtual
from protocols.instruments import DIARY_NAME, get_instrument
from recordings.answers import AnswerStore
from recordings.store import SCHEMA_VERSION, Store, StoreError, check_participant_code

DIARY = get_instrument(DIARY_NAME)


def _diary(level: int) -> dict[str, int]:
    return {item.id: level for item in DIARY.items}


def _record(store: Store, pids: list[str], **kw) -> list[int]:
    """One short session of simulated straps in virtual time."""
    specs = parse_device_specs([f"sim={p}" for p in pids], None)
    return run_virtual(build_session(store, SHORT_PROTOCOL, specs, clock=LoopClock(), **kw).run())


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = app.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# -- sources, weeks and the migration -------------------------------------------------------------------------


def test_simulated_straps_record_source_simulated_and_the_next_week(store_path):
    with Store(store_path) as store:
        first = _record(store, ["P01", "P02"])
        second = _record(store, ["P01"])
        given = _record(store, ["P02"], settings={"week": 7})
        live = store.create_session("P01", "x", {}, "AA:BB:CC:DD:EE:FF")
        imported = store.create_session("P01", "x", {}, "rr-file", source="rr")
        infos = {sid: store.session(sid) for sid in [*first, *second, *given, live, imported]}
    assert {infos[s].source for s in [*first, *second, *given]} == {"simulated"}
    assert [infos[s].week for s in first] == [1, 1] and infos[second[0]].week == 2 and infos[given[0]].week == 7
    assert (infos[live].source, infos[live].week) == ("live", 1)  # live weeks count apart from simulated ones
    assert (infos[imported].source, infos[imported].week, infos[imported].state) == ("imported-rr", None, "imported")
    with Store(store_path) as store:
        assert store.next_week("P02", "simulated") == 8


V1_SESSIONS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE participants (id TEXT PRIMARY KEY, created_utc TEXT NOT NULL, resonance_rate_bpm REAL);
CREATE TABLE sessions (id INTEGER PRIMARY KEY, participant_id TEXT NOT NULL REFERENCES participants(id),
    group_id TEXT, protocol_name TEXT NOT NULL, protocol_json TEXT NOT NULL, device TEXT NOT NULL,
    source TEXT NOT NULL, started_utc TEXT NOT NULL, ended_utc TEXT, state TEXT NOT NULL, pid INTEGER, host TEXT,
    settings_json TEXT NOT NULL DEFAULT '{}');
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO participants VALUES ('Anna', '2025-01-01', NULL);
INSERT INTO sessions VALUES (1, 'Anna', NULL, 'cmt-soothing', '{}', 'Polar H10', 'live', '2025-01-01', NULL,
    'completed', 1, 'h', '{"week": 3}');
INSERT INTO sessions VALUES (2, 'Anna', NULL, 'cmt-soothing', '{}', 'sim-1', 'live', '2025-01-02', NULL,
    'completed', 1, 'h', '{}');
INSERT INTO sessions VALUES (3, 'Anna', NULL, 'whole', '{}', 'rr-file', 'rr', '2025-01-03', NULL,
    'imported', 1, 'h', '{}');
INSERT INTO sessions VALUES (4, 'Anna', NULL, 'x', '{}', 'capture', 'capture', '2025-01-04', NULL,
    'imported', 1, 'h', '{"week": "soon"}');
"""


def test_a_schema_1_store_is_migrated_keeping_its_data(store_path):
    db = sqlite3.connect(store_path)
    db.executescript(V1_SESSIONS)
    db.close()
    with Store(store_path) as store:
        got = [(s.id, s.source, s.week, s.state) for s in store.sessions()]
        version = store.connection.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        # a code stored before the rule stays usable
        assert store.ensure_participant("Anna") == "Anna" and store.next_week("Anna") == 4
    assert got == [(1, "live", 3, "completed"), (2, "simulated", None, "completed"),
                   (3, "imported-rr", None, "imported"), (4, "imported-capture", None, "imported")]  # fmt: skip
    assert version == str(SCHEMA_VERSION)
    with Store(store_path) as again:  # opening twice migrates once
        assert [s.source for s in again.sessions()] == ["live", "simulated", "imported-rr", "imported-capture"]


# -- participant codes -----------------------------------------------------------------------------------------


def test_one_rule_for_participant_codes(store_path, monkeypatch, capsys):
    monkeypatch.delenv("CMT_PARTICIPANT_PATTERN", raising=False)
    for good in ("P01", "cmt-07", "s_3"):
        assert check_participant_code(good) == good
    for bad in ("Anna", "P0é", "P 01", "", "x" * 31 + "12"):
        with pytest.raises(StoreError, match="contains a digit"):
            check_participant_code(bad)
    monkeypatch.setenv("CMT_PARTICIPANT_PATTERN", "[A-Z]{3}")
    assert check_participant_code("ABC") == "ABC"
    with pytest.raises(StoreError):
        check_participant_code("Anna")
    monkeypatch.delenv("CMT_PARTICIPANT_PATTERN")
    code, _, err = _run(["instrument", "answer", DIARY_NAME, "--participant", "Anna", "--time", "pre",
                         "--store", str(store_path)], capsys)  # fmt: skip
    assert code == 2 and "'Anna'" in err and "contains a digit" in err and "never a name" in err


# -- the study view's selection --------------------------------------------------------------------------------


@pytest.fixture
def mixed_store(store_path):
    """Live sessions in weeks 1 and 2, and one of each kind the study view must leave out."""
    store = Store(store_path)
    ids = {}
    for week in (1, 2):
        sid = store.create_session("P01", "cmt-soothing", {}, "AA:BB", settings={"week": week})
        store.end_session(sid)
        ids[f"live{week}"] = sid
    ids["stopped"] = store.create_session("P02", "cmt-soothing", {}, "AA:BB")
    store.end_session(ids["stopped"], "stopped")
    ids["other"] = store.create_session("P02", "rest-5min", {}, "AA:BB")
    store.end_session(ids["other"])
    ids["sim"] = store.create_session("P03", "cmt-soothing", {}, "sim-1", source="simulated")
    store.end_session(ids["sim"])
    ids["imported"] = store.create_session("P03", "cmt-soothing", {}, "rr-file", source="rr")
    ids["excluded"] = store.create_session("P04", "cmt-soothing", {}, "AA:BB")
    store.end_session(ids["excluded"])
    store.exclude("session", ids["excluded"], "strap fell off", by="ra")
    ids["running"] = store.create_session("P04", "cmt-soothing", {}, "AA:BB")
    yield store, ids
    store.close()


def test_the_selection_says_what_it_left_out_and_why(mixed_store):
    store, ids = mixed_store
    answers = AnswerStore(store)
    weeks, report = session_weeks(store, answers, StudySelection(protocols=("cmt-soothing",), states=("completed",)))
    assert weeks == {ids["live1"]: 1, ids["live2"]: 2}
    why = {sid: reason for sid, _pid, reason in report.sessions_left_out}
    assert why[ids["stopped"]].startswith("state stopped")
    assert why[ids["other"]].startswith("protocol rest-5min")
    assert "--include-simulated" in why[ids["sim"]] and why[ids["imported"]].startswith("source imported")
    assert why[ids["excluded"]] == "excluded: strap fell off"
    assert why[ids["running"]] == "still recording"
    lines = report.lines()
    assert lines[1] == "included: 2 session(s), 0 answer set(s)"
    assert any(line.startswith(f"left out 1 session(s) ({ids['excluded']}): excluded") for line in lines)
    # asked for, simulated and imported sessions come in (the import has no week: left out, not guessed)
    weeks, report = session_weeks(store, answers, StudySelection(sources=("live", "simulated", "imported")))
    assert ids["sim"] in weeks and ids["imported"] not in weeks
    assert dict((s, r) for s, _, r in report.sessions_left_out)[ids["imported"]].startswith("no study week")
    store.restore("session", ids["excluded"], by="ra")
    weeks, _ = session_weeks(store, answers)
    assert ids["excluded"] in weeks
    assert [r.action for r in store.audit_rows()] == ["exclude", "restore"]


@pytest.fixture
def diary_store(store_path):
    with Store(store_path) as store:
        answers = AnswerStore(store)
        for n, (a, b) in enumerate([(8, 3), (7, 4), (9, 2), (6, 6)], start=1):
            answers.add(DIARY, f"P{n:02d}", 1, _diary(a))
            answers.add(DIARY, f"P{n:02d}", 2, _diary(b))
        answers.add(DIARY, "P09", 1, _diary(1), source="simulated")
        answers.add(DIARY, "P09", 2, _diary(9), source="simulated")
    return store_path


def test_study_analyze_reports_its_selection_and_refuses_a_missing_week(diary_store, capsys):
    store = ["--store", str(diary_store)]
    code, out, _ = _run(["study", "analyze", *store], capsys)
    assert code == 0
    assert "## Included and left out" in out and "included: 0 session(s), 8 answer set(s)" in out
    assert "left out 2 answer set(s)" in out and "source simulated" in out
    code, out, err = _run(["study", "analyze", "--json", *store], capsys)
    result = json.loads(out)
    assert result["participants"] == ["P01", "P02", "P03", "P04"]
    assert len(result["selection"]["answer_sets_left_out"]) == 2 and "included: 0 session(s)" in err
    code, _, err = _run(["study", "analyze", "--last", "12", *store], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--last 12: no selected observation is at week 12 (the data has weeks 1-2)" in err
    code, out, _ = _run(["study", "analyze", "--csv", *store], capsys)
    assert code == 0 and out.splitlines()[0].startswith("measure,source,first,last,n_first")


def test_an_excluded_answer_set_leaves_the_table_and_comes_back(diary_store, capsys):
    with Store(diary_store) as store:
        set_id = AnswerStore(store).find_one("P04", DIARY_NAME, "week 2").id

    def pairs() -> int:
        _code, out, _ = _run(["study", "analyze", "--json", "--store", str(diary_store)], capsys)
        rows = {r["measure"]: r for r in json.loads(out)["table"]}
        return rows["diary: self-criticism"]["n_pairs"]

    assert pairs() == 4
    code, _, err = _run(["answers", "exclude", str(set_id), "--store", str(diary_store)], capsys)
    assert code == 2 and "--reason" in err  # a reason is required
    assert _run(["answers", "exclude", str(set_id), "--reason", "entered twice", "--store", str(diary_store)],
                capsys)[0] == 0  # fmt: skip
    assert pairs() == 3
    assert _run(["answers", "restore", str(set_id), "--store", str(diary_store)], capsys)[0] == 0
    assert pairs() == 4


def test_excluded_sessions_are_absent_from_the_study_table(store_path, capsys):
    with Store(store_path) as store:
        ids = _record(store, ["P01", "P02"]) + _record(store, ["P01", "P02"])
        store.exclude("session", ids[3], "wrong strap", by="ra")
        result = analyze_study(store, selection=StudySelection(sources=("live", "simulated")))
        kept = set(result.data["session_id"].dropna().astype(int))
        with pytest.raises(ValueError, match="nothing to analyse"):
            analyze_study(store)  # live only: every session here is simulated
    assert kept == set(ids[:3])
    assert f"left out 1 session(s) ({ids[3]}): excluded: wrong strap" in result.selection.lines()


# -- deletion with an audit trail ------------------------------------------------------------------------------


def test_delete_asks_and_keeps_an_audit_row_but_never_the_data(store_path, capsys, monkeypatch):
    with Store(store_path) as store:
        (sid,) = _record(store, ["P01"])
        beats = store.counts(sid)["beats"]
        set_id = AnswerStore(store).add(DIARY, "P01", 1, _diary(4), {"week_notes": "private words"}, session_id=sid)
    store = ["--store", str(store_path)]
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = _run(["sessions", "delete", str(sid), *store], capsys)
    assert code == 2 and "--yes" in err and err.count("\n") == 1
    with Store(store_path) as s:
        assert s.counts(sid)["beats"] == beats  # nothing deleted without confirmation
    assert _run(["sessions", "delete", str(sid), "--yes", "--reason", "test run", "--by", "ra", *store], capsys)[0] == 0
    assert _run(["answers", "delete", str(set_id), "--yes", *store], capsys)[0] == 0
    with Store(store_path) as s:
        with pytest.raises(StoreError):
            s.session(sid)
        assert all(s.counts(sid)[t] == 0 for t in ("packets", "beats", "markers", "link_events"))
        with pytest.raises(StoreError):
            AnswerStore(s).get(set_id)
        rows = s.audit_rows()
        tables = [r[0] for r in s.connection.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        leftovers = {t: s.connection.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables
                     if t.startswith("answer_") or t in ("beats", "packets", "sessions")}  # fmt: skip
    assert (rows[0].action, rows[0].kind, rows[0].object_id, rows[0].by) == ("delete", "session", sid, "ra")
    assert rows[0].reason == "test run" and rows[0].detail["counts"]["beats"] == beats
    assert rows[0].detail["unlinked_answer_sets"] == [set_id]
    assert (rows[1].action, rows[1].kind, rows[1].detail["texts"]) == ("delete", "answer_set", 1)
    assert "private words" not in json.dumps([r.to_dict() for r in rows])
    assert leftovers == {t: 0 for t in leftovers}
    code, out, _ = _run(["sessions", "audit", "--json", *store], capsys)
    assert [r["object_id"] for r in json.loads(out)] == [sid, set_id]


def test_a_running_session_cannot_be_deleted(store_path):
    with Store(store_path) as store:
        sid = store.create_session("P01", "x", {}, "AA:BB")
        with pytest.raises(StoreError, match="still recording"):
            store.delete_session(sid, by="ra")


# -- exports ---------------------------------------------------------------------------------------------------


def test_export_all_leaves_simulated_imported_and_excluded_sessions_out(store_path, tmp_path, capsys):
    with Store(store_path) as store:
        (sim,) = _record(store, ["P01"])
        (excluded,) = _record(store, ["P02"])
        store.exclude("session", excluded, "practice", by="ra")
    store = ["--store", str(store_path)]
    code, _, err = _run(["export", "--all", "--format", "kubios", "--out", str(tmp_path / "k"), *store], capsys)
    assert code == 2 and "source simulated" in err and "excluded: practice" in err and "no sessions" in err
    assert not (tmp_path / "k").exists()
    code, _, _ = _run(["export", "--all", "--format", "kubios", "--out", str(tmp_path / "k"), "--include-simulated",
                         *store], capsys)  # fmt: skip
    written = sorted(p.name for p in (tmp_path / "k").iterdir())
    assert code == 0 and written and all(f"ses-{sim}" in name for name in written), written


# -- simulations in a store of their own -----------------------------------------------------------------------


def test_study_simulate_never_writes_into_a_real_store(store_path, capsys):
    with Store(store_path) as store:
        store.create_session("P01", "x", {}, "AA:BB")
    code, _, err = _run(["study", "simulate", "--participants", "2", "--weeks", "2", "--store", str(store_path)],
                        capsys)  # fmt: skip
    assert code == 2 and "--into-store" in err and err.count("\n") == 1
    with Store(store_path) as store:
        assert len(store.sessions()) == 1 and not AnswerStore(store).find()


def test_study_simulate_makes_its_own_store_and_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "sim.sqlite"
    result = simulate_study_into(path, participants=2, weeks=2, miss_rate=0.0)
    with Store(path) as store:
        assert is_simulation_store(store)
        assert {s.source for s in store.sessions()} == {"simulated"} and len(store.sessions()) == 4
        assert {a.source for a in AnswerStore(store).find()} == {"simulated"}
    assert result.diaries == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.sqlite"]
    # a failure part-way: a new store is never created, an existing one gets back exactly what it had
    calls = {"n": 0}
    real = study_sim._diary_answers

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(study_sim, "_diary_answers", failing)
    with pytest.raises(RuntimeError):
        simulate_study_into(tmp_path / "new.sqlite", participants=2, weeks=2, miss_rate=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.sqlite"]
    real_store = tmp_path / "real.sqlite"
    with Store(real_store) as store:
        store.create_session("P07", "x", {}, "AA:BB")
        AnswerStore(store).add(DIARY, "P07", 1, _diary(3))
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        simulate_study_into(real_store, into_existing=True, participants=2, weeks=2, miss_rate=0.0)
    with Store(real_store) as store:
        assert [s.participant_id for s in store.sessions()] == ["P07"]
        assert [a.participant_id for a in AnswerStore(store).find()] == ["P07"]
    # codes already in the store are refused before anything is written
    with pytest.raises(StoreError, match="P01, P02"):
        simulate_study_into(path, participants=2, weeks=2)


def test_simulated_study_is_analysed_only_when_asked(tmp_path, capsys):
    path = tmp_path / "sim.sqlite"
    simulate_study_into(path, participants=2, weeks=2, miss_rate=0.0)
    code, _, err = _run(["study", "analyze", "--store", str(path)], capsys)
    assert code == 2 and "nothing to analyse" in err and "--include-simulated" in err
    code, out, _ = _run(["study", "analyze", "--store", str(path), "--include-simulated", "--json"], capsys)
    assert code == 0 and json.loads(out)["participants"] == ["P01", "P02"]
    assert Path(path).stat().st_mode & 0o077 == 0
