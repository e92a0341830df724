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


def print_key_values(title: str, rows, note: str | None = None) -> None:
    """A two-column table of (label, value) rows, its title on a line above it and ``note`` below:
    rich would wrap a title or caption to the narrow table's width."""
    from rich.table import Table

    t = Table(show_header=False)
    for label, value in rows:
        t.add_row(label, value)
    console = _console()
    console.print(title, style="bold", highlight=False)
    console.print(t)
    if note:
        console.print(note, highlight=False)


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




def _duration(seconds: float) -> str:
    """4s, 3m05s, 2h07m, 3d04h: two units at most."""
    s = int(round(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // subsize:02d}{sub}"
    return f"{s}s"


def training_progress(console, epochs: int, steps: int, quiet: bool):
    """``archbench run``'s progress: a bar over epochs and one over the epoch's steps, and a line
    per epoch. A context manager yielding ``(bar, on_step, on_epoch)`` for the training loop's
    callbacks (the loop-overhead benchmark times the loop with exactly these)."""
    import contextlib

    import time

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    @contextlib.contextmanager
    def manager():
        cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        began = []  # (time, epoch index) of this process's first step: a resume's, after any data setup
        # 2 redraws a second, not rich's 10: a redraw holds the GIL ~2 ms, time the training
        # thread waits for (benchmarks/loop_overhead.py measured 10 Hz at ~5 % of a 1-thread step)
        with Progress(*cols, console=console, transient=True, disable=quiet, refresh_per_second=2) as bar:
            ep_task = bar.add_task("epochs", total=epochs, info="")
            st_task = bar.add_task("steps", total=steps, info="")

            def on_step(epoch, step, loss):
                began[:] = began or [time.perf_counter(), epoch]
                bar.update(st_task, completed=step + 1, info=f"loss {loss:.3f}")

            def on_epoch(epoch, m):
                bar.update(ep_task, completed=epoch, info=f"top-1 {m['top1']:.2f}%  {m['train_throughput']:.0f} img/s")
                bar.reset(st_task, total=steps, info="")
                # what is left at this process's pace so far, evaluation included: the line a
                # batch job's log shows, where no bar is drawn
                t0, e0 = began or [time.perf_counter(), epoch - 1]
                left = (time.perf_counter() - t0) / max(1, epoch - e0) * (epochs - epoch)
                if not quiet:
                    bar.console.print(f"epoch {epoch:3d}/{epochs}  loss {m['loss']:.4f}  top-1 {m['top1']:6.2f}%  "
                                      f"top-5 {m['top5']:6.2f}%  {m['train_throughput']:7.1f} img/s  "
                                      f"{m['epoch_seconds']:.1f}s"
                                      + (f"  eta {_duration(left)}" if epoch < epochs else ""))

            yield bar, on_step, on_epoch

    return manager()
