"""Participant windows on screens: the pure placement, then the whole command under offscreen Qt with three
screens (`offscreen:configfile=`) and under Xvfb with two X screens (what Qt sees as two screens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from biofeedback.display.screens import ScreenChoiceError, parse_screen_choices, place_windows, tiles

ROOT = Path(__file__).resolve().parents[1]
THREE = [(0, 0, 1280, 800), (1280, 0, 1920, 1080), (3200, 0, 1024, 768)]


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_enough_screens_each_participant_full_screen_on_their_own():
    placements, notes = place_windows(["P01", "P02"], THREE, primary=0)
    assert [(p.participant_id, p.screen, p.rect, p.full_screen) for p in placements] == [
        ("P01", 1, THREE[1], True), ("P02", 2, THREE[2], True)]  # fmt: skip
    assert notes == []


def test_six_on_two_spare_screens_share_them_side_by_side_and_say_so():
    pids = [f"P0{i}" for i in range(1, 7)]
    placements, notes = place_windows(pids, THREE, primary=0)
    assert [p.screen for p in placements] == [1, 2, 1, 2, 1, 2]
    assert not any(p.full_screen for p in placements)
    rects = [p.rect for p in placements]
    assert not any(overlap(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])
    for screen in (1, 2):
        mine = [p.rect for p in placements if p.screen == screen]
        assert sum(w * h for _x, _y, w, h in mine) == THREE[screen][2] * THREE[screen][3] * 3 // 4  # a 2×2 grid
    assert notes[0] == "6 participant window(s), 2 screen(s) besides the monitor's"
    assert "P01, P03, P05 share screen 2 (side by side)" in notes


def test_assigned_screens_are_followed_and_the_rest_fill_the_free_ones():
    placements, notes = place_windows(["P01", "P02", "P03"], THREE, 0, parse_screen_choices(["P01=2", "P02=2"]))
    by = {p.participant_id: p for p in placements}
    assert by["P01"].screen == by["P02"].screen == 1 and by["P03"].screen == 2 and by["P03"].full_screen
    assert "P01, P02 share screen 2 (side by side)" in notes
    placements, notes = place_windows(["P01"], THREE, 0, {"P01": 1})
    assert placements[0].rect is None and not placements[0].full_screen  # a normal window beside the monitor
    assert "with the monitor" in notes[-1]


def test_one_screen_only_windows_open_beside_the_monitor():
    placements, notes = place_windows(["P01", "P02"], [(0, 0, 1920, 1080)], 0)
    assert [(p.screen, p.rect, p.full_screen) for p in placements] == [(0, None, False)] * 2  # as windows
    assert "share screen 1 with the monitor" in notes[-1]


@pytest.mark.parametrize(
    ("values", "pids", "match"),
    [(["P01"], ["P01"], "expected PARTICIPANT=SCREEN"), (["P01=0"], ["P01"], "numbered from 1"),
     (["P01=2", "P01=3"], ["P01"], "twice"), (["P09=2"], ["P01"], "P09, who is not in this session"),
     (["P01=4"], ["P01"], r"there are 3 screen\(s\): 1 \(primary, 1280×800 at 0,0\)")],
)  # fmt: skip
def test_choices_that_cannot_be_followed_are_refused_with_the_screens_there_are(values, pids, match):
    with pytest.raises(ScreenChoiceError, match=match):
        place_windows(pids, THREE, 0, parse_screen_choices(values))


def test_tiles_cover_the_area_exactly():
    for n in range(1, 8):
        parts = tiles((10, 20, 1001, 777), n)
        assert len(parts) == n and all(w > 0 and h > 0 for _x, _y, w, h in parts)
        assert not any(overlap(a, b) for i, a in enumerate(parts) for b in parts[i + 1:])


# --- the whole command, windows on real (offscreen or X) screens -----------------------------------------------

PLACED = """
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from PySide6 import QtCore, QtGui, QtWidgets
app_qt = QtWidgets.QApplication([])
import app
from biofeedback.display.participant import ParticipantWindow
seen = {}
def look():
    screens = QtGui.QGuiApplication.screens()
    for w in QtWidgets.QApplication.topLevelWidgets():
        if isinstance(w, ParticipantWindow) and w.isVisible() and w.participant_id not in seen:
            g = w.geometry()
            n = screens.index(w.screen()) + 1
            on_x = None
            if os.environ.get("CHECK_X"):  # which X screen the X server has the window on
                QtWidgets.QApplication.processEvents()
                found = subprocess.run(["xdotool", "search", "--screen", str(n - 1), "--name", w.windowTitle()],
                                       capture_output=True, text=True).stdout.split()
                on_x = str(int(w.winId())) in found
            seen[w.participant_id] = [n, [g.x(), g.y(), g.width(), g.height()], w.isFullScreen(), on_x]
    if len(seen) == int(os.environ["EXPECT_WINDOWS"]):  # placed: no need to wait for the analysis at the end
        print(json.dumps({"seen": seen, "screens": [[s.geometry().width(), s.geometry().height()] for s in screens]}))
        sys.stdout.flush()
        os._exit(0)
timer = QtCore.QTimer(); timer.timeout.connect(look); timer.start(20)
code = app.main(sys.argv[2:])
print(json.dumps({"code": code, "seen": seen}))
"""


def run_placed(tmp_path: Path, env: dict, pids: list[str], extra: list[str]) -> dict:
    script = tmp_path / "placed.py"
    script.write_text(PLACED)
    protocol = tmp_path / "tiny.toml"
    protocol.write_text('name = "tiny"\n[[phase]]\nname = "rest"\nkind = "rest"\nduration = "20s"\n')
    argv = ["session", "run", "--store", str(tmp_path / "s.sqlite"), "--protocol", str(protocol), "--speed", "40",
            "--start-when-ready", *[a for p in pids for a in ("--device", f"sim={p}")], *extra]  # fmt: skip
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "EXPECT_WINDOWS": str(len(pids))}
    out = subprocess.run([sys.executable, str(script), str(ROOT), *argv], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["stdout"] = out.stdout
    return result


def test_offscreen_three_screens_windows_land_on_the_chosen_screens_geometry(tmp_path):
    config = tmp_path / "screens.json"
    config.write_text(json.dumps({"windowFrameMargins": False, "screens": [
        {"name": n, "x": x, "y": y, "width": w, "height": h, "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}
        for n, (x, y, w, h) in zip("ABC", THREE, strict=True)]}))  # fmt: skip
    env = {"QT_QPA_PLATFORM": f"offscreen:configfile={config}"}
    result = run_placed(tmp_path, env, ["P01", "P02", "P03"], ["--participant-screen", "P03=2"])
    assert result["screens"] == [[1280, 800], [1920, 1080], [1024, 768]]
    seen = result["seen"]
    assert seen["P03"][0] == 2 and seen["P01"][0] == 3 and seen["P02"][0] == 2  # P03 chosen; P01 alone on 3
    assert seen["P01"][1] == list(THREE[2]) and seen["P01"][2]  # full screen on screen 3's geometry
    assert seen["P03"][1] == [1280, 0, 960, 1080] and seen["P02"][1] == [2240, 0, 960, 1080]  # sharing screen 2
    assert "screens: P03, P02 share screen 2 (side by side)" in result["stdout"]


def test_xvfb_two_x_screens_the_participant_window_opens_on_the_second(tmp_path):
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt xvfb xdotool)")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-screen", "1",
                             "1024x768x24", "-nolisten", "tcp"], pass_fds=(write_fd,), stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            display = ":" + f.readline().strip()
        env = {"DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "CHECK_X": "1"}
        result = run_placed(tmp_path, env, ["P01"], [])
        assert result["screens"] == [[1280, 800], [1024, 768]]  # two X screens: two QScreens
        screen, rect, full, on_x = result["seen"]["P01"]
        assert screen == 2 and full and rect[2:] == [1024, 768]
        assert on_x is True  # the X server has it on X screen 1 (DISPLAY :N.1), not only Qt's word for it
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


def test_a_screen_choice_that_cannot_be_followed_is_refused_before_anything_is_recorded(qapp, tmp_path, capsys):
    import app
    from recordings.store import Store

    store = tmp_path / "s.sqlite"
    base = ["session", "run", "--store", str(store), "--device", "sim=P01", "--speed", "50"]
    n = len(qapp.screens())
    assert app.main([*base, "--participant-screen", f"P01={n + 1}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: --participant-screen P01={n + 1}: there are {n} screen(s): 1 (primary, ")
    assert app.main([*base, "--headless", "--participant-screen", "P01=1"]) == 2
    assert "leave out --headless" in capsys.readouterr().err
    assert app.main([*base, "--participant-screen", "P07=1"]) == 2
    assert "P07, who is not in this session" in capsys.readouterr().err
    with Store(store) as s:
        assert s.sessions() == []
