"""Loading checkpoints into zoo models: read, convert keys, resize, load strictly.

Converters take a checkpoint in its reference code's key names to ours: timm's for DeiT/ViT,
CrossViT and VOLO, the official repositories' for ShiftViT (microsoft/SPACH) and TransXNet
(LMMMEng/TransXNet). Nothing is downloaded: ``pretrained`` is a local path to a state dict,
a ``{"model": ...}`` or ``{"state_dict": ...}`` checkpoint (keys may carry DDP's ``module.``
prefix), or a ``.safetensors`` file.
"""
from __future__ import annotations

import argparse
import math
import pickle
import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from archbench.errors import UsageError

# a converter maps each of our keys to (the checkpoint key it came from, its tensor)
Converted = dict[str, tuple[str, Tensor]]
Converter = Callable[[dict[str, Tensor]], Converted]


def checkpoint_file(path: str | Path) -> Path:
    """The file a checkpoint argument names: the file, or a run's --checkpoint-dir's last.pt."""
    path = Path(path)
    if path.is_dir():
        if not (path / "last.pt").is_file():
            raise UsageError(f"checkpoint {str(path)!r} is a folder without a run's last.pt")
        return path / "last.pt"
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist (archbench never downloads weights)")
    return path


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = checkpoint_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            # training scripts (timm's, DeiT's, SPACH's) save their argparse Namespace alongside
            with torch.serialization.safe_globals([argparse.Namespace]):
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # weights_only refused a Python object: name them rather than echo torch's long advice
            raise UsageError(f"cannot read checkpoint {str(path)!r}: it holds Python objects besides tensors "
                             f"({_unsafe_globals(path)}), and archbench loads weights only; save the model's "
                             "state_dict() on its own") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"cannot read checkpoint {str(path)!r}: {first}") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UsageError(f"{str(path)!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _unsafe_globals(path: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message
        return "objects torch could not name"
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _rename(sd: dict, rules: list) -> Converted:
    """Apply ``(pattern, replacement)`` rules in order to every key."""
    out = {}
    for key, v in sd.items():
        k = key
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = (key, v)
    return out


def convert_vit(sd: dict) -> Converted:
    return _rename(sd, [(r"^patch_embed\.", "stem."), (r"\.attn\.", ".mixer."), (r"\.mlp\.", ".ffn.")])


def convert_crossvit(sd: dict) -> Converted:
    return _rename(sd, [
        (r"^patch_embed\.", "stem."),
        (r"^(blocks\.\d+\.fusion\.\d+)\.(norm1|attn)\.", r"\1.0.\2."),  # one fusion block per direction
        (r"\.attn\.", ".mixer."), (r"\.mlp\.", ".ffn.")])


def convert_volo(sd: dict) -> Converted:
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
    for key, v in sd.items():
        k = key
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
            out[f"{m[1]}.mixer.wk.{m[2]}"], out[f"{m[1]}.mixer.wv.{m[2]}"] = (key, kk), (key, vv)
            continue
        k = re.sub(r"^(post\.\d+)\.attn\.q\.", r"\1.mixer.wq.", k)
        k = re.sub(r"\.attn\.", ".mixer.", k).replace(".mlp.", ".ffn.")
        out[k] = (key, v)
    return out


def convert_shiftvit(sd: dict) -> Converted:
    """SPACH ``models/shiftvit.py``: ``layers.i`` is stage i's blocks followed by the patch
    merging into stage i+1 (``downsample.norm``, ``.reduction``); ours opens stage i+1
    (``stages.{i+1}.downsample.0`` norm, ``.1`` conv). The shift has no parameters."""
    def merging(m: re.Match) -> str:
        return f"stages.{int(m[1]) + 1}.downsample.{0 if m[2] == 'norm' else 1}."

    return _rename(sd, [
        (r"^patch_embed\.", "stem."),
        (r"^layers\.(\d+)\.downsample\.(norm|reduction)\.", merging),
        (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
        (r"\.mlp\.", ".ffn.")])


def convert_transxnet(sd: dict) -> Converted:
    """LMMMEng/TransXNet ``models/transxnet.py``: ``network.{2i}`` is stage i's blocks and
    ``network.{2i-1}`` the downsampling into it; mmcv ``ConvModule``s name their parts
    ``conv``/``bn`` (ours: ``0``/``1``); one relative position table per stage sits at the top
    (``relative_pos_enc.i``; ours: shared by the stage's OSRA blocks, saved under each); the
    classifier is GroupNorm, pool, 1x1 conv (ours: ``norm``, a Linear ``head``)."""
    def network(m: re.Match) -> str:
        n = int(m[1])
        if m[2] is not None:  # a block
            return f"stages.{n // 2}.blocks.{m[2]}."
        return f"stages.{(n + 1) // 2}.downsample."

    depths: dict[int, int] = {}
    for k in sd:
        m = re.match(r"network\.(\d+)\.(\d+)\.", k)
        if m and int(m[1]) % 2 == 0:
            depths[int(m[1]) // 2] = max(depths.get(int(m[1]) // 2, 0), int(m[2]) + 1)
    out = _rename(sd, [
        (r"^patch_embed\.proj\.", "stem.proj."),
        (r"^network\.(\d+)\.(?:(\d+)|proj)\.", network),
        (r"\.conv\.", ".0."), (r"\.bn\.", ".1."),  # ConvModule
        (r"\.pos_embed\.", ".cpe.proj."), (r"\.token_mixer\.", ".mixer."), (r"\.mlp\.", ".ffn."),
        (r"\.layer_scale_(\d)\.", r".ls\1."),
        (r"^classifier\.0\.", "norm."), (r"^classifier\.2\.", "head.")])
    for k in [k for k in out if re.fullmatch(r"relative_pos_enc\.\d+", k)]:
        i = int(k.rsplit(".", 1)[1])
        if depths.get(i):  # a table of no stage stays, for the strict check to name
            key, v = out.pop(k)
            for j in range(depths[i]):
                out[f"stages.{i}.blocks.{j}.mixer.global_unit.rel_pos"] = (key, v)
    if "head.weight" in out and out["head.weight"][1].dim() == 4:  # (classes, C, 1, 1) conv
        key, v = out["head.weight"]
        out["head.weight"] = (key, v.flatten(1))
    return out


CONVERTERS: dict[str, Converter] = {"vit": convert_vit, "crossvit": convert_crossvit, "volo": convert_volo,
                                    "shiftvit": convert_shiftvit, "transxnet": convert_transxnet}


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


def _resize_rel_pos(model: nn.Module, ours: dict, sd: dict) -> dict:
    """Relative position biases (1, heads, N, N_reduced) saved for another square grid (the
    official TransXNet's are at 224): resized once, with the bicubic interpolation its forward
    applies on every call. A table that fits no grid is left for the shape check to refuse."""
    for k, v in list(sd.items()):
        if not k.endswith(".rel_pos") or k not in ours or ours[k].shape == v.shape or v.dim() != 4:
            continue
        sr = model.get_submodule(k.rsplit(".", 1)[0]).sr_ratio
        side = math.isqrt(v.shape[2])
        square = side * side == v.shape[2] and math.ceil(side / sr) ** 2 == v.shape[3]
        if square and v.shape[:2] == ours[k].shape[:2]:
            sd[k] = F.interpolate(v, size=ours[k].shape[2:], mode="bicubic", align_corners=False)
    return sd


def _grid_for(model: nn.Module, key: str, n: int):
    grids = model.grids(model.spec)
    m = re.search(r"pos_embed_(\d+)", key)
    g = grids[int(m[1])] if m else grids[0]
    return g if g[0] * g[1] == n else None


def load_pretrained(model: nn.Module, path: str | Path, entry=None) -> None:
    """Load a checkpoint strictly; the error names the keys and shapes that disagree (in the
    checkpoint's names, with ours after an arrow where they differ)."""
    sd = read_checkpoint(path)
    ours = model.state_dict()
    origin: dict[str, str] = {}
    if entry is not None and entry.family in CONVERTERS and not set(sd) <= set(ours):
        converted = CONVERTERS[entry.family](sd)
        sd = {k: v for k, (_, v) in converted.items()}
        origin = {k: key for k, (key, _) in converted.items() if key != k}
    sd = _resize_rel_pos(model, ours, _resize_pos_embeds(model, sd))
    head_w = sd.get("head.weight", sd.get("head.0.weight"))
    if head_w is not None and head_w.shape[0] != model.num_classes:
        for k in [k for k in sd if re.match(r"(aux_)?head\.", k)]:
            sd.pop(k)  # a new classifier: keep it freshly initialised
        for k in [k for k in ours if re.match(r"(aux_)?head\.", k)]:
            sd[k] = ours[k]
    def top_first(keys):  # top-level tensors (cls_token, pos_embed, head) say the most
        return sorted(keys, key=lambda k: (k.count("."), k))

    def name(k: str) -> str:
        return f"{origin[k]} -> {k}" if k in origin else k

    missing = top_first(set(ours) - set(sd))
    unexpected = [name(k) for k in top_first(set(sd) - set(ours))]
    shapes = [f"{name(k)}: checkpoint {tuple(sd[k].shape)} vs model {tuple(ours[k].shape)}"
              for k in top_first(set(sd) & set(ours)) if sd[k].shape != ours[k].shape]
    if missing or unexpected or shapes:
        model_name = entry.name if entry is not None else type(model).__name__
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label} {len(items)}: {', '.join(items[:8])}{more}")
        raise UsageError(f"checkpoint {str(path)!r} does not fit {model_name}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
