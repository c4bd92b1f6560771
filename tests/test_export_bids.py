"""BIDS export: the official validator (offline) finds zero errors; contents, privacy and re-export behave."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_exports_sessions import FRAME, SECRET_NOTE, make_session

from recordings.export_bids import BidsExportError, bids_label, export_bids
from recordings.store import Store

VALIDATOR = shutil.which("bids-validator-deno")


def validate(root: Path) -> list[dict]:
    """Run the official BIDS validator offline; return its error-level issues."""
    assert VALIDATOR, "bids-validator-deno is not installed (pip install bids-validator-deno)"
    out = subprocess.run([VALIDATOR, "--format", "json", str(root)], capture_output=True, text=True, timeout=120)
    assert out.stdout, out.stderr
    issues = json.loads(out.stdout)["issues"]["issues"]
    return [i for i in issues if i["severity"] == "error"]


@pytest.fixture(scope="module")
def study(tmp_path_factory, shared_data):
    """Three participants, four sessions: ECG with a gap, a session without ECG, IDs that need sanitising."""
    path = tmp_path_factory.mktemp("bids") / "store.sqlite"
    store = Store(path)
    ids = {
        "p01_a": make_session(store, shared_data, "P-01", duration_s=150, drop_frames=range(80, 90), seed=1),
        "p01_b": make_session(
            store,
            shared_data,
            "P-01",
            start_s=200,
            duration_s=120,
            ecg=False,
            seed=2,
            started_utc="2025-03-14T09:30:00.000+00:00",
        ),
        "p02": make_session(store, shared_data, "P02", start_s=300, duration_s=120, seed=3),
        "p03": make_session(store, shared_data, "lab_7", start_s=420, duration_s=120, seed=4),
    }
    yield store, ids
    store.close()


def read_gz_rows(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t") for line in fh]


def test_multi_participant_export_passes_the_validator(study, tmp_path):
    store, ids = study
    root = tmp_path / "bids"
    result = export_bids(store, root, list(ids.values()))
    assert sorted(result.exported_sessions) == sorted(ids.values())
    assert validate(root) == []
    assert sorted(p.name for p in root.glob("sub-*")) == ["sub-P01", "sub-P02", "sub-lab7"]
    with (root / "participants.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {r["participant_id"]: r["recorder_id"] for r in rows} == {
        "sub-P01": "P-01", "sub-P02": "P02", "sub-lab7": "lab_7"
    }  # fmt: skip
    for path in root.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_ecg_beats_and_events_carry_the_stored_data(study, tmp_path):
    store, ids = study
    sid = ids["p01_a"]
    root = tmp_path / "bids"
    export_bids(store, root, [sid])
    beh = root / "sub-P01" / f"ses-{sid}" / "beh"
    stem = f"sub-P01_ses-{sid}_task-cmtsoothing"
    meta = json.loads((beh / f"{stem}_recording-ecg_physio.json").read_text())
    assert meta["Columns"] == ["timestamp", "ecg"] and meta["ecg"]["Units"] == "uV"
    assert meta["DeviceSerialNumber"] == "8C4D2A21"  # the strap id from its name "Polar H10 8C4D2A21"
    assert meta["SamplingFrequency"] == pytest.approx(130.16, abs=0.05)
    rows = read_gz_rows(beh / f"{stem}_recording-ecg_physio.tsv.gz")
    t = np.array([float(r[0]) for r in rows])
    assert t[0] == pytest.approx(meta["StartTime"], abs=1e-6)
    np.testing.assert_allclose(np.diff(t), 1 / meta["SamplingFrequency"], atol=2e-6)
    ecg = [r[1] for r in rows]
    missing = np.flatnonzero([v == "n/a" for v in ecg])
    assert abs(len(missing) - 10 * FRAME) <= 1 and np.all(np.diff(missing) == 1)  # the dropped frames, not invented
    stored = np.concatenate([c[3] for c in store.ecg_chunks(sid)])
    np.testing.assert_array_equal([int(v) for v in ecg if v != "n/a"], stored)
    # ECG time zero is the session start: the strap started 1.5 s in
    assert meta["StartTime"] == pytest.approx(1.5, abs=0.05)

    beats = store.beats(sid)
    ev = read_gz_rows(beh / f"{stem}_recording-ecg_physioevents.tsv.gz")
    np.testing.assert_allclose([float(r[0]) for r in ev], beats.t, atol=1e-6)
    assert {r[1] for r in ev} == {"0"}  # duration: a beat is a point in time
    np.testing.assert_allclose([float(r[2]) for r in ev], beats.rr_ms, atol=1e-3)
    ev_meta = json.loads((beh / f"{stem}_recording-ecg_physioevents.json").read_text())
    assert ev_meta["Columns"][:2] == ["onset", "duration"] and ev_meta["OnsetSource"] == "timestamp"
    assert ev_meta["rr"]["Units"] == "ms"

    with (beh / f"{stem}_events.tsv").open() as fh:
        events = list(csv.DictReader(fh, delimiter="\t"))
    levels = json.loads((beh / f"{stem}_events.json").read_text())["trial_type"]["Levels"]
    assert {e["trial_type"] for e in events} <= set(levels)
    phases = [e for e in events if e["trial_type"].endswith("_phase")]
    assert [p["trial_type"] for p in phases] == ["rest_phase", "breathing_phase", "imagery_phase"]
    assert [p["phase_name"] for p in phases] == ["baseline", "soothing rhythm", "compassionate image"]
    assert [float(p["duration"]) for p in phases] == pytest.approx([50.0, 50.0, 50.0])
    assert phases[1]["pacer_bpm"] == "6" and phases[1]["phase_kind"] == "breathing"
    (gap,) = [e for e in events if e["trial_type"] == "ecg_gap"]
    assert float(gap["duration"]) == pytest.approx(10 * FRAME / 130.16, abs=0.05)
    assert [float(e["onset"]) for e in events] == sorted(float(e["onset"]) for e in events)


def test_free_text_leaves_only_when_asked(study, tmp_path):
    store, ids = study
    plain, with_text = tmp_path / "plain", tmp_path / "text"
    export_bids(store, plain, [ids["p02"]])
    export_bids(store, with_text, [ids["p02"]], include_text=True)

    def all_text(root: Path) -> str:
        parts = []
        for p in root.rglob("*"):
            if p.is_file():
                parts.append(gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text())
        return "\n".join(parts)

    assert SECRET_NOTE not in all_text(plain) and "cough" not in all_text(plain)
    assert "Polar" in all_text(plain)  # the device is described; the participant is not
    assert SECRET_NOTE in all_text(with_text) and "cough" in all_text(with_text)
    assert validate(with_text) == []


def test_reexport_adds_sessions_and_keeps_what_is_there(study, tmp_path, shared_data):
    store, ids = study
    root = tmp_path / "bids"
    export_bids(store, root, [ids["p01_a"], ids["p02"]])
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "ses-" in str(p)}
    result = export_bids(store, root, list(ids.values()))
    assert sorted(result.kept_sessions) == sorted([ids["p01_a"], ids["p02"]])
    assert sorted(result.exported_sessions) == sorted([ids["p01_b"], ids["p03"]])
    assert all(p.read_bytes() == data for p, data in before.items())
    with (root / "sub-P01" / "sub-P01_sessions.tsv").open() as fh:
        sessions = list(csv.DictReader(fh, delimiter="\t"))
    assert [s["session_id"] for s in sessions] == [f"ses-{ids['p01_a']}", f"ses-{ids['p01_b']}"]
    assert sessions[1]["acq_time"].startswith("2025-03-14T09:30:00")
    assert validate(root) == []
    # --force rewrites a session that is there
    again = export_bids(store, root, [ids["p02"]], overwrite=True)
    assert again.exported_sessions == [ids["p02"]] and not again.kept_sessions


def test_colliding_labels_are_refused_before_anything_is_written(tmp_path, shared_data):
    assert bids_label("P-01") == "P01" and bids_label("lab_7") == "lab7"
    with Store(tmp_path / "s.sqlite") as store:
        a = make_session(store, shared_data, "P-01", duration_s=60)
        b = make_session(store, shared_data, "P_01", duration_s=60)
        with pytest.raises(BidsExportError, match="both become BIDS label sub-P01"):
            export_bids(store, tmp_path / "bids", [a, b])
    assert not (tmp_path / "bids").exists()


def test_cli_exports_bids_kubios_and_edf(tmp_path, shared_data, capsys):
    import app

    with Store(tmp_path / "s.sqlite") as store:
        make_session(store, shared_data, "P-01", duration_s=60)
        make_session(store, shared_data, "P02", duration_s=60, ecg=False)
    base = ["--store", str(tmp_path / "s.sqlite")]
    assert app.main(["export", "--all", "--format", "bids", "--out", str(tmp_path / "bids"), *base]) == 0
    assert "into BIDS dataset" in capsys.readouterr().out
    assert validate(tmp_path / "bids") == []
    assert app.main(["export", "--participant", "P02", "--format", "kubios", "--out", str(tmp_path / "k"), *base]) == 0
    assert app.main(["export", "1", "--format", "edf", "--out", str(tmp_path / "e"), *base]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert out.count("wrote") == 6  # every written file is reported (Kubios: RR, phases and one RR file per phase)
    assert (tmp_path / "k" / "sub-P02_ses-2_rr.txt").exists() and (tmp_path / "e" / "sub-P01_ses-1.edf").exists()
