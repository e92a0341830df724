"""The published models as data: each name is a spec built by the one builder.

Every entry carries the reference figures it must hit (``../shared/reference``: exact
parameter count and fvcore GMACs with attention counted, from timm 1.0.31 or the authors'
official code) and what the paper reports, so tests and ``archbench models`` read them here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from archbench.registry import MODELS
from archbench.spec import ArchSpec, StageSpec, StemSpec


@dataclass(frozen=True)
class ZooEntry:
    """A published model: how to make its spec, and the numbers it must match."""

    name: str
    family: str
    make: Callable[[], ArchSpec]
    params: int  # reference parameter count (exact), 1000 classes
    gmacs: float  # reference fvcore GMACs, attention counted, at the spec's resolution
    paper: str  # params / GMACs / ImageNet-1k top-1 as the paper reports
    reference: str  # the reference implementation the numbers come from
    timm_name: str | None = None  # timm's model of the same architecture (weights load)
    cfg: dict[str, Any] = field(default_factory=dict)  # pretrained_cfg overrides
    aliases: tuple[str, ...] = ()

    @property
    def paper_top1(self) -> float | None:
        last = self.paper.rsplit("/", 1)[-1].strip()
        try:
            return float(last.split()[0])
        except ValueError:
            return None


def _register(entry: ZooEntry) -> None:
    MODELS.register(entry.name)(entry)


def _cfg(crop_pct: float = 0.875, interpolation: str = "bicubic", mean=IMAGENET_DEFAULT_MEAN,
         std=IMAGENET_DEFAULT_STD, **kw) -> dict[str, Any]:
    return dict(crop_pct=crop_pct, interpolation=interpolation, mean=mean, std=std, **kw)


# ViT / DeiT --------------------------------------------------------------------------------
def _deit(dim: int, heads: int) -> Callable[[], ArchSpec]:
    def make() -> ArchSpec:
        return ArchSpec(
            macro="isotropic", img_size=224, stem=StemSpec("patch", 16),
            stages=(StageSpec(12, dim, heads, "msa", {"qkv_bias": True}, "mlp", {}, 4.0),),
            norm="layernorm", norm_eps=1e-6, class_token=True, pool="token", pos_embed=True)
    return make


for _n, _d, _h, _p, _g, _paper, _timm in (
        ("tiny", 192, 3, 5_717_416, 1.258, "5.7M / 1.3G / 72.2", "deit_tiny_patch16_224"),
        ("small", 384, 6, 22_050_664, 4.608, "22M / 4.6G / 79.8", "deit_small_patch16_224"),
        ("base", 768, 12, 86_567_656, 17.583, "86M / 17.6G / 81.8", "vit_base_patch16_224")):
    _register(ZooEntry(f"deit_{_n}", "vit", _deit(_d, _h), _p, _g, _paper, f"timm {_timm}", _timm,
                       _cfg(), aliases=(f"vit_{_n}_patch16",)))


# CrossViT ----------------------------------------------------------------------------------
def _crossvit(dims, depths, heads, ratio: float, dagger: bool = False) -> Callable[[], ArchSpec]:
    def make() -> ArchSpec:
        return ArchSpec(
            macro="two-branch", img_size=240, stem=StemSpec("dagger" if dagger else "patch", 12),
            stages=tuple(StageSpec(d, w, h, "msa", {"qkv_bias": True}, "mlp", {}, ratio, patch_size=p)
                         for d, w, h, p in zip(depths, dims, heads, (12, 16))),
            norm="layernorm", norm_eps=1e-6, class_token=True, pool="token", pos_embed=True,
            options={"encoders": 3, "fusion_depth": 1, "img_scales": (1.0, 224 / 240)})
    return make


for _n, _dims, _dep, _h, _r, _p, _g, _paper in (
        ("tiny", (96, 192), (1, 4), 3, 4.0, 7_014_800, 1.570, "7.0M / 1.6G / 73.4"),
        ("small", (192, 384), (1, 4), 6, 4.0, 26_856_272, 5.630, "26.7M / 5.6G / 81.0"),
        ("base", (384, 768), (1, 4), 12, 4.0, 105_025_232, 21.220, "104.7M / 21.2G / 82.2"),
        ("9", (128, 256), (1, 3), 4, 3.0, 8_553_296, 1.849, "8.6M / 1.8G / 73.9"),
        ("15", (192, 384), (1, 5), 6, 3.0, 27_528_464, 5.807, "27.4M / 5.8G / 81.5"),
        ("18", (224, 448), (1, 6), 7, 3.0, 43_271_408, 9.053, "43.3M / 9.0G / 82.5"),
        ("9_dagger", (128, 256), (1, 3), 4, 3.0, 8_776_592, 1.987, "8.8M / 2.0G / 77.1"),
        ("15_dagger", (192, 384), (1, 5), 6, 3.0, 28_209_008, 6.129, "28.2M / 6.1G / 82.3"),
        ("18_dagger", (224, 448), (1, 6), 7, 3.0, 44_266_976, 9.495, "44.3M / 9.5G / 82.8")):
    _timm = f"crossvit_{_n}_240"
    _register(ZooEntry(f"crossvit_{_n}", "crossvit", _crossvit(_dims, _dep, (_h, _h), _r, "dagger" in _n),
                       _p, _g, _paper, f"timm {_timm}", _timm, _cfg(input_size=(3, 240, 240))))


# VOLO --------------------------------------------------------------------------------------
def _volo(layers, dims, heads, ratio: float = 3.0, hidden: int = 64) -> Callable[[], ArchSpec]:
    def make() -> ArchSpec:
        return ArchSpec(
            macro="two-stage", img_size=224, stem=StemSpec("volo", 8, hidden=hidden),
            stages=(StageSpec(layers[0], dims[0], heads[0], "outlook",
                              {"kernel": 3, "padding": 1, "stride": 2, "qkv_bias": False}, "mlp", {}, ratio),
                    StageSpec(sum(layers[1:]), dims[1], heads[1], "msa", {"qkv_bias": False}, "mlp", {}, ratio)),
            norm="layernorm", norm_eps=1e-5, class_token=True, pool="token", pos_embed=True,
            options={"class_blocks": 2, "aux_head": True, "class_qkv_bias": False})
    return make


for _n, _args, _p, _g, _paper in (
        ("d1", ((4, 4, 8, 2), (192, 384), (6, 12)), 26_632_040, 6.941, "27M / 6.8G / 84.2"),
        ("d2", ((6, 4, 10, 4), (256, 512), (8, 16)), 58_678_336, 14.342, "59M / 14.1G / 85.2"),
        ("d3", ((8, 8, 16, 4), (256, 512), (8, 16)), 86_325_072, 20.783, "86M / 20.6G / 85.4"),
        ("d4", ((8, 8, 16, 4), (384, 768), (12, 16)), 192_961_520, 44.336, "193M / 43.8G / 85.7"),
        ("d5", ((12, 12, 20, 4), (384, 768), (12, 16), 4.0, 128), 295_455_584, 72.403, "296M / 69.0G / 86.1")):
    _timm = f"volo_{_n}_224"
    _register(ZooEntry(f"volo_{_n}", "volo", _volo(*_args), _p, _g, _paper, f"timm {_timm}", _timm,
                       _cfg(crop_pct=0.96)))


# ShiftViT ----------------------------------------------------------------------------------
def _shiftvit(embed: int, depths, ratio: float, drop_path: float, n_div: int) -> Callable[[], ArchSpec]:
    def make() -> ArchSpec:
        return ArchSpec(
            macro="pyramid", img_size=224, stem=StemSpec("patch", 4, norm=True),
            stages=tuple(StageSpec(d, embed * 2 ** i, 1, "shift", {"ratio": 1 / n_div}, "mlp", {}, ratio)
                         for i, d in enumerate(depths)),
            norm="groupnorm", norm_eps=1e-5, drop_path=drop_path, options={"downsample": "merge"})
    return make


for _size, _variant, _embed, _dep, _r, _dp, _ndiv, _p, _g, _paper in (
        ("tiny", "light", 96, (2, 2, 6, 2), 4.0, 0.2, 12, 19_608_328, 2.975, "20M / 3.0G / 79.4"),
        ("tiny", "r4", 96, (2, 2, 12, 3), 4.0, 0.2, 12, 31_426_312, 4.596, "—"),
        ("tiny", "r2", 96, (6, 8, 18, 6), 2.0, 0.2, 12, 28_566_664, 4.609, "29M / 4.5G / 81.7"),
        ("small", "light", 96, (2, 2, 18, 2), 4.0, 0.4, 12, 33_796_360, 5.754, "34M / 5.7G / 81.6"),
        ("small", "r4", 96, (2, 6, 24, 4), 4.0, 0.4, 12, 51_523_336, 8.534, "—"),
        ("small", "r2", 96, (10, 18, 36, 10), 2.0, 0.4, 12, 50_304_136, 8.792, "50M / 8.8G / 82.8"),
        ("base", "light", 128, (2, 2, 18, 2), 4.0, 0.5, 16, 59_708_776, 10.215, "—"),
        ("base", "r4", 128, (4, 6, 22, 4), 4.0, 0.5, 16, 87_271_528, 15.158, "—"),
        ("base", "r2", 128, (10, 18, 36, 10), 2.0, 0.6, 16, 89_026_408, 15.602, "89M / 15.6G / 83.3")):
    _name = f"shiftvit_{_size}" + ("" if _variant == "r2" else f"_{_variant}")
    _ref = f"shiftvit_{_variant}_{_size}"
    _register(ZooEntry(_name, "shiftvit", _shiftvit(_embed, _dep, _r, _dp, _ndiv), _p, _g, _paper,
                       f"SPACH {_ref}", None, _cfg()))


# TransXNet ---------------------------------------------------------------------------------
def _transxnet(depths, dims, heads, groups, ratios) -> Callable[[], ArchSpec]:
    def make() -> ArchSpec:
        return ArchSpec(
            macro="pyramid", img_size=224, stem=StemSpec("conv", 4),
            stages=tuple(StageSpec(d, w, h, "dmixer", {"kernel": 7, "groups": g, "sr_ratio": sr}, "msffn", {}, r)
                         for d, w, h, g, r, sr in zip(depths, dims, heads, groups, ratios, (8, 4, 2, 1))),
            norm="groupnorm", norm_eps=1e-5, layer_scale=1e-5, layer_scale_bias=True, block_pos=7,
            options={"downsample": "conv"})
    return make


for _n, _args, _p, _g, _paper, _crop in (
        ("t", ((3, 3, 9, 3), (48, 96, 224, 448), (1, 2, 4, 8), (2, 2, 2, 2), (4.0,) * 4),
         12_834_808, 1.846, "12.8M / 1.8G / 81.6", 0.9),
        ("s", ((4, 4, 12, 4), (64, 128, 320, 512), (1, 2, 5, 8), (2, 2, 3, 4), (6.0, 6.0, 4.0, 4.0)),
         26_864_068, 4.686, "26.9M / 4.5G / 83.8", 0.9),
        ("b", ((4, 4, 21, 4), (76, 152, 336, 672), (2, 4, 8, 16), (2, 2, 4, 4), (8.0, 8.0, 4.0, 4.0)),
         48_009_002, 8.474, "48.0M / 8.3G / 84.6", 0.95)):
    _register(ZooEntry(f"transxnet_{_n}", "transxnet", _transxnet(*_args), _p, _g, _paper,
                       f"official transxnet_{_n}", None, _cfg(crop_pct=_crop)))
