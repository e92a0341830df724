"""A TransXNet block and a VOLO block against their formulas written out by hand, layer scale
included, from the block's own submodules (so the test checks the wiring, not the parts).

TransXNet (LMMMEng/TransXNet, ``Block.forward``)::

    x = x + dpe(x)                                   # depthwise 7x7 position encoding
    x = x + drop_path(ls1(token_mixer(norm1(x))))    # ls: depthwise 1x1 conv with bias (w·x + b)
    x = x + drop_path(ls2(mlp(norm2(x))))

VOLO (sail-sg/volo, ``Outlooker.forward``, with layer scale as timm's ViT blocks add it)::

    x = x + drop_path(γ1 · outlook_attention(norm1(x)))
    x = x + drop_path(γ2 · mlp(norm2(x)))
"""
import torch

from archbench import build_model, create_model, make_spec


def _scales(blk, gen):
    """Layer scale weights (and biases) set to random values, so a missing scale shows."""
    with torch.no_grad():
        for ls in (blk.ls1, blk.ls2):
            ls.weight.copy_(torch.rand(ls.weight.shape, generator=gen) + 0.5)
            if ls.bias is not None:
                ls.bias.copy_(torch.randn(ls.bias.shape, generator=gen))


def test_transxnet_block_is_its_formula():
    torch.manual_seed(0)
    model = create_model("transxnet_t", img_size=64, num_classes=3).eval()
    blk = model.stages[1].blocks[0]
    gen = torch.Generator().manual_seed(1)
    _scales(blk, gen)
    C = blk.ls1.weight.shape[0]
    x = torch.randn(2, C, 8, 4, generator=gen)

    def ls(m, t):  # depthwise 1x1 conv: per-channel w·t + b
        return t * m.weight.view(1, C, 1, 1) + m.bias.view(1, C, 1, 1)

    with torch.no_grad():
        y = x + blk.cpe.proj(x)
        y = y + ls(blk.ls1, blk.mixer(blk.norm1(y)))
        y = y + ls(blk.ls2, blk.ffn(blk.norm2(y)))
        assert torch.allclose(blk(x, (8, 4)), y, atol=1e-5)


def test_volo_outlooker_block_is_its_formula():
    torch.manual_seed(0)
    spec = make_spec(macro="two-stage", mixer=["outlook", "msa"], ffn="mlp", dims=[16, 32], depths=[1, 1],
                     heads=[2, 4], img_size=32, num_classes=3, layer_scale=0.5)
    model = build_model(spec).eval()
    blk = model.stages[0].blocks[0]
    gen = torch.Generator().manual_seed(1)
    _scales(blk, gen)
    x = torch.randn(2, 6, 4, 16, generator=gen)  # (B, H, W, C): VOLO's channels-last layout
    with torch.no_grad():
        y = x + blk.ls1.weight * blk.mixer(blk.norm1(x))
        y = y + blk.ls2.weight * blk.ffn(blk.norm2(y))
        assert torch.allclose(blk(x, (6, 4)), y, atol=1e-5)
