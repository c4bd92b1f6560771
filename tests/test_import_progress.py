"""`import rr` and `import polar` show their steps as progress on stderr, never in stdout, when piped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recordings.import_session import IMPORT_STEPS

ROOT = Path(__file__).resolve().parents[1]


def _progress_lines(stderr: str, what: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(f"progress: import of {what} ")]


@pytest.mark.parametrize("command", [["rr", "formats/welltory_subject_01_RR.txt"],
                                     ["polar", "formats/Polar_Sense_PPI.txt", "formats/MARKER.txt"]])
def test_import_progress_when_piped(command, shared_data, tmp_path):
    kind, *names = command
    files = [str(shared_data / n) for n in names]
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--store", str(tmp_path / "s.sqlite"), "import", kind,
                        *files, "--participant", "P01"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = _progress_lines(r.stderr, ", ".join(files))
    n = len(IMPORT_STEPS)
    assert lines and lines[-1] == f"progress: import of {', '.join(files)} {n}/{n} done"
    assert "progress:" not in r.stdout and "imported session 1" in r.stdout


def test_a_failed_import_prints_its_error_and_no_done_line(tmp_path):
    bad = tmp_path / "rr.txt"
    bad.write_text("rr\nnot a number\n")
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "--store", str(tmp_path / "s.sqlite"), "import", "rr",
                        str(bad), "--participant", "P01"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert not any(ln.endswith(" done") for ln in _progress_lines(r.stderr, str(bad)))
    assert sum(ln.startswith("error:") for ln in r.stderr.splitlines()) == 1
