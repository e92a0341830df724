"""Each token mixer and FFN against an independent reference of its semantics."""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.crossvit import CrossAttention as TimmCrossAttention
from timm.models.volo import OutlookAttention as TimmOutlook

from archbench.layers.layout import Layout
from archbench.layers.mixers.cross_attn import CrossAttention
from archbench.layers.mixers.dmixer import DMixer, IDConv
from archbench.layers.mixers.msa import Attention
from archbench.layers.mixers.outlook import OutlookAttention
from archbench.layers.mixers.shift import Shift
from archbench.layers.ffns.mlp import Mlp
from archbench.layers.ffns.msffn import MSFFN


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_msa_is_softmax_qk_v():
    dim, heads = 24, 3
    m = Attention(dim, heads=heads, grid=(4, 4)).eval()
    x = torch.randn(2, 17, dim)
    q, k, v = m.qkv(x).split(dim, dim=-1)
    d = dim // heads
    outs = []
    for h in range(heads):  # softmax(Q Kᵀ / sqrt(d)) V per head, by hand
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        a = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
        outs.append(a @ vh)
    expected = m.proj(torch.cat(outs, dim=-1))
    assert torch.allclose(m(x), expected, atol=1e-5)
    # parameters: qkv (3d·d + 3d) + proj (d·d + d)
    assert sum(p.numel() for p in m.parameters()) == 3 * dim * dim + 3 * dim + dim * dim + dim


def slow_shift(x, g):
    """The paper's definition, pixel by pixel: group 0 takes its value from the right
    neighbour (moves left), 1 from the left, 2 from below (moves up), 3 from above."""
    B, C, H, W = x.shape
    out = torch.zeros_like(x)
    for c in range(C):
        for i in range(H):
            for j in range(W):
                src = {0: (i, j + 1), 1: (i, j - 1), 2: (i + 1, j), 3: (i - 1, j)}.get(c // g if g else 4, (i, j))
                if c >= 4 * g:
                    src = (i, j)
                si, sj = src
                if 0 <= si < H and 0 <= sj < W:
                    out[:, c, i, j] = x[:, c, si, sj]
    return out


def algorithm1(x, g):
    """ShiftViT paper, Algorithm 1: zeros, then slice copies."""
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, :-1] = x[:, 0 * g:1 * g, :, 1:]
    out[:, 1 * g:2 * g, :, 1:] = x[:, 1 * g:2 * g, :, :-1]
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]
    out[:, 4 * g:] = x[:, 4 * g:]
    return out


@pytest.mark.parametrize("C,H,W,ratio", [(12, 5, 7, 1 / 12), (24, 4, 4, 1 / 12), (16, 1, 6, 1 / 16),
                                         (8, 3, 1, 1 / 4), (10, 2, 3, 1 / 6)])
def test_shift_matches_the_papers_definition(C, H, W, ratio):
    m = Shift(C, heads=1, grid=(H, W), ratio=ratio)
    x = torch.randn(2, C, H, W)
    g = C // round(1 / ratio)
    assert m.g == g
    assert torch.equal(m(x), slow_shift(x, g))
    assert torch.equal(m(x), algorithm1(x, g))
    assert sum(p.numel() for p in m.parameters()) == 0


def test_shift_check_rejects_bad_ratios():
    with pytest.raises(ValueError, match=r"ratio=0.3 must be in \(0, 1/4\]"):
        Shift.check(96, 1, (8, 8), ratio=0.3)
    with pytest.raises(ValueError, match="moves no channel"):
        Shift.check(8, 1, (8, 8), ratio=1 / 12)


@pytest.mark.parametrize("H,W,stride", [(8, 8, 2), (7, 9, 2), (6, 6, 1), (5, 5, 3)])
def test_outlook_matches_timm(H, W, stride):
    dim, heads = 24, 3
    ref = TimmOutlook(dim, heads, kernel_size=3, padding=1, stride=stride).eval()
    ours = OutlookAttention(dim, heads=heads, grid=(H, W), stride=stride).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, H, W, dim)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_cross_attention_fusion_matches_timm():
    dim, heads = 32, 4
    ref = TimmCrossAttention(dim, num_heads=heads, qkv_bias=True).eval()
    ours = CrossAttention(dim, heads=heads, grid=(1, 1), qkv_bias=True).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 1 + 49, dim)
    assert torch.allclose(ours.fuse(x), ref(x), atol=1e-5)


def test_cross_scale_attention_queries_a_pooled_map():
    dim, heads = 8, 2
    m = CrossAttention(dim, heads=heads, grid=(4, 6), scale=2).eval()
    x = torch.randn(1, 4, 6, dim)
    coarse = F.avg_pool2d(x.permute(0, 3, 1, 2), 2).flatten(2).transpose(1, 2)  # (1, 6, C)
    expected = m.attend(x.reshape(1, 24, dim), coarse).reshape(1, 4, 6, dim)
    assert torch.allclose(m(x), expected, atol=1e-6)
    # with scale 1 it is plain self-attention over the grid
    m1 = CrossAttention(dim, heads=heads, grid=(4, 6), scale=1).eval()
    t = x.reshape(1, 24, dim)
    assert torch.allclose(m1(x).reshape(1, 24, dim), m1.attend(t, t), atol=1e-6)


def test_idconv_is_a_per_sample_depthwise_conv():
    m = IDConv(16, kernel=7, groups=3).eval()
    x = torch.randn(3, 16, 9, 11)
    weight, bias = m.dynamic_params(x)
    weight, bias = weight.reshape(3, 16, 1, 7, 7), bias.reshape(3, 16)
    expected = torch.cat([F.conv2d(x[b:b + 1], weight[b], bias[b], padding=3, groups=16) for b in range(3)])
    assert torch.allclose(m(x), expected, atol=1e-5)
    # each sample's kernel is a convex mix of the G learned kernels
    assert not torch.allclose(weight[0], weight[1])


def test_dmixer_relative_position_bias_resizes_and_ties():
    a = DMixer(32, heads=2, grid=(8, 8), sr_ratio=2).eval()
    b = DMixer(32, heads=2, grid=(8, 8), sr_ratio=2).eval()
    assert a.global_unit.rel_pos.shape == (1, 2, 64, 16)
    assert a(torch.randn(2, 32, 8, 8)).shape == (2, 32, 8, 8)
    assert a(torch.randn(2, 32, 12, 10)).shape == (2, 32, 12, 10)  # bias interpolated
    b.tie_to(a)
    pair = torch.nn.ModuleList([a, b])
    separate = sum(p.numel() for p in a.parameters())
    assert sum(p.numel() for p in pair.parameters()) == 2 * separate - a.global_unit.rel_pos.numel()


@pytest.mark.parametrize("kw,msg", [(dict(dim=30, heads=2), "heads=2 must divide dim/2=15"),
                                    (dict(dim=32, heads=1, groups=1), "groups=1 must be >= 2"),
                                    (dict(dim=32, heads=1, kernel=4), "kernel=4 must be odd")])
def test_dmixer_check_messages(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DMixer.check(kw.pop("dim"), kw.pop("heads"), (8, 8), **kw)


def test_mlp_conv_and_linear_forms_agree():
    lin = Mlp(16, hidden=32, act=torch.nn.GELU, drop=0.0, layout=Layout.TOKENS)
    conv = Mlp(16, hidden=32, act=torch.nn.GELU, drop=0.0, layout=Layout.NCHW)
    conv.load_state_dict({k: v.reshape(conv.state_dict()[k].shape) for k, v in lin.state_dict().items()})
    x = torch.randn(2, 16, 5, 6)
    assert torch.allclose(conv(x), lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-5)


def test_msffn_shape_and_param_count():
    m = MSFFN(16, hidden=64, act=torch.nn.GELU, drop=0.0)
    assert m(torch.randn(2, 16, 7, 5)).shape == (2, 16, 7, 5)
    # fc1 conv + BN, dw convs k=1,3,5,7 over 16 channels each (+bias), BN, fc2 conv + BN
    dw = sum(16 * k * k + 16 for k in (1, 3, 5, 7))
    expected = 16 * 64 + 2 * 64 + dw + 2 * 64 + 64 * 16 + 2 * 16
    assert sum(p.numel() for p in m.parameters()) == expected
    with pytest.raises(ValueError, match="kernels"):
        MSFFN.check(16, 64, kernels=(2, 3))
