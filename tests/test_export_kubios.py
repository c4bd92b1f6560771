"""Kubios export: plain RR text Kubios reads, and phase boundaries on Kubios's cumulative-RR time axis."""

from __future__ import annotations

import csv
import stat

import numpy as np
import pytest

from recordings.export_kubios import KubiosExportError, export_kubios
from recordings.files import OutputExistsError
from recordings.store import Store

PHASES = [("baseline", "rest", 10.0, 200.0), ("soothing rhythm", "breathing", 200.0, 400.0),
          ("compassionate image", "imagery", 400.0, 590.0)]  # fmt: skip


def ibi_session(store, shared_data, lost=range(0)):
    ibi = np.loadtxt(shared_data / "polar_h10_dhyb_ibi.csv", delimiter=",", skiprows=1, usecols=1)
    t = np.cumsum(ibi) / 1000
    keep = [i for i in range(len(ibi)) if i not in lost]
    sid = store.create_session("P-07", "cmt-soothing", {}, "Polar H10", source="rr")
    store.add_beats(sid, [(t[i], ibi[i], i == 0 or i == lost.stop, 0.0, None) for i in keep])
    for i, (name, kind, a, b) in enumerate(PHASES):
        store.add_marker(sid, a, "phase_start", name, phase_index=i, phase_name=name, detail={"kind": kind})
        store.add_marker(sid, b, "phase_end", name, phase_index=i, phase_name=name)
    store.flush()
    return sid, ibi[keep]


def read_phases(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("lost", [range(0), range(300, 330)])
def test_rr_text_and_phase_boundaries(store_path, shared_data, tmp_path, lost):
    with Store(store_path) as store:
        sid, rr = ibi_session(store, shared_data, lost)
        rr_path, phases_path, *_phase_files = export_kubios(store, sid, tmp_path)
    assert rr_path.name == f"sub-P-07_ses-{sid}_rr.txt"
    lines = rr_path.read_text().splitlines()
    assert all(line.replace(".", "", 1).isdigit() for line in lines)  # one plain number per line, nothing else
    np.testing.assert_allclose([float(x) for x in lines], rr, atol=5e-4)
    assert stat.S_IMODE(rr_path.stat().st_mode) == 0o600
    kubios_axis = np.cumsum([float(x) for x in lines]) / 1000  # what Kubios computes from the file
    rows = read_phases(phases_path)
    assert [r["phase"] for r in rows] == [p[0] for p in PHASES]
    for row, (_, kind, a, b) in zip(rows, PHASES, strict=True):
        assert row["kind"] == kind and float(row["session_start_s"]) == a and float(row["session_end_s"]) == b
        k0, k1 = float(row["kubios_start_s"]), float(row["kubios_end_s"])
        # the same beats fall inside the phase on Kubios's axis as on the session clock
        assert np.count_nonzero((kubios_axis >= k0) & (kubios_axis < k1)) == int(row["n_beats"])
    lost_s = sum(rr_full for rr_full in np.loadtxt(shared_data / "polar_h10_dhyb_ibi.csv", delimiter=",",
                                                   skiprows=1, usecols=1)[lost]) / 1000  # fmt: skip
    assert float(rows[2]["kubios_start_s"]) == pytest.approx(400.0 - lost_s, abs=1e-6)
    assert [int(r["gaps_inside"]) for r in rows] == ([0, 0, 0] if not lost else [0, 1, 0])


def test_refuses_to_overwrite_and_refuses_empty_sessions(store_path, shared_data, tmp_path):
    with Store(store_path) as store:
        sid, _ = ibi_session(store, shared_data)
        export_kubios(store, sid, tmp_path)
        with pytest.raises(OutputExistsError, match="--force"):
            export_kubios(store, sid, tmp_path)
        export_kubios(store, sid, tmp_path, overwrite=True)
        empty = store.create_session("P-08", "x", {}, "none", source="rr")
        with pytest.raises(KubiosExportError, match="no beats"):
            export_kubios(store, empty, tmp_path)


@pytest.mark.parametrize("lost", [range(0), range(300, 330)])
def test_one_rr_file_per_phase_holds_exactly_its_beats(store_path, shared_data, tmp_path, lost):
    with Store(store_path) as store:
        sid, _ = ibi_session(store, shared_data, lost)
        paths = export_kubios(store, sid, tmp_path)
        beats = store.beats(sid)
    rows = read_phases(paths[1])
    assert [r["rr_file"] for r in rows] == [f"sub-P-07_ses-{sid}_phase-{i}-{name.replace(' ', '')}_rr.txt"
                                            for i, (name, *_rest) in enumerate(PHASES)]  # fmt: skip
    assert sorted(p.name for p in paths[2:]) == sorted(r["rr_file"] for r in rows)
    for row, (_, _, a, b) in zip(rows, PHASES, strict=True):
        path = tmp_path / row["rr_file"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        values = np.loadtxt(path, ndmin=1)  # what Kubios reads: one interval per line
        inside = (beats.t >= a) & (beats.t < b)
        np.testing.assert_allclose(values, beats.rr_ms[inside], atol=5e-4)
        assert len(values) == int(row["n_beats"])
    assert not list(tmp_path.glob(".*partial"))
