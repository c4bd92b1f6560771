"""ECG beats: neurokit2 R peaks on the session clock, sub-sample, never across a gap; agreement with the strap."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

import app
from biofeedback.analysis.analyze import analyze_session
from biofeedback.analysis.ecg_beats import (
    NoEcgError,
    detect_r_peaks,
    ecg_beat_times,
    ecg_beats,
    match_beats,
    session_agreement,
)
from biofeedback.analysis.report import render_report
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.ecg_synth import ecg_samples
from devices.physiology import REST_GUIDE, BeatModel, SimParticipant
from devices.polar_pmd import datetime_to_pmd_time
from devices.simulator import SimFaults
from devices.virtual_time import LoopClock, run_virtual
from protocols.model import Phase, PhaseKind, Protocol
from recordings.import_polar import import_polar
from recordings.store import Store

PROTOCOL = Protocol("ecg-test", "rest and paced", (Phase("rest", PhaseKind.REST, 150.0),
                                                   Phase("paced", PhaseKind.REST, 150.0)))  # fmt: skip
DISCONNECT = (100.0, 10.0)
CONTACT_LOSS = (200.0, 15.0)


@pytest.fixture(scope="module")
def sim_session(tmp_path_factory):
    """5 min of a simulated H10 with ECG (virtual time), a 10 s disconnect, 15 s without skin contact (the ECG is
    noise then), and beats the strap misses."""
    path = tmp_path_factory.mktemp("ecgbeats") / "store.sqlite"
    store = Store(path)
    session = build_session(store, PROTOCOL, parse_device_specs(["sim"], "P01"), clock=LoopClock(), ecg=True,
                            participants={"P01": SimParticipant(seed=4, missed_beat_rate=0.01)},
                            faults={"P01": SimFaults(disconnects=[DISCONNECT], contact_loss=[CONTACT_LOSS])},
                            keep_history=True)  # fmt: skip
    (sid,) = run_virtual(session.run())
    truth = np.array(session.straps[0].binding.link.true_beat_times())
    store.close()
    return path, sid, truth


def test_r_peaks_are_located_between_samples():
    model = BeatModel(SimParticipant(seed=2))
    beats, t = [], 0.0
    while t < 65.0:
        t = model.next_beat(t, REST_GUIDE).t_beat
        beats.append(t)
    fs = 130.16
    ecg = ecg_samples(beats, 0.0, 60.0, fs=fs, seed=1, breathing=model.breathing_signal)
    found = detect_r_peaks(ecg, fs) / fs
    inside = np.array([b for b in beats if 1.0 < b < 59.0])
    err = found[np.abs(found[:, None] - inside[None, :]).argmin(axis=0)] - inside
    rr_err = np.diff(found[np.abs(found[:, None] - inside[None, :]).argmin(axis=0)]) - np.diff(inside)
    # whole samples would be up to half a period (3.8 ms) off; the parabola brings the RR within 1 ms
    assert np.median(np.abs(rr_err)) < 1.0e-3
    assert np.max(np.abs(err - np.median(err))) < 0.5 / fs
    assert len(found) == pytest.approx(len(inside), abs=2)


def test_simulated_heart_ecg_and_strap_agree_within_the_ecg_resolution(sim_session):
    path, sid, truth = sim_session
    with Store(path) as store:
        ecg = ecg_beats(store, sid)
        rows = session_agreement(store, sid, [("rest", 0.0, 150.0), ("paced", 150.0, 300.0)])
        times = ecg_beat_times(store, sid)
    np.testing.assert_array_equal(times, ecg.t)
    sample_ms = 1000.0 / ecg.fs_hz
    for row in rows:
        print(row)
        assert row.median_abs_drr_ms < sample_ms  # within the ECG's resolution (in fact well under 1 ms)
        assert row.over_20ms_pct == 0.0
        assert row.matched >= 0.97 * row.strap_beats and row.intervals > 0.9 * row.strap_beats
    # the strap misses beats (one long RR); the ECG has them: ECG-only beats, never strap-only ones
    assert sum(r.ecg_only for r in rows) >= 1
    assert sum(r.strap_only for r in rows) <= 2
    # ECG beats are the simulated heart's beats (each ECG interval within 1 ms of the true one)
    inside = truth[(truth > ecg.t[0] + 0.5) & (truth < ecg.t[-1] - 0.5)]
    nearest = np.abs(ecg.t[:, None] - inside[None, :]).argmin(axis=0)
    assert np.median(np.abs(np.diff(ecg.t[nearest]) - np.diff(inside))) < 1e-3


def test_no_ecg_beat_and_no_interval_across_an_ecg_gap(sim_session):
    path, sid, _ = sim_session
    with Store(path) as store:
        ecg = ecg_beats(store, sid)
    start, length = DISCONNECT
    assert len(ecg.stretches) == 2
    (_, end_first), (start_second, _) = ecg.stretches
    assert start - 1.0 < end_first < start + 1.0 and start + length - 1.0 < start_second < start + length + 2.0
    assert not np.any((ecg.t > end_first) & (ecg.t < start_second))
    after = int(np.searchsorted(ecg.t, start_second))
    # without skin contact the ECG is noise: no beat is found there, and none of its intervals spans it
    lost, lost_s = CONTACT_LOSS
    assert not np.any((ecg.t > lost + 0.5) & (ecg.t < lost + lost_s - 0.5))
    resumed = int(np.searchsorted(ecg.t, lost + lost_s - 0.5))
    assert ecg.gap_before[resumed] and ecg.t[resumed - 1] < lost + 0.5
    assert ecg.gap_before[0] and ecg.gap_before[after] and ecg.gap_before.sum() == 3
    assert np.all(np.isnan(ecg.rr_ms[ecg.gap_before])) and np.all(np.isfinite(ecg.rr_ms[~ecg.gap_before]))


def test_analyze_and_report_show_the_agreement(sim_session, capsys):
    path, sid, _ = sim_session
    assert app.main(["analyze", str(sid), "--json", "--store", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [a["phase"] for a in out["ecg_agreement"]] == ["rest", "paced"]
    assert all(a["median_abs_drr_ms"] < 7.7 for a in out["ecg_agreement"])
    assert app.main(["analyze", str(sid), "--store", str(path)]) == 0
    text = capsys.readouterr().out
    assert "ECG beats (neurokit2 R peaks)" in text and "median |ΔRR| ms" in text
    with Store(path) as store:
        html = render_report(store, sid)
    assert "Beats from the ECG" in html and "median |ΔRR| ms" in html


def test_a_session_without_ecg_says_so(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        sid = store.create_session("P01", "rest", {"name": "rest"}, "sim-1")
        store.add_beats(sid, [(1.0 + i * 0.8, 800.0, i == 0, 0.0, None) for i in range(100)])
        with pytest.raises(NoEcgError, match=f"session {sid} has no ECG recorded"):
            ecg_beat_times(store, sid)
        assert analyze_session(store, sid).ecg_agreement is None


PHONE0 = datetime(2025, 3, 7, 10, 15, 2, 123000)


@pytest.fixture(scope="module")
def real_h10(shared_data, tmp_path_factory):
    """The real H10 recording (kbroman/detectPVC: 10 min ECG + the strap's RR) as Polar Sensor Logger files."""
    df = pd.read_csv(shared_data / "polar_h10_detectpvc_ecg130hz_rr.csv")
    folder = tmp_path_factory.mktemp("h10")
    d0 = datetime_to_pmd_time(datetime(2019, 6, 1, tzinfo=UTC))
    uv = np.round(df.ecg.to_numpy() * 1000).astype(int)
    t = df.t_s.to_numpy()
    lines = ["Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]"]
    for start in range(0, len(uv) - 73 + 1, 73):
        phone = (PHONE0 + timedelta(seconds=t[start + 72] + 0.015)).isoformat(timespec="milliseconds")
        lines += [f"{phone};{d0 + round(t[k] * 1e9)};{(t[k] - t[0]) * 1000:.6f};{uv[k]}"
                  for k in range(start, start + 73)]
    ecg = folder / "Polar_H10_ECG.txt"
    ecg.write_text("\n".join(lines) + "\n")
    rows = df[df.rr.notna()]
    rr = folder / "Polar_H10_RR.txt"
    rr.write_text("Phone timestamp;RR-interval [ms]\n" + "".join(
        f"{(PHONE0 + timedelta(seconds=ts + 0.02)).isoformat(timespec='milliseconds')};{int(v)}\n"
        for ts, v in zip(rows.t_s, rows.rr, strict=True)))  # fmt: skip
    with Store(folder / "s.sqlite") as store:
        sid = import_polar(store, [ecg, rr], "P01")
    return folder / "s.sqlite", sid


def test_real_h10_ecg_beats_agree_with_its_rr(real_h10):
    path, sid = real_h10
    with Store(path) as store:
        ecg = ecg_beats(store, sid)
        beats = store.beats(sid)
        analysis = analyze_session(store, sid)
    assert ecg.fs_hz == pytest.approx(130.16, abs=0.01)  # the measured rate, not the nominal 130 Hz
    (row,) = analysis.ecg_agreement
    print(row)
    # measured: 794 of 795 strap beats paired, median |ΔRR| 0.54 ms, none above 20 ms, 5 ECG-only beats; the
    # strap's beats (placed by phone time) are 1.97 s later than the ECG's (sensor time)
    assert row.matched >= 0.99 * row.strap_beats and row.intervals >= 0.97 * row.strap_beats
    assert row.median_abs_drr_ms < 1.0 and row.over_20ms_pct < 1.0
    assert 1.9e3 < row.offset_ms < 2.05e3
    assert row.ecg_only <= 8
    # an ECG-only beat between two paired ones is a beat the strap missed: its RR there spans two ECG intervals
    pair, _ = match_beats(beats.t, beats.gap_before, ecg.t)
    paired = np.zeros(len(ecg.t), dtype=bool)
    paired[pair[pair >= 0]] = True
    inner = [j for j in np.flatnonzero(~paired) if 0 < j < len(ecg.t) - 1 and paired[j - 1] and paired[j + 1]]
    assert 2 <= len(inner) <= row.ecg_only
    for j in inner:
        (i,) = np.flatnonzero(pair == j + 1)
        assert pair[i - 1] == j - 1
        assert beats.rr_ms[i] == pytest.approx(ecg.rr_ms[j] + ecg.rr_ms[j + 1], abs=5.0)
