"""FFNs (channel mixers): the per-position part of a block.

Constructor contract: class attribute ``layout`` (``ANY`` for pointwise FFNs, which then get
``layout=`` in the constructor so they can pick Linear or 1x1 conv); ``__init__(self, dim, *,
hidden, act, drop, <options>)`` where ``act`` is an activation class (``nn.GELU``...);
optional ``staticmethod check(dim, hidden, **options)``.
"""
from archbench.layers.ffns import mlp, msffn  # noqa: F401
