"""The chest-movement breathing waveform in every export, read back with the real readers: the official BIDS
validator and pandas (BIDS `recording-resp` physio), MNE and edfio (EDF+ `Resp chest`), pandas (CSV)."""

from __future__ import annotations

import json
from datetime import datetime

import edfio
import mne
import numpy as np
import pandas as pd
import pyedflib
import pytest
from test_breath_signal import SHORT_PROTOCOL
from test_export_bids import validate

from biofeedback.live.recorder import build_session, parse_device_specs
from devices.simulator import SimFaults
from devices.virtual_time import LoopClock, run_virtual
from protocols.loader import parse_protocol
from recordings.breathing import MG_TO_M_S2, breathing_waveform
from recordings.ecg_time import map_ecg_chunks
from recordings.export_bids import export_bids
from recordings.export_csv import export_csv
from recordings.export_edf import MAX_RECORD_BYTES, export_edf
from recordings.store import Store

DROP = (100.0, 15.0)  # the strap's link drops at 100 s for 15 s: no ACC, no ECG, no beats


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two simulated sessions with ACC and a link drop: one with ECG (P01), one without (P02)."""
    store = Store(tmp_path_factory.mktemp("resp") / "store.sqlite")
    ids = {}
    for pid, ecg in [("P01", True), ("P02", False)]:
        faults = {pid: SimFaults(disconnects=[DROP])}
        session = build_session(store, parse_protocol(SHORT_PROTOCOL), parse_device_specs(["sim"], pid),
                                clock=LoopClock(), acc=True, ecg=ecg, faults=faults)  # fmt: skip
        (ids[pid],) = run_virtual(session.run())
    yield store, ids
    store.close()


def expected(store: Store, sid: int):
    acc = map_ecg_chunks(store.acc_chunks(sid))
    (gap,) = acc.gaps
    return acc, gap


def test_bids_resp_physio_passes_the_validator_and_holds_the_waveform(recorded, tmp_path):
    store, ids = recorded
    root = tmp_path / "bids"
    export_bids(store, root, list(ids.values()))
    assert validate(root) == []
    for pid, sid in ids.items():
        beh = root / f"sub-{pid}" / f"ses-{sid}" / "beh"
        (physio,) = beh.glob("*_recording-resp_physio.tsv.gz")
        sidecar = json.loads(physio.with_name(physio.name.replace(".tsv.gz", ".json")).read_text())
        assert sidecar["Columns"] == ["timestamp", "respiratory"] and sidecar["respiratory"]["Units"] == "m/s^2"
        assert sidecar["SamplingFrequency"] == 25.0
        df = pd.read_csv(physio, sep="\t", header=None, names=sidecar["Columns"], na_values="n/a")
        assert df.timestamp.iloc[0] == pytest.approx(sidecar["StartTime"], abs=1e-6)
        assert np.allclose(np.diff(df.timestamp), 0.04, atol=2e-6)
        acc, (before, after) = expected(store, sid)
        wf = breathing_waveform(acc)
        np.testing.assert_allclose(df.respiratory, wf.values * MG_TO_M_S2, atol=1e-7)  # NaN where NaN
        lost = (df.timestamp > before + 0.05) & (df.timestamp < after - 0.05)
        assert lost.sum() > 14 * 25 and df.respiratory[lost].isna().all()  # the link drop is a gap, not invented
        assert df.respiratory.notna().sum() > 0.9 * (len(df) - lost.sum())
        breathing = df.respiratory.dropna()
        assert 0.005 < breathing.std() < 0.2  # a few mG of chest movement, in m/s²
        other = {p.name.split("_recording-")[1] for p in beh.glob("*_recording-*")}
        assert ("ecg_physio.tsv.gz" in other) == (pid == "P01") and "resp_physio.json" in other
    again = export_bids(store, root, list(ids.values()))
    assert sorted(again.kept_sessions) == sorted(ids.values())  # the resp files count as part of a complete session


def test_edf_resp_channel_is_typed_resp_by_mne_and_shares_the_ecg_grid(recorded, tmp_path):
    store, ids = recorded
    sid = ids["P01"]
    path = export_edf(store, sid, tmp_path / "s.edf")
    raw = mne.io.read_raw_edf(path, infer_types=True, verbose="error")
    assert raw.get_channel_types() == ["ecg", "misc", "resp"]
    edf = edfio.read_edf(path)
    ecg, rr, resp = edf.signals
    assert resp.label == "Resp chest" and resp.physical_dimension == "m/s^2"
    assert resp.sampling_frequency == ecg.sampling_frequency == rr.sampling_frequency  # no reader resamples
    assert 2 * sum(s.samples_per_data_record for s in edf._signals) <= MAX_RECORD_BYTES
    fs = resp.sampling_frequency
    grid = np.arange(len(resp.data)) / fs
    # the file starts at the whole second before the session (EDFlib's rule for these records): the session's data
    # are led by that fraction of a second in whole samples
    started = datetime.fromisoformat(store.session(sid).started_utc)
    file_start = datetime.combine(edf.startdate, edf.starttime, tzinfo=started.tzinfo)
    lead_s = round((started - file_start).total_seconds() * fs) / fs
    assert 0 <= lead_s < 1 and abs((started - file_start).total_seconds() - lead_s) <= 0.5 / fs
    acc, (before, after) = expected(store, sid)
    before, after = before + lead_s, after + lead_s
    want = breathing_waveform(acc, fs, start_s=-lead_s, n=len(grid)).values * MG_TO_M_S2
    no_data = resp.physical_range.min
    present = ~np.isnan(want)
    step = (resp.physical_range.max - no_data) / 65535
    np.testing.assert_allclose(resp.data[present], want[present], atol=step)
    assert np.allclose(resp.data[~present], no_data)
    assert np.all(resp.data[present] > no_data + step / 2)  # the no-data value is never a sample
    gaps = [a for a in edf.annotations if a.text == "Resp gap"]
    assert any(a.onset == pytest.approx(before, abs=0.1) and a.duration == pytest.approx(after - before, abs=0.1)
               for a in gaps)  # fmt: skip
    np.testing.assert_allclose(raw.get_data(picks="resp")[0], resp.data, atol=1e-9)  # MNE reads the same values
    reader = pyedflib.EdfReader(str(path))  # EDFlib opens it too (it refused fractional starts with these records)
    try:
        assert reader.getSignalLabels() == ["ECG chest", "MISC RR", "Resp chest"]
    finally:
        reader.close()


def test_edf_without_ecg_puts_rr_and_resp_at_25_hz_in_one_second_records(recorded, tmp_path):
    store, ids = recorded
    path = export_edf(store, ids["P02"], tmp_path / "s.edf")
    raw = mne.io.read_raw_edf(path, infer_types=True, verbose="error")
    assert raw.get_channel_types() == ["misc", "resp"] and raw.info["sfreq"] == 25.0
    edf = edfio.read_edf(path)
    assert edf.data_record_duration == 1.0
    assert [s.samples_per_data_record for s in edf.signals] == [25, 25]
    resp = raw.get_data(picks="resp")[0]
    assert np.std(resp[resp > edf.signals[1].physical_range.min]) > 0.005


def test_csv_resp_is_read_by_pandas_with_gaps_empty(recorded, tmp_path):
    store, ids = recorded
    sid = ids["P01"]
    written = export_csv(store, sid, tmp_path / "csv")
    assert tmp_path / "csv" / "resp.csv" in written
    df = pd.read_csv(tmp_path / "csv" / "resp.csv")
    assert list(df.columns) == ["participant_id", "session_id", "t_s", "resp_m_s2"]
    assert (df.participant_id == "P01").all() and (df.session_id == sid).all()
    acc, (before, after) = expected(store, sid)
    np.testing.assert_allclose(df.resp_m_s2, breathing_waveform(acc).values * MG_TO_M_S2, atol=1e-7)
    lost = (df.t_s > before + 0.05) & (df.t_s < after - 0.05)
    assert lost.sum() > 14 * 25 and df.resp_m_s2[lost].isna().all()
