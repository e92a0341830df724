"""What every macro-architecture model shares: timm's model interface and weight init.

A macro-architecture class *is* the model class: the published models are specs built by
these classes, never classes of their own.

timm's interface, as timm 1.0.31's own models have it: ``forward_features``,
``forward_head(x, pre_logits)``, ``get_classifier``/``reset_classifier``, ``pretrained_cfg``
(enough for ``timm.data.resolve_model_data_config``), ``feature_info`` (one dict per feature
``forward_intermediates`` can return: ``num_chs``, ``reduction``, ``module``),
``forward_intermediates``/``prune_intermediate_layers`` (so timm's ``FeatureGetterNet``
wraps any model as a backbone), ``set_grad_checkpointing`` and ``group_matcher``.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import checkpoint
from timm.models._features import feature_take_indices
from torch import nn

from archbench.layers.block import make_norm
from archbench.layers.init import INITS, InitScheme
from archbench.layers.layout import Layout
from archbench.registry import STEMS
from archbench.errors import UsageError


class MacroModel(nn.Module):
    """Base of the macro-architectures. Subclasses set ``layout`` and ``option_defaults`` and
    implement ``grids`` (token grid per stage), ``check``, ``forward_features``,
    ``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers`` and
    ``group_matcher``, fill ``feature_info``, and call ``finish_init()`` last in ``__init__``."""

    layout: ClassVar[Layout]
    option_defaults: ClassVar[dict[str, Any]] = {}
    family_init: ClassVar[str]  # the init scheme of the family the macro comes from

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes
        self.opts = {**self.option_defaults, **spec.options.as_dict()}
        self.global_pool = spec.pool  # timm's name; "avg" once pruning drops a class token
        self.grad_checkpointing = False
        self.feature_info: list[dict[str, Any]] = []  # filled by the subclass
        self.pretrained_cfg = {
            "url": "", "num_classes": spec.num_classes,
            "input_size": (spec.in_chans, *spec.img_size), "pool_size": None,
            "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            # parts are built for img_size's token grid (position embeddings, relative biases)
            "fixed_input_size": True,
        }

    def finish_init(self) -> None:
        """Last step of a subclass's ``__init__``: initialise the weights, then name the first
        conv(s) and the classifier(s) in ``pretrained_cfg`` as timm does."""
        self.init_weights()
        stems = self.stem if isinstance(self.stem, nn.ModuleList) else [self.stem]
        prefixes = [f"stem.{b}" for b in range(len(stems))] if isinstance(self.stem, nn.ModuleList) else ["stem"]
        first = tuple(f"{pre}.{next(n for n, m in st.named_modules() if isinstance(m, nn.Conv2d))}"
                      for pre, st in zip(prefixes, stems))
        heads = [f"head.{b}" for b in range(len(self.head))] if isinstance(self.head, nn.ModuleList) else ["head"]
        if getattr(self, "aux_head", None) is not None:
            heads.append("aux_head")
        self.pretrained_cfg.update(first_conv=first[0] if len(first) == 1 else first,
                                   classifier=heads[0] if len(heads) == 1 else tuple(heads))

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
            return self.new_head(old.in_features if isinstance(old, nn.Linear) else self.num_features)

        for name in ("head", "aux_head"):
            old = getattr(self, name, None)
            if isinstance(old, nn.ModuleList):
                setattr(self, name, nn.ModuleList(fresh(m) for m in old))
            elif old is not None:
                setattr(self, name, fresh(old))

    def take_indices(self, num_features: int, indices) -> tuple[list[int], int]:
        """timm's ``feature_take_indices`` (None: all; int n: the last n; a list: those, negative
        from the end), with a UsageError naming the range instead of an assert."""
        try:
            return feature_take_indices(num_features, indices)
        except AssertionError as e:
            raise UsageError(f"forward_intermediates indices={indices!r}: {e}") from None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's ``checkpoint``, non-reentrant) of every block while
        gradients are recorded: the same outputs and gradients, less memory, one more forward
        per block in backward. BatchNorm running statistics are updated twice per step (the
        recomputed forward is a training forward too), as in timm."""
        self.grad_checkpointing = enable

    # helpers for subclasses --------------------------------------------------------------
    def make_stem(self, stem_spec, dim: int) -> nn.Module:
        spec = self.spec
        return STEMS.get(stem_spec.kind)(
            stem_spec, spec.in_chans, dim, lambda d: make_norm(spec.norm, d, Layout.NCHW, spec.norm_eps))

    def make_head(self, dim: int) -> nn.Module:
        return nn.Linear(dim, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def new_head(self, dim: int) -> nn.Module:
        """A head made after ``__init__`` (reset_classifier), initialised by the spec's scheme."""
        head = self.make_head(dim)
        head.apply(self.init_scheme.init_module)
        return head


def run_checkpointed(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, through activation checkpointing when ``enabled`` and autograd is
    recording (under ``no_grad`` there is nothing to save)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args)
    return fn(*args)


def check_output_fmt(output_fmt: str, allowed: tuple[str, ...]) -> None:
    if output_fmt not in allowed:
        raise UsageError(f"output_fmt={output_fmt!r}; this model gives {' or '.join(allowed)}")


def tokens_to_nchw(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Prefix-free (B, N, C) tokens → (B, C, H, W), as timm returns intermediates."""
    return x.reshape(x.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()


def divisible(img_size: tuple[int, int], stride: int, what: str) -> tuple[int, int]:
    """The grid of an image tiled by ``stride``, or a ValueError naming both and a fix."""
    H, W = img_size
    if H % stride or W % stride:
        raise UsageError(f"img_size {H}x{W} is not divisible by {what} {stride}; use a multiple "
                         f"of {stride} (e.g. {max(stride, H // stride * stride)}) or change the patch size")
    return H // stride, W // stride
