"""Study → pandas table (one row per trial, Pareto members marked) → Pareto plots."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
from archbench.errors import UsageError

AXES = {"top1": ("top-1 accuracy (%)", "maximize"), "top5": ("top-5 accuracy (%)", "maximize"),
        "gmacs": ("GMACs per image", "minimize"), "params": ("parameters (M)", "minimize"),
        "throughput": ("inference throughput (img/s)", "maximize"),
        "latency": ("latency per image (ms)", "minimize")}


def trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        spec = json.loads(ua["spec"]) if "spec" in ua else None
        rows.append({
            "study": study.study_name, "trial": t.number, "state": t.state.name, "reason": ua.get("reason"),
            "trained": ua.get("trained", False), "values": list(t.values) if t.values else None,
            **{f"param_{k}": v for k, v in t.params.items()},
            "mixer": "+".join(dict.fromkeys(s["mixer"] for s in spec["stages"])) if spec else None,
            "ffn": "+".join(dict.fromkeys(s["ffn"] for s in spec["stages"])) if spec else None,
            "params": ua.get("params"), "gmacs": ua.get("gmacs"), "gmacs_ptflops": ua.get("gmacs_ptflops"),
            "top1": ua.get("top1"), "top5": ua.get("top5"),
            "throughput": ua.get("throughput"),
            "latency": 1e3 / ua["throughput"] if ua.get("throughput") else None,
            "train_seconds": ua.get("train_seconds"), "peak_mem_mb": ua.get("peak_mem_mb"),
            "history": json.dumps(ua.get("history")),
            "constraint": json.dumps(ua.get("constraint")), "spec": ua.get("spec"),
            "provenance": json.dumps(ua.get("provenance")),
            "datetime_start": t.datetime_start, "datetime_complete": t.datetime_complete,
        })
    df = pd.DataFrame(rows)
    if not df.empty:
        df["pareto"] = pareto_mask(df, [o for o in ("top1", "gmacs")])
    return df


def pareto_mask(df: pd.DataFrame, objectives: list[str]) -> pd.Series:
    """Trained, complete trials that no other such trial beats on every objective."""
    ok = (df["state"] == "COMPLETE") & df["trained"].astype(bool)
    for o in objectives:
        ok &= df[o].notna()
    pts = df.loc[ok, objectives].astype(float).copy()
    for o in objectives:
        if AXES[o][1] == "maximize":
            pts[o] = -pts[o]
    mask = pd.Series(False, index=df.index)
    for i, p in pts.iterrows():
        dominated = ((pts <= p).all(axis=1) & (pts < p).any(axis=1)).any()
        mask[i] = not dominated
    return mask


def plot_pareto(df: pd.DataFrame, x: str, y: str, out: str | Path, title: str = "",
                overlay: pd.DataFrame | None = None) -> dict:
    """Scatter of trained trials, coloured by mixer and shaped by FFN, Pareto front drawn and
    labelled; untrained or failed trials left out. Writes PNG and SVG; returns the plotted data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis in (x, y):
        if axis not in AXES:
            raise UsageError(f"unknown axis {axis!r}; allowed: {', '.join(AXES)}")
    ok = df[(df["state"] == "COMPLETE") & df["trained"].astype(bool)].dropna(subset=[x, y]).copy()
    scale = {"params": 1e-6}
    ok["_x"], ok["_y"] = ok[x] * scale.get(x, 1), ok[y] * scale.get(y, 1)
    front = ok[pareto_mask(ok, [x, y])].sort_values("_x")
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    mixers = sorted(ok["mixer"].dropna().unique())
    markers = dict(zip(sorted(ok["ffn"].dropna().unique()), "osD^vP*"))
    colours = plt.get_cmap("tab10")
    for i, m in enumerate(mixers):
        for f, mk in markers.items():
            sel = ok[(ok["mixer"] == m) & (ok["ffn"] == f)]
            if len(sel):
                ax.scatter(sel["_x"], sel["_y"], c=[colours(i % 10)], marker=mk, alpha=0.75, label=f"{m} / {f}")
    ax.plot(front["_x"], front["_y"], "k--", lw=1, label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(f"#{int(r['trial'])}", (r["_x"], r["_y"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if overlay is not None and len(overlay):
        ax.scatter(overlay[x] * scale.get(x, 1), overlay[y] * scale.get(y, 1), marker="x", c="grey", label="overlay")
    ax.set_xlabel(AXES[x][0])
    ax.set_ylabel(AXES[y][0])
    ax.set_title(title or f"{y} vs {x}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    fig.savefig(out.with_suffix(".svg"))
    plt.close(fig)
    return {"x": ok["_x"].tolist(), "y": ok["_y"].tolist(), "trials": ok["trial"].tolist(),
            "front": front["trial"].tolist()}
