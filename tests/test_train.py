"""Training: the embedded dataset, determinism, imagefolder data, and bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from archbench import make_spec
from archbench.cli import main
from archbench.results import read_table
from archbench.train.data import load_dataset
from archbench.train.loop import Recipe, augment
from archbench.train.run import run_experiment

TINY = ["--mixer", "shift", "--ffn", "mlp", "--dims", "16", "--depths", "1", "--img-size", "8"]


def test_digits_is_embedded_and_split_stratified():
    d = load_dataset("digits")
    assert (len(d.train.y), len(d.test.y)) == (1437, 360)  # 1,797 images, a fixed 80/20 split
    assert d.in_chans == 1 and d.num_classes == 10 and d.train.x.dtype == torch.uint8
    counts = torch.bincount(d.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    assert load_dataset("digits") is d  # loaded once per process


def test_same_seed_same_top1():
    spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=8, in_chans=1, num_classes=10)
    recipe = Recipe(epochs=1, batch_size=128)
    a = run_experiment(spec, recipe=recipe, seed=3)
    b = run_experiment(spec, recipe=recipe, seed=3)
    assert a["status"] == b["status"] == "ok"
    assert a["top1"] == b["top1"] and a["history"][0]["loss"] == b["history"][0]["loss"]


def test_a_batch_larger_than_the_set_is_said():
    """In memory a batch larger than the training set trains on one short batch an epoch (a
    streamed run refuses it): said in a note, not silently."""
    spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=8, in_chans=1, num_classes=10)
    lines = []
    row = run_experiment(spec, recipe=Recipe(epochs=1, batch_size=64), limit_train=40, say=lines.append)
    assert row["status"] == "ok" and len(row["history"]) == 1
    assert "note: 40 training images, fewer than --batch-size 64: each epoch is one step on a batch of 40" in lines


def test_run_cli_writes_a_row(capsys, tmp_path):
    out = tmp_path / "runs"
    code = main(["run", *TINY, "--epochs", "2", "--batch-size", "128", "--json", "--out", str(out)])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    for key in ("top1", "top5", "params", "gmacs_fvcore", "throughput", "train_seconds", "history", "seed", "recipe"):
        assert key in row, key
    assert len(row["history"]) == 2 and 0 <= row["top1"] <= 100
    table = read_table(out)
    assert len(table) == 1 and json.loads(table.loc[0, "recipe"])["epochs"] == 2


def test_augment_crops_and_flips_per_image():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = augment(x, flip=True, gen=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every output pixel is a source pixel or padding zero
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def _folder(root, classes, n=4, size=(8, 8), mode="RGB"):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (*size, 3) if mode == "RGB" else size
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / split / c / f"{i}.png")


def test_imagefolder_grey_and_rgb(tmp_path):
    _folder(tmp_path / "rgb", ["cat", "dog"])
    _folder(tmp_path / "grey", ["a", "b", "c"], mode="L")
    rgb, grey = load_dataset("imagefolder", str(tmp_path / "rgb")), load_dataset("imagefolder", str(tmp_path / "grey"))
    assert rgb.in_chans == 3 and rgb.num_classes == 2 and rgb.classes == ["cat", "dog"]
    assert grey.in_chans == 1 and grey.num_classes == 3 and grey.n_train == 12  # listed, not decoded


@pytest.mark.parametrize("extra,needle", [
    (["--dataset", "imagenot"], "unknown dataset 'imagenot'"),
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent/dir"], "does not exist"),
    (["--dataset", "imagefolder"], "imagefolder needs --data-dir"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--lr", "-1"], "lr must be > 0"),
])
def test_run_bad_input(capsys, extra, needle):
    assert main(["run", *TINY, *extra, "--out", ""]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_run_bad_data_dirs(capsys, tmp_path):
    (tmp_path / "empty" / "train" / "x").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "x").mkdir(parents=True)
    assert main(["run", *TINY, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "empty"), "--out", ""]) == 2
    assert "no images under" in capsys.readouterr().err
    _folder(tmp_path / "one", ["only"])
    assert main(["run", *TINY, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "one"), "--out", ""]) == 2
    assert "has 1 class" in capsys.readouterr().err


def test_run_refuses_an_image_size_the_spec_cannot_take(capsys):
    assert main(["run", "--mixer", "shift", "--img-size", "30", "--out", ""]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_interrupted_run_leaves_the_table_intact(capsys, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    assert main(["run", *TINY, "--epochs", "1", "--batch-size", "256", "--out", str(out), "--json"]) == 0
    before = read_table(out)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("archbench.train.run.train", interrupt)
    assert main(["run", *TINY, "--epochs", "1", "--out", str(out)]) == 130
    after = read_table(out)
    assert after.equals(before)
    assert not list(tmp_path.glob(".*.tmp"))


def test_eval_uses_the_models_preprocessing(capsys, tmp_path):
    import timm

    _folder(tmp_path / "data", ["a", "b"], size=(40, 48))
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, patch_size=4)
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    code = main(["eval", "--model", "deit_tiny", "--pretrained", str(tmp_path / "w.pth"), "--img-size", "32", "--patch-size", "4",
                 "--num-classes", "2", "--data-dir", str(tmp_path / "data" / "val"), "--json", "--workers", "0"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and row["images"] == 8 and 0 <= row["top1"] <= 100


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_eval_of_a_runs_checkpoint_gives_the_runs_top1(capsys, tmp_path, cache):
    """`archbench eval --pretrained CHECKPOINT_DIR` rebuilds the run's model from the spec stored
    there and evaluates it with the run's eval transform: the run's own top-1 / top-5 (and the
    EMA's with --ema), whether the run held the folder in memory or streamed it. (Before, the
    checkpoint could not be read weights-only, and only zoo models could be evaluated.)"""
    _folder(tmp_path / "data", [f"c{i}" for i in range(6)], n=4, size=(40, 48))
    ck = tmp_path / "ck"
    code = main(["run", "--mixer", "shift", "--ffn", "mlp", "--dims", "16", "--depths", "1", "--img-size", "16",
                 "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--recipe", "deit", "--epochs", "2",
                 "--batch-size", "8", "--ema", "0.5", "--cache", cache, "--workers", "0", "--checkpoint-dir", str(ck),
                 "--out", "", "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and row["inputs"]["cache"] == cache
    for extra, key in (([], "top1"), (["--ema"], "ema_top1")):
        code = main(["eval", "--pretrained", str(ck), "--data-dir", str(tmp_path / "data" / "val"), "--workers", "0",
                     "--json", *extra])
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 0 and got["images"] == 24 and got["top1"] == pytest.approx(row[key])
    assert got["top5"] == pytest.approx(row["ema_top5"])
    assert main(["eval", "--pretrained", str(ck), "--model", "deit_tiny", "--data-dir", str(tmp_path)]) == 2
    assert "carries its model: leave out --model" in capsys.readouterr().err


def test_a_checkpoint_with_python_objects_is_one_line_naming_them(capsys, tmp_path):
    """weights_only loading refuses pickled objects: the line names them, not torch's
    multi-line advice with terminal escape codes."""
    torch.save({"model": {"w": torch.zeros(1)}, "extra": np.zeros(3)}, tmp_path / "w.pth")
    assert main(["eval", "--model", "deit_tiny", "--pretrained", str(tmp_path / "w.pth"),
                 "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "\x1b" not in err and "numpy" in err and "holds Python objects" in err


def test_eval_refuses_runs_it_would_misread(capsys, tmp_path):
    """`archbench eval` applies the timm eval transform with ImageNet's statistics: a run that saw
    its inputs otherwise (the small recipe's plain resize; a built-in set's own statistics) is
    refused in one line rather than misread."""
    _folder(tmp_path / "data", ["a", "b"], size=(12, 12))
    cases = [(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"), "--batch-size", "4"],
              "trained with the tensor transform (the small recipe)"),
             (["--batch-size", "256"], "trained on 'digits', normalised by that set's own statistics")]
    for i, (data, needle) in enumerate(cases):
        ck = tmp_path / f"ck{i}"
        assert main(["run", *TINY, "--epochs", "1", "--workers", "0", *data, "--out", "",
                     "--checkpoint-dir", str(ck)]) == 0
        capsys.readouterr()
        assert main(["eval", "--pretrained", str(ck / "last.pt"), "--data-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_fine_tuning_starts_from_the_checkpoint_with_a_new_classifier(capsys, tmp_path, monkeypatch):
    """run --pretrained: a timm DeiT-Ti checkpoint (1000 classes, timm's keys) fine-tuned on a
    2-class folder. At the first step every weight but the classifier's is the checkpoint's, as
    create_model(pretrained=...) loads it (the reference: tested against timm's logits in
    test_zoo); the classifier is new, of 2 classes. The run is another run than one from scratch."""
    import copy

    import timm

    import archbench.train.run as run_module
    from archbench import create_model

    _folder(tmp_path / "data", ["a", "b"], size=(40, 48))
    w = tmp_path / "deit.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4).state_dict(), w)
    seen = {}
    real = run_module.train

    def spy(model, *args, **kw):
        seen["start"] = copy.deepcopy(model.state_dict())
        return real(model, *args, **kw)

    monkeypatch.setattr(run_module, "train", spy)
    argv = ["run", "--model", "deit_tiny", "--img-size", "32", "--patch-size", "4", "--dataset", "imagefolder",
            "--data-dir", str(tmp_path / "data"), "--recipe", "deit", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--out", "", "--json", "--checkpoint-dir", str(tmp_path / "ck")]
    assert main([*argv, "--pretrained", str(w)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ref = create_model("deit_tiny", img_size=32, patch_size=4, num_classes=2, pretrained=str(w)).state_dict()
    start = seen["start"]
    assert set(start) == set(ref) and start["head.weight"].shape == (2, 192)
    assert all(torch.equal(start[k], ref[k]) for k in ref if not k.startswith("head."))
    assert row["pretrained"].startswith(f"{w} (sha256 ")
    assert main(argv) == 2  # from scratch into the fine-tuning run's folder
    assert "belongs to another run (pretrained: " in capsys.readouterr().err


def test_augment_crop_and_flip_against_the_written_out_rule():
    # pad p = max(1, round(4·min(H, W)/32)) = 1 at 4x4; offsets (dy, dx) pick the window
    # xp[dy:dy+H, dx:dx+W] of the zero-padded image; the flip mirrors that window left-right
    x = torch.arange(1, 17, dtype=torch.float32).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    offsets = (torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([False, True]))
    out = augment(x, flip=True, offsets=offsets)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    assert torch.equal(out[0], xp[0, :, 0:4, 0:4])  # shifted down-right, zeros in row 0 / column 0
    assert torch.equal(out[1], xp[1, :, 2:6, 1:5].flip(-1))  # shifted up, then mirrored
    assert not torch.equal(out, x)


def test_a_training_set_smaller_than_the_batch_trains_one_short_batch(tmp_path, capsys):
    # regression: crop offsets were drawn for the whole batch (64) and applied to the 10 images there are
    from archbench.cli import main

    argv = ["run", "--dataset", "digits", "--limit-train", "12", "--limit-test", "20", "--batch-size", "64",
            "--epochs", "1", "--mixer", "shift", "--ffn", "mlp", "--dims", "16", "--depths", "1", "--json",
            "--out", str(tmp_path / "runs")]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["status"] == "ok" and row["train_images"] == 10
