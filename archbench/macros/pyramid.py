"""Pyramid macro-architecture (ShiftViT, TransXNet, Swin-like)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.layers.block import build_blocks, drop_path_rates, make_norm
from archbench.layers.layout import Layout
from archbench.macros.base import MacroModel, check_output_fmt, divisible, run_checkpointed
from archbench.registry import MACROS
from archbench.errors import UsageError

DOWNSAMPLES = ("merge", "conv")


class Stage(nn.Module):
    """Optional downsampling, then blocks at one resolution, on a (B, C, H, W) map."""

    def __init__(self, downsample: nn.Module, blocks: nn.ModuleList):
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C', H', W'), H' = H/2 after a downsampling, else H."""
        x = self.downsample(x)
        hw = (x.shape[2], x.shape[3])
        for blk in self.blocks:
            x = run_checkpointed(self.grad_checkpointing, blk, x, hw)
        return x


@MACROS.register("pyramid")
class Pyramid(MacroModel):
    """A stem to stride p, then stages at strides p, 2p, 4p, ... on (B, C, H, W) maps;
    final norm, global average pool, linear head.

    Options: ``downsample`` between stages — ``"merge"``: norm then a 2x2/2 conv without bias
    (ShiftViT's patch merging); ``"conv"``: a 3x3/2 conv without bias then BatchNorm
    (TransXNet). The image must tile exactly: its size divisible by p·2^(stages-1).

    Features (``feature_info``, ``forward_intermediates``): one per stage, its output map,
    reduction p·2^i — as timm's ConvNeXt and MetaFormer.
    """

    layout = Layout.NCHW
    option_defaults = {"downsample": "merge"}

    @classmethod
    def default_init(cls, spec) -> str:
        """TransXNet's scheme when any stage uses its D-Mixer, else ShiftViT's."""
        return "transxnet" if any(s.mixer == "dmixer" for s in spec.stages) else "shiftvit"

    @classmethod
    def grids(cls, spec):
        p, n = spec.stem.patch_size, len(spec.stages)
        divisible(spec.img_size, p * 2 ** (n - 1),
                  f"the pyramid's total stride (patch_size {p} x 2^{n - 1})")
        H, W = spec.img_size
        return [(H // p // 2 ** i, W // p // 2 ** i) for i in range(n)]

    @classmethod
    def check(cls, spec) -> None:
        ds = spec.options.as_dict().get("downsample", "merge")
        if ds not in DOWNSAMPLES:
            raise UsageError(f"pyramid option downsample={ds!r}; allowed: {', '.join(DOWNSAMPLES)}")
        if spec.class_token or spec.pos_embed:
            raise UsageError("the pyramid macro has no class token or absolute position embedding; "
                             "set class_token=False, pos_embed=False (use block_pos for conv position encoding)")
        if any(s.patch_size for s in spec.stages):
            raise UsageError("stage patch_size is for two-branch branches; pyramid uses stem.patch_size")

    def __init__(self, spec):
        super().__init__(spec)
        dims = [s.dim for s in spec.stages]
        self.num_features = dims[-1]
        self.stem = self.make_stem(spec.stem, dims[0])
        grids = self.grids(spec)
        self.stages = nn.ModuleList()
        for i, (st, dpr) in enumerate(zip(spec.stages, drop_path_rates(spec))):
            down = nn.Identity() if i == 0 else self._downsample(dims[i - 1], dims[i])
            blocks = build_blocks(spec, st, layout=self.layout, grid=grids[i], num_prefix=0, drop_paths=dpr)
            self.stages.append(Stage(down, blocks))
        self.norm = make_norm(spec.norm, dims[-1], self.layout, spec.norm_eps)
        self.head_drop = nn.Dropout(spec.drop_rate)
        self.head = self.make_head(dims[-1])
        p = spec.stem.patch_size
        self.feature_info = [dict(num_chs=d, reduction=p * 2 ** i, module=f"stages.{i}") for i, d in enumerate(dims)]
        self.finish_init()

    def _downsample(self, cin: int, cout: int) -> nn.Module:
        if self.opts["downsample"] == "merge":
            return nn.Sequential(make_norm(self.spec.norm, cin, self.layout, self.spec.norm_eps),
                                 nn.Conv2d(cin, cout, kernel_size=2, stride=2, bias=False))
        return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(cout))

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem",
                    blocks=r"^stages\.(\d+)" if coarse else [
                        (r"^stages\.(\d+)\.downsample", (0,)),
                        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                        (r"^norm", (99999,))])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image → (B, C', H/32, W/32) normalised map (for p=4, 4 stages)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the (B, C_i, H/r_i, W/r_i) outputs of the stages
        ``indices`` picks (None: all; n: the last n; a list: those); ``norm`` applies the final
        norm to the last stage's (the one it is sized for); ``stop_early`` skips the stages after
        the last one taken. Returns ``(final features, intermediates)`` — the final features are
        ``forward_features(x)`` when every stage ran — or only the intermediates."""
        check_output_fmt(output_fmt, ("NCHW",))
        take, last = self.take_indices(len(self.stages), indices)
        final = len(self.stages) - 1
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages[:last + 1] if stop_early else self.stages):
            x = stage(x)
            if i in take:
                out.append(self.norm(x) if norm and i == final else x)
        if intermediates_only:
            return out
        return (self.norm(x) if i == final else x), out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last one ``indices`` takes; the final norm and the head go
        with the last stage (they are sized for it), or on request."""
        take, last = self.take_indices(len(self.stages), indices)
        pruned_end = last < len(self.stages) - 1
        self.stages = self.stages[:last + 1]
        self.feature_info = self.feature_info[:last + 1]
        if prune_norm or pruned_end:
            self.norm = nn.Identity()
        if pruned_end:
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or pruned_end:
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # adaptive pooling, not mean(): the op the reference code uses, so FLOP counts agree
        x = self.head_drop(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x if pre_logits else self.head(x)
