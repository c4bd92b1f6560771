"""Which screen each participant's window goes on (`--participant-screen P01=2`), and putting it there.

Screens are numbered from 1 in the order Qt lists them (`QGuiApplication.screens()`); the experimenter's monitor
stays on the primary screen. `place_windows` is a pure function of the screens' geometries: a participant assigned to
a screen goes there; the others fill the screens that are not the primary one, each on a screen of its own while
there are enough, else sharing the least used. Windows sharing a screen split it into tiles (never on top of each
other); a window alone on a screen other than the primary is full screen. A window on the primary screen (none other,
or chosen) opens as a normal window there, beside the monitor. What had to be shared is said in words (`notes`),
for the log and the monitor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Rect = tuple[int, int, int, int]
"""x, y, width, height (Qt's virtual-desktop coordinates)."""


class ScreenChoiceError(ValueError):
    """A `--participant-screen` value that cannot be followed (its message says why, and which screens there are)."""


@dataclass(frozen=True, slots=True)
class Placement:
    participant_id: str
    screen: int
    """0-based index into the screens."""
    rect: Rect | None
    """Where on the screen; None: a normal window wherever the window system puts it (on the monitor's screen)."""
    full_screen: bool


def parse_screen_choices(values: Sequence[str]) -> dict[str, int]:
    """`P01=2` values (repeatable) as {participant: screen number from 1}."""
    out: dict[str, int] = {}
    for value in values:
        pid, eq, number = (part.strip() for part in value.partition("="))
        if not pid or not eq or not number.isdigit() or int(number) < 1:
            raise ScreenChoiceError(f"--participant-screen {value!r}: expected PARTICIPANT=SCREEN, e.g. P01=2 "
                                    "(screens are numbered from 1)")  # fmt: skip
        if pid in out:
            raise ScreenChoiceError(f"--participant-screen: {pid} is given twice")
        out[pid] = int(number)
    return out


def describe_screens(screens: Sequence[Rect], names: Sequence[str] = (), primary: int = 0) -> str:
    """"1 (primary, 1920×1080 at 0,0), 2 (HDMI-1, 1280×800 at 1920,0)"."""
    parts = []
    for i, (x, y, w, h) in enumerate(screens):
        label = ", ".join(p for p in ("primary" if i == primary else "", names[i] if i < len(names) else "") if p)
        parts.append(f"{i + 1} ({label + ', ' if label else ''}{w}×{h} at {x},{y})")
    return ", ".join(parts)


def tiles(rect: Rect, n: int) -> list[Rect]:
    """`rect` split into `n` tiles, row by row, as square a grid as fits (columns first)."""
    x, y, w, h = rect
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = []
    for k in range(n):
        r, c = divmod(k, cols)
        x0, x1 = x + w * c // cols, x + w * (c + 1) // cols
        y0, y1 = y + h * r // rows, y + h * (r + 1) // rows
        out.append((x0, y0, x1 - x0, y1 - y0))
    return out


def place_windows(
    participants: Sequence[str], screens: Sequence[Rect], primary: int = 0, assigned: Mapping[str, int] | None = None
) -> tuple[list[Placement], list[str]]:
    """Each participant's screen and window rectangle (see the module docstring), and notes on what is shared."""
    assigned = dict(assigned or {})
    if not screens:
        raise ScreenChoiceError("no screen to show the participants' windows on")
    unknown = sorted(set(assigned) - set(participants))
    if unknown:
        raise ScreenChoiceError(f"--participant-screen names {', '.join(unknown)}, who is not in this session "
                                f"({', '.join(participants)})")  # fmt: skip
    for pid, number in assigned.items():
        if not 1 <= number <= len(screens):
            raise ScreenChoiceError(f"--participant-screen {pid}={number}: there are {len(screens)} screen(s): "
                                    f"{describe_screens(screens, primary=primary)}")  # fmt: skip
    pool = [i for i in range(len(screens)) if i != primary] or [primary]
    on: dict[int, list[str]] = {i: [] for i in range(len(screens))}
    for pid in participants:
        if pid in assigned:
            on[assigned[pid] - 1].append(pid)
    for pid in participants:
        if pid not in assigned:
            screen = min(pool, key=lambda i: (len(on[i]), pool.index(i)))
            on[screen].append(pid)
    placements: dict[str, Placement] = {}
    notes = []
    for i, pids in on.items():
        if not pids:
            continue
        alone = len(pids) == 1 and i != primary
        rects: list[Rect | None] = [None] * len(pids) if i == primary else list(tiles(screens[i], len(pids)))
        for pid, rect in zip(pids, rects, strict=True):
            placements[pid] = Placement(pid, i, rect, alone)
        if len(pids) > 1:
            notes.append(f"{', '.join(pids)} share screen {i + 1}"
                         + (" with the monitor" if i == primary else "") + " (side by side)")  # fmt: skip
        elif i == primary:
            notes.append(f"{pids[0]} is on screen {i + 1} with the monitor")
    if notes:
        notes.insert(0, f"{len(participants)} participant window(s), {len(screens) - 1} screen(s) besides the "
                        "monitor's")  # fmt: skip
    return [placements[p] for p in participants], notes


# --- Qt ------------------------------------------------------------------------------------------------------


def qt_screens():
    """(QScreen list, their geometries, names, index of the primary) as Qt sees them now."""
    from PySide6 import QtGui

    screens = QtGui.QGuiApplication.screens()
    primary = QtGui.QGuiApplication.primaryScreen()
    geometries = [(g.x(), g.y(), g.width(), g.height()) for g in (s.geometry() for s in screens)]
    index = next((i for i, s in enumerate(screens) if s is primary or s == primary), 0)
    return screens, geometries, [s.name() for s in screens], index


def check_screen_choices(participants: Sequence[str], choices: Mapping[str, int]) -> None:
    """Refuse (ScreenChoiceError) choices that cannot be followed on the screens there are now, before recording."""
    from PySide6 import QtWidgets

    _app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    _screens, geometries, names, primary = qt_screens()
    if choices and max(choices.values()) > len(geometries):
        pid, number = max(choices.items(), key=lambda kv: kv[1])
        raise ScreenChoiceError(f"--participant-screen {pid}={number}: there are {len(geometries)} screen(s): "
                                f"{describe_screens(geometries, names, primary)}")  # fmt: skip
    place_windows(participants, geometries, primary, choices)


def show_placed(window, screen, placement: Placement) -> None:
    """Put a top-level window on `screen` at `placement` (full screen when it has the screen to itself)."""
    from PySide6 import QtCore

    window.setScreen(screen)
    if placement.rect is None:
        window.show()
        return
    rect = QtCore.QRect(*placement.rect)
    window.setGeometry(rect)
    if placement.full_screen:
        window.showFullScreen()
    else:
        window.show()
        window.setGeometry(rect)  # again once shown: some platforms place new windows first
