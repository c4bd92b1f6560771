"""Beat times downstream: agreement with the ECG's R-peaks, RR spacing in exports, every interval of an RR file."""

from __future__ import annotations

import csv
import gzip
from datetime import datetime

import neurokit2 as nk
import numpy as np
import pytest

import app
from biofeedback.analysis.analyze import analyze_session
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.physiology import SimParticipant
from devices.virtual_time import LoopClock, run_virtual
from protocols.model import Phase, PhaseKind, Protocol
from recordings.ecg_time import map_ecg_chunks
from recordings.export_bids import export_bids
from recordings.import_rr import import_rr
from recordings.store import Store

TEN_MIN = Protocol("ten", "rest", (Phase("baseline", PhaseKind.REST, 600.0),))


@pytest.fixture(scope="module")
def ecg_session(tmp_path_factory):
    path = tmp_path_factory.mktemp("ecg") / "store.sqlite"
    store = Store(path)
    session = build_session(store, TEN_MIN, parse_device_specs(["sim"], "P01"), clock=LoopClock(), ecg=True,
                            participants={"P01": SimParticipant(seed=3)})  # fmt: skip
    (sid,) = run_virtual(session.run())
    yield store, sid
    store.close()


def test_beat_times_agree_with_the_r_peaks_of_the_mapped_ecg(ecg_session):
    store, sid = ecg_session
    beats = store.beats(sid)
    tl = map_ecg_chunks(store.ecg_chunks(sid))
    t0, grid = tl.regular_grid()
    signal = np.nan_to_num(grid - np.nanmedian(grid))
    _, info = nk.ecg_peaks(signal, sampling_rate=tl.fs_hz)
    peaks = t0 + np.asarray(info["ECG_R_Peaks"]) / tl.fs_hz
    inside = beats.t[(beats.t > peaks[0] + 1) & (beats.t < peaks[-1] - 1)]
    nearest = np.abs(inside[:, None] - peaks[None, :]).min(axis=1)
    median, p95 = np.median(nearest), np.percentile(nearest, 95)
    print(f"beat time vs ECG R-peak: median {median * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms over {inside.size} beats")
    # the strap's beats come from the same simulated heart as the ECG: within the anchoring bias and the ECG's
    # 7.7 ms sample spacing (a beat the strap missed makes one interval, never a misplaced time)
    assert median < 0.025 and p95 < 0.05


def test_bids_physioevents_and_csv_beats_are_spaced_by_their_rr(ecg_session, tmp_path):
    store, sid = ecg_session
    beats = store.beats(sid)
    (stretch,) = store.beat_stretches(sid)
    b = 1 + (stretch["drift_ppm"] or 0.0) * 1e-6
    root = tmp_path / "bids"
    export_bids(store, root, [sid])
    (events,) = root.glob("sub-*/ses-*/beh/*_physioevents.tsv.gz")
    with gzip.open(events, "rt") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t")]
    onset = np.array([float(r[0]) for r in rows if r[-1] in ("0", "1", "n/a") and r[0] != "n/a"])
    assert onset.size == beats.t.size
    np.testing.assert_allclose(np.diff(onset), b * beats.rr_ms[1:] / 1000.0, atol=2e-6)  # TSV rounding only
    out = tmp_path / "csv"
    assert app.main(["export", str(sid), "--format", "csv", "--out", str(out), "--store", str(store.path)]) == 0
    with open(out / "beats.csv") as fh:
        table = list(csv.DictReader(fh))
    t = np.array([float(r["t_s"]) for r in table])
    rr = np.array([float(r["rr_ms"]) for r in table])
    np.testing.assert_allclose(np.diff(t), b * rr[1:] / 1000.0, atol=2e-6)


@pytest.mark.parametrize(("name", "column"), [("polar_h10_dhyb_ibi.csv", "ibi_ms"), ("formats/hrv_real_rri.txt", None)])
def test_an_imported_rr_file_keeps_every_interval_and_equals_neurokit2(name, column, shared_data, tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        sid = import_rr(store, shared_data / name, "P02", column=column)
        beats = store.beats(sid)
        (phase,) = analyze_session(store, sid, correction="none").phases
    rr = beats.rr_ms
    assert phase.n_beats == rr.size  # the first and the last interval too
    peaks = np.concatenate([[0.0], np.cumsum(rr)])
    ref = nk.hrv_time(np.round(peaks).astype(int), sampling_rate=1000)
    if beats.gap_before.sum() == 1:  # one stretch: the whole file, exactly as neurokit2 computes it
        assert phase.rmssd_ms == pytest.approx(float(ref["HRV_RMSSD"].iloc[0]), abs=0.01)
        assert phase.sdnn_ms == pytest.approx(float(ref["HRV_SDNN"].iloc[0]), abs=0.01)
        assert phase.mean_hr_bpm == pytest.approx(60000.0 / float(ref["HRV_MeanNN"].iloc[0]), abs=1e-3)
        assert phase.pnn50_pct == pytest.approx(float(ref["HRV_pNN50"].iloc[0]), abs=0.01)
    else:  # the file's own times showed gaps: the intervals all count, differences across a gap do not
        assert phase.sdnn_ms == pytest.approx(float(np.std(rr, ddof=1)), abs=0.01)


def test_the_store_refuses_a_beat_that_does_not_follow_and_never_resorts(tmp_path):
    from recordings.store import BeatOrderError

    with Store(tmp_path / "s.sqlite") as store:
        sid = store.create_session("P01", "x", {}, "sim-1", source="simulated")
        store.add_beats(sid, [(1.0, 800.0, True, 0.1, None), (1.8, 800.0, False, 0.1, None)])
        with pytest.raises(BeatOrderError, match=f"session {sid}: beat at 1.7"):
            store.add_beats(sid, [(2.6, 800.0, False, 0.1, None), (1.7, 800.0, False, 0.1, None)])
        assert store.beats(sid).t.tolist() == [1.0, 1.8]  # nothing of the refused write was stored


@pytest.mark.parametrize("command", [["analyze", "{sid}"], ["report", "{sid}", "--out", "{out}/r.html"],
                                     ["export", "{sid}", "--format", "csv", "--out", "{out}/csv"],
                                     ["export", "{sid}", "--format", "bids", "--out", "{out}/bids"]])
def test_unanalysable_stored_beats_give_one_line_naming_the_session_and_beat(command, ecg_session, tmp_path, capsys):
    import shutil
    import sqlite3

    store, sid = ecg_session
    store.flush()
    path = tmp_path / "old.sqlite"
    shutil.copy(store.path, path)
    db = sqlite3.connect(path)  # what an older version could leave: two beats out of order
    rows = db.execute("SELECT rowid, t FROM beats WHERE session_id=? ORDER BY rowid LIMIT 2 OFFSET 100",
                      (sid,)).fetchall()  # fmt: skip
    db.execute("UPDATE beats SET t=? WHERE rowid=?", (rows[1][1], rows[0][0]))
    db.execute("UPDATE beats SET t=? WHERE rowid=?", (rows[0][1], rows[1][0]))
    db.commit()
    db.close()
    args = [a.format(sid=sid, out=tmp_path) for a in command]
    code = app.main([*args, "--store", str(path)])
    err = capsys.readouterr().err
    assert code != 0
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "Traceback" not in err
    assert f"session {sid}: beat 101 at" in err and "redecode" in err


def test_edf_rr_channel_steps_at_the_beats_spaced_by_their_rr(ecg_session, tmp_path):
    import edfio

    from recordings.export_edf import export_edf

    store, sid = ecg_session
    beats = store.beats(sid)
    path = export_edf(store, sid, tmp_path / "s.edf")
    edf = edfio.read_edf(path)
    (rr_signal,) = [s for s in edf.signals if s.label.startswith("MISC")]
    fs = rr_signal.sampling_frequency
    values = rr_signal.data
    # a session starting at a fraction of a second: the file starts at the whole second before it, led by samples
    started = datetime.fromisoformat(store.session(sid).started_utc)
    file_start = datetime.combine(edf.startdate, edf.starttime, tzinfo=started.tzinfo)
    lead_s = round((started - file_start).total_seconds() * fs) / fs
    steps = np.flatnonzero(np.abs(np.diff(values)) > 0.5) + 1  # where a new RR value begins
    step_t = steps / fs - lead_s
    # the channel holds each interval's RR while it runs: from beat k-1 to beat k it reads RR_k
    t_prev, rr_k = beats.t[:-1], beats.rr_ms[1:]
    changes = np.concatenate([[False], np.abs(np.diff(rr_k)) > 1.0])
    keep = (t_prev > 2.0) & (t_prev < beats.t[-1] - 2.0) & ~beats.gap_before[1:]
    nearest = np.abs(t_prev[keep & changes][:, None] - step_t[None, :]).min(axis=1)
    assert np.max(nearest) <= 1.0 / fs + 1e-9  # every beat is a step of the RR channel, to within a sample
    got = np.interp(t_prev[keep] + 1.5 / fs, np.arange(values.size) / fs - lead_s, values)
    assert np.median(np.abs(got - rr_k[keep])) < 0.5


def test_sim_faults_take_ble_timing():
    from biofeedback.live.recorder import DeviceSpecError, parse_sim_faults

    faults = parse_sim_faults(["P02:latency=1.5,bunch=0.2,drift=-40,disconnect=3"], ["P01", "P02"])
    f = faults["P02"]
    assert f.latency_s == (0.0, 1.5) and f.bunch_fraction == 0.2 and f.drift_ppm == -40.0
    assert f.disconnect_rate_per_hour == 3.0 and "P01" not in faults
    bad_values = (("bunch=1.5", "share"), ("latency=-1", "0-30 s"), ("drift=5000", "ppm"), ("wobble=2", "drift=PPM"))
    for bad, words in bad_values:
        with pytest.raises(DeviceSpecError, match=words):
            parse_sim_faults([bad], ["P01"])


def test_implausible_rr_is_kept_raw_explained_and_starts_a_new_stretch(tmp_path, monkeypatch):
    from devices.heart_rate import encode_heart_rate
    from devices.link import HEART_RATE_MEASUREMENT_UUID
    from recordings.decode import decode_packets

    def run(name: str):
        with Store(tmp_path / name) as store:
            sid = store.create_session("P01", "x", {}, "sim-1", source="simulated")
            packets = []
            for i in range(40):
                rr = [102] if i == 20 else [820]  # 100 ms: no heart beats that fast
                data = encode_heart_rate(73, rr)
                pid = store.add_packet(sid, 1.0 + 0.8 * i, HEART_RATE_MEASUREMENT_UUID, data)
                packets.append((pid, 1.0 + 0.8 * i, HEART_RATE_MEASUREMENT_UUID, data))
            decode_packets(store, sid, packets)
            return store.beats(sid), [e for _p, e in store.packet_errors(sid)], store.beat_stretches(sid)

    beats, errors, stretches = run("a.sqlite")
    assert beats.t.size == 39 and np.all(beats.rr_ms > 700)
    assert len(errors) == 1 and "RR 100 ms outside the plausible 200-3000 ms" in errors[0]
    assert [s["reason"] for s in stretches] == ["start", "implausible RR"]
    monkeypatch.setenv("CMT_RR_RANGE_MS", "80-3000")  # the documented override (e.g. for animal work)
    beats, errors, _ = run("b.sqlite")
    assert beats.t.size == 40 and errors == []
