"""Exports are atomic and private: planted symlinks and partials, killed exports and reruns, free-text labels.

Kills are real: a subprocess SIGKILLs itself at a chosen point inside the writer, leaving what a killed export
leaves on disk; then the export is rerun in this process and the result read back with the real readers.
"""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_export_bids import validate
from test_exports_sessions import make_session

import app
from recordings.capture import export_capture
from recordings.export_bids import export_bids
from recordings.export_csv import export_csv
from recordings.export_edf import export_edf
from recordings.export_kubios import export_kubios
from recordings.files import OutputExistsError
from recordings.import_rr import import_rr
from recordings.store import Store

ROOT = Path(__file__).resolve().parents[1]
VICTIM_TEXT = "another file the user owns\n"


@pytest.fixture(scope="module")
def stored(tmp_path_factory, shared_data):
    """One ECG session (P-01) and one RR-only session (P02), each with a manual marker typed as free text."""
    path = tmp_path_factory.mktemp("safety") / "store.sqlite"
    with Store(path) as store:
        a = make_session(store, shared_data, "P-01", duration_s=90, seed=1)
        b = make_session(store, shared_data, "P02", start_s=200, duration_s=90, ecg=False, seed=2)
        store.add_marker(a, 40.0, "manual", "distress")  # a fixed label from the monitor's list
        store.flush()
    return path, a, b


def _exporters(store: Store, sid: int, out: Path):
    """(first file each exporter writes, a call that writes it) for every exporter built on `files`."""
    return {
        "csv": ("beats.csv", lambda force=False: export_csv(store, sid, out, overwrite=force)),
        "capture": (f"sub-P-01_session-{sid}_capture.jsonl",
                    lambda force=False: [export_capture(store, sid, out, overwrite=force)]),
        "edf": (f"sub-P01_ses-{sid}.edf", lambda force=False: [export_edf(store, sid, out / f"sub-P01_ses-{sid}.edf",
                                                                           overwrite=force)]),
        "kubios": (f"sub-P-01_ses-{sid}_rr.txt", lambda force=False: export_kubios(store, sid, out, overwrite=force)),
    }  # fmt: skip


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".partial")]


@pytest.mark.parametrize("fmt", ["csv", "capture", "edf", "kubios"])
def test_planted_symlink_at_the_temp_name_is_not_followed(stored, tmp_path, fmt):
    path, sid, _ = stored
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text(VICTIM_TEXT)
    victim.chmod(0o644)
    with Store(path) as store:
        name, run = _exporters(store, sid, out)[fmt]
        (out / f".{name}.partial").symlink_to(victim)
        written = run()
    assert victim.read_text() == VICTIM_TEXT and stat.S_IMODE(victim.stat().st_mode) == 0o644
    target = out / name
    assert target in written and not target.is_symlink() and target.stat().st_size > 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _partials(out) == []


@pytest.mark.parametrize("fmt", ["csv", "capture", "edf", "kubios"])
def test_planted_0644_partial_gives_no_0644_export(stored, tmp_path, fmt):
    path, sid, _ = stored
    out = tmp_path / "out"
    out.mkdir()
    with Store(path) as store:
        name, run = _exporters(store, sid, out)[fmt]
        planted = out / f".{name}.partial"
        planted.write_text("planted by someone else " * 1000)
        planted.chmod(0o644)
        run()
    target = out / name
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert b"planted" not in target.read_bytes()
    assert _partials(out) == []


def test_planted_symlink_for_the_bids_dataset_files(stored, tmp_path):
    path, sid, _ = stored
    root, victim = tmp_path / "bids", tmp_path / "victim.txt"
    root.mkdir()
    victim.write_text(VICTIM_TEXT)
    (root / ".participants.tsv.partial").symlink_to(victim)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text(VICTIM_TEXT)
    (root / "sub-P01").mkdir()
    (root / "sub-P01" / f".ses-{sid}.partial").symlink_to(elsewhere, target_is_directory=True)
    with Store(path) as store:
        export_bids(store, root, [sid])
    assert victim.read_text() == VICTIM_TEXT and (elsewhere / "keep.txt").read_text() == VICTIM_TEXT
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert stat.S_IMODE((root / "participants.tsv").stat().st_mode) == 0o600 and _partials(root) == []


def _run_and_kill(script: str) -> None:
    """Run `script` in a fresh interpreter that SIGKILLs itself inside the writer; check it really died so."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_killed_csv_export_leaves_nothing_partial_after_a_rerun(stored, tmp_path):
    path, sid, _ = stored
    out = tmp_path / "csv"
    _run_and_kill(f"""
        import os, signal
        real_replace, calls = os.replace, []
        def dying_replace(src, dst):
            calls.append(dst)
            if len(calls) == 2:  # beats.csv is in place, markers.csv still a partial
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = dying_replace
        from recordings.export_csv import export_csv
        from recordings.store import Store
        with Store({str(path)!r}) as store:
            export_csv(store, {sid}, {str(out)!r})
    """)
    assert (out / "beats.csv").exists() and _partials(out) != []  # what the kill left
    with Store(path) as store:
        with pytest.raises(OutputExistsError, match="--force"):
            export_csv(store, sid, out)  # refused: beats.csv is there; the leftovers still go
        assert _partials(out) == []
        export_csv(store, sid, out, overwrite=True)
    assert _partials(out) == []
    with (out / "markers.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) > 5


def test_killed_edf_export_rerun_leaves_no_partial(stored, tmp_path):
    path, sid, _ = stored
    out = tmp_path / "edf" / f"sub-P01_ses-{sid}.edf"
    with Store(path) as store:
        export_edf(store, sid, out)
    _run_and_kill(f"""
        import os, signal
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        from recordings.export_edf import export_edf
        from recordings.store import Store
        with Store({str(path)!r}) as store:
            export_edf(store, {sid}, __import__("pathlib").Path({str(out)!r}), overwrite=True)
    """)
    assert _partials(out.parent) != []
    with Store(path) as store, pytest.raises(OutputExistsError):
        export_edf(store, sid, out)
    assert _partials(out.parent) == []


@pytest.mark.parametrize("ecg", [True, False])
def test_bids_export_killed_mid_session_is_redone_on_rerun(stored, tmp_path, ecg):
    path, ecg_sid, rr_sid = stored
    sid = ecg_sid if ecg else rr_sid
    root = tmp_path / "bids"
    _run_and_kill(f"""
        import os, signal
        import recordings.export_bids as eb
        real_write = eb._write
        def dying_write(path, text, overwrite, written):
            if path.name.endswith("_events.tsv"):  # the physio files are written, the events not yet
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, text, overwrite, written)
        eb._write = dying_write
        from recordings.store import Store
        with Store({str(path)!r}) as store:
            eb.export_bids(store, {str(root)!r}, [{sid}])
    """)
    assert any("physio" in p.name for p in root.rglob("*.gz"))  # the kill came mid-session
    with Store(path) as store:
        other = ecg_sid if sid == rr_sid else rr_sid
        export_bids(store, root, [other])  # a rerun for another session sweeps the leftovers too
        assert _partials(root) == []
        result = export_bids(store, root, [sid])
    assert result.exported_sessions == [sid] and result.kept_sessions == []
    beh = next(root.glob(f"sub-*/ses-{sid}/beh"))
    assert any(p.name.endswith("_events.tsv") for p in beh.iterdir())
    assert _partials(root) == [] and not list(root.rglob(".ses-*"))
    assert validate(root) == []


def test_incomplete_session_folder_found_later_is_redone_not_kept(stored, tmp_path, monkeypatch):
    """A folder that lost files (an older exporter killed mid-session, or a hand edit) is redone."""
    path, sid, _ = stored
    root = tmp_path / "bids"
    with Store(path) as store:
        export_bids(store, root, [sid])
        beh = next(root.glob(f"sub-*/ses-{sid}/beh"))
        for p in beh.glob("*_events.*"):
            p.unlink()
        again = export_bids(store, root, [sid])
        assert again.kept_sessions == [] and again.redone_sessions == [sid]
        assert len(list(beh.glob("*_events.*"))) == 2 and validate(root) == []
        # an exception inside the writer leaves the complete folder as it was and nothing partial
        import recordings.export_bids as eb

        before = {p.name: p.read_bytes() for p in beh.iterdir()}

        def failing(*_a, **_k):
            raise OSError("disk full (simulated)")

        monkeypatch.setattr(eb, "_write", failing)
        with pytest.raises(OSError, match="disk full"):
            export_bids(store, root, [sid], overwrite=True)
        assert {p.name: p.read_bytes() for p in beh.iterdir()} == before and _partials(root) == []


def test_markers_csv_carries_typed_labels_only_with_include_text(stored, tmp_path):
    path, sid, _ = stored
    with Store(path) as store:
        export_csv(store, sid, tmp_path / "plain")
        export_csv(store, sid, tmp_path / "text", include_text=True)

    def manual_labels(folder: Path) -> list[str]:
        with (folder / "markers.csv").open() as fh:
            return sorted(r["label"] for r in csv.DictReader(fh) if r["kind"] == "manual")

    assert manual_labels(tmp_path / "plain") == ["", "distress"]  # the typed "cough" stays in the store
    assert "cough" not in (tmp_path / "plain" / "markers.csv").read_text()
    assert manual_labels(tmp_path / "text") == ["cough", "distress"]


def test_dataset_toml_fills_the_description_and_sidecars(stored, tmp_path, capsys):
    path, sid, rr_sid = stored
    info = tmp_path / "lab.toml"
    info.write_text('Name = "CMT pilot 2026"\nAuthors = ["A. Researcher", "B. Researcher"]\n'
                    'License = "CC-BY-4.0"\nInstitution = "Example University"\n')  # fmt: skip
    root = tmp_path / "bids"
    args = ["export", str(sid), "--format", "bids", "--out", str(root), "--store", str(path)]
    assert app.main([*args, "--dataset-info", str(info)]) == 0
    assert f"dataset information from {info}" in capsys.readouterr().out
    import json

    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["Name"] == "CMT pilot 2026" and desc["Authors"] == ["A. Researcher", "B. Researcher"]
    assert desc["License"] == "CC-BY-4.0" and desc["BIDSVersion"]
    (sidecar,) = root.glob("sub-*/ses-*/beh/*_recording-ecg_physio.json")
    meta = json.loads(sidecar.read_text())
    assert meta["InstitutionName"] == "Example University" and meta["DeviceSerialNumber"] == "8C4D2A21"
    assert validate(root) == []
    # a key the file must not have: one clear line, exit 2, nothing written
    info.write_text('Name = "x"\nAuthor = "typo"\n')
    assert app.main(["export", str(rr_sid), "--format", "bids", "--out", str(tmp_path / "b2"), "--store", str(path),
                     "--dataset-info", str(info)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "unknown key 'Author'" in err and str(info) in err.replace("\n", "") and "Traceback" not in err
    assert not (tmp_path / "b2").exists()


def test_dataset_toml_beside_the_store_is_used_by_default(tmp_path, shared_data, capsys):
    store_path = tmp_path / "lab" / "store.sqlite"
    store_path.parent.mkdir()
    with Store(store_path) as store:
        make_session(store, shared_data, "P01", duration_s=60)
    (store_path.parent / "dataset.toml").write_text('Name = "Lab default"\nLicense = "CC0"\n')
    root = tmp_path / "bids"
    assert app.main(["export", "1", "--format", "bids", "--out", str(root), "--store", str(store_path)]) == 0
    import json

    assert json.loads((root / "dataset_description.json").read_text())["Name"] == "Lab default"


def test_imported_session_acq_time_is_not_the_import_time(tmp_path, shared_data):
    rr = tmp_path / "rr.txt"
    rr.write_text("\n".join(["812", "798", "805", "790"] * 40) + "\n")
    with Store(tmp_path / "s.sqlite") as store:
        sid = import_rr(store, rr, "P05")
        root = tmp_path / "bids"
        export_bids(store, root, [sid])
    with (root / "sub-P05" / "sub-P05_sessions.tsv").open() as fh:
        (row,) = list(csv.DictReader(fh, delimiter="\t"))
    assert row["acq_time"] == "n/a"  # the RR file gave no start time; the import time is not the recording's
    assert validate(root) == []


def test_corrupt_dataset_description_is_one_clear_line(stored, tmp_path, capsys):
    path, sid, _ = stored
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "half')
    args = ["export", str(sid), "--format", "bids", "--out", str(root), "--store", str(path)]
    assert app.main(args) == 2
    err = capsys.readouterr().err
    assert "dataset_description.json: not valid JSON" in err.replace("\n", "") and "Traceback" not in err
    assert sorted(p.name for p in root.iterdir()) == ["dataset_description.json"]
