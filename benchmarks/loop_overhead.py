"""Training-loop overhead: ``archbench run``'s training step against a bare PyTorch loop.

Ours is :func:`archbench.train.loop.train` driven as ``archbench run`` drives it: the batches
from :func:`~archbench.train.inputs.make_batches` (the path ``run_experiment`` takes), the
command's own progress bar and callbacks (``archbench.cli.console.training_progress``, rendered
as on a terminal, into a buffer). The bare loop is forward, cross-entropy (the same label smoothing), backward,
AdamW step (the same parameter groups and lr), zero_grad — no schedule, no checks, no
callbacks — over the *same* batches object, so both pay the same data cost. A third loop,
``ours_quiet``, is ours with the progress bar disabled (as ``archbench run --json`` runs it), to
tell the bar's cost from the loop's. Two paths:

- ``memory``: :class:`~archbench.train.batches.MemoryBatches` (the decoded split in memory,
  batched crop/flip), as ``--cache memory``;
- ``stream``: :class:`~archbench.train.batches.LoaderBatches` over JPEGs on disk (DataLoader
  with ``--workers`` processes), as ``--cache disk``; all loops iterate the same DataLoader. Its
  main process runs ``--stream-threads`` torch threads (default: threads − workers, at least 1):
  on 2 cores, 2 threads beside 2 busy workers slow every loop down more than tenfold here.

Gradient clipping is off (``clip_grad=0``) so both do the same arithmetic. Each loop's speed is
the images of an epoch over that epoch's training time (evaluation excluded; ours: the
``train_throughput`` its history records). ``--rounds`` rounds per path, each in a fresh process
(each loop once untimed first, then each loop for ``--epochs`` epochs, the loops taking turns to
go first, every loop from the same initial weights): within one process the heap's layout can
favour one loop by ±5 %, the same way every round, so a process per round makes that noise
that the median absorbs. Reported: the median img/s of each, the median and range of the
per-round ratios ours / bare, and the ratio of the medians. The JPEG folder is generated
(seeded) under ``--data-dir``. Writes ``results/benchmarks/loop_overhead.{csv,md}``.

    python benchmarks/loop_overhead.py [--rounds 5] [--epochs 1] [--threads N] [--paths memory,stream]
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from archbench.builder import build_model, make_spec  # noqa: E402
from archbench.measure import count_params  # noqa: E402
from archbench.measure.scale import describe  # noqa: E402
from archbench.measure.speed import device_name  # noqa: E402
from archbench.results import provenance, write_report  # noqa: E402
from archbench.train.data import load_dataset  # noqa: E402
from archbench.train.inputs import Inputs, make_batches  # noqa: E402
from archbench.train.loop import param_groups, seed_everything, train  # noqa: E402
from archbench.train.recipe import recipe as make_recipe  # noqa: E402

IMG, CLASSES = 32, 10


def make_folder(root: Path, n_train: int, n_val: int, seed: int = 0) -> None:
    """``root/{train,val}/c<k>/<i>.jpg``: seeded 32 px JPEGs, class k a noisy colour of its own."""
    from PIL import Image

    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, size=(CLASSES, 3))
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(CLASSES):
            (root / split / f"c{k}").mkdir(parents=True)
            for i in range(n // CLASSES):
                px = np.clip(base[k] + rng.normal(0, 40, size=(IMG, IMG, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / split / f"c{k}" / f"{i:05d}.jpg", quality=90)


def run_ours(spec, batches, recipe, *, bar_shown: bool = True) -> list[float]:
    """train() as ``archbench run`` calls it, with the command's own progress bar and callbacks
    (``archbench.cli.console.training_progress``); ``bar_shown=False``: the bar disabled, as under
    ``--json`` (the callbacks still run)."""
    from rich.console import Console

    from archbench.cli.console import training_progress

    torch.manual_seed(0)
    model = build_model(spec)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)  # a terminal's rendering, kept quiet
    progress = training_progress(console, recipe.epochs, batches.steps_per_epoch, quiet=not bar_shown)
    with progress as (_, on_step, on_epoch):
        hist = train(model, batches, recipe, num_classes=spec.num_classes, seed=0, device="cpu",
                     callback=on_epoch, on_step=on_step)
    return [m["train_throughput"] for m in hist.epochs]


def run_bare(spec, batches, recipe) -> list[float]:
    """The same model, batches, AdamW and loss in the plainest loop."""
    torch.manual_seed(0)
    model = build_model(spec)
    gen = seed_everything(0)  # the draws train() makes: the same crops, flips and order
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.peak_lr)
    out = []
    for epoch in range(recipe.epochs):
        model.train()
        t0, n = time.perf_counter(), 0
        for xb, yb in batches.train_epoch(epoch, gen):
            loss = F.cross_entropy(model(xb), yb, label_smoothing=recipe.label_smoothing)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += len(yb)
        out.append(n / (time.perf_counter() - t0))
    return out


LOOPS = ("ours", "ours_quiet", "bare")


def one_round(args, path: str, first: int) -> dict[str, list[float]]:
    """One round in this process: the path's batches, each loop once untimed (the process's
    one-off costs: the first forward, the DataLoader's workers, rich's first render), then
    each loop once, timed, starting with ``LOOPS[first]``."""
    torch.set_num_threads(args.threads if path == "memory" else args.stream_threads)
    spec, recipe = setup(args)
    data = load_dataset("imagefolder", args.data_dir)
    batches, _ = make_batches(data, spec.img_size, recipe, Inputs(cache=CACHE[path], workers=args.workers), seed=0,
                              device=torch.device("cpu"))
    loops = {"ours": run_ours, "ours_quiet": partial(run_ours, bar_shown=False), "bare": run_bare}
    for k in LOOPS:  # warm-up: untimed
        loops[k](spec, batches, recipe)
    return {k: loops[k](spec, batches, recipe) for k in LOOPS[first:] + LOOPS[:first]}


def setup(args):
    # `archbench run --mixer shift`'s model at 32 px: a ShiftViT-style pyramid (dims 32-64-128-256,
    # depths 2-2-4-2, patch 2), small enough that a step's fixed costs would show
    spec = make_spec(mixer="shift", img_size=IMG, num_classes=CLASSES)
    return spec, make_recipe("small", epochs=args.epochs, batch_size=args.batch_size, clip_grad=0.0)


CACHE = {"memory": "memory", "stream": "disk"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per path, each in a fresh process")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per loop per round")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-images", type=int, default=1920)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the stream path")
    ap.add_argument("--paths", default="memory,stream")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, memory path")
    ap.add_argument("--stream-threads", type=int,
                    help="torch threads of the stream path (default: threads - workers, at least 1: on 2 cores, "
                         "2 threads beside 2 busy loader workers make every step wait on a descheduled thread)")
    ap.add_argument("--data-dir", default="/tmp/archbench-loop-overhead")
    ap.add_argument("--out", default="results/benchmarks/loop_overhead")
    ap.add_argument("--round", help=argparse.SUPPRESS)  # PATH:FIRST, run by this script in a fresh process
    args = ap.parse_args()
    args.stream_threads = args.stream_threads or max(1, args.threads - args.workers)
    paths = args.paths.split(",")
    for path in paths:
        if path not in CACHE:
            ap.error(f"--paths: unknown path {path!r}; allowed: {', '.join(CACHE)}")
    if args.round:
        path, first = args.round.split(":")
        print(json.dumps(one_round(args, path, int(first))))
        return
    make_folder(Path(args.data_dir), args.train_images, 4 * CLASSES)
    spec, _ = setup(args)
    rows = []
    for path in paths:
        per_round: dict[str, list[list[float]]] = {k: [] for k in LOOPS}
        for r in range(args.rounds):  # a process per round: its heap's layout is one draw, not every round's
            cmd = [sys.executable, __file__, *sys.argv[1:], "--round", f"{path}:{r % len(LOOPS)}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{path} round {r + 1} failed:\n{proc.stderr[-4000:]}")
            res = json.loads(proc.stdout.splitlines()[-1])
            for k in LOOPS:
                per_round[k].append(res[k])
            print(f"{path} round {r + 1}/{args.rounds}: " + "  ".join(
                f"{k} {statistics.median(res[k]):.1f} img/s" for k in LOOPS), flush=True)
        med = {k: statistics.median([x for rnd in v for x in rnd]) for k, v in per_round.items()}

        def paired(k):  # per round: this loop's img/s over the bare loop's
            return [statistics.median(o) / statistics.median(b) for o, b in zip(per_round[k], per_round["bare"])]

        threads = args.threads if path == "memory" else args.stream_threads
        torch.set_num_threads(threads)  # what the rounds ran with, for the row's device and threads
        rows.append({
            "path": path, "ours_img_s": round(med["ours"], 1), "ours_quiet_img_s": round(med["ours_quiet"], 1),
            "bare_img_s": round(med["bare"], 1),
            "ratio": round(statistics.median(paired("ours")), 3), "ratio_min": round(min(paired("ours")), 3),
            "ratio_max": round(max(paired("ours")), 3), "ratio_of_medians": round(med["ours"] / med["bare"], 3),
            "ratio_quiet": round(statistics.median(paired("ours_quiet")), 3),
            "rounds": args.rounds, "epochs_per_round": args.epochs,
            "steps_per_epoch": args.train_images // args.batch_size,
            "batch_size": args.batch_size, "workers": args.workers if path == "stream" else 0,
            "model": describe(spec) + f", {IMG} px",
            "params": count_params(build_model(spec)).total, "dtype": "fp32",
            **{f"{k}_epochs_img_s": json.dumps([[round(x, 1) for x in rnd] for rnd in v])
               for k, v in per_round.items()},
            "device": device_name(torch.device("cpu")), "threads": threads, **provenance()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
    cols = ["path", "ours_img_s", "ours_quiet_img_s", "bare_img_s", "ratio", "ratio_min", "ratio_max",
            "ratio_of_medians", "ratio_quiet", "steps_per_epoch", "batch_size", "workers", "threads"]
    write_report(out.with_suffix(".md"), "Training-loop overhead: archbench run's step vs a bare PyTorch loop",
                 f"python benchmarks/loop_overhead.py {' '.join(sys.argv[1:])}",
                 [f"Model: {rows[0]['model']} ({rows[0]['params'] / 1e6:.2f} M parameters); "
                  f"{args.train_images} seeded 32 px JPEGs generated under {args.data_dir}; small recipe, AdamW, "
                  "label smoothing 0.1, clip_grad 0 (both loops: the same arithmetic), batched crop/flip.  ",
                  f"Images/s: median over {args.rounds} rounds × {args.epochs} epoch(s) of each loop, each round "
                  "in a fresh process (each loop once untimed first; evaluation excluded; every loop from the same "
                  "initial weights, the loops taking turns to go first). `ratio`: median over rounds of ours / "
                  "bare in that round (`ratio_min`, `ratio_max`: their range); `ratio_of_medians`: "
                  "ours_img_s / bare_img_s; `ratio_quiet`: as `ratio`, for ours_quiet.  ",
                  "ours: `archbench.train.loop.train` with `archbench run`'s progress bar (rendered as on a "
                  "terminal) and callbacks; ours_quiet: the same with the bar disabled, as `archbench run --json` "
                  "runs; bare: forward, loss, backward, step, zero_grad over the same batches object "
                  "(memory: MemoryBatches; stream: the same DataLoader over the JPEGs). Goal: ratio >= 0.97."],
                 rows, cols)
    print(pd.DataFrame(rows)[cols].to_string(index=False))


if __name__ == "__main__":
    main()
