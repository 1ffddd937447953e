#!/usr/bin/env python3
"""PyTorch/torchvision side of the weight-exchange parity checks (tests/weights.rs).

Needs torch 2.11.0, torchvision 0.26.0 and safetensors; scripts/setup-python-deps.sh installs them
into a cache and prints the PYTHONPATH to use, e.g.

    eval "$(scripts/setup-python-deps.sh | tail -n1)"
    python3 scripts/pytorch/parity.py make --stem cifar --out /tmp/parity

Models (both torchvision's ResNeXt-50 32x4d, with torchvision's state_dict names):
  * imagenet: torchvision.models.resnext50_32x4d() as it is (7x7 stem, max-pool, 1000 classes);
  * cifar:    the same with conv1 = Conv2d(3, 64, 3, 1, 1, bias=False), maxpool = Identity()
              and fc = Linear(2048, 10), the crate's Stem::Cifar.

Commands (every file is safetensors):
  make        random weights with randomised BN statistics (weight, bias, running_mean,
              running_var, num_batches_tracked) -> OUT/weights.safetensors (the state_dict), and
              OUT/data.safetensors with `input` [B, 3, S, S], `labels` [B] (int64) and `logits`
              (eval mode, no_grad) of that input.
  logits      loads WEIGHTS with load_state_dict(strict=True) and writes the eval-mode `logits`
              of the `input` tensor of INPUT to OUT.
  train-step  loads WEIGHTS (strict=True), takes one torch.optim.SGD step (lr 0.1, momentum 0.9,
              weight decay 5e-4 by default) in train mode on `input`/`labels` of DATA with the
              mean cross-entropy, and writes the updated state_dict (parameters, BN running
              statistics, num_batches_tracked) to OUT, with the loss in the metadata (`loss`).
"""
import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file, save_file

DEFAULT_CLASSES = {"imagenet": 1000, "cifar": 10}
DEFAULT_SIZE = {"imagenet": 224, "cifar": 32}


def build(stem: str, num_classes: int) -> nn.Module:
    """torchvision's resnext50_32x4d with the given stem and number of classes."""
    model = torchvision.models.resnext50_32x4d(weights=None)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    if num_classes != model.fc.out_features:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def randomise_batch_norm(model: nn.Module, gen: torch.Generator) -> None:
    """Gives every BN layer random affine parameters and running statistics, so that a loader
    that forgets or mixes up any of them gives different logits."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))


def load(stem: str, num_classes: int, path: str) -> nn.Module:
    model = build(stem, num_classes)
    model.load_state_dict(load_file(path), strict=True)
    return model


def cmd_make(args: argparse.Namespace) -> None:
    classes = args.classes or DEFAULT_CLASSES[args.stem]
    size = args.size or DEFAULT_SIZE[args.stem]
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = build(args.stem, classes)
    randomise_batch_norm(model, gen)
    x = torch.randn(args.batch, 3, size, size, generator=gen)
    labels = torch.randint(0, classes, (args.batch,), generator=gen)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    os.makedirs(args.out, exist_ok=True)
    save_file(model.state_dict(), os.path.join(args.out, "weights.safetensors"))
    save_file(
        {"input": x.contiguous(), "labels": labels, "logits": logits.contiguous()},
        os.path.join(args.out, "data.safetensors"),
    )
    print(f"{args.stem}: {len(model.state_dict())} tensors, logits {list(logits.shape)} -> {args.out}")


def cmd_logits(args: argparse.Namespace) -> None:
    model = load(args.stem, args.classes or DEFAULT_CLASSES[args.stem], args.weights).eval()
    x = load_file(args.input)["input"]
    with torch.no_grad():
        logits = model(x)
    save_file({"logits": logits.contiguous()}, args.out)
    print(f"logits {list(logits.shape)} -> {args.out}")


def cmd_train_step(args: argparse.Namespace) -> None:
    model = load(args.stem, args.classes or DEFAULT_CLASSES[args.stem], args.weights).train()
    data = load_file(args.data)
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    opt.zero_grad()
    loss = F.cross_entropy(model(data["input"]), data["labels"])
    loss.backward()
    opt.step()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, args.out, metadata={"loss": repr(loss.item())})
    print(f"loss {loss.item():.6f}; updated state_dict -> {args.out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--stem", choices=["imagenet", "cifar"], required=True)
        p.add_argument("--classes", type=int, default=None, help="default: 1000 (imagenet), 10 (cifar)")

    p = sub.add_parser("make", help="random weights, an input and its logits")
    common(p)
    p.add_argument("--out", required=True, help="folder for weights.safetensors and data.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="image side; default 224 (imagenet), 32 (cifar)")
    p.set_defaults(func=cmd_make)

    p = sub.add_parser("logits", help="eval logits of an input with given weights (strict load)")
    common(p)
    p.add_argument("--weights", required=True)
    p.add_argument("--input", required=True, help="safetensors file with an `input` tensor")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_logits)

    p = sub.add_parser("train-step", help="one SGD step in train mode (strict load)")
    common(p)
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="safetensors file with `input` and `labels`")
    p.add_argument("--out", required=True)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.set_defaults(func=cmd_train_step)

    args = parser.parse_args()
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
