"""timm's model API on every macro-architecture (issue #15): ``forward_intermediates``,
``prune_intermediate_layers``, ``feature_info``, ``set_grad_checkpointing``, ``group_matcher``,
``pretrained_cfg``.

References: timm 1.0.31's own models (ViT, CrossViT, VOLO carrying the same weights) for the
semantics of indices, norm, stop_early and output formats; the tensors themselves for
channels and reductions (input size / feature size); the spec for stage widths.
"""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config, resolve_model_data_config
from timm.models import FeatureHookNet, group_parameters
from timm.models._features import FeatureGetterNet
from torch import nn

from archbench import create_model, make_spec
from archbench.builder import build_model
from archbench.errors import UsageError
from archbench.grammar import load_parts
from archbench.layers.layout import Layout
from archbench.registry import MACROS

load_parts()
MACRO_NAMES = MACROS.names()  # a new macro is tested without listing it here
IMG = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and immune to other jobs on the shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(macro: str, **kw) -> nn.Module:
    """The macro's small defaults at 32 px with two blocks per stage."""
    return build_model(make_spec(macro=macro, img_size=IMG, depths=2, num_classes=5, **kw)).eval()


def image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))


def as_list(f) -> list:
    return f if isinstance(f, list) else [f]


def patch_part(final, like: torch.Tensor) -> torch.Tensor:
    """The final features' patch tokens (or map) comparable with an NLC (or NCHW) intermediate."""
    f = final[-1] if isinstance(final, list) else final
    return f if f.ndim == 4 else f[:, f.shape[1] - like.shape[1]:]


# feature_info and forward_intermediates -----------------------------------------------------
@pytest.mark.parametrize("macro", MACRO_NAMES)
def test_intermediates_match_feature_info_and_final_features(macro):
    model, x = tiny(macro), image()
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        reference = model.forward_features(x)
    assert len(feats) == len(model.feature_info)
    modules = dict(model.named_modules())
    for info, f in zip(model.feature_info, feats):
        assert info["module"] in modules
        assert f.ndim == 4 and f.shape[1] == info["num_chs"]
        assert (IMG // f.shape[2], IMG // f.shape[3]) == (info["reduction"],) * 2
        assert IMG % f.shape[2] == 0  # whole grid: the reduction is exact
    assert {i["num_chs"] for i in model.feature_info} == {s.dim for s in model.spec.stages}
    # the final features are forward_features', bit for bit
    assert all(torch.equal(a, b) for a, b in zip(as_list(final), as_list(reference)))


@pytest.mark.parametrize("macro", MACRO_NAMES)
def test_indices_stop_early_only_and_norm(macro):
    model, x = tiny(macro), image()
    n = len(model.feature_info)
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -1], stop_early=True, intermediates_only=True)
        _, early = model.forward_intermediates(x, indices=[0], stop_early=True)
        final, normed = model.forward_intermediates(x, indices=[-1], norm=True,
                                                    output_fmt="NCHW" if model.layout == Layout.NCHW else "NLC")
    assert all(torch.equal(a, b) for a, b in zip(last2, every[n - 2:])) and len(last2) == 2
    assert torch.equal(picked[0], every[0]) and torch.equal(picked[1], every[-1])
    assert torch.equal(early[0], every[0])
    # the last feature through the final norm is the final features' patch part
    assert torch.allclose(normed[0], patch_part(final, normed[0]), atol=1e-6)
    with pytest.raises(UsageError, match="out of range"):
        model.forward_intermediates(x, indices=[n])
    with pytest.raises(UsageError, match="output_fmt='NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("macro", MACRO_NAMES)
@pytest.mark.parametrize("out_indices", [(0,), 2])
def test_feature_getter_net_prunes_and_gives_the_same_features(macro, out_indices):
    torch.manual_seed(0)
    model, x = tiny(macro), image()
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=out_indices, intermediates_only=True)
    params = sum(p.numel() for p in model.parameters())
    backbone = FeatureGetterNet(copy.deepcopy(model), out_indices=out_indices).eval()
    with torch.no_grad():
        got = backbone(x)
    assert len(got) == len(expected) == len(backbone.feature_info.out_indices)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert backbone.feature_info.channels() == [f.shape[1] for f in got]
    assert backbone.feature_info.reduction() == [IMG // f.shape[2] for f in got]
    assert sum(p.numel() for p in backbone.parameters()) < params  # head (and later blocks) gone


@pytest.mark.parametrize("macro", [m for m in MACRO_NAMES if MACROS.get(m).layout == Layout.NCHW])
def test_feature_hooks_on_feature_info_modules(macro):
    """timm's hook-based wrapper reads the modules feature_info names (NCHW macros)."""
    model, x = tiny(macro), image()
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        got = FeatureHookNet(model, out_indices=tuple(range(len(expected))), no_rewrite=True)(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


# the same semantics as timm's own models, on the same weights --------------------------------
def _randomised(ref: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return ref.eval()


def _ours_from(ref: nn.Module, name: str, tmp_path, **kw) -> nn.Module:
    path = tmp_path / "ckpt.pth"
    torch.save(ref.state_dict(), path)
    return create_model(name, pretrained=str(path), **kw).eval()


def _same(a, b, atol=1e-5):
    return all(torch.allclose(u, v, atol=atol, rtol=0) for u, v in zip(a, b)) and len(a) == len(b)


def test_vit_intermediates_equal_timms(tmp_path):
    ref = _randomised(timm.create_model("deit_tiny_patch16_224", num_classes=4, img_size=IMG, patch_size=4))
    ours = _ours_from(ref, "deit_tiny", tmp_path, img_size=IMG, patch_size=4, num_classes=4)
    x = image(1)
    with torch.no_grad():
        for kw in (dict(), dict(indices=3, norm=True), dict(indices=[0, -2], stop_early=True, output_fmt="NLC")):
            f_ref, i_ref = ref.forward_intermediates(x, **kw)
            f_ours, i_ours = ours.forward_intermediates(x, **kw)
            assert _same(i_ours, i_ref) and _same([f_ours], [f_ref]), kw
    assert [(i["num_chs"], i["reduction"], i["module"]) for i in ours.feature_info] == \
        [(i["num_chs"], i["reduction"], i["module"]) for i in ref.feature_info]


def test_crossvit_intermediates_and_headless_output_equal_timms(tmp_path):
    ref = _randomised(timm.create_model("crossvit_tiny_240"))
    ours = _ours_from(ref, "crossvit_tiny", tmp_path)
    x = torch.randn(1, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for kw in (dict(indices=[0, 2, 5], norm=True), dict(indices=[1, 4], stop_early=True, output_fmt="NLC")):
            f_ref, i_ref = ref.forward_intermediates(x, **kw)
            f_ours, i_ours = ours.forward_intermediates(x, **kw)
            assert _same(i_ours, i_ref, atol=1e-4) and _same(f_ours, f_ref, atol=1e-4), kw
        assert [(i["num_chs"], i["reduction"]) for i in ours.feature_info] == \
            [(i["num_chs"], i["reduction"]) for i in ref.feature_info]
        ref.reset_classifier(0)
        ours.reset_classifier(0)
        assert _same([ours(x)], [ref(x)], atol=1e-4)  # headless: both branches' pooled features


def test_volo_stage_ends_equal_timms_per_stage_intermediates(tmp_path):
    """timm's VOLO taps the end of each stage of its ``network`` (4 for d1); ours taps every
    block, so timm's stage ends are our blocks at the cumulative stage depths."""
    ref = _randomised(timm.create_model("volo_d1_224", num_classes=4, img_size=IMG, patch_size=4))
    ours = _ours_from(ref, "volo_d1", tmp_path, img_size=IMG, patch_size=4, num_classes=4)
    depths = [len(ref.network[i]) for i in ref.stage_ends]
    ends = [sum(depths[:k + 1]) - 1 for k in range(len(depths))]
    x = image(1)
    with torch.no_grad():
        f_ref, i_ref = ref.forward_intermediates(x, norm=True)
        f_ours, i_ours = ours.forward_intermediates(x, indices=ends, norm=True)
        assert _same(i_ours, i_ref) and _same([f_ours], [f_ref])
        assert [ours.feature_info[e]["reduction"] for e in ends] == [i["reduction"] for i in ref.feature_info]
        ref.reset_classifier(0)
        ours.reset_classifier(0)
        assert _same([ours(x)], [ref(x)])  # headless: no aux head either


# gradient checkpointing --------------------------------------------------------------------
def _loss_and_grads(model, x, y):
    torch.manual_seed(0)  # the same dropout and drop-path draws both times
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("macro", MACRO_NAMES)
def test_grad_checkpointing_same_loss_and_grads(macro, monkeypatch):
    model = tiny(macro, drop_path=0.2, drop_rate=0.1).train()
    x, y = image(), torch.tensor([0, 3])
    loss_off, grads_off = _loss_and_grads(model, x, y)

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    model.set_grad_checkpointing(True)
    loss_on, grads_on = _loss_and_grads(model, x, y)
    assert calls, "set_grad_checkpointing(True) did not checkpoint anything"
    assert torch.allclose(loss_on, loss_off, atol=1e-6, rtol=0)
    assert grads_on.keys() == grads_off.keys()
    for name, g in grads_off.items():
        assert torch.allclose(grads_on[name], g, atol=1e-6, rtol=0), name

    calls.clear()
    with torch.no_grad():
        model(x)
    assert not calls  # nothing to save without autograd


# group_matcher, pretrained_cfg --------------------------------------------------------------
@pytest.mark.parametrize("macro", MACRO_NAMES)
def test_group_matcher_puts_every_parameter_in_one_group_in_depth_order(macro):
    model = tiny(macro)
    groups = group_parameters(model, model.group_matcher())
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    first = list(groups.values())[0]
    assert any(n.startswith("stem.") for n in first)  # the stem is the first group
    order = {n: i for i, g in enumerate(groups.values()) for n in g}
    blocks = [n for n in names if ".blocks." in n or n.startswith("blocks.")]
    assert order[blocks[0]] < order[blocks[-1]]


@pytest.mark.parametrize("macro", MACRO_NAMES)
def test_pretrained_cfg_resolves_with_timm(macro):
    model = tiny(macro)
    cfg = resolve_model_data_config(model)
    assert cfg == resolve_data_config(model=model)
    reference = timm.create_model("deit_tiny_patch16_224").pretrained_cfg
    for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"):
        assert key in reference and cfg[key] == model.pretrained_cfg[key], key
    assert cfg["input_size"] == (model.spec.in_chans, *model.spec.img_size)
    from PIL import Image
    out = create_transform(**cfg)(Image.new("RGB", (40, 48)))
    assert tuple(out.shape) == cfg["input_size"]
    modules = dict(model.named_modules())
    firsts = model.pretrained_cfg["first_conv"]
    for name in [firsts] if isinstance(firsts, str) else firsts:
        assert isinstance(modules[name], nn.Conv2d) and modules[name].in_channels == model.spec.in_chans
    heads = model.pretrained_cfg["classifier"]
    for name in [heads] if isinstance(heads, str) else heads:
        assert modules[name].out_features == model.num_classes
