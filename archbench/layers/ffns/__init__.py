"""FFNs (channel mixers): the per-position part of a block.

Constructor contract: class attribute ``layout`` (``ANY`` for pointwise FFNs, which then get
``layout=`` in the constructor so they can pick Linear or 1x1 conv); ``__init__(self, dim, *,
hidden, act, drop, <options>)`` where ``act`` is an activation class (``nn.GELU``...);
optional ``staticmethod check(dim, hidden, *, <options>)``, given every option (defaults
filled in from the constructor). As types: :class:`archbench.layers.parts.FFN`.
"""
import importlib
import pkgutil

# every module here is an FFN that registers itself: adding one is adding its file
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
