"""Our models against timm's implementation of the same architecture, in one process.

Both models carry the same weights; each round times A then B then B then A (ABBA, so
drift and thermal state hit both equally) after a warm-up, under inference_mode at a fixed
thread count. A control pair — timm's model against a deep copy of itself, timed the same
way — shows how far two identical models drift apart on this machine (the noise floor).
Prints a table and writes results/benchmarks/vs_timm.{csv,md}.

    python benchmarks/vs_timm.py [--batch-size 8] [--rounds 6] [--device cpu]
"""
from __future__ import annotations

import argparse
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
    ap.add_argument("--out", default="results/benchmarks/vs_timm")
    args = ap.parse_args()
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
        with torch.inference_mode():
            assert torch.allclose(ours(x), ref(x), atol=1e-3), "models disagree"
            for m in (ours, ref, ours, ref):  # warm-up
                timed(m, x, device, 1)
            twin = copy.deepcopy(ref)
            timed(twin, x, device, 1)
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
                     "ratio": round(tp_ours / tp_ref, 3), "control_timm_vs_copy": round(control, 3), "device": device_name(device), "threads": args.threads,
                     "rounds": args.rounds, **provenance()})
        print(f"{ours_name:12s} ours {tp_ours:8.2f} img/s  timm {tp_ref:8.2f} img/s  ratio {tp_ours / tp_ref:.3f}  "
              f"(timm vs its copy: {control:.3f})", flush=True)
    df = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    cmd = "python benchmarks/vs_timm.py " + " ".join(sys.argv[1:])
    cols = ["model", "timm_model", "resolution", "batch_size", "ours_img_s", "timm_img_s", "ratio",
            "control_timm_vs_copy"]
    write_report(out.with_suffix(".md"), "archbench vs timm: inference throughput", cmd,
                 ["Same weights in both; interleaved rounds; median time per batch. `ratio` = ours / timm "
                  "throughput; `control_timm_vs_copy` = timm against a deep copy of itself, the noise floor."],
                 rows, cols)


if __name__ == "__main__":
    main()
