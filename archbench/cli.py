"""The ``archbench`` command line.

Model-taking commands share the spec flags (``--macro --mixer --ffn --depths --dims --heads
--mlp-ratio --patch-size --img-size --in-chans --num-classes``), plus ``--spec FILE`` and
``--set KEY=VALUE`` for any other spec field. Bad input is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad input from the command line."""


def _value(text: str) -> Any:
    """A flag value: YAML scalars/lists (``0.1``, ``true``, ``[1, 3]``) and fractions (``1/12``)."""
    from archbench.ablate.factors import parse_value

    return parse_value(text)


def _ints(flag: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(t) for t in re.split(r"[,\s]+", text.strip()) if t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes integers like 2,2,6,2, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{flag} is empty")
        return vals
    return parse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(_value(t)) for t in text.split(",") if t.strip())
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"--mlp-ratio takes numbers like 4 or 4,4,2,2, got {text!r}") from None


def _img_size(text: str) -> int | tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--img-size takes N or HxW (e.g. 32 or 32x48), got {text!r}")
    return int(m[1]) if m[2] is None else (int(m[1]), int(m[2]))


def device_problem(text: str, *, present: bool = True) -> str | None:
    """Why ``text`` cannot be used as a device here (None if it can): a bad name, or (``present``)
    no GPU / no such GPU on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        return f"unknown device {text!r}; use cpu, cuda or cuda:N"
    if dev.type not in ("cpu", "cuda"):
        return f"device {text!r} is not supported; use cpu, cuda or cuda:N"
    if dev.type == "cuda" and present:
        if not torch.cuda.is_available():
            why = "" if torch.version.cuda else ", which was built without CUDA"
            return f"device {text!r}: no CUDA GPU is visible to torch {torch.__version__}{why}; use --device cpu"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return f"device {text!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
    return None


def _device(text: str) -> str:
    """--device: a device this machine has."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _device_name(text: str) -> str:
    """--device where the device is only needed for some uses (a report of GPU runs on a laptop)."""
    problem = device_problem(text, present=False)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _value(val)
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a zoo name, a spec file, or the spec flags)")
    g.add_argument("--model", help="a published model from the zoo (see `archbench models`)")
    g.add_argument("--spec", type=Path, help="a spec file (YAML or JSON) as printed by `archbench spec`")
    g.add_argument("--macro", help="isotropic | pyramid | two-branch | two-stage (default: the mixer's home)")
    g.add_argument("--mixer", type=_names, help="token mixer, or one per stage: msa, shift, outlook, cross-attn, dmixer, none")
    g.add_argument("--ffn", type=_names, help="FFN, or one per stage: mlp, msffn")
    g.add_argument("--depths", type=_ints("--depths"), help="blocks per stage, e.g. 2,2,6,2")
    g.add_argument("--dims", type=_ints("--dims"), help="width per stage, e.g. 96,192,384,768")
    g.add_argument("--heads", type=_ints("--heads"), help="attention heads per stage")
    g.add_argument("--mlp-ratio", type=_floats, help="FFN expansion, one or per stage")
    g.add_argument("--patch-size", type=int, help="stem stride (patch size)")
    g.add_argument("--img-size", type=_img_size, help="N or HxW")
    g.add_argument("--in-chans", type=int)
    g.add_argument("--num-classes", type=int)
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other spec field, e.g. norm=batchnorm act=relu drop_path=0.1")
    g.add_argument("--mixer-opt", action="append", metavar="KEY=VALUE", help="token-mixer option, e.g. ratio=1/24")
    g.add_argument("--ffn-opt", action="append", metavar="KEY=VALUE", help="FFN option")
    g.add_argument("--macro-opt", action="append", metavar="KEY=VALUE", help="macro option, e.g. downsample=conv")


def add_train_args(r: argparse.ArgumentParser) -> None:
    """Dataset and recipe flags, shared by run, ablate and study."""
    r.add_argument("--dataset", default="digits", help="digits (embedded, default) | cifar10 | cifar100 | imagefolder")
    r.add_argument("--data-dir", help="dataset root (cifar*: torchvision's folder; imagefolder: train/ + val/)")
    r.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100 to --data-dir")
    r.add_argument("--epochs", type=int, help="default: 15 on digits, 30 elsewhere")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--weight-decay", type=float, default=0.05)
    r.add_argument("--warmup", type=float, default=2.0, help="warm-up epochs")
    r.add_argument("--label-smoothing", type=float, default=0.1)
    r.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    r.add_argument("--no-augment", action="store_true", help="no random crops or flips")
    r.add_argument("--limit-train", type=int, help="train on a class-balanced subset of this many images")
    r.add_argument("--limit-test", type=int, help="evaluate on a class-balanced subset of this many images")


SHORTHAND_FLAGS = ("macro", "mixer", "ffn", "depths", "dims", "heads", "mlp_ratio", "patch_size",
                   "img_size", "in_chans", "num_classes")


def spec_from_args(args: argparse.Namespace):
    """The spec the model flags ask for (validated; errors are ValueErrors)."""
    from archbench.builder import make_spec
    from archbench.spec import ArchSpec

    shorthand = {k: getattr(args, k) for k in SHORTHAND_FLAGS if getattr(args, k) is not None}
    fields = _pairs(args.set, "--set")
    mixer_opts = _pairs(args.mixer_opt, "--mixer-opt")
    ffn_opts = _pairs(args.ffn_opt, "--ffn-opt")
    macro_opts = _pairs(args.macro_opt, "--macro-opt")
    if args.spec is not None:
        if shorthand or fields or mixer_opts or ffn_opts or macro_opts or args.model:
            raise UsageError("--spec takes the whole spec from the file; give no other model flags")
        try:
            text = args.spec.read_text()
        except OSError as e:
            raise UsageError(f"cannot read spec file {str(args.spec)!r}: {e.strerror}") from None
        data = yaml.safe_load(text)
        return ArchSpec.from_dict(data)
    if args.model:
        from archbench.models import get_entry, override_spec

        entry = get_entry(args.model)
        if "macro" in shorthand:
            raise UsageError(f"--macro cannot change {entry.name}'s macro-architecture ({entry.make().macro}); "
                             "use the spec flags without --model for another macro")
        changes = {**shorthand, **fields}
        if macro_opts:
            changes["options"] = {**entry.make().options.as_dict(), **macro_opts}
        if mixer_opts:
            changes["mixer_options"] = mixer_opts
        if ffn_opts:
            changes["ffn_options"] = ffn_opts
        try:
            return override_spec(entry.make(), **changes) if changes else entry.make()
        except ValueError as e:
            raise ValueError(f"{entry.name}: {e}") from None
    return make_spec(**shorthand_from_args(args))


def shorthand_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The spec flags (no --model/--spec) as the builder's shorthand dict."""
    kw = {k: getattr(args, k) for k in SHORTHAND_FLAGS if getattr(args, k) is not None}
    kw.update(_pairs(args.set, "--set"))
    for flag, key in (("mixer_opt", "mixer_options"), ("ffn_opt", "ffn_options"), ("macro_opt", "options")):
        opts = _pairs(getattr(args, flag), f"--{flag.replace('_', '-')}")
        if opts:
            kw[key] = opts
    return kw


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _console():
    import os

    from rich.console import Console
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # piped or captured: don't squeeze tables to 80 columns
    return console


# commands ---------------------------------------------------------------------------------
def cmd_spec(args) -> int:
    spec = spec_from_args(args)
    print(spec.to_json(indent=2) if args.json else spec.to_yaml(), end="" if not args.json else "\n")
    return 0


def cmd_check(args) -> int:
    import torch
    from rich.table import Table

    from archbench.builder import build_model

    spec = spec_from_args(args)
    torch.manual_seed(args.seed)
    model = build_model(spec)
    x = torch.randn(args.batch_size, spec.in_chans, *spec.img_size)
    t0 = time.perf_counter()
    out = model(x)
    out.float().pow(2).mean().backward()
    seconds = time.perf_counter() - t0
    grads_finite = all(torch.isfinite(p.grad).all().item() for p in model.parameters() if p.grad is not None)
    row = {
        "macro": spec.macro, "mixers": sorted({s.mixer for s in spec.stages}),
        "ffns": sorted({s.ffn for s in spec.stages}),
        "params": sum(p.numel() for p in model.parameters()),
        "input_shape": list(x.shape), "output_shape": list(out.shape),
        "finite": bool(torch.isfinite(out).all().item()) and grads_finite,
        "forward_backward_seconds": round(seconds, 4),
    }
    if args.json:
        print(json.dumps(row))
    else:
        t = Table(title="archbench check: one forward + backward pass on random input", show_header=False)
        for k, v in row.items():
            t.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
        _console().print(t)
    return 0 if row["finite"] else 1


def cmd_models(args) -> int:
    import torch
    from rich.table import Table

    from archbench.builder import build_model
    from archbench.models import get_entry, list_models

    rows = []
    for name in list_models(args.pattern):
        e = get_entry(name)
        spec = e.make()
        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in build_model(spec).parameters())
        rows.append({"name": name, "family": e.family, "params": params, "params_ref": e.params,
                     "gmacs_ref": e.gmacs, "resolution": spec.img_size[0], "paper_top1": e.paper_top1,
                     "aliases": list(e.aliases), "reference": e.reference})
    if args.json:
        print(json.dumps(rows))
        return 0
    t = Table(title="archbench model zoo", caption="params: counted from our build (✓ = equals the reference "
              "code exactly); GMACs: reference (fvcore, attention counted); top-1: ImageNet-1k as published")
    for col in ("name", "family", "params", "GMACs", "res", "paper top-1", "reference"):
        t.add_column(col, justify="right" if col in ("params", "GMACs", "res", "paper top-1") else "left")
    for r in rows:
        ok = "✓" if r["params"] == r["params_ref"] else f"✗ ref {r['params_ref']:,}"
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        t.add_row(name, r["family"], f"{r['params'] / 1e6:.2f}M {ok}", f"{r['gmacs_ref']:.3f}",
                  str(r["resolution"]), "—" if r["paper_top1"] is None else f"{r['paper_top1']:.1f}",
                  r["reference"])
    _console().print(t)
    return 0


def model_from_args(args):
    """(model, name) for the model flags: a zoo model keeps its name and preprocessing."""
    from archbench.builder import build_model

    spec = spec_from_args(args)
    model = build_model(spec)
    if args.model:
        from archbench.models import get_entry
        entry = get_entry(args.model)
        model.pretrained_cfg.update(entry.cfg)
        model.zoo_name = entry.name
        return model, entry.name
    return model, None


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def cmd_profile(args) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from archbench.measure.profile import profile_model
    from archbench.results import append_rows

    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.all:
        from archbench.models import create_model, list_models
        names = list_models(args.pattern)
        if not names:
            raise UsageError(f"no zoo model matches {args.pattern!r}")
        todo = [(n, lambda n=n: create_model(n)) for n in names]
    else:
        model, name = model_from_args(args)
        todo = [(name, lambda: model)]
    kw = dict(speed=not args.no_speed, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
              channels_last=args.channels_last, compile=args.compile, threads=args.threads,
              repeats=args.repeats, train=not args.no_train)
    rows = []
    with Progress(transient=True, disable=args.json or len(todo) == 1) as bar:
        task = bar.add_task("profiling", total=len(todo))
        for name, make in todo:
            bar.update(task, description=f"profiling {name}")
            rows.append(profile_model(make(), name=name, **kw))
            bar.advance(task)
            if args.out:  # each row is saved as soon as it is measured
                append_rows(args.out, rows[-1:])
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, default=str))
        return 0
    setting = "sizes and FLOPs only" if args.no_speed else f"{args.dtype}, batch {args.batch_size}"
    t = Table(title=f"archbench profile — {rows[0]['device']}, {setting}",
              caption=f"GMACs: multiply-adds per image, attention counted. Rows appended to {args.out}.parquet/.csv"
              if args.out else None)
    cols = [("name", "name"), ("params", "params (M)"), ("gmacs_fvcore", "GMACs fvcore"),
            ("gmacs_ptflops", "GMACs ptflops"), ("gmacs_token_mixer", "mixer GMACs"), ("gmacs_ffn", "FFN GMACs"),
            ("throughput", "img/s"), ("latency_ms", "latency ms"), ("train_throughput", "train img/s"),
            ("peak_mem_mb", "peak MB")]
    for _, label in cols:
        t.add_column(label, justify="left" if label == "name" else "right")
    for r in rows:
        t.add_row(*[_fmt(r[k] / 1e6 if k == "params" else r[k], 1 if k in ("throughput", "train_throughput",
                                                                          "latency_ms", "peak_mem_mb") else 3)
                    for k, _ in cols])
        for backend in ("fvcore", "ptflops"):
            if r.get(f"{backend}_error"):
                t.caption = (t.caption or "") + f"\n{r['name']}: {backend} failed: {r[backend + '_error']}"
    _console().print(t)
    return 0


def recipe_from_args(args):
    """The training recipe the flags ask for (per-dataset epochs when --epochs is not given)."""
    from archbench.train.loop import Recipe
    from archbench.train.run import DATASET_EPOCHS, DEFAULT_EPOCHS

    if args.epochs is None:
        args.epochs = DATASET_EPOCHS.get(args.dataset, DEFAULT_EPOCHS)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                    warmup_epochs=args.warmup, label_smoothing=args.label_smoothing, clip_grad=args.clip_grad,
                    augment=not args.no_augment)
    recipe.check()
    return recipe


def data_into_args(args):
    """Load the dataset; its input size, channels and classes fill the model flags left open."""
    from archbench.train.data import load_dataset
    from archbench.train.run import DATASET_IMG_SIZE

    data = load_dataset(args.dataset, args.data_dir, args.download)
    if args.spec is None:  # the dataset fills in what the flags leave open
        if args.model is None and args.img_size is None:
            args.img_size = DATASET_IMG_SIZE.get(args.dataset, data.native_size)
        if args.in_chans is None:
            args.in_chans = data.in_chans
        if args.num_classes is None:
            args.num_classes = data.num_classes
    return data


def cmd_run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from archbench.results import append_rows
    from archbench.train.run import run_experiment

    recipe = recipe_from_args(args)
    data = data_into_args(args)
    spec = spec_from_args(args)
    if spec.in_chans != data.in_chans:
        raise UsageError(f"the model takes {spec.in_chans} input channels but {data.name} images have "
                         f"{data.in_chans}; set --in-chans {data.in_chans}")
    if spec.num_classes != data.num_classes:
        raise UsageError(f"the model has {spec.num_classes} classes but {data.name} has {data.num_classes}")
    for flag in ("limit_train", "limit_test"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    n_train = len(data.subset(args.limit_train, args.limit_test).train.y)
    steps = max(1, n_train // recipe.batch_size)
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn()]
    console = _console()
    with Progress(*cols, console=console, transient=True, disable=args.json) as bar:
        ep_task = bar.add_task("epochs", total=recipe.epochs, info="")
        st_task = bar.add_task("steps", total=steps, info="")

        def on_step(epoch, step, loss):
            bar.update(st_task, completed=step + 1, info=f"loss {loss:.3f}")

        def on_epoch(epoch, m):
            bar.update(ep_task, completed=epoch, info=f"top-1 {m['top1']:.2f}%  {m['train_throughput']:.0f} img/s")
            bar.reset(st_task, total=steps, info="")
            if not args.json:
                bar.console.print(f"epoch {epoch:3d}/{recipe.epochs}  loss {m['loss']:.4f}  top-1 {m['top1']:6.2f}%  "
                                  f"top-5 {m['top5']:6.2f}%  {m['train_throughput']:7.1f} img/s  "
                                  f"{m['epoch_seconds']:.1f}s")

        row = run_experiment(spec, dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                             recipe=recipe, seed=args.seed, device=args.device, callback=on_epoch,
                             on_step=on_step, name=args.model, limit_train=args.limit_train,
                             limit_test=args.limit_test)
    if args.out:
        append_rows(args.out, [row])
    if args.json:
        print(json.dumps(row, default=str))
        return 0 if row["status"] == "ok" else 1
    t = Table(title=f"archbench run — {row['name']} on {row['dataset']} ({row['device']})", show_header=False)
    for key, label in (("status", "status"), ("params", "params"), ("gmacs_fvcore", "GMACs (fvcore)"),
                       ("top1", "top-1 %"), ("top5", "top-5 %"), ("throughput", "eval img/s"),
                       ("train_throughput", "train img/s"), ("train_seconds", "train seconds"),
                       ("wall_seconds", "wall seconds")):
        t.add_row(label, _fmt(row.get(key), 4 if key == "gmacs_fvcore" else 2))
    if row["error"]:
        t.add_row("error", row["error"])
    if args.out:
        t.caption = f"row appended to {args.out}.parquet / .csv"
    console.print(t)
    return 0 if row["status"] == "ok" else 1


def cmd_eval(args) -> int:
    import torch
    from rich.progress import Progress
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    from archbench.models import create_model

    if not args.model:
        raise UsageError("eval needs --model NAME (a zoo model) and --pretrained PATH")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise UsageError(f"data dir {args.data_dir!r} does not exist")
    overrides = {k: getattr(args, k) for k in ("img_size", "patch_size", "num_classes") if getattr(args, k) is not None}
    model = create_model(args.model, pretrained=args.pretrained, **overrides).eval()
    cfg = model.pretrained_cfg
    tf = create_transform(input_size=cfg["input_size"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
                          mean=cfg["mean"], std=cfg["std"])
    try:
        ds = ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"{args.data_dir!r} is not an image folder (<class>/<image>): {e}") from None
    if len(ds.classes) > model.num_classes:
        raise UsageError(f"{args.data_dir!r} has {len(ds.classes)} classes but the model predicts {model.num_classes}")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    device = torch.device(args.device)
    model.to(device)
    c1 = c5 = n = 0
    with Progress(transient=True, disable=args.json) as bar, torch.inference_mode():
        task = bar.add_task(f"evaluating {args.model}", total=len(loader))
        for x, y in loader:
            top = model(x.to(device)).topk(min(5, model.num_classes), dim=1).indices.cpu()
            c1 += (top[:, 0] == y).sum().item()
            c5 += (top == y[:, None]).any(dim=1).sum().item()
            n += len(y)
            bar.advance(task)
    row = {"model": args.model, "pretrained": args.pretrained, "images": n, "top1": 100 * c1 / n,
           "top5": 100 * c5 / n, "input_size": list(cfg["input_size"]), "crop_pct": cfg["crop_pct"],
           "interpolation": cfg["interpolation"]}
    if args.json:
        print(json.dumps(row))
    else:
        _console().print(f"{args.model}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  on {n} images "
                         f"({cfg['input_size'][1]}px, crop {cfg['crop_pct']}, {cfg['interpolation']})")
    return 0


def _search_worker(space_path: str, storage: str, study_name: str, total: int, remaining: int, timeout,
                   device: str) -> None:
    import optuna

    from archbench.search.space import load_space
    from archbench.search.study import make_objective, open_study

    space = load_space(space_path)
    study = open_study(space, storage, study_name)
    # n_trials bounds this worker; the callback stops it once the study as a whole has enough
    study.optimize(make_objective(space, device=device), n_trials=remaining, timeout=timeout, catch=(RuntimeError,),
                   callbacks=[optuna.study.MaxTrialsCallback(
                       total, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])


def _check_budget(space) -> None:
    from archbench.builder import make_spec
    from archbench.search.study import check_satisfiable
    from archbench.train.data import load_dataset
    from archbench.train.run import DATASET_IMG_SIZE

    ds = space.dataset
    data = load_dataset(ds["name"], ds.get("data_dir"), ds.get("download", False))
    base = {"img_size": DATASET_IMG_SIZE.get(ds["name"], data.native_size), "in_chans": data.in_chans,
            "num_classes": data.num_classes, **space.base}
    space = type(space)(**{**space.__dict__, "base": base})
    check_satisfiable(space, make_spec(**base))


def cmd_search(args) -> int:
    import multiprocessing as mp

    import optuna
    from rich.progress import Progress

    from archbench.search.report import trials_table
    from archbench.search.space import load_space
    from archbench.search.study import default_storage, open_study

    space = load_space(args.space)
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    _check_budget(space)
    storage = args.storage or default_storage(space, args.results_dir)
    name = args.study or space.name
    study = open_study(space, storage, name)  # fails cleanly on a bad URL, before any worker starts
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = args.trials - len(study.get_trials(deepcopy=False, states=done_states))
    import torch
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    # one worker per GPU when there are several: worker i trains on cuda:i (mod the count)
    devices = [f"cuda:{i % gpus}" if gpus > 1 else args.device for i in range(args.workers)]
    procs = [mp.get_context("spawn").Process(
        target=_search_worker, args=(str(args.space), storage, name, args.trials, remaining, args.timeout, dev))
        for dev in (devices if remaining > 0 else [])]
    for p in procs:
        p.start()
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"study {name}", total=args.trials)
        while any(p.is_alive() for p in procs):
            bar.update(task, completed=min(args.trials, len(study.get_trials(deepcopy=False, states=done_states))))
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    df = trials_table(study)
    out = Path(args.results_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    from archbench.results import _replace
    _replace(df, out.with_suffix(".parquet"))
    _replace(df, out.with_suffix(".csv"))
    summary = {"study": name, "storage": storage, "trials": len(df),
               "complete": int((df["state"] == "COMPLETE").sum()) if len(df) else 0,
               "pruned": int((df["state"] == "PRUNED").sum()) if len(df) else 0,
               "failed": int((df["state"] == "FAIL").sum()) if len(df) else 0,
               "table": str(out.with_suffix(".parquet")), "worker_exit_codes": bad}
    if args.json:
        print(json.dumps(summary))
    else:
        _print_trials(df, name)
        _console().print(f"table: {out}.parquet / .csv   storage: {storage}")
    return 0 if not bad else 1


def _print_trials(df, name: str) -> None:
    from rich.table import Table

    t = Table(title=f"study {name}: {len(df)} trials (★ = Pareto, top-1 vs GMACs)")
    for col in ("trial", "state", "mixer", "ffn", "params (M)", "GMACs", "top-1", "img/s", "note"):
        t.add_column(col, justify="right" if col in ("trial", "params (M)", "GMACs", "top-1", "img/s") else "left")
    for _, r in df.iterrows():
        t.add_row(("★ " if r.get("pareto") else "") + str(r["trial"]), r["state"], str(r["mixer"] or "—"),
                  str(r["ffn"] or "—"), _fmt(None if r["params"] is None else r["params"] / 1e6, 3),
                  _fmt(r["gmacs"], 4), _fmt(r["top1"], 2), _fmt(r["throughput"], 0), str(r["reason"] or ""))
    _console().print(t)


def _load_study(args):
    import optuna

    from archbench.search.study import _storage

    storage = args.storage or f"sqlite:///{Path(args.results_dir) / (args.study + '.db')}"
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise UsageError(f"no study storage at {storage.removeprefix('sqlite:///')!r}; run `archbench search` first")
    try:
        return optuna.load_study(study_name=args.study, storage=_storage(storage))
    except KeyError:
        raise UsageError(f"no study named {args.study!r} in {storage}") from None


def cmd_results(args) -> int:
    from archbench.search.report import trials_table

    df = trials_table(_load_study(args))
    out = Path(args.results_dir) / args.study
    from archbench.results import _replace
    _replace(df, out.with_suffix(".parquet"))
    _replace(df, out.with_suffix(".csv"))
    if args.json:
        print(df.drop(columns=["spec", "history"]).to_json(orient="records", date_format="iso"))
    else:
        _print_trials(df, args.study)
    return 0


def cmd_plot(args) -> int:
    from archbench.search.report import plot_pareto, trials_table

    df = trials_table(_load_study(args))
    overlay = None
    if args.overlay:
        from archbench.results import read_table
        overlay = read_table(Path(args.overlay).with_suffix(""))
        if "gmacs" not in overlay and "gmacs_fvcore" in overlay:
            overlay = overlay.assign(gmacs=overlay["gmacs_fvcore"])
    out = Path(args.out or Path(args.results_dir) / f"{args.study}_{args.y}_vs_{args.x}")
    data = plot_pareto(df, args.x, args.y, out, title=f"study {args.study}: {args.y} vs {args.x}", overlay=overlay)
    print(json.dumps({"png": str(out.with_suffix(".png")), "svg": str(out.with_suffix(".svg")),
                      "points": len(data["x"]), "front": data["front"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="archbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_device = "cuda" if _cuda() else "cpu"

    s = sub.add_parser("spec", help="print the resolved spec (YAML, or JSON with --json)")
    add_model_args(s)
    s.add_argument("--json", action="store_true", help="JSON instead of YAML")
    s.set_defaults(func=cmd_spec)

    c = sub.add_parser("check", help="build the model, run one forward and backward pass, print its size")
    add_model_args(c)
    c.add_argument("--batch-size", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    c.set_defaults(func=cmd_check)

    pr = sub.add_parser("profile", help="parameters, FLOPs (fvcore + ptflops), throughput, latency, memory")
    add_model_args(pr)
    pr.add_argument("--all", action="store_true", help="profile every zoo model (filter with --pattern)")
    pr.add_argument("--pattern", default="*", help="with --all: shell-style filter, e.g. 'deit_*'")
    pr.add_argument("--no-speed", action="store_true", help="skip timing: sizes and FLOPs only")
    pr.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    pr.add_argument("--batch-size", type=int, default=8, help="inference batch (latency is always batch 1)")
    pr.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ...")
    pr.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    pr.add_argument("--channels-last", action="store_true")
    pr.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"])
    pr.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    pr.add_argument("--repeats", type=int, default=10, help="timed iterations (after warm-up)")
    pr.add_argument("--out", default="results/profile", help="results table stem ('' to keep none)")
    pr.add_argument("--json", action="store_true", help="print the row as one JSON object (last stdout line)")
    pr.set_defaults(func=cmd_profile)

    r = sub.add_parser("run", help="train a model on a dataset and record its accuracy, size and speed")
    add_model_args(r)
    add_train_args(r)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", type=_device, default=default_device)
    r.add_argument("--out", default="results/runs", help="results table stem ('' to keep none)")
    r.add_argument("--json", action="store_true", help="print the row as one JSON object (last stdout line)")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate a published checkpoint with the model's own preprocessing")
    add_model_args(e)
    e.add_argument("--pretrained", required=True, help="checkpoint path (timm's keys or ours)")
    e.add_argument("--dataset", default="imagefolder", choices=["imagefolder"])
    e.add_argument("--data-dir", required=True, help="validation folder: <class>/<image>")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", type=_device, default=default_device)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    se = sub.add_parser("search", help="an Optuna study over a search space (resumable)")
    se.add_argument("space", type=Path, help="search-space YAML (see search_spaces/README.md)")
    se.add_argument("--trials", type=int, default=20, help="finished trials the study should have")
    se.add_argument("--storage", help="Optuna storage URL (default: sqlite under results/search/)")
    se.add_argument("--study", help="study name (default: the space's name)")
    se.add_argument("--workers", type=int, default=1, help="processes sharing the storage")
    se.add_argument("--timeout", type=float, help="seconds per worker")
    se.add_argument("--device", type=_device, default=default_device)
    se.add_argument("--results-dir", default="results/search")
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_search)

    for cmd, fn, hlp in (("results", cmd_results, "a study's trials as a table (parquet + CSV)"),
                         ("plot", cmd_plot, "Pareto plot of a study (PNG + SVG)")):
        q = sub.add_parser(cmd, help=hlp)
        q.add_argument("study")
        q.add_argument("--storage")
        q.add_argument("--results-dir", default="results/search")
        if cmd == "plot":
            q.add_argument("--x", default="gmacs", help="gmacs | params | throughput | latency | top1 | top5")
            q.add_argument("--y", default="top1")
            q.add_argument("--overlay", help="a results table (e.g. results/runs) to draw as grey crosses")
            q.add_argument("--out", help="output stem (default: results/search/STUDY_Y_vs_X)")
        else:
            q.add_argument("--json", action="store_true")
        q.set_defaults(func=fn)

    from archbench.ablate.cli import add_ablate_parser
    add_ablate_parser(sub, add_model_args, add_train_args, default_device, _device)
    from archbench.studies.cli import add_study_parser
    add_study_parser(sub, add_train_args, default_device, _device_name)

    m = sub.add_parser("models", help="list the published models (the zoo)")
    m.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'shiftvit_*'")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, yaml.YAMLError) as e:  # UsageError and spec validation errors
        print(f"archbench {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("archbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
