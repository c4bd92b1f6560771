"""Protocol TOML loading: precise messages, all problems collected, built-in library as specified."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.library import UnknownProtocolError, builtin_protocols, get_protocol, list_protocols
from protocols.loader import ProtocolError, load_protocol, parse_duration, parse_protocol
from protocols.model import FeedbackMode, Pacer, Phase, PhaseKind, Protocol, TimedPrompt

HEADER = 'name = "t"\n'


def phase(name: str = "p", kind: str = "rest", duration: str = "60", extra: str = "") -> str:
    return f'\n[[phase]]\nname = "{name}"\nkind = "{kind}"\nduration = {duration}\n{extra}'


def problem_lines(text: str, source: str = "cmt.toml") -> list[str]:
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text, source)
    return [str(p) for p in info.value.problems]


def single_problem(text: str, source: str = "cmt.toml") -> str:
    lines = problem_lines(text, source)
    assert len(lines) == 1, lines
    return lines[0]


# ---- valid input -----------------------------------------------------------------------------------------


def test_minimal_protocol_parses_with_defaults() -> None:
    p = parse_protocol(HEADER + phase("only", "rest", '"5min"'))
    assert p.name == "t" and p.description == "" and p.version == "1"
    (ph,) = p.phases
    assert ph == Phase("only", PhaseKind.REST, 300.0)
    assert ph.feedback is FeedbackMode.LIVE and ph.pacer is None and ph.prompts == () and not ph.show_numbers


def test_full_phase_parses_every_field() -> None:
    text = (
        'name = "full"\ndescription = "d"\nversion = 3\n'
        + phase("img", "imagery", '"2min 30s"', 'prompt = "hello"\nfeedback = "sham"\nshow_numbers = true\n')
        + '[phase.pacer]\nrate_bpm = 5.5\nratio = "1:2"\n'
        + '[[phase.prompts]]\nat = "1min"\ntext = "second"\n'
        + '[[phase.prompts]]\nat = 0\ntext = "first"\n'
    )
    p = parse_protocol(text)
    ph = p.phases[0]
    assert p.version == "3" and p.description == "d"
    assert (
        ph.duration_s == 150.0
        and ph.prompt == "hello"
        and ph.feedback is FeedbackMode.SHAM
        and ph.show_numbers
    )
    assert ph.pacer == Pacer(5.5, 1 / 3)
    assert ph.prompts == (TimedPrompt(0.0, "first"), TimedPrompt(60.0, "second"))  # sorted by time


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (90.5, 90.5),
        ('"90s"', 90.0),
        ('"5min"', 300.0),
        ('"5 min"', 300.0),
        ('"2min 30s"', 150.0),
        ('"1h"', 3600.0),
        ('"1.5min"', 90.0),
        ('"300"', 300.0),
        ('"45 seconds"', 45.0),
        ('"2 minutes"', 120.0),
    ],
)
def test_duration_forms(value: object, seconds: float) -> None:
    assert parse_protocol(HEADER + phase(duration=str(value))).phases[0].duration_s == seconds


@pytest.mark.parametrize("kind", ["rest", "recall", "diary", "breathing"])
@pytest.mark.parametrize("feedback", ["hidden", "sham", "live"])
def test_any_feedback_mode_is_accepted_on_any_kind(kind: str, feedback: str) -> None:
    p = parse_protocol(HEADER + phase(kind=kind, extra=f'feedback = "{feedback}"\n'))
    assert p.phases[0].feedback.value == feedback


@pytest.mark.parametrize(
    ("rate", "ratio", "inhale"), [(2, "4:6", 0.4), (30, "1:1", 0.5), (6.0, "1:1.5", 0.4)]
)
def test_pacer_limits_and_ratio_are_accepted(rate: float, ratio: str, inhale: float) -> None:
    extra = f'[phase.pacer]\nrate_bpm = {rate}\nratio = "{ratio}"\n'
    pacer = parse_protocol(HEADER + phase(kind="breathing", extra=extra)).phases[0].pacer
    assert pacer is not None and pacer.rate_bpm == rate and pacer.inhale_fraction == pytest.approx(inhale)


def test_pacer_ratio_defaults_to_4_6() -> None:
    pacer = parse_protocol(HEADER + phase(extra="[phase.pacer]\nrate_bpm = 6\n")).phases[0].pacer
    assert pacer == Pacer(6.0, 0.4)


@given(minutes=st.integers(0, 90), seconds=st.integers(0, 59), spaced=st.booleans())
def test_parse_duration_minutes_and_seconds(minutes: int, seconds: int, spaced: bool) -> None:
    sep = " " if spaced else ""
    text = f"{minutes}{sep}min{sep}{seconds}{sep}s"
    expected = minutes * 60 + seconds
    assert parse_duration(text, allow_zero=True) == expected
    assert parse_duration(text) == (expected if expected > 0 else None)


# ---- one message per problem: file, phase, field, expected, got -------------------------------------------


def test_message_example_from_the_spec() -> None:
    text = HEADER + phase("a") + phase("b") + phase("imagery", "imagery", '"-2"')
    assert single_problem(text) == (
        'cmt.toml: phase 3 ("imagery"): field "duration": '
        'expected a positive duration like 300 or "5min", got "-2"'
    )


@pytest.mark.parametrize(
    "bad", ["-2", "0", '"0s"', '"5 parsecs"', '""', "true", '"min"', '"5min5"', "nan", "inf", "[1, 2]"]
)
def test_bad_durations_are_reported_with_the_value_found(bad: str) -> None:
    msg = single_problem(HEADER + phase("x", duration=bad))
    assert msg.startswith('cmt.toml: phase 1 ("x"): field "duration": expected a positive duration')
    got = {"true": "true", "[1, 2]": "an array"}.get(bad, bad)
    assert msg.endswith(f"got {got}")


def test_toml_syntax_error_names_line_and_column() -> None:
    text = 'name = "t"\n[[phase]]\nname = "a"\nkind = rest\n'
    msg = single_problem(text)
    assert msg.startswith("cmt.toml: line 4, column 8: TOML syntax error")


def test_toml_syntax_error_without_position_still_names_file() -> None:
    msg = single_problem('name = "t"\nname = "u"')
    assert msg.startswith("cmt.toml: ") and "TOML syntax error" in msg


@pytest.mark.parametrize(
    ("extra", "field", "suggestion"),
    [
        ("duraton = 5\n", "duraton", "duration"),
        ('feedbak = "live"\n', "feedbak", "feedback"),
        ('colour = "x"\n', "colour", None),
        ("show_number = true\n", "show_number", "show_numbers"),
    ],
)
def test_unknown_phase_field_is_rejected_with_suggestion(
    extra: str, field: str, suggestion: str | None
) -> None:
    msg = single_problem(HEADER + phase("x", extra=extra))
    assert msg.startswith(f'cmt.toml: phase 1 ("x"): field "{field}": unknown phase field')
    if suggestion:
        assert f'did you mean "{suggestion}"?' in msg
    else:
        assert "did you mean" not in msg
    assert "expected one of: name, kind, duration" in msg


def test_unknown_top_level_pacer_and_prompt_fields() -> None:
    text = 'name = "t"\nphases_count = 2\n' + phase(
        "x",
        extra='[phase.pacer]\nrate_bpm = 6\nrate = 5\n[[phase.prompts]]\nat = 1\ntxt = "hi"\ntext = "t"\n',
    )
    lines = problem_lines(text)
    assert len(lines) == 3
    assert lines[0].startswith('cmt.toml: field "phases_count": unknown top-level field')
    assert any(
        ln.startswith(
            'cmt.toml: phase 1 ("x"): field "pacer.rate": unknown pacer field; did you mean "rate_bpm"?'
        )
        for ln in lines
    )
    assert any(
        ln.startswith(
            'cmt.toml: phase 1 ("x"): field "prompts[1].txt": unknown prompt field; did you mean "text"?'
        )
        for ln in lines
    )


@pytest.mark.parametrize("missing", ["name", "kind", "duration"])
def test_missing_required_phase_field(missing: str) -> None:
    fields = {"name": 'name = "x"', "kind": 'kind = "rest"', "duration": "duration = 60"}
    body = "\n".join(v for k, v in fields.items() if k != missing)
    msg = single_problem(HEADER + "[[phase]]\n" + body + "\n")
    where = 'phase 1 ("x")' if missing != "name" else "phase 1 (unnamed)"
    assert msg.startswith(f'cmt.toml: {where}: field "{missing}": required field is missing: expected ')


def test_missing_protocol_name_and_phases() -> None:
    lines = problem_lines('description = "no name"\n')
    assert lines == [
        'cmt.toml: field "name": required field is missing: expected a non-empty string',
        'cmt.toml: field "phase": required: expected at least one [[phase]] table, got none',
    ]


def test_single_bracket_phase_table_is_explained() -> None:
    msg = single_problem(HEADER + '[phase]\nname = "x"\nkind = "rest"\nduration = 5\n')
    assert msg == 'cmt.toml: field "phase": expected [[phase]] tables (note the double brackets), got a table'


def test_unknown_kind_lists_valid_kinds_and_suggests() -> None:
    msg = single_problem(HEADER + phase("x", kind="imagry"))
    valid = ", ".join(k.value for k in PhaseKind)
    prefix = 'cmt.toml: phase 1 ("x"): field "kind": '
    assert msg == prefix + f'expected one of {valid}, got "imagry" (did you mean "imagery"?)'


def test_unknown_feedback_mode() -> None:
    msg = single_problem(HEADER + phase("x", extra="feedback = 1\n"))
    assert msg == 'cmt.toml: phase 1 ("x"): field "feedback": expected one of live, hidden, sham, got 1'


@pytest.mark.parametrize("rate", ["1.9", "30.5", "0", "-6", '"6"', "true"])
def test_pacer_rate_outside_range(rate: str) -> None:
    msg = single_problem(HEADER + phase("br", "breathing", extra=f"[phase.pacer]\nrate_bpm = {rate}\n"))
    prefix = 'cmt.toml: phase 1 ("br"): field "pacer.rate_bpm": '
    assert msg == prefix + f"expected breaths per minute from 2 to 30, got {rate}"


def test_pacer_rate_missing_and_bad_ratio() -> None:
    lines = problem_lines(HEADER + phase("br", extra='[phase.pacer]\nratio = "4/6"\n'))
    assert lines == [
        'cmt.toml: phase 1 ("br"): field "pacer.rate_bpm": '
        "required field is missing: expected breaths per minute from 2 to 30",
        'cmt.toml: phase 1 ("br"): field "pacer.ratio": '
        'expected inhale:exhale as positive numbers like "4:6", got "4/6"',
    ]


@pytest.mark.parametrize("ratio", ['"0:6"', '"4:0"', '"4:6:1"', "0.4"])
def test_bad_ratios(ratio: str) -> None:
    msg = single_problem(HEADER + phase("br", extra=f"[phase.pacer]\nrate_bpm = 6\nratio = {ratio}\n"))
    assert msg.startswith('cmt.toml: phase 1 ("br"): field "pacer.ratio": expected inhale:exhale')
    assert msg.endswith(f"got {ratio}")


def test_prompt_outside_phase_and_empty_text() -> None:
    extra = '[[phase.prompts]]\nat = "1min"\ntext = "late"\n[[phase.prompts]]\nat = 5\ntext = ""\n'
    lines = problem_lines(HEADER + phase("x", duration="60", extra=extra))
    assert lines == [
        'cmt.toml: phase 1 ("x"): field "prompts[1].at": '
        'expected a time before the phase ends (60 s), got "1min"',
        'cmt.toml: phase 1 ("x"): field "prompts[2].text": expected a non-empty string, got ""',
    ]


def test_negative_prompt_time() -> None:
    msg = single_problem(HEADER + phase("x", extra='[[phase.prompts]]\nat = -1\ntext = "a"\n'))
    assert (
        msg
        == 'cmt.toml: phase 1 ("x"): field "prompts[1].at": expected a duration of 0 or more like 0, 45 or '
        '"1min", got -1'
    )


def test_duplicate_phase_names() -> None:
    msg = single_problem(HEADER + phase("same") + phase("other") + phase("same"))
    assert msg == (
        'cmt.toml: phase 3 ("same"): field "name": expected a name not used by another phase, '
        'but phase 1 is also called "same"'
    )


def test_show_numbers_version_and_prompt_types() -> None:
    lines = problem_lines(
        'name = "t"\nversion = 1.5\n' + phase("x", extra='show_numbers = "yes"\nprompt = 3\n')
    )
    assert lines == [
        'cmt.toml: field "version": expected a version string like "1.2" or an integer, got 1.5',
        'cmt.toml: phase 1 ("x"): field "prompt": expected a string, got 3',
        'cmt.toml: phase 1 ("x"): field "show_numbers": expected true or false, got "yes"',
    ]


def test_all_problems_are_collected_across_phases() -> None:
    text = (
        'name = ""\n'
        + phase("a", kind="nap")
        + phase("b", duration='"soon"')
        + phase("c", extra="[phase.pacer]\nrate_bpm = 50\n")
        + phase("d")
    )
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text, "cmt.toml")
    err = info.value
    fields = [(p.phase_index, p.phase_name, p.field) for p in err.problems]
    assert fields == [
        (None, None, "name"),
        (1, "a", "kind"),
        (2, "b", "duration"),
        (3, "c", "pacer.rate_bpm"),
    ]
    text_lines = str(err).splitlines()
    assert text_lines[0] == "cmt.toml: 4 problems:"
    assert [ln.strip() for ln in text_lines[1:]] == [str(p) for p in err.problems]
    assert isinstance(err, ValueError)


def test_load_protocol_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "cmt.toml"
    f.write_text(HEADER + phase("x", duration='"-2"'), encoding="utf-8")
    with pytest.raises(ProtocolError, match=re.escape(f'{f}: phase 1 ("x"): field "duration"')):
        load_protocol(f)
    f.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ProtocolError, match="expected UTF-8 text"):
        load_protocol(f)


# ---- model -----------------------------------------------------------------------------------------------


def _three_phase() -> Protocol:
    return Protocol(
        "m",
        "",
        (
            Phase("a", PhaseKind.REST, 10),
            Phase("b", PhaseKind.BREATHING, 20, pacer=Pacer(6)),
            Phase("c", PhaseKind.RECOVERY, 5),
        ),
    )


def test_phase_at_and_total_duration() -> None:
    p = _three_phase()
    assert p.total_duration_s == 35 and p.phase_starts_s == (0, 10, 30)
    assert p.phase_at(-0.1) is None and p.phase_at(35) is None
    pos = p.phase_at(12.5)
    assert pos is not None and (pos.index, pos.phase.name, pos.elapsed_s, pos.remaining_s) == (
        1,
        "b",
        2.5,
        17.5,
    )
    assert p.phase_at(10).index == 1 and p.phase_at(9.999).index == 0  # type: ignore[union-attr]


@given(st.lists(st.floats(0.5, 600), min_size=1, max_size=8), st.floats(0, 1, exclude_max=True))
def test_phase_at_agrees_with_cumulative_durations(durations: list[float], frac: float) -> None:
    p = Protocol("h", "", tuple(Phase(f"p{i}", PhaseKind.OTHER, d) for i, d in enumerate(durations)))
    t = frac * p.total_duration_s
    pos = p.phase_at(t)
    assert pos is not None
    assert pos.start_s <= t < pos.start_s + pos.phase.duration_s + 1e-9
    assert pos.start_s == pytest.approx(sum(durations[: pos.index]))


def test_with_pacer_rate_changes_only_paced_phases() -> None:
    p = _three_phase()
    q = p.with_pacer_rate(5.2)
    assert q.phases[1].pacer == Pacer(5.2, 0.4)
    assert (
        q.phases[0] == p.phases[0] and q.phases[2] == p.phases[2] and q.total_duration_s == p.total_duration_s
    )
    assert p.phases[1].pacer == Pacer(6)  # original untouched
    with pytest.raises(ValueError, match="2-30"):
        p.with_pacer_rate(40)


def test_model_rejects_invalid_values() -> None:
    with pytest.raises(ValueError, match="used twice"):
        Protocol("x", "", (Phase("a", "rest", 1), Phase("a", "rest", 1)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no phases"):
        Protocol("x", "", ())
    with pytest.raises(ValueError, match="outside"):
        Phase("a", PhaseKind.REST, 10, prompts=(TimedPrompt(10, "x"),))
    with pytest.raises(ValueError):
        Phase("a", "sleeping", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Pacer(6, 1.0)


# ---- built-in library ------------------------------------------------------------------------------------

FORBIDDEN = re.compile(
    r"\b(should|must|score\w*|fail\w*|success\w*|succeed\w*|wrong|correct\w*|well done|"
    r"good job|better|worse|try harder)\b",
    re.IGNORECASE,
)


def _participant_text(p: Protocol) -> list[str]:
    return [t for ph in p.phases for t in (ph.prompt, *(x.text for x in ph.prompts)) if t]


def test_builtins_are_listed_and_loadable() -> None:
    names = list_protocols()
    assert names == ["cmt-grounding", "cmt-soothing", "cmt-soothing-diary", "resonance-assessment", "rest-5min",
                     "sham-control"]
    assert set(builtin_protocols()) == set(names)
    for name in names:
        assert get_protocol(name) is builtin_protocols()[name]


def test_builtin_files_are_valid_via_load_protocol() -> None:
    folder = Path(__file__).resolve().parents[1] / "protocols" / "library"
    for f in folder.glob("*.toml"):
        assert load_protocol(f) == builtin_protocols()[f.stem]


def test_rest_5min() -> None:
    p = get_protocol("rest-5min")
    assert [(ph.kind, ph.duration_s) for ph in p.phases] == [(PhaseKind.REST, 300.0)]


def test_cmt_soothing_structure() -> None:
    p = get_protocol("cmt-soothing")
    assert p.total_duration_s == 25 * 60
    assert [(ph.kind, ph.duration_s) for ph in p.phases] == [
        (PhaseKind.REST, 300),
        (PhaseKind.BREATHING, 300),
        (PhaseKind.IMAGERY, 360),
        (PhaseKind.RECALL, 120),
        (PhaseKind.REFOCUS, 240),
        (PhaseKind.RECOVERY, 180),
    ]
    breathing = p.phases[1]
    assert breathing.pacer is not None and breathing.pacer.rate_bpm == pytest.approx(6.0, abs=0.5)
    assert p.phases[3].feedback is FeedbackMode.HIDDEN
    imagery_text = " ".join(x.text for x in p.phases[2].prompts).lower()
    for quality in ("wis", "strength", "warm", "judge", "look", "voice", "relate"):
        assert quality in imagery_text


def test_cmt_grounding_offers_grounding_before_or_instead_of_breathing() -> None:
    p = get_protocol("cmt-grounding")
    kinds = [ph.kind for ph in p.phases]
    assert PhaseKind.GROUNDING in kinds
    g = kinds.index(PhaseKind.GROUNDING)
    assert all(ph.pacer is None for ph in p.phases[: g + 1])
    text = (p.phases[g].prompt + " ".join(x.text for x in p.phases[g].prompts)).lower()
    assert "texture" in text and "weight" in text
    assert p.phase_named("self-critical-recall").feedback is FeedbackMode.HIDDEN


def test_resonance_assessment_rates_and_rests() -> None:
    p = get_protocol("resonance-assessment")
    paced = [ph for ph in p.phases if ph.pacer is not None]
    assert [ph.pacer.rate_bpm for ph in paced] == [6.5, 6.0, 5.5, 5.0, 4.5]  # type: ignore[union-attr]
    assert all(110 <= ph.duration_s <= 130 for ph in paced)
    assert p.phases[0].kind is PhaseKind.REST and p.phases[0].pacer is None
    for before, after in zip(p.phases[1:], p.phases[2:], strict=False):
        if before.pacer is not None and after is not p.phases[-1]:
            assert after.kind is PhaseKind.REST and 45 <= after.duration_s <= 75


def test_sham_control_mirrors_cmt_soothing_with_sham_feedback() -> None:
    soothing, sham = get_protocol("cmt-soothing"), get_protocol("sham-control")
    assert len(sham.phases) == len(soothing.phases)
    for a, b in zip(soothing.phases, sham.phases, strict=True):
        expected = FeedbackMode.SHAM if a.feedback is FeedbackMode.LIVE else a.feedback
        assert b == replace(a, feedback=expected)
    assert any(ph.feedback is FeedbackMode.SHAM for ph in sham.phases)


@pytest.mark.parametrize(
    "name", ["rest-5min", "cmt-soothing", "cmt-grounding", "resonance-assessment", "sham-control"]
)
def test_participant_text_is_gentle(name: str) -> None:
    p = get_protocol(name)
    texts = _participant_text(p)
    for t in texts:
        assert not FORBIDDEN.search(t), t
        assert not re.search(r"\d+\s*(%|points?)", t), t
    joined = " ".join(texts).lower()
    assert "pause" in joined
    assert any(w in joined for w in ("wander", "drift"))
    assert not any(ph.show_numbers for ph in p.phases)


def test_get_protocol_from_path_and_unknown(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\n' + phase("x"), encoding="utf-8")
    assert get_protocol(f).name == "mine" and get_protocol(str(f)).name == "mine"
    with pytest.raises(UnknownProtocolError, match="did you mean 'cmt-soothing'"):
        get_protocol("cmt-sothing")
    with pytest.raises(UnknownProtocolError, match="file not found"):
        get_protocol(tmp_path / "absent.toml")
