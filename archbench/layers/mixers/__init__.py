"""Token mixers: the part of a block that moves information between positions.

The contract as types: :class:`archbench.layers.parts.TokenMixer`. In words (the block relies on it):

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
- class attribute ``home_macro``: the macro-architecture it comes from (where the shorthand
  puts it when no macro is given);
- optional ``staticmethod check(dim, heads, grid, *, <options>)`` raising ``ValueError`` with a
  message naming the bad value and what is allowed; it gets every option, the constructor's
  defaults filled in, so it declares none of its own;
- optional ``staticmethod stage_options(index, n_stages, macro)``: per-stage option defaults;
- optional ``tie_to(first)``: share per-stage parameters with the stage's first mixer.
"""
import importlib
import pkgutil

# every module here is a mixer that registers itself: adding one is adding its file
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
