"""Every export names the beats it holds (`--beats`): reviewed, the ECG's R-peaks or the strap's as recorded.

Read back with the tools that read each format: edfio for EDF+, the JSON sidecar of the BIDS physioevents file, the
Kubios phase table with the csv module."""

from __future__ import annotations

import csv
import json

import edfio
import pytest

import app
from biofeedback.live.recorder import build_session, parse_device_specs
from devices.virtual_time import LoopClock, run_virtual
from protocols.model import Phase, PhaseKind, Protocol
from recordings import review
from recordings.store import Store

SHORT = Protocol("short", "rest then paced", (Phase("baseline", PhaseKind.REST, 90.0),
                                              Phase("paced", PhaseKind.BREATHING, 90.0)))  # fmt: skip


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "store.sqlite"
    with Store(path) as store:
        session = build_session(store, SHORT, parse_device_specs(["sim"], "P01"), seed=3, clock=LoopClock(),
                                ecg=True)  # fmt: skip
        (sid,) = run_virtual(session.run())
        review.add_edit(store, sid, "mark", t=float(store.beats(sid).t[20]), reviewer="AB", reason="ectopic")
    return path, sid


@pytest.mark.parametrize(("source", "says"), [("reviewed", "reviewed beats (1 edits in force by AB"),
                                               ("strap", "the strap's beats as recorded"),
                                               ("ecg", "R-peaks detected in the ECG")])  # fmt: skip
def test_edf_bids_and_kubios_name_the_beat_source(reviewed, tmp_path, capsys, source, says):
    path, sid = reviewed
    for fmt in ("edf", "kubios", "bids"):
        code = app.main(["export", str(sid), "--format", fmt, "--out", str(tmp_path / fmt), "--beats", source,
                         "--include-simulated", "--store", str(path)])  # fmt: skip
        assert code == 0, capsys.readouterr().err
    (edf_path,) = (tmp_path / "edf").glob("*.edf")
    texts = [a.text for a in edfio.read_edf(edf_path).annotations]
    assert any(t.startswith("beats: ") and says in t for t in texts), texts
    (phases,) = (tmp_path / "kubios").glob("*_phases.csv")
    with open(phases, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(says in r["beats"] for r in rows)
    (sidecar,) = (tmp_path / "bids").rglob("*_physioevents.json")
    assert says in json.loads(sidecar.read_text(encoding="utf-8"))["Description"]
