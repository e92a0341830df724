"""Cost across resolutions: one model (or one model per token mixer at a matched base) measured
at several input sizes, the log-log slope of each cost against the token count, and a plot.

Per (model, image size) one row: tokens at the first stage (the macro's own ``grids``: the
patch grid, ``(img / patch)²`` for a ViT), parameters, fvcore GMACs (whole model and token
mixers alone), inference throughput at ``batch_size``, batch-1 latency, training-step
throughput (forward + backward + AdamW step, ``batch_size``) and peak memory of inference
and of a training step. A cost that grows as ``tokens^k`` has slope ``k`` on log-log axes:
global attention tends to 2, anything per-token (shift, an MLP) to 1.

Peak memory is CUDA's ``max_memory_allocated`` (weights included) on a GPU and the growth of
the process's resident set (:class:`~archbench.measure.speed.PeakRSS`) on a CPU, after freed
heap memory is handed back to the system (``malloc_trim``), so one cell's growth does not
hide in pages an earlier, larger cell left mapped.

A mixer that cannot be built at a size (a grid its windows do not tile, ...) or runs out of
GPU memory gives a row with ``status`` "failed" and the reason in ``error``; nothing else is
caught.
"""
from __future__ import annotations

import gc
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from archbench.errors import UsageError
from archbench.spec import ArchSpec

DEFAULT_SIZES = (112, 160, 224, 320, 448)

# the matched base of `--mixers`: a small ViT whose only difference between models is the
# token mixer (builder shorthand; the spec flags override any of it). Patch 8 puts 196 to
# 3,136 tokens on the default sizes, enough for attention's quadratic term to dominate.
DEFAULT_BASE: dict[str, Any] = dict(macro="isotropic", dims=64, depths=4, heads=2, mlp_ratio=4.0, patch_size=8)

# cost columns that get a fitted slope, and how the plot and the tables name them
COSTS = {
    "gmacs": "GMACs per image (fvcore)",
    "gmacs_token_mixer": "token-mixer GMACs per image",
    "latency_ms": "inference latency, batch 1 (ms)",
    "train_ms_per_img": "training step per image (ms)",
    "train_peak_mb": "peak memory, training step (MB)",
}
PLOTTED = ("gmacs", "latency_ms", "train_ms_per_img", "train_peak_mb")


@dataclass(frozen=True)
class Candidate:
    """One line of the plot: a name and its spec at every size (or why it has none there)."""

    name: str
    mixer: str | None  # the varied mixer (``--mixers``), None for a single model
    specs: dict[int, ArchSpec | str]  # image size → spec, or the reason it cannot be built
    tokens: dict[int, int]  # image size → tokens at the first stage (the base's stem's grid)


# --------------------------------------------------------------------------- inputs

def parse_sizes(text: str) -> tuple[int, ...]:
    """``"112,160,224"`` → (112, 160, 224): positive integers, each once, ascending."""
    parts = [t for t in re.split(r"[,\s]+", str(text).strip()) if t]
    if not parts:
        raise UsageError("--img-sizes is empty; give sizes like 112,160,224")
    sizes = []
    for t in parts:
        if not t.isdigit() or int(t) < 1:
            raise UsageError(f"--img-sizes: {t!r} is not a positive integer; give sizes like 112,160,224")
        sizes.append(int(t))
    return tuple(sorted(set(sizes)))


def parse_mixers(text: str) -> tuple[str, ...]:
    """``"all"`` → every registered token mixer; else the comma-separated names (checked)."""
    from archbench.grammar import load_parts
    from archbench.registry import MIXERS

    load_parts()
    names = tuple(dict.fromkeys(t.strip() for t in str(text).split(",") if t.strip()))
    if not names:
        raise UsageError(f"--mixers is empty; give all or names from: {', '.join(MIXERS.names())}")
    if names == ("all",):
        return tuple(MIXERS.names())
    for n in names:
        MIXERS.get(n)  # an unknown name: UsageError listing the known ones
    return names


def min_size(spec: ArchSpec) -> int:
    """The largest stride the stem(s) tile the image with: no image may be smaller."""
    if spec.macro == "two-branch":
        return max(st.patch_size for st in spec.stages)
    return spec.stem.patch_size


def at_size(spec: ArchSpec, size: int, **changes: Any) -> ArchSpec:
    """``spec`` at a square ``size`` (validated: the error names what does not fit)."""
    from archbench.models import override_spec

    return override_spec(spec, img_size=(size, size), **changes)


def describe(spec: ArchSpec, *, mixer: bool = True) -> str:
    """One line naming what a spec is made of (the size left out: it is what varies)."""
    def per_stage(attr):  # one value when every stage has it, else one per stage: 2-2-6-2
        vals = [f"{v:g}" if isinstance(v, float) else str(v) for v in (getattr(st, attr) for st in spec.stages)]
        return vals[0] if len(set(vals)) == 1 else "-".join(vals)

    parts = [spec.macro, f"depths {per_stage('depth')}", f"dims {per_stage('dim')}", f"heads {per_stage('heads')}",
             f"MLP ratio {per_stage('mlp_ratio')}", f"FFN {per_stage('ffn')}"]
    if mixer:
        parts.insert(1, f"mixer {per_stage('mixer')}")
    stem = spec.stem.patch_size if spec.macro != "two-branch" else per_stage("patch_size")
    parts += [f"patch {stem}", f"{spec.num_classes} classes"]
    return ", ".join(parts)


def grid(spec: ArchSpec) -> tuple[int, int]:
    """The token grid of the first stage (the patch grid; two-branch: the small-patch branch)."""
    from archbench.registry import MACROS

    return tuple(MACROS.get(spec.macro).grids(spec)[0])


def tokens(spec: ArchSpec) -> int:
    """Tokens at the first stage: the first grid's height × width (prefix tokens not counted)."""
    h, w = grid(spec)
    return h * w


def candidates(base: ArchSpec, sizes: Sequence[int], *, mixers: Sequence[str] | None = None,
               name: str | None = None) -> list[Candidate]:
    """The models to measure: ``base`` itself, or one per mixer in ``mixers`` built from it.

    Every size must suit ``base`` (at least its patch size, a grid it tiles): otherwise a
    :class:`UsageError` names the size and what is allowed. With ``mixers``, a mixer that
    cannot be built at a size keeps the reason instead of a spec."""
    grid_tokens = {}
    for s in sizes:
        if s < min_size(base):
            raise UsageError(f"--img-sizes {s} is smaller than the patch size {min_size(base)}; "
                             f"allowed: sizes >= {min_size(base)} that the patch size divides")
        try:
            grid_tokens[s] = tokens(at_size(base, s))
        except UsageError as e:
            raise UsageError(f"--img-sizes {s} does not suit the model: {e}") from None
    if mixers is None:
        label = name or f"{base.macro}:{'+'.join(dict.fromkeys(st.mixer for st in base.stages))}"
        return [Candidate(label, None, {s: at_size(base, s) for s in sizes}, grid_tokens)]
    out = []
    for m in mixers:
        specs: dict[int, ArchSpec | str] = {}
        for s in sizes:
            try:
                specs[s] = at_size(base, s, mixer=m)
            except UsageError as e:
                specs[s] = str(e)
        out.append(Candidate(m, m, specs, grid_tokens))
    return out


# --------------------------------------------------------------------------- measuring

def measure_cell(model: torch.nn.Module, input_size: tuple[int, int, int], *, batch_size: int, repeats: int,
                 device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Inference throughput and peak memory at ``batch_size``, batch-1 latency (median and p90),
    training-step throughput and peak memory (a logsumexp loss of the output, as ``profile``'s —
    any head, none included — backward, AdamW step, zero_grad),
    each over ``repeats`` timed calls after ``warmup`` untimed ones, synchronised. The model's
    weights are updated by the training steps: give it a throwaway model."""
    from archbench.measure.speed import PeakMemory, time_calls

    model = model.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_size, generator=gen).to(device)
    x1 = torch.randn(1, *input_size, generator=gen).to(device)
    model.eval()
    with torch.inference_mode():
        with PeakMemory(device) as infer_peak:
            t = time_calls(lambda: model(x), device, warmup, repeats)
        lat = sorted(time_calls(lambda: model(x1), device, warmup, max(2 * repeats, 5)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        loss = model(x).float().logsumexp(dim=-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with PeakMemory(device) as train_peak:  # from a fresh optimizer: its state is part of the peak
        tt = time_calls(step, device, warmup, repeats)
    model.eval()
    train_s = statistics.median(tt)
    return {"throughput": batch_size / statistics.median(t), "latency_ms": 1e3 * statistics.median(lat),
            "latency_p90_ms": 1e3 * lat[min(len(lat) - 1, round(0.9 * (len(lat) - 1)))],
            "train_throughput": batch_size / train_s, "train_ms_per_img": 1e3 * train_s / batch_size,
            "infer_peak_mb": infer_peak.mb, "train_peak_mb": train_peak.mb}


def measure_grid(cands: Sequence[Candidate], *, batch_size: int = 8, repeats: int = 5,
                 device: str | torch.device = "cpu", warmup: int = 2,
                 on_cell: Callable[[str, int], None] | None = None) -> pd.DataFrame:
    """One row per (candidate, size), in that order; ``on_cell(name, size)`` after each."""
    from archbench.builder import build_model
    from archbench.measure.speed import device_name
    from archbench.results import provenance

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    device = torch.device(device)
    prov = provenance(device=device_name(device), threads=torch.get_num_threads(), dtype="fp32",
                      batch_size=batch_size, repeats=repeats)
    first = next((spec for c in cands for spec in c.specs.values() if not isinstance(spec, str)), None)
    if first is not None:  # one untimed cell first: the process's one-off costs land on no row
        torch.manual_seed(0)
        measure_cell(build_model(first), (first.in_chans, *first.img_size), batch_size=batch_size, repeats=1,
                     device=device, warmup=1)
    rows = []
    for cand in cands:
        for size, spec in cand.specs.items():
            row: dict[str, Any] = {"name": cand.name, "mixer": cand.mixer, "img_size": size,
                                   "tokens": cand.tokens[size]}
            if isinstance(spec, str):
                row.update(status="failed", error=spec)
            else:
                row.update(_measure_spec(spec, batch_size=batch_size, repeats=repeats, device=device, warmup=warmup))
            rows.append({**row, **prov})
            if on_cell:
                on_cell(cand.name, size)
    df = pd.DataFrame(rows)
    for col in ("tokens", "params"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def _measure_spec(spec: ArchSpec, *, batch_size: int, repeats: int, device: torch.device,
                  warmup: int) -> dict[str, Any]:
    """One cell: build (seeded), count, time; a CUDA out-of-memory is the row's error."""
    from archbench.builder import build_model
    from archbench.measure import count_macs, count_params

    torch.manual_seed(0)
    model = build_model(spec)
    h, w = spec.img_size
    row: dict[str, Any] = {"macro": spec.macro, "grid": "x".join(map(str, grid(spec))),
                           "params": count_params(model).total, "spec": spec.to_json()}
    macs = count_macs(model, (1, spec.in_chans, h, w))
    row["gmacs"] = macs.gmacs
    row["gmacs_token_mixer"] = macs.by_part.get("token_mixer", 0.0) / 1e9
    try:
        row.update(measure_cell(model, (spec.in_chans, h, w), batch_size=batch_size, repeats=repeats,
                                device=device, warmup=warmup), status="ok", error=None)
    except torch.cuda.OutOfMemoryError:
        row.update(status="failed", error=f"CUDA out of memory at batch {batch_size}")
    finally:
        del model
        gc.collect()  # a reference cycle must not carry this cell's tensors into the next one's baseline
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- slopes

def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts, missing values (NaN, NA) as None: what JSON can carry."""
    return [{k: (None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else
                 v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in df.to_dict("records")]


def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y on log x (``y ∝ x^slope``); points with x or y not
    positive and finite are left out; NaN with fewer than two distinct x left."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if len(np.unique(lx)) < 2:
        return float("nan")
    return float(np.polyfit(lx, ly, 1)[0])


def slopes(df: pd.DataFrame, costs: Sequence[str] = tuple(COSTS)) -> pd.DataFrame:
    """One row per model: the fitted log-log slope of each cost against tokens."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    out = []
    for name in dict.fromkeys(df["name"]):
        part = ok[ok["name"] == name]
        out.append({"name": name, **{c: (fit_slope(part["tokens"], part[c]) if c in part and len(part) else
                                         float("nan")) for c in costs}})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- plot and files

def plot_scale(df: pd.DataFrame, path: str | Path, *, title: str = "", costs: Sequence[str] = PLOTTED) -> None:
    """Log-log panels, one per cost: x = tokens, one line per model, its slope in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ok = df[df["status"] == "ok"]
    sl = slopes(df, costs).set_index("name")
    ncols = 2 if len(costs) > 1 else 1
    nrows = math.ceil(len(costs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.8 * nrows), squeeze=False)
    # one x tick per measured token count, with the image size under it when that is shared
    ticks = sorted(ok["tokens"].dropna().astype(int).unique())
    px = ok.groupby("tokens")["img_size"].unique()
    labels = [f"{t:,}\n({px[t][0]} px)" if len(px[t]) == 1 else f"{t:,}" for t in ticks]
    names = list(dict.fromkeys(df["name"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>"
    for ax, cost in zip(axes.flat, costs):
        for i, name in enumerate(names):
            part = ok[(ok["name"] == name) & ok[cost].notna() & (ok[cost] > 0)].sort_values("tokens")
            if part.empty:
                continue
            s = sl.loc[name, cost]
            ax.plot(part["tokens"], part[cost], marker=markers[i % len(markers)], color=colors[i % len(colors)],
                    lw=1.6, ms=5, label=f"{name} (slope {s:.2f})" if s == s else name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels(labels, fontsize=8)
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 20, 300 rather than 5×10⁻¹
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.1e}"[0] in "25" else ""))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel("tokens at the first stage (image size)")
        ax.set_ylabel(COSTS.get(cost, cost))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="model (log-log slope)", title_fontsize=8)
    for ax in list(axes.flat)[len(costs):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


TABLE_COLS = ("name", "img_size", "tokens", "params", "gmacs", "gmacs_token_mixer", "throughput", "latency_ms",
              "train_throughput", "train_ms_per_img", "infer_peak_mb", "train_peak_mb", "status")


def _cell(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
        return "—"
    if col == "params":
        return f"{int(v) / 1e6:.3f} M"
    if col in ("gmacs", "gmacs_token_mixer"):
        return f"{v:.4g}"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def write_outputs(df: pd.DataFrame, stem: str | Path, *, command: str, notes: Sequence[str] = ()) -> dict[str, Path]:
    """``<stem>.parquet``, ``.csv`` (every column), ``.md`` (header, slopes, main columns) and
    ``.png`` (the plot); each replaced whole. Returns the paths by suffix."""
    from archbench.results import _replace, write_report

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {s: stem.with_suffix(f".{s}") for s in ("parquet", "csv", "md", "png")}
    _replace(df, paths["parquet"])
    _replace(df, paths["csv"])
    sl = slopes(df)
    lines = [*notes, "", "Fitted log-log slope of each cost against tokens (cost ∝ tokens^slope; 1: linear, "
             "2: quadratic):", "", "| name | " + " | ".join(COSTS) + " |", "|---|" + "---|" * len(COSTS)]
    lines += ["| " + " | ".join([r["name"], *(f"{r[c]:.2f}" if r[c] == r[c] else "—" for c in COSTS)]) + " |"
              for r in sl.to_dict("records")]
    failed = df[df["status"] != "ok"]
    if len(failed):
        lines += ["", "Not measured:", *(f"- {r['name']} at {r['img_size']} px: {r['error']}"
                                         for r in failed.to_dict("records"))]
    lines += ["", f"![cost against tokens]({paths['png'].name})", ""]
    cols = [c for c in TABLE_COLS if c in df]
    rows = [{**r, **{c: _cell(r.get(c), c) for c in cols}} for r in df.to_dict("records")]
    write_report(paths["md"], "Cost across resolutions", command, lines, rows, cols)
    r0 = df.iloc[0]
    plot_scale(df, paths["png"], title=f"{r0['device']}, fp32, inference batch {r0['batch_size']} "
                                       f"(latency batch 1), training batch {r0['batch_size']}, torch {r0['torch']}")
    return paths
