"""``create_model`` / ``list_models``: the zoo by name, with overrides, resizing and weights."""
from __future__ import annotations

import difflib
import fnmatch
import math
from typing import Any, Sequence

from torch import nn

from archbench.builder import build_model
from archbench.grammar import FFN_ARGS, MIXER_ARGS, load_parts, option_defaults, stage_defaults
from archbench.registry import FFNS, MIXERS, MODELS
from archbench.spec import ArchSpec
from archbench.errors import UsageError

STAGE_KEYS = {"depths": "depth", "dims": "dim", "heads": "heads", "mlp_ratio": "mlp_ratio"}


def _aliases() -> dict[str, str]:
    return {a: name for name, e in MODELS.items() for a in e.aliases}


def get_entry(name: str):
    """The zoo entry for a name or alias; an unknown name suggests close ones."""
    load_parts()
    aliases = _aliases()
    name = aliases.get(name, name)
    if name in MODELS:
        return MODELS.get(name)
    known = MODELS.names() + sorted(aliases)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"unknown model {name!r}.{hint} `archbench models` lists all {len(MODELS)}.")


def list_models(pattern: str = "*") -> list[str]:
    """Zoo names (not aliases) matching a shell-style pattern, e.g. ``"shiftvit_*"``."""
    load_parts()
    return [n for n in MODELS.names() if fnmatch.fnmatch(n, pattern)]


def _per_stage(key: str, value: Any, n: int) -> tuple:
    vals = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise UsageError(f"{key} has {len(vals)} values but the model has {n} stages; give 1 or {n}")
    return vals


def _keep_options(options, cls, reserved) -> dict[str, Any]:
    """Options a new part accepts, kept from the old part (e.g. msa's qkv_bias → msa)."""
    allowed = option_defaults(cls, reserved)
    return {k: v for k, v in options.as_dict().items() if k in allowed}


def override_spec(spec: ArchSpec, **overrides: Any) -> ArchSpec:
    """A spec with the shorthand/spec-field overrides applied (validated as a new spec).

    Swapping a mixer or FFN keeps only the options the new part accepts. In an isotropic model
    whose mixers no longer read the class token (e.g. DeiT with ``mixer="shift"``), the class
    token is dropped and the head averages the patch tokens.
    """
    load_parts()
    d = spec.to_dict()
    stages = d["stages"]
    n = len(stages)
    ov = dict(overrides)
    for key, field in STAGE_KEYS.items():
        if key in ov:
            for st, v in zip(stages, _per_stage(key, ov.pop(key), n)):
                st[field] = v
    for key, registry, reserved in (("mixer", MIXERS, MIXER_ARGS), ("ffn", FFNS, FFN_ARGS)):
        if key in ov:
            for i, (st, v) in enumerate(zip(stages, _per_stage(key, ov.pop(key), n))):
                cls = registry.get(v)
                if v != st[key]:
                    old = spec.stages[i].mixer_options if key == "mixer" else spec.stages[i].ffn_options
                    st[f"{key}_options"] = _keep_options(old, cls, reserved)
                    if key == "mixer":
                        st["mixer_options"] = {**stage_defaults(cls, i, n, spec.macro), **st["mixer_options"]}
                st[key] = v
    for key in ("mixer_options", "ffn_options"):
        if key in ov:
            opts = ov.pop(key)  # the same options for every stage
            for st in stages:
                st[key] = {**st[key], **opts}
    if "patch_size" in ov:
        p = ov.pop("patch_size")
        if spec.macro == "two-branch":
            img = ov.get("img_size", spec.img_size)
            _two_branch_patches(d, p, img)
        else:
            d["stem"]["patch_size"] = p
    if "img_size" in ov:
        d["img_size"] = ov.pop("img_size")
    spec_fields = set(ArchSpec.__dataclass_fields__) - {"macro", "stages"}
    for k, v in ov.items():
        if k not in spec_fields:
            allowed = sorted(spec_fields | set(STAGE_KEYS) | {"mixer", "ffn", "patch_size"})
            raise UsageError(f"unknown override {k!r}; allowed: {', '.join(allowed)}")
        d[k] = v
    if d["macro"] == "isotropic" and d["pool"] == "token" and "pool" not in overrides \
            and not any(MIXERS.get(st["mixer"]).reads_prefix for st in stages):
        d.update(pool="avg", class_token=False)
    return ArchSpec.from_dict(d)


def _two_branch_patches(d: dict, p: int, img) -> None:
    """CrossViT at another patch size: the small branch gets ``p``; the large branch the
    smallest patch above p·16/12 (the published ratio) that tiles the image; both branches
    then see the image at its own size (img_scales 1, 1)."""
    H, W = (img, img) if isinstance(img, int) else img
    target = p * 16 / 12
    large = next((q for q in range(math.ceil(target - 1e-9), min(H, W) + 1)
                  if q > p and H % q == 0 and W % q == 0), None)
    if large is None:
        raise UsageError(f"two-branch: no large-branch patch above {p} tiles a {H}x{W} image; "
                         f"use a smaller patch_size")
    d["stages"][0]["patch_size"], d["stages"][1]["patch_size"] = p, large
    d["options"] = {**d.get("options", {}), "img_scales": [1.0, 1.0]}


def create_model(name: str, pretrained: str | None = None, num_classes: int = 1000,
                 img_size: int | Sequence[int] | None = None, in_chans: int = 3, **overrides: Any) -> nn.Module:
    """A zoo model by name (timm-style), optionally resized, overridden, and loaded.

    ``img_size`` rebuilds the resolution-dependent parts (position embeddings, relative
    position biases) for that size; ``overrides`` take the shorthand keys (``mixer``, ``ffn``,
    ``depths``, ``dims``, ``heads``, ``mlp_ratio``, ``patch_size``) and any spec field.
    ``pretrained`` is a path to a checkpoint of the same architecture (timm's keys or ours);
    nothing is downloaded.
    """
    entry = get_entry(name)
    spec = entry.make()
    changes: dict[str, Any] = dict(overrides)
    if img_size is not None:
        changes["img_size"] = img_size
    if num_classes != spec.num_classes:
        changes["num_classes"] = num_classes
    if in_chans != spec.in_chans:
        changes["in_chans"] = in_chans
    try:
        if spec.macro == "two-branch" and "img_size" in changes and "patch_size" not in changes:
            _check_two_branch_resize(spec, changes["img_size"])
        spec = override_spec(spec, **changes) if changes else spec
    except ValueError as e:
        args = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        raise UsageError(f"{entry.name} cannot take {args}: {e}") from None
    model = build_model(spec)
    model.pretrained_cfg.update(entry.cfg)
    model.pretrained_cfg.update(input_size=(spec.in_chans, *spec.img_size), num_classes=spec.num_classes,
                                architecture=entry.name)
    model.zoo_name = entry.name
    if pretrained is not None:
        from archbench.models.weights import load_pretrained
        load_pretrained(model, pretrained, entry)
    return model


def _check_two_branch_resize(spec: ArchSpec, img) -> None:
    H, W = (img, img) if isinstance(img, int) else tuple(img)
    p = spec.stages[0].patch_size
    if H % p or W % p:
        raise UsageError(f"{H}x{W} is not tiled by CrossViT's {p}-pixel small-branch patches; pass "
                         f"patch_size too (e.g. img_size={H}, patch_size=4 gives branches of 4 and 8)")


__all__ = ["create_model", "list_models", "get_entry", "override_spec"]
