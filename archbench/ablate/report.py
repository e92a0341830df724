"""An ablation's outputs: the per-arm table (mean ± std over seeds, paired difference to the
base arm with its confidence interval and the test's power, size, cost, speed, time) and
the plots (top-1 vs GMACs and vs throughput, error bars = one std over seeds)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from archbench.ablate.plan import Ablation
from archbench.ablate.stats import POWER, mde, paired_diff, seeds_for_power, summarize

if TYPE_CHECKING:
    from archbench.ablate.runner import AutoSeeds

METRIC = "top1"


def short_device(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' → 'H100 80GB HBM3'; a CPU's model name → 'CPU (n threads)'."""
    if name.startswith("NVIDIA "):
        return name[len("NVIDIA "):]
    if "threads)" in name:
        return "CPU (" + name.rsplit("(", 1)[1]
    return name


def arm_table(abl: Ablation, runs: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """One row per arm (base first). Only runs with status ok count.

    Accuracy pools every seed whatever machine trained it (same recipe, seeds and data order),
    but speed and time only compare within one machine: when the runs span several devices, the
    speed columns come from the device that trained most runs (``speed_device``), and from
    another only for an arm that has no run there (``speed_device`` says which).

    Power (see :func:`power_note`): ``mde80`` is the minimum detectable difference at 80 % power
    of the two-sided paired t-test at α = 1 − conf, from the arm's paired seeds and the observed
    SD of its per-seed differences (``pairs``, ``diff_sd``); ``seeds80`` the seeds that would
    detect the observed Δ so."""
    ok = runs[runs["status"] == "ok"] if not runs.empty else runs
    main_dev = ok["device"].astype(str).value_counts().index[0] if len(ok) else ""
    by_arm = {a.id: ok[ok["arm"] == a.id] for a in abl.arms} if not ok.empty else {a.id: ok for a in abl.arms}
    base = by_arm[abl.base.id]
    base_vals = dict(zip(base["seed"].astype(int), base[metric].astype(float))) if len(base) else {}
    out = []
    for arm in abl.arms:
        sub = by_arm[arm.id]
        vals = dict(zip(sub["seed"].astype(int), sub[metric].astype(float))) if len(sub) else {}
        s = summarize(list(vals.values()))
        row: dict[str, Any] = {
            "arm": arm.id, "base": arm.is_base, **{f"factor:{k}": v for k, v in arm.labels.items()},
            "depths": "-".join(str(st.depth) for st in arm.spec.stages),
            "dims": "-".join(str(st.dim) for st in arm.spec.stages),
            "params_m": arm.cost.params / 1e6, "gmacs": arm.cost.gmacs,
            "budget": "" if arm.is_base or arm.match is None else f"{arm.match.rel_error:+.1%}",
            "seeds": s.n, f"{metric}_mean": s.mean, f"{metric}_std": s.std,
        }
        if not arm.is_base:
            p = paired_diff(base_vals, vals, abl.conf)
            alpha = 1 - abl.conf
            row.update({"diff": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high, "p_value": p.p_value,
                        "pairs": p.n, "diff_sd": p.std, "mde80": mde(p.n, p.std, alpha, POWER),
                        "seeds80": seeds_for_power(p.mean, p.std, alpha, POWER)})
        else:
            row.update({k: math.nan for k in ("diff", "ci_low", "ci_high", "p_value", "pairs", "diff_sd", "mde80",
                                              "seeds80")})
        n_failed = int((runs["arm"] == arm.id).sum() - len(sub)) if not runs.empty else 0
        devs = sub["device"].astype(str).value_counts() if len(sub) else pd.Series(dtype=int)
        fast = sub[sub["device"].astype(str) == main_dev] if main_dev in devs else sub
        row.update({
            "throughput": float(fast["throughput"].median()) if len(fast) else math.nan,
            "train_s_mean": float(fast["train_seconds"].mean()) if len(fast) else math.nan,
            "wall_s_total": float(sub["wall_seconds"].sum()) if len(sub) else math.nan,
            "failed": n_failed,
            "device": ", ".join(sorted(devs.index)),
            "runs_per_device": ", ".join(f"{short_device(d)} ×{n}" for d, n in
                                         sorted(devs.items(), key=lambda kv: kv[0] != main_dev)),
            "speed_device": str(fast["device"].iloc[0]) if len(fast) else "",
        })
        out.append(row)
    return pd.DataFrame(out)


def _f(v: float, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _seeds(n: float) -> str:
    return "–" if math.isnan(n) else ("∞" if math.isinf(n) else f"{n:.0f}")


def power_note(conf: float = 0.95) -> str:
    """What the power columns mean (printed under the arm table)."""
    return (f"MDE 80%: the smallest |Δ| that a two-sided paired t-test at α = {1 - conf:.2g} detects with 80% "
            "power, given the arm's paired seeds and the observed SD of its per-seed differences (noncentral t); "
            "seeds for Δ at 80%: how many paired seeds would detect the observed Δ with 80% power at that SD. "
            "An interval that covers 0 with an MDE above the Δ of interest means 'not resolved', not 'equal'.")


def auto_summary(table: pd.DataFrame, auto: AutoSeeds, counts: dict[str, int], conf: float = 0.95) -> list[str]:
    """Under ``--seeds auto``: which arms' intervals reached the width, which stopped at the most
    seeds (with the seeds the observed spread would need), which are still short of their seeds."""
    from archbench.ablate.stats import seeds_for_width

    reached, at_max, short = [], [], []
    for _, r in table[~table["base"]].iterrows():
        width = f"width {_f(r['ci_high'] - r['ci_low'], '.2f')}"
        if auto.reached(r):
            reached.append(f"{r['arm']} ({r['seeds']} seeds, {width})")
        elif counts.get(r["arm"], 0) >= auto.max_seeds:
            need = seeds_for_width(r["diff_sd"], auto.width, conf)
            if not math.isnan(need):
                width += (f"; {'over a million' if math.isinf(need) else f'about {need:.0f}'} seeds would reach "
                          f"{auto.width:g} at the observed spread")
            at_max.append(f"{r['arm']} ({width})")
        else:
            short.append(f"{r['arm']} ({r['seeds']} seeds, {width})")
    lines = [f"--seeds auto: {auto.min_seeds}–{auto.max_seeds} seeds per arm, one more per round while the "
             f"{conf:.0%} interval of Δ is wider than {auto.width:g} pts (full width)"]
    lines += [f"reached the width: {', '.join(reached)}"] if reached else []
    lines += [f"stopped at {auto.max_seeds} seeds (--max-seeds) still wider: {', '.join(at_max)}"] if at_max else []
    lines += [f"still wider, below --max-seeds (training with the same flags continues them): {', '.join(short)}"] \
        if short else []
    return lines


def _where(r: pd.Series) -> str:
    if not r["speed_device"]:
        return ""
    return f"{r['runs_per_device']}; img/s, s/run on {short_device(r['speed_device'])}"


def to_markdown(table: pd.DataFrame, conf: float = 0.95, metric: str = METRIC) -> str:
    """The arm table as GitHub markdown (top-1 in %, differences in points)."""
    devices = set(", ".join(table["device"]).split(", ")) - {""} if "device" in table else set()
    mixed = len(devices) > 1  # then each row says where its seeds ran and where its speed comes from
    head = (f"| arm | depths | dims | params (M) | GMACs | budget | seeds | {metric} % (mean ± std) | "
            f"Δ vs base (pts) [{conf:.0%} CI] | p | MDE 80% (pts) | seeds for Δ at 80% | img/s | train s/run | "
            "wall s (all seeds) |" + (" runs per device |" if mixed else ""))
    lines = [head, "|" + "---|" * (16 if mixed else 15)]
    for _, r in table.iterrows():
        diff = "base" if r["base"] else (f"{_f(r['diff'], '+.2f')} [{_f(r['ci_low'], '+.2f')}, "
                                         f"{_f(r['ci_high'], '+.2f')}]")
        lines.append(
            f"| {r['arm']} | {r['depths']} | {r['dims']} | {r['params_m']:.3f} | {r['gmacs']:.4f} | "
            f"{r['budget'] or ('target' if r['base'] else '')} | {r['seeds']} | "
            f"{_f(r[f'{metric}_mean'], '.2f')} ± {_f(r[f'{metric}_std'], '.2f')} | {diff} | "
            f"{'' if r['base'] else _f(r['p_value'], '.3f')} | {'' if r['base'] else _f(r['mde80'], '.2f')} | "
            f"{'' if r['base'] else _seeds(r['seeds80'])} | {_f(r['throughput'], '.0f')} | "
            f"{_f(r['train_s_mean'], '.1f')} | {_f(r['wall_s_total'], '.0f')} |"
            + (f" {_where(r)} |" if mixed else ""))
    return "\n".join(lines)


def plot(table: pd.DataFrame, stem: str | Path, *, x: str = "gmacs", metric: str = METRIC,
         title: str = "") -> list[Path]:
    """top-1 (mean, error bar = std over seeds) against ``x`` (gmacs | throughput | params_m);
    writes PNG and SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    labels = {"gmacs": "GMACs (fvcore)", "throughput": "eval throughput (img/s)", "params_m": "parameters (M)"}
    label, scale = labels.get(x, x), 1.0
    if x == "gmacs" and table[x].max() < 0.1:  # small models: MMACs read better than 0.00512 G
        label, scale = "MMACs (fvcore)", 1e3
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for _, r in table.iterrows():
        y, e = r[f"{metric}_mean"], r[f"{metric}_std"]
        if y is None or (isinstance(y, float) and math.isnan(y)):
            continue
        ax.errorbar(r[x] * scale, y, yerr=None if math.isnan(e) else e, fmt="s" if r["base"] else "o",
                    capsize=3, ms=6, color="black" if r["base"] else None)
        ax.annotate(r["arm"], (r[x] * scale, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.set_xlabel(label)
    ax.set_ylabel(f"{metric} % (mean ± std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=130)
    plt.close(fig)
    return paths


def write_outputs(abl: Ablation, runs: pd.DataFrame, out_dir: str | Path | None = None,
                  prefix: str = "") -> tuple[pd.DataFrame, list[Path]]:
    """arms table (parquet + CSV + markdown) and both plots under ``out_dir``."""
    from archbench.results import _replace

    out = Path(out_dir or abl.out)
    out.mkdir(parents=True, exist_ok=True)
    table = arm_table(abl, runs)
    _replace(table, out / f"{prefix}arms.parquet")
    _replace(table, out / f"{prefix}arms.csv")
    (out / f"{prefix}arms.md").write_text(to_markdown(table, abl.conf) + "\n\n" + power_note(abl.conf) + "\n")
    files = [out / f"{prefix}arms.parquet", out / f"{prefix}arms.csv", out / f"{prefix}arms.md"]
    title = f"{abl.name}: {len(abl.arms)} arms × {len(list(abl.seeds))} seeds"
    files += plot(table, out / f"{prefix}top1_vs_gmacs", x="gmacs", title=title)
    files += plot(table, out / f"{prefix}top1_vs_throughput", x="throughput", title=title)
    return table, files


def arms_json(table: pd.DataFrame) -> str:
    return json.dumps(json.loads(table.to_json(orient="records")))
