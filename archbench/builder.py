"""Spec → model, and the shorthand (``macro=, mixer=, ffn=, depths=, ...``) → spec.

The shorthand is what the CLI flags and ``build_model(mixer="shift", ffn="msffn")`` speak:
everything not given gets a small default suited to the image size, so
``build_model(mixer="shift", ffn="msffn", img_size=32, num_classes=10)`` is a sensible
CIFAR-sized model. Without ``macro``, a mixer gets its home macro-architecture.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from archbench.grammar import home_macro, load_parts, stage_defaults
from archbench.registry import MACROS, MIXERS
from archbench.spec import ArchSpec, StageSpec, StemSpec, _pair
from archbench.errors import UsageError

# the shorthand's own keys; any other key must be an ArchSpec field
SHORTHAND = ("macro", "mixer", "ffn", "depths", "dims", "heads", "mlp_ratio", "patch_size",
             "img_size", "in_chans", "num_classes", "mixer_options", "ffn_options")

# small defaults per macro: (depths, dims, heads, mlp_ratio)
DEFAULTS = {
    "isotropic": ((6,), (192,), (3,), 4.0),
    "pyramid": ((2, 2, 4, 2), (32, 64, 128, 256), (1, 2, 4, 8), 4.0),
    "two-branch": ((1, 2), (64, 128), (2, 2), 3.0),
    "two-stage": ((2, 4), (64, 128), (2, 4), 3.0),
}


def _seq(name: str, v: Any) -> tuple:
    if v is None:
        return ()
    if isinstance(v, str) or not isinstance(v, Sequence):
        return (v,)
    if len(v) == 0:
        raise UsageError(f"{name} is empty")
    return tuple(v)


def _stretch(name: str, given: tuple, default: tuple, n: int, grow: bool) -> tuple:
    """Per-stage values: as given (a single value broadcast), else the macro default
    (continued by doubling along a pyramid)."""
    vals = given or default
    if len(vals) == n:
        return vals
    if len(vals) == 1 and given:
        return vals * n
    if given:
        raise UsageError(f"{name} has {len(vals)} values for {n} stages; give 1 or {n}")
    base = default[0]
    return tuple(base * 2 ** i if grow else default[min(i, len(default) - 1)] for i in range(n))


def _default_patch(macro: str, img: tuple[int, int]) -> int:
    small = min(img)
    if macro == "pyramid":
        return 4 if small >= 64 else 2 if small >= 16 else 1
    if macro == "two-stage":
        return 8 if small >= 128 else 4 if small >= 16 else 2
    for p in (16, 8, 4, 2, 1):  # isotropic and two-branch's large branch: a grid of >= 8x8
        if p * 8 <= small and img[0] % p == 0 and img[1] % p == 0:
            return p
    return 1


def make_spec(**kw: Any) -> ArchSpec:
    """Shorthand → validated :class:`ArchSpec` (see module docstring)."""
    load_parts()
    extra = {k: v for k, v in kw.items() if k not in SHORTHAND}
    fields = set(ArchSpec.__dataclass_fields__) - {"macro", "stages"}
    unknown = sorted(set(extra) - fields)
    if unknown:
        raise UsageError(f"unknown model argument(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(set(SHORTHAND) | fields))}")
    mixers = _seq("mixer", kw.get("mixer")) or ("msa",)
    for m in mixers:
        MIXERS.get(m)
    macro = home_macro(mixers[0]) if kw.get("macro") is None else kw["macro"]
    MACROS.get(macro)
    # a value given is kept, 0 included (validated with the spec); only None means "unset"
    img = _pair(224 if kw.get("img_size") is None else kw["img_size"], "img_size")
    d_depths, d_dims, d_heads, d_ratio = DEFAULTS[macro]
    given = {k: _seq(k, kw.get(k)) for k in ("depths", "dims", "heads", "mlp_ratio", "ffn")}
    given["mixer"] = _seq("mixer", kw.get("mixer"))
    n = next((len(v) for k, v in given.items() if len(v) > 1), len(d_depths))
    pyr = macro == "pyramid"
    depths = _stretch("depths", given["depths"], d_depths, n, False)
    dims = _stretch("dims", given["dims"], d_dims, n, pyr)
    if given["heads"]:
        heads = _stretch("heads", given["heads"], d_heads, n, pyr)
    elif given["dims"]:  # keep a head width near the default's (dims / 64, at least 1)
        heads = tuple(max(1, d // 64) if d % max(1, d // 64) == 0 else 1 for d in dims)
    else:
        heads = _stretch("heads", (), d_heads, n, pyr)
    ratios = _stretch("mlp_ratio", given["mlp_ratio"], (d_ratio,), n, False)
    mixer_l = _stretch("mixer", given["mixer"], ("msa",) if not given["mixer"] else mixers, n, False)
    ffn_l = _stretch("ffn", given["ffn"], ("mlp",), n, False)
    patch = _default_patch(macro, img) if kw.get("patch_size") is None else kw["patch_size"]

    stages = []
    for i in range(n):
        mopts = {**stage_defaults(MIXERS.get(mixer_l[i]), i, n, macro), **(kw.get("mixer_options") or {})}
        stages.append(StageSpec(depth=depths[i], dim=dims[i], heads=heads[i], mixer=mixer_l[i],
                                mixer_options=mopts, ffn=ffn_l[i],
                                ffn_options=dict(kw.get("ffn_options") or {}), mlp_ratio=float(ratios[i]),
                                patch_size=(max(1, patch // 2) if i == 0 else patch) if macro == "two-branch" else 0))
    reads_cls = any(MIXERS.get(m).reads_prefix for m in mixer_l)
    base: dict[str, Any] = dict(macro=macro, stages=tuple(stages), img_size=img,
                                in_chans=3 if kw.get("in_chans") is None else kw["in_chans"],
                                num_classes=1000 if kw.get("num_classes") is None else kw["num_classes"])
    if macro == "isotropic":
        base.update(stem=StemSpec("patch", patch), class_token=reads_cls, pool="token" if reads_cls else "avg",
                    pos_embed=True)
    elif macro == "pyramid":
        base.update(stem=StemSpec("patch", patch, norm=True), norm="groupnorm", norm_eps=1e-5)
    elif macro == "two-branch":
        base.update(stem=StemSpec("patch", patch), class_token=True, pool="token", pos_embed=True)
    else:
        base.update(stem=StemSpec("volo", patch, hidden=max(16, dims[0] // 2)), class_token=True,
                    pool="token", pos_embed=True, norm_eps=1e-5)
    if "stem" in extra and isinstance(extra["stem"], dict):
        extra["stem"] = StemSpec.from_dict({**base["stem"].to_dict(), **extra["stem"]})
    base.update(extra)
    return ArchSpec(**base)


def build_model(spec: ArchSpec | dict | None = None, **shorthand: Any) -> nn.Module:
    """Build a model from a spec (or its dict form), or from the shorthand.

    >>> build_model(mixer="shift", ffn="msffn", img_size=32, num_classes=10)
    """
    if spec is not None and shorthand:
        raise UsageError("give either a spec or shorthand arguments, not both")
    if spec is None:
        spec = make_spec(**shorthand)
    elif not isinstance(spec, ArchSpec):
        spec = ArchSpec.from_dict(spec)
    return MACROS.get(spec.macro)(spec)
