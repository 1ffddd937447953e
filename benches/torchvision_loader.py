#!/usr/bin/env python3
"""torchvision's side of ``benches/image_loader.sh``: the same measurements as
``examples/bench_images.rs``, on the same files, the way torchvision's users load images.

* default (loader) mode: ``torchvision.datasets.ImageFolder`` with
  ``Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(),
  Normalize(ImageNet mean, std)])`` (PIL decoding, torchvision's default loader) in a
  ``DataLoader(batch_size=B, shuffle=True, num_workers=N, persistent_workers=True)``; one
  warm-up epoch (it starts the worker processes and fills the page cache), then ``--epochs``
  epochs timed together: images/s and images/s per worker. Everything else is left at
  torchvision's defaults (one torch thread per worker, prefetch factor 2, collation in the
  workers; ``pin_memory`` only matters for a GPU);
* ``--decode-only``: single-thread PIL decoding (``Image.open(...).convert("RGB")``, what
  ``ImageFolder``'s loader does) of every JPEG, read into memory first; median of ``--rounds``;
* ``--stages``: single-thread cost per picture of PIL decoding, ``RandomResizedCrop`` +
  ``RandomHorizontalFlip`` on the PIL image, and ``ToTensor`` + ``Normalize``.

Each mode prints a summary to stderr and one JSON line prefixed ``RESULT `` to stdout.
Run with the torch the crate links, e.g.
``PYTHONPATH=/root/.cache/resnext/libtorch-2.11.0:/root/.cache/resnext/python-deps``.
"""
import argparse
import io
import json
import statistics
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def say(*parts):
    print(*parts, file=sys.stderr, flush=True)


def train_transform(size):
    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def loader(args):
    torch.manual_seed(args.seed)
    dataset = datasets.ImageFolder(args.data_dir, transform=train_transform(args.size))
    data = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                      num_workers=args.workers, persistent_workers=args.workers > 0)

    def epoch():
        seen = 0
        for images, _labels in data:
            seen += images.shape[0]
        return seen

    epoch()  # warm-up
    per_epoch, total = [], 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        t = time.perf_counter()
        seen = epoch()
        assert seen == len(dataset), (seen, len(dataset))
        per_epoch.append(seen / (time.perf_counter() - t))
        total += seen
    rate = total / (time.perf_counter() - start)
    per_worker = rate / max(args.workers, 1)
    say(f"torchvision: {len(dataset)} images, {args.epochs} epochs (after a warm-up), "
        f"{args.workers} workers, batch {args.batch_size}: {rate:.1f} images/s, "
        f"{per_worker:.1f} images/s per worker "
        f"(epochs: {', '.join(f'{r:.1f}' for r in per_epoch)})")
    print("RESULT " + json.dumps({
        "mode": "loader", "images": len(dataset), "epochs": args.epochs,
        "workers": args.workers, "batch_size": args.batch_size, "size": args.size,
        "images_per_s": rate, "images_per_s_per_worker": per_worker,
        "epoch_images_per_s": per_epoch,
    }), flush=True)


def read_jpegs(root):
    dataset = datasets.ImageFolder(root)
    files = []
    for path, _ in dataset.samples:
        if path.lower().endswith((".jpg", ".jpeg")):
            with open(path, "rb") as f:
                files.append(f.read())
    if not files:
        sys.exit(f"no JPEG files under {root}")
    return files


def pil_rgb(data):
    return Image.open(io.BytesIO(data)).convert("RGB")


def decode_only(args):
    files = read_jpegs(args.data_dir)
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for data in files:
            pil_rgb(data)
        rates.append(len(files) / (time.perf_counter() - t))
    rate = statistics.median(rates)
    say(f"decode, 1 thread, {len(files)} JPEGs, median of {args.rounds} rounds:")
    say(f"  PIL {Image.__version__} (torchvision's loader): {rate:8.1f} images/s")
    print("RESULT " + json.dumps({"mode": "decode", "files": len(files),
                                  "rounds": args.rounds, "pil_images_per_s": rate}),
          flush=True)


def stages(args):
    torch.set_num_threads(1)  # as in a DataLoader worker
    torch.manual_seed(args.seed)
    files = read_jpegs(args.data_dir)
    crop = transforms.Compose([transforms.RandomResizedCrop(args.size),
                               transforms.RandomHorizontalFlip()])
    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    decoded = [pil_rgb(d) for d in files]
    cropped = [crop(img) for img in decoded]
    n = len(files)
    decode_us, crop_us, norm_us = [], [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for data in files:
            pil_rgb(data)
        decode_us.append((time.perf_counter() - t) * 1e6 / n)
        t = time.perf_counter()
        for img in decoded:
            crop(img)
        crop_us.append((time.perf_counter() - t) * 1e6 / n)
        t = time.perf_counter()
        for img in cropped:
            to_input(img)
        norm_us.append((time.perf_counter() - t) * 1e6 / n)
    decode, resize, norm = (statistics.median(v) for v in (decode_us, crop_us, norm_us))
    total = decode + resize + norm
    say(f"stages, 1 thread, {n} JPEGs, microseconds per image (median of {args.rounds} rounds):")
    say(f"  decode (PIL)                     {decode:8.0f}")
    say(f"  RandomResizedCrop + flip (PIL)   {resize:8.0f}")
    say(f"  ToTensor + Normalize             {norm:8.0f}")
    say(f"  total                            {total:8.0f}  ({1e6 / total:.1f} images/s)")
    print("RESULT " + json.dumps({
        "mode": "stages", "files": n, "rounds": args.rounds, "decode_us": decode,
        "resize_us": resize, "normalise_us": norm, "total_us": total,
    }), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="an ImageFolder root")
    p.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after a warm-up epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--decode-only", action="store_true", help="single-thread PIL decoding")
    p.add_argument("--stages", action="store_true", help="single-thread cost of each stage")
    p.add_argument("--rounds", type=int, default=3, help="passes (decode-only, stages)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.decode_only:
        decode_only(args)
    elif args.stages:
        stages(args)
    else:
        loader(args)


if __name__ == "__main__":
    main()
