"""Every registered token mixer and FFN keeps the part contract (archbench/layers/parts.py):
parametrised from the registries, so a new part is held to it with no list to edit."""
import inspect

import pytest
import torch

from archbench import build_model, make_spec
from archbench.grammar import FFN_ARGS, MIXER_ARGS, home_macro, load_parts, option_defaults
from archbench.layers.layout import Layout
from archbench.layers.parts import FFN, TokenMixer
from archbench.registry import FFNS, MACROS, MIXERS

load_parts()


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_mixer_declares_its_policy(name):
    cls = MIXERS.get(name)
    for attr, kind in (("layout", Layout), ("residual", bool), ("reads_prefix", bool), ("home_macro", str)):
        assert isinstance(getattr(cls, attr, None), kind), f"{name}: class attribute {attr} ({kind.__name__})"
    assert cls.home_macro in MACROS
    assert not cls.reads_prefix or cls.layout == Layout.TOKENS  # only token mixers see class tokens
    assert home_macro(name) == cls.home_macro == make_spec(mixer=name, img_size=64).macro


@pytest.mark.parametrize("registry,reserved", [(MIXERS, MIXER_ARGS), (FFNS, FFN_ARGS)], ids=["mixer", "ffn"])
def test_checks_take_their_defaults_from_the_constructor(registry, reserved):
    for name, cls in registry.items():
        options = option_defaults(cls, reserved)
        init = inspect.signature(cls.__init__).parameters
        assert not any(p.kind == p.VAR_KEYWORD for p in init.values()), f"{name}: no **kwargs sink in __init__"
        if not hasattr(cls, "check"):
            continue
        params = inspect.signature(cls.check).parameters
        named = {n: p for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
        assert set(named) <= set(options), f"{name}.check names options its constructor lacks"
        assert all(p.default is p.empty for p in named.values()), f"{name}.check repeats defaults"


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_mixer_instance_is_a_token_mixer(name):
    model = build_model(mixer=name, img_size=64, dims=16, depths=1, heads=2, num_classes=3)
    mixers = [m for m in model.modules() if isinstance(m, MIXERS.get(name))]
    assert mixers and all(isinstance(m, TokenMixer) for m in mixers)
    ffns = [m for m in model.modules() if isinstance(m, tuple(c for _, c in FFNS.items()))]
    assert ffns and all(isinstance(f, FFN) for f in ffns)


@pytest.mark.parametrize("name", MIXERS.names())
def test_a_mixer_forward_keeps_its_layout_shape(name):
    """Applied alone in its declared layout, a mixer returns the shape it was given."""
    cls = MIXERS.get(name)
    layout = Layout.NCHW if cls.layout == Layout.ANY else cls.layout
    kw = {"layout": layout} if cls.layout == Layout.ANY else {}
    torch.manual_seed(0)
    m = cls(16, heads=2, grid=(8, 8), **kw).eval()
    x = {Layout.TOKENS: torch.randn(2, 64, 16), Layout.NCHW: torch.randn(2, 16, 8, 8),
         Layout.NHWC: torch.randn(2, 8, 8, 16)}[layout]
    assert m(x).shape == x.shape
