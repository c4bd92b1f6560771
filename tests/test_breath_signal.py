"""The chest-movement breathing waveform (recordings.breathing) and breath-by-breath RSA / pacer compliance."""

from __future__ import annotations

import numpy as np
import pytest

from biofeedback.analysis.breath_cycles import (
    breath_cycles,
    pacer_compliance_pct,
    phase_breaths,
    rsa_per_cycle,
)
from biofeedback.analysis.hrv import corrected_beats
from recordings.breathing import MIN_STRETCH_S, breathing_waveform
from recordings.ecg_time import EcgTimeline

FS = 50.0
DIRECTION = np.array([0.6, -0.48, 0.64])  # unit vector, not an axis


def lung(t: np.ndarray, hz: float = 0.25) -> np.ndarray:
    return np.sin(2 * np.pi * hz * t)


def acc_timeline(stretches: list[tuple[float, float]], hz: float = 0.25, seed: int = 0) -> EcgTimeline:
    """ACC (mG) of a strap on a breathing chest: gravity, 8 mG of breathing along DIRECTION, heartbeat, noise."""
    rng = np.random.default_rng(seed)
    ts, segs = [], []
    for i, (a, b) in enumerate(stretches):
        t = np.arange(a, b, 1 / FS)
        ts.append(t)
        segs.append(np.full(len(t), i))
    t = np.concatenate(ts)
    gravity = np.array([30.0, -990.0, 120.0]) + 5.0 * np.sin(2 * np.pi * 0.003 * t)[:, None]  # slow posture drift
    breathing = 8.0 * lung(t, hz)[:, None] * DIRECTION
    heart = 3.0 * np.sin(2 * np.pi * 1.2 * t)[:, None] * np.array([0.0, 0.0, 1.0])
    uv = gravity + breathing + heart + rng.normal(0, 1.0, (len(t), 3))
    return EcgTimeline(t=t, uv=uv, segment=np.concatenate(segs), fs_hz=FS, fs_device_hz=FS, nominal_fs_hz=FS,
                       drift_ppm=0.0, min_latency_s=0.0, median_latency_s=0.0)  # fmt: skip


def test_waveform_follows_the_breathing_on_a_fixed_grid_and_keeps_gaps_as_gaps():
    acc = acc_timeline([(0.3, 200.0), (230.0, 400.0), (420.0, 430.0)])  # the last stretch is too short
    wf = breathing_waveform(acc, 25.0)
    assert wf.fs_hz == 25.0 and wf.t0 == pytest.approx(0.32)  # first multiple of 1/25 s at or after 0.3 s
    t = wf.t
    assert np.allclose(t * 25.0, np.round(t * 25.0))
    gap = (t > 200.0) & (t < 230.0)
    short = t >= 420.0
    assert np.all(np.isnan(wf.values[gap])) and np.all(np.isnan(wf.values[short]))
    assert np.all(np.isfinite(wf.values[(t <= 199.96) | ((t >= 230.0) & (t <= 399.96))]))
    assert len(wf.directions) == 2
    for d in wf.directions:
        assert np.array(d) @ DIRECTION == pytest.approx(1.0, abs=0.01)  # the principal axis, same sign both sides
    for a, b in [(10.0, 190.0), (240.0, 390.0)]:  # away from the filter's edge transients
        inside = (t >= a) & (t < b)
        assert np.corrcoef(wf.values[inside], lung(t[inside]))[0, 1] > 0.98
        assert np.std(wf.values[inside]) == pytest.approx(8.0 / np.sqrt(2), rel=0.1)  # mG along the chest axis


def test_waveform_on_a_given_grid():
    acc = acc_timeline([(0.0, 100.0)])
    wf = breathing_waveform(acc, 30.0, start_s=-2.0, n=3200)
    assert len(wf.values) == 3200 and wf.t0 == -2.0
    assert np.all(np.isnan(wf.values[wf.t < 0])) and np.all(np.isnan(wf.values[wf.t > 100.0]))
    assert MIN_STRETCH_S <= 20.0
    with pytest.raises(ValueError, match="waveform rate"):
        breathing_waveform(acc, 1.0)


def _beats(seconds: float, hr: callable) -> tuple[np.ndarray, np.ndarray]:
    t, ts, rrs = 0.0, [], []
    while t < seconds:
        rr = 60.0 / hr(t)
        t += rr
        ts.append(t)
        rrs.append(rr * 1000.0)
    return np.array(ts), np.array(rrs)


def test_rsa_per_breath_is_the_peak_to_trough_heart_rate_and_compliance_counts_breaths_near_the_pacer():
    # breathing alternates 10 s and 12.5 s breaths (6 and 4.8/min); HR swings ±6 bpm with each breath
    durations = np.tile([10.0, 12.5], 14)
    edges = np.concatenate([[0.0], np.cumsum(durations)])
    t = np.arange(0, edges[-1], 1 / 25)
    k = np.searchsorted(edges, t, side="right") - 1
    phase = (t - edges[k]) / durations[k]
    values = -np.cos(2 * np.pi * phase)  # troughs at each breath's start
    cycles = breath_cycles(t, values, 60.0 / 11.25)
    starts = np.array([a for a, _ in cycles])
    assert len(cycles) == len(durations) - 2  # the troughs at the very start and end are not found as troughs
    assert np.allclose(starts, edges[1:-2], atol=0.05)
    assert pacer_compliance_pct(np.array([b - a for a, b in cycles]), 6.0) == pytest.approx(100 * 13 / 26)

    def hr(x: float) -> float:
        i = min(np.searchsorted(edges, x, side="right") - 1, len(durations) - 1)
        return 65.0 - 6.0 * np.cos(2 * np.pi * (x - edges[i]) / durations[i])

    bt, rr = _beats(edges[-1] + 5, hr)
    nn = corrected_beats(bt, rr, "none")
    rsa = rsa_per_cycle(cycles, nn)
    assert np.all(np.isfinite(rsa))
    assert np.median(rsa) == pytest.approx(12.0, abs=1.0)  # 2 × 6 bpm, a little less as beats sample the swing
    rr_gap = rr.copy()
    rr_gap[30] = np.nan  # a lost interval: that breath has no RSA
    rsa_gap = rsa_per_cycle(cycles, corrected_beats(bt, rr_gap, "none"))
    assert np.isnan(rsa_gap).sum() == 1


def test_phase_breaths_end_to_end_and_too_few_breaths():
    acc = acc_timeline([(0.0, 300.0)], hz=0.1)
    wf = breathing_waveform(acc)
    bt, rr = _beats(300.0, lambda x: 62.0 + 8.0 * np.sin(2 * np.pi * 0.1 * x))
    nn = corrected_beats(bt, rr, "none")
    paced = phase_breaths(wf, nn, 20.0, 280.0, 6.0, 6.0)
    assert len(paced.cycles) == 25
    assert paced.pacer_compliance_pct == 100.0
    assert paced.rsa_p2t_bpm == pytest.approx(16.0, abs=1.5)
    off = phase_breaths(wf, nn, 20.0, 280.0, 6.0, 7.5)  # a pacer at 7.5/min: 8 s breaths, none within ±10 %
    assert off.pacer_compliance_pct == 0.0
    free = phase_breaths(wf, nn, 20.0, 280.0, 6.0, None)
    assert free.pacer_compliance_pct is None and free.rsa_p2t_bpm == paced.rsa_p2t_bpm
    short = phase_breaths(wf, nn, 100.0, 125.0, 6.0, 6.0)
    assert short.rsa_p2t_bpm is None and short.pacer_compliance_pct is None
    assert "need ≥ 3" in short.notes[0]


# -- through a recorded session -----------------------------------------------------------------------------


SHORT_PROTOCOL = """
name = "rest-then-paced"
description = "Four minutes at rest, then five minutes with a 6/min pacer."
version = "1"

[[phase]]
name = "baseline"
kind = "rest"
duration = "4min"

[[phase]]
name = "paced"
kind = "breathing"
duration = "5min"
[phase.pacer]
rate_bpm = 6.0
ratio = "4:6"
"""


def record(path, participant):
    """The short protocol with ACC on one simulated strap, on virtual time: (store, session id, strap)."""
    from biofeedback.live.recorder import build_session, parse_device_specs
    from devices.virtual_time import LoopClock, run_virtual
    from protocols.loader import parse_protocol
    from recordings.store import Store

    store = Store(path)
    specs = parse_device_specs(["sim"], "P01")
    session = build_session(store, parse_protocol(SHORT_PROTOCOL), specs, clock=LoopClock(), acc=True,
                            participants={"P01": participant}, keep_history=True)  # fmt: skip
    (sid,) = run_virtual(session.run())
    return store, sid, session.straps[0].binding.link


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """With ACC: one participant following the 6/min pacer, one breathing at their own pace."""
    from devices.physiology import SimParticipant

    folder = tmp_path_factory.mktemp("breaths")
    made = {name: record(folder / f"{name}.sqlite", SimParticipant(seed=seed, complies_with_pacer=comply))
            for name, seed, comply in [("follows", 3, True), ("ignores", 5, False)]}  # fmt: skip
    yield made
    for store, _sid, _strap in made.values():
        store.close()


def test_analysis_counts_breaths_and_scores_pacer_compliance(sessions):
    from biofeedback.analysis.analyze import analyze_session

    results = {}
    for name, (store, sid, strap) in sessions.items():
        analysis = analyze_session(store, sid)
        (paced,) = [p for p in analysis.phases if p.pacer_rate_bpm is not None]
        free = [p for p in analysis.phases if p.pacer_rate_bpm is None]
        results[name] = paced
        for p in analysis.phases:
            # the breaths counted match the simulated participant's own breathing rate over the phase
            t = np.arange(p.start_s, p.end_s, 0.05)
            rising = np.flatnonzero(np.diff(np.sign(strap.model.breathing_signal(t))) > 0)
            assert p.n_breaths == pytest.approx(len(rising) - 1, abs=2), (name, p.name)
            assert p.acc_breathing_rate_bpm is not None and p.rsa_p2t_bpm is not None
        assert all(p.pacer_compliance_pct is None for p in free)
        row = analysis.to_dict()["phases"][1]
        assert {"rsa_p2t_bpm", "pacer_compliance_pct", "n_breaths", "acc_breathing_rate_bpm"} <= set(row)
    assert results["follows"].pacer_compliance_pct > 90.0
    assert results["ignores"].pacer_compliance_pct < 10.0
    assert results["follows"].acc_breathing_rate_bpm == pytest.approx(6.0, abs=0.3)
    # breathing at 6/min (near resonance) swings heart rate far more per breath than breathing at ~11/min
    assert results["follows"].rsa_p2t_bpm > 2 * results["ignores"].rsa_p2t_bpm


def test_breaths_reach_the_long_table_the_report_and_the_terminal(sessions, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    from biofeedback.analysis.analyze import analyze_session
    from biofeedback.analysis.report import render_report
    from biofeedback.study.long_table import write_long_table

    store, sid, _strap = sessions["follows"]
    analysis = analyze_session(store, sid)
    df = pd.read_csv(write_long_table(store, [sid], tmp_path))
    table = df.set_index(["phase", "index"]).value
    for p in analysis.phases:
        for name in ("rsa_p2t_bpm", "n_breaths", "acc_breathing_rate_bpm", "pacer_compliance_pct", "pacer_rate_bpm"):
            want = getattr(p, name)
            assert (np.isnan(table[(p.name, name)]) if want is None else
                    table[(p.name, name)] == pytest.approx(want, rel=1e-5)), (p.name, name)  # fmt: skip
    assert "group_sync_r" not in set(df["index"])  # recorded alone
    html = render_report(store, sid)
    assert "<h2>Breathing from chest movement</h2>" in html and "<h2>Group synchrony</h2>" not in html
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, str(root / "app.py"), "analyze", str(sid), "--store", str(store.path)],
                         cwd=root, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Breathing from chest movement" in out.stdout
    after = out.stdout[out.stdout.index("Breathing from chest movement"):].splitlines()
    paced_line = next(line for line in after if line.startswith("│ paced "))
    cells = [c.strip() for c in paced_line.strip("│").split("│")]
    p = analysis.phases[1]
    assert cells == ["paced", "6.0", f"{p.acc_breathing_rate_bpm:.1f}", str(p.n_breaths),
                     f"{p.pacer_compliance_pct:.0f}", f"{p.rsa_p2t_bpm:.1f}"]  # fmt: skip
