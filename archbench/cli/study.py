"""``archbench study shiftvit``: the ShiftViT ablations, trained, tabulated, plotted and
written up as ``report.md`` under ``results/studies/shiftvit/``."""
from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from archbench.cli.ablate import add_auto_args
from archbench.cli.args import (_count, _device_name, add_parallel_args, add_train_args, device_problem,
                                execution_from_args, note, recipe_from_args)
from archbench.cli.console import _console
from archbench.errors import UsageError

STUDIES = ("shiftvit",)
SECTIONS = ("mixer", "gamma", "mlp_ratio", "components")
# studies.shiftvit.PROFILES, named here so the parser stays light
PROFILE_NAMES = ("quick", "cpu", "default", "imagenet")


def add_parser(sub, default_device: str) -> None:
    s = sub.add_parser("study", help="a paper's ablation study as a preset (shiftvit)",
                       description="Runs the study's ablations (resumable: finished runs are kept), then writes "
                                   "the tables, plots and report.md.")
    s.add_argument("study", help=f"which study: {', '.join(STUDIES)}")
    s.add_argument("--quick", action="store_true", help="the quick profile: digits, 2 seeds, 4 epochs (<15 min on a CPU)")
    s.add_argument("--profile", choices=PROFILE_NAMES,
                   help="scale: quick (digits, a CPU smoke run), cpu (a CIFAR-10 subset, ~1 h on 2 cores), default "
                        "(all of CIFAR-10, sized for a GPU), imagenet (--dataset imagefolder --data-dir IMAGENET: "
                        "ShiftViT-T/light-sized pyramids at 224 px, the shiftvit recipe; for a multi-GPU machine, "
                        "--dry-run estimates the device-hours); default: default, or quick with --quick")
    add_train_args(s)
    add_parallel_args(s)
    for a in s._actions:  # the profile decides these unless given
        if a.dest in ("dataset", "batch_size", "lr", "warmup", "recipe"):
            a.default = None
    s.add_argument("--seeds", metavar="N|auto",
                   help="seeds per arm (default: the profile's), or auto: add seeds, one per round, to each arm whose "
                        "paired interval is wider than --ci-width, from --min-seeds up to --max-seeds")
    add_auto_args(s, min_default="the profile's seeds")
    s.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    s.add_argument("--jobs", type=_count(1), help="runs at once (default: 1 on CPU; on a GPU machine 12, as small models "
                                            "leave a GPU mostly idle, or with --profile imagenet one per GPU)")
    s.add_argument("--device", type=_device_name,
                   help=f"default: {default_device}; with --report-only, the kind of device (GPU: bf16 autocast, "
                        "CPU: fp32) that trained most of the runs there")
    s.add_argument("--out", help="output folder: runs.parquet/.csv, the tables, plots and report.md (default: "
                                 "results/studies/shiftvit for the default profile, results/studies/shiftvit-<profile> "
                                 "for the others)")
    s.add_argument("--init", help="weight-init scheme of every arm (default: ShiftViT's, as its official code); "
                                  "archbench-0.1 is the init of the studies committed before 2026-11-25")
    s.add_argument("--dry-run", action="store_true",
                   help="build and match the arms, time a few training steps of each on --device and print the "
                        "device-hours the study would take; train nothing")
    s.add_argument("--estimate-batch", type=_count(1), metavar="N",
                   help="--dry-run: the batch to time the steps at (default: 2 on a CPU, the run's per-GPU batch on "
                        "a GPU)")
    s.add_argument("--report-only", action="store_true",
                   help="train nothing: write the tables, plots and report from the runs already there")
    s.set_defaults(func=cmd_study, default_device=default_device)


def cmd_study(args) -> int:
    import dataclasses

    from archbench.cli.ablate import (RoundPrinter, check_counts, check_out, note_elsewhere, print_plan,
                                      run_with_progress, seeds_option)
    from archbench.ablate.plan import numerics
    from archbench.ablate.runner import AutoSeeds, elsewhere, finished, load_runs, missing, pending, run_auto, seed_counts
    from archbench.studies import shiftvit
    from archbench.train.data import SHAPES, load_dataset

    if args.study not in STUDIES:
        raise UsageError(f"unknown study {args.study!r}; known: {', '.join(STUDIES)}")
    pname = args.profile or ("quick" if args.quick else "default")
    if args.quick and args.profile and args.profile != "quick":
        raise UsageError(f"--quick contradicts --profile {args.profile}")
    prof = shiftvit.PROFILES[pname]
    out = ("results/studies/shiftvit" + ("" if pname == "default" else f"-{pname}")) if args.out is None else args.out
    check_out(out, args.dry_run, args.checkpoint_dir)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        raise UsageError(f"unknown section {bad[0] if bad else '(none given)'!r}; allowed: {', '.join(SECTIONS)}")
    device = args.device or args.default_device
    if not (args.report_only or args.dry_run):
        problem = device_problem(device)
        if problem:
            raise UsageError(problem)
    jobs = shiftvit.default_jobs(prof, device, args.nproc_per_run) if args.jobs is None else args.jobs
    seeds = seeds_option(args, min_default=prof.seeds)
    auto = seeds if isinstance(seeds, AutoSeeds) else None
    seeds = prof.seeds if seeds is None else seeds
    check_counts(auto.min_seeds if auto else seeds, jobs)
    dataset = prof.dataset if args.dataset is None else args.dataset
    args.recipe = prof.recipe_preset if args.recipe is None else args.recipe
    recipe = recipe_from_args(args, base=prof.recipe)
    if args.report_only and dataset in SHAPES:  # a report of what is trained reads no images
        num_classes, in_chans = SHAPES[dataset]
    else:
        data = load_dataset(dataset, args.data_dir, args.download)
        for line in getattr(data, "notes", ()):
            note(line)
        num_classes, in_chans = data.num_classes, data.in_chans
    cfg = {"name": dataset, "data_dir": args.data_dir, "download": args.download,
           "limit_train": args.limit_train if args.limit_train is not None else prof.limit_train,
           "limit_test": args.limit_test if args.limit_test is not None else prof.limit_test,
           "num_classes": num_classes, "in_chans": in_chans}
    command = "archbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["study"] else \
        f"archbench study shiftvit --profile {pname}"
    console = _console()
    t0 = time.perf_counter()
    with console.status("building the arms and matching budgets") as st:
        secs = shiftvit.build(prof, dataset=cfg, recipe=recipe, seeds=auto.seeds if auto else list(range(seeds)),
                              device=device,
                              out=out, command=command, sections=sections,
                              on_arm=lambda a: st.update(f"building and matching: {a}"), init=args.init)
    execution = execution_from_args(args, recipe.batch_size)
    secs = [dataclasses.replace(sec, ablation=dataclasses.replace(sec.ablation, execution=execution)) for sec in secs]
    if args.report_only and args.device is None:
        # report what is there: switch to the other numerics if most runs were trained under them
        other = "cpu" if device.startswith("cuda") else "cuda"
        keys = {(sec.ablation.run_key(a), s) for sec in secs for a in sec.ablation.arms for s in sec.ablation.seeds}
        if elsewhere(*(sec.ablation for sec in secs)).get(numerics(other), 0) > len(keys & finished(secs[0].ablation)):
            device = other
            secs = [dataclasses.replace(sec, ablation=dataclasses.replace(sec.ablation, device=device))
                    for sec in secs]
    for sec in secs:
        print_plan(console, sec.ablation, auto=auto)
    if args.dry_run:
        print_estimate(console, secs, data, cfg["limit_train"], device, recipe, args, auto)
        return 0
    # the sections share one table; label each run by the first section that owns its arm
    owner: dict[str, str] = {}
    for sec in secs:
        for arm in sec.ablation.arms:
            owner.setdefault(arm.key, sec.key)
    trainer = dataclasses.replace(secs[0].ablation, name="shiftvit")
    abls = [sec.ablation for sec in secs]
    counts = None
    if auto:
        if args.report_only:
            counts = seed_counts(abls, auto)
            console.print(f"--report-only: {len(missing(abls, counts, auto.start))} runs ({numerics(device)}) of the "
                          "seeds the arms have started are missing; left untrained")
        else:
            console.print(f"training {jobs} at a time on {device} ({numerics(device)})")
            note_elsewhere(console, *abls)
            printer = RoundPrinter(console, auto, abls[0].conf)
            counts = run_auto(abls, auto, lambda todo: run_with_progress(console, trainer, todo, jobs, sections=owner),
                              on_round=printer)
            console.print(printer.done(out))
        # each section's base arm has the most seeds: its table reads them all
        secs = [dataclasses.replace(sec, ablation=dataclasses.replace(
            sec.ablation, seeds=list(range(auto.start, auto.start + c[sec.ablation.base.id]))))
            for sec, c in zip(secs, counts)]
    else:
        todo, seen = [], set()
        for abl in abls:
            for arm, seed in pending(abl):
                key = (abl.run_key(arm), seed)
                if key not in seen:
                    seen.add(key)
                    todo.append((arm, seed))
        total = len({(a.run_key(arm), s) for a in abls for arm in a.arms for s in a.seeds})
        if args.report_only:
            console.print(f"--report-only: {total - len(todo)} of {total} runs ({numerics(device)}) are there; "
                          f"{len(todo)} left untrained")
            todo = []
        else:
            console.print(f"{len(todo)} of {total} runs to train ({total - len(todo)} already in {out}/runs), {jobs} at "
                          f"a time on {device} ({numerics(device)})")
            note_elsewhere(console, *abls)
        run_with_progress(console, trainer, todo, jobs, sections=owner)
    from archbench.studies.report import write_study

    files = write_study(secs, {s.key: load_runs(s.ablation) for s in secs}, Path(out), prof, recipe,
                        elapsed=time.perf_counter() - t0, auto=auto,
                        counts=None if counts is None else {sec.key: c for sec, c in zip(secs, counts)})
    console.print(f"wrote {Path(out) / 'report.md'} and {len(files) - 1} tables/plots")
    return 0


def print_estimate(console, secs, data, limit_train: int | None, device: str, recipe, args, auto=None) -> None:
    """The device-hours of the dry run's arms (``studies.estimate``): a table per arm and the total."""
    from rich.table import Table

    from archbench.studies import estimate as est

    problem = device_problem(device)
    if problem:
        console.print(f"no device-hour estimate: {problem}")
        return
    timing = est.timing(device, recipe, args.nproc_per_run, args.estimate_batch)
    with console.status("timing training steps") as st:
        e = est.estimate([(sec.key, sec.ablation) for sec in secs], images=data.subset(limit_train).n_train,
                         device=device, on_arm=lambda a: st.update(f"timing training steps: {a}"), **timing)
    t = Table(title=f"estimate: {e.unit} on {e.device} ({len(e.arms)} distinct arms, {e.epochs} epochs of "
                    f"{e.images:,} images)")
    for col in ("arm", "section", "GMACs", "batch", "s/step", "ms/image", "h/run", "seeds", e.unit):
        t.add_column(col)
    for a in e.arms:
        hours = e.run_hours(a)
        t.add_row(a.arm, a.section, f"{a.gmacs:.4g}", str(a.batch), f"{a.step_seconds:.3f}",
                  f"{1e3 * a.image_seconds:.2f}", _hours(hours), str(a.seeds), _hours(hours * a.seeds))
    console.print(t)
    total = _hours(e.total()) if auto is None else \
        f"{_hours(e.total(auto.min_seeds))} (at {auto.min_seeds} seeds an arm) to {_hours(e.total())} " \
        f"(at {auto.max_seeds})"
    console.print(f"total: {total} {e.unit} on {e.device}")
    console.print(f"per arm: the fastest of {timing['repeats']} timed training steps (forward, backward, AdamW) "
                  f"after {timing['warmup']} warm-up, {'bf16 autocast' if e.gpu else 'fp32'}, on random images; "
                  "data loading and evaluation are not included")
    short = [a.arm for a in e.arms if a.batch < e.requested_batch]
    if short:
        console.print(f"out of GPU memory at batch {e.requested_batch}: {', '.join(short)} timed at a smaller batch; "
                      "their runs need more GPUs each (--nproc-per-run) or a smaller --batch-size")
    if not e.gpu:
        console.print("measured on a CPU: these are CPU-hours of this CPU, not a GPU estimate (run the dry run "
                      "with --device cuda on the GPU machine for one)")


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"
