"""The protocol runner: exact marker times under any update schedule, pauses, skips, stops, deadlines."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.library import get_protocol
from protocols.model import Pacer, Phase, PhaseKind, Protocol, TimedPrompt
from protocols.runner import Marker, ProtocolRunner

T0 = 12.25


def make_protocol() -> Protocol:
    return Protocol(
        "test",
        "",
        (
            Phase(
                "rest", PhaseKind.REST, 30.0, prompts=(TimedPrompt(0, "welcome"), TimedPrompt(10.5, "settle"))
            ),
            Phase("breathe", PhaseKind.BREATHING, 45.5, pacer=Pacer(6.0)),
            Phase(
                "image", PhaseKind.IMAGERY, 20.0, prompts=(TimedPrompt(5, "look"), TimedPrompt(15, "voice"))
            ),
        ),
    )


def run_all(runner: ProtocolRunner, times: list[float]) -> list[Marker]:
    out: list[Marker] = []
    for t in times:
        out += runner.update(t)
    return out


def kinds(markers: list[Marker]) -> list[tuple[str, str | None]]:
    return [(m.kind, m.phase_name) for m in markers]


def boundary_times(markers: list[Marker], kind: str) -> list[float]:
    return [m.t for m in markers if m.kind == kind]


def test_start_emits_session_and_first_phase_and_prompt_at_zero() -> None:
    r = ProtocolRunner(make_protocol())
    ms = r.start(T0)
    assert kinds(ms) == [("session_start", None), ("phase_start", "rest"), ("prompt", "rest")]
    assert all(m.t == T0 for m in ms)
    assert ms[1].phase_index == 0 and ms[1].detail["planned_s"] == 30.0 and ms[1].detail["kind"] == "rest"
    assert ms[2].label == "welcome"
    assert ms[0].detail["planned_s"] == make_protocol().total_duration_s
    assert r.next_deadline() == T0 + 10.5


def test_full_run_sequence_and_exact_times() -> None:
    p = make_protocol()
    r = ProtocolRunner(p)
    ms = r.start(T0) + r.update(T0 + 1000.0)
    assert kinds(ms) == [
        ("session_start", None), ("phase_start", "rest"), ("prompt", "rest"), ("prompt", "rest"),
        ("phase_end", "rest"), ("phase_start", "breathe"), ("phase_end", "breathe"),
        ("phase_start", "image"), ("prompt", "image"), ("prompt", "image"), ("phase_end", "image"),
        ("session_end", None),
    ]  # fmt: skip
    assert boundary_times(ms, "phase_start") == [T0, T0 + 30.0, T0 + 75.5]
    assert boundary_times(ms, "phase_end") == [T0 + 30.0, T0 + 75.5, T0 + 95.5]
    assert boundary_times(ms, "prompt") == [T0, T0 + 10.5, T0 + 80.5, T0 + 90.5]
    assert boundary_times(ms, "session_end") == [T0 + 95.5]
    assert ms[-1].detail["ended"] == "completed"
    assert r.finished and r.next_deadline() is None and r.update(T0 + 2000) == []
    assert [m.t for m in ms] == sorted(m.t for m in ms)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 40.0), min_size=1, max_size=60))
def test_markers_do_not_depend_on_update_schedule(gaps: list[float]) -> None:
    reference = ProtocolRunner(make_protocol())
    expected = reference.start(T0) + reference.update(T0 + 500.0)
    r = ProtocolRunner(make_protocol())
    times = [*list(itertools.accumulate(gaps, initial=T0))[1:], T0 + 500.0]
    got = r.start(T0) + run_all(r, times)
    assert got == expected
    # every marker is returned by the first update at or after its time, never earlier
    r2 = ProtocolRunner(make_protocol())
    r2.start(T0)
    last = T0
    for t in times:
        for m in r2.update(t):
            assert last <= m.t <= t
        last = t


def test_state_tracks_last_time() -> None:
    r = ProtocolRunner(make_protocol())
    assert not r.state.started and r.state.phase is None
    r.start(0.0)
    r.update(40.0)
    s = r.state
    assert (s.phase_index, s.phase.name, s.elapsed_in_phase_s, s.remaining_in_phase_s) == (
        1,
        "breathe",
        10.0,
        35.5,
    )
    assert not s.paused and not s.finished and s.t == 40.0


def test_pause_resume_shifts_later_boundaries_and_prompts() -> None:
    r = ProtocolRunner(make_protocol())
    ms = r.start(0.0) + r.update(5.0)
    ms += r.pause(8.0)
    assert r.next_deadline() is None and r.state.paused
    ms += r.update(100.0)  # nothing happens while paused
    assert r.state.elapsed_in_phase_s == 8.0 and r.state.remaining_in_phase_s == 22.0
    ms += r.resume(108.0)
    assert r.next_deadline() == 110.5
    ms += r.update(1000.0)
    pause = next(m for m in ms if m.kind == "pause")
    resume = next(m for m in ms if m.kind == "resume")
    assert (pause.t, pause.phase_name, pause.detail["elapsed_s"]) == (8.0, "rest", 8.0)
    assert (resume.t, resume.detail["paused_s"]) == (108.0, 100.0)
    assert boundary_times(ms, "prompt") == [0.0, 110.5, 180.5, 190.5]
    assert boundary_times(ms, "phase_end") == [130.0, 175.5, 195.5]
    end_rest = next(m for m in ms if m.kind == "phase_end" and m.phase_name == "rest")
    assert end_rest.detail == {"planned_s": 30.0, "elapsed_s": 30.0, "paused_s": 100.0, "ended": "completed"}


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 95 * 4), st.integers(1, 200)), max_size=6, unique_by=lambda x: x[0]),
    st.lists(st.floats(0.01, 30.0), max_size=30),
)
def test_boundaries_equal_start_plus_durations_plus_pauses(
    pauses: list[tuple[int, int]], gaps: list[float]
) -> None:
    """Phase k starts at t0 + planned start + total pause length before it, whatever the update schedule."""
    p = make_protocol()
    pauses = sorted((q / 4, float(length)) for q, length in pauses)  # active-time position, pause length
    r = ProtocolRunner(p)
    ms = r.start(T0)
    shift, gap_iter = 0.0, iter(gaps)
    for at_active, length in pauses:
        t_pause = T0 + at_active + shift
        last = r.state.t or T0
        gap = next(gap_iter, None)
        if gap is not None and last + gap < t_pause:
            ms += r.update(last + gap)
        ms += r.pause(t_pause) + r.resume(t_pause + length)
        shift += length
    ms += r.update(T0 + 10_000.0)

    def pauses_before(active: float) -> float:
        return sum(length for at, length in pauses if at < active)

    planned_starts = [*p.phase_starts_s, p.total_duration_s]
    assert boundary_times(ms, "phase_start") == pytest.approx(
        [T0 + s + pauses_before(s) for s in planned_starts[:-1]], abs=1e-9
    )
    assert boundary_times(ms, "phase_end") == pytest.approx(
        [T0 + s + pauses_before(s) for s in planned_starts[1:]], abs=1e-9
    )
    prompt_active = [
        s + tp.at_s for s, ph in zip(p.phase_starts_s, p.phases, strict=True) for tp in ph.prompts
    ]
    assert boundary_times(ms, "prompt") == pytest.approx(
        [T0 + a + pauses_before(a) for a in prompt_active], abs=1e-9
    )
    assert sum(m.detail["paused_s"] for m in ms if m.kind == "phase_end") == pytest.approx(shift)


def test_pause_at_exact_boundary_belongs_to_next_phase() -> None:
    r = ProtocolRunner(make_protocol())
    r.start(0.0)
    r.update(29.0)
    ms = r.pause(30.0)
    assert kinds(ms) == [("phase_end", "rest"), ("phase_start", "breathe"), ("pause", "breathe")]
    assert r.pause(31.0) == [] and r.state.paused  # pausing twice is harmless


def test_skip_ends_phase_early_and_rebases_later_phases() -> None:
    r = ProtocolRunner(make_protocol())
    ms = r.start(0.0) + r.update(20.0)
    skipped = r.skip(40.0)
    assert kinds(skipped) == [
        ("phase_end", "rest"),
        ("phase_start", "breathe"),
        ("skip", "breathe"),
        ("phase_end", "breathe"),
        ("phase_start", "image"),
    ]
    ms += skipped
    tail = r.update(1000.0)
    all_ms = ms + tail
    skip = next(m for m in all_ms if m.kind == "skip")
    assert (skip.t, skip.phase_name, skip.detail["elapsed_s"], skip.detail["remaining_s"]) == (
        40.0,
        "breathe",
        10.0,
        35.5,
    )
    end_breathe = next(m for m in all_ms if m.kind == "phase_end" and m.phase_name == "breathe")
    assert (end_breathe.t, end_breathe.detail["ended"], end_breathe.detail["elapsed_s"]) == (
        40.0,
        "skipped",
        10.0,
    )
    assert boundary_times(all_ms, "phase_start") == [0.0, 30.0, 40.0]
    assert boundary_times(all_ms, "prompt")[-2:] == [45.0, 55.0]
    assert boundary_times(all_ms, "session_end") == [60.0]


def test_skip_last_phase_ends_session_and_skip_while_paused_stays_paused() -> None:
    p = make_protocol()
    r = ProtocolRunner(p)
    r.start(0.0)
    r.pause(5.0)
    ms = r.skip(9.0)
    assert kinds(ms) == [("skip", "rest"), ("phase_end", "rest"), ("phase_start", "breathe")]
    assert ms[1].detail["paused_s"] == 4.0 and r.state.paused and r.state.phase_index == 1
    r.resume(19.0)
    assert r.next_deadline() == 19.0 + 45.5
    r.skip(20.0)
    ms = r.skip(21.0)
    assert kinds(ms) == [("skip", "image"), ("phase_end", "image"), ("session_end", None)]
    assert r.finished and r.skip(22.0) == [] and r.stop(23.0) == []


def test_stop_is_recorded_neutrally_and_ends_session() -> None:
    r = ProtocolRunner(make_protocol())
    r.start(0.0)
    ms = r.stop(50.0, reason="participant chose to stop")
    assert kinds(ms[-3:]) == [("stop", "breathe"), ("phase_end", "breathe"), ("session_end", None)]
    # the prompt and boundary passed before the stop are still marked, at their own times
    assert kinds(ms[:3]) == [("prompt", "rest"), ("phase_end", "rest"), ("phase_start", "breathe")]
    assert [m.t for m in ms[:3]] == [10.5, 30.0, 30.0]
    stop = ms[-3]
    assert stop.t == 50.0 and stop.label == "stopped: participant chose to stop"
    assert stop.detail["reason"] == "participant chose to stop" and stop.detail["elapsed_s"] == 20.0
    assert ms[-2].detail["ended"] == "stopped" and ms[-1].detail["ended"] == "stopped"
    for m in ms:
        text = (m.label + " " + " ".join(map(str, m.detail.values()))).lower()
        assert not any(w in text for w in ("fail", "abort", "error", "incomplete"))
    assert r.finished and r.state.finished and r.update(60.0) == [] and r.next_deadline() is None


def test_stop_while_paused_counts_pause() -> None:
    r = ProtocolRunner(make_protocol())
    r.start(0.0)
    r.pause(4.0)
    ms = r.stop(10.0)
    assert ms[0].label == "stopped" and ms[1].detail["paused_s"] == 6.0 and ms[1].detail["elapsed_s"] == 4.0


def test_sleeping_until_each_deadline_hits_every_marker_exactly() -> None:
    p = get_protocol("cmt-soothing")
    r = ProtocolRunner(p)
    ms = r.start(100.0)
    n_updates = 0
    while (deadline := r.next_deadline()) is not None:
        batch = r.update(deadline)
        n_updates += 1
        assert batch and all(m.t == deadline for m in batch)
        ms += batch
    assert ms[-1].kind == "session_end" and ms[-1].t == pytest.approx(100.0 + p.total_duration_s)
    n_prompts = sum(len(ph.prompts) for ph in p.phases)
    assert len([m for m in ms if m.kind == "prompt"]) == n_prompts
    assert n_updates <= n_prompts + len(p.phases)


def test_invalid_calls_raise_clear_errors() -> None:
    r = ProtocolRunner(make_protocol())
    for call in (r.update, r.pause, r.resume, r.skip, r.stop):
        with pytest.raises(RuntimeError, match="not been started"):
            call(1.0)
    r.start(5.0)
    with pytest.raises(RuntimeError, match="already been started"):
        r.start(6.0)
    r.update(10.0)
    with pytest.raises(ValueError, match="backwards"):
        r.update(9.0)
    with pytest.raises(ValueError, match="finite"):
        r.update(float("nan"))
    assert r.resume(11.0) == []  # resume when not paused is harmless
