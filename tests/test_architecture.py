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


# biofeedback's own workflow floors: a sub-package imports only its own floor or those before it.
BIOFEEDBACK_FLOORS = {
    "live": {"live"},
    "analysis": {"analysis", "live"},
    "study": {"study", "analysis", "live"},
    "display": {"display", "live"},
}
CONSOLE_FLOOR = {"display", "live", "analysis", "study"}
"""The lab console (`biofeedback/display/console*.py`) sits on top, as app.py does: it opens reports and analyses."""


def _dotted_imports(path: Path) -> set[str]:
    """Dotted module names imported by a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            package = path.relative_to(ROOT).parts[0]
            if node.level and package == "biofeedback":
                raise AssertionError(f"{path.relative_to(ROOT)}: relative import (the floors are checked on absolute)")
            module = f"{package}.{node.module or ''}" if node.level else node.module
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def _imports(path: Path) -> set[str]:
    """Top-level module names imported by a file."""
    return {name.split(".")[0] for name in _dotted_imports(path)}


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
            if not (package == "biofeedback" and "display" in path.parts):
                assert not names & {"PySide6", "pyqtgraph"}, f"{rel} imports Qt"
            if package != "devices":
                assert "bleak" not in names, f"{rel} imports bleak"
            if package != "biofeedback":
                assert "neurokit2" not in names, f"{rel} imports neurokit2"


def test_biofeedback_is_split_by_workflow_with_nothing_left_flat():
    flat = sorted(p.name for p in (ROOT / "biofeedback").glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules outside biofeedback's sub-packages: {flat}"
    assert {p.name for p in (ROOT / "biofeedback").iterdir() if (p / "__init__.py").exists()} == set(BIOFEEDBACK_FLOORS)


@pytest.mark.parametrize("floor", sorted(BIOFEEDBACK_FLOORS))
def test_biofeedback_sub_packages_import_only_their_floor_or_before(floor):
    for path in sorted((ROOT / "biofeedback" / floor).rglob("*.py")):
        used = {name.split(".")[1] for name in _dotted_imports(path) if name.startswith("biofeedback.")}
        console = floor == "display" and path.name.startswith("console")
        extra = sorted(used - (CONSOLE_FLOOR if console else BIOFEEDBACK_FLOORS[floor]))
        assert not extra, f"{path.relative_to(ROOT)} imports biofeedback.{extra}"


def test_live_code_never_loads_neurokit2():
    """The live path must start fast and stay fast: neurokit2 belongs to analysis and study."""
    for path in sorted((ROOT / "biofeedback" / "live").rglob("*.py")):
        assert "neurokit2" not in _imports(path), f"{path.relative_to(ROOT)} imports neurokit2"


def test_only_the_console_uses_the_console():
    """The session windows stay on their floor: no display module but the console's own imports the console."""
    for path in sorted((ROOT / "biofeedback" / "display").glob("*.py")):
        if path.name.startswith("console"):
            continue
        uses = [n for n in _dotted_imports(path) if n.startswith("biofeedback.display.console")]
        assert not uses, f"{path.relative_to(ROOT)} imports {uses}"
