"""The design map's floors, checked on the source: dependencies flow one way, heavy libraries stay in their place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"devices", "protocols", "recordings", "biofeedback", "app"}
ALLOWED = {
    "devices": {"devices"},
    "protocols": {"protocols"},
    "recordings": {"recordings", "devices", "protocols"},
    "biofeedback": {"biofeedback", "recordings", "devices", "protocols"},
}


def _imports(path: Path) -> set[str]:
    """Top-level module names imported by a file (relative imports count as its own package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(path.parent.name if node.level else (node.module or "").split(".")[0])
    return names


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_its_own_floor_or_below(package):
    for path in _files(package):
        ours = _imports(path) & OURS
        assert ours <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(ours - ALLOWED[package])}"


def test_qt_bleak_and_neurokit2_stay_where_the_design_puts_them():
    for package in ALLOWED:
        for path in _files(package):
            names = _imports(path)
            rel = path.relative_to(ROOT)
            if not (package == "biofeedback" and path.name.startswith("display")):
                assert not names & {"PySide6", "pyqtgraph"}, f"{rel} imports Qt"
            if package != "devices":
                assert "bleak" not in names, f"{rel} imports bleak"
            if package != "biofeedback":
                assert "neurokit2" not in names, f"{rel} imports neurokit2"
