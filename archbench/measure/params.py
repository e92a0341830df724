"""Parameter counts, total and by the role of the module that owns them."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

COMPONENTS = ("embedding", "token_mixer", "ffn", "head", "other")
# a parameter's role: the first path component that names one (timm's names too)
ROLE = {"mixer": "token_mixer", "attn": "token_mixer", "ffn": "ffn", "mlp": "ffn", "head": "head",
        "aux_head": "head", "stem": "embedding", "patch_embed": "embedding"}


@dataclass(frozen=True)
class ParamCount:
    total: int
    trainable: int
    by_component: dict[str, int] = field(default_factory=dict)


def role(name: str) -> str:
    for part in name.split("."):
        if part in ROLE:
            return ROLE[part]
        if part.startswith(("pos_embed", "cls_token")):
            return "embedding"
    return "other"


def count_params(model: nn.Module) -> ParamCount:
    """``parameters()`` semantics: a parameter shared by several modules counts once."""
    split = dict.fromkeys(COMPONENTS, 0)
    total = trainable = 0
    for name, p in model.named_parameters():  # named_parameters yields shared ones once
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
        split[role(name)] += n
    return ParamCount(total, trainable, split)
