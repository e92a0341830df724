"""Our models against timm's implementation of the same architecture, in one process.

Both models carry the same weights; each round times A then B then B then A (ABBA, so
drift and thermal state hit both equally) after a warm-up, under inference_mode at a fixed
thread count. A control pair — timm's model against a deep copy of itself, timed the same
way — shows how far two identical models drift apart on this machine (the noise floor).
Prints a table and writes results/benchmarks/vs_timm.{csv,md}.

timm's own benchmark settings on a GPU (its benchmark.py: batch 256, bf16 autocast,
torch.compile) are ``--device cuda --batch-size 256 --amp bf16 --compile``. Compiling is
minutes of CPU work per model; ``--warm-only`` compiles and runs each model once and exits,
so that several such processes (one per model) can fill torch.compile's on-disk caches side
by side before the timed run, which then reuses them.

    python benchmarks/vs_timm.py [--batch-size 8] [--rounds 6] [--device cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from archbench import create_model  # noqa: E402
from archbench.measure.speed import device_name  # noqa: E402
from archbench.results import provenance, write_report  # noqa: E402

PAIRS = [("deit_small", "deit_small_patch16_224"), ("crossvit_15", "crossvit_15_240"), ("volo_d1", "volo_d1_224")]


AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def timed(model, x, device, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=2, help="forward passes per timing")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--models", default=",".join(o for o, _ in PAIRS), help="which of our models, comma-separated")
    ap.add_argument("--amp", choices=list(AMP), default="none", help="autocast dtype for both models")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model (ours, timm's and the control)")
    ap.add_argument("--warm-only", action="store_true",
                    help="compile and run each model once, then exit without timing (fills the compile caches)")
    ap.add_argument("--out", default="results/benchmarks/vs_timm")
    args = ap.parse_args()
    if args.amp == "fp16" and args.device == "cpu":
        sys.exit("vs_timm.py: error: --amp fp16 needs a CUDA device")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    wanted = set(args.models.split(","))
    for ours_name, timm_name in [p for p in PAIRS if p[0] in wanted]:
        torch.manual_seed(0)
        ref = timm.create_model(timm_name, pretrained=False).eval().to(device)
        path = Path(f"/tmp/{timm_name}.pth")
        torch.save(ref.state_dict(), path)
        ours = create_model(ours_name, pretrained=str(path)).eval().to(device)
        res = ours.pretrained_cfg["input_size"]
        x = torch.randn(args.batch_size, *res, device=device)
        with torch.inference_mode():  # the same function, eager and in fp32, before any compile or autocast
            assert torch.allclose(ours(x), ref(x), atol=1e-3), "models disagree"
        twin = copy.deepcopy(ref)
        if args.compile:
            # static shapes: a recompile (the twin is the same class) must not turn on dynamic shapes
            ours, ref, twin = (torch.compile(m, dynamic=False) for m in (ours, ref, twin))
        amp = (torch.autocast(device.type, dtype=AMP[args.amp]) if AMP[args.amp] is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            t0 = time.perf_counter()
            for m in (ours, ref, twin, ours, ref, twin):  # warm-up (and compile)
                timed(m, x, device, 1)
            print(f"{ours_name:12s} warm-up{' and compile' if args.compile else ''}: "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            if args.warm_only:
                continue
            t_ours, t_ref, t_twin = [], [], []
            for _ in range(args.rounds):
                t_ours.append(timed(ours, x, device, args.iters))
                t_ref.append(timed(ref, x, device, args.iters))
                t_twin.append(timed(twin, x, device, args.iters))
                t_twin.append(timed(twin, x, device, args.iters))
                t_ref.append(timed(ref, x, device, args.iters))
                t_ours.append(timed(ours, x, device, args.iters))
        tp_ours = args.batch_size / statistics.median(t_ours)
        tp_ref = args.batch_size / statistics.median(t_ref)
        control = statistics.median(t_ref) / statistics.median(t_twin)
        rows.append({"model": ours_name, "timm_model": timm_name, "resolution": res[-1],
                     "batch_size": args.batch_size, "ours_img_s": round(tp_ours, 2), "timm_img_s": round(tp_ref, 2),
                     "ratio": round(tp_ours / tp_ref, 3), "control_timm_vs_copy": round(control, 3),
                     "amp": args.amp, "compiled": args.compile,
                     "precision": "fp32" if args.amp == "none" else f"{args.amp} autocast", "device": device_name(device), "threads": args.threads,
                     "rounds": args.rounds, **provenance()})
        print(f"{ours_name:12s} ours {tp_ours:8.2f} img/s  timm {tp_ref:8.2f} img/s  ratio {tp_ours / tp_ref:.3f}  "
              f"(timm vs its copy: {control:.3f})", flush=True)
    if args.warm_only:
        return
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    cmd = "python benchmarks/vs_timm.py " + " ".join(sys.argv[1:])
    cols = ["model", "timm_model", "resolution", "batch_size", "amp", "compiled", "ours_img_s", "timm_img_s",
            "ratio", "control_timm_vs_copy"]
    write_report(out.with_suffix(".md"), "archbench vs timm: inference throughput", cmd,
                 ["Same weights in both (checked equal, eager fp32, before timing); interleaved rounds; median "
                  "time per batch. `ratio` = ours / timm throughput; `control_timm_vs_copy` = timm against a deep "
                  "copy of itself, the noise floor. `amp`: autocast dtype (none: fp32); `compiled`: every model "
                  "under `torch.compile` (default mode), timed after its compile."],
                 rows, cols)


if __name__ == "__main__":
    main()
