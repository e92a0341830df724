"""FLOP and parameter counting: analytic unit cases, and timm's fused-attention models
against the reference table (../shared/reference/published-models.md)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from archbench import create_model
from archbench.layers.mixers.shift import Shift
from archbench.measure import count_macs, count_params

BACKENDS = ["fvcore", "ptflops"]


class SDPA(nn.Module):
    def forward(self, x):  # x: (B, h, N, d) used as q, k and v
        return F.scaled_dot_product_attention(x, x, x)


class Explicit(nn.Module):
    def forward(self, x):
        a = (x @ x.transpose(-1, -2)).softmax(-1)
        return a @ x


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_is_in_times_out_per_token(backend):
    # 10 tokens x 16 in x 8 out multiply-adds
    assert count_macs(nn.Linear(16, 8), (1, 10, 16), backend=backend).total == 10 * 16 * 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("module", [SDPA(), Explicit()], ids=["sdpa", "explicit"])
def test_attention_counts_qk_and_av(backend, module):
    B, h, N, d = 2, 3, 10, 8  # QKᵀ: B·h·N·N·d, attn·V: B·h·N·N·d
    macs = count_macs(module, (B, h, N, d), backend=backend)
    assert macs.total == B * h * N * N * (d + d)
    assert not any("scaled_dot_product" in op for op in macs.skipped)


@pytest.mark.parametrize("backend", BACKENDS)
def test_depthwise_conv_is_outputs_times_kernel_area(backend):
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_macs(conv, (1, 8, 6, 6), backend=backend).total == 8 * 6 * 6 * 9


@pytest.mark.parametrize("backend", BACKENDS)
def test_shift_costs_nothing(backend):
    assert count_macs(Shift(24, heads=1, grid=(8, 8)), (1, 24, 8, 8), backend=backend).total == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_timm_deit_tiny_with_fused_attention_hits_the_reference(backend):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)  # fused attention on
    assert model.blocks[0].attn.fused_attn
    macs = count_macs(model, (1, 3, 224, 224), backend=backend)
    # reference table: 1.258 GMACs (fvcore, attention counted); ptflops counts no norms
    assert macs.gmacs == pytest.approx(1.258, rel=5e-3)


def test_counters_agree_on_our_models():
    for name in ("deit_tiny", "crossvit_9", "shiftvit_tiny_light", "transxnet_t"):
        model = create_model(name)
        res = (1, *model.pretrained_cfg["input_size"])
        a, b = count_macs(model, res).gmacs, count_macs(model, res, backend="ptflops").gmacs
        assert a == pytest.approx(b, rel=1e-2), name


def test_params_split_by_component_sums_to_total():
    model = create_model("transxnet_t")
    pc = count_params(model)
    assert pc.total == 12_834_808 == pc.trainable  # reference table
    assert sum(pc.by_component.values()) == pc.total
    assert pc.by_component["token_mixer"] > 0 and pc.by_component["ffn"] > 0
    assert pc.by_component["head"] == 448 * 1000 + 1000


def test_count_macs_restores_training_mode_and_refuses_unknown_backend():
    model = nn.Linear(4, 4).train()
    count_macs(model, (1, 4))
    assert model.training
    with pytest.raises(ValueError, match="unknown FLOP counter 'flopz'"):
        count_macs(model, (1, 4), backend="flopz")
