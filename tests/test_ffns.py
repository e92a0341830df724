"""FFNs, norms and activations against independent references.

Each checked number comes from a reference named in the test: the same layer in another
form (Linear vs 1x1 conv, LayerNorm vs LayerNorm2d), the official TransXNet ``Mlp`` written
out step by step, or an analytic parameter count.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archbench.layers.ffns.mlp import Mlp
from archbench.layers.ffns.msffn import MSFFN
from archbench.layers.layout import Layout
from archbench.layers.norms import NORM_LAYOUTS, check_norm
from archbench.registry import ACTS, FFNS, NORMS


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


SHAPES = {Layout.TOKENS: (2, 7, 16), Layout.NHWC: (2, 3, 5, 16), Layout.NCHW: (2, 16, 3, 5)}


def test_registered_ffns_declare_their_layout():
    assert FFNS.get("mlp").layout == Layout.ANY
    assert FFNS.get("msffn").layout == Layout.NCHW


# ---------------------------------------------------------------- mlp

@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_shapes_and_param_count(layout, bias):
    d, h = 16, 40
    m = Mlp(d, hidden=h, act=nn.GELU, drop=0.0, layout=layout, bias=bias)
    assert isinstance(m.fc1, nn.Conv2d if layout == Layout.NCHW else nn.Linear)
    assert m(torch.randn(SHAPES[layout])).shape == SHAPES[layout]
    assert n_params(m) == 2 * d * h + ((h + d) if bias else 0)  # fc1 d·h (+h), fc2 h·d (+d)


def test_mlp_conv_form_equals_linear_form():
    """Reference: timm-style Linear MLP over (B, H, W, C); the NCHW form (ShiftViT's 1x1 convs)
    with the same weights must give the same map."""
    lin = Mlp(16, hidden=32, act=nn.GELU, drop=0.0, layout=Layout.NHWC)
    conv = Mlp(16, hidden=32, act=nn.GELU, drop=0.0, layout=Layout.NCHW)
    shapes = {k: v.shape for k, v in conv.state_dict().items()}
    conv.load_state_dict({k: v.reshape(shapes[k]) for k, v in lin.state_dict().items()}, strict=True)
    x = torch.randn(2, 16, 5, 6)
    assert torch.allclose(conv(x), lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), atol=1e-5)
    # the tokens form is the same Linear layers over (B, N, C)
    tok = Mlp(16, hidden=32, act=nn.GELU, drop=0.0, layout=Layout.TOKENS)
    tok.load_state_dict(lin.state_dict(), strict=True)
    t = torch.randn(2, 30, 16)
    assert torch.allclose(tok(t), lin(t.reshape(2, 5, 6, 16)).reshape(2, 30, 16), atol=1e-6)


def test_mlp_is_fc1_act_fc2():
    m = Mlp(8, hidden=12, act=nn.ReLU, drop=0.0, layout=Layout.TOKENS)
    x = torch.randn(3, 4, 8)
    expected = F.relu(x @ m.fc1.weight.T + m.fc1.bias) @ m.fc2.weight.T + m.fc2.bias  # by hand
    assert torch.allclose(m(x), expected, atol=1e-6)


# ---------------------------------------------------------------- msffn

def official_msffn(m: MSFFN, x: torch.Tensor) -> torch.Tensor:
    """TransXNet's Mlp.forward (MS-FFN) step by step, the multi-scale depthwise conv written
    with F.conv2d per channel split (first split takes the remainder)."""
    x = m.fc1(x)
    n = len(m.dwconv.proj)
    C = x.shape[1]
    sizes = [C - C // n * (n - 1)] + [C // n] * (n - 1)
    parts = []
    for conv, t in zip(m.dwconv.proj, torch.split(x, sizes, dim=1)):
        k = conv.weight.shape[-1]
        parts.append(F.conv2d(t, conv.weight, conv.bias, padding=k // 2, groups=t.shape[1]))
    x = torch.cat(parts, dim=1) + x
    x = m.norm(m.act(x))
    return m.fc2(x)


@pytest.mark.parametrize("dim,hidden,kernels,hw", [(16, 64, (1, 3, 5, 7), (7, 5)), (12, 30, (1, 3, 5, 7), (4, 4)),
                                                   (8, 10, (3, 5, 7), (1, 1)), (8, 9, (3,), (6, 3))])
def test_msffn_matches_the_official_forward(dim, hidden, kernels, hw):
    m = MSFFN(dim, hidden=hidden, act=nn.GELU, drop=0.0, kernels=kernels).eval()
    for bn in m.modules():  # non-trivial BN statistics so every BN matters
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, dim, *hw)
    y = m(x)
    assert y.shape == x.shape
    assert torch.allclose(y, official_msffn(m, x), atol=1e-5)


@pytest.mark.parametrize("dim,hidden,kernels", [(16, 64, (1, 3, 5, 7)), (12, 30, (1, 3, 5, 7)), (8, 10, (3, 5, 7))])
def test_msffn_param_count(dim, hidden, kernels):
    m = MSFFN(dim, hidden=hidden, act=nn.GELU, drop=0.0, kernels=kernels)
    n = len(kernels)
    split = [hidden - hidden // n * (n - 1)] + [hidden // n] * (n - 1)
    assert [c.in_channels for c in m.dwconv.proj] == split
    dw = sum(c * k * k + c for c, k in zip(split, kernels))  # depthwise with bias
    # fc1 conv (no bias) + BN; dw; BN; fc2 conv (no bias) + BN
    assert n_params(m) == dim * hidden + 2 * hidden + dw + 2 * hidden + hidden * dim + 2 * dim


@pytest.mark.parametrize("hidden,kernels,msg", [(64, (2, 3), r"kernels=\(2, 3\) must be odd"),
                                                (64, (0,), r"kernels=\(0,\) must be odd"),
                                                (3, (1, 3, 5, 7), "hidden width 3 is narrower than its 4")])
def test_msffn_check(hidden, kernels, msg):
    with pytest.raises(ValueError, match=msg):
        MSFFN.check(16, hidden, kernels=kernels)


def test_msffn_check_accepts_the_edge():
    MSFFN.check(16, 4, kernels=(1, 3, 5, 7))


# ---------------------------------------------------------------- norms

@pytest.mark.parametrize("layout", list(SHAPES))
def test_layernorm_normalises_channels_in_every_layout(layout):
    norm = NORMS.get("layernorm")(16, layout=layout, eps=1e-6)
    x = torch.randn(SHAPES[layout])
    y = norm(x)
    channels = 1 if layout == Layout.NCHW else -1
    # reference: zero mean, unit variance over the channel axis at each position
    assert torch.allclose(y.mean(channels), torch.zeros(()), atol=1e-5)
    assert torch.allclose(y.var(channels, unbiased=False), torch.ones(()), atol=1e-3)


@pytest.mark.parametrize("layout", [Layout.TOKENS, Layout.NHWC])
def test_batchnorm_over_channels_last_equals_batchnorm2d(layout):
    ours = NORMS.get("batchnorm")(16, layout=layout, eps=1e-5)
    ref = nn.BatchNorm2d(16, eps=1e-5)
    x = torch.randn(SHAPES[layout])
    x4 = x.reshape(2, 1, 7, 16) if layout == Layout.TOKENS else x
    expected = ref(x4.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(x.shape)  # train-mode stats
    assert torch.allclose(ours(x), expected, atol=1e-5)
    assert n_params(ours) == n_params(ref)


def test_batchnorm_and_groupnorm_for_nchw():
    assert isinstance(NORMS.get("batchnorm")(16, layout=Layout.NCHW, eps=1e-5), nn.BatchNorm2d)
    gn = NORMS.get("groupnorm")(16, layout=Layout.NCHW, eps=1e-5)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 1 and gn.eps == 1e-5
    x = torch.randn(2, 16, 3, 5)
    assert torch.allclose(gn(x), F.group_norm(x, 1, eps=1e-5), atol=1e-6)  # over (C, H, W)


@pytest.mark.parametrize("layout", [Layout.TOKENS, Layout.NHWC])
def test_groupnorm_is_refused_outside_nchw(layout):
    with pytest.raises(ValueError, match=f"'groupnorm' needs the nchw layout .*not {layout.value}.*layernorm"):
        check_norm("groupnorm", layout)
    with pytest.raises(ValueError, match="groupnorm"):
        NORMS.get("groupnorm")(16, layout=layout, eps=1e-5)


def test_norm_layouts_are_declared_for_every_norm():
    assert set(NORM_LAYOUTS) == set(NORMS.names()) == {"layernorm", "groupnorm", "batchnorm", "identity"}
    for name in NORMS.names():
        for layout in NORM_LAYOUTS[name]:
            check_norm(name, layout)
            x = torch.randn(SHAPES[layout])
            assert NORMS.get(name)(16, layout=layout, eps=1e-5)(x).shape == x.shape
    with pytest.raises(ValueError, match="unknown norm 'layrnorm'"):
        check_norm("layrnorm", Layout.TOKENS)


def test_activations_are_classes():
    assert {n: ACTS.get(n) for n in ACTS.names()} == {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU,
                                                     "identity": nn.Identity}
