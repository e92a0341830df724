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


def _reason(t: optuna.trial.FrozenTrial) -> str | None:
    ua = t.user_attrs
    if ua.get("reason"):
        return ua["reason"]
    if t.system_attrs.get("fail_reason"):  # an exception Optuna caught (e.g. CUDA out of memory)
        return str(t.system_attrs["fail_reason"]).splitlines()[0][:300]
    if t.state == optuna.trial.TrialState.FAIL:  # failed by the heartbeat check: its process stopped
        who = f" ({ua['worker']})" if ua.get("worker") else ""
        return f"its worker process{who} stopped mid-trial (killed or crashed): no heartbeat"
    if t.state == optuna.trial.TrialState.RUNNING:
        return "running"
    return None


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial; the surplus trials of racing workers (untrained, see
    :mod:`archbench.search.claims`) are left out."""
    from archbench.search import claims

    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        if ua.get(claims.SURPLUS):
            continue
        spec = json.loads(ua["spec"]) if "spec" in ua else None
        rows.append({
            "study": study.study_name, "trial": t.number, "state": t.state.name, "reason": _reason(t),
            "trained": ua.get("trained", False) and claims.REUSED not in ua,
            "reused_from": ua.get(claims.REUSED), "config_key": claims.key_of(t),
            "values": list(t.values) if t.values else None,
            **{f"param_{k}": v for k, v in t.params.items()},
            "mixer": "+".join(dict.fromkeys(s["mixer"] for s in spec["stages"])) if spec else None,
            "ffn": "+".join(dict.fromkeys(s["ffn"] for s in spec["stages"])) if spec else None,
            "params": ua.get("params"), "gmacs": ua.get("gmacs"), "gmacs_ptflops": ua.get("gmacs_ptflops"),
            "top1": ua.get("top1"), "top5": ua.get("top5"),
            "throughput": ua.get("throughput"),
            "latency": 1e3 / ua["throughput"] if ua.get("throughput") else None,
            "train_seconds": ua.get("train_seconds"), "peak_mem_mb": ua.get("peak_mem_mb"),
            "history": json.dumps(ua.get("history")),
            "rungs": json.dumps(ua.get("rungs")) if ua.get("rungs") else None,
            "stopped_at": (ua.get("stopped") or {}).get("rung"),
            "stopped_top1": (ua.get("stopped") or {}).get("top1"),
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

    from archbench.results import table_path

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
    stopped = df[df["stopped_at"].notna()].dropna(subset=[x]) if "stopped_at" in df and y == "top1" else df[:0]
    if len(stopped):  # stopped early: hollow, at the accuracy they had when stopped
        ax.scatter(stopped[x] * scale.get(x, 1), stopped["stopped_top1"], facecolors="none", edgecolors="grey",
                   marker="o", alpha=0.8, label="stopped early (top-1 then)")
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
    png, svg = table_path(out, ".png"), table_path(out, ".svg")  # the stem keeps its dots
    fig.savefig(png)
    fig.savefig(svg)
    plt.close(fig)
    return {"x": ok["_x"].tolist(), "y": ok["_y"].tolist(), "trials": ok["trial"].tolist(),
            "front": front["trial"].tolist(), "png": str(png), "svg": str(svg)}


def hypervolume(points, reference) -> float:
    """Area dominated by ``points`` (accuracy ↑, cost ↓ pairs) and bounded by ``reference``
    (accuracy, cost): the exact two-objective hypervolume. Points beyond the reference add nothing."""
    pts = sorted((c, a) for a, c in points if a > reference[0] and c < reference[1])
    area, best = 0.0, reference[0]
    # sweep from the cheapest: each point adds the strip its accuracy gains over the best cheaper one
    for c, a in pts:
        if a > best:
            area += (a - best) * (reference[1] - c)
            best = a
    return area


def hypervolume_history(df: pd.DataFrame, x: str, reference, y: str = "top1") -> pd.DataFrame:
    """The front's hypervolume (``y`` ↑ against cost ``x`` ↓) after each trained trial completes,
    against wall-clock seconds since the study's first trial started."""
    done = df[(df["state"] == "COMPLETE") & df["trained"].astype(bool)].dropna(subset=[x, y])
    start = pd.to_datetime(df["datetime_start"]).min()
    done = done.assign(_t=(pd.to_datetime(done["datetime_complete"]) - start).dt.total_seconds()).sort_values("_t")
    rows, pts = [], []
    for _, r in done.iterrows():
        pts.append((float(r[y]), float(r[x])))
        rows.append({"seconds": r["_t"], "trial": int(r["trial"]), "hypervolume": hypervolume(pts, reference)})
    return pd.DataFrame(rows, columns=["seconds", "trial", "hypervolume"])
