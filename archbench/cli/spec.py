"""``archbench spec`` and ``archbench check``: the resolved spec, and one forward + backward pass."""
from __future__ import annotations

import json
import time

from archbench.cli.args import _count, add_model_args, spec_from_args
from archbench.cli.console import print_key_values


def add_parser(sub, default_device: str) -> None:
    s = sub.add_parser("spec", help="print the resolved spec (YAML, or JSON with --json)")
    add_model_args(s)
    s.add_argument("--json", action="store_true", help="JSON instead of YAML")
    s.set_defaults(func=cmd_spec)

    c = sub.add_parser("check", help="build the model, run one forward and backward pass, print its size")
    add_model_args(c)
    c.add_argument("--batch-size", type=_count(1), default=2)
    c.add_argument("--seed", type=_count(0), default=0)
    c.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    c.set_defaults(func=cmd_check)


def cmd_spec(args) -> int:
    spec = spec_from_args(args)
    print(spec.to_json(indent=2) if args.json else spec.to_yaml(), end="" if not args.json else "\n")
    return 0


def cmd_check(args) -> int:
    import torch

    from archbench.builder import build_model
    from archbench.measure.memory import check_fits

    spec = spec_from_args(args)
    check_fits(spec, holds="forward-backward")  # too big for this machine: one line, not the allocator's error
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
        print_key_values("archbench check: one forward + backward pass on random input",
                         [(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
                          for k, v in row.items()])
    return 0 if row["finite"] else 1
