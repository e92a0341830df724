"""Weight init per family: every parameter of a freshly built model follows the rules of the
family's reference code, written out here from that code:

- ``timm-vit``: timm 1.0.31 ``models/vision_transformer.py``, ``VisionTransformer.init_weights``
  and ``init_weights_vit_timm``: Linear weight trunc_normal_(std=.02), bias 0; pos_embed
  trunc_normal_(std=.02); cls_token normal_(std=1e-6); everything else as PyTorch builds it.
- ``crossvit``: timm 1.0.31 ``models/crossvit.py``, ``CrossVit.__init__`` and ``_init_weights``:
  Linear trunc_normal_(std=.02) / bias 0; LayerNorm 1 / 0; pos_embed_i, cls_token_i
  trunc_normal_(std=.02).
- ``volo``: timm 1.0.31 ``models/volo.py``, ``VOLO.__init__`` and ``_init_weights``: Linear
  trunc_normal_(std=.02) / bias 0; pos_embed, cls_token trunc_normal_(std=.02).
- ``shiftvit``: microsoft/SPACH ``models/shiftvit.py``, ``ShiftViT._init_weights``: Linear,
  Conv1d, Conv2d trunc_normal_(std=.02) / bias 0; LayerNorm, GroupNorm 1 / 0.
- ``transxnet``: LMMMEng/TransXNet ``models/transxnet.py``, ``TransXNet._init_model_weights``:
  Conv2d trunc_normal_(std=0.02) / bias 0; GroupNorm, BatchNorm2d 1 / 0; set at construction
  and never touched by it: ``DynamicConv2d.reset_parameters`` (IDConv weight and bias
  trunc_normal_(std=0.02)), ``LayerScale.__init__`` (weight = init value, bias 0),
  ``relative_pos_enc`` zeros. Its classifier is a 1x1 conv; ours is a Linear, same rule.
- ``torch``: no re-initialisation: PyTorch's ``reset_parameters`` (``nn.Linear``,
  ``nn.Conv2d``: kaiming_uniform_(a=sqrt(5)), i.e. U(±1/sqrt(fan_in)) for weight and bias;
  norms 1 / 0) and our constructors (zeros for tokens and position tables).

``trunc_normal_`` in every reference truncates at the *absolute* bounds a=-2, b=2 (timm
``layers/weight_init.py``, ``torch.nn.init.trunc_normal_``), i.e. at ±100 std for std 0.02:
the draws are in effect normal, so 4.55 % of them lie beyond 2 std.

Statistics pool every tensor of one kind in a model; each tolerance is 5 standard errors at
that sample size n (a false alarm about once in 3 million checks; seeded, so reproducible).
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from archbench import ArchSpec, create_model, make_spec
from archbench.layers.block import LayerScale
from archbench.layers.init import INITS
from archbench.layers.mixers.dmixer import IDConv, OSRA
from archbench.models import get_entry, list_models

# small, fast builds of one model per family (every layer type of the family is present)
SMALL = {
    "deit_tiny": dict(img_size=32, patch_size=4, depths=2),
    "crossvit_9": dict(img_size=32, patch_size=4, depths=1),
    "volo_d1": dict(img_size=32, patch_size=4, depths=1),
    "shiftvit_tiny_light": dict(img_size=32, depths=1),
    "transxnet_t": dict(img_size=32, depths=1),
}
# each family's scheme: the one its reference code uses
FAMILY_SCHEME = {"vit": "timm-vit", "crossvit": "crossvit", "volo": "volo", "shiftvit": "shiftvit",
                 "transxnet": "transxnet"}

TRUNC, ZERO, ONE, NORMAL_1E6, TORCH, LAYER_SCALE = ("trunc_normal(std=.02, a=-2, b=2)", "zeros", "ones",
                                                   "normal(std=1e-6)", "PyTorch default", "layer-scale value")

# what a part holds when no scheme rule touches it (see the module docstring)
AS_BUILT = {
    "linear.weight": TORCH, "linear.bias": TORCH,
    "conv1x1.weight": TORCH, "conv1x1.bias": TORCH,
    "conv.weight": TORCH, "conv.bias": TORCH,
    "depthwise.weight": TORCH, "depthwise.bias": TORCH,
    "norm.weight": ONE, "norm.bias": ZERO,
    "layer_scale.weight": LAYER_SCALE, "layer_scale.bias": ZERO,
    "cls_token": ZERO, "pos_embed": ZERO, "rel_pos": ZERO,
    "idconv.weight": TRUNC, "idconv.bias": TRUNC,
}
_LINEAR = {"linear.weight": TRUNC, "linear.bias": ZERO}
_CONVS = {f"{c}.{p}": TRUNC if p == "weight" else ZERO
          for c in ("conv1x1", "conv", "depthwise") for p in ("weight", "bias")}
_NORMS = {"norm.weight": ONE, "norm.bias": ZERO}
RULES = {
    "torch": {},
    "timm-vit": {**_LINEAR, "pos_embed": TRUNC, "cls_token": NORMAL_1E6},
    "crossvit": {**_LINEAR, **_NORMS, "pos_embed": TRUNC, "cls_token": TRUNC},
    "volo": {**_LINEAR, "pos_embed": TRUNC, "cls_token": TRUNC},
    "shiftvit": {**_LINEAR, **_CONVS, **_NORMS},
    "transxnet": {**_LINEAR, **_CONVS, **_NORMS},
    # archbench 0.1's single rule (macros/base.py init_weights): Linear and 1x1 convs, tokens
    "archbench-0.1": {**_LINEAR, "conv1x1.weight": TRUNC, "conv1x1.bias": ZERO, "pos_embed": TRUNC,
                      "cls_token": TRUNC},
}


def kind(module: nn.Module, pname: str, top: bool) -> str:
    """The layer type a parameter belongs to, as the rules above name it."""
    token = re.match(r"(cls_token|pos_embed)(_\d+)?$", pname)
    if top and token:
        return token[1]
    if isinstance(module, nn.Linear):
        return f"linear.{pname}"
    if isinstance(module, nn.Conv2d):
        if module.kernel_size == (1, 1):  # depthwise ones too: archbench 0.1 drew every 1x1 conv
            return f"conv1x1.{pname}"
        return f"{'depthwise' if module.groups == module.in_channels > 1 else 'conv'}.{pname}"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return f"norm.{pname}"
    if isinstance(module, LayerScale):
        return f"layer_scale.{pname}"
    if isinstance(module, OSRA) and pname == "rel_pos":
        return "rel_pos"
    if isinstance(module, IDConv):
        return f"idconv.{pname}"
    raise AssertionError(f"no rule for {type(module).__name__}.{pname}: add its layer type to the test")


def by_kind(model: nn.Module) -> dict[str, list[tuple[torch.Tensor, int]]]:
    """kind → [(tensor, fan_in of its layer)] over every parameter (tied ones once)."""
    out: dict[str, list] = {}
    seen = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            w = getattr(module, "weight", None)
            fan_in = w[0].numel() if isinstance(module, (nn.Linear, nn.Conv2d)) else 0
            out.setdefault(kind(module, pname, mname == ""), []).append((p.detach().flatten(), fan_in))
    return out


def check(rule: str, items: list[tuple[torch.Tensor, int]], layer_scale: float, what: str) -> None:
    x = torch.cat([t for t, _ in items]).double()
    n = x.numel()
    if rule == ZERO:
        assert torch.count_nonzero(x) == 0, what
    elif rule == ONE:
        assert torch.all(x == 1), what
    elif rule == LAYER_SCALE:
        assert torch.all(x == torch.tensor(layer_scale, dtype=torch.float32).double()), what
    elif rule in (TRUNC, NORMAL_1E6):
        std = 0.02 if rule == TRUNC else 1e-6
        assert abs(x.mean()) <= 5 * std / math.sqrt(n), (what, x.mean().item())
        assert abs(x.std() - std) <= 5 * std / math.sqrt(2 * n), (what, x.std().item(), n)
        if rule == TRUNC:
            assert x.abs().max() <= 2.0, what  # the absolute bounds
            # not truncated at ±2 std: a normal's two tails beyond 2 std hold 4.55 %
            p, tails = 0.0455, (x.abs() > 2 * std).double().mean()
            assert abs(tails - p) <= 5 * math.sqrt(p * (1 - p) / n), (what, tails.item(), n)
    elif rule == TORCH:  # U(±1/sqrt(fan_in)): scaled by sqrt(fan_in), U(-1, 1), std 1/sqrt(3)
        y = torch.cat([t.double() * math.sqrt(f) for t, f in items])
        assert y.abs().max() <= 1.0 + 1e-6, (what, y.abs().max().item())
        assert abs(y.std() - 1 / math.sqrt(3)) <= 5 / math.sqrt(15 * n), (what, y.std().item(), n)
    else:
        raise AssertionError(rule)


def build(name: str, scheme: str | None) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **SMALL[name], **({} if scheme is None else {"init": scheme}))


def test_every_registered_scheme_has_written_out_rules():
    assert sorted(RULES) == INITS.names()


def test_the_test_models_cover_every_layer_type():
    kinds = set()
    for name in SMALL:
        kinds |= set(by_kind(build(name, "torch")))
    assert kinds == set(AS_BUILT)


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("scheme", [None] + INITS.names())
def test_every_parameter_follows_its_scheme(name, scheme):
    """Each family's default (scheme None) and every scheme picked by ``init``, on each family."""
    model = build(name, scheme)
    expected = scheme or FAMILY_SCHEME[get_entry(name).family]
    assert model.init_scheme is INITS.get(expected)
    for k, items in sorted(by_kind(model).items()):
        rule = RULES[expected].get(k, AS_BUILT[k])
        check(rule, items, model.spec.layer_scale, f"{name} init={expected}: {k} should be {rule}")


@pytest.mark.parametrize("name", list_models())
def test_published_models_use_their_familys_scheme(name):
    with torch.device("meta"):
        model = create_model(name)
    assert model.spec.init is None and model.init_scheme is INITS.get(FAMILY_SCHEME[get_entry(name).family])


@pytest.mark.parametrize("kw,scheme", [
    (dict(mixer="msa"), "timm-vit"),
    (dict(mixer="cross-attn"), "crossvit"),
    (dict(mixer="outlook"), "volo"),
    (dict(mixer="shift", ffn="msffn"), "shiftvit"),
    (dict(mixer="none"), "shiftvit"),
    (dict(mixer="msa", macro="pyramid"), "shiftvit"),
    (dict(mixer="dmixer"), "transxnet"),
    (dict(mixer=["shift", "shift", "dmixer", "dmixer"]), "transxnet"),
    (dict(mixer="dmixer", macro="isotropic", ffn="msffn"), "timm-vit"),
])
def test_hybrids_take_their_macros_family_scheme(kw, scheme):
    """isotropic → timm-vit, two-branch → crossvit, two-stage → volo; pyramid → transxnet when
    any stage uses the D-Mixer, else shiftvit."""
    from archbench import build_model

    with torch.device("meta"):
        model = build_model(make_spec(img_size=32, **kw))
    assert model.init_scheme is INITS.get(scheme)


def test_zoo_hybrids_follow_the_mixer_rule():
    with torch.device("meta"):
        assert create_model("shiftvit_tiny", mixer="dmixer").init_scheme is INITS.get("transxnet")
        assert create_model("deit_small", mixer="shift").init_scheme is INITS.get("timm-vit")


def test_a_new_classifier_follows_the_scheme():
    for scheme, rule in (("shiftvit", TRUNC), ("torch", TORCH)):
        model = build("shiftvit_tiny_light", scheme)
        model.reset_classifier(100)
        check(rule, [(model.head.weight.detach().flatten(), model.head.in_features)], 0.0, scheme)


def test_init_field_serialises_and_old_specs_load():
    spec = make_spec(mixer="shift", img_size=32, init="torch")
    assert spec.to_dict()["init"] == "torch"
    assert ArchSpec.from_json(spec.to_json()) == spec and ArchSpec.from_yaml(spec.to_yaml()) == spec
    # None (the family's scheme) is left out, so older specs and their results keys stay as they were
    default = spec.replace(init=None)
    assert "init" not in default.to_dict()
    assert ArchSpec.from_json(default.to_json()) == default


def test_an_unknown_scheme_is_one_line_listing_the_allowed_names():
    for make in (lambda: make_spec(mixer="shift", img_size=32, init="timm"),
                 lambda: create_model("deit_tiny", init="timm")):
        with pytest.raises(ValueError) as err:
            make()
        msg = str(err.value)
        assert "\n" not in msg and "'timm'" in msg
        assert all(name in msg for name in INITS.names())


def test_set_init_on_the_command_line():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "archbench", "spec", "--mixer", "shift", "--img-size", "32",
                          "--set", "init=torch", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["init"] == "torch"
