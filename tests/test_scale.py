"""Training at the papers' scale, in miniature: the DeiT recipe end to end, the cache choice,
checkpoints with exact resume (also after SIGKILL), and data-parallel runs under torchrun
(gloo, 2 CPU processes)."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from archbench.cli import main
from archbench.results import read_table
from archbench.train.recipe import PRESETS, Recipe

TINY = ["--mixer", "shift", "--ffn", "mlp", "--dims", "16", "--depths", "1"]
ARCHBENCH = shutil.which("archbench")


def _folder(root, classes=("a", "b"), n_train=12, n_val=4, size=(20, 24)):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                arr[:, : size[1] // 2] = 60 * k  # a class is visible: left half dark or grey
                Image.fromarray(arr).save(root / split / c / f"{i}.jpg")
    return root


def _row(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_recipe_presets_cite_their_numbers():
    # DeiT main.py defaults: lr 5e-4 per 512 images, 300 epochs, 5 warm-up, Mixup 0.8, CutMix 1.0
    deit = PRESETS["deit"]
    assert (deit.lr, deit.lr_base_batch, deit.epochs, deit.warmup_epochs) == (5e-4, 512, 300, 5.0)
    assert (deit.mixup, deit.cutmix, deit.reprob, deit.rand_augment) == (0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1")
    assert deit.peak_lr == pytest.approx(5e-4 * 1024 / 512)  # DeiT: lr × total batch / 512
    # Swin config.py: BASE_LR 5e-4, WARMUP_LR 5e-7, MIN_LR 5e-6, 20 warm-up epochs, CLIP_GRAD 5
    sv = PRESETS["shiftvit"]
    assert (sv.lr, sv.warmup_lr, sv.min_lr, sv.warmup_epochs, sv.clip_grad) == (5e-4, 5e-7, 5e-6, 20.0, 5.0)
    for p in PRESETS.values():
        p.check()


def test_old_recipe_keys_unchanged():
    # runs keyed before the paper-scale fields existed must keep their keys
    assert set(Recipe().identity()) == {"epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                                        "label_smoothing", "clip_grad", "augment", "eval_batch_size"}
    assert Recipe(mixup=0.8).identity()["mixup"] == 0.8


def test_deit_recipe_end_to_end(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    out = tmp_path / "runs"
    code = main(["run", *TINY, "--img-size", "16", "--dataset", "imagefolder", "--data-dir", str(data),
                 "--recipe", "deit", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--ema", "0.9",
                 "--out", str(out), "--json"])
    row = _row(capsys)
    assert code == 0 and row["status"] == "ok"
    stored = json.loads(read_table(out).loc[0, "recipe"])
    for f in dataclasses.fields(Recipe):  # every recipe field is in the row
        assert f.name in stored, f.name
    assert stored["name"] == "deit" and stored["mixup"] == 0.8 and stored["ema_decay"] == 0.9
    assert json.loads(row["spec"])["drop_path"] == 0.1  # the recipe's drop path reached the model
    assert "ema_top1" in row and row["inputs"]["transform"] == "timm"


def test_cache_auto_streams_when_over_budget(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    code = main(["run", *TINY, "--img-size", "16", "--dataset", "imagefolder", "--data-dir", str(data),
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--cache-gb", "1e-6", "--out", "",
                 "--json"])
    captured = capsys.readouterr().out
    row = json.loads(captured.strip().splitlines()[-1])
    assert code == 0 and row["inputs"]["cache"] == "disk"
    assert "over --cache-gb 1e-06: streaming from disk" in captured
    code = main(["run", *TINY, "--img-size", "16", "--dataset", "imagefolder", "--data-dir", str(data),
                 "--epochs", "1", "--batch-size", "8", "--workers", "0", "--out", "", "--json"])
    assert code == 0 and _row(capsys)["inputs"]["cache"] == "memory"


def test_streamed_run_skips_a_corrupt_image(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    (data / "train" / "a" / "zz_broken.jpg").write_bytes(b"not a jpeg at all")
    code = main(["run", *TINY, "--img-size", "16", "--dataset", "imagefolder", "--data-dir", str(data),
                 "--epochs", "1", "--batch-size", "8", "--workers", "2", "--cache", "disk", "--out", "", "--json"])
    captured = capsys.readouterr()
    row = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 0 and row["status"] == "ok"
    assert "zz_broken.jpg" in row["skipped_images"] and "Traceback" not in captured.err


def _cmd(ckpt, *extra):
    return [ARCHBENCH, "run", *TINY, "--img-size", "16", "--epochs", "4", "--batch-size", "64", "--seed", "5",
            "--checkpoint-dir", str(ckpt), "--out", "", "--json", "--device", "cpu", *extra]


def _metrics(row):
    return [(h["loss"], h["top1"], h["top5"], h["lr"]) for h in row["history"]]


@pytest.mark.parametrize("extra", [[], ["--recipe", "deit", "--batch-size", "32", "--workers", "0"]],
                         ids=["small-memory", "deit-loader"])
def test_sigkill_then_resume_gives_the_uninterrupted_metrics(tmp_path, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(_cmd(tmp_path / "full", *extra), capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == 0, full.stderr
    reference = json.loads(full.stdout.strip().splitlines()[-1])
    ckpt = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(ckpt, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    while not (ckpt / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-run"
    resumed = subprocess.run(_cmd(ckpt, *extra), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    row = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert 1 <= row["resumed_from_epoch"] < 4 and "resuming from" in resumed.stdout
    assert _metrics(row) == _metrics(reference)  # exactly, not approximately
    assert row["top1"] == reference["top1"]
    again = subprocess.run(_cmd(ckpt, *extra), capture_output=True, text=True, env=env, timeout=300)
    assert "finished before" in again.stdout and json.loads(again.stdout.strip().splitlines()[-1])["top1"] == row["top1"]


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    ckpt = str(tmp_path / "ck")
    base = ["run", *TINY, "--img-size", "16", "--epochs", "1", "--batch-size", "128", "--out", "", "--checkpoint-dir", ckpt]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base[:-2], "--lr", "1e-3", "--checkpoint-dir", ckpt]) == 2
    err = capsys.readouterr().err.strip()
    # the field that differs, down to the leaf, and both values
    assert len(err.splitlines()) == 1 and "belongs to another run (recipe.lr: " in err and "0.001 in this run)" in err


def _torchrun(*args, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "--no-python", ARCHBENCH, "run", *args], capture_output=True, text=True, env=env, timeout=400)


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "runs"
    res = _torchrun(*TINY, "--img-size", "16", "--epochs", "3", "--batch-size", "64", "--device", "cpu",
                    "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    table = read_table(out)
    assert len(table) == 1  # only rank 0 writes
    assert table.loc[0, "world_size"] == 2 and table.loc[0, "test_images"] == 360
    assert table.loc[0, "top1"] > 30  # digits: chance is 10 %


def test_torchrun_bad_batch_is_one_line_on_rank_0(tmp_path):
    res = _torchrun(*TINY, "--img-size", "16", "--epochs", "1", "--batch-size", "63", "--device", "cpu", "--out", "")
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if line.startswith("archbench run: error:")]
    assert ours == ["archbench run: error: --batch-size 63 is the global batch and must be divisible by the world "
                    "size 2 (torchrun --nproc_per_node × nodes)"]


def test_randaugment_posterize_to_zero_bits_is_black():
    # Pillow >= 13 refuses posterize(img, 0), which timm's inc1 RandAugment asks for at its
    # top magnitude; keeping 0 bits of every pixel is, by definition, a black image
    import timm.data.auto_augment as aa

    from archbench.train.compat import patch_timm_posterize

    patch_timm_posterize()
    img = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    out = aa.NAME_TO_OP["PosterizeIncreasing"](img, 0)
    assert np.asarray(out).max() == 0
    assert np.asarray(aa.NAME_TO_OP["PosterizeIncreasing"](img, 4)).max() == 192  # 200 & 0b11110000


def test_ablation_runs_as_torchrun_jobs_with_checkpoints(tmp_path, capsys):
    # --nproc-per-run 2: each run a 2-process gloo job; one checkpoint folder per (arm, seed)
    out, ckpt = tmp_path / "abl", tmp_path / "ck"
    args = ["ablate", *TINY, "--img-size", "16", "--epochs", "1", "--batch-size", "64", "--device", "cpu",
            "--vary", "mixer=shift,none", "--seeds", "1", "--nproc-per-run", "2", "--checkpoint-dir", str(ckpt),
            "--out", str(out), "--json"]
    assert main(args) == 0
    runs = read_table(out / "runs")
    assert len(runs) == 2 and set(runs["world_size"]) == {2} and set(runs["status"]) == {"ok"}
    assert sorted(p.name.rsplit("-seed", 1)[1] for p in ckpt.iterdir()) == ["0", "0"]
    assert all((p / "row.json").exists() for p in ckpt.iterdir())
    capsys.readouterr()
    assert main(args) == 0 and "0 of 2 runs to train" in capsys.readouterr().out


def test_nproc_per_run_must_split_the_batch(capsys):
    assert main(["ablate", *TINY, "--img-size", "16", "--vary", "mixer=shift,none", "--batch-size", "63",
                 "--nproc-per-run", "2", "--dry-run"]) == 2
    assert "divisible by the world size 2" in capsys.readouterr().err
