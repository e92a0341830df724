"""Token mixers: the part of a block that moves information between positions.

The constructor contract every mixer follows (the block relies on it):

- class attribute ``layout``: the :class:`~archbench.layers.layout.Layout` its ``forward``
  consumes and returns (``TOKENS``, ``NCHW``, ``NHWC``, or ``ANY`` for pointwise mixers);
- class attribute ``residual``: ``True`` for a pre-norm residual branch
  ``x = x + ls(mixer(norm(x)))``; ``False`` for an inline mixer ``x = mixer(x)`` with no norm
  and no residual of its own (ShiftViT's shift);
- class attribute ``reads_prefix``: whether it updates prefix (class) tokens; only ``TOKENS``
  mixers can;
- ``__init__(self, dim, *, heads, grid, <options with defaults>)``: ``grid`` is the (H, W)
  token grid at the spec's image size (for position biases); ``layout`` is passed as a
  keyword too, only to ``ANY`` mixers. Options are typed keyword arguments with defaults;
  there is no ``**kwargs`` sink, so a misspelt option is refused when the spec is made;
- optional ``staticmethod check(dim, heads, grid, **options)`` raising ``ValueError`` with a
  message naming the bad value and what is allowed;
- optional ``tie_to(first)``: share per-stage parameters with the stage's first mixer.
"""
from archbench.layers.mixers import cross_attn, dmixer, identity, msa, outlook, shift  # noqa: F401
