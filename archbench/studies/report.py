"""The ShiftViT study's write-up: per section our table (mean ± std, paired Δ with its CI and
the test's minimum detectable difference), what the paper's official code/README says beside
it, and a conclusion computed from the numbers; plus the run details (seeds, recipe, device,
wall time)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from archbench.ablate.report import auto_summary, power_note, to_markdown, write_outputs
from archbench.ablate.plan import LEGACY_INIT, resolved_init

if TYPE_CHECKING:
    from archbench.ablate.runner import AutoSeeds


def _ci(r) -> str:
    return f"{r['diff']:+.2f} pts [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"


def _power(r) -> str:
    """What the paired test could resolve: its MDE, and the seeds the observed Δ would need."""
    n = int(r["pairs"])
    text = f"the paired test on {n} seeds detects |Δ| ≥ {r['mde80']:.2f} pts with 80% power"
    need = r["seeds80"]
    if math.isfinite(need) and need > n:
        return text + f"; a true Δ of {r['diff']:+.2f} would need about {need:.0f} seeds"
    return text


def verdict(r, conf: float) -> str:
    """Plain-language reading of one arm's paired difference, with the power of its test."""
    if r["seeds"] < 2 or math.isnan(r["ci_low"]):
        return f"{r['arm']}: Δ {r['diff']:+.2f} pts (too few paired seeds for an interval)"
    if r["ci_low"] <= 0 <= r["ci_high"]:
        return (f"{r['arm']}: {_ci(r)} — the {conf:.0%} interval covers 0: no detectable difference from the base "
                f"({_power(r)})")
    word = "above" if r["diff"] > 0 else "below"
    return (f"{r['arm']}: {_ci(r)} — {abs(r['diff']):.2f} pts {word} the base ({conf:.0%} interval excludes 0; "
            f"MDE at 80% power {r['mde80']:.2f} pts)")


def conclusions(key: str, table: pd.DataFrame, conf: float) -> list[str]:
    rows = {r["arm"]: r for _, r in table.iterrows()}
    base = table[table["base"]].iloc[0]
    lines = []
    planned = table.attrs.get("planned", {})  # --seeds auto: arm → its seeds; else every arm gets them all
    missing = [r["arm"] for _, r in table.iterrows()
               if r["seeds"] < planned.get(r["arm"], len(table.attrs.get("seeds", []))) or r["seeds"] == 0]
    if base["seeds"] == 0:
        return ["The base arm has no finished runs yet; rerun the same command to complete the section."]
    rows = {a: r for a, r in rows.items() if r["seeds"] > 0}
    table = table[table["seeds"] > 0]
    if missing:
        lines.append(f"**Incomplete:** {', '.join(missing)} ha{'ve' if len(missing) > 1 else 's'} fewer than the "
                     + ("seeds planned" if planned else f"{len(table.attrs.get('seeds', []))} seeds")
                     + " (see the seeds column): the device time ran out. "
                     "Rerunning the same command trains only what is missing.")
    if key == "mixer":
        sh, no = rows.get("mixer=shift"), rows.get("mixer=none")
        if sh is not None:
            inside = not math.isnan(sh["ci_low"]) and sh["ci_low"] <= 0 <= sh["ci_high"]
            lines.append(f"**Shift vs attention at matched GMACs:** {verdict(sh, conf)}. "
                         + ("The shift arm stays within the attention arm's interval: at this scale, attention is "
                            "not what the accuracy rests on." if inside else
                            ("Shift beats attention here." if sh["diff"] > 0 else
                             "At this scale attention keeps an edge the extra depth does not buy back.")))
        if no is not None:
            lines.append(f"**No spatial mixing (`none`):** {verdict(no, conf)}."
                         + (f" Shift minus none: {sh['diff'] - no['diff']:+.2f} pts (both have zero parameters and "
                            "FLOPs in the mixer)." if sh is not None else ""))
        others = [r for a, r in rows.items() if a not in ("mixer=shift", "mixer=none") and not r["base"]]
        lines += [f"{verdict(r, conf)}." for r in others]
    else:
        for _, r in table.iterrows():
            if not r["base"]:
                lines.append(f"{verdict(r, conf)}.")
        best = table.loc[table["top1_mean"].idxmax()]
        lines.append(f"Best mean: {best['arm']} ({best['top1_mean']:.2f}%); base {base['arm']} "
                     f"{base['top1_mean']:.2f}%.")
    return lines


def power_range(tables: list[pd.DataFrame]) -> str:
    """The spread of the comparisons' MDEs, for the caveats."""
    mdes = pd.concat([t.loc[~t["base"], "mde80"] for t in tables]).dropna() if tables else pd.Series(dtype=float)
    if mdes.empty:
        return "With fewer than 2 paired seeds there is no interval and no power to speak of"
    return (f"The minimum detectable differences (80% power) of the {len(mdes)} comparisons run from "
            f"{mdes.min():.2f} to {mdes.max():.2f} pts (median {mdes.median():.2f}): smaller true differences "
            "would mostly go undetected")


def write_study(secs, runs_by_section: dict[str, pd.DataFrame], out: Path, profile, recipe,
                elapsed: float, auto: AutoSeeds | None = None,
                counts: dict[str, dict[str, int]] | None = None) -> list[Path]:
    """report.md and each section's tables and plots under ``out``. ``auto``/``counts``: the
    ``--seeds auto`` settings and each section's seeds per arm, when the seeds were adaptive."""
    from archbench.studies.shiftvit import PAPER

    files: list[Path] = []
    tables: list[pd.DataFrame] = []
    parts = []
    all_runs = pd.concat([r for r in runs_by_section.values() if not r.empty]) if any(
        not r.empty for r in runs_by_section.values()) else pd.DataFrame()
    devices = all_runs.drop_duplicates(["run_key", "seed"])["device"].astype(str).value_counts() \
        if not all_runs.empty else pd.Series(dtype=int)
    first = secs[0].ablation
    uniq = all_runs.drop_duplicates(["run_key", "seed"]) if not all_runs.empty else all_runs
    parts += [
        "# ShiftViT study: is attention the key? (archbench)",
        "",
        f"Profile **{profile.name}**: {profile.about}.",
        "",
        "- Commands that trained the runs (the study resumes: each trains only what is missing): "
        + "; ".join(f"`{c}`" for c in (sorted(set(all_runs["command"].dropna())) if not all_runs.empty else [first.command])),
        f"- Data: {first.dataset['name']}" + (f" from `{first.dataset.get('data_dir')}`" if first.dataset.get("data_dir")
                                              else "") + f"; limits train/test: {first.dataset.get('limit_train')}"
        f"/{first.dataset.get('limit_test')}",
        f"- Recipe (every arm): {recipe.identity()} (other fields at the small recipe's defaults)",
        (f"- Seeds per arm: {list(first.seeds)}" if auto is None else
         f"- Seeds per arm: adaptive (`--seeds auto`), {auto.min_seeds} to start, then one more per round while the "
         f"arm's {first.conf:.0%} interval is wider than {auto.width:g} pts, up to {auto.max_seeds}; the base arm gets "
         "every seed (see each section)")
        + " — paired: seed s gives every arm the same data order and augmentation "
        "draws (on one kind of device); Δ is arm − base per seed, with a Student-t interval over seeds",
        f"- Power: {power_note(first.conf)}",
        f"- Device(s): {', '.join(f'{d} ({n} runs)' for d, n in devices.items()) or 'n/a'}, training under "
        f"{first.numerics}; {len(uniq)} distinct runs, "
        f"{uniq['wall_seconds'].sum() / 60 if not uniq.empty else 0:.1f} min of run time in all "
        f"(this invocation: {elapsed / 60:.1f} min wall)",
        f"- Base model: ShiftViT-like pyramid {profile.base} at {profile.img_size}x{profile.img_size}; budget matching "
        "changes per-stage depth until fvcore GMACs are within ±5% of the attention arm's",
        f"- Weight init: {resolved_init(first.arms[0].spec)}"
        + (" (archbench 0.1's: trunc-normal Linear and 1x1 convs, PyTorch's defaults for the other convs; these runs "
           "were trained before the official per-family inits, and are reported with `--init archbench-0.1`)"
           if resolved_init(first.arms[0].spec) == LEGACY_INIT else " (the official ShiftViT code's)"),
        "",
        "**What the paper reports.** The paper's own ablation tables could not be read on this offline machine (the "
        "stored copies of arXiv 2201.10801 hold only its opening pages), so beside our numbers stand what the official "
        "code (microsoft/SPACH) and its README state; no paper number is filled in from memory.",
        "",
        "| official model (ImageNet-1k, 224 px) | params | FLOPs | top-1 % |",
        "|---|---|---|---|",
        *[f"| {a} | {p} | {f} | {t} |" for a, p, f, t in PAPER["anchors"]],
        "",
    ]
    for i, sec in enumerate(secs, 1):
        runs = runs_by_section.get(sec.key, pd.DataFrame())
        table, fs = write_outputs(sec.ablation, runs, out, prefix=f"{sec.key}_")
        table.attrs["seeds"] = list(sec.ablation.seeds)
        if counts is not None:
            table.attrs["planned"] = counts[sec.key]
        tables.append(table)
        files += fs
        parts += [
            f"## {i}. {sec.title}",
            "",
            f"*{sec.question}*",
            "",
            to_markdown(table, sec.ablation.conf),
            "",
            f"Paper / official code: {PAPER[sec.key]}",
            "",
            "Reading (computed from the table):",
            "",
            *[f"- {line}" for line in conclusions(sec.key, table, sec.ablation.conf)],
            *([f"- {line}" for line in auto_summary(table, auto, counts[sec.key], sec.ablation.conf)]
              if auto is not None else []),
            "",
            f"![top-1 vs GMACs]({sec.key}_top1_vs_gmacs.png) ![top-1 vs throughput]({sec.key}_top1_vs_throughput.png)",
            "",
        ]
    parts += [
        "## What this does and does not show",
        "",
        ("- At the paper's resolution and model size (224 px, ShiftViT-T/light's pyramid), but matched to global "
         "attention's budget (see the caveats), so not the paper's Swin-T comparison."
         if profile.img_size >= 224 else
         "- A proxy: a ~1-10 M-parameter pyramid on 32x32 images, trained briefly, not Swin-T/ShiftViT-T on "
         "ImageNet for 300 epochs; rankings at this scale need not transfer."),
        "- `msa` here is global attention, not Swin's shifted windows (on grids of 16x16 tokens or fewer a 7x7 "
        "window covers most of the map); `cross-attn` is archbench's single-branch cross-scale attention, not CrossViT's two-branch model.",
        "- Budgets are matched in fvcore GMACs, not wall-clock: deeper zero-FLOP arms are slower per image "
        "(see the img/s column and the throughput plots). Throughput is the eval pass measured while "
        "training, several runs sharing the device, so compare it within a section only.",
        "- Each Δ is paired over the seeds listed; 'covers 0' means 'not detected', not 'equal'. "
        f"{power_range(tables)}; the MDE column gives each one.",
        *[f"- {c}" for c in profile.caveats],
        "",
        "Tables: `<section>_arms.parquet|csv|md`; every run: `runs.parquet|csv` (spec, recipe, history, provenance).",
    ]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return [path] + files
