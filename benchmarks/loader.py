"""The image-folder loader against the training step on this machine: which one limits training?

Images/s of ``make_loader`` with timm's DeiT training transform at 224 px (RandAugment,
random erasing, bicubic), streaming JPEGs from disk and from the uint8 memory cache, with 1
and 2 workers; the one-off cost of decoding the cache; and the images/s of one training
step (forward + backward + AdamW, fp32) of shiftvit_tiny_light. Writes
results/benchmarks/loader.{csv,md}.

    tar -xzf cifar10-train.tar.gz -C /tmp/c10       # any folder root/<class>/<image> will do
    python benchmarks/loader.py --make-folder /tmp/c10/train --data-dir /tmp/jpeg256
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from archbench import create_model  # noqa: E402
from archbench.measure.speed import device_name  # noqa: E402
from archbench.results import provenance, write_report  # noqa: E402
from archbench.train.compat import patch_timm_posterize  # noqa: E402
from archbench.train.folder import (DecodedImages, FileImages, decode_split, image_mode, make_loader,  # noqa: E402
                                    scan_split)

MODEL, IMG_SIZE, CROP_PCT = "shiftvit_tiny_light", 224, 0.875


def make_folder(src: Path, dest: Path, n: int, size: int) -> None:
    """The first ``n / classes`` images of each class of ``src``, resized to ``size`` x ``size``,
    as JPEG quality 90 in ``dest/<class>/``."""
    files, classes = scan_split(src)
    per = math.ceil(n / len(classes))
    taken: dict[int, int] = {}
    for path, label in files:
        if taken.get(label, 0) < per:
            taken[label] = taken.get(label, 0) + 1
            out = dest / classes[label] / (Path(path).stem + ".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC).save(out, quality=90)


def loader_rate(ds, *, workers: int, batch_size: int, batches: int) -> float:
    """Images/s over ``batches`` batches, after two that start the workers."""
    loader = make_loader(ds, batch_size=batch_size, shuffle=True, drop_last=True, workers=workers, seed=0)
    loader.sampler.set_epoch(0)
    it = iter(loader)
    for _ in range(2):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)[1])
    return n / (time.perf_counter() - t0)


def train_rate(num_classes: int, *, batch_size: int, steps: int) -> float:
    """Images/s of forward + backward + AdamW step, fp32, after one warm-up step."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=num_classes).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, 3, IMG_SIZE, IMG_SIZE), torch.randint(0, num_classes, (batch_size,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="an image folder root/<class>/<image> to stream")
    ap.add_argument("--make-folder", metavar="SRC", help="first fill --data-dir from the image folder SRC")
    ap.add_argument("--images", type=int, default=2000, help="with --make-folder: how many images")
    ap.add_argument("--size", type=int, default=256, help="with --make-folder: their side in pixels")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batches", type=int, default=30, help="loader batches timed per row")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--steps", type=int, default=3, help="training steps timed")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="results/benchmarks/loader")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data_dir)
    if args.make_folder:
        t0 = time.perf_counter()
        make_folder(Path(args.make_folder), root, args.images, args.size)
        print(f"made {root} in {time.perf_counter() - t0:.1f} s", flush=True)
    files, classes = scan_split(root)
    mode = image_mode(files)
    with Image.open(files[0][0]) as im:
        native = im.size
    patch_timm_posterize()  # timm's 0-bit posterize vs Pillow 13: see archbench.train.compat
    transform = create_transform(IMG_SIZE, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                                 interpolation="bicubic")
    load0 = os.getloadavg()[0]
    base = {"batch_size": args.batch_size, "images": len(files), "native_px": f"{native[0]}x{native[1]}",
            "device": device_name(torch.device("cpu")), "threads": args.threads, "classes": len(classes),
            "timed_batches": args.batches, "timed_steps": args.steps, "cores": os.cpu_count()}
    rows = []

    def add(path, workers, img_s, note=""):
        rows.append({"path": path, "workers": workers, "img_s": round(img_s, 1), "note": note, **base})
        print(f"{path:28s} workers {workers}  {img_s:8.1f} img/s  {note}", flush=True)

    workers = [int(w) for w in args.workers.split(",")]
    for w in workers:
        add("stream from disk", w, loader_rate(FileImages(files, transform, mode), workers=w,
                                               batch_size=args.batch_size, batches=args.batches))
    cache_px = math.ceil(IMG_SIZE / CROP_PCT)
    t0 = time.perf_counter()
    x, y, bad = decode_split(files, cache_px, mode, workers=max(workers))
    add("decode to memory cache", max(workers), len(y) / (time.perf_counter() - t0),
        f"once; {x.numel() / 1e6:.0f} MB uint8 at {cache_px} px")
    for w in workers:
        add("memory cache", w, loader_rate(DecodedImages(x, y, transform), workers=w,
                                           batch_size=args.batch_size, batches=args.batches))
    add("train step", 0, train_rate(len(classes), batch_size=args.batch_size, steps=args.steps),
        f"{MODEL}, fwd+bwd+AdamW, fp32, {args.threads} threads")
    load1 = os.getloadavg()[0]

    prov = provenance()
    rows = [{**r, "load_start": round(load0, 1), "load_end": round(load1, 1), **prov} for r in rows]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
    write_md(out.with_suffix(".md"), rows, "python benchmarks/loader.py " + " ".join(sys.argv[1:]))


def write_md(path: Path, rows: list[dict], cmd: str) -> None:
    """The markdown report, from the rows alone (so it can be rebuilt from the CSV)."""
    r0 = rows[0]
    train = next(r["img_s"] for r in rows if r["path"] == "train step")
    one = next(r["img_s"] for r in rows if r["path"] == "stream from disk")
    verdict = (f"Which limits: the model. The training step takes {train:.1f} img/s; one loader worker streams "
               f"{one:.1f} img/s, so feeding training takes about {100 * train / one:.1f} % of one core here."
               if train < one else
               f"Which limits: the loader. The training step takes {train:.1f} img/s, more than one loader worker "
               f"streams ({one:.1f} img/s); more workers (and cores) are needed to keep up.")
    notes = [
        f"Machine: {r0['device']}, {r0['cores']} cores; {r0['images']} JPEGs of {r0['native_px']} in "
        f"{r0['classes']} classes; batch {r0['batch_size']}; timm transform "
        "`create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, "
        "interpolation='bicubic')`, its 0-bit posterize made a black image (as older Pillow did; "
        "Pillow 13 raises).  ",
        f"Loader rows: {r0['timed_batches']} batches timed after 2 warm-up batches; each worker is one process "
        f"(one torch thread). Train step: {r0['timed_steps']} steps timed after one warm-up, on random input, "
        "with no loader running.  ",
        f"The cores were shared with other jobs (load average {r0['load_start']} at the start, {r0['load_end']} "
        "at the end) and rows were measured one after another, so differences between loader rows of less "
        "than about 2x are not meaningful; the gap to the training step is.  ",
        verdict,
    ]
    write_report(path, "Image-folder loader vs the training step", cmd, notes, rows,
                 ["path", "workers", "img_s", "batch_size", "note"])

if __name__ == "__main__":
    main()
