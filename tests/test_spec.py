"""Specs: round-trips, immutability, and bad input refused with an actionable message."""
import dataclasses

import pytest

from archbench import ArchSpec, StageSpec, make_spec
from archbench.models import get_entry, list_models


SHORTHANDS = [
    dict(mixer="shift", ffn="msffn", img_size=32, num_classes=10),
    dict(macro="isotropic", mixer="msa", img_size=(32, 48), patch_size=4, dims=64, depths=2, heads=2),
    dict(mixer="dmixer", ffn="msffn", img_size=64),
    dict(mixer="outlook", img_size=32),
    dict(mixer="cross-attn", img_size=32),
    dict(mixer=["shift", "shift", "msa", "msa"], ffn="mlp", img_size=32, mixer_options={}),
]


def _specs():
    for kw in SHORTHANDS:
        yield make_spec(**kw)
    for name in list_models():
        yield get_entry(name).make()


@pytest.mark.parametrize("spec", list(_specs()), ids=lambda s: f"{s.macro}-{s.stages[0].mixer}")
def test_round_trip_dict_json_yaml(spec):
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert ArchSpec.from_yaml(spec.to_yaml()) == spec
    assert ArchSpec.from_yaml(spec.to_yaml()).to_yaml() == spec.to_yaml()


def test_specs_are_frozen_and_hashable():
    spec = make_spec(mixer="shift", img_size=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.macro = "isotropic"
    assert hash(spec) == hash(ArchSpec.from_json(spec.to_json()))


def test_shorthand_defaults_follow_the_mixer():
    assert make_spec(mixer="shift").macro == "pyramid"
    assert make_spec(mixer="msa").macro == "isotropic"
    assert make_spec(mixer="outlook").macro == "two-stage"
    assert make_spec(mixer="cross-attn").macro == "two-branch"
    # a class token is only read out when some mixer can update it
    assert make_spec(macro="isotropic", mixer="shift", img_size=32).pool == "avg"
    assert make_spec(macro="isotropic", mixer="msa", img_size=32).pool == "token"


BAD = [
    (dict(mixer="shfit"), ["unknown token mixer 'shfit'", "known:", "shift", "did you mean 'shift'"]),
    (dict(ffn="msfnn"), ["unknown FFN 'msfnn'", "mlp", "msffn"]),
    (dict(macro="pyramids"), ["unknown macro-architecture 'pyramids'", "pyramid"]),
    (dict(mixer="msa", dims=100, heads=3, img_size=32), ["heads=3 does not divide dim=100"]),
    (dict(mixer="msa", img_size=30, patch_size=4), ["img_size 30x30 is not divisible by patch_size 4"]),
    (dict(mixer="shift", img_size=40, patch_size=4), ["not divisible", "total stride", "32"]),
    (dict(mixer="msa", depths=0, img_size=32), ["stage 0 depth must be a positive integer, got 0"]),
    (dict(mixer="msa", mlp_ratio=0.0, img_size=32), ["stage 0 mlp_ratio must be a positive number, got 0.0"]),
    (dict(mixer="msa", mlp_ratio=-1.0, img_size=32), ["mlp_ratio must be a positive number, got -1.0"]),
    (dict(mixer="shift", mixer_options={"ratio": 0.0}, img_size=32), ["ratio"]),
    (dict(mixer="shift", mixer_options={"ration": 0.1}, img_size=32), ["no option 'ration'", "allowed: ratio"]),
    (dict(mixer="shift", mixer_options={"ratio": "big"}, img_size=32), ["option 'ratio' must be float", "'big'"]),
    (dict(macro="isotropic", mixer="shift", pool="token", class_token=True, img_size=32),
     ["pool='token'", "never update", "pool='avg'"]),
    (dict(macro="isotropic", mixer="msa", norm="groupnorm", img_size=32), ["groupnorm", "nchw"]),
    (dict(mixer="msa", colour="red"), ["unknown model argument(s) colour"]),
    (dict(mixer="msa", img_size=32, drop_path=1.5), ["drop_path must be in [0, 1), got 1.5"]),
]


@pytest.mark.parametrize("kw,needles", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_names_the_value(kw, needles):
    with pytest.raises(ValueError) as err:
        make_spec(**kw)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_unknown_spec_field_in_a_file_is_named():
    d = make_spec(mixer="msa", img_size=32).to_dict()
    d["stages"][0]["detph"] = 3
    with pytest.raises(ValueError, match="unknown StageSpec field.*detph.*allowed"):
        ArchSpec.from_dict(d)


def test_stage_spec_options_are_frozen_mappings():
    st = StageSpec(2, 64, 2, "shift", {"ratio": 0.125})
    assert st.mixer_options.as_dict() == {"ratio": 0.125}
    assert hash(st)
