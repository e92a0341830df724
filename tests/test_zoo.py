"""The published models, built by the grammar, match their reference implementations.

Reference figures: ../shared/reference/published-models.md (parameters exactly, from timm
1.0.31 and the authors' official code; fvcore GMACs with attention counted), carried in
each zoo entry.
"""
import pytest
import timm
import torch

from archbench import build_model, create_model, list_models
from archbench.measure import count_macs
from archbench.models import get_entry

ALL = list_models()
# fvcore traces run the model once at full resolution; the biggest go to the slow set
BIG = {"deit_base", "crossvit_base", "crossvit_18", "crossvit_18_dagger", "volo_d2", "volo_d3", "volo_d4",
       "volo_d5", "shiftvit_small", "shiftvit_small_r4", "shiftvit_base", "shiftvit_base_r4",
       "shiftvit_base_light", "transxnet_b", "transxnet_s"}


def test_zoo_has_every_published_name():
    expected = ("deit_tiny deit_small deit_base crossvit_tiny crossvit_small crossvit_base crossvit_9 "
                "crossvit_15 crossvit_18 crossvit_9_dagger crossvit_15_dagger crossvit_18_dagger "
                "shiftvit_tiny_light shiftvit_tiny_r4 shiftvit_tiny shiftvit_small_light shiftvit_small_r4 "
                "shiftvit_small shiftvit_base_light shiftvit_base_r4 shiftvit_base transxnet_t transxnet_s "
                "transxnet_b volo_d1 volo_d2 volo_d3 volo_d4 volo_d5").split()
    assert sorted(ALL) == sorted(expected)
    for alias, name in (("vit_tiny_patch16", "deit_tiny"), ("vit_small_patch16", "deit_small"),
                        ("vit_base_patch16", "deit_base")):
        assert get_entry(alias).name == name


@pytest.mark.parametrize("name", ALL)
def test_param_count_equals_reference_exactly(name):
    entry = get_entry(name)
    with torch.device("meta"):
        model = build_model(entry.make())
    assert sum(p.numel() for p in model.parameters()) == entry.params


def _gmacs_check(name):
    entry = get_entry(name)
    model = create_model(name).eval()
    res = model.pretrained_cfg["input_size"]
    fv = count_macs(model, (1, *res), backend="fvcore")
    pt = count_macs(model, (1, *res), backend="ptflops")
    assert fv.gmacs == pytest.approx(entry.gmacs, rel=5e-3), (name, fv.gmacs, entry.gmacs)
    # the second counter (ATen dispatch instead of a TorchScript trace) within 1 %
    assert pt.gmacs == pytest.approx(entry.gmacs, rel=1e-2), (name, pt.gmacs, entry.gmacs)
    assert pt.gmacs == pytest.approx(fv.gmacs, rel=1e-2)
    assert fv.skipped == {} and pt.skipped == {}, (fv.skipped, pt.skipped)


@pytest.mark.parametrize("name", [n for n in ALL if n not in BIG])
def test_gmacs_within_half_a_percent(name):
    _gmacs_check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG))
def test_gmacs_within_half_a_percent_big(name):
    _gmacs_check(name)


@pytest.mark.parametrize("ours,theirs,res", [
    ("deit_tiny", "deit_tiny_patch16_224", 224),
    ("crossvit_9", "crossvit_9_240", 240),
    ("crossvit_9_dagger", "crossvit_9_dagger_240", 240),
    ("volo_d1", "volo_d1_224", 224),
])
def test_timm_weights_load_and_logits_agree(ours, theirs, res, tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model(theirs, pretrained=False).eval()
    # randomise everything (incl. zero-initialised biases and norms) so the check is not trivial
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = create_model(ours, pretrained=str(path)).eval()
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_wrong_checkpoint_names_the_disagreeing_shapes(tmp_path):
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    path = tmp_path / "tiny.pth"
    torch.save(ref.state_dict(), path)
    with pytest.raises(ValueError) as err:
        create_model("deit_small", pretrained=str(path))
    msg = str(err.value)
    assert "does not fit deit_small" in msg and "shape mismatch" in msg
    assert "cls_token: checkpoint (1, 1, 192) vs model (1, 1, 384)" in msg


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model 'shiftvit_tinny'.*shiftvit_tiny"):
        create_model("shiftvit_tinny")


def test_shiftvit_block_structure():
    model = create_model("shiftvit_tiny_light")
    blk = model.stages[0].blocks[0]
    # the shift has no norm and no residual of its own, and no parameters
    assert blk.inline and isinstance(blk.norm1, torch.nn.Identity) and isinstance(blk.ls1, torch.nn.Identity)
    assert sum(p.numel() for p in blk.mixer.parameters()) == 0
    x = torch.randn(1, 96, 8, 8)
    assert torch.equal(blk._mix(blk.mixer, x, (8, 8)), blk.mixer(x))


def test_transxnet_block_structure():
    model = create_model("transxnet_t")
    blk = model.stages[2].blocks[0]
    assert blk.ls1.bias is not None and blk.ls2.bias is not None  # layer scale with a bias
    assert blk.cpe is not None and blk.cpe.proj.kernel_size == (7, 7)  # DPE
    # one relative position bias per stage, shared by its blocks: (1, heads, N, N_reduced) at 224
    biases = {id(b.mixer.global_unit.rel_pos) for st in model.stages for b in st.blocks}
    assert len(biases) == 4
    assert tuple(model.stages[0].blocks[0].mixer.global_unit.rel_pos.shape) == (1, 1, 56 * 56, 7 * 7)


@pytest.mark.parametrize("name,kw", [
    ("shiftvit_tiny", dict(ffn="msffn")),
    ("deit_small", dict(mixer="shift")),
    ("deit_tiny", dict(img_size=32, patch_size=4, num_classes=10)),
    ("crossvit_9", dict(img_size=32, patch_size=4, num_classes=10)),
    ("volo_d1", dict(img_size=32, patch_size=4, num_classes=10)),
    ("transxnet_t", dict(img_size=32, num_classes=10)),
    ("shiftvit_tiny_light", dict(img_size=32, num_classes=10)),
])
def test_hybrids_and_small_images(name, kw):
    model = create_model(name, **kw)
    res = model.pretrained_cfg["input_size"]
    out = model(torch.randn(2, *res))
    assert out.shape == (2, kw.get("num_classes", 1000))


def test_small_image_adaptations_are_what_users_expect():
    vit = create_model("deit_tiny", img_size=32, patch_size=4)
    assert vit.pos_embed.shape == (1, 1 + 8 * 8, 192)
    cv = create_model("crossvit_9", img_size=32, patch_size=4)
    assert [s.patch_size for s in cv.spec.stages] == [4, 8]
    tx = create_model("transxnet_t", img_size=32)
    assert tx.stages[0].blocks[0].mixer.global_unit.rel_pos.shape == (1, 1, 8 * 8, 1)


def test_overrides_that_cannot_apply_are_refused():
    with pytest.raises(ValueError, match="crossvit_9 .*not tiled.*patch_size"):
        create_model("crossvit_9", img_size=32)
    with pytest.raises(ValueError, match="shiftvit_tiny cannot take img_size=40.*divisible"):
        create_model("shiftvit_tiny", img_size=40)
    with pytest.raises(ValueError, match="unknown override 'colour'"):
        create_model("deit_tiny", colour="red")


def test_mixer_options_override_every_stage_of_a_zoo_spec():
    # a mixer option put into a zoo spec reaches all four stages (it used to be consumed by the first)
    from archbench.models import get_entry, override_spec

    spec = override_spec(get_entry("shiftvit_tiny_light").make(), mixer_options={"ratio": 1 / 24})
    assert [st.mixer_options.as_dict()["ratio"] for st in spec.stages] == [1 / 24] * 4
