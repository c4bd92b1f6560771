"""Stored answers: linking, duplicates, batch files, the audit trail, and keeping free text private."""

from __future__ import annotations

import json
import sqlite3

import pytest

import app
from protocols.instruments import DIARY_NAME, AnswerError, get_instrument, parse_instrument
from recordings.answers import (
    AnswerFileError,
    AnswerStore,
    AnswerStoreError,
    TimePointError,
    parse_time_point,
    read_answer_file,
)
from recordings.store import Store

DIARY = get_instrument(DIARY_NAME)
WEEK = {"sc_often": 6, "sc_powerful": 5, "sc_intrusive": 4, "sc_hard_to_dismiss": 7,
        "ss_often": 1, "ss_powerful": 2, "ss_accessible": 0, "ss_warm": 3}  # fmt: skip
SECRET = "my image is my grandmother's kitchen"


@pytest.fixture
def answers(store_path):
    store = Store(store_path)
    yield AnswerStore(store)
    store.close()


def test_time_points_are_normalised():
    assert parse_time_point(3) == ("week 3", 3)
    assert parse_time_point(" W03 ") == ("week 3", 3)
    assert parse_time_point("Week 12") == ("week 12", 12)
    assert parse_time_point("Follow-up") == ("follow-up", None)
    for bad in ("week 0", "", "3 weeks later!", "x" * 40):
        with pytest.raises(TimePointError):
            parse_time_point(bad)


def test_answers_round_trip_with_skips_session_link_and_scores(answers):
    store = answers.store
    sid = store.create_session("P01", "cmt-soothing", {}, "sim", source="import")
    set_id = answers.add(DIARY, "P01", "week 2", {**WEEK, "ss_warm": None}, {"week_notes": SECRET},
                         session_id=sid, by="ra1")  # fmt: skip
    got = answers.get(set_id)
    assert (got.participant_id, got.time_point, got.week, got.session_id) == ("P01", "week 2", 2, sid)
    assert (got.instrument, got.instrument_version, got.entered_by) == (DIARY_NAME, "1", "ra1")
    assert got.values == {**{k: float(v) for k, v in WEEK.items()}, "ss_warm": None}
    assert got.texts is None and "texts" not in got.to_dict()
    assert answers.get(set_id, include_text=True).texts == {"week_notes": SECRET}
    scores = answers.scores(got)
    assert scores["self-criticism"].value == 22
    assert scores["self-soothing"].value == pytest.approx(3 / 3 * 4) and scores["self-soothing"].prorated


def test_duplicates_wrong_session_and_bad_values_save_nothing(answers):
    store = answers.store
    other = store.create_session("P02", "cmt-soothing", {}, "sim", source="import")
    answers.add(DIARY, "P01", 1, WEEK)
    with pytest.raises(AnswerError, match=r"already has cmt-weekly-diary answers for week 1.*answers edit"):
        answers.add(DIARY, "P01", "W1", WEEK)
    with pytest.raises(AnswerError, match=r"session .* was recorded for P02, not P01"):
        answers.add(DIARY, "P01", 2, WEEK, session_id=other)
    with pytest.raises(AnswerError, match="item 'sc_often': expected a whole number from 0 to 10, got 11"):
        answers.add(DIARY, "P01", 3, {**WEEK, "sc_often": 11})
    with pytest.raises(AnswerError, match="not a pseudonymous code"):
        answers.add(DIARY, "Jane Doe", 3, WEEK)
    assert [a.time_point for a in answers.find()] == ["week 1"]


def test_a_changed_instrument_needs_a_new_version(answers):
    inst = parse_instrument('name = "q"\ntitle = "Q"\n[scale]\nmin = 0\nmax = 3\n[[item]]\nid = 1\ntext = "a"\n')
    answers.add(inst, "P01", "pre", {"1": 2})
    reworded = parse_instrument(
        '# a comment does not matter\nname = "q"\ntitle = "Q"\n[scale]\nmin = 0\nmax = 3\n'
        '[[item]]\nid = 1\ntext = "a"\n'
    )
    answers.add(reworded, "P02", "pre", {"1": 2})
    changed = parse_instrument('name = "q"\ntitle = "Q"\n[scale]\nmin = 0\nmax = 4\n[[item]]\nid = 1\ntext = "a"\n')
    with pytest.raises(AnswerStoreError, match="give the changed file a new `version`"):
        answers.add(changed, "P03", "pre", {"1": 4})
    # the stored definition is what scores the stored answers
    assert answers.instrument("q").scale.max == 3


def test_edits_are_audited_and_text_redacted_in_the_trail(answers):
    set_id = answers.add(DIARY, "P01", 4, WEEK, {"week_notes": SECRET}, by="ra1")
    edits = answers.edit(set_id, values={"sc_often": 8, "sc_powerful": 5}, texts={"week_notes": "kitchen"},
                         by="ra2", reason="paper form re-checked")  # fmt: skip
    assert [e.field for e in edits] == ["item:sc_often", "text:week_notes"]  # sc_powerful did not change
    assert SECRET not in json.dumps([e.to_dict() for e in edits])
    answers.edit(set_id, time_point="week 5", by="ra3")
    history = answers.history(set_id)
    assert [(e.field, e.old, e.new, e.edited_by) for e in history] == [
        ("item:sc_often", 6.0, 8.0, "ra2"),
        ("text:week_notes", f"<free text, {len(SECRET)} characters>", "<free text, 7 characters>", "ra2"),
        ("time_point", "week 4", "week 5", "ra3"),
    ]
    assert history[0].reason == "paper form re-checked"
    assert answers.history(set_id, include_text=True)[1].old == SECRET
    now = answers.get(set_id, include_text=True)
    assert now.values["sc_often"] == 8 and now.week == 5 and now.texts == {"week_notes": "kitchen"}
    # an invalid edit changes nothing and leaves no trail
    with pytest.raises(AnswerError):
        answers.edit(set_id, values={"sc_often": 12})
    assert len(answers.history(set_id)) == 3 and answers.get(set_id).values["sc_often"] == 8


def test_batch_csv_and_json_files(answers, tmp_path):
    csv_path = tmp_path / "week3.csv"
    header = "participant,week," + ",".join(DIARY.item_ids) + ",week_notes"
    csv_path.write_text(header + "\nP01,3,1,2,3,4,5,6,7,8,\nP02,3,0,0,,0,NA,1,1,1,a calm week\n\n")
    pending = read_answer_file(csv_path, DIARY)
    ids = answers.add_many(pending, DIARY, by="ra1")
    assert len(ids) == 2
    p2 = answers.get(ids[1], include_text=True)
    assert (
        p2.values["sc_intrusive"] is None
        and p2.values["ss_often"] is None
        and p2.texts == {"week_notes": "a calm week"}
    )
    json_path = tmp_path / "pre.json"
    json_path.write_text(json.dumps([{"participant": "P01", "answers": {"sc_often": 3}, "texts": {}}]))
    (one,) = read_answer_file(json_path, DIARY, time_point="week 4")
    assert one.time_point == "week 4" and one.values["sc_often"] == 3 and one.values["ss_warm"] is None


def test_batch_file_problems_name_row_and_column_and_nothing_is_saved(answers, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("participant,week,sc_often,sc_oftn\nP01,3,12,1\n,4,x,\n")
    with pytest.raises(AnswerFileError) as err:
        read_answer_file(path, DIARY)
    msg = str(err.value)
    assert f'{path}: row 1 (line 2): column "sc_often": expected a whole number from 0 to 10' in msg
    assert f'{path}: row 1 (line 2): column "sc_oftn": not an item' in msg
    assert f'{path}: row 2 (line 3): column "participant": missing' in msg
    assert f'{path}: row 2 (line 3): column "sc_often"' in msg and "'x'" in msg
    good = tmp_path / "dupe.csv"
    good.write_text("participant,week,sc_often\nP01,1,3\nP01,1,4\n")
    with pytest.raises(AnswerError, match=r"row 2 .*already has"):
        answers.add_many(read_answer_file(good, DIARY), DIARY)
    assert answers.find() == []


def _run(capsys, monkeypatch, argv, stdin=None):
    if stdin is not None:
        import io

        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = app.main(argv)
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())  # messages unwrapped from the console width


def test_cli_interactive_diary_with_retry_skip_summary_and_confirmation(capsys, monkeypatch, store_path):
    store = ["--store", str(store_path)]
    # 11 is off the scale and asked again; an empty line skips sc_powerful; free text; then "y"
    typed = "5\n\n11\n4\n3\n2\n3\n4\n5\n" + SECRET + "\ny\n"
    code, out, _ = _run(capsys, monkeypatch, ["diary", "add", "--participant", "P01", "--week", "1", "--by", "ra1",
                                              *store], typed)  # fmt: skip
    assert code == 0, out
    assert "Please type a whole number from 0 to 10" in out
    assert "summary before saving" in out and "skipped" in out and "prorated from 3 of 4 items" in out
    assert "Saved as answer set 1" in out
    assert SECRET not in out  # the summary shows only the length of free text
    code, out, _ = _run(capsys, monkeypatch, ["answers", "list", "--json", *store])
    (listed,) = json.loads(out)
    assert listed["values"]["sc_powerful"] is None and listed["values"]["sc_intrusive"] == 4 and "texts" not in listed
    code, out, _ = _run(capsys, monkeypatch, ["answers", "list", "--json", "--include-text", *store])
    assert json.loads(out)[0]["texts"] == {"week_notes": SECRET}
    # declining saves nothing; ending input early saves nothing
    code, out, _ = _run(capsys, monkeypatch, ["diary", "add", "--participant", "P01", "--week", "2", *store],
                        "1\n" * 8 + "\nn\n")  # fmt: skip
    assert code == 1 and "Nothing was saved" in out
    code, _, err = _run(capsys, monkeypatch, ["diary", "add", "--participant", "P01", "--week", "2", *store], "1\n")
    assert code == 2 and "nothing was saved" in err
    with Store(store_path) as s:
        assert [a.time_point for a in AnswerStore(s).find()] == ["week 1"]


def test_cli_edit_show_and_instrument_commands(capsys, monkeypatch, store_path, tmp_path):
    store = ["--store", str(store_path)]
    path = tmp_path / "pre.csv"
    path.write_text("participant,1,2,3,4,5,6,comments\nP01,4,3,0,1,1,2,\nP02,2,2,2,2,2,2," + SECRET + "\n")
    code, out, err = _run(capsys, monkeypatch, ["instrument", "answer", "example-likert", "--time", "pre", "--from",
                                                str(path), *store])  # fmt: skip
    assert code == 0 and "saved 2" in out, err
    code, out, _ = _run(capsys, monkeypatch, ["answers", "edit", "1", "--set", "2=", "--set", "1=3", "--by", "ra9",
                                              "--reason", "misread", *store])  # fmt: skip
    assert code == 0 and "item:2 3.0 → None" in out and "(by ra9)" in out
    code, out, _ = _run(capsys, monkeypatch, ["answers", "show", "1", "--json", *store])
    shown = json.loads(out)
    assert shown["values"]["1"] == 3 and shown["values"]["2"] is None
    assert shown["scores"]["A"]["value"] == pytest.approx((3 + 4) / 2 * 3) and shown["scores"]["A"]["prorated"]
    assert [e["edited_by"] for e in shown["edits"]] == ["ra9", "ra9"]
    code, out, _ = _run(capsys, monkeypatch, ["answers", "show", "2", "--json", *store])
    assert SECRET not in out
    code, out, err = _run(capsys, monkeypatch, ["answers", "edit", "1", "--set", "1=9", *store])
    assert code == 2 and "expected a whole number from 0 to 4, got 9.0" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\ntitle = "B"\n[scale]\nmin = 0\nmax = 3\n[[item]]\nid = 1\n')
    code, _, err = _run(capsys, monkeypatch, ["instrument", "validate", str(bad)])
    assert code == 2 and f'{bad}: item 1 ("1"): field "text": required field is missing' in err
    code, out, _ = _run(capsys, monkeypatch, ["instrument", "show", "cmt-weekly-diary"])
    assert code == 0 and "prorated when at most 1 item(s) are unanswered" in out


def test_answer_tables_live_in_the_same_private_store(answers, store_path):
    answers.add(DIARY, "P01", 1, WEEK, {"week_notes": SECRET})
    answers.store.flush()
    db = sqlite3.connect(store_path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"answer_sets", "answer_values", "answer_texts", "answer_edits", "instrument_defs"} <= tables
    assert db.execute("SELECT COUNT(*) FROM participants WHERE id='P01'").fetchone()[0] == 1
