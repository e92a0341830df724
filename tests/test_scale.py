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


class _Stop(Exception):
    pass


def _history(row):
    return [(h["loss"], h["top1"], h["top5"], h["lr"]) for h in row["history"]]


@pytest.mark.parametrize("kind", ["small-memory", "small-disk", "deit-loader"])
def test_a_run_stopped_inside_an_epoch_resumes_there_exactly(tmp_path, kind):
    """--checkpoint-every N: a run stopped after a checkpoint taken inside an epoch continues at
    the next step with the same order, augmentation draws and epoch sums — its per-epoch loss,
    top-1, top-5 and lr equal an uninterrupted run's, to the bit; and taking those checkpoints
    changes nothing in an uninterrupted run either."""
    import torch

    from archbench import make_spec
    from archbench.train.inputs import Inputs
    from archbench.train.run import run_experiment

    if kind == "small-memory":
        spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=16, in_chans=1, num_classes=10)
        kw = dict(dataset="digits", recipe=Recipe(epochs=2, batch_size=64), limit_train=448, limit_test=100)
    else:
        data = _folder(tmp_path / "data", n_train=24)
        spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=16, num_classes=2)
        recipe = Recipe(epochs=2, batch_size=8) if kind == "small-disk" else dataclasses.replace(
            PRESETS["deit"], epochs=2, batch_size=8, ema_decay=0.9)
        kw = dict(dataset="imagefolder", data_dir=str(data), recipe=recipe,
                  inputs=Inputs(cache="disk" if kind == "small-disk" else "memory", workers=0))
    plain = run_experiment(spec, seed=3, **kw)
    reference = run_experiment(spec, seed=3, checkpoint_dir=str(tmp_path / "ref"), checkpoint_every=2, **kw)
    assert _history(reference) == _history(plain)

    def stop(epoch, i, loss):
        if (epoch, i) == (1, 4):  # the second epoch's fifth step, after its checkpoint at step 3
            raise _Stop

    ck = tmp_path / "stopped"
    with pytest.raises(_Stop):
        run_experiment(spec, seed=3, checkpoint_dir=str(ck), checkpoint_every=2, on_step=stop, **kw)
    state = torch.load(ck / "last.pt", weights_only=True)
    within = state["within"]  # the last checkpoint was taken inside the second epoch, at an even step
    assert state["step"] % 2 == 0 and 1 <= within["step"] <= 4 and within["seens"][0] > 0
    lines = []
    resumed = run_experiment(spec, seed=3, checkpoint_dir=str(ck), checkpoint_every=2, say=lines.append, **kw)
    assert resumed["resumed_from_epoch"] == 1
    assert f"resuming from {ck / 'last.pt'}: inside epoch 2, after its step {within['step']} of " in " ".join(lines)
    assert _history(resumed) == _history(reference)
    assert (resumed["top1"], resumed.get("ema_top1")) == (reference["top1"], reference.get("ema_top1"))
    import pandas as pd  # the folder's history.csv: a line per epoch, the resumed ones included
    log = pd.read_csv(ck / "history.csv")
    assert log["epoch"].tolist() == [1, 2] and log["top1"].tolist() == [h["top1"] for h in resumed["history"]]


def test_torchrun_killed_inside_an_epoch_resumes_there_exactly(tmp_path):
    """Two gloo ranks with --checkpoint-every 2, the whole job killed (SIGKILL) once a checkpoint
    taken inside an epoch exists, then the same command again: each rank continues with its own
    epoch sums, and the per-epoch loss, top-1, top-5 and lr equal the uninterrupted job's exactly."""
    import torch

    args = [*TINY, "--img-size", "16", "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--seed", "5",
            "--checkpoint-every", "2", "--out", "", "--json"]
    full = _torchrun(*args, "--checkpoint-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    reference = json.loads(full.stdout.strip().splitlines()[-1])
    ck = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "--no-python", ARCHBENCH, "run", *args, "--checkpoint-dir", str(ck)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline, within = time.time() + 240, None
    while within is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        if (ck / "last.pt").exists():  # written whole, then renamed: never half a file
            within = torch.load(ck / "last.pt", weights_only=True).get("within")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert within is not None, "the job ended before a checkpoint inside an epoch was seen"
    assert len(within["seens"]) == 2 and all(n > 0 for n in within["seens"])  # each rank's own sums
    resumed = _torchrun(*args, "--checkpoint-dir", str(ck))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    row = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert _history(row) == _history(reference) and row["top1"] == reference["top1"]


def test_checkpoint_every_reaches_each_ablation_run(tmp_path, monkeypatch, capsys):
    """ablate/study pass --checkpoint-every to every run, with the run's own checkpoint folder."""
    import archbench.train.run as run_module

    seen = []
    real = run_module.run_experiment

    def spy(*args, **kw):
        seen.append((kw["checkpoint_dir"], kw["checkpoint_every"]))
        return real(*args, **kw)

    monkeypatch.setattr(run_module, "run_experiment", spy)
    assert main(["ablate", *TINY, "--img-size", "8", "--epochs", "1", "--limit-train", "200", "--vary",
                 "mixer=shift,none", "--seeds", "1", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every",
                 "2", "--out", str(tmp_path / "abl"), "--json"]) == 0
    assert len(seen) == 2 and all(d.startswith(str(tmp_path / "ck")) and n == 2 for d, n in seen)


@pytest.mark.parametrize("kind", ["small", "deit"])
def test_accumulated_micro_batches_train_as_the_whole_batch(tmp_path, kind):
    """--accum-steps K: each batch as K forward/backward passes, losses weighted by their share,
    one optimiser step. Without batch statistics (GroupNorm here, as LayerNorm) that is the
    whole batch's gradient, so the run reproduces the K = 1 run (the reference): the same
    top-1/top-5 and per-epoch losses up to float summation order (1e-5 relative)."""
    from archbench import make_spec
    from archbench.train.inputs import Inputs
    from archbench.train.run import run_experiment

    if kind == "small":
        spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=16, in_chans=1, num_classes=10)
        kw = dict(dataset="digits", limit_train=448, limit_test=200)
        recipe = Recipe(epochs=2, batch_size=64)
    else:  # Mixup/CutMix on the whole batch first, then split; EMA. Drop path is off: its draws
        # are per micro-batch (the same distribution, other samples dropped), so not the same bits
        spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=16, num_classes=2)
        kw = dict(dataset="imagefolder", data_dir=str(_folder(tmp_path / "data", n_train=24)),
                  inputs=Inputs(cache="memory", workers=0))
        recipe = dataclasses.replace(PRESETS["deit"], epochs=2, batch_size=8, ema_decay=0.9, drop_path=0.0)
    assert spec.norm == "groupnorm"
    whole = run_experiment(spec, recipe=recipe, seed=1, **kw)
    split = run_experiment(spec, recipe=dataclasses.replace(recipe, accum_steps=4), seed=1, **kw)
    for a, b in zip(whole["history"], split["history"], strict=True):
        assert (a["top1"], a["top5"], a["lr"]) == (b["top1"], b["top5"], b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert split["recipe"]["accum_steps"] == 4 and (whole.get("ema_top1"), whole["top1"]) == (
        split.get("ema_top1"), split["top1"])


def test_torchrun_accumulates_as_the_whole_batch(tmp_path):
    """Under DDP (every micro-batch but the last in no_sync, so gradients are reduced once a
    step): 2 gloo ranks × 2 micro-batches give the 2-rank whole-batch run's top-1 and losses
    (1e-5 relative). (Reducing every micro-batch would give the same numbers, only slower.)"""
    args = [*TINY, "--img-size", "16", "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--seed", "5",
            "--limit-train", "448", "--out", "", "--json"]
    rows = []
    for extra in ([], ["--accum-steps", "2"]):
        res = _torchrun(*args, *extra)
        assert res.returncode == 0, res.stderr[-3000:]
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    whole, split = rows
    assert split["recipe"]["accum_steps"] == 2 and split["world_size"] == 2
    for a, b in zip(whole["history"], split["history"], strict=True):
        assert (a["top1"], a["top5"]) == (b["top1"], b["top5"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow  # inductor compiles the forward and backward: about a minute on a 2-core CPU
def test_compiled_training_matches_eager(tmp_path):
    """run --compile trains through torch.compile and ends where the eager run does (the
    reference): the same top-1 and per-epoch losses within 1e-4 (inductor fuses, so float order
    differs); the checkpoint holds the model's own keys, not the compiled wrapper's."""
    import torch

    from archbench import make_spec
    from archbench.train.run import run_experiment

    spec = make_spec(mixer="shift", ffn="mlp", dims=16, depths=1, img_size=16, in_chans=1, num_classes=10)
    kw = dict(recipe=Recipe(epochs=1, batch_size=64), seed=2, limit_train=448, limit_test=200)
    eager = run_experiment(spec, **kw)
    compiled = run_experiment(spec, compile=True, checkpoint_dir=str(tmp_path / "ck"), **kw)
    assert compiled["compile"] is True and eager["compile"] is False
    assert compiled["top1"] == eager["top1"]
    assert compiled["history"][0]["loss"] == pytest.approx(eager["history"][0]["loss"], rel=1e-4)
    keys = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod") for k in keys)


@pytest.mark.parametrize("kind", ["small-memory", "deit-2-workers", "torchrun"])
def test_sigterm_stops_at_a_step_saved_and_the_rerun_resumes_exactly(tmp_path, kind):
    """A scheduler's SIGTERM (sent to the whole process group, loader workers and torchrun's
    ranks included, as SLURM does) stops the run at the next step: one line, exit 143, a
    checkpoint inside the epoch; the same command then ends with the uninterrupted run's
    metrics exactly."""
    import torch

    extra = {"small-memory": [], "deit-2-workers": ["--recipe", "deit", "--batch-size", "32", "--workers", "2"],
             "torchrun": []}[kind]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(ck):
        cmd = _cmd(ck, *extra)
        if kind == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "--no-python", *cmd]
        return cmd

    full = subprocess.run(command(tmp_path / "full"), capture_output=True, text=True, env=env, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = json.loads(full.stdout.strip().splitlines()[-1])
    ck = tmp_path / "stopped"
    proc = subprocess.Popen(command(ck), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (ck / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    ours = [line for line in err.splitlines() if line.startswith("archbench run:")]
    if kind != "torchrun":  # torchrun's agent reports its own exit status for the job
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert len(ours) == 1 and "stopped by " in ours[0] and "the same command resumes there" in ours[0], err[-3000:]
    assert "within" in torch.load(ck / "last.pt", weights_only=True)
    resumed = subprocess.run(command(ck), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    row = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert "inside epoch" in resumed.stdout
    assert _metrics(row) == _metrics(reference) and row["top1"] == reference["top1"]
