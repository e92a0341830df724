"""The contract a token mixer and an FFN keep with the block, as types.

A part is one file: an ``nn.Module`` class registered with ``@MIXERS.register(name)`` (or
``FFNS``), found by its package's ``__init__`` (every module there is imported). Its policy lives
on the class, nowhere else: the layout it consumes, how the block applies it, the macro it comes
from, per-stage defaults, and a check of its options. Options are the constructor's keyword
arguments with defaults; the grammar reads them from the signature, refuses any other name,
checks each value against its default's type, and calls ``check`` with every option filled in,
so a default is written once. ``tests/test_parts.py`` holds every registered part to this.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from archbench.layers.layout import Layout


@runtime_checkable
class TokenMixer(Protocol):
    """Moves information between positions. ``__init__(self, dim, *, heads, grid, <options>)``:
    ``grid`` is the (H, W) token grid at the spec's image size; ``layout=`` is passed too, only
    to ``Layout.ANY`` mixers."""

    layout: ClassVar[Layout]  # what forward consumes and returns (ANY: pointwise, either)
    residual: ClassVar[bool]  # True: x + ls(mixer(norm(x))); False: x = mixer(x) inline (the shift)
    reads_prefix: ClassVar[bool]  # updates class tokens (TOKENS mixers only)
    home_macro: ClassVar[str]  # the macro it comes from: where the shorthand puts it

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    # optional:
    # @staticmethod check(dim, heads, grid, *, <every option, no defaults>) -> raises ValueError
    # @staticmethod stage_options(index, n_stages, macro) -> dict of per-stage option defaults
    # tie_to(self, first): share per-stage parameters with the stage's first mixer


@runtime_checkable
class FFN(Protocol):
    """Mixes channels per position. ``__init__(self, dim, *, hidden, act, drop, <options>)``;
    ``act`` is an activation class; ``layout=`` is passed to ``Layout.ANY`` FFNs, so they pick
    Linear or 1x1 conv."""

    layout: ClassVar[Layout]

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    # optional: @staticmethod check(dim, hidden, *, <every option, no defaults>)


def options_of(part: type) -> dict[str, Any]:
    """A part's options and their defaults, from its constructor."""
    from archbench.grammar import FFN_ARGS, MIXER_ARGS, option_defaults

    return option_defaults(part, MIXER_ARGS if hasattr(part, "residual") else FFN_ARGS)
