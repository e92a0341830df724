"""The results table: one row per measurement, appended to ``<stem>.parquet`` and
``<stem>.csv`` without ever leaving a half-written file (lock, write aside, rename).

Nested values (the spec, per-epoch metrics, skipped-op lists) are stored as JSON text, so
both formats hold the same columns and any row can rebuild its model
(``ArchSpec.from_json(row["spec"])``).
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

DEFAULT_DIR = Path("results")


def _cell(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return v


@contextmanager
def _locked(stem: Path):
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _replace(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one


def read_table(stem: str | Path) -> pd.DataFrame:
    stem = Path(stem)
    path = stem.with_suffix(".parquet")
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def append_rows(stem: str | Path, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Append rows to the table at ``stem`` (no suffix); returns the whole table."""
    stem = Path(stem)
    new = pd.DataFrame([{k: _cell(v) for k, v in r.items()} for r in rows])
    with _locked(stem):
        old = read_table(stem)
        df = new if old.empty else pd.concat([old, new], ignore_index=True)
        for col in df.columns:  # mixed None/str columns break parquet type inference
            if df[col].dtype == object:
                df[col] = df[col].map(lambda v: v if v is None or isinstance(v, str) else _cell(v)
                                      if isinstance(v, (dict, list)) else v)
        _replace(df, stem.with_suffix(".parquet"))
        _replace(df, stem.with_suffix(".csv"))
    return df


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            # results/ is written by the runs themselves: only code changes make a commit "dirty"
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                    ":(exclude)results"], cwd=root,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def provenance(**extra: Any) -> dict[str, Any]:
    """Where and with what a row was measured."""
    import fvcore  # noqa: F401
    import ptflops
    import timm
    import torch
    from importlib.metadata import version

    def ver(name: str) -> str:
        try:
            return version(name)
        except Exception:  # noqa: BLE001
            return "unknown"

    return {
        "torch": torch.__version__, "timm": timm.__version__, "fvcore": ver("fvcore"),
        "ptflops": getattr(ptflops, "__version__", ver("ptflops")), "python": platform.python_version(),
        "host": platform.node(), "git_commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra,
    }


def write_report(path: str | Path, title: str, command: str, notes: list[str], rows: list[dict[str, Any]],
                 cols: list[str]) -> None:
    """A benchmark's markdown report: title, the command, the machine, notes, then the table."""
    r0 = rows[0]
    lines = [f"# {title}", "", f"Command: `{command.strip()}`  ",
             f"Device: {r0.get('device')}, {r0.get('threads')} threads, fp32, torch {r0.get('torch')}, "
             f"timm {r0.get('timm')}, commit {r0.get('git_commit')}, {r0.get('timestamp')}  ", *notes, "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def check_writable(folder: str | Path, what: str) -> None:
    """Fail before any work (one line, :class:`UsageError`) when ``folder`` cannot take files,
    so no result is lost after the compute was spent. The probe is per process: ranks probe at once."""
    import os

    from archbench.errors import UsageError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".archbench-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{what}: cannot write to {str(folder)!r}: {e.strerror}") from None
