"""MAC and parameter counting (archbench.measure): analytic unit cases on both counters,
then timm models with fused attention on against the reference table
(../shared/reference/published-models.md: timm 1.0.31, fvcore with attention counted)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from archbench.measure import MacCount, ParamCount, count_macs, count_params

BACKENDS = ["fvcore", "ptflops"]
B, H, N, M, D, DV = 2, 4, 10, 12, 8, 6  # batch, heads, query tokens, key tokens, d_qk, d_v


def no_sdpa(ops):
    return not any("scaled_dot_product" in op for op in ops)


def set_fused_attn(model, on):
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = on
    return model


# ----------------------------------------------------------------- analytic unit cases

@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_is_tokens_times_in_times_out(backend):
    macs = count_macs(nn.Linear(16, 8), (1, 10, 16), backend=backend)
    assert isinstance(macs, MacCount) and macs.backend == backend
    assert macs.total == 10 * 16 * 8  # bias additions are not multiply-adds
    assert macs.by_module[""] == macs.total and macs.skipped == {}


class Attention(nn.Module):
    """Attention on slices of x (B, h, M, D): q = first N rows, k = x, v = x[..., :dv];
    with ``kv_heads`` < h, k and v are the first kv_heads heads (grouped-query)."""

    def __init__(self, kind, dv=DV, kv_heads=None, mask=False):
        super().__init__()
        self.kind, self.dv, self.kv_heads, self.mask = kind, dv, kv_heads, mask

    def forward(self, x):
        q, k = x[:, :, :N], x[:, : self.kv_heads]
        v = k[..., : self.dv]
        if self.kind == "sdpa":
            mask = torch.zeros(N, M) if self.mask else None
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads is not None)
        if self.kv_heads is not None:
            k, v = (t.repeat_interleave(H // self.kv_heads, dim=1) for t in (k, v))
        return (q @ k.transpose(-2, -1) * D**-0.5).softmax(-1) @ v


ATTENTIONS = {  # name → module; all of them B·h·N·M·(d + dv) multiply-adds
    "sdpa": Attention("sdpa"),
    "sdpa_same_dv": Attention("sdpa", dv=D),  # d == dv: the CPU flash kernel under dispatch
    "sdpa_mask": Attention("sdpa", mask=True),
    "sdpa_gqa": Attention("sdpa", kv_heads=2),
    "explicit": Attention("explicit"),
    "explicit_same_dv": Attention("explicit", dv=D),
    "explicit_gqa": Attention("explicit", kv_heads=2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_attention_counts_qk_and_av(backend, name):
    module = ATTENTIONS[name]
    macs = count_macs(module, (B, H, M, D), backend=backend)
    assert macs.total == B * H * N * M * (D + module.dv)  # QKᵀ: B·h·N·M·d, attn·V: B·h·N·M·dv
    assert isinstance(macs.skipped, dict) and no_sdpa(macs.skipped) and no_sdpa(macs.unsupported)
    assert macs.skipped == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_multihead_attention_fast_path_is_counted(backend):
    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    # eval + no_grad would run one fused op that neither counter counts; count_macs turns it off:
    # in-projection 2·10·16·48, QKᵀ + attn·V 2·4·10·10·(4 + 4), out-projection 2·10·16·16
    assert torch.backends.mha.get_fastpath_enabled()
    macs = count_macs(SelfAttention(), (2, 10, 16), backend=backend)
    assert macs.total == 2 * 10 * 16 * 48 + 2 * 4 * 10 * 10 * 8 + 2 * 10 * 16 * 16
    assert macs.skipped == {} and torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_conv_is_outputs_times_kernel_area(backend):
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # the bias adds are not counted
    assert count_macs(conv, (1, 8, 6, 6), backend=backend).total == 8 * 6 * 6 * 3 * 3


class Copies(nn.Module):
    """No parameters, only slicing, copies and zero-fills (a ShiftViT-style shift)."""

    def forward(self, x):
        out = torch.zeros_like(x)
        out[:, :2, :, 1:] = x[:, :2, :, :-1]
        out[:, 2:4, 1:, :] = x[:, 2:4, :-1, :]
        out[:, 4:] = x[:, 4:]
        return torch.cat([out.roll(1, dims=-1), x.flip(-1)], dim=1).permute(0, 2, 3, 1).contiguous()


@pytest.mark.parametrize("backend", BACKENDS)
def test_slicing_and_copies_cost_nothing(backend):
    macs = count_macs(Copies(), (1, 8, 6, 6), backend=backend)
    assert macs.total == 0 and macs.skipped == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_uncounted_op_that_costs_is_listed_as_skipped(backend):
    class CosineSim(nn.Module):  # the vector norm is multiply-adds neither counter counts
        def forward(self, x):
            return F.normalize(x, dim=-1)

    macs = count_macs(CosineSim(), (2, 10, 16), backend=backend)
    assert macs.total == 0 and macs.skipped and set(macs.skipped) <= set(macs.unsupported)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_tensor_training_flag_and_bad_backend(backend):
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3)).train()
    model[2].eval()  # a frozen norm inside a model in training stays frozen
    assert count_macs(model, torch.randn(5, 4), backend=backend).total == 5 * 4 * 3 + 5 * 3 * 2  # eval BN: 2
    assert model.training and model[1].training and not model[2].training
    with pytest.raises(ValueError, match="unknown FLOP counter 'flopz'"):
        count_macs(model, (1, 4), backend="flopz")


def test_ptflops_leaves_no_hooks_and_raises_the_models_own_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    count_macs(model, (1, 4), backend="ptflops")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        count_macs(Broken(), (1, 4), backend="ptflops")


# ----------------------------------------------------------------- parameters

def test_params_split_by_role_shared_parameters_once():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.mixer, self.norm2, self.ffn = nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8)

    class Net(nn.Module):  # archbench's naming: stem, cls_token, pos_embed, blocks[i].mixer/ffn, head
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 4, 4)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
            self.blocks = nn.ModuleList([Block(), Block()])
            self.blocks[1].ffn.weight = self.blocks[0].mixer.weight  # shared: counted once, first owner
            self.norm = nn.LayerNorm(8)
            self.head, self.aux_head = nn.Linear(8, 10), nn.Linear(8, 10)

    net = Net()
    net.stem.requires_grad_(False)
    pc = count_params(net)
    assert isinstance(pc, ParamCount)
    assert pc.total == sum(p.numel() for p in net.parameters()) == 924
    assert pc.trainable == pc.total - (3 * 8 * 16 + 8)
    assert pc.by_component == {"embedding": 392 + 8 + 40, "token_mixer": 2 * 72, "ffn": 72 + 8,
                               "head": 2 * 90, "other": 5 * 16}
    assert sum(pc.by_component.values()) == pc.total


# ----------------------------------------------------------------- timm, fused attention on

@pytest.fixture(scope="module")
def deit_tiny():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    assert model.blocks[0].attn.fused_attn  # timm's default: F.scaled_dot_product_attention
    return model


def test_timm_deit_tiny_hits_the_reference(deit_tiny):
    fv = count_macs(deit_tiny, (1, 3, 224, 224), backend="fvcore")
    pt = count_macs(deit_tiny, (1, 3, 224, 224), backend="ptflops")
    for macs in (fv, pt):  # reference table: 1.258 GMACs
        assert macs.gmacs == pytest.approx(1.258, rel=5e-3), macs.backend
        assert isinstance(macs.skipped, dict) and macs.skipped == {} and no_sdpa(macs.unsupported)
    assert pt.gmacs == pytest.approx(fv.gmacs, rel=1e-2)
    # both attribute by module name the same way; the split sums to the total
    assert fv.by_module[""] == fv.total and pt.by_module[""] == pt.total
    assert pt.by_module["blocks.3.attn"] == fv.by_module["blocks.3.attn"] > 0
    assert sum(fv.by_part.values()) == pytest.approx(fv.total) and fv.by_part["token_mixer"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_attention_counts_what_explicit_attention_counts(deit_tiny, backend):
    fused = count_macs(deit_tiny, (1, 3, 224, 224), backend=backend).total
    unfused = count_macs(set_fused_attn(deit_tiny, False), (1, 3, 224, 224), backend=backend).total
    set_fused_attn(deit_tiny, True)
    assert fused == unfused  # the reference table's setting (TIMM_FUSED_ATTN=0) gives the same number


def test_timm_deit_tiny_params(deit_tiny):
    pc = count_params(deit_tiny)
    assert pc.total == pc.trainable == 5_717_416  # reference table
    assert sum(pc.by_component.values()) == pc.total
    # by hand: patch embed 3·16·16·192 + 192, pos_embed 197·192, cls_token 192;
    # per block attn 192·576 + 576 + 192·192 + 192, mlp 192·768 + 768 + 768·192 + 192, norms 4·192;
    # head 192·1000 + 1000; final norm 2·192
    assert pc.by_component == {"embedding": 147_648 + 37_824 + 192, "token_mixer": 12 * 148_224,
                               "ffn": 12 * 295_872, "head": 193_000, "other": 12 * 768 + 384}


@pytest.mark.parametrize("backend", BACKENDS)
def test_timm_crossvit_9_hits_the_reference(backend):
    model = timm.create_model("crossvit_9_240", pretrained=False)
    macs = count_macs(model, (1, 3, 240, 240), backend=backend)
    # reference table: 1.849 GMACs, taken with fvcore as it comes, which counts 0 for the bicubic
    # resize of the 240-pixel input to 224 (large-patch branch); counted here at 16 per output
    # element: + 3·224·224·16 = 2.4 M MACs (+0.13 %)
    assert macs.gmacs == pytest.approx(1.849, rel=5e-3)
    assert macs.by_op.get("upsample_bicubic2d", macs.by_op.get("aten::upsample_bicubic2d")) == 3 * 224 * 224 * 16
    assert macs.skipped == {} and no_sdpa(macs.unsupported)
    assert count_params(model).total == 8_553_296  # reference table


# ----------------------------------------------------------------- heavier (pytest -m slow)

@pytest.mark.slow
@pytest.mark.parametrize("name,res,gmacs,params", [
    ("volo_d1_224", 224, 6.941, 26_632_040),  # reference table
    ("deit_small_patch16_224", 224, 4.608, 22_050_664),  # reference table
])
def test_timm_reference_models_slow(name, res, gmacs, params):
    model = timm.create_model(name, pretrained=False)
    counts = {}
    for backend in BACKENDS:
        macs = count_macs(model, (1, 3, res, res), backend=backend)
        assert macs.gmacs == pytest.approx(gmacs, rel=5e-3), backend
        assert macs.skipped == {} and no_sdpa(macs.unsupported)
        unfused = count_macs(set_fused_attn(model, False), (1, 3, res, res), backend=backend)
        set_fused_attn(model, True)
        assert unfused.total == macs.total
        counts[backend] = macs.total
    assert counts["ptflops"] == pytest.approx(counts["fvcore"], rel=1e-2)
    pc = count_params(model)
    assert pc.total == params and sum(pc.by_component.values()) == params
