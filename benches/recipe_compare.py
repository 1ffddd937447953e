#!/usr/bin/env python3
"""The PyTorch peer of ``benches/recipe_compare.sh``: the crate's ``tiny`` ResNeXt trained on
the same CIFAR-10 copy with torchvision's own implementations of the recipe's stages, and the
table of every run of the comparison.

Run through ``benches/recipe_compare.sh`` (which sets ``PYTHONPATH`` from
``scripts/setup-python-deps.sh``: torch 2.11, torchvision 0.26). Two modes:

* training (``--data-dir DIR --out RUN_DIR --config a|b|c``): one run, writing
  ``RUN_DIR/metrics.jsonl`` (one JSON per epoch: ``test_acc``, ``ema_test_acc``, ``seconds``,
  ``train_images_per_sec``, ...) and ``RUN_DIR/summary.json`` (``final_test_acc``,
  ``best_test_acc``, ``total_seconds``, ``train_images_per_sec``), the field names of the
  crate's run directory, so one table reads both;
* table (``--table RESULTS_TSV``): the markdown table of the runs listed there;
* pipeline cost (``--data-dir DIR --pipeline-cost N``): microseconds per image of the
  transforms and the batch stage alone on N real images, one process and thread, the cases of
  ``cargo bench --bench data_pipeline`` (crop + flip; + TrivialAugmentWide; + RandomErasing
  0.25; + MixUp/CutMix).

What one run is (the crate's ``TrainConfig::default``, i.e. recipe ``cifar``, unless said):

* net: ``tiny`` (``ResNeXtConfig::tiny``: CIFAR stem of 32 channels, stages [1, 1, 1] of
  planes [16, 32, 64], 8 groups of width 8), torchvision's ``Bottleneck``/``ResNet`` code as
  ``benches/compare_pytorch.py`` defines it (imported from there), channels-last, fp32;
* data: the ``.bin`` records of ``DIR/cifar-10-batches-bin`` read with numpy (the first
  ``--limit-train`` / ``--limit-test`` records, as the crate's limits), per image
  ``torchvision.transforms.v2``: ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
  [``TrivialAugmentWide()``], ``ToDtype(float32, scale=True)``, ``Normalize`` with the crate's
  default CIFAR statistics, [``RandomErasing(p)``]; per batch (in the collate function, as
  torchvision's ``references/classification/train.py``)
  [``RandomChoice([MixUp(alpha=0.2), CutMix(alpha=1.0)])``]; a ``DataLoader`` of batch 128,
  shuffled, last batch kept, with ONE worker process (the crate makes its batches on one
  background thread);
* loss ``CrossEntropyLoss(label_smoothing=...)``; SGD lr 0.1, momentum 0.9, weight decay 5e-4
  (BatchNorm parameters in their own group at ``--norm-weight-decay`` when given, as
  torchvision's ``utils.set_weight_decay``), ``CosineAnnealingLR(T_max=epochs)`` stepped per
  epoch;
* EMA [torchvision's ``utils.ExponentialMovingAverage``: ``AveragedModel`` with
  ``use_buffers=True``, updated after the step of every batch ``i % 32 == 0``, decay 0.99998
  adjusted as ``train.py``: ``alpha = min(1, (1 - decay) * world_size * batch * steps /
  epochs)``];
* evaluation every epoch on the test set, batch 256, of the raw weights and (with EMA) of the
  EMA, [TTA ``flip``: the mean of the logits of the image and its mirror];
* ``torch.set_num_threads(--threads)`` (default 2) in the training process.

Configurations (``[...]`` above): ``a`` = ``cifar``; ``b`` = ``cifar`` + EMA + TTA flip +
label smoothing 0.1; ``c`` = ``cifar`` + TrivialAugmentWide + RandomErasing 0.1 + MixUp 0.2 /
CutMix 1.0 + label smoothing 0.1 + EMA + norm weight decay 0 (torchvision-v2's ops at cifar's
lr, schedule and epochs).
"""
import argparse
import csv
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_pytorch import MODELS, cpu_name  # noqa: E402  (the same torchvision ResNeXt)

# The crate's Normalization::default() (src/data/config.rs).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"

CONFIGS = {
    "a": dict(label_smoothing=0.0, ema=False, tta="none", auto_augment=False, random_erase=0.0,
              mixup_alpha=0.0, cutmix_alpha=0.0, norm_weight_decay=None),
    "b": dict(label_smoothing=0.1, ema=True, tta="flip", auto_augment=False, random_erase=0.0,
              mixup_alpha=0.0, cutmix_alpha=0.0, norm_weight_decay=None),
    "c": dict(label_smoothing=0.1, ema=True, tta="none", auto_augment=True, random_erase=0.1,
              mixup_alpha=0.2, cutmix_alpha=1.0, norm_weight_decay=0.0),
}


def read_bins(folder, names, limit):
    """Labels and uint8 images [N, 3, 32, 32] of the binary records, the first `limit`."""
    raw = np.concatenate([np.fromfile(os.path.join(folder, n), dtype=np.uint8) for n in names])
    records = raw.reshape(-1, 3073)
    if limit is not None:
        records = records[:limit]
    labels = records[:, 0].astype(np.int64)
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(images), torch.from_numpy(labels)


class Images(torch.utils.data.Dataset):
    """uint8 images and labels, each image through `transform`."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


class MixCollate:
    """default_collate, then torchvision's batch stage (a class, so the worker can pickle it)."""

    def __init__(self, mix):
        self.mix = mix

    def __call__(self, batch):
        x, y = torch.utils.data.default_collate(batch)
        return self.mix(x, y) if self.mix is not None else (x, y)


def train_transform(cfg):
    from torchvision.transforms import v2

    ops = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if cfg["auto_augment"]:
        ops.append(v2.TrivialAugmentWide())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if cfg["random_erase"] > 0:
        ops.append(v2.RandomErasing(p=cfg["random_erase"]))
    ops.append(v2.ToPureTensor())
    return v2.Compose(ops)


def batch_mix(cfg):
    from torchvision.transforms import v2

    mixes = []
    if cfg["mixup_alpha"] > 0:
        mixes.append(v2.MixUp(alpha=cfg["mixup_alpha"], num_classes=10))
    if cfg["cutmix_alpha"] > 0:
        mixes.append(v2.CutMix(alpha=cfg["cutmix_alpha"], num_classes=10))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    """torchvision's references/classification/utils.py ExponentialMovingAverage."""

    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param

        super().__init__(model, device, ema_avg, use_buffers=True)


def param_groups(model, weight_decay, norm_weight_decay):
    """torchvision's utils.set_weight_decay with only norm_weight_decay."""
    if norm_weight_decay is None:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    norm_classes = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                    nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)
    norm, other = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            (norm if isinstance(module, norm_classes) else other).append(p)
    return [{"params": other, "weight_decay": weight_decay},
            {"params": norm, "weight_decay": norm_weight_decay}]


@torch.inference_mode()
def evaluate(model, images, labels, tta, batch=256):
    """Accuracy (percent) and mean cross-entropy of `model` on normalised `images`."""
    model.eval()
    correct, loss = 0, 0.0
    for s in range(0, len(labels), batch):
        x = images[s:s + batch].contiguous(memory_format=torch.channels_last)
        y = labels[s:s + batch]
        out = model(x)
        if tta == "flip":
            out = 0.5 * out + 0.5 * model(torch.flip(x, dims=[3]))
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    return 100.0 * correct / len(labels), loss / len(labels)


def train_one_epoch(model, loader, criterion, opt, ema, ema_steps):
    """One epoch; (images, seconds, mean loss)."""
    model.train()
    seen, total_loss, t0 = 0, 0.0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        x = x.contiguous(memory_format=torch.channels_last)
        loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None and i % ema_steps == 0:
            ema.update_parameters(model)
        seen += len(x)
        total_loss += loss.item() * len(x)
    return seen, time.perf_counter() - t0, total_loss / max(seen, 1)


def make_loader(args, cfg, images, labels):
    g = torch.Generator()
    g.manual_seed(args.seed)
    return torch.utils.data.DataLoader(
        Images(images, labels, train_transform(cfg)), batch_size=args.batch_size, shuffle=True,
        drop_last=False, num_workers=args.workers, collate_fn=MixCollate(batch_mix(cfg)),
        generator=g, persistent_workers=args.workers > 0)


def run(args):
    cfg = dict(CONFIGS[args.config])
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    folder = os.path.join(args.data_dir, "cifar-10-batches-bin")
    train_x, train_y = read_bins(folder, TRAIN_FILES, args.limit_train)
    test_u8, test_y = read_bins(folder, [TEST_FILE], args.limit_test)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    test_x = (test_u8.float() / 255.0 - mean) / std

    model = MODELS["tiny"]().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, 5e-4, cfg["norm_weight_decay"]), lr=0.1,
                          momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    ema = None
    if cfg["ema"]:
        adjust = 1 * args.batch_size * args.ema_steps / args.epochs
        alpha = min(1.0, (1.0 - 0.99998) * adjust)
        ema = ExponentialMovingAverage(model, decay=1.0 - alpha)
    loader = make_loader(args, cfg, train_x, train_y)

    os.makedirs(args.out, exist_ok=True)
    metrics, best = [], -1.0
    with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
        for epoch in range(args.epochs):
            t0 = time.perf_counter()
            lr = opt.param_groups[0]["lr"]
            seen, train_s, train_loss = train_one_epoch(model, loader, criterion, opt, ema,
                                                        args.ema_steps)
            sched.step()
            acc, loss = evaluate(model, test_x, test_y, cfg["tta"])
            m = dict(epoch=epoch + 1, train_loss=train_loss, test_loss=loss, test_acc=acc, lr=lr,
                     train_images=seen, train_images_per_sec=seen / train_s)
            if ema is not None:
                m["ema_test_acc"], m["ema_test_loss"] = evaluate(ema.module, test_x, test_y,
                                                                 cfg["tta"])
            m["seconds"] = time.perf_counter() - t0
            best = max(best, acc)
            metrics.append(m)
            f.write(json.dumps(m) + "\n")
            f.flush()
            if not args.quiet:
                print(json.dumps(m), flush=True)
    images = sum(m["train_images"] for m in metrics)
    train_s = sum(m["train_images"] / m["train_images_per_sec"] for m in metrics)
    summary = dict(engine="pytorch", config=args.config, model="tiny", seed=args.seed,
                   epochs=args.epochs, final_test_acc=metrics[-1]["test_acc"],
                   final_test_loss=metrics[-1]["test_loss"], best_test_acc=best,
                   total_seconds=sum(m["seconds"] for m in metrics),
                   train_images_per_sec=images / train_s, threads=torch.get_num_threads(),
                   workers=args.workers, torch=torch.__version__)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def run_row(config, engine, seed, run_dir, wall):
    """One row of the table from a run directory (the crate's or this script's)."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    ema = last.get("ema_test_acc")
    return dict(config=config, engine=engine, seed=seed, final=s["final_test_acc"],
                ema=ema, best=s["best_test_acc"], ips=s["train_images_per_sec"],
                wall=float(wall))


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(path):
    """Prints the markdown tables of the runs listed in `path` (TSV: config engine seed dir wall)."""
    rows = []
    with open(path) as f:
        for config, engine, seed, run_dir, wall in csv.reader(f, delimiter="\t"):
            try:
                rows.append(run_row(config, engine, seed, run_dir, wall))
            except (OSError, KeyError, IndexError, ValueError) as e:
                print(f"(run {config}/{engine}/seed {seed} in {run_dir} left out: {e})")
    rows.sort(key=lambda r: (r["config"], r["seed"], r["engine"]))
    print("| config | engine | seed | final test acc | EMA test acc | best | train images/s | wall time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['engine']} | {r['seed']} | {r['final']:.2f} | "
              f"{fmt(r['ema'], '.2f')} | {r['best']:.2f} | {r['ips']:.0f} | {r['wall']:.0f} |")
    print()
    print("Means over seeds:")
    print()
    print("| config | engine | runs | final test acc | EMA test acc | best | train images/s | wall time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    groups = {}
    for r in rows:
        groups.setdefault((r["config"], r["engine"]), []).append(r)

    def mean(rs, key):
        vals = [r[key] for r in rs if r[key] is not None]
        return statistics.fmean(vals) if vals else None

    def spread(rs, key):
        vals = [r[key] for r in rs if r[key] is not None]
        return f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""

    for (config, engine), rs in groups.items():
        print(f"| {config} | {engine} | {len(rs)} | {mean(rs, 'final'):.2f}{spread(rs, 'final')} | "
              f"{fmt(mean(rs, 'ema'), '.2f')}{spread(rs, 'ema')} | {mean(rs, 'best'):.2f} | "
              f"{mean(rs, 'ips'):.0f} | {mean(rs, 'wall'):.0f} |")


def pipeline_cost(args):
    """Microseconds per image of torchvision's stages, one process, one thread, cases (i)-(iv)
    of `cargo bench --bench data_pipeline` (each with the stages before it)."""
    torch.set_num_threads(1)
    folder = os.path.join(args.data_dir, "cifar-10-batches-bin")
    images, labels = read_bins(folder, TRAIN_FILES, args.pipeline_cost)
    base = dict(CONFIGS["a"])
    cases = [("(i) crop + flip (+ normalise)", {}),
             ("(ii) + TrivialAugmentWide", dict(auto_augment=True)),
             ("(iii) + random erase p 0.25", dict(auto_augment=True, random_erase=0.25)),
             ("(iv) + MixUp 0.2 / CutMix 1.0 batch stage",
              dict(auto_augment=True, random_erase=0.25, mixup_alpha=0.2, cutmix_alpha=1.0))]
    print(f"torchvision {__import__('torchvision').__version__} transforms.v2 on {len(labels)} "
          f"real images, batch {args.batch_size}, 1 process, 1 thread, best of 3")
    print(f"{'stages':<46} {'images/s':>10} {'us/image':>10} {'+us/image':>10}")
    first = None
    for name, over in cases:
        cfg = dict(base, **over)
        data, collate = Images(images, labels, train_transform(cfg)), MixCollate(batch_mix(cfg))
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for s in range(0, len(data), args.batch_size):
                collate([data[i] for i in range(s, min(s + args.batch_size, len(data)))])
            best = min(best, time.perf_counter() - t0)
        us = best * 1e6 / len(data)
        first = us if first is None else first
        print(f"{name:<46} {len(data) / best:>10.0f} {us:>10.2f} {us - first:>10.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", metavar="RESULTS_TSV", help="print the tables of these runs and exit")
    ap.add_argument("--data-dir", help="the folder holding cifar-10-batches-bin/")
    ap.add_argument("--out", help="run directory (metrics.jsonl, summary.json)")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="c")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit-train", type=int)
    ap.add_argument("--limit-test", type=int)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--ema-steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads of training")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--pipeline-cost", type=int, metavar="N",
                    help="time torchvision's stages per image on N training images and exit")
    args = ap.parse_args()
    if args.table:
        table(args.table)
        return
    if args.pipeline_cost:
        if not args.data_dir:
            ap.error("--pipeline-cost needs --data-dir")
        pipeline_cost(args)
        return
    if not args.data_dir or not args.out:
        ap.error("--data-dir and --out are required for a training run")
    if not args.quiet:
        print(f"pytorch {torch.__version__}, config {args.config}, seed {args.seed}, "
              f"{args.threads} threads, {args.workers} worker(s), {cpu_name()}", flush=True)
    run(args)


if __name__ == "__main__":
    main()
