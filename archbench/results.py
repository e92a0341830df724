"""The results table: one row per measurement, appended to ``<stem>.parquet`` and
``<stem>.csv`` without ever leaving a half-written file (lock, write aside, rename).

A stem is a path without the suffix, and keeps its dots (``exp/run.v2`` → ``exp/run.v2.parquet``);
:func:`table_stem` reads an ``--out`` value (a stem, a file name, or a folder to write into),
:func:`check_table` fails before any work when the table could not be written, and
:func:`save_rows` never loses a row: when the table cannot be written after the work was done,
the rows go to a JSON file that the error names.

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
TABLE_SUFFIXES = (".parquet", ".csv")


def table_stem(out: str | Path, default_name: str | None = None) -> Path:
    """The stem of the table that ``out`` (an ``--out`` value) names.

    A name keeps its dots (``exp/run.v2`` → ``exp/run.v2``); a trailing ``.parquet`` or ``.csv``
    is dropped (``exp/runs.parquet`` → ``exp/runs``). With ``default_name``, an existing folder or
    a path ending in ``/`` means "write the table inside it": ``results`` → ``results/runs``."""
    text = os.fspath(out)
    stem = Path(text)
    if default_name is not None and (text.endswith(("/", os.sep)) or stem.is_dir()):
        return stem / default_name
    return stem.with_suffix("") if stem.suffix in TABLE_SUFFIXES else stem


def table_path(stem: str | Path, suffix: str = ".parquet") -> Path:
    """``stem`` + ``suffix``, keeping the stem's dots (unlike ``Path.with_suffix``)."""
    stem = Path(stem)
    return stem.with_name(stem.name + suffix)


def _cell(v: Any) -> Any:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return v


@contextmanager
def _locked(stem: Path):
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(table_path(stem, ".lock"), "w") as lock:
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
    """The table at ``stem`` (see :func:`table_stem`); empty when there is none."""
    path = table_path(table_stem(stem))
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def append_rows(stem: str | Path, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Append rows to the table at ``stem`` (see :func:`table_stem`); returns the whole table."""
    stem = table_stem(stem)
    new = pd.DataFrame([{k: _cell(v) for k, v in r.items()} for r in rows])
    with _locked(stem):
        old = read_table(stem)
        df = new if old.empty else pd.concat([old, new], ignore_index=True)
        for col in df.columns:  # mixed None/str columns break parquet type inference
            if df[col].dtype == object:
                df[col] = df[col].map(lambda v: v if v is None or isinstance(v, str) else _cell(v)
                                      if isinstance(v, (dict, list)) else v)
        _replace(df, table_path(stem, ".parquet"))
        _replace(df, table_path(stem, ".csv"))
    return df


def save_rows(stem: str | Path, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """:func:`append_rows`, except that a row is never lost: when the table cannot be written,
    the rows go to a JSON file (:func:`keep_rows`) and the error names it — a file-system error
    as a one-line :class:`UsageError`, anything else (a bug) as itself with a note."""
    from archbench.errors import UsageError

    rows = list(rows)
    try:
        return append_rows(stem, rows)
    except Exception as e:  # noqa: BLE001 - re-raised below, after the rows are safe
        kept = keep_rows(rows, Path(stem).name)
        n = "the row is" if len(rows) == 1 else f"the {len(rows)} rows are"
        if isinstance(e, OSError):
            raise UsageError(f"could not write the table {table_path(table_stem(stem))} "
                             f"({e.strerror or e}); {n} kept in {kept}") from None
        e.add_note(f"archbench: could not append to the table {table_stem(stem)}; {n} kept in {kept}")
        raise


def keep_rows(rows: list[dict[str, Any]], name: str) -> str:
    """Write ``rows`` as JSON to ``archbench-unsaved-NAME-TIME-PID.json`` in the working folder,
    or else in the temp folder; returns where (or says they were printed on stderr instead)."""
    import sys
    import tempfile

    text = json.dumps(rows, default=str, indent=1)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    file = f"archbench-unsaved-{name or 'rows'}-{stamp}-{os.getpid()}.json"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            (folder / file).write_text(text)
            return str(folder / file)
        except OSError:
            continue
    print(text, file=sys.stderr, flush=True)
    return "stderr (printed above: no folder could take them)"


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

    from archbench.layers.native import summary

    return {
        "torch": torch.__version__, "timm": timm.__version__, "fvcore": ver("fvcore"),
        "ptflops": getattr(ptflops, "__version__", ver("ptflops")), "python": platform.python_version(),
        "native_kernels": summary(),  # a shift model's speed depends on which form of the shift ran
        "host": platform.node(), "git_commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra,
    }


def write_report(path: str | Path, title: str, command: str, notes: list[str], rows: list[dict[str, Any]],
                 cols: list[str]) -> None:
    """A benchmark's markdown report: title, the command, the machine, notes, then the table."""
    r0 = rows[0]
    lines = [f"# {title}", "", f"Command: `{command.strip()}`  ",
             f"Device: {r0.get('device')}, {r0.get('threads')} threads, {r0.get('precision', 'fp32')}, torch {r0.get('torch')}, "
             f"timm {r0.get('timm')}, commit {r0.get('git_commit')}, {r0.get('timestamp')}  ", *notes, "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def check_writable(folder: str | Path, what: str) -> None:
    """Fail before any work (one line, :class:`UsageError`) when ``folder`` cannot take files,
    so no result is lost after the compute was spent. The probe is per process: ranks probe at once."""
    from archbench.errors import UsageError

    folder = Path(folder)
    for up in (folder, *folder.parents):  # the nearest part of the path that exists must be a folder
        if up.exists():
            if not up.is_dir():
                where = "" if up == folder else f", so {str(folder)!r} cannot be created"
                raise UsageError(f"{what}: {str(up)!r} is a file, not a folder{where}")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".archbench-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{what}: cannot write to {str(folder)!r}: {e.strerror}") from None


def check_table(stem: str | Path, what: str) -> None:
    """Fail before any work (one line, :class:`UsageError`) when the table at ``stem`` could not
    be written: its folder cannot take files, one of its file names is taken by a folder, or an
    existing ``.parquet`` is not a table (an append would fail after the work)."""
    from archbench.errors import UsageError

    stem = Path(stem)
    check_writable(stem.parent, what)
    for suffix in (*TABLE_SUFFIXES, ".lock"):
        path = table_path(stem, suffix)
        if path.is_dir():
            raise UsageError(f"{what}: {str(path)!r} is a folder, where the table's {suffix} file goes; "
                             f"move it away or give another {what}")
        if path.exists() and not os.access(path, os.W_OK):
            raise UsageError(f"{what}: {str(path)!r} is not writable")
    path = table_path(stem)
    if path.exists():
        import pyarrow.parquet as pq

        try:
            pq.read_schema(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise UsageError(f"{what}: {str(path)!r} exists but is not a parquet table ({str(e).splitlines()[0][:120]}); "
                             f"move it away or give another {what}") from None
