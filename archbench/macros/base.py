"""What every macro-architecture model shares: timm's model interface and weight init.

A macro-architecture class *is* the model class: the published models are specs built by
these classes, never classes of their own.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from archbench.layers.block import make_norm
from archbench.layers.init import INITS, InitScheme
from archbench.layers.layout import Layout
from archbench.registry import STEMS
from archbench.errors import UsageError


class MacroModel(nn.Module):
    """Base of the macro-architectures. Subclasses set ``layout`` and ``option_defaults`` and
    implement ``grids`` (token grid per stage), ``check``, ``forward_features`` and
    ``forward_head``, and call ``init_weights()`` last in ``__init__``."""

    layout: ClassVar[Layout]
    option_defaults: ClassVar[dict[str, Any]] = {}
    family_init: ClassVar[str]  # the init scheme of the family the macro comes from

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes
        self.opts = {**self.option_defaults, **spec.options.as_dict()}
        self.pretrained_cfg = {
            "url": "", "num_classes": spec.num_classes,
            "input_size": (spec.in_chans, *spec.img_size), "pool_size": None,
            "crop_pct": 0.875, "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        }

    # spec-level rules --------------------------------------------------------------------
    @classmethod
    def grids(cls, spec) -> list[tuple[int, int]]:
        raise NotImplementedError

    @classmethod
    def check(cls, spec) -> None:
        """Macro-specific rules beyond the per-part checks; raise ValueError."""

    @classmethod
    def default_init(cls, spec) -> str:
        """The init scheme of a spec with ``init=None``: its macro's family's."""
        return cls.family_init

    # weight init -------------------------------------------------------------------------
    @property
    def init_scheme(self) -> InitScheme:
        return INITS.get(self.spec.init or self.default_init(self.spec))

    def init_weights(self) -> None:
        """(Re)initialise every weight by the spec's scheme (see ``archbench.layers.init``)."""
        self.init_scheme(self)

    # timm's interface --------------------------------------------------------------------
    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace every classifier (head, aux head, per-branch heads) for ``num_classes``."""
        self.num_classes = num_classes
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

        def fresh(old: nn.Module) -> nn.Module:
            dim = old.in_features if isinstance(old, nn.Linear) else self.num_features
            new = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
            new.apply(self.init_scheme.init_module)
            return new

        for name in ("head", "aux_head"):
            old = getattr(self, name, None)
            if isinstance(old, nn.ModuleList):
                setattr(self, name, nn.ModuleList(fresh(m) for m in old))
            elif old is not None:
                setattr(self, name, fresh(old))

    # helpers for subclasses --------------------------------------------------------------
    def make_stem(self, stem_spec, dim: int) -> nn.Module:
        spec = self.spec
        return STEMS.get(stem_spec.kind)(
            stem_spec, spec.in_chans, dim, lambda d: make_norm(spec.norm, d, Layout.NCHW, spec.norm_eps))

    def make_head(self, dim: int) -> nn.Module:
        return nn.Linear(dim, self.num_classes) if self.num_classes > 0 else nn.Identity()


def divisible(img_size: tuple[int, int], stride: int, what: str) -> tuple[int, int]:
    """The grid of an image tiled by ``stride``, or a ValueError naming both and a fix."""
    H, W = img_size
    if H % stride or W % stride:
        raise UsageError(f"img_size {H}x{W} is not divisible by {what} {stride}; use a multiple "
                         f"of {stride} (e.g. {max(stride, H // stride * stride)}) or change the patch size")
    return H // stride, W // stride
