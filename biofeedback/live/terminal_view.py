"""The headless live view in the terminal (rich): phase, time left, pacer cue, heart rate, running RMSSD."""

from __future__ import annotations

import asyncio

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from biofeedback.live.session import LiveSession


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None else format(value, spec)


def _minutes(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def render(session: LiveSession) -> Group:
    """One frame of the terminal view, from the same views the displays pull."""
    pv = session.participant_view()
    if pv.finished:
        header = Text("Session finished", style="bold")
    else:
        cue = ""
        if pv.pacer_size is not None:
            bar = "●" * (1 + round(pv.pacer_size * 9))
            cue = f"   pacer {pv.pacer_label or ''} {bar}"
        paused = "  (paused)" if pv.paused else ""
        header = Text(
            f"{pv.phase_name} [{pv.phase_kind}]  {_minutes(pv.phase_time_left_s)} left{paused}{cue}",
            style="bold",
        )
    table = Table(box=None, pad_edge=False)
    for col in ("participant", "strap", "link", "contact", "HR bpm", "RMSSD ms", "coherence", "artifacts"):
        table.add_column(col)
    for sv in session.strap_views():
        table.add_row(
            sv.participant_id,
            sv.device_id,
            sv.link_state,
            sv.contact,
            _fmt(sv.hr_bpm),
            _fmt(sv.rmssd_ms, ".1f"),
            _fmt(sv.coherence, ".2f"),
            str(sv.artifacts),
        )
    return Group(header, Text(f"session clock {pv.t:7.1f} s", style="dim"), table)


async def run_terminal_view(session: LiveSession, console: Console | None = None, refresh_hz: float = 4.0) -> None:
    """Redraw the view until cancelled; it only reads the session, so it can never block recording."""
    console = console or Console()
    with Live(render(session), console=console, refresh_per_second=refresh_hz, transient=False) as live:
        while True:
            await asyncio.sleep(1.0 / refresh_hz)
            live.update(render(session))
