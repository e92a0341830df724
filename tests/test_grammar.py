"""Every mixer x every FFN x every macro builds, runs forward and backward, at square and
non-square sizes; the layout rule for class tokens holds."""
import itertools

import pytest
import torch

from archbench import build_model, make_spec
from archbench.grammar import load_parts
from archbench.layers.layout import Layout, LayoutBridge
from archbench.registry import FFNS, MACROS, MIXERS

load_parts()  # the combinations below come from the registries: a new part is tested with no list to edit
MIXER_NAMES, FFN_NAMES, MACRO_NAMES = MIXERS.names(), FFNS.names(), MACROS.names()


def test_registries_hold_the_grammar():
    # the published models' parts (the five papers) are all there
    assert {"msa", "shift", "outlook", "cross-attn", "dmixer", "none"} <= set(MIXER_NAMES)
    assert {"mlp", "msffn"} <= set(FFN_NAMES)
    assert {"isotropic", "pyramid", "two-branch", "two-stage"} <= set(MACRO_NAMES)


def _tiny(macro, mixer, ffn, img):
    return build_model(macro=macro, mixer=mixer, ffn=ffn, img_size=img, num_classes=5,
                       depths=1, dims=16, heads=2, mlp_ratio=2.0,
                       **({"options": {"encoders": 1}} if macro == "two-branch" else {}))


@pytest.mark.parametrize("img", [32, (32, 64)], ids=["32x32", "32x64"])
@pytest.mark.parametrize("macro,mixer,ffn", list(itertools.product(MACRO_NAMES, MIXER_NAMES, FFN_NAMES)))
def test_every_combination_runs(macro, mixer, ffn, img):
    torch.manual_seed(0)
    model = _tiny(macro, mixer, ffn, img)
    h, w = (img, img) if isinstance(img, int) else img
    x = torch.randn(2, 3, h, w)
    out = model(x)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    if img == 32:  # the measurement contract, once per combination
        from archbench.measure import count_macs, count_params

        split = count_params(model)
        assert sum(split.by_component.values()) == split.total == sum(p.numel() for p in model.parameters())
        mixer_params = sum(p.numel() for m in model.modules() if isinstance(m, MIXERS.get(mixer))
                           for p in m.parameters())
        assert split.by_component.get("token_mixer", 0) >= mixer_params  # every mixer weight is the mixer's
        assert split.by_component.get("ffn", 0) > 0
        macs = count_macs(model.eval(), (1, 3, h, w))
        assert macs.gmacs > 0 and macs.skipped == {}, macs.skipped  # every op that multiplies is counted


def test_layout_bridge_leaves_prefix_tokens_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 1 + 4 * 6, 8)  # (B, 1+H*W, C), grid 4x6
    double = torch.nn.Identity()
    inline = LayoutBridge(Layout.TOKENS, Layout.NCHW, num_prefix=1, inline=True)
    resid = LayoutBridge(Layout.TOKENS, Layout.NCHW, num_prefix=1, inline=False)
    # a grid part sees exactly the patch tokens, reshaped row-major
    seen = {}

    def probe(t):
        seen["t"] = t
        return t * 2

    out = inline(probe, x, (4, 6))
    assert seen["t"].shape == (2, 8, 4, 6)
    assert torch.equal(seen["t"][:, :, 1, 2], x[:, 1 + 1 * 6 + 2])
    assert torch.equal(out[:, :1], x[:, :1])  # inline: class token kept
    assert torch.equal(out[:, 1:], 2 * x[:, 1:])
    out = resid(probe, x, (4, 6))
    assert torch.equal(out[:, :1], torch.zeros_like(x[:, :1]))  # residual update of the class token: 0
    assert torch.equal(inline(double, x, (4, 6)), x)


def test_shift_block_in_a_vit_keeps_the_class_token_out_of_the_mixer():
    spec = make_spec(macro="isotropic", mixer="shift", ffn="mlp", img_size=32, dims=16, depths=1,
                     class_token=True, pool="avg")
    model = build_model(spec)
    blk = model.blocks[0]
    assert isinstance(blk.norm1, torch.nn.Identity) and blk.inline
    x = torch.randn(2, 1 + 64, 16)
    mixed = blk._mix(blk.mixer, x, (8, 8))
    assert torch.equal(mixed[:, 0], x[:, 0])


def test_stages_can_take_different_mixers():
    spec = make_spec(mixer=["shift", "shift", "msa", "dmixer"], ffn=["mlp", "msffn", "mlp", "msffn"], img_size=32)
    assert [s.mixer for s in spec.stages] == ["shift", "shift", "msa", "dmixer"]
    out = build_model(spec)(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1000)


def test_layer_scale_multiplies_both_residual_branches():
    # x + ls1 * mixer(norm1(x)), then + ls2 * ffn(norm2(x)) (the pre-norm block with layer
    # scale, timm's vision_transformer.Block): with every scale at 0 each block is the identity,
    # so the model equals itself without blocks
    import copy

    import torch
    from torch import nn

    from archbench import build_model, make_spec

    torch.manual_seed(0)
    model = build_model(make_spec(macro="isotropic", mixer="msa", ffn="mlp", dims=16, depths=2, heads=2,
                                  patch_size=4, img_size=16, layer_scale=0.5, num_classes=3)).eval()
    scales = [m for n, m in model.named_modules() if n.endswith(("ls1", "ls2"))]
    assert len(scales) == 4 and all(any(p.numel() for p in m.parameters()) for m in scales)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        for m in scales:
            for p in m.parameters():
                p.zero_()
        bare = copy.deepcopy(model)
        bare.blocks = nn.ModuleList()
        assert torch.allclose(model(x), bare(x), atol=1e-6)
        for p in scales[0].parameters():  # one scale back on: that block is no longer the identity
            p.fill_(0.5)
        assert not torch.allclose(model(x), bare(x), atol=1e-4)
