"""Loading timm checkpoints into zoo models: read, convert keys, resize, load strictly.

Nothing is downloaded: ``pretrained`` is a local path to a state dict, a ``{"model": ...}``
or ``{"state_dict": ...}`` checkpoint, or a ``.safetensors`` file.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

Converter = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist (archbench never downloads weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input error
            raise ValueError(f"cannot read checkpoint {str(path)!r}: {e}") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{str(path)!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _rename(sd: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def convert_vit(sd: dict) -> dict:
    return _rename(sd, [(r"^patch_embed\.", "stem."), (r"\.attn\.", ".mixer."), (r"\.mlp\.", ".ffn.")])


def convert_crossvit(sd: dict) -> dict:
    return _rename(sd, [
        (r"^patch_embed\.", "stem."),
        (r"^(blocks\.\d+\.fusion\.\d+)\.(norm1|attn)\.", r"\1.0.\2."),  # one fusion block per direction
        (r"\.attn\.", ".mixer."), (r"\.mlp\.", ".ffn.")])


def convert_volo(sd: dict) -> dict:
    # timm splits the coarse stage into network.2, .3, .4; ours is one run of blocks
    counts: dict[int, int] = {}
    for k in sd:
        m = re.match(r"network\.(\d+)\.(\d+)\.", k)
        if m:
            counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2]) + 1)
    offsets, total = {}, 0
    for idx in sorted(i for i in counts if i >= 2):
        offsets[idx], total = total, total + counts[idx]
    out = {}
    for k, v in sd.items():
        m = re.match(r"network\.(\d+)\.(\d+)\.(.*)", k)
        if m and int(m[1]) == 0:
            k = f"stages.0.blocks.{m[2]}.{m[3]}"
        elif m:
            k = f"stages.1.blocks.{offsets[int(m[1])] + int(m[2])}.{m[3]}"
        k = re.sub(r"^network\.1\.proj\.", "stages.1.downsample.proj.", k)
        k = re.sub(r"^patch_embed\.", "stem.", k)
        k = re.sub(r"^post_network\.", "post.", k)
        m = re.match(r"(post\.\d+)\.attn\.kv\.(weight|bias)$", k)
        if m:  # fused key/value projection → our wk, wv
            kk, vv = v.chunk(2, dim=0)
            out[f"{m[1]}.mixer.wk.{m[2]}"], out[f"{m[1]}.mixer.wv.{m[2]}"] = kk, vv
            continue
        k = re.sub(r"^(post\.\d+)\.attn\.q\.", r"\1.mixer.wq.", k)
        k = re.sub(r"\.attn\.", ".mixer.", k).replace(".mlp.", ".ffn.")
        out[k] = v
    return out


CONVERTERS: dict[str, Converter] = {"vit": convert_vit, "crossvit": convert_crossvit, "volo": convert_volo}


def _resize_pos_embeds(model: nn.Module, sd: dict) -> dict:
    """Resample absolute position embeddings saved at another grid to the model's grid."""
    from timm.layers import resample_abs_pos_embed

    own = dict(model.named_parameters())
    for k, v in list(sd.items()):
        if "pos_embed" not in k or k not in own or own[k].shape == v.shape:
            continue
        target = own[k]
        if v.dim() == 4:  # (1, H, W, C) grid (VOLO)
            sd[k] = torch.nn.functional.interpolate(
                v.permute(0, 3, 1, 2), size=target.shape[1:3], mode="bicubic",
                align_corners=False).permute(0, 2, 3, 1)
            continue
        prefix = 1 if getattr(model.spec, "class_token", False) else 0
        n_old, n_new = v.shape[1] - prefix, target.shape[1] - prefix
        old = int(round(n_old ** 0.5))
        grid = _grid_for(model, k, n_new)
        if old * old == n_old and grid is not None:
            sd[k] = resample_abs_pos_embed(v, new_size=list(grid), old_size=[old, old], num_prefix_tokens=prefix)
    return sd


def _grid_for(model: nn.Module, key: str, n: int):
    grids = model.grids(model.spec)
    m = re.search(r"pos_embed_(\d+)", key)
    g = grids[int(m[1])] if m else grids[0]
    return g if g[0] * g[1] == n else None


def load_pretrained(model: nn.Module, path: str | Path, entry=None) -> None:
    """Load a checkpoint strictly; the error names the keys and shapes that disagree."""
    sd = read_checkpoint(path)
    ours = model.state_dict()
    if entry is not None and entry.family in CONVERTERS and not set(sd) <= set(ours):
        sd = CONVERTERS[entry.family](sd)
    sd = _resize_pos_embeds(model, sd)
    head_w = sd.get("head.weight", sd.get("head.0.weight"))
    if head_w is not None and head_w.shape[0] != model.num_classes:
        for k in [k for k in sd if re.match(r"(aux_)?head\.", k)]:
            sd.pop(k)  # a new classifier: keep it freshly initialised
        for k in [k for k in ours if re.match(r"(aux_)?head\.", k)]:
            sd[k] = ours[k]
    def top_first(keys):  # top-level tensors (cls_token, pos_embed, head) say the most
        return sorted(keys, key=lambda k: (k.count("."), k))

    missing = top_first(set(ours) - set(sd))
    unexpected = top_first(set(sd) - set(ours))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in top_first(set(sd) & set(ours)) if sd[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        name = entry.name if entry is not None else type(model).__name__
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} {len(items)}: {', '.join(items[:8])}{more}")
        raise ValueError(f"checkpoint {str(path)!r} does not fit {name}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
