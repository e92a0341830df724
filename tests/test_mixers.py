"""Token mixers against independent references.

Each checked number comes from a reference named in the test: timm's modules carrying the
same weights, an explicit formula written from the paper / official code, or a slow loop
written from the definition.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.crossvit import CrossAttention as TimmCrossAttention
from timm.models.vision_transformer import Attention as TimmAttention
from timm.models.volo import OutlookAttention as TimmOutlook

from archbench.layers.layout import Layout
from archbench.layers.mixers.cross_attn import CrossAttention
from archbench.layers.mixers.dmixer import OSRA, DMixer, IDConv
from archbench.layers.mixers.identity import NoMixer
from archbench.layers.mixers.msa import Attention
from archbench.layers.mixers.outlook import OutlookAttention
from archbench.layers.mixers.shift import Shift
from archbench.registry import MIXERS


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())  # shared parameters count once


def heads_attention(q, k, v, heads):
    """softmax(Q Kᵀ / √d) V per head, written out: (B, Nq, C), (B, Nk, C) → (B, Nq, C)."""
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[..., h * d:(h + 1) * d] for t in (q, k, v))
        outs.append(torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1) @ vh)
    return torch.cat(outs, dim=-1)


# ---------------------------------------------------------------- contract (class attributes)

@pytest.mark.parametrize("name,layout,residual,reads_prefix", [
    ("msa", Layout.TOKENS, True, True), ("shift", Layout.NCHW, False, False),
    ("outlook", Layout.NHWC, True, False), ("cross-attn", Layout.NHWC, True, False),
    ("dmixer", Layout.NCHW, True, False), ("none", Layout.ANY, False, False)])
def test_registered_mixers_declare_the_contract(name, layout, residual, reads_prefix):
    cls = MIXERS.get(name)
    assert (cls.layout, cls.residual, cls.reads_prefix) == (layout, residual, reads_prefix)


# ---------------------------------------------------------------- msa

@pytest.mark.parametrize("qkv_bias", [True, False])
def test_msa_is_softmax_qk_v_and_matches_timm(qkv_bias):
    dim, heads = 24, 3
    m = Attention(dim, heads=heads, grid=(4, 4), qkv_bias=qkv_bias).eval()
    x = torch.randn(2, 17, dim)  # 1 class token + 4x4 grid
    # reference 1: the formula by hand from the module's own qkv / proj weights
    q, k, v = m.qkv(x).split(dim, dim=-1)
    assert torch.allclose(m(x), m.proj(heads_attention(q, k, v, heads)), atol=1e-5)
    # reference 2: timm's ViT Attention carrying the same weights (same names)
    ref = TimmAttention(dim, num_heads=heads, qkv_bias=qkv_bias).eval()
    ref.load_state_dict(m.state_dict(), strict=True)
    assert torch.allclose(m(x), ref(x), atol=1e-5)
    # parameters: qkv 3d·d (+3d bias) + proj d·d + d
    assert n_params(m) == 3 * dim * dim + (3 * dim if qkv_bias else 0) + dim * dim + dim


def test_msa_attention_dropout_only_in_training():
    m = Attention(16, heads=2, grid=(2, 2), attn_drop=0.5)
    x = torch.randn(2, 5, 16)
    assert torch.equal(m.eval()(x), m(x))  # eval: deterministic
    assert not torch.allclose(m.train()(x), m.eval()(x))


def test_msa_check():
    Attention.check(24, 3, (4, 4))
    with pytest.raises(ValueError, match="heads=5 does not divide dim=24"):
        Attention.check(24, 5, (4, 4))


# ---------------------------------------------------------------- shift

def slow_shift(x: torch.Tensor, g: int) -> torch.Tensor:
    """The paper's definition, one channel and pixel at a time: group 0 takes each value from
    its right neighbour (the map moves left), group 1 from the left, group 2 from below (moves
    up), group 3 from above; channels from 4g on stay; a value from outside the map is 0."""
    B, C, H, W = x.shape
    src = x.tolist()
    out = [[[[0.0] * W for _ in range(H)] for _ in range(C)] for _ in range(B)]
    offset = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
    for b in range(B):
        for c in range(C):
            di, dj = offset.get(c // g, (0, 0))
            for i in range(H):
                for j in range(W):
                    si, sj = i + di, j + dj
                    if 0 <= si < H and 0 <= sj < W:
                        out[b][c][i][j] = src[b][c][si][sj]
    return torch.tensor(out, dtype=x.dtype)


def algorithm1(x: torch.Tensor, g: int) -> torch.Tensor:
    """ShiftViT paper, Algorithm 1: a zero tensor, then slice copies."""
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, :-1] = x[:, 0 * g:1 * g, :, 1:]
    out[:, 1 * g:2 * g, :, 1:] = x[:, 1 * g:2 * g, :, :-1]
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]
    out[:, 4 * g:, :, :] = x[:, 4 * g:, :, :]
    return out


@pytest.mark.parametrize("C,H,W,n_div", [(12, 5, 7, 12), (24, 4, 4, 12), (16, 1, 6, 16), (8, 3, 1, 4),
                                         (13, 1, 1, 12), (10, 2, 3, 6), (32, 6, 2, 16)])
def test_shift_matches_the_definition_and_algorithm1(C, H, W, n_div):
    m = Shift(C, heads=1, grid=(H, W), ratio=1 / n_div)
    assert m.g == C // n_div  # γ = 1/n_div gives the official C // n_div channels per direction
    x = torch.randn(2, C, H, W)
    y = m(x)
    assert torch.equal(y, slow_shift(x, m.g))
    assert torch.equal(y, algorithm1(x, m.g))
    assert n_params(m) == 0


def test_shift_group_sizes_for_fractional_ratios():
    for C in range(1, 200):  # floor(C·γ) with the 1e-6 guard equals C // n_div exactly
        for n_div in (4, 6, 8, 12, 16, 24):
            if C >= n_div:
                assert Shift(C, heads=1, grid=(1, 1), ratio=1 / n_div).g == C // n_div
    assert Shift(100, heads=1, grid=(2, 2), ratio=0.1).g == 10


@pytest.mark.parametrize("dim,ratio,msg", [
    (96, 0.3, r"ratio=0.3 must be in \(0, 1/4\]"), (96, 0.0, r"ratio=0.0 must be in"),
    (96, -0.1, r"ratio=-0.1 must be in"),
    (8, 1 / 12, r"dim=8 moves no channel; use dim >= 12 or a ratio >= 0.125"),
    (15, 1 / 16, r"dim=15 moves no channel; use dim >= 16 or a ratio >= 0.06667")])
def test_shift_check(dim, ratio, msg):
    with pytest.raises(ValueError, match=msg):
        Shift.check(dim, 1, (8, 8), ratio=ratio)


def test_shift_check_accepts_the_edges():
    Shift.check(4, 1, (1, 1), ratio=0.25)
    Shift.check(12, 1, (8, 8), ratio=1 / 12)


def shift_layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same values as x (B, C, H, W) in the memory layouts the shift meets."""
    B, C, H, W = x.shape
    nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "storage_offset": torch.cat([x.new_zeros(3), x.flatten()])[3:].view(B, C, H, W),
        "batch_gap": torch.cat([x, x.new_zeros(B, 1, H, W)], dim=1)[:, :C],  # channels of a wider tensor
        # a token macro's grid: (B, 1 + H·W, C) without its class token, viewed as (B, C, H, W)
        "tokens_grid": torch.cat([x.new_zeros(B, 1, C), nhwc.reshape(B, H * W, C)], dim=1)[:, 1:]
        .reshape(B, H, W, C).permute(0, 3, 1, 2),
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),  # neither layout: the sliced path
    }


@pytest.fixture(params=["native", "native-ctypes", "torch-ops"])
def kernel(request, monkeypatch):
    """Every form of the shift: the C kernel (where it builds here) through its Python entry and
    through ctypes (a library built without Python's headers), and the PyTorch ops."""
    from archbench.layers import native
    from archbench.layers.mixers import shift as shift_module

    if request.param.startswith("native"):
        if shift_module._native_fn() is None:
            pytest.skip(f"the C kernel is not built here: {native.status(shift_module.KERNEL)}")
        if request.param == "native-ctypes":
            monkeypatch.setattr(shift_module, "_native_fn", shift_module._ctypes_fn)
    else:
        monkeypatch.setattr(shift_module, "_native_fn", lambda: None)
    return request.param


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty_like hands out NaN-filled memory: an element the shift forgets to write
    cannot pass for a zero by luck (fresh pages are zeros)."""
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))


@pytest.mark.parametrize("C,H,W,n_div", [(12, 5, 7, 12), (24, 4, 4, 12), (16, 1, 6, 16), (8, 3, 1, 4),
                                         (13, 1, 1, 12), (32, 6, 2, 16), (26, 3, 5, 6)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "storage_offset", "batch_gap", "tokens_grid",
                                    "transposed"])
def test_shift_in_every_layout_matches_algorithm1(C, H, W, n_div, layout, nan_empty, kernel):
    m = Shift(C, heads=1, grid=(H, W), ratio=1 / n_div)
    x = torch.randn(3, C, H, W)
    y = m(shift_layouts(x)[layout])
    assert torch.equal(y, algorithm1(x, m.g))
    if layout in ("contiguous", "storage_offset", "batch_gap"):
        assert y.is_contiguous()
    if layout in ("channels_last", "tokens_grid"):  # channels-last in, channels-last out
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert not y.is_contiguous() or H * W == 1  # (B, C, 1, 1) is both


def algorithm1_reverse(x: torch.Tensor, g: int) -> torch.Tensor:
    """The opposite shift (the gradient): Algorithm 1 with each group's direction flipped."""
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, 1:] = x[:, 0 * g:1 * g, :, :-1]
    out[:, 1 * g:2 * g, :, :-1] = x[:, 1 * g:2 * g, :, 1:]
    out[:, 2 * g:3 * g, 1:, :] = x[:, 2 * g:3 * g, :-1, :]
    out[:, 3 * g:4 * g, :-1, :] = x[:, 3 * g:4 * g, 1:, :]
    out[:, 4 * g:, :, :] = x[:, 4 * g:, :, :]
    return out


BIT_VIEWS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


@pytest.mark.parametrize("dtype", list(BIT_VIEWS))
@pytest.mark.parametrize("C,H,W,n_div", [(24, 5, 7, 12), (8, 3, 4, 4), (4, 1, 1, 4), (8, 1, 5, 4), (9, 4, 1, 4)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "storage_offset"])
def test_shift_and_its_opposite_keep_every_bit(dtype, C, H, W, n_div, layout, nan_empty, kernel):
    """Bit for bit against Algorithm 1 (and its opposite), with NaN, ±inf and -0.0 in the
    input: the border is +0.0 whatever the neighbour held, every other value keeps its bits.
    ratio 1/4 leaves no channel after the groups (the opposite shift's runs read less)."""
    from archbench.layers.mixers.shift import partial_shift

    g = C // n_div
    x = torch.randn(3, C, H, W).to(dtype)
    x.view(-1)[::5] = float("nan")
    x.view(-1)[1::7] = float("inf")
    x.view(-1)[2::7] = -float("inf")
    x.view(-1)[3::4] = -0.0
    bits = BIT_VIEWS[dtype]
    xin = shift_layouts(x.float())[layout].to(dtype) if dtype != torch.float32 else shift_layouts(x)[layout]
    if dtype != torch.float32:  # the layouts are built in fp32; put the exact bits back
        xin.copy_(x)
    for reverse, ref in ((False, algorithm1), (True, algorithm1_reverse)):
        y = partial_shift(xin, g, reverse=reverse)
        assert torch.equal(y.contiguous().view(bits), ref(x, g).view(bits)), f"reverse={reverse}"


@pytest.mark.parametrize("C,H,W,dtype", [(96, 9, 7, torch.float32), (192, 4, 5, torch.float32),
                                         (48, 3, 6, torch.float64), (96, 1, 6, torch.float32),
                                         (96, 9, 7, torch.float16), (192, 4, 5, torch.bfloat16)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens_grid"])
def test_shift_at_shiftvit_widths_matches_algorithm1(C, H, W, dtype, layout, nan_empty, kernel):
    """γ = 1/12 of C = 96 or 192 in fp32 (and 48 in fp64): each group's run is a multiple of
    32 bytes, the case the channels-last loop moves in whole 32-byte steps; in fp16/bf16 a
    multiple of 16, moved in whole 16-byte steps."""
    from archbench.layers.mixers.shift import partial_shift

    g = C // 12
    x = torch.randn(2, C, H, W, dtype=dtype)
    xin = shift_layouts(x)[layout]
    assert torch.equal(partial_shift(xin, g), algorithm1(x, g))
    assert torch.equal(partial_shift(xin, g, reverse=True), algorithm1_reverse(x, g))


@pytest.mark.parametrize("shape", [(2, 12, 0, 3), (2, 12, 3, 0), (0, 12, 3, 3)])
def test_shift_of_an_empty_tensor_is_empty(shape, kernel):
    """A map with no pixels (or a batch with no images): an empty result of the same shape, both
    ways (the C kernel once divided by the map's size here and killed the process)."""
    from archbench.layers.mixers.shift import partial_shift

    x = torch.randn(shape)
    for reverse in (False, True):
        assert partial_shift(x, 1, reverse=reverse).shape == algorithm1(x, 1).shape


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_shift_shared_among_threads_matches_algorithm1(threads, nan_empty, kernel):
    """Over a megabyte a call, the C kernel shares the images among PyTorch's threads: every
    image, the uneven split included (5 images), must come out as Algorithm 1 says, both ways,
    in both of its layouts."""
    from archbench.layers.mixers.shift import partial_shift

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(5, 48, 40, 40)  # 1.5 MB
        assert x.numel() * x.element_size() >= 1 << 20
        assert torch.equal(partial_shift(x, 4), algorithm1(x, 4))
        assert torch.equal(partial_shift(x, 4, reverse=True), algorithm1_reverse(x, 4))
        x = torch.randn(6, 49, 40, 40)[::2]  # images apart in memory (every other one of a batch)
        assert torch.equal(partial_shift(x, 4), algorithm1(x, 4))
        x = torch.randn(5, 48, 40, 40)
        for layout in ("channels_last", "tokens_grid"):  # the channels-last loop, images apart in the second
            xin = shift_layouts(x)[layout]
            assert torch.equal(partial_shift(xin, 4), algorithm1(x, 4)), layout
            assert torch.equal(partial_shift(xin, 4, reverse=True), algorithm1_reverse(x, 4)), layout
    finally:
        torch.set_num_threads(before)


def test_shift_gradient_passes_gradcheck(kernel):
    m = Shift(8, heads=1, grid=(3, 4), ratio=1 / 4)  # every direction, 2 channels each
    for x in (torch.randn(2, 8, 3, 4, dtype=torch.float64),
              torch.randn(2, 8, 3, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
              torch.randn(2, 9, 3, 4, dtype=torch.float64)[:, :8]):
        x.requires_grad_(True)
        assert torch.autograd.gradcheck(m, (x,))
        assert torch.autograd.gradgradcheck(m, (x,))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "tokens_grid", "transposed"])
def test_shift_gradient_is_autograd_through_algorithm1(layout, nan_empty, kernel):
    m = Shift(24, heads=1, grid=(5, 6))  # γ = 1/12: 2 channels per direction, 16 stay
    x = torch.randn(2, 24, 5, 6)
    grad_out = torch.randn(2, 24, 5, 6)
    ref = x.clone().requires_grad_(True)
    algorithm1(ref, m.g).backward(grad_out)
    ours = shift_layouts(x)[layout].detach().requires_grad_(True)
    y = m(ours)
    assert y.grad_fn is not None and "Shift" in type(y.grad_fn).__name__  # the custom backward, not slices
    y.backward(shift_layouts(grad_out)[layout])
    assert torch.equal(ours.grad, ref.grad)
    assert torch.equal(torch.autograd.grad(m(ours), ours, grad_out)[0], ref.grad)  # grad in another layout


def test_shift_under_torch_compile():
    m = Shift(24, heads=1, grid=(4, 5))
    x = torch.randn(2, 24, 4, 5, requires_grad=True)
    y = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    ref = x.detach().clone().requires_grad_(True)
    assert torch.equal(y, algorithm1(ref, m.g))
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    algorithm1(ref, m.g).backward(grad_out)
    assert torch.equal(x.grad, ref.grad)


def test_shift_honours_lazy_negation_and_conjugation(kernel):
    """A tensor whose values are not its bytes (PyTorch's lazy neg/conj bits, as ``x.conj()``
    and its ``.imag`` carry) gives the values it stands for, not its bytes shifted."""
    m = Shift(12, heads=1, grid=(3, 4))
    x = torch.randn(2, 12, 3, 4)
    neg = torch._neg_view(x)  # contiguous and dense: the layout the C kernel takes
    assert neg.is_neg() and neg.is_contiguous()
    assert torch.equal(m(neg), algorithm1(-x, m.g))
    z = torch.randn(2, 12, 3, 4, dtype=torch.complex64)
    assert z.conj().is_conj()
    assert torch.equal(m(z.conj()), algorithm1(z.conj().resolve_conj(), m.g))
    assert torch.equal(m(z), algorithm1(z, m.g))  # complex values are moved whole


def test_shift_under_vmap_and_per_sample_gradients(kernel):
    """torch.func: the shift vmapped over a batch of batches, and per-sample gradients
    (vmap of grad through the custom backward), against a loop of plain calls."""
    m = Shift(24, heads=1, grid=(3, 4))
    xs = torch.randn(5, 2, 24, 3, 4)
    assert torch.equal(torch.func.vmap(m)(xs), torch.stack([algorithm1(x, m.g) for x in xs]))
    w = torch.randn(24)

    def loss(w, x):
        return (m(x * w[:, None, None]) * torch.arange(24.0)[:, None, None]).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs)
    wr = w.clone().requires_grad_(True)
    looped = torch.stack([torch.autograd.grad(loss(wr, x), wr)[0] for x in xs])
    assert torch.allclose(per_sample, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["fvcore", "ptflops"])
def test_shift_counts_zero_macs_and_skips_nothing(backend):
    from archbench.measure import count_macs

    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 24, 5, 6).contiguous(memory_format=fmt)
        macs = count_macs(Shift(24, heads=1, grid=(5, 6)), x, backend=backend)
        assert macs.total == 0 and macs.skipped == {}


# ---------------------------------------------------------------- outlook

@pytest.mark.parametrize("H,W,kernel,padding,stride", [(8, 8, 3, 1, 2), (7, 9, 3, 1, 2), (6, 6, 3, 1, 1),
                                                       (5, 5, 3, 1, 3), (1, 1, 3, 1, 2), (9, 7, 5, 2, 2)])
def test_outlook_matches_timm(H, W, kernel, padding, stride):
    dim, heads = 24, 3
    ref = TimmOutlook(dim, heads, kernel_size=kernel, padding=padding, stride=stride).eval()
    ours = OutlookAttention(dim, heads=heads, grid=(H, W), kernel=kernel, padding=padding, stride=stride).eval()
    OutlookAttention.check(dim, heads, (H, W), kernel=kernel, padding=padding, stride=stride)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, H, W, dim)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_outlook_param_count(qkv_bias):
    d, h, K = 24, 3, 3
    m = OutlookAttention(d, heads=h, grid=(4, 4), kernel=K, qkv_bias=qkv_bias)
    # v: d·d (+d); attn: d → K⁴·h with bias; proj: d·d + d
    assert n_params(m) == d * d + (d if qkv_bias else 0) + (d + 1) * K ** 4 * h + d * d + d


@pytest.mark.parametrize("kw,msg", [(dict(heads=5), "heads=5 does not divide dim=24"),
                                    (dict(kernel=4), "kernel=4 must be odd"),
                                    (dict(kernel=0), "kernel=0 must be odd and >= 1"),
                                    (dict(stride=0), "stride=0 must be >= 1")])
def test_outlook_check(kw, msg):
    with pytest.raises(ValueError, match=msg):
        from archbench.layers.parts import options_of  # the check gets every option, as the grammar gives them

        OutlookAttention.check(24, kw.pop("heads", 3), (8, 8), **{**options_of(OutlookAttention), **kw})


# ---------------------------------------------------------------- cross-attn

@pytest.mark.parametrize("qkv_bias", [True, False])
def test_cross_attention_fuse_is_timm_crossvit(qkv_bias):
    dim, heads = 32, 4
    ref = TimmCrossAttention(dim, num_heads=heads, qkv_bias=qkv_bias).eval()
    ours = CrossAttention(dim, heads=heads, grid=(7, 7), qkv_bias=qkv_bias).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 1 + 49, dim)
    out = ours.fuse(x)
    assert out.shape == (3, 1, dim)
    assert torch.allclose(out, ref(x), atol=1e-5)
    # parameters: wq, wk, wv d·d (+d each), proj d·d + d
    assert n_params(ours) == 3 * (dim * dim + (dim if qkv_bias else 0)) + dim * dim + dim


def test_cross_attention_attend_is_multihead_attention():
    dim, heads = 16, 2
    m = CrossAttention(dim, heads=heads, grid=(2, 2)).eval()
    q_src, kv_src = torch.randn(2, 5, dim), torch.randn(2, 9, dim)
    expected = m.proj(heads_attention(m.wq(q_src), m.wk(kv_src), m.wv(kv_src), heads))  # by hand
    assert torch.allclose(m.attend(q_src, kv_src), expected, atol=1e-5)


def test_cross_scale_forward_by_hand():
    """Every position queries the map average-pooled by ``scale`` (ceil mode: the last row /
    column windows are partial and average only what they cover)."""
    dim, heads, s = 8, 2, 2
    m = CrossAttention(dim, heads=heads, grid=(5, 3), scale=s).eval()
    x = torch.randn(2, 5, 3, dim)  # odd sides: partial windows on both
    coarse = torch.stack([torch.stack([x[:, i:i + s, j:j + s].mean(dim=(1, 2)) for j in range(0, 3, s)], 1)
                          for i in range(0, 5, s)], 1)  # (B, 3, 2, C), mean over each window by hand
    kv = coarse.reshape(2, 6, dim)
    q = x.reshape(2, 15, dim)
    expected = m.proj(heads_attention(m.wq(q), m.wk(kv), m.wv(kv), heads)).reshape(2, 5, 3, dim)
    assert torch.allclose(m(x), expected, atol=1e-5)


@pytest.mark.parametrize("H,W,scale", [(1, 1, 2), (4, 6, 2), (7, 5, 3), (3, 3, 1)])
def test_cross_scale_forward_shapes(H, W, scale):
    m = CrossAttention(16, heads=4, grid=(H, W), scale=scale).eval()
    assert m(torch.randn(2, H, W, 16)).shape == (2, H, W, 16)


def test_cross_scale_with_scale_one_is_self_attention():
    m = CrossAttention(8, heads=2, grid=(3, 4), scale=1).eval()
    x = torch.randn(1, 3, 4, 8)
    t = x.reshape(1, 12, 8)
    assert torch.allclose(m(x).reshape(1, 12, 8), m.attend(t, t), atol=1e-6)


@pytest.mark.parametrize("kw,msg", [(dict(heads=3), "heads=3 does not divide dim=16"),
                                    (dict(scale=0), "scale=0 must be >= 1")])
def test_cross_attention_check(kw, msg):
    with pytest.raises(ValueError, match=msg):
        from archbench.layers.parts import options_of

        CrossAttention.check(16, kw.pop("heads", 2), (4, 4), **{**options_of(CrossAttention), **kw})


# ---------------------------------------------------------------- dmixer: IDConv

@pytest.mark.parametrize("C,G,K,H,W", [(16, 3, 7, 9, 11), (8, 2, 3, 5, 5), (12, 4, 7, 3, 4)])
def test_idconv_is_a_per_sample_depthwise_conv(C, G, K, H, W):
    """Reference: per sample, its own kernels mixed from the G learned ones (softmax over G of
    proj(pool_K(x))), its own bias (softmax over G of proj(mean x)), then one depthwise
    F.conv2d on that sample alone — TransXNet's DynamicConv2d written out sample by sample."""
    m = IDConv(C, kernel=K, groups=G).eval()  # eval: BN uses running stats, samples independent
    x = torch.randn(3, C, H, W)
    outs = []
    for b in range(3):
        xb = x[b:b + 1]
        a = torch.softmax(m.proj(F.adaptive_avg_pool2d(xb, K)).reshape(G, C, K, K), dim=0)
        weight = (a * m.weight).sum(0).reshape(C, 1, K, K)
        a = torch.softmax(m.proj(xb.mean(dim=(2, 3), keepdim=True)).reshape(G, C), dim=0)
        bias = (a * m.bias).sum(0)
        outs.append(F.conv2d(xb, weight, bias, padding=K // 2, groups=C))
    assert torch.allclose(m(x), torch.cat(outs), atol=1e-5)


def test_idconv_param_count():
    C, G, K = 32, 2, 7
    m = IDConv(C, kernel=K, groups=G)
    r = C // 4  # official reduction_ratio 4: conv (no bias) + BN, then conv with bias to G·C
    assert n_params(m) == G * C * K * K + G * C + C * r + 2 * r + r * G * C + G * C


# ---------------------------------------------------------------- dmixer: OSRA

def official_osra(m: OSRA, x: torch.Tensor) -> torch.Tensor:
    """TransXNet's Attention.forward (OSRA), line by line: explicit (q @ k)·scale + bias."""
    B, C, H, W = x.shape
    h = m.heads
    q = m.q(x).reshape(B, h, C // h, -1).transpose(-1, -2)
    kv = m.sr(x)
    kv = m.local_conv(kv) + kv
    k, v = torch.chunk(m.kv(kv), chunks=2, dim=1)
    k = k.reshape(B, h, C // h, -1)
    v = v.reshape(B, h, C // h, -1).transpose(-1, -2)
    attn = (q @ k) * (C // h) ** -0.5
    rel = m.rel_pos
    if attn.shape[2:] != rel.shape[2:]:
        rel = F.interpolate(rel, size=attn.shape[2:], mode="bicubic", align_corners=False)
    attn = torch.softmax(attn + rel, dim=-1)
    return (attn @ v).transpose(-1, -2).reshape(B, C, H, W)


@pytest.mark.parametrize("sr,grid,run", [(1, (6, 6), (6, 6)), (2, (8, 8), (8, 8)), (2, (7, 7), (7, 7)),
                                         (4, (8, 8), (12, 10)), (2, (8, 8), (5, 9))])
def test_osra_matches_the_official_forward(sr, grid, run):
    m = OSRA(16, heads=2, grid=grid, sr_ratio=sr, rel_pos=True).eval()
    H, W = grid
    assert m.rel_pos.shape == (1, 2, H * W, math.ceil(H / sr) * math.ceil(W / sr))
    with torch.no_grad():
        m.rel_pos.normal_()  # zeros at init; random so the bias (and its resizing) matters
    x = torch.randn(2, 16, *run)
    assert torch.allclose(m(x), official_osra(m, x), atol=1e-5)


# ---------------------------------------------------------------- dmixer: the whole mixer

@pytest.mark.parametrize("grid,run", [((8, 8), (8, 8)), ((7, 7), (7, 7)), ((8, 8), (12, 10)), ((4, 4), (1, 1))])
def test_dmixer_shapes(grid, run):
    m = DMixer(32, heads=2, grid=grid, sr_ratio=2).eval()
    assert m(torch.randn(2, 32, *run)).shape == (2, 32, *run)


def test_dmixer_gradient_reaches_every_parameter():
    m = DMixer(32, heads=2, grid=(8, 8), sr_ratio=2).train()
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    m(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_dmixer_rel_pos_is_interpolated_for_another_grid():
    m = DMixer(16, heads=1, grid=(8, 8), sr_ratio=2).eval()
    assert m.global_unit.rel_pos.shape == (1, 1, 64, 16)
    with torch.no_grad():
        m.global_unit.rel_pos.normal_()
    x = torch.randn(1, 16, 6, 10)  # attention 60 x 15 ≠ built 64 x 16
    y = m(x)
    assert y.shape == (1, 16, 6, 10) and torch.isfinite(y).all()
    # the bias is used resized (bicubic, align_corners=False), as the official code does
    x2 = x[:, 8:]
    assert torch.allclose(m.global_unit(x2), official_osra(m.global_unit, x2), atol=1e-5)


def test_dmixer_tie_to_shares_one_rel_pos():
    a = DMixer(32, heads=2, grid=(8, 8), sr_ratio=2)
    b = DMixer(32, heads=2, grid=(8, 8), sr_ratio=2)
    b.tie_to(a)
    assert b.global_unit.rel_pos is a.global_unit.rel_pos
    pair = torch.nn.ModuleList([a, b])
    assert n_params(pair) == 2 * n_params(a) - a.global_unit.rel_pos.numel()  # counted once
    x = torch.randn(2, 32, 8, 8)
    (a(x).sum() + b(x).sum()).backward()  # both blocks' gradients land on the one tensor
    assert a.global_unit.rel_pos.grad is not None


def test_dmixer_without_rel_pos():
    m = DMixer(32, heads=2, grid=(8, 8), rel_pos=False).eval()
    assert m.global_unit.rel_pos is None
    assert m(torch.randn(1, 32, 8, 8)).shape == (1, 32, 8, 8)
    m.tie_to(DMixer(32, heads=2, grid=(8, 8), rel_pos=False))  # nothing to share: a no-op


@pytest.mark.parametrize("dim,heads,groups,K,sr,red,grid", [(48, 1, 2, 7, 8, 8, (56, 56)), (64, 2, 3, 7, 2, 8, (14, 14)),
                                                            (32, 2, 2, 3, 1, 4, (7, 7))])
def test_dmixer_param_count(dim, heads, groups, K, sr, red, grid):
    m = DMixer(dim, heads=heads, grid=grid, kernel=K, groups=groups, sr_ratio=sr, reduction=red)
    c, r, G = dim // 2, dim // 8, groups  # IDConv squeezes its half by 4
    idconv = G * c * K * K + G * c + c * r + 2 * r + r * G * c + G * c
    k = sr + 3  # OSRA: q, kv (with bias); sr = dw k×k (no bias) + BN, dw 1x1 (no bias) + BN
    sr_params = (c * k * k + 2 * c + c + 2 * c) if sr > 1 else 0
    n, n_red = grid[0] * grid[1], math.ceil(grid[0] / sr) * math.ceil(grid[1] / sr)
    osra = c * c + c + 2 * c * c + 2 * c + sr_params + 9 * c + c + heads * n * n_red
    inner = max(16, dim // red)  # STE: dw3x3 (+b), BN, 1x1 (+b), BN, 1x1 (+b), BN
    ste = 9 * dim + dim + 2 * dim + dim * inner + inner + 2 * inner + inner * dim + dim + 2 * dim
    assert n_params(m) == idconv + osra + ste


@pytest.mark.parametrize("dim,heads,kw,msg", [
    (30, 2, {}, "heads=2 must divide dim/2=15"), (31, 1, {}, "dim=31 must be even"),
    (32, 1, dict(groups=1), "groups=1 must be >= 2"), (32, 1, dict(kernel=4), "kernel=4 must be odd"),
    (32, 1, dict(sr_ratio=0), "sr_ratio=0 .* must be >= 1")])
def test_dmixer_check(dim, heads, kw, msg):
    with pytest.raises(ValueError, match=msg):
        from archbench.layers.parts import options_of

        DMixer.check(dim, heads, (8, 8), **{**options_of(DMixer), **kw})


# ---------------------------------------------------------------- none

@pytest.mark.parametrize("layout,shape", [(Layout.TOKENS, (2, 5, 8)), (Layout.NCHW, (2, 8, 3, 4)),
                                          (Layout.NHWC, (2, 3, 4, 8))])
def test_none_is_identity(layout, shape):
    m = NoMixer(8, heads=1, grid=(3, 4), layout=layout)
    x = torch.randn(shape)
    assert torch.equal(m(x), x) and n_params(m) == 0


def test_shift_default_ratio_is_the_papers():
    # ShiftViT (Wang et al. 2022) shifts 1/3 of the channels, γ = 1/12 per direction (official
    # n_div = 12); written once, in the constructor (the check gets it from there)
    import inspect

    from archbench.models import create_model

    assert inspect.signature(Shift).parameters["ratio"].default == 1 / 12
    assert inspect.signature(Shift.check).parameters["ratio"].default is inspect.Parameter.empty
    model = create_model("shiftvit_tiny_light", img_size=32, depths=1)
    ratios = {m.ratio for m in model.modules() if isinstance(m, Shift)}
    assert ratios == {1 / 12}
