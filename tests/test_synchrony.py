"""Group synchrony: pairwise HR correlation on the shared clock, its Fisher-z mean, and the surrogate test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.signal import butter, sosfiltfilt

from biofeedback.analysis.synchrony import (
    GroupError,
    detrend,
    fisher_mean,
    group_synchrony,
    lagged_r,
    pairwise_r,
    phase_synchrony,
)
from recordings.store import Store

PHASES = [("baseline", "rest", 0.0, 300.0), ("together", "breathing", 300.0, 600.0), ("short", "rest", 600.0, 660.0)]


def slow_noise(rng: np.random.Generator, t: np.ndarray, band: tuple[float, float] = (0.01, 0.12)) -> np.ndarray:
    """Band-limited random fluctuation (unit SD): not periodic, so a circular shift cannot realign it by chance."""
    sos = butter(2, band, btype="bandpass", fs=4.0, output="sos")
    x = sosfiltfilt(sos, rng.normal(size=len(t)))
    return x / x.std()


def beats_from_hr(t_grid: np.ndarray, hr: np.ndarray, t0: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Beat times and RR (ms) of a heart following `hr` (bpm on `t_grid`)."""
    t, ts, rrs = t0, [], []
    while t < t_grid[-1] - 2.0:
        rr = 60.0 / float(np.interp(t, t_grid, hr))
        t += rr
        ts.append(t)
        rrs.append(rr * 1000.0)
    return np.array(ts), np.array(rrs)


def make_group(store: Store, n: int, shared: bool, seed: int, lost: tuple[float, float] | None = None) -> dict:
    """`n` participants recorded together; with `shared`, a common driven HR fluctuation (±4 bpm) in every heart."""
    rng = np.random.default_rng(seed)
    grid = np.arange(0.0, 662.0, 0.25)
    drive = slow_noise(rng, grid)
    group = store.new_group_id()
    ids = {}
    for k in range(n):
        own = slow_noise(rng, grid)
        breath = 0.2 + 0.08 * rng.uniform()
        rsa = 3.0 * np.sin(2 * np.pi * breath * grid + rng.uniform(0, 2 * np.pi))
        hr = 62.0 + 5 * k + 4.0 * (drive if shared else slow_noise(rng, grid)) + 2.5 * own + rsa - 0.005 * grid
        t, rr = beats_from_hr(grid, hr, 0.5 + 0.1 * k)
        keep = np.ones(len(t), bool) if lost is None or k else ~((t > lost[0]) & (t < lost[1]))
        gap = np.r_[True, np.diff(np.flatnonzero(keep)) > 1]
        pid = f"P0{k + 1}"
        sid = store.create_session(pid, "group-test", {"name": "group-test"}, f"sim-{k + 1}", source="simulated",
                                   group_id=group)  # fmt: skip
        store.add_beats(sid, [(float(a), float(b), bool(g), 0.05, None)
                              for a, b, g in zip(t[keep], rr[keep], gap, strict=True)])  # fmt: skip
        for i, (name, kind, start, end) in enumerate(PHASES):
            detail = {"kind": kind, "feedback": "live", "pacer_bpm": None}
            store.add_marker(sid, start, "phase_start", name, phase_index=i, phase_name=name, detail=detail)
            store.add_marker(sid, end, "phase_end", name, phase_index=i, phase_name=name, detail={"ended": "completed"})
        store.flush()
        store.end_session(sid)
        ids[pid] = sid
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("sync") / "store.sqlite") as s:
        yield s


def test_shared_driven_heart_rate_is_synchronous_beyond_chance(store):
    ids = make_group(store, 4, shared=True, seed=1, lost=(400.0, 440.0))
    result = group_synchrony(store, ids["P02"], n_surrogates=400)
    assert result.sessions == ids and result.seed == 0
    baseline, together, short = result.phases
    for phase in (baseline, together):
        assert phase.participants == ["P01", "P02", "P03", "P04"] and len(phase.pairs) == 6
        assert phase.mean_r > 0.25 and phase.p_value < 0.05
        assert abs(phase.surrogate_mean_r) < 0.15 and phase.surrogate_95_r < phase.mean_r
        own = [r for a, b, r, _ in phase.pairs if "P01" in (a, b)]
        assert len(own) == 3 and phase.participant_r("P01") == pytest.approx(fisher_mean(own))
        assert phase.participant_r("P01") > 0.2
    # P01 lost 40 s of beats in the second phase: its pairs have less joint time, the gap is not bridged
    joint = {(a, b): s for a, b, _r, s in together.pairs}
    assert joint[("P01", "P02")] == pytest.approx(300 - 40, abs=3)
    assert joint[("P02", "P03")] == pytest.approx(300, abs=3)
    assert short.mean_r is None and "needs ≥ 120 s" in short.notes[0]
    again = group_synchrony(store, ids["P01"], n_surrogates=400)
    assert [p.p_value for p in again.phases] == [p.p_value for p in result.phases]  # seeded
    assert again.to_dict()["phases"][0]["pairs"][0].keys() == {"a", "b", "r", "joint_s"}


def test_independent_hearts_are_not_called_synchronous(store):
    ids = make_group(store, 4, shared=False, seed=2)
    result = group_synchrony(store, ids["P01"], n_surrogates=400)
    for phase in result.phases[:2]:
        assert len(phase.pairs) == 6
        assert abs(phase.mean_r) < 0.25 and phase.p_value > 0.05


def test_independent_hearts_are_called_synchronous_about_as_often_as_the_test_level_says():
    """Under the null hypothesis few groups fall below p = 0.05 (measured: 5.5 % of 200 groups of three)."""
    rng = np.random.default_rng(7)
    grid = np.arange(0, 600, 0.25)
    ps = []
    for _ in range(100):
        series = {f"P{k}": slow_noise(rng, grid)[600:1800] for k in range(3)}  # 5 min of a longer recording
        ps.append(phase_synchrony(series, n_surrogates=500, seed=int(rng.integers(1 << 30)))[2])
    ps = np.array(ps)
    assert np.mean(ps < 0.05) <= 0.1 and 0.3 < np.median(ps) < 0.7


def test_pairwise_r_equals_pandas_pairwise_complete_correlation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 500))
    x[1] += 0.7 * x[0]
    x[2, 100:180] = np.nan
    x[3, 450:] = np.nan
    r, n = pairwise_r(x, 10)
    want = pd.DataFrame(x.T).corr(min_periods=10).to_numpy()
    np.testing.assert_allclose(r, want, atol=1e-12)
    assert n[0, 2] == 420 and n[2, 3] == 370
    assert fisher_mean([0.5, 0.5]) == pytest.approx(0.5) and fisher_mean([0.9, 0.0]) == pytest.approx(0.6268, abs=1e-4)
    r_lag, n_lag = lagged_r(x[0], x[2])  # every circular lag at once, against shifting and correlating one by one
    for d in (0, 1, 37, 499):
        r_d, n_d = pairwise_r(np.array([x[0], np.roll(x[2], d)]), 10)
        assert r_lag[d] == pytest.approx(r_d[0, 1], abs=1e-12) and n_lag[d] == n_d[0, 1]
    t = np.arange(0, 300, 0.25)
    fast, slow = np.sin(2 * np.pi * 0.1 * t), 3 * np.sin(2 * np.pi * 0.004 * t)
    clean = detrend(0.05 * t + slow + fast)  # the trend and the 250 s wave go, the 10 s rhythm stays
    inner = (t > 30) & (t < 270)
    assert np.corrcoef(clean[inner], fast[inner])[0, 1] > 0.99 and np.std(clean[inner] - fast[inner]) < 0.1
    gappy = 0.05 * t + fast
    gappy[400:420] = np.nan
    gappy[:250] = np.nan  # leaves a 37.5 s run: shorter than the high-pass can handle
    out = detrend(gappy)
    assert np.isnan(out[:420]).all() and np.isfinite(out[420:]).all()


def test_a_session_outside_a_group_is_refused(store):
    sid = store.create_session("P09", "solo", {}, "sim-1", source="simulated")
    store.end_session(sid)
    with pytest.raises(GroupError, match="not recorded as part of a group"):
        group_synchrony(store, sid)


# -- in the table export, the report and the command line ---------------------------------------------------


@pytest.fixture(scope="module")
def shared_group(store):
    return make_group(store, 3, shared=True, seed=4)


def test_long_table_carries_group_synchrony_per_session_and_phase(store, shared_group, tmp_path):
    from biofeedback.study.long_table import write_long_table

    solo = store.create_session("P08", "group-test", {}, "sim-9", source="simulated")
    store.add_beats(solo, [(float(t), 1000.0 + 30 * np.sin(t), t == 1, 0.05, None) for t in range(1, 121)])
    store.add_marker(solo, 0.0, "phase_start", "baseline", phase_index=0, phase_name="baseline",
                     detail={"kind": "rest"})  # fmt: skip
    store.add_marker(solo, 120.0, "phase_end", "baseline", phase_index=0, phase_name="baseline", detail={})
    store.end_session(solo)
    path = write_long_table(store, [*shared_group.values(), solo], tmp_path)
    df = pd.read_csv(path)
    expected = group_synchrony(store, shared_group["P01"])
    for pid, sid in shared_group.items():
        mine = df[df.session_id == sid].set_index(["phase_index", "index"]).value
        for ph in expected.phases:
            if ph.mean_r is None:
                assert np.isnan(mine[(ph.phase_index, "group_sync_r")])
                continue
            assert mine[(ph.phase_index, "group_sync_r")] == pytest.approx(ph.mean_r, abs=1e-5)
            assert mine[(ph.phase_index, "group_sync_p")] == pytest.approx(ph.p_value, abs=1e-5)
            assert mine[(ph.phase_index, "group_sync_n")] == 3
            assert mine[(ph.phase_index, "participant_sync_r")] == pytest.approx(ph.participant_r(pid), abs=1e-5)
    assert not df[df.session_id == solo]["index"].str.startswith("group_sync").any()


def test_report_shows_group_synchrony_only_for_group_sessions(store, shared_group):
    from biofeedback.analysis.report import synchrony_section

    text = synchrony_section(store, shared_group["P02"], "kubios")
    assert "<h2>Group synchrony</h2>" in text and "P02&#x27;s mean r" in text and "P01, P02, P03" in text
    solo = store.create_session("P07", "solo", {}, "sim-1", source="simulated")
    store.end_session(solo)
    assert synchrony_section(store, solo, "kubios") == ""


def test_cli_analyze_group(store, shared_group):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    store.flush()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(root / "app.py"), "analyze", *args, "--store", str(store.path)],
                              cwd=root, capture_output=True, text=True, timeout=120)  # fmt: skip

    out = run(str(shared_group["P03"]), "--group", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["sessions"] == shared_group and data["seed"] == 0
    assert [p["name"] for p in data["phases"]] == [name for name, *_ in PHASES]
    assert data["phases"][1]["p_value"] < 0.05 and len(data["phases"][1]["pairs"]) == 3
    table = run(str(shared_group["P03"]), "--group")
    assert table.returncode == 0, table.stderr
    assert "Group synchrony" in table.stdout and "Pairwise heart-rate correlation" in table.stdout
    solo = store.create_session("P06", "solo", {}, "sim-1", source="simulated")
    store.end_session(solo)
    refused = run(str(solo), "--group")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [f"error: session {solo} was not recorded as part of a group session"]
