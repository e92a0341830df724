"""Bad input as a new user meets it (issue #16: outputs, data and values), command by command:
each is refused with exit 2 and one line naming the value, before any training — or, where
the input is usable, handled and said in one line. The table of what is covered is
tests/BAD_INPUTS.md."""
import json
import time

import numpy as np
import pytest
from PIL import Image

from archbench.builder import make_spec
from archbench.cli import build_parser, main
from archbench.errors import UsageError
from archbench.results import read_table, save_rows, table_stem

# a 4-stage pyramid (total stride 16 at the default patch 2): small enough to train in a second
PYR = ["--mixer", "shift", "--ffn", "mlp", "--dims", "16", "--depths", "1,1,1,1"]
FAST = ["--epochs", "1", "--batch-size", "4", "--workers", "0"]
DIGITS = ["--limit-train", "40", "--limit-test", "20", "--epochs", "1", "--batch-size", "8"]


def cli(capsys, *argv):
    """(exit code, stdout, stderr, seconds) of ``archbench ARGV`` run in this process."""
    t0 = time.perf_counter()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse refuses a flag value itself
        code = e.code
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    return code, out, err, seconds


def one_line(err: str, command: str) -> str:
    """The error line; asserts it is the only one (argparse's refusals too: cli/main.py's Parser)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[-1].startswith(f"archbench {command}: error: "), err
    return lines[-1]


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if any run starts training."""
    def train(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr("archbench.train.run.train", train)


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Import what the commands import, so that the timings below are of the commands."""
    import archbench.cli.ablate  # noqa: F401
    import archbench.studies.shiftvit  # noqa: F401
    import archbench.train.run  # noqa: F401
    from rich.progress import Progress  # noqa: F401


def folder(root, train_mode="RGB", val_mode=None, size=(28, 28), per_class=6, bad=()):
    """``root/{train,val}/{a,b}/i.png`` random images; ``bad``: (split, name) files that are not images."""
    rng = np.random.default_rng(0)
    for split, mode in (("train", train_mode), ("val", val_mode or train_mode)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = size if mode == "L" else (*size, 3)
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / split / c / f"{i}.png")
    for split, name in bad:
        (root / split / "a" / name).write_bytes(b"not an image")
    return root


# --- outputs ------------------------------------------------------------------------------

OUT_THROUGH_A_FILE = {
    "run": ["run", *PYR, *DIGITS, "--out", "{f}/runs"],
    "profile": ["profile", *PYR, "--img-size", "32", "--no-speed", "--out", "{f}/profile"],
    "ablate": ["ablate", *PYR, *DIGITS, "--vary", "ffn=mlp,msffn", "--seeds", "1", "--out", "{f}/abl"],
    "study": ["study", "shiftvit", "--quick", "--out", "{f}/study"],
    "run --checkpoint-dir": ["run", *PYR, *DIGITS, "--out", "", "--checkpoint-dir", "{f}/ck"],
    "ablate --checkpoint-dir": ["ablate", *PYR, *DIGITS, "--vary", "ffn=mlp,msffn", "--out", "{t}/abl",
                                "--checkpoint-dir", "{f}/ck"],
    "study --checkpoint-dir": ["study", "shiftvit", "--quick", "--out", "{t}/study", "--checkpoint-dir", "{f}/ck"],
}


@pytest.mark.parametrize("command", OUT_THROUGH_A_FILE)
def test_out_through_a_file_fails_at_once(capsys, tmp_path, no_training, command):
    f = tmp_path / "afile"
    f.write_text("")
    argv = [a.replace("{f}", str(f)).replace("{t}", str(tmp_path / "ok")) for a in OUT_THROUGH_A_FILE[command]]
    code, _, err, seconds = cli(capsys, *argv)
    line = one_line(err, argv[0])
    assert code == 2 and f"{command.split()[-1] if '--' in command else '--out'}: {str(f)!r} is a file, not a folder" \
        in line
    assert seconds < 1, seconds  # before any data, model or training
    assert not list(tmp_path.glob("ok/*/runs.*"))  # no table was started


def test_out_where_a_folder_takes_the_tables_name(capsys, tmp_path, no_training):
    (tmp_path / "t.parquet").mkdir()
    code, _, err, seconds = cli(capsys, "run", *PYR, *DIGITS, "--out", tmp_path / "t")
    assert code == 2 and "t.parquet' is a folder, where the table's .parquet file goes" in one_line(err, "run")
    assert seconds < 1


def test_out_that_is_not_a_table(capsys, tmp_path, no_training):
    (tmp_path / "t.parquet").write_text("notes, not a table")
    code, _, err, seconds = cli(capsys, "run", *PYR, *DIGITS, "--out", tmp_path / "t")
    assert code == 2 and "t.parquet' exists but is not a parquet table" in one_line(err, "run")
    assert seconds < 1


@pytest.mark.parametrize("command", ["ablate", "study"])
def test_out_empty_names_no_folder(capsys, no_training, command):
    argv = ["ablate", *PYR, *DIGITS, "--vary", "ffn=mlp,msffn"] if command == "ablate" else ["study", "shiftvit", "--quick"]
    code, _, err, _ = cli(capsys, *argv, "--out", "")
    assert code == 2 and "--out '' names no folder" in one_line(err, command)


@pytest.mark.parametrize("out,default,stem", [
    ("exp/run.v2", "runs", "exp/run.v2"),  # dots are kept
    ("exp/run.v2.parquet", "runs", "exp/run.v2"),  # a table's own suffix is not doubled
    ("exp/runs.csv", "runs", "exp/runs"),
    ("new/", "runs", "new/runs"),  # a path ending in / is a folder
    ("exp/run.v2", None, "exp/run.v2"),
])
def test_table_stem(tmp_path, monkeypatch, out, default, stem):
    monkeypatch.chdir(tmp_path)
    assert table_stem(out, default).as_posix() == stem


def test_run_out_keeps_dots_and_writes_into_a_folder(capsys, tmp_path):
    code, *_ = cli(capsys, "run", *PYR, *DIGITS, "--out", tmp_path / "exp" / "run.v2", "--json")
    assert code == 0 and len(read_table(tmp_path / "exp" / "run.v2")) == 1
    assert sorted(p.name for p in (tmp_path / "exp").glob("run*")) == ["run.v2.csv", "run.v2.lock", "run.v2.parquet"]
    code, out, *_ = cli(capsys, "profile", *PYR, "--img-size", "32", "--no-speed", "--out", tmp_path / "exp", "--json")
    assert code == 0 and len(read_table(tmp_path / "exp" / "profile")) == 1  # an existing folder: the table inside


def test_a_row_is_never_lost_when_the_table_cannot_be_written(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("archbench.results.append_rows", full)
    code, _, err, _ = cli(capsys, "run", *PYR, *DIGITS, "--out", tmp_path / "runs")
    line = one_line(err, "run")
    assert code == 2 and "No space left on device" in line and "the row is kept in" in line
    kept = line.rsplit("kept in ", 1)[1]
    assert kept.startswith(str(tmp_path)) and json.loads(open(kept).read())[0]["top1"] is not None


def test_a_bug_while_saving_keeps_the_rows_and_stays_a_bug(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def broken(*a, **k):
        raise TypeError("a column the table cannot hold")
    monkeypatch.setattr("archbench.results.append_rows", broken)
    with pytest.raises(TypeError) as e:  # a traceback (exit 1), not dressed as bad input
        save_rows(tmp_path / "t", [{"top1": 1.0}])
    (note,) = e.value.__notes__
    assert json.loads(open(note.rsplit("kept in ", 1)[1]).read()) == [{"top1": 1.0}]


# --- data ---------------------------------------------------------------------------------

def test_run_skips_and_names_a_corrupt_image(capsys, tmp_path):
    # decoded into memory (streaming from disk: tests/test_folder.py); the row counts it either way
    data = folder(tmp_path / "d", bad=[("train", "bad.png"), ("val", "bad.png")])
    code, out, err, _ = cli(capsys, "run", *PYR, *FAST, "--dataset", "imagefolder", "--data-dir", data,
                            "--cache", "memory", "--img-size", "32", "--out", "", "--json")
    assert code == 0 and "Traceback" not in err and "PIL" not in err
    assert f"skipping unreadable image {data / 'train' / 'a' / 'bad.png'}" in err
    assert "bad.png" in json.loads(out.strip().splitlines()[-1])["skipped_images"]


def test_eval_skips_and_names_a_corrupt_image(capsys, tmp_path):
    import torch

    from archbench.models import create_model

    data = folder(tmp_path / "d", bad=[("val", "bad.png")])
    torch.save(create_model("deit_tiny", img_size=32, patch_size=4, num_classes=2).state_dict(), tmp_path / "w.pth")
    code, out, err, _ = cli(capsys, "eval", "--model", "deit_tiny", "--pretrained", tmp_path / "w.pth", "--img-size",
                            "32", "--patch-size", "4", "--num-classes", "2", "--data-dir", data / "val", "--workers",
                            "0", "--json")
    assert code == 0 and "Traceback" not in err
    assert f"skipping unreadable image {data / 'val' / 'a' / 'bad.png'}" in err
    row = json.loads(out.strip().splitlines()[-1])
    assert row["images"] == 12 and "bad.png" in row["skipped_images"]


@pytest.mark.parametrize("train,val,chans,said", [
    ("L", "RGB", 1, "val/ has colour images and train/ greyscale ones: val/ is read as greyscale too"),
    ("RGB", "L", 3, "val/ has greyscale images and train/ colour ones: val/ is read as colour too"),
])
def test_grey_and_colour_splits_are_reconciled_when_opened(tmp_path, train, val, chans, said):
    from archbench.train.data import load_dataset

    data = load_dataset("imagefolder", str(folder(tmp_path / "d", train, val)))
    assert data.in_chans == chans and len(data.notes) == 1 and said in data.notes[0]


def test_run_on_grey_train_and_colour_val_trains_and_says_so(capsys, tmp_path):
    data = folder(tmp_path / "d", "L", "RGB")
    code, out, err, _ = cli(capsys, "run", *PYR, *FAST, "--dataset", "imagefolder", "--data-dir", data,
                            "--img-size", "32", "--out", "", "--json")
    assert code == 0 and "Traceback" not in err
    assert "note: val/ has colour images and train/ greyscale ones" in out
    assert json.loads(json.loads(out.strip().splitlines()[-1])["spec"])["in_chans"] == 1


def test_one_colour_image_among_grey_ones_makes_the_folder_colour(tmp_path):
    from archbench.train.folder import image_mode, scan_split

    data = folder(tmp_path / "d", "L")
    Image.new("RGB", (28, 28), (200, 10, 10)).save(data / "train" / "b" / "9.png")  # the last file
    assert image_mode(scan_split(data / "train")[0]) == "RGB"


# --- memory -------------------------------------------------------------------------------

def test_check_refuses_a_model_too_big_for_the_machine(capsys):
    code, _, err, seconds = cli(capsys, "check", "--dims", "200000")
    line = one_line(err, "check")
    assert code == 2 and "2.88 T parameters" in line and "11.5 TB" in line and "available" in line
    assert seconds < 2  # estimated on the meta device: nothing allocated


def test_run_refuses_a_model_bigger_than_the_free_memory_before_training(capsys, monkeypatch, no_training):
    monkeypatch.setattr("archbench.measure.memory.available_bytes", lambda device="cpu": (1000, "RAM available"))
    code, _, err, _ = cli(capsys, "run", *PYR, *DIGITS, "--out", "")
    line = one_line(err, "run")
    assert code == 2 and "needs at least" in line and "to train it" in line and "1 KB is RAM available" in line


# --- values -------------------------------------------------------------------------------

FLAG_VALUES = [  # refused by argparse while parsing: nothing is loaded
    (["spec", "--img-size", "0"], "--img-size", "'0'"),
    (["spec", "--img-size", "32x0"], "--img-size", "'32x0'"),
    (["spec", "--patch-size", "0"], "--patch-size", "got 0"),
    (["spec", "--in-chans", "0"], "--in-chans", "got 0"),
    (["spec", "--num-classes", "-1"], "--num-classes", "got -1"),
    (["profile", "--mixer", "shift", "--repeats", "0"], "--repeats", "must be >= 1, got 0"),
    (["check", "--batch-size", "0"], "--batch-size", "got 0"),
    (["check", "--seed", "-1"], "--seed", "got -1"),
    (["run", "--seed", "-1"], "--seed", "got -1"),
    (["ablate", "--vary", "ffn=mlp,msffn", "--seed-start", "-1"], "--seed-start", "got -1"),
    (["study", "shiftvit", "--jobs", "0"], "--jobs", "got 0"),
    (["study", "shiftvit", "--estimate-batch", "0"], "--estimate-batch", "got 0"),
    (["eval", "--model", "deit_tiny", "--pretrained", "w", "--data-dir", ".", "--batch-size", "0"], "--batch-size",
     "got 0"),
    (["eval", "--model", "deit_tiny", "--pretrained", "w", "--data-dir", ".", "--workers", "-1"], "--workers",
     "got -1"),
]


@pytest.mark.parametrize("argv,flag,value", FLAG_VALUES, ids=[" ".join([a[0], *a[-2:]]) for a, *_ in FLAG_VALUES])
def test_a_count_or_size_flag_refuses_zero_and_negatives(capsys, argv, flag, value):
    code, _, err, seconds = cli(capsys, *argv)
    line = one_line(err, argv[0])
    assert code == 2 and f"argument {flag}: " in line and value in line
    assert seconds < 1


SET_VALUES = [  # refused when the spec is made, naming the field, the value and what is allowed
    (["--set", "class_token=1.5"], "class_token must be true or false, got 1.5"),
    (["--mixer", "shift", "--set", "pos_embed=maybe"], "pos_embed must be true or false, got 'maybe'"),
    (["--set", "layer_scale_bias=2"], "layer_scale_bias must be true or false, got 2"),
    (["--set", "stem={norm: maybe}"], "stem.norm must be true or false, got 'maybe'"),
    (["--set", "norm_eps=true"], "norm_eps must be a number, got True"),
    (["--set", "block_pos=1.5"], "block_pos must be an integer, got 1.5"),
    (["--set", "options=5"], "options must be a mapping of option names to values"),
    (["--set", "img_size=abc"], "img_size must be an int or (height, width), got 'abc'"),
    (["--set", "norm=5"], "unknown norm 5; known: batchnorm"),
]


@pytest.mark.parametrize("argv,needle", SET_VALUES, ids=[a[-1] for a, _ in SET_VALUES])
def test_set_values_are_checked_by_type(capsys, argv, needle):
    code, _, err, _ = cli(capsys, "spec", "--img-size", "32", *argv)
    assert code == 2 and needle in one_line(err, "spec")


@pytest.mark.parametrize("kw,needle", [
    (dict(img_size=0), "img_size must be a positive integer, got 0"),
    (dict(patch_size=0), "stem.patch_size must be a positive integer, got 0"),
    (dict(in_chans=0), "in_chans must be a positive integer, got 0"),
    (dict(mixer="shift", macro=""), "unknown macro-architecture ''"),
])
def test_zero_is_never_unset_in_the_shorthand(kw, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        make_spec(**kw)


def test_ablate_empty_name(capsys, no_training):
    code, _, err, _ = cli(capsys, "ablate", *PYR, "--vary", "ffn=mlp,msffn", "--name", "", "--dry-run")
    assert code == 2 and "--name '' is no name" in one_line(err, "ablate")


# --- the data's size ----------------------------------------------------------------------

def sized(tmp_path, *argv):
    """The spec ``run ARGV`` would train, and the notes said on the way (no training)."""
    from archbench.cli.args import data_into_args, spec_from_args

    args = build_parser().parse_args(["run", *map(str, argv)])
    notes = []
    data_into_args(args, say=notes.append)
    return spec_from_args(args), notes


@pytest.mark.parametrize("argv,size", [
    (["--dataset", "imagefolder", "--data-dir", "{d}"], 32),  # 28 px, total stride 16
    (["--dataset", "imagefolder", "--data-dir", "{d}", "--patch-size", "4"], 32),  # 28 px, total stride 32
    (["--patch-size", "4"], 32),  # digits at 16 px, total stride 32
])
def test_data_that_does_not_fit_the_pyramid_gets_the_nearest_size(tmp_path, argv, size):
    d = folder(tmp_path / "d", "L")
    spec, notes = sized(tmp_path, *PYR, *[a.replace("{d}", str(d)) for a in argv])
    assert spec.img_size == (size, size)
    (note,) = notes
    assert f"images do not fit this model" in note and f"training at {size}x{size}, the nearest size" in note


def test_data_that_fits_is_left_alone_and_a_given_size_is_never_changed(capsys, tmp_path, no_training):
    spec, notes = sized(tmp_path, *PYR)
    assert spec.img_size == (16, 16) and notes == []  # digits at 16 px, total stride 16
    d = folder(tmp_path / "d", "L")
    code, _, err, _ = cli(capsys, "run", *PYR, *FAST, "--dataset", "imagefolder", "--data-dir", d, "--img-size", "28",
                          "--out", "")
    assert code == 2 and "img_size 28x28 is not divisible by the pyramid's total stride" in one_line(err, "run")


def test_run_on_28px_images_trains_at_32(capsys, tmp_path):
    d = folder(tmp_path / "d", "L")
    code, out, err, _ = cli(capsys, "run", *PYR, *FAST, "--dataset", "imagefolder", "--data-dir", d, "--out", "",
                            "--json")
    assert code == 0 and "training at 32x32" in out
    assert json.loads(json.loads(out.strip().splitlines()[-1])["spec"])["img_size"] == [32, 32]
