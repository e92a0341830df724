"""Smaller promises: registries, timm's model interface, checkpoint formats, divergence."""
import pytest
import timm
import torch

from archbench import create_model, make_spec
from archbench.registry import Registry
from archbench.train.loop import Recipe
from archbench.train.run import run_experiment


def test_registry_refuses_duplicates_and_lists_known_names():
    reg = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a")(object)
    with pytest.raises(ValueError, match="unknown widget 'b'; known: a"):
        reg.get("b")


@pytest.mark.parametrize("name", ["deit_tiny", "crossvit_tiny", "volo_d1", "shiftvit_tiny_light", "transxnet_t"])
def test_timm_model_interface(name):
    model = create_model(name, img_size=32, patch_size=4, num_classes=7) if not name.startswith(("shift", "trans")) \
        else create_model(name, img_size=32, num_classes=7)
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    assert model(x).shape == (2, 7)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (2, 3)
    cfg = model.default_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        assert key in cfg


def test_checkpoint_formats_load(tmp_path):
    from safetensors.torch import save_file

    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=4).eval()
    sd = ref.state_dict()
    x = torch.randn(1, 3, 32, 32)
    for i, obj in enumerate((sd, {"model": sd}, {"state_dict": sd})):
        torch.save(obj, tmp_path / f"{i}.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for path in [tmp_path / f"{i}.pth" for i in range(3)] + [tmp_path / "w.safetensors"]:
        model = create_model("deit_tiny", pretrained=str(path), img_size=32, patch_size=4, num_classes=4).eval()
        with torch.no_grad():
            assert torch.allclose(model(x), ref(x), atol=1e-4), path.name
    with pytest.raises(ValueError, match="does not exist .*never downloads"):
        create_model("deit_tiny", pretrained=str(tmp_path / "missing.pth"))


def test_a_diverging_loss_stops_the_run_with_a_failed_row(monkeypatch):
    spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=8, in_chans=1, num_classes=10)

    def nan_loss(logits, y, label_smoothing=0.0):
        return logits.sum() * float("nan")

    monkeypatch.setattr("archbench.train.loop.F.cross_entropy", nan_loss)
    row = run_experiment(spec, recipe=Recipe(epochs=1, batch_size=256))
    assert row["status"] == "failed" and "loss became nan" in row["error"] and row["top1"] is None
