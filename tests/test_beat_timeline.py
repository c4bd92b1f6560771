"""Beat times under a real strap's timing: property tests of the live and the whole-session reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devices.strap_timing import StrapTiming, deliveries
from recordings.beat_timeline import (
    LIVE_SLEW_FRACTION,
    LiveBeatTimeline,
    Notification,
    fit_beat_times,
)


def true_beats(duration_s: float, mean_rr_s: float, rng: np.random.Generator) -> np.ndarray:
    """Beat times with respiratory and random variability (RR 0.3–2 s)."""
    n = int(duration_s / mean_rr_s) + 2
    k = np.arange(n)
    rr = mean_rr_s * (1 + 0.06 * np.sin(2 * np.pi * k * mean_rr_s / 4.5)) + rng.normal(0, 0.02, n)
    rr = np.clip(rr, 0.3, 2.0)
    return 1.0 + np.concatenate([[0.0], np.cumsum(rr)])


def notes_of(ds) -> list[Notification]:
    return [Notification(i, d.arrival, d.rr_1024) for i, d in enumerate(ds)]


def live_rows(notes: list[Notification]):
    tl = LiveBeatTimeline()
    rows = []
    for n in notes:
        if n.break_before:
            tl.mark_gap(n.break_before)
        rows += tl.add(n.t, n.rr_1024, n.packet_id)
    return rows


schedules = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31),
    "duration": st.floats(120.0, 600.0),
    "mean_rr": st.floats(0.4, 1.4),
    "drift": st.floats(-50.0, 50.0),
    "latency": st.floats(0.0, 0.3),
    "bunch": st.floats(0.0, 0.2),
    "skipped": st.floats(0.0, 0.1),
    "first_delay": st.floats(0.0, 1.0),
})


def smallest_delay(beats: np.ndarray, ds) -> float:
    """The least (beat-to-notification + transport) delay of any notification: the documented bias limit."""
    return min(d.arrival - beats[d.beat_index[-1]] for d in ds if d.beat_index)


def simulate(p: dict):
    rng = np.random.default_rng(p["seed"])
    beats = true_beats(p["duration"], p["mean_rr"], rng)
    timing = StrapTiming(drift_ppm=p["drift"], latency_s=(0.0, p["latency"]), bunch_fraction=p["bunch"],
                         skipped_tick_fraction=p["skipped"], first_delay_s=(0.0, p["first_delay"]))
    ds = deliveries(beats, timing, rng)
    order = [i for d in ds for i in d.beat_index]
    return beats, ds, np.array(order)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules)
# found by this test on a loaded CI run: a 555-s stretch whose last 15 s made a floor point of their own, high enough
# to tilt the drift to its +100 ppm bound (errors 67 ms); a short last block no longer gives a floor point
@example(p={"seed": 2_147_483_647, "duration": 555.0, "mean_rr": 1.2481989149415942, "drift": -6.0, "latency": 0.0,
            "bunch": 0.0625, "skipped": 0.0234375, "first_delay": 0.0})
def test_whole_session_fit_is_monotonic_spaced_by_rr_without_false_gaps(p):
    beats, ds, order = simulate(p)
    rows, stretches = fit_beat_times(notes_of(ds))
    t = np.array([r.t for r in rows])
    rr = np.array([r.rr_ms for r in rows]) / 1000.0
    assert len(rows) == len(order)
    assert np.all(np.diff(t) > 0)
    assert [r.gap_before for r in rows].count(True) == 1 and len(stretches) == 1
    b = 1 + np.nan_to_num(stretches[0].drift_ppm) * 1e-6  # unknown drift: fitted with b = 1
    np.testing.assert_allclose(np.diff(t), b * rr[1:], atol=1e-6)  # spacing is the RR, by construction
    assert all(r.arrival_lag_s >= -1e-9 for r in rows)  # never after its notification
    # error against the truth: the line rests on the least-delayed notifications (documented limit)
    err = t - beats[order]
    assert np.max(np.abs(err)) <= smallest_delay(beats, ds) + 0.06
    drift = stretches[0].drift_ppm
    assert np.isnan(drift) or abs(drift - (-p["drift"])) <= 1e6 * 0.15 / p["duration"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules)
def test_live_timeline_is_monotonic_and_never_moves_spacing_more_than_documented(p):
    beats, ds, order = simulate(p)
    rows = live_rows(notes_of(ds))
    t = np.array([r.t for r in rows])
    rr = np.array([r.rr_ms for r in rows]) / 1000.0
    assert np.all(np.diff(t) > 0)
    assert [r.gap_before for r in rows].count(True) == 1
    np.testing.assert_allclose(np.diff(t), rr[1:], rtol=LIVE_SLEW_FRACTION + 1e-9, atol=1e-9)
    # once the anchor has settled (the late first notification slewed out), live times are close to the truth
    err = t - beats[order]
    # at the end, live times are as close to the truth as the recent notifications allow (+ what is still slewing)
    end = ds[-1].arrival
    recent = min(d.arrival - beats[d.beat_index[-1]] for d in ds if d.beat_index and d.arrival > end - 100.0)
    assert np.max(np.abs(err[t > end - 20.0])) <= recent + 0.2


def test_one_very_late_notification_is_not_a_gap():
    rng = np.random.default_rng(1)
    beats = true_beats(300.0, 0.8, rng)
    ds = deliveries(beats, StrapTiming(), rng)
    i = len(ds) // 2
    late = [d if j != i else type(d)(d.arrival + 4.0, d.rr_1024, d.beat_index) for j, d in enumerate(ds)]
    late = [type(d)(max(d.arrival, late[j - 1].arrival if j else 0), d.rr_1024, d.beat_index)
            for j, d in enumerate(late)]  # BLE stays in order: the following ones wait too
    for rows in (live_rows(notes_of(late)), fit_beat_times(notes_of(late))[0]):
        assert [r.gap_before for r in rows].count(True) == 1


def test_missing_beats_start_a_new_stretch_and_no_interval_is_invented():
    rng = np.random.default_rng(2)
    beats = true_beats(400.0, 0.9, rng)
    ds = deliveries(beats, StrapTiming(bunch_fraction=0.0), rng)
    i = len(ds) // 2
    while len(ds[i].rr_1024) < 2:
        i += 1
    # the strap lost two beats without telling (no disconnect, no contact flag)
    for j in (i, i + 1, i + 2):
        ds[j] = type(ds[j])(ds[j].arrival, (), ())
    rows, stretches = fit_beat_times(notes_of(ds))
    assert [s.reason for s in stretches] == ["start", "missing beats"]
    first_after = next(r for r in rows if r.gap_before and r is not rows[0])
    assert first_after.packet_id in (i + 3, i + 4)
    truth_of = {j: idx for j, d in enumerate(ds) for idx in d.beat_index}
    # after the break the beats are anchored anew, on the truth again
    t_after = np.array([r.t for r in rows if r.t >= first_after.t])
    true_after = beats[[truth_of[r.packet_id] for r in rows if r.t >= first_after.t]]
    assert np.median(np.abs(t_after - true_after)) < 0.2
    live = live_rows(notes_of(ds))
    assert [r.gap_before for r in live].count(True) == 2


def test_explicit_breaks_and_drift_share_one_slope():
    rng = np.random.default_rng(3)
    beats = true_beats(1800.0, 0.85, rng)
    ds = deliveries(beats, StrapTiming(drift_ppm=40.0), rng)
    notes = notes_of(ds)
    k = len(notes) // 3
    notes[k] = Notification(notes[k].packet_id, notes[k].t, notes[k].rr_1024, "disconnect")
    notes[2 * k] = Notification(notes[2 * k].packet_id, notes[2 * k].t, notes[2 * k].rr_1024, "contact")
    rows, stretches = fit_beat_times(notes)
    assert [s.reason for s in stretches] == ["start", "disconnect", "contact"]
    assert len({round(s.drift_ppm, 9) for s in stretches}) == 1
    t = np.array([r.t for r in rows])
    assert np.all(np.diff(t) > 0)
    order = np.array([i for d in ds for i in d.beat_index])
    assert np.median(np.abs(t - beats[order])) < 0.03


def test_drift_of_an_hour_is_estimated_not_accumulated():
    rng = np.random.default_rng(4)
    beats = true_beats(3600.0, 0.85, rng)
    ds = deliveries(beats, StrapTiming(drift_ppm=40.0), rng)
    rows, (stretch,) = fit_beat_times(notes_of(ds))
    assert stretch.drift_ppm == pytest.approx(-40.0, abs=30.0)  # strap fast: session s per strap s < 1
    order = np.array([i for d in ds for i in d.beat_index])
    err = np.array([r.t for r in rows]) - beats[order]
    assert np.max(np.abs(err)) < 0.1  # 40 ppm accumulated over the hour would be 144 ms
