"""Parameter counts: total, trainable, and split by the role of the module that owns them.

The split is by name, generically, so it works for any ``nn.Module``:

- ``embedding``: ``stem``, ``patch_embed``, ``pos_embed``, ``cls_token`` (also timm's
  ``dist_token`` / ``reg_token`` prefix tokens, which are the same kind of thing);
- ``token_mixer``: ``mixer`` (archbench's blocks) and ``attn`` (timm's);
- ``ffn``: ``ffn`` (archbench) and ``mlp`` (timm);
- ``head``: ``head``, ``aux_head`` (and timm's distillation ``head_dist``);
- ``other``: everything else (norms, downsampling, layer scale, fusion projections, ...).

A parameter belongs to the first component of its dotted name (outermost first, the
parameter's own name last) that names a role, so a ``mlp`` inside a ``mixer`` counts as
token mixer and ``head.attn`` as head. A name matches a role exactly or with a ``_<digits>``
suffix, as timm's per-branch names have it (CrossViT's ``pos_embed_0``, ``cls_token_1``).

``total`` is ``sum(p.numel() for p in model.parameters())``, the reference table's
definition: a parameter shared by several modules counts once, under its first owner
(``named_parameters()`` yields it once, with the first name it was registered under).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

COMPONENTS = ("embedding", "token_mixer", "ffn", "head", "other")

ROLES = {
    "mixer": "token_mixer", "attn": "token_mixer",
    "ffn": "ffn", "mlp": "ffn",
    "head": "head", "aux_head": "head", "head_dist": "head",
    "stem": "embedding", "patch_embed": "embedding", "pos_embed": "embedding", "cls_token": "embedding",
    "dist_token": "embedding", "reg_token": "embedding",
}
_SUFFIX = re.compile(r"_\d+$")


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a model; ``by_component`` sums to ``total``."""

    total: int
    trainable: int
    by_component: dict[str, int] = field(default_factory=dict)  # COMPONENTS → parameters


def component_role(part: str) -> str | None:
    """The role one name component stands for (``'attn'`` → ``'token_mixer'``), or None."""
    return ROLES.get(part) or ROLES.get(_SUFFIX.sub("", part))


def role(name: str) -> str:
    """The component of a dotted parameter (or module) name; ``'other'`` if none names one."""
    for part in name.split("."):
        r = component_role(part)
        if r is not None:
            return r
    return "other"


def count_params(model: nn.Module) -> ParamCount:
    """Total, trainable and per-component parameter counts of ``model``."""
    split = dict.fromkeys(COMPONENTS, 0)
    total = trainable = 0
    for name, p in model.named_parameters():  # shared parameters come once, first owner's name
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        split[role(name)] += n
    return ParamCount(total, trainable, split)
