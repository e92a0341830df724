"""``archbench models``: the zoo with its sizes and reference figures."""
from __future__ import annotations

import json

from archbench.cli.console import _console


def add_parser(sub, default_device: str) -> None:
    m = sub.add_parser("models", help="list the published models (the zoo)")
    m.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'shiftvit_*'")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)


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
