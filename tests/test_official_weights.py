"""Official ShiftViT and TransXNet checkpoints load into the zoo models, key for key.

The official key names and shapes (at the published configuration) are facts recorded in
``fixtures/official_keys/`` (see its README: written out from microsoft/SPACH
``models/shiftvit.py`` and LMMMEng/TransXNet ``models/transxnet.py``). Here each of our keys
is mapped to the official one by a written-out inverse of ``archbench.models.weights``'
converters; a checkpoint of random tensors in official names must load strictly, put every
tensor where that mapping says, and give the logits of a model loaded by the mapping directly.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from archbench import create_model
from archbench.models import get_entry

FIXTURES = Path(__file__).parent / "fixtures" / "official_keys"
NAMES = ("shiftvit_tiny_light", "transxnet_t")


def shiftvit_key(ours: str) -> str:
    """Our key → SPACH's: stage i+1's downsampling (norm, conv) is ``layers.i.downsample``."""
    m = re.fullmatch(r"stages\.(\d+)\.downsample\.(\d)\.(.+)", ours)
    if m:
        return f"layers.{int(m[1]) - 1}.downsample.{('norm', 'reduction')[int(m[2])]}.{m[3]}"
    k = re.sub(r"^stem\.", "patch_embed.", ours)
    k = re.sub(r"^stages\.(\d+)\.blocks\.", r"layers.\1.blocks.", k)
    return k.replace(".ffn.", ".mlp.")


def transxnet_key(ours: str) -> str:
    """Our key → TransXNet's: stages at ``network.{2i}``, downsampling at ``network.{2i-1}``,
    mmcv ConvModules' ``conv``/``bn``, one ``relative_pos_enc.i`` per stage, ``classifier``."""
    m = re.fullmatch(r"stages\.(\d+)\.blocks\.\d+\.mixer\.global_unit\.rel_pos", ours)
    if m:
        return f"relative_pos_enc.{m[1]}"
    for pat, rep in (
            (r"^stem\.proj\.(\d)\.", lambda m: f"patch_embed.proj.{('conv', 'bn')[int(m[1])]}."),
            (r"^stages\.(\d+)\.downsample\.(\d)\.",
             lambda m: f"network.{2 * int(m[1]) - 1}.proj.{('conv', 'bn')[int(m[2])]}."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}."),
            (r"\.cpe\.proj\.", ".pos_embed."), (r"\.mixer\.", ".token_mixer."), (r"\.ffn\.", ".mlp."),
            (r"\.ls(\d)\.", r".layer_scale_\1."),
            (r"\.(local_unit\.proj\.0|global_unit\.sr\.\d)\.(\d)\.",
             lambda m: f".{m[1]}.{('conv', 'bn')[int(m[2])]}."),
            (r"^norm\.", "classifier.0."), (r"^head\.", "classifier.2.")):
        ours = re.sub(pat, rep, ours)
    return ours


OFFICIAL_KEY = {"shiftvit_tiny_light": shiftvit_key, "transxnet_t": transxnet_key}


def fixture(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(s) for k, s in json.loads((FIXTURES / f"{name}.json").read_text())}


def official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the official names and shapes (BN variances positive)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in fixture(name).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.randint(0, 1000, shape, generator=g)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


def by_inverse_mapping(model: torch.nn.Module, official: dict, name: str) -> dict:
    """Our state dict filled from ``official`` through the written-out mapping."""
    return {k: official[OFFICIAL_KEY[name](k)].reshape(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_fixture_holds_the_reference_parameter_count(name):
    """The fixture's parameters (buffers aside) add up to the official model's count
    (../shared/reference/published-models.md, carried in the zoo entry)."""
    n = sum(math.prod(s) for k, s in fixture(name).items()
            if not re.search(r"running_(mean|var)|num_batches_tracked", k))
    assert n == get_entry(name).params


@pytest.mark.parametrize("name", NAMES)
def test_every_official_key_has_exactly_one_place(name):
    with torch.device("meta"):
        ours = create_model(name).state_dict()
    official = fixture(name)
    mapped = {k: OFFICIAL_KEY[name](k) for k in ours}
    assert set(mapped.values()) == set(official)  # every official tensor is used
    for k, theirs in mapped.items():
        shape = tuple(ours[k].shape)
        if k == "head.weight":  # a (classes, C, 1, 1) conv classifier is our (classes, C) Linear
            assert official[theirs][:2] == shape and math.prod(official[theirs]) == math.prod(shape)
        else:
            assert official[theirs] == shape, (k, theirs)


def _wrap(sd: dict, wrapper: str) -> dict:
    if wrapper == "plain":
        return sd
    if wrapper == "model":
        return {"model": sd, "epoch": 300}
    if wrapper == "state_dict":
        return {"state_dict": sd}
    if wrapper == "module.":
        return {f"module.{k}": v for k, v in sd.items()}
    # a training script's checkpoint: DDP keys, the argparse Namespace, an EMA copy
    return {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(lr=1e-3),
            "state_dict_ema": sd, "epoch": 299}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """name → (official tensors, the model loaded from them in a training-script checkpoint)."""
    out = {}
    for name in NAMES:
        official = official_state_dict(name)
        path = tmp_path_factory.mktemp(name) / "official.pth.tar"
        torch.save(_wrap(official, "training"), path)
        out[name] = official, create_model(name, pretrained=str(path)).eval()  # strict
    return out


@pytest.mark.parametrize("name", NAMES)
def test_official_checkpoint_loads_tensor_for_tensor(name, loaded):
    official, model = loaded[name]
    for k, v in model.state_dict().items():
        assert torch.equal(v, official[OFFICIAL_KEY[name](k)].reshape(v.shape)), k

    direct = create_model(name).eval()
    direct.load_state_dict(by_inverse_mapping(direct, official, name), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), direct(x))


@pytest.mark.parametrize("wrapper", ["plain", "model", "state_dict", "module.", "training"])
def test_usual_wrappers(wrapper, tmp_path):
    name = "shiftvit_tiny_light"  # reading and unwrapping is the same for every family
    official = official_state_dict(name, seed=2)
    path = tmp_path / "official.pth"
    torch.save(_wrap(official, wrapper), path)
    model = create_model(name, img_size=32, pretrained=str(path))
    assert torch.equal(model.head.weight, official["head.weight"])
    assert torch.equal(model.stages[1].downsample[1].weight, official["layers.0.downsample.reduction.weight"])


def test_transxnet_tables_are_resized_as_the_official_forward_does(loaded, tmp_path):
    """TransXNet keeps its tables at 224 and resizes them bicubically on every call
    (``Attention.forward``); a model built at 64 gets them resized once at load."""
    official, full = loaded["transxnet_t"]
    path = tmp_path / "official.pth"
    torch.save(official, path)
    small = create_model("transxnet_t", img_size=64, pretrained=str(path)).eval()
    table = small.stages[1].blocks[0].mixer.global_unit.rel_pos  # stage 1 at 64: 8x8 queries, 2x2 keys
    expected = F.interpolate(official["relative_pos_enc.1"], size=(8 * 8, 2 * 2), mode="bicubic",
                             align_corners=False)
    assert torch.equal(table, expected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(small(x), full(x))


def test_another_number_of_classes_keeps_a_fresh_head(tmp_path):
    official = official_state_dict("transxnet_t", seed=4)
    path = tmp_path / "official.pth"
    torch.save(official, path)
    model = create_model("transxnet_t", img_size=32, num_classes=10, pretrained=str(path))
    assert model.head.weight.shape == (10, 448)
    assert torch.equal(model.norm.weight, official["classifier.0.weight"])


@pytest.mark.parametrize("name,key", [
    ("shiftvit_tiny_light", "layers.2.blocks.5.mlp.fc2.weight"),
    ("transxnet_t", "network.4.8.token_mixer.global_unit.kv.weight"),
])
def test_a_wrong_key_or_shape_is_one_line_naming_it(name, key, tmp_path):
    official = official_state_dict(name)
    path = tmp_path / "bad.pth"

    renamed = {(k.replace(".weight", ".wieght") if k == key else k): v for k, v in official.items()}
    torch.save(renamed, path)
    with pytest.raises(ValueError) as err:
        create_model(name, pretrained=str(path))
    msg = str(err.value)
    assert "\n" not in msg and key.replace(".weight", ".wieght") in msg and "unexpected 1" in msg
    assert "missing 1" in msg

    official[key] = official[key][:-1]
    torch.save(official, path)
    with pytest.raises(ValueError) as err:
        create_model(name, pretrained=str(path))
    msg = str(err.value)
    assert "\n" not in msg and f"{key} -> " in msg and "shape mismatch 1" in msg


def test_a_table_for_no_grid_is_refused_not_resized(tmp_path):
    official = official_state_dict("transxnet_t")
    official["relative_pos_enc.2"] = official["relative_pos_enc.2"][..., :-1]  # 14x14 queries, 48 keys
    path = tmp_path / "bad.pth"
    torch.save(official, path)
    with pytest.raises(ValueError, match=r"shape mismatch 9: relative_pos_enc\.2 -> stages\.2\.blocks\.0\."):
        create_model("transxnet_t", pretrained=str(path))
