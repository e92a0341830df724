"""``archbench ablate``: arms from ``--vary`` factors, optional budget matching, every arm ×
seed trained with one recipe, then the per-arm table and the plots."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from archbench.ablate.budget import ADJUST, METRICS
from archbench.ablate.plan import DESIGNS, GPU_NUMERICS, Ablation, Arm
from archbench.ablate.runner import AutoSeeds
from archbench.cli.args import (_count, _device, add_model_args, add_parallel_args, add_train_args, data_into_args,
                                execution_from_args, recipe_from_args, shorthand_from_args, spec_from_args)
from archbench.cli.console import _console
from archbench.errors import UsageError


def add_parser(sub, default_device: str) -> None:
    a = sub.add_parser("ablate", help="paired ablation: vary factors of a base model, optionally at a matched budget",
                       description="Every arm (the base model with factor values put in) is trained with the same "
                                   "recipe, seeds and data order; the table gives mean ± std per arm and the paired "
                                   "difference to the base arm (the first value of every factor) with a t-interval.")
    add_model_args(a)
    add_train_args(a)
    add_parallel_args(a)
    a.add_argument("--vary", action="append", required=True, metavar="NAME=V1,V2,...",
                   help="a factor and its values, first = base, e.g. mixer=msa,shift,none or shift_ratio=1/12,1/6; "
                        "repeat for more factors")
    a.add_argument("--design", default="cross", choices=DESIGNS,
                   help="cross: every combination of the factors; oat: one factor at a time from the base arm")
    a.add_argument("--match", choices=METRICS, help="give every arm the base arm's GMACs or parameters")
    a.add_argument("--adjust", default="depth", choices=ADJUST, help="what changes to meet the budget")
    a.add_argument("--tol", type=float, default=0.05, help="relative budget tolerance (default 0.05 = ±5%%)")
    a.add_argument("--seeds", default="3", metavar="N|auto",
                   help="seeds per arm (paired across arms), or auto: add seeds, one per round, to each arm whose "
                        "paired interval is wider than --ci-width, from --min-seeds up to --max-seeds")
    add_auto_args(a, min_default="3")
    a.add_argument("--seed-start", type=_count(0), default=0)
    a.add_argument("--conf", type=float, default=0.95, help="confidence level of the paired intervals")
    a.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes)")
    a.add_argument("--device", type=_device, default=default_device)
    a.add_argument("--name", help="ablation name (default: the factor names)")
    a.add_argument("--out", help="output folder: runs.parquet/.csv (every run), the arm table, plots "
                                 "(default: results/ablations/NAME)")
    a.add_argument("--dry-run", action="store_true", help="build and match the arms, train nothing")
    a.add_argument("--json", action="store_true", help="print the arm table as JSON (last stdout line)")
    a.set_defaults(func=cmd_ablate)


def add_auto_args(p, min_default: str) -> None:
    """The ``--seeds auto`` flags (shared with ``archbench study``)."""
    p.add_argument("--ci-width", type=float, metavar="W",
                   help="with --seeds auto: the widest confidence interval of an arm's paired difference to the base "
                        "to accept, in points, as its FULL width (high − low; at --conf in ablate, 95%% in study), "
                        "e.g. 2 for ±1")
    p.add_argument("--max-seeds", type=int, metavar="M", help="with --seeds auto: the most seeds an arm gets (default 10)")
    p.add_argument("--min-seeds", type=int, metavar="K",
                   help=f"with --seeds auto: the seeds every arm starts with (default {min_default}, at most "
                        "--max-seeds)")


def seeds_option(args, min_default: int) -> int | AutoSeeds | None:
    """``--seeds N`` → N (None when not given); ``--seeds auto`` → :class:`AutoSeeds`; bad
    combinations → UsageError."""
    text = None if args.seeds is None else str(args.seeds).strip()
    auto_flags = [f for f, v in (("--ci-width", args.ci_width), ("--max-seeds", args.max_seeds),
                                 ("--min-seeds", args.min_seeds)) if v is not None]
    if text != "auto":
        if auto_flags:
            raise UsageError(f"{auto_flags[0]} only applies with --seeds auto")
        if text is None:
            return None
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"--seeds takes a number of seeds or auto, got {text!r}") from None
    if args.ci_width is None:
        raise UsageError("--seeds auto needs --ci-width W: the widest paired-difference interval to accept (points)")
    if not args.ci_width > 0:  # also catches nan
        raise UsageError(f"--ci-width must be > 0 points, got {args.ci_width}")
    top = 10 if args.max_seeds is None else args.max_seeds
    if top < 2:
        raise UsageError(f"--max-seeds must be >= 2 (an interval needs two paired seeds), got {top}")
    low = min(min_default, top) if args.min_seeds is None else args.min_seeds
    if low < 2:
        raise UsageError(f"--min-seeds must be >= 2 (an interval needs two paired seeds), got {low}")
    if low > top:
        raise UsageError(f"--min-seeds {low} is above --max-seeds {top}")
    return AutoSeeds(width=args.ci_width, min_seeds=low, max_seeds=top, start=getattr(args, "seed_start", 0))


def check_counts(seeds: int, jobs: int, tol: float | None = None) -> None:
    if seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    if tol is not None and not 0 < tol < 1:
        raise UsageError(f"--tol must be in (0, 1), got {tol}")


def check_out(out: str, dry_run: bool, checkpoint_dir: str | None = None) -> None:
    """An ablation's or study's output folder, the runs table in it and the checkpoint folder,
    before anything is built or trained (a dry run writes nothing: not checked)."""
    from archbench.ablate.runner import TABLE
    from archbench.results import check_table, check_writable

    if not out:
        raise UsageError("--out '' names no folder; give the output folder (or leave --out out for the default)")
    if not dry_run:
        check_writable(out, "--out")
        check_table(Path(out) / TABLE, "--out")
        if checkpoint_dir:
            check_writable(checkpoint_dir, "--checkpoint-dir")


def cmd_ablate(args) -> int:
    from archbench.ablate.factors import apply_changes, parse_vary
    from archbench.ablate.plan import make_arms
    from archbench.measure.memory import check_fits

    seeds = seeds_option(args, min_default=3)
    auto = seeds if isinstance(seeds, AutoSeeds) else None
    check_counts(auto.min_seeds if auto else seeds, args.jobs, args.tol)
    if not 0 < args.conf < 1:
        raise UsageError(f"--conf must be in (0, 1), got {args.conf}")
    factors = [parse_vary(v) for v in args.vary]
    if args.name is not None and not args.name.strip():
        raise UsageError("--name '' is no name; give one, or leave --name out for the factor names")
    name = args.name or "-".join(f.name.replace(".", "_") for f in factors)
    out = f"results/ablations/{name}" if args.out is None else args.out
    check_out(out, args.dry_run, args.checkpoint_dir)
    recipe = recipe_from_args(args)
    data = data_into_args(args)
    base: Any = spec_from_args(args) if (args.model or args.spec) else shorthand_from_args(args)
    # the base arm (matched arms are near its budget) must fit before the arms are built and measured
    check_fits(apply_changes(base, {f.name: f.values[0] for f in factors}), holds="train", device=args.device)
    console = _console()
    with console.status("building the arms" + (f", matching {args.match} by {args.adjust}" if args.match else "")):
        arms = make_arms(base, factors, design=args.design, match=args.match, adjust=args.adjust, tol=args.tol)
    spec0 = arms[0].spec
    if spec0.in_chans != data.in_chans or spec0.num_classes != data.num_classes:
        raise UsageError(f"the model takes {spec0.in_chans} channels / {spec0.num_classes} classes but {data.name} "
                         f"has {data.in_chans} / {data.num_classes}; set --in-chans / --num-classes")
    seed_list = auto.seeds if auto else list(range(args.seed_start, args.seed_start + seeds))
    execution = execution_from_args(args, recipe.batch_size)
    abl = Ablation(name=name, arms=arms, seeds=seed_list,
                   recipe=recipe, dataset=dataset_cfg(args), device=args.device,
                   out=out, conf=args.conf,
                   command="archbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]), execution=execution)
    print_plan(console, abl, auto=auto)
    if args.dry_run:
        return 0
    return train_and_report(console, abl, args.jobs, json_out=args.json, auto=auto)


def dataset_cfg(args) -> dict[str, Any]:
    return {"name": args.dataset, "data_dir": args.data_dir, "download": args.download,
            "limit_train": args.limit_train, "limit_test": args.limit_test}


def seeds_text(abl: Ablation, auto: AutoSeeds | None) -> str:
    if auto:
        return (f"{auto.min_seeds}–{auto.max_seeds} seeds (auto: until the {abl.conf:.0%} interval is ≤ {auto.width:g} "
                "pts wide)")
    return f"{len(abl.seeds)} seeds"


def print_plan(console, abl: Ablation, arms: list[Arm] | None = None, auto: AutoSeeds | None = None) -> None:
    from rich.table import Table

    t = Table(title=f"{abl.name}: {len(abl.arms)} arms × {seeds_text(abl, auto)} on {abl.dataset['name']}")
    for col in ("arm", "depths", "dims", "params (M)", "GMACs", "budget"):
        t.add_column(col)
    for a in arms or abl.arms:
        t.add_row(a.id + (" (base)" if a.is_base else ""), "-".join(str(s.depth) for s in a.spec.stages),
                  "-".join(str(s.dim) for s in a.spec.stages), f"{a.cost.params / 1e6:.3f}", f"{a.cost.gmacs:.4f}",
                  "target" if a.is_base and a.match else (a.match.describe() if a.match else ""))
    console.print(t)


def run_with_progress(console, abl: Ablation, todo, jobs: int, sections: dict[str, str] | None = None) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from archbench.ablate.runner import run_jobs

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn()]
    with Progress(*cols, console=console, transient=False) as bar:
        task = bar.add_task("runs", total=len(todo), info="")

        def on_done(row):
            bar.advance(task)
            top1 = row.get("top1")
            bar.console.print(f"  {row['arm']}  seed {row['seed']}: {row['status']}"
                              + (f"  top-1 {top1:.2f}%" if top1 is not None else f"  {row.get('error')}")
                              + f"  {row['wall_seconds']:.0f}s")

        def on_epoch(arm, seed, epoch, m):
            info = f"{arm.id} seed {seed}: epoch {epoch}/{abl.recipe.epochs} top-1 {m['top1']:.1f}%"
            bar.update(task, info=info)
            if not bar.console.is_terminal:  # a log file gets no live bar: give it a line per epoch
                bar.console.print(f"  {info}")

        try:
            return run_jobs(abl, todo, jobs=jobs, sections=sections, on_done=on_done, on_epoch=on_epoch)
        except KeyboardInterrupt:
            from archbench.ablate.runner import finished, table_stem

            done = finished(abl)  # read back from the table: what a rerun will skip
            left = sum((abl.run_key(arm), seed) not in done for arm, seed in todo)
            bar.console.print(f"interrupted: {len(todo) - left} of the {len(todo)} runs finished and are kept in "
                              f"{table_stem(abl)}.parquet; rerun the same command to train the other {left}")
            raise


def note_elsewhere(console, *abls: Ablation) -> None:
    """Say so when runs of these arms are in the table but under other numerics (retrained here)."""
    from archbench.ablate.runner import elsewhere

    for other, n in elsewhere(*abls).items():
        dev = "cuda" if other == GPU_NUMERICS else "cpu"
        console.print(f"note: {n} runs of these arms in {abls[0].out}/runs were trained with {other} on "
                      f"{'a GPU' if dev == 'cuda' else 'a CPU'}; they do not pair with {abls[0].numerics} runs on "
                      f"{abls[0].device}, so they are not reused (pass --device {dev} to continue those)")


class RoundPrinter:
    """``on_round`` for :func:`run_auto`: a line per round naming what it trains, and the totals."""

    def __init__(self, console, auto: AutoSeeds, conf: float):
        self.console, self.auto, self.conf = console, auto, conf
        self.rounds = self.runs = 0

    def __call__(self, todo, widened: list[str]) -> None:
        self.rounds += bool(widened)
        self.runs += len(todo)
        if widened:
            self.console.print(f"round {self.rounds}: {len(todo)} runs; one more seed for the arms whose "
                               f"{self.conf:.0%} interval is wider than {self.auto.width:g} pts, and the base: "
                               f"{', '.join(dict.fromkeys(widened))}")
        else:
            self.console.print(f"{len(todo)} runs to train: the seeds each arm has so far (at least "
                               f"{self.auto.min_seeds})")

    def done(self, out: str) -> str:
        return (f"--seeds auto: trained {self.runs} runs in {self.rounds} widening round"
                f"{'' if self.rounds == 1 else 's'} (the others were already in {out}/runs)")


def train_and_report(console, abl: Ablation, jobs: int, json_out: bool = False, auto: AutoSeeds | None = None) -> int:
    import dataclasses

    from archbench.ablate.report import arms_json, auto_summary, power_note, to_markdown, write_outputs
    from archbench.ablate.runner import load_runs, pending, run_auto

    if auto:
        note_elsewhere(console, abl)
        printer = RoundPrinter(console, auto, abl.conf)
        counts = run_auto([abl], auto, lambda todo: run_with_progress(console, abl, todo, jobs), on_round=printer)[0]
        console.print(printer.done(abl.out))
        # the base arm has the most seeds: the table reads them all
        abl = dataclasses.replace(abl, seeds=list(range(auto.start, auto.start + counts[abl.base.id])))
    else:
        todo = pending(abl)
        total = len(abl.arms) * len(abl.seeds)
        console.print(f"{len(todo)} of {total} runs to train ({total - len(todo)} already in {abl.out}/runs)")
        note_elsewhere(console, abl)
        run_with_progress(console, abl, todo, jobs)
    runs = load_runs(abl)
    table, files = write_outputs(abl, runs)
    if not json_out:
        console.print(to_markdown(table, abl.conf), markup=False, highlight=False)
        console.print(power_note(abl.conf), markup=False, highlight=False)
        console.print(f"wrote {', '.join(str(Path(f)) for f in files)}")
    if auto:
        for line in auto_summary(table, auto, counts, abl.conf):
            console.print(line, markup=False, highlight=False)
    if json_out:
        print(arms_json(table))
    failed = int(table["failed"].sum())
    return 1 if failed else 0
