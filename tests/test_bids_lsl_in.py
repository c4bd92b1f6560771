"""LSL-in streams in the BIDS export: numeric streams as their own physio files, markers as events; read back by the
official validator and by pybids (each physio and physioevents file picked on its own by its entities)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import threading
import time
import uuid

import numpy as np
import pytest
from test_export_bids import validate

from biofeedback.live.recorder import build_session, parse_device_specs
from protocols.model import Phase, PhaseKind, Protocol
from recordings.export_bids import export_bids
from recordings.store import Store

SHORT = Protocol("lsl-bids", "", (Phase("baseline", PhaseKind.REST, 10.0), Phase("recovery", PhaseKind.REST, 6.0)))


class _Senders(threading.Thread):
    """Skin conductance (2 channels, 32 Hz, units on one), an irregular respiration stream and PsychoPy markers."""

    def __init__(self, tag: str) -> None:
        import pylsl

        super().__init__(daemon=True)
        eda = pylsl.StreamInfo(f"EDA-{tag}", "EDA", 2, 32.0, pylsl.cf_float32, f"eda-{tag}")
        chans = eda.desc().append_child("channels")
        for label, unit in (("SCL", "uS"), ("SCR", "")):
            ch = chans.append_child("channel")
            ch.append_child_value("label", label)
            if unit:
                ch.append_child_value("unit", unit)
        acq = eda.desc().append_child("acquisition")
        acq.append_child_value("manufacturer", "Shimmer")
        self.eda = pylsl.StreamOutlet(eda)
        self.resp = pylsl.StreamOutlet(pylsl.StreamInfo(f"Resp-{tag}", "Respiration", 1, pylsl.IRREGULAR_RATE,
                                                        pylsl.cf_double64, f"resp-{tag}"))  # fmt: skip
        self.psy = pylsl.StreamOutlet(pylsl.StreamInfo(f"PsychoPy-{tag}", "Markers", 1, 0.0, pylsl.cf_string,
                                                       f"psy-{tag}"))  # fmt: skip
        self.stop = threading.Event()

    def run(self) -> None:
        k, start = 0, time.monotonic()
        while not self.stop.is_set():
            self.eda.push_sample([1.0 + 0.01 * k, float(k % 7)])
            if k % 3 == 0:  # 10.7 Hz, declared irregular (no nominal rate)
                self.resp.push_sample([np.sin(k / 10.0)])
            if k % 40 == 10:
                self.psy.push_sample([f"trial {k // 40} onset"])
            k += 1
            time.sleep(max(0.0, start + k / 32 - time.monotonic()))  # on schedule: the nominal 32 Hz


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from biofeedback.live.lsl_inlets import LslInlets

    tag = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("lslbids")
    store = Store(tmp / "s.sqlite")
    session = build_session(store, SHORT, parse_device_specs(["sim"], "P09"), speed=4.0, seed=3, ecg=True)
    senders = _Senders(tag)
    senders.start()
    session.add_listener(LslInlets(session, [f"EDA-{tag}", f"Resp-{tag}", f"PsychoPy-{tag}"]))
    (sid,) = asyncio.run(session.run())
    senders.stop.set()
    senders.join()
    root = tmp / "bids"
    export_bids(store, root, [sid])
    yield store, sid, root, tag
    store.close()


def _gz_rows(path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t") for line in fh]


def test_lsl_streams_become_physio_files_and_events_that_validate(exported):
    store, sid, root, tag = exported
    assert validate(root) == []
    beh = root / "sub-P09" / f"ses-{sid}" / "beh"
    stem = f"sub-P09_ses-{sid}_task-lslbids"
    eda_s, resp_s, psy_s = (store.lsl_samples(s) for s in store.lsl_streams(sid))

    eda = json.loads((beh / f"{stem}_recording-EDA{tag}_physio.json").read_text())
    # 32 Hz of LSL time; the simulated session clock runs ×4, so 8 samples per session second
    assert eda["Columns"] == ["timestamp", "SCL", "SCR"] and eda["SamplingFrequency"] == 8.0
    assert eda["SCL"]["Units"] == "uS" and "Units" not in eda["SCR"]  # units only where the stream gave them
    assert eda["Manufacturer"] == "Shimmer" and eda["LslStream"]["Name"] == f"EDA-{tag}"
    rows = _gz_rows(beh / f"{stem}_recording-EDA{tag}_physio.tsv.gz")
    assert len(rows) == len(eda_s.t) > 60
    np.testing.assert_allclose([float(r[0]) for r in rows], eda_s.t, atol=1e-6)  # session clock, not LSL time
    assert eda["StartTime"] == pytest.approx(eda_s.t[0], abs=1e-6)
    np.testing.assert_allclose([[float(r[1]), float(r[2])] for r in rows], eda_s.values, rtol=1e-6)

    resp = json.loads((beh / f"{stem}_recording-Resp{tag}_physio.json").read_text())
    measured = (len(resp_s.t) - 1) / (resp_s.t[-1] - resp_s.t[0])
    assert resp["SamplingFrequency"] == pytest.approx(measured, rel=1e-6)  # irregular: the measured mean rate
    assert resp["LslStream"]["NominalSamplingFrequency"] == 0.0 and "irregular" in resp["LslStream"][
        "SamplingFrequencySource"]  # fmt: skip
    assert resp["Columns"] == ["timestamp", "ch1"]
    # every third sample of the 32 Hz loop, on a session clock running ×4
    assert resp["SamplingFrequency"] == pytest.approx(32 / 3 / 4, rel=0.05)

    with (beh / f"{stem}_events.tsv").open() as fh:
        events = list(csv.DictReader(fh, delimiter="\t"))
    marks = [e for e in events if e["trial_type"] == "lsl_marker"]
    assert [m["value"] for m in marks] == [v[0] for v in psy_s.values] and len(marks) >= 2
    assert {m["lsl_stream"] for m in marks} == {f"PsychoPy-{tag}"}
    np.testing.assert_allclose([float(m["onset"]) for m in marks], psy_s.t, atol=1e-6)
    assert {e["lsl_stream"] for e in events if e["trial_type"] != "lsl_marker"} == {"n/a"}
    assert not list(beh.glob("*PsychoPy*"))  # a marker stream is events, not a physio file


def test_pybids_picks_each_physio_and_physioevents_file_on_its_own(exported):
    bids = pytest.importorskip("bids", reason="pip install pybids (the test extra)")
    store, sid, root, tag = exported
    layout = bids.BIDSLayout(root, validate=True)
    assert layout.get_subjects() == ["P09"] and layout.get_sessions() == [str(sid)]
    assert sorted(layout.get_recordings()) == sorted(["ecg", f"EDA{tag}", f"Resp{tag}"])
    for rec in ("ecg", f"EDA{tag}", f"Resp{tag}"):
        (physio,) = layout.get(suffix="physio", recording=rec, extension=".tsv.gz")
        assert physio.get_metadata()["Columns"][0] == "timestamp"
    (events,) = layout.get(suffix="physioevents", recording="ecg", extension=".tsv.gz")
    assert events.get_metadata()["OnsetSource"] == "timestamp"
    # pybids builds the time axis from SamplingFrequency and StartTime: on a regular stream it matches the stamps
    (eda,) = layout.get(suffix="physio", recording=f"EDA{tag}", extension=".tsv.gz")
    df = eda.get_df(include_timing=True, adjust_onset=True)
    assert list(df.columns) == ["onset", "timestamp", "SCL", "SCR"]
    eda_s = store.lsl_samples(store.lsl_streams(sid)[0])
    np.testing.assert_allclose(df["timestamp"], eda_s.t, atol=1e-6)
    drift = np.abs(df["onset"].to_numpy() - df["timestamp"].to_numpy())
    assert drift.max() < 0.5  # LSL jitter (×4 on this clock), but the same time axis
    (ecg,) = layout.get(suffix="physio", recording="ecg", extension=".tsv.gz")
    ecg_df = ecg.get_df(include_timing=True, adjust_onset=True)
    np.testing.assert_allclose(ecg_df["onset"], ecg_df["timestamp"], atol=1e-3)  # the ECG is a regular grid
    (tsv,) = layout.get(suffix="events", extension=".tsv")
    assert "lsl_marker" in set(tsv.get_df()["trial_type"])


# -- systole (its own interpreter: systole 0.3 pins numpy <= 2.2, below this project's) -----------------------------

_SYSTOLE = """
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import pandas as pd
from systole.reports.utils import create_reports
from systole.interact import Viewer
root, participant, session = sys.argv[1:4]
out = Path(root, "derivatives", "systole")
create_reports(participant_id=participant, bids_folder=root, result_folder=out, pattern="recording-ecg",
               modality="beh", session=session, html_report=False)
feat = pd.read_csv(next(out.rglob("*recording-ecg_features.tsv")), sep="\\t")
n_beats = float(feat.loc[feat["Metric"] == "n_beats", "Values"].iloc[0])
viewer = Viewer(preprocessed_folder=str(out), session=session, modality="beh", pattern="recording-ecg",
                signal_type="ECG")  # participant_id=... fails in systole 0.3.1 (an attribute it never sets)
print(json.dumps({"n_beats": n_beats, "viewer_file": str(viewer.physio_file), "viewer_peaks":
                  int(viewer.editor.peaks.sum())}))
"""


@pytest.mark.slow
def test_systole_reads_the_ecg_physio_and_its_viewer_opens_it_headless(tmp_path):
    """systole's report pipeline picks `recording-ecg_physio` on its own and finds the strap's beats in the ECG; its
    Viewer (ipywidgets, driven without a notebook) opens the result. Needs an interpreter with systole: set
    CMT_SYSTOLE_PYTHON (e.g. a venv with `pip install systole==0.3.1 ipywidgets 'setuptools<81'`)."""
    import os
    import subprocess

    python = os.environ.get("CMT_SYSTOLE_PYTHON")
    if not python:
        pytest.skip("set CMT_SYSTOLE_PYTHON to a Python with systole (it needs numpy <= 2.2, not this environment's)")
    with Store(tmp_path / "s.sqlite") as store:
        session = build_session(store, Protocol("sys", "", (Phase("rest", PhaseKind.REST, 90.0),)),
                                parse_device_specs(["sim"], "P31"), speed=50, seed=8, ecg=True)  # fmt: skip
        (sid,) = asyncio.run(session.run())
        export_bids(store, tmp_path / "bids", [sid])
        beats = len(store.beats(sid).t)
    done = subprocess.run([python, "-c", _SYSTOLE, str(tmp_path / "bids"), "sub-P31", f"ses-{sid}"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert abs(got["n_beats"] - beats) <= 2  # systole's R peaks in our ECG = the strap's beats
    assert got["viewer_file"].endswith("recording-ecg_physio.tsv.gz") and abs(got["viewer_peaks"] - beats) <= 2
