"""One run described by a JSON payload, as a process of its own — the unit that ablations and
studies hand to worker processes or, for data-parallel runs, to torchrun:

    torchrun --standalone --nproc_per_node N -m archbench.train.job PAYLOAD.json ROW.json

The payload holds the spec (JSON), recipe, dataset dict, seed, device, inputs and
checkpoint folder; rank 0 writes the results row to ``ROW.json``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def threads_per_process(processes: int) -> int:
    """PyTorch threads for each of ``processes`` processes sharing this machine's usable cores (at
    least one): by default each process's OpenMP pool is as large as the machine, and pools that
    outnumber the cores spin in each other's barriers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes)


def run_payload(payload: dict[str, Any], callback=None) -> dict[str, Any]:
    """The results row of the run ``payload`` describes (under torchrun: this rank's part)."""
    import torch

    from archbench.spec import ArchSpec
    from archbench.train import dist
    from archbench.train.inputs import Inputs
    from archbench.train.recipe import Recipe
    from archbench.train.run import run_experiment

    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    ctx = dist.from_env()
    device = ctx.device(payload["device"])
    dist.init(ctx, device)
    data = payload["dataset"]
    try:
        return run_experiment(ArchSpec.from_json(payload["spec"]), dataset=data["name"],
                              data_dir=data.get("data_dir"), download=data.get("download", False),
                              recipe=Recipe(**payload["recipe"]), seed=payload["seed"], device=device,
                              callback=callback, limit_train=data.get("limit_train"),
                              limit_test=data.get("limit_test"), inputs=Inputs(**payload.get("inputs", {})),
                              checkpoint_dir=payload.get("checkpoint_dir"),
                              checkpoint_every=payload.get("checkpoint_every") or 0, ctx=ctx)
    finally:
        dist.shutdown()


def main(argv: list[str] | None = None) -> int:
    payload_path, row_path = argv or sys.argv[1:]
    row = run_payload(json.loads(Path(payload_path).read_text()))
    if os.environ.get("RANK", "0") == "0":
        tmp = Path(row_path).with_suffix(".tmp")
        tmp.write_text(json.dumps(row, default=str))
        os.replace(tmp, row_path)
    return 0 if row["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
