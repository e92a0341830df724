"""Terminal output shared by the commands."""
from __future__ import annotations

def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _console():
    import os

    from rich.console import Console
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # piped or captured: don't squeeze tables to 80 columns
    return console


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


