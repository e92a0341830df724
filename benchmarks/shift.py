"""Our shift against the ShiftViT paper's Algorithm 1 (zeros + slice copies) and against a
plain memory copy of the same tensor (the floor for any zero-FLOP mixer).

Interleaved rounds, median per call, fixed threads. Writes results/benchmarks/shift.{csv,md}.

    python benchmarks/shift.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from archbench.layers.mixers.shift import Shift  # noqa: E402
from archbench.measure.speed import device_name  # noqa: E402
from archbench.results import provenance, write_report  # noqa: E402

# ShiftViT-T stage shapes at 224 (batch 8): (C, H, W)
SHAPES = [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]


def algorithm1(x: torch.Tensor, g: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, :-1] = x[:, 0 * g:1 * g, :, 1:]
    out[:, 1 * g:2 * g, :, 1:] = x[:, 1 * g:2 * g, :, :-1]
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]
    out[:, 4 * g:, :, :] = x[:, 4 * g:, :, :]
    return out


def per_call(fn, x, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="results/benchmarks/shift")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for C, H, W in SHAPES:
            x = torch.randn(args.batch_size, C, H, W)
            shift = Shift(C, heads=1, grid=(H, W))
            fns = {"ours": shift, "algorithm1": lambda t: algorithm1(t, shift.g), "copy": torch.clone}
            assert torch.equal(shift(x), algorithm1(x, shift.g))
            times = {k: [] for k in fns}
            for f in fns.values():
                per_call(f, x, 3)
            for r in range(args.rounds):
                order = list(fns) if r % 2 == 0 else list(reversed(fns))
                for k in order:
                    times[k].append(per_call(fns[k], x, args.iters))
            med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            rows.append({"shape": f"{args.batch_size}x{C}x{H}x{W}", "MB": round(x.numel() * 4 / 2 ** 20, 2),
                         "ours_us": round(med["ours"], 1), "algorithm1_us": round(med["algorithm1"], 1),
                         "copy_us": round(med["copy"], 1),
                         "speedup_vs_algorithm1": round(med["algorithm1"] / med["ours"], 2),
                         "ours_vs_copy": round(med["ours"] / med["copy"], 2),
                         "device": device_name(torch.device("cpu")), "threads": args.threads, **provenance()})
            print(rows[-1]["shape"], {k: rows[-1][k] for k in ("ours_us", "algorithm1_us", "copy_us")}, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out.with_suffix(".csv"), index=False)
    cols = ["shape", "MB", "ours_us", "algorithm1_us", "copy_us", "speedup_vs_algorithm1", "ours_vs_copy"]
    write_report(out.with_suffix(".md"), "Shift: ours vs the paper's Algorithm 1 vs a plain copy",
                 f"python benchmarks/shift.py {' '.join(sys.argv[1:])}",
                 ["Median microseconds per call over interleaved rounds (ShiftViT-T stage shapes at 224)."],
                 rows, cols)


if __name__ == "__main__":
    main()
