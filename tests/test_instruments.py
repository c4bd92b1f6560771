"""Instrument TOML format, scoring with reverse items and the missing-answer rule, precise validation errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.instruments import (
    DIARY_NAME,
    AnswerError,
    InstrumentError,
    InstrumentKind,
    UnknownInstrumentError,
    builtin_instruments,
    get_instrument,
    load_instrument,
    parse_instrument,
    score,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "protocols" / "instruments" / "_template-licensed.toml"

SMALL = """
name = "small"
title = "Small"
[scale]
min = 0
max = 4
[[item]]
id = 1
text = "one"
subscale = "A"
[[item]]
id = 2
text = "two"
subscale = "A"
[[item]]
id = 3
text = "three"
subscale = "A"
reverse = true
[[item]]
id = 4
text = "four"
subscale = "B"
[[item]]
id = 5
text = "five"
subscale = "B"
[[subscale]]
name = "A"
missing = { rule = "prorate", max_missing = 1 }
[[subscale]]
name = "B"
"""


def test_builtin_diary_has_two_summed_domains_of_four_0_to_10_ratings():
    diary = get_instrument(DIARY_NAME)
    assert diary.kind is InstrumentKind.DIARY
    assert {s.name: len(s.items) for s in diary.subscales} == {"self-criticism": 4, "self-soothing": 4}
    assert all((i.scale.min, i.scale.max) == (0, 10) for i in diary.items)
    assert all(i.scale.labels for i in diary.items)  # every rating states its anchors
    assert diary.text_ids == ("week_notes",)
    all_high = dict.fromkeys(diary.item_ids, 10)
    assert {k: v.value for k, v in score(diary, all_high).items()} == {"self-criticism": 40, "self-soothing": 40}


def test_builtins_load_and_the_template_is_a_valid_but_hidden_instrument():
    assert set(builtin_instruments()) == {"cmt-weekly-diary", "example-likert"}
    template = load_instrument(TEMPLATE)
    assert [s.items for s in template.subscales] == [("1", "3", "5"), ("2", "4", "6")]
    assert [i.id for i in template.items if i.reverse] == ["2", "5"]


def test_builtin_wording_is_gentle():
    harsh = re.compile(r"\b(fail\w*|bad|should|must|scores?|poor|wrong answer)\b")
    for inst in builtin_instruments().values():
        shown = [inst.title, inst.instructions] + [i.text for i in inst.items] + [t.prompt for t in inst.texts]
        for text in shown:
            assert not harsh.search(text.lower()), text


def test_scoring_reverse_items_sum_and_hand_worked_proration():
    inst = parse_instrument(SMALL)
    full = score(inst, {"1": 4, "2": 2, "3": 1, "4": 0, "5": 3})
    assert full["A"].value == 4 + 2 + (4 - 1) and not full["A"].prorated and full["A"].note is None
    assert full["B"].value == 3
    # item 2 missing: A is prorated = mean(4, 3) * 3 = 10.5, with a note; B with a missing item is missing
    part = score(inst, {"1": 4, "3": 1, "4": 0})
    assert part["A"].value == pytest.approx(10.5)
    assert part["A"].prorated and part["A"].n_answered == 2 and "prorated" in part["A"].note
    assert part["B"].value is None and "1 of 2 items unanswered" in part["B"].note
    # two of three missing exceeds max_missing = 1
    assert score(inst, {"1": 4})["A"].value is None


def test_diary_with_one_missing_item_is_prorated_and_with_two_is_missing():
    diary = get_instrument(DIARY_NAME)
    answers = {"sc_often": 6, "sc_powerful": 5, "sc_intrusive": 4, "ss_often": 1, "ss_powerful": 2}
    scores = score(diary, answers)
    assert scores["self-criticism"].value == pytest.approx((6 + 5 + 4) / 3 * 4)
    assert scores["self-criticism"].prorated
    assert scores["self-soothing"].value is None and not scores["self-soothing"].prorated


def test_mean_method_and_item_specific_scale():
    inst = parse_instrument("""
name = "m"
title = "M"
[scale]
min = 1
max = 5
[[item]]
id = "a"
text = "a"
subscales = ["s"]
[[item]]
id = "b"
text = "b"
subscales = ["s"]
reverse = true
[[subscale]]
name = "s"
method = "mean"
""")
    assert score(inst, {"a": 2, "b": 2})["s"].value == pytest.approx((2 + 4) / 2)


@given(st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=5, max_size=5))
def test_proration_equals_full_sum_when_missing_answers_equal_the_mean(answers):
    inst = parse_instrument(SMALL)
    values = dict(zip(["1", "2", "3", "4", "5"], answers, strict=True))
    a = score(inst, values)["A"]
    given_a = [(4 - v if k == "3" else v) for k, v in values.items() if k in "123" and v is not None]
    if len(given_a) == 3:
        assert a.value == sum(given_a) and not a.prorated
    elif len(given_a) == 2:
        assert a.value == pytest.approx(sum(given_a) * 3 / 2) and a.prorated
    else:
        assert a.value is None


def test_answers_off_the_scale_or_unknown_are_all_reported():
    inst = parse_instrument(SMALL)
    with pytest.raises(AnswerError) as err:
        score(inst, {"1": 5, "2": 1.5, "x9": 1, "4": True})
    msg = str(err.value)
    assert "item '1': expected a whole number from 0 to 4, got 5" in msg
    assert "item '2'" in msg and "1.5" in msg
    assert "unknown item 'x9'" in msg
    assert "item '4'" in msg and "true" in msg
    assert len(err.value.problems) == 4


def _errors(text: str) -> list[str]:
    with pytest.raises(InstrumentError) as err:
        parse_instrument(text, "lab/hads.toml")
    return [str(p) for p in err.value.problems]


def test_broken_file_lists_every_problem_naming_file_item_and_field():
    problems = _errors("""
name = "hads"
title = "Questionnaire"
[scale]
min = 0
max = 3
[[item]]
id = 1
text = "Item 1"
subscale = "anxiety"
revers = true
[[item]]
id = 1
text = "Item 2"
subscale = "anxeity"
[[item]]
id = 3
subscale = "anxiety"
reverse = "yes"
[[subscale]]
name = "anxiety"
items = [1, 7]
missing = { rule = "prorate", max_missing = 5 }
""")
    joined = "\n".join(problems)
    assert 'item 1 ("1"): field "revers": unknown item field; did you mean "reverse"?' in joined
    assert 'item 2 ("1"): field "id": expected an id not used by another item, but item 1 is also \'1\'' in joined
    assert 'item 3 ("3"): field "text": required field is missing' in joined
    assert 'item 3 ("3"): field "reverse": expected true or false, got "yes"' in joined
    assert 'subscale 1 ("anxiety"): field "items": expected ids of items in this file, got "7"' in joined
    assert 'field "missing.max_missing": expected a whole number from 0' in joined and "got 5" in joined
    assert all(p.startswith("lab/hads.toml: ") for p in problems)


def test_undeclared_subscale_gets_a_suggestion():
    problems = _errors(SMALL.replace('subscale = "B"\n[[item]]\nid = 5', 'subscale = "b"\n[[item]]\nid = 5'))
    assert problems == [
        'lab/hads.toml: item 4 ("4"): field "subscales": expected a subscale declared in a [[subscale]] table, '
        'got "b" (did you mean "B"?)'
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("max = 4", 'max = "4"'), 'field "scale.max": expected a whole number, got "4"'),
        (("max = 4", "max = 0"), 'field "scale.max": expected a number above min (0), got 0'),
        (('name = "small"', 'name = "my scale"'), 'field "name": expected letters, digits'),
        (
            ('name = "B"\n', 'name = "B"\nmethod = "median"\n'),
            'field "method": expected one of sum, mean, got "median"',
        ),
        (
            ("max_missing = 1 }", 'max_missing = 1, rul = "x" }'),
            'field "missing.rul": unknown missing-answer rule field',
        ),
        (('rule = "prorate", max_missing = 1', 'rule = "prorate"'), 'field "missing.max_missing": required with rule'),
        (("[scale]\nmin = 0\nmax = 4\n", ""), 'field "scale": required: expected a [scale] table'),
    ],
)
def test_single_problems_are_precise(change, expected):
    old, new = change
    assert old in SMALL
    problems = _errors(SMALL.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


def test_toml_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\ntitle = \n')
    with pytest.raises(InstrumentError) as err:
        load_instrument(path)
    assert str(err.value).startswith(f"{path}: line 2, column")
    assert "TOML syntax error" in str(err.value)


def test_non_utf8_file_and_unknown_names():
    with pytest.raises(UnknownInstrumentError, match="did you mean 'cmt-weekly-diary'"):
        get_instrument("cmt-weekly-dairy")
    with pytest.raises(UnknownInstrumentError, match="not found"):
        get_instrument("lab/missing.toml")


def test_labels_outside_the_scale_and_text_field_clashing_with_item():
    problems = _errors(SMALL.replace("max = 4\n", 'max = 4\nlabels = { 7 = "too far" }\n', 1)
                       + '[[text]]\nid = 1\nprompt = "notes"\n')  # fmt: skip
    joined = "\n".join(problems)
    assert 'field "scale.labels": expected label keys that are values from 0 to 4, got "7"' in joined
    assert 'text field 1: field "id": expected an id not used by an item or another text field, got "1"' in joined
