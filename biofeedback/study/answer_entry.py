"""Entering answers to an instrument in the terminal: one gentle prompt per item, validation, a summary, consent.

Reads lines through `Console.input` (so it can be driven by feeding stdin). An empty line skips an item or a
text field; a value off the scale is asked again with a kind reminder. Nothing is saved without a final "y".
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from protocols.instruments import Instrument, score


class EntryAborted(Exception):
    """The input ended (or the person declined) before the answers were confirmed: nothing is saved."""


def _read(console: Console, prompt: str) -> str:
    try:
        return console.input(prompt)
    except EOFError:
        raise EntryAborted("input ended before the answers were confirmed; nothing was saved") from None


def ask_answers(instrument: Instrument, console: Console) -> tuple[dict[str, float | None], dict[str, str]]:
    """Ask every item and text field; returns (values, texts) or raises EntryAborted."""
    console.print(f"[bold]{escape(instrument.title)}[/bold]")
    if instrument.instructions:
        console.print(escape(instrument.instructions), highlight=False)
    console.print("[dim]Press Enter without a number to skip a question.[/dim]\n")
    values: dict[str, float | None] = {}
    total = len(instrument.items)
    for n, item in enumerate(instrument.items, start=1):
        sc = item.scale
        console.print(f"[bold]{n}/{total}[/bold] {escape(item.text)}", highlight=False)
        console.print(f"   [dim]{escape(sc.describe())}[/dim]", highlight=False)
        while True:
            raw = _read(console, f"   your answer ({sc.min}–{sc.max}, Enter to skip): ").strip()
            if raw == "":
                values[item.id] = None
                break
            try:
                number = float(raw)
            except ValueError:
                number = None
            if number is not None and sc.contains(number):
                values[item.id] = number
                break
            console.print(f"   [dim]Please type a whole number from {sc.min} to {sc.max}, or just press Enter "
                          "to skip this one.[/dim]")  # fmt: skip
    texts: dict[str, str] = {}
    for field in instrument.texts:
        console.print(field.prompt, highlight=False)
        raw = _read(console, "   (optional, Enter to skip): ").strip()
        if raw:
            texts[field.id] = raw
    return values, texts


def summary_table(instrument: Instrument, values: dict[str, float | None], texts: dict[str, str]) -> Table:
    table = Table(title=f"{instrument.name}: summary before saving", show_lines=False)
    table.add_column("item")
    table.add_column("answer", justify="right")
    for item in instrument.items:
        v = values.get(item.id)
        label = item.scale.label(int(v)) if v is not None else None
        shown = "skipped" if v is None else f"{v:g}" + (f" ({label})" if label else "")
        table.add_row(item.id, shown)
    for field in instrument.texts:
        table.add_row(field.id, f"free text, {len(texts[field.id])} characters" if field.id in texts else "–")
    for sc in score(instrument, values).values():
        value = "missing" if sc.value is None else f"{sc.value:g}"
        note = f" [dim]({escape(sc.note)})[/dim]" if sc.note else ""
        table.add_row(f"[bold]score {escape(sc.name)}[/bold]", value + note)
    return table


def confirm(console: Console, question: str = "Save these answers? (y/n): ") -> bool:
    while True:
        raw = _read(console, question).strip().lower()
        if raw in ("y", "yes"):
            return True
        if raw in ("n", "no"):
            return False
        console.print("[dim]Please answer y or n.[/dim]")
