"""Weight-init schemes: how each family's reference code initialises a freshly built model.

A scheme re-initialises a built model in place, after every part's constructor has run.
Where a scheme has no rule for a part, the part keeps what its constructor set: PyTorch's
``reset_parameters`` for convs, linears and norms (norms: weight 1, bias 0), the spec's
layer-scale value, zeros for class tokens, position embeddings and relative position
biases, and IDConv's own truncated-normal kernels (as TransXNet's ``reset_parameters``).

A spec with ``init=None`` gets its macro's family's scheme (``MacroModel.default_init``):
isotropic → ``timm-vit``, two-branch → ``crossvit``, two-stage → ``volo``, pyramid →
``transxnet`` when any stage uses TransXNet's D-Mixer, else ``shiftvit`` — so a hybrid takes
the scheme of the model its macro comes from. ``init`` picks another by name
(``create_model(..., init="torch")``, ``--set init=torch``).

``trunc_normal_`` is timm's (TransXNet calls ``torch.nn.init.trunc_normal_``, the same
distribution): both truncate at the *absolute* bounds [-2, 2], i.e. at ±100 std for std
0.02, so the draws are in effect plain normal.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from timm.layers import trunc_normal_
from torch import Tensor, nn

from archbench.registry import Registry

INITS: Registry = Registry("init scheme")

TOKEN_RE = re.compile(r"(cls_token|pos_embed)(_\d+)?")  # the macros' top-level token parameters


def trunc02(t: Tensor) -> None:
    trunc_normal_(t, std=0.02)


def normal_1e6(t: Tensor) -> None:
    nn.init.normal_(t, std=1e-6)


@dataclass(frozen=True)
class InitScheme:
    """One reference's rules. ``weights``: module types whose weight is drawn trunc-normal
    (std 0.02) and whose bias is zeroed; ``norms``: module types reset to weight 1, bias 0;
    ``cls_token`` / ``pos_embed``: how those are drawn (None: kept as built, zeros)."""

    source: str  # the reference file and function the rules come from
    weights: tuple[type[nn.Module], ...] = ()
    pointwise: tuple[type[nn.Module], ...] = ()  # like ``weights``, but only with a 1x1 kernel
    norms: tuple[type[nn.Module], ...] = ()
    cls_token: Callable[[Tensor], None] | None = None
    pos_embed: Callable[[Tensor], None] | None = None

    def init_module(self, m: nn.Module) -> None:
        """The per-module rule (what the reference passes to ``nn.Module.apply``)."""
        if isinstance(m, self.weights) or (isinstance(m, self.pointwise) and m.kernel_size == (1, 1)):
            trunc02(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, self.norms) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def __call__(self, model: nn.Module) -> None:
        # modules first, then the tokens in registration order: the order the macros used
        # before schemes existed, so seeded CrossViT and VOLO models are unchanged
        model.apply(self.init_module)
        for name, p in model.named_parameters(recurse=False):
            m = TOKEN_RE.fullmatch(name)
            rule = getattr(self, m[1]) if m else None
            if rule is not None:
                rule(p.data)


def _register(name: str, scheme: InitScheme) -> None:
    INITS.register(name)(scheme)


_register("torch", InitScheme(source="no re-initialisation: each part's constructor (PyTorch's defaults)"))
_register("timm-vit", InitScheme(
    source="timm 1.0.31 models/vision_transformer.py: VisionTransformer.init_weights, init_weights_vit_timm",
    weights=(nn.Linear,), cls_token=normal_1e6, pos_embed=trunc02))
_register("crossvit", InitScheme(
    source="timm 1.0.31 models/crossvit.py: CrossVit.__init__, CrossVit._init_weights",
    weights=(nn.Linear,), norms=(nn.LayerNorm,), cls_token=trunc02, pos_embed=trunc02))
_register("volo", InitScheme(
    source="timm 1.0.31 models/volo.py: VOLO.__init__, VOLO._init_weights",
    weights=(nn.Linear,), cls_token=trunc02, pos_embed=trunc02))
_register("shiftvit", InitScheme(
    source="microsoft/SPACH models/shiftvit.py: ShiftViT._init_weights",
    weights=(nn.Linear, nn.Conv1d, nn.Conv2d), norms=(nn.LayerNorm, nn.GroupNorm)))
# the official TransXNet has no Linear; our Linears (the head) stand for its 1x1-conv classifier
_register("transxnet", InitScheme(
    source="LMMMEng/TransXNet models/transxnet.py: TransXNet._init_model_weights",
    weights=(nn.Conv2d, nn.Linear), norms=(nn.GroupNorm, nn.BatchNorm2d)))
# what every macro did before the schemes (one rule for all): kept so that runs trained then
# can be identified, reported and continued with the init they were trained with
_register("archbench-0.1", InitScheme(
    source="archbench 0.1 macros/base.py init_weights (all macros, until 2026-11-25)",
    weights=(nn.Linear,), pointwise=(nn.Conv2d,), cls_token=trunc02, pos_embed=trunc02))
