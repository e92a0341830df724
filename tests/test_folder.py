"""Image folders from disk: scanning, streaming with workers, bad files, the uint8 cache,
the cache choice, and seeded order and augmentation."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from archbench.train.folder import (BadImages, DecodedImages, FileImages, choose_cache, decode_split, decoded_bytes,
                                    image_mode, make_loader, scan_split)


def to_tensor(im):
    return torch.from_numpy(np.array(im, dtype=np.float32) / 255).reshape(im.height, im.width, -1).permute(2, 0, 1)


def small(im):
    return to_tensor(im.resize((8, 8)))


def make_folder(root, per_class=3, sizes=((40, 30), (50, 50)), classes=("cat", "dog"), mode="RGB"):
    """root/<class>/<i>.jpg with a fixed colour per class (red cat, blue dog)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            colour = (200, 0, 0) if c == 0 else (0, 0, 200)
            Image.new("RGB", (w, h), colour).convert(mode).save(root / name / f"{i}.jpg")
    return root


def add_bad(root, name="cat"):
    """A random-bytes ``.jpg`` and a JPEG cut in half, in class ``name``."""
    (root / name / "zz_random.jpg").write_bytes(np.random.default_rng(0).bytes(600))
    good = root / name / "zz_full.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=95)
    data = good.read_bytes()
    (root / name / "zz_truncated.jpg").write_bytes(data[:len(data) // 2])
    good.unlink()
    return [str(root / name / "zz_random.jpg"), str(root / name / "zz_truncated.jpg")]


def run_epoch(loader, bad, epoch=0):
    loader.sampler.set_epoch(epoch)
    labels = []
    for x, y, paths in loader:
        bad.add(paths)
        assert x.dtype == torch.float32 and len(x) == len(y)
        labels += y.tolist()
    return labels


def test_scan_sorted_labels_and_unknown_class(tmp_path):
    root = make_folder(tmp_path / "train", per_class=2)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "._0.jpg").write_bytes(b"macOS resource fork")
    (root / ".ipynb_checkpoints").mkdir()
    files, classes = scan_split(root)
    assert classes == ["cat", "dog"]
    assert [(p.split("/")[-2:], y) for p, y in files] == [(["cat", "0.jpg"], 0), (["cat", "1.jpg"], 0),
                                                          (["dog", "0.jpg"], 1), (["dog", "1.jpg"], 1)]
    val = make_folder(tmp_path / "val", per_class=1, classes=("dog",))
    files, classes = scan_split(val, ["cat", "dog"])  # the training order; a missing class is fine
    assert [y for _, y in files] == [1] and classes == ["cat", "dog"]
    make_folder(tmp_path / "val2", per_class=1, classes=("cat", "emu"))
    with pytest.raises(ValueError, match="not among the training classes: emu"):
        scan_split(tmp_path / "val2", ["cat", "dog"])
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images under"):
        scan_split(tmp_path / "empty")


def test_image_mode(tmp_path):
    assert image_mode(scan_split(make_folder(tmp_path / "grey", mode="L"))[0]) == "L"
    rgb = make_folder(tmp_path / "rgb")
    add_bad(rgb)
    files = scan_split(rgb)[0]
    assert image_mode(files[-2:] + files) == "RGB"  # the bad files first: skipped


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_skips_and_names_bad_files(tmp_path, capfd, workers):
    root = make_folder(tmp_path / "train")
    bad_files = add_bad(root)
    files, _ = scan_split(root)
    warnings = []
    bad = BadImages(warn=warnings.append)
    loader = make_loader(FileImages(files, small, "RGB"), batch_size=2, shuffle=True, drop_last=False,
                         workers=workers, seed=0)
    labels = run_epoch(loader, bad) + run_epoch(loader, bad, epoch=1)
    assert sorted(labels) == [0] * 6 + [1] * 6  # the 6 good images, twice
    assert sorted(bad.paths) == bad_files and len(warnings) == 2  # named once, not once per epoch
    assert bad.summary() == f"skipped 2 unreadable images: {', '.join(bad.paths)}"
    assert "Traceback" not in capfd.readouterr().err


def test_too_many_bad_files_is_one_line(tmp_path, capfd):
    root = make_folder(tmp_path / "train", per_class=2)
    for i in range(12):
        (root / "dog" / f"bad{i:02d}.jpg").write_bytes(b"not a jpeg")
    files, _ = scan_split(root)
    loader = make_loader(FileImages(files, small, "RGB"), batch_size=4, shuffle=False, drop_last=False,
                         workers=2, seed=0)
    with pytest.raises(ValueError) as e:
        run_epoch(loader, BadImages(max_bad=10, warn=lambda line: None))
    msg = str(e.value)
    del e  # its traceback holds the loader: let its workers stop now, not at the session's end
    assert "\n" not in msg and msg.startswith("too many unreadable images (12 so far, e.g. ")  # batches of 4
    assert "dog/bad00.jpg" in msg and msg.endswith("; fix or remove them")
    assert "Traceback" not in capfd.readouterr().err
    assert BadImages().summary() is None
    with pytest.raises(ValueError, match="max_bad must be an integer >= 0, got -1"):
        BadImages(max_bad=-1)


def test_decode_split_is_uint8_at_the_given_size(tmp_path):
    root = make_folder(tmp_path / "train", per_class=3, sizes=((40, 30), (50, 50), (30, 60)))
    # red centre, blue sides: a centre crop keeps only red, a squash would keep blue
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :, 2] = 255
    wide[:, 20:40] = (255, 0, 0)
    Image.fromarray(wide).save(root / "cat" / "3wide.png")
    bad_files = add_bad(root)
    files, _ = scan_split(root)
    seen = []
    x, y, bad = decode_split(files, 16, "RGB", workers=2, progress=lambda done, total: seen.append((done, total)))
    assert x.dtype == torch.uint8 and x.shape == (7, 3, 16, 16)  # never the native 40x30 / 50x50 / ...
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1] and sorted(bad) == bad_files
    assert seen[-1] == (9, 9)
    centre = x[3].float()  # the wide image, in file order after the 3 plain cat images
    assert centre[0].min() > 200 and centre[2].max() < 40
    assert x[5].float()[2].mean() > 150  # a blue dog
    grey, _, _ = decode_split(scan_split(make_folder(tmp_path / "grey", mode="L"))[0], 12, "L", workers=0)
    assert grey.shape == (6, 1, 12, 12) and grey.dtype == torch.uint8
    ds = DecodedImages(x, y, small)
    xb, yb, bad = next(iter(make_loader(ds, batch_size=7, shuffle=False, drop_last=False, workers=0, seed=0)))
    assert xb.shape == (7, 3, 8, 8) and xb.dtype == torch.float32 and yb.tolist() == y.tolist() and bad == []


def test_choose_cache():
    assert decoded_bytes(10, 3, 256) == 10 * 3 * 256 * 256
    n = 10_000  # 1.97 GB at 3 x 256 x 256
    choice, why = choose_cache("auto", n, 3, 256, 0.5)
    assert choice == "disk"
    assert why == "cache auto: the decoded train split is 1.97 GB at 256 px, over --cache-gb 0.5: streaming from disk"
    choice, why = choose_cache("auto", n, 3, 256, 4)
    assert choice == "memory" and "within --cache-gb 4" in why
    assert choose_cache("memory", n, 3, 256, 0.5)[0] == "memory"
    assert choose_cache("disk", n, 3, 256, 100)[0] == "disk"
    with pytest.raises(ValueError, match="unknown --cache 'ram'; allowed: auto, memory, disk"):
        choose_cache("ram", n, 3, 256, 4)
    with pytest.raises(ValueError, match="--cache-gb must be a number >= 0, got -1"):
        choose_cache("auto", n, 3, 256, -1)


class Indices(torch.utils.data.Dataset):
    """Sample i is (i, i), or (draws of python, numpy and torch RNGs, i) with ``draws``."""

    def __init__(self, n, draws=False):
        self.n, self.draws = n, draws

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.draws:
            return torch.tensor([random.random(), np.random.rand(), torch.rand(()).item()]), i
        return torch.tensor(i), i


def order(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [i for _, y, _ in loader for i in y.tolist()]


def test_seeded_order_per_epoch():
    a = make_loader(Indices(40), batch_size=8, shuffle=True, drop_last=False, workers=0, seed=1)
    b = make_loader(Indices(40), batch_size=8, shuffle=True, drop_last=False, workers=0, seed=1)
    assert order(a, 0) == order(b, 0) and sorted(order(a, 0)) == list(range(40))
    assert order(a, 1) != order(a, 0) and order(a, 1) == order(b, 1)
    c = make_loader(Indices(40), batch_size=8, shuffle=True, drop_last=False, workers=0, seed=2)
    assert order(c, 0) != order(a, 0)
    plain = make_loader(Indices(40), batch_size=8, shuffle=False, drop_last=True, workers=0, seed=0)
    assert order(plain, 0) == list(range(40))
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        make_loader(Indices(4), batch_size=2, shuffle=True, drop_last=False, workers=0, seed=-1)


def test_augmentation_draws_are_seeded_per_sample():
    def draws(seed, workers=2, start_epoch=0):
        loader = make_loader(Indices(8, draws=True), batch_size=2, shuffle=True, drop_last=False, workers=workers,
                             seed=seed)
        loader.sampler.set_epoch(start_epoch)
        got = {int(i): x for xb, yb, _ in loader for x, i in zip(xb, yb)}
        loader.sampler.set_epoch(start_epoch + 1)
        nxt = {int(i): x for xb, yb, _ in loader for x, i in zip(xb, yb)}
        return got, nxt

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    (a0, a1), (b0, b1) = draws(0), draws(0)
    assert same(a0, b0) and same(a1, b1)
    assert not same(a0, a1)  # each epoch draws anew
    assert not same(draws(1)[0], a0)
    assert same(draws(0, workers=0)[0], a0)  # the worker count does not change a sample's draws
    assert same(draws(0, start_epoch=1)[0], a1)  # a run resumed at epoch 1 draws what it would have drawn
    assert len({tuple(r.tolist()) for r in a0.values()}) == 8  # every sample its own stream


@pytest.mark.parametrize("img_size, crop_pct", [(32, 0.875), (224, 0.875), (224, 0.9), (160, 0.95), (384, 1.0)])
def test_cache_side_is_timms_eval_resize(img_size, crop_pct):
    """The memory cache holds images at the side timm's eval transform resizes to (the reference:
    its Resize in create_transform(is_training=False)), so evaluating from the cache resamples
    once, as from disk; ceil(img / crop_pct) gave 37 for 32 px and 249 for 224 at 0.9."""
    from timm.data import create_transform
    from torchvision.transforms import Resize

    from archbench.train.inputs import decode_size
    from archbench.train.recipe import Recipe

    timm_eval = create_transform((img_size, img_size), is_training=False, crop_pct=crop_pct)
    resize = next(t for t in timm_eval.transforms if isinstance(t, Resize))
    assert decode_size(Recipe(transform="timm", crop_pct=crop_pct), (img_size, img_size)) == resize.size


def test_timm_transform_normalises_alike_in_memory_and_streaming(tmp_path):
    """With the papers' (timm) transform the model sees ImageNet's mean and std whether the folder
    is held in memory or streamed: --cache is a speed setting, not part of the recipe (the
    memory path used the decoded split's own statistics, a model `archbench eval` misread)."""
    from archbench.train.data import load_imagefolder
    from archbench.train.inputs import IMAGENET_MEAN, IMAGENET_STD, Inputs, make_batches
    from archbench.train.recipe import Recipe

    make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "val", per_class=2)
    data = load_imagefolder(str(tmp_path))
    recipe = Recipe(transform="timm", batch_size=4, augment=False)
    seen = {}
    for cache in ("memory", "disk"):
        batches, chosen = make_batches(data, (16, 16), recipe, Inputs(cache=cache, workers=0), seed=0,
                                       device=torch.device("cpu"))
        assert chosen["cache"] == cache and (chosen["mean"], chosen["std"]) == (IMAGENET_MEAN, IMAGENET_STD)
        seen[cache] = torch.cat([x for x, *_ in batches.eval_batches()])
    # the same pixels too, up to the cache's own resampling (JPEG draft decoding, uint8): one
    # solid colour per class, so the two paths agree closely
    assert torch.allclose(seen["memory"], seen["disk"], atol=0.05)
