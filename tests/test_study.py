"""The study view: Wilcoxon rows (via stats.py) against hand-worked cases and SciPy, the correlation, week
placement, and a simulated 12-week study of 6 from the command line with its table, plots and JSON."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy import stats as sps

import app
from biofeedback.study.prepost import (
    DIARY_CRITICISM,
    DIARY_SOOTHING,
    SOOTHING_RESPONSE,
    StudySelection,
    analyze_study,
    compare,
    markdown,
    session_weeks,
    soothing_correlation,
)
from protocols.instruments import DIARY_NAME, get_instrument
from recordings.answers import AnswerStore
from recordings.store import Store

DIARY = get_instrument(DIARY_NAME)
SC_ITEMS = [i.id for i in DIARY.items if "self-criticism" in i.subscales]
SS_ITEMS = [i.id for i in DIARY.items if "self-soothing" in i.subscales]
SIMULATED = StudySelection(sources=("live", "simulated"))


def _diary(total_sc: int, total_ss: int) -> dict[str, int]:
    """Item answers whose domain sums are the given totals (spread over the four 0-10 items)."""
    out = {}
    for items, total in ((SC_ITEMS, total_sc), (SS_ITEMS, total_ss)):
        for k, item in enumerate(items):
            out[item] = total // 4 + (1 if k < total % 4 else 0)
    return out


# Hand-worked: week 1 -> week 12 self-criticism of six people; differences -6, 0, -6, -9, +1, -12.
# The zero is dropped (N = 5); |d| 1, 6, 6, 9, 12 get ranks 1, 2.5, 2.5, 4, 5; W+ = 1, W- = 14, T = 1.
# Var = 5*6*11/24 - (2^3 - 2)/48 = 13.75 - 0.125 = 13.625; Z = (1 - 7.5)/sqrt(13.625) = -1.76095;
# p = 2*Phi(-1.76095) = 0.07825.
BEFORE = [10, 12, 15, 20, 8, 14]
AFTER = [4, 12, 9, 11, 9, 2]


@pytest.fixture
def diary_store(store_path):
    store = Store(store_path)
    answers = AnswerStore(store)
    for n, (b, a) in enumerate(zip(BEFORE, AFTER, strict=True), start=1):
        answers.add(DIARY, f"P{n:02d}", 1, _diary(b, 5 + n))
        answers.add(DIARY, f"P{n:02d}", 12, _diary(a, 5 + n), {"week_notes": "private words"} if n == 2 else None)
    answers.add(DIARY, "P01", 6, _diary(9, 9))
    yield store
    store.close()


def test_wilcoxon_row_matches_hand_worked_case_and_scipy(diary_store):
    result = analyze_study(diary_store)
    (row,) = [r for r in result.rows if r.measure == DIARY_CRITICISM]
    assert (row.first, row.last) == ("week 1", "week 12")
    t = row.test
    assert (t.n, t.n_nonzero, t.w_positive, t.w_negative, t.t_stat) == (6, 5, 1.0, 14.0, 1.0)
    assert t.z == pytest.approx(-6.5 / math.sqrt(13.625), abs=1e-9)
    assert t.p_two_sided == pytest.approx(0.07825, abs=5e-5)
    ref = sps.wilcoxon(BEFORE, AFTER, zero_method="wilcox", correction=False, method="approx")
    assert t.t_stat == ref.statistic and t.p_two_sided == pytest.approx(ref.pvalue, rel=1e-9)
    assert t.mean_before == pytest.approx(sum(BEFORE) / 6) and t.median_after == pytest.approx(9.0)
    assert "only 5 non-zero" in "; ".join(row.notes)  # n too small is said, not hidden
    # self-soothing did not change: no non-zero differences, so no Z or p
    (same,) = [r for r in result.rows if r.measure == DIARY_SOOTHING]
    assert same.test.n_nonzero == 0 and same.test.z is None and same.test.p_two_sided is None
    table = markdown(result)
    assert (
        "| diary: self-criticism | week 1 | 13.17 (4.22) | 13.00 | week 12 | 7.83 (3.97) | 9.00 | 6 | 1 | -1.76 |"
        in table
    )
    assert "private words" not in table and "private words" not in json.dumps(result.to_dict())


def test_first_and_last_can_be_chosen_and_single_points_are_reported(diary_store):
    rows = compare(analyze_study(diary_store).data, first="week 1", last="W6")
    (row,) = [r for r in rows if r.measure == DIARY_CRITICISM]
    assert (row.first, row.last, row.n_first, row.n_last) == ("week 1", "week 6", 6, 1)
    assert row.test.n == 1
    rows = compare(analyze_study(diary_store).data, first=6, last=6)
    assert "only one time point" in rows[0].notes[0] and rows[0].test is None


def test_free_text_only_with_include_text(diary_store):
    assert analyze_study(diary_store).free_text is None
    texts = analyze_study(diary_store, include_text=True).free_text
    assert texts == [{"participant": "P02", "instrument": DIARY_NAME, "time_point": "week 12", "field": "week_notes",
                      "text": "private words"}]  # fmt: skip


def test_spearman_across_sessions_with_n():
    rows = []
    for pid, pairs in {"P01": [(1, 3, 2.0), (2, 9, 7.0)], "P02": [(1, 5, 1.0), (2, 12, 30.0), (3, 20, 40.0)]}.items():
        for week, diary, phys in pairs:
            rows.append({"participant": pid, "week": week, "measure": DIARY_SOOTHING, "value": diary})
            rows.append({"participant": pid, "week": week, "measure": SOOTHING_RESPONSE, "value": phys})
    rows.append({"participant": "P03", "week": 1, "measure": DIARY_SOOTHING, "value": 7})  # no session: not a pair
    corr = soothing_correlation(pd.DataFrame(rows))
    ref = sps.spearmanr([3, 9, 5, 12, 20], [2.0, 7.0, 1.0, 30.0, 40.0])
    assert corr.n == 5 and corr.rho == pytest.approx(ref.statistic) and corr.p == pytest.approx(ref.pvalue)
    assert corr.rho == pytest.approx(0.9)  # hand: rank d = (1,-1,... ) sum d² = 2 -> 1 - 6*2/(5*24)
    tiny = soothing_correlation(pd.DataFrame(rows[:4]))
    assert tiny.n == 2 and tiny.rho is None and "too few" in tiny.note


def test_session_weeks_from_recorded_week_then_linked_diary_never_order(store_path):
    with Store(store_path) as store:
        a = store.create_session("P01", "x", {}, "sim", source="import", settings={"week": 4})
        b = store.create_session("P01", "x", {}, "sim", source="import")
        c = store.create_session("P02", "x", {}, "sim", source="import")
        answers = AnswerStore(store)
        answers.add(DIARY, "P01", 7, _diary(1, 1), session_id=b)
        weeks, report = session_weeks(store, answers, StudySelection(sources=("imported",)))
        assert weeks == {a: 4, b: 7}
        ((left_out, pid, reason),) = report.sessions_left_out
        assert (left_out, pid) == (c, "P02") and reason.startswith("no study week recorded (not placed by its order")
        store.set_week(c, 2, by="ra", reason="from the paper log")
        assert session_weeks(store, answers, StudySelection(sources=("imported",)))[0] == {a: 4, b: 7, c: 2}
        assert store.audit_rows()[-1].detail == {"old": None, "new": 2}


@pytest.mark.slow
def test_simulated_12_week_study_from_the_cli(tmp_path, capsys):
    store = ["--store", str(tmp_path / "study.sqlite")]
    assert app.main(["study", "simulate", "--participants", "6", "--weeks", "12", "--seed", "3", *store]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert app.main(["study", "analyze", "--out", str(out), "--json", "--include-simulated", *store]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = {"study_table.md", "study_table.csv", "study.json", "study_long.csv", "trajectories.png",
                "correlation.png"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == expected
    for name in ("trajectories.png", "correlation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 20_000
        assert (out / name).stat().st_mode & 0o777 == 0o600  # plots of participant data are private too
    saved = json.loads((out / "study.json").read_text())
    assert saved["table"] == printed["table"]
    assert saved["participants"] == [f"P{i:02d}" for i in range(1, 7)]
    rows = {r["measure"]: r for r in saved["table"]}
    for measure in (DIARY_CRITICISM, DIARY_SOOTHING, "example-likert: A", "RMSSD baseline (ms)",
                    "RMSSD soothing-breathing (ms)", "HF baseline (ms²)", SOOTHING_RESPONSE):  # fmt: skip
        assert measure in rows, sorted(rows)
    crit, sooth, resp = rows[DIARY_CRITICISM], rows[DIARY_SOOTHING], rows[SOOTHING_RESPONSE]
    assert crit["first"] == "week 1" and crit["last"] == "week 12"
    assert crit["mean_last"] < crit["mean_first"] and sooth["mean_last"] > sooth["mean_first"]
    assert resp["median_last"] > resp["median_first"]
    assert rows["example-likert: A"]["first"] == "pre" and rows["example-likert: A"]["n_pairs"] == 6
    for r in (crit, sooth, resp):
        assert 2 <= r["n_pairs"] <= 6 and r["T"] is not None
    assert saved["correlation"]["n"] >= 40 and saved["correlation"]["spearman_rho"] > 0.3
    # the simulated diaries hold free text, but none of it leaves the store without --include-text
    with Store(tmp_path / "study.sqlite") as s:
        texts = [t["text"] for t in analyze_study(s, include_text=True, selection=SIMULATED).free_text]
    assert texts
    for path in out.iterdir():
        if path.suffix in (".md", ".csv", ".json"):
            content = path.read_text()
            assert not any(t in content for t in texts), path
    sim = "--include-simulated"
    assert app.main(["study", "analyze", "--out", str(out), sim, *store]) == 2  # never silently overwritten
    assert app.main(["study", "analyze", "--out", str(out), "--include-text", "--force", sim, *store]) == 0
    assert any(t in (out / "free_text.csv").read_text() for t in texts)
