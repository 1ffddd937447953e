#!/usr/bin/env python3
"""PyTorch eager as its users run it: a plain loop, warm-up then back-to-back iterations.

The reference for ``benches/compare_pytorch.sh``: ResNeXt-50 (32x4d, CIFAR stem, the model of
``compare_pytorch.py``) training steps (``zero_grad``/forward/``cross_entropy``/backward/
``SGD.step``) and eval forward passes under ``torch.inference_mode()``, NCHW and channels-last,
fp32, 3x32x32 random inputs, N intra-op threads. Prints images/s per variant, with the median
of the per-iteration times and the total over the timed loop::

    PYTHONPATH=<folder above torch> python3 benches/pytorch_plain_loop.py --threads 2

Every variant runs in a fresh process (glibc's allocator adapts to what a process did before:
an eval loop run after training in the same process reuses the heap training left and runs
about 1.5x faster than in a fresh process). ``--gap SECONDS`` sleeps between timed iterations
(0 by default), to see whether idle pauses between steps change the speed.
"""
import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from compare_pytorch import MODELS  # noqa: E402


def run(kind, model, batch, cl, warmup, iters, gap):
    fmt = torch.channels_last if cl else torch.contiguous_format
    net = MODELS[model]().to(memory_format=fmt)
    xs = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    ys = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net.train(kind == "train")

    def step():
        if kind == "train":
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xs), ys)
            loss.backward()
            opt.step()
            return loss.item()
        with torch.inference_mode():
            return net(xs).sum().item()

    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    for _ in range(iters):
        if gap:
            time.sleep(gap)
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - start - gap * iters
    return batch / statistics.median(times), batch * iters / total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--gap", type=float, default=0.0)
    ap.add_argument("--kinds", default="train,eval")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # KIND:LAYOUT, run in this process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        kind, layout = args.one.split(":")
        med, loop = run(kind, "resnext50_32x4d", 64, layout == "channels-last", args.warmup,
                        args.iters, args.gap)
        print(f"| resnext50_32x4d {kind} b64 | {layout} | {med:.2f} | {loop:.2f} |", flush=True)
        return
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, gap {args.gap} s, "
          "a fresh process per variant")
    print("| workload | layout | median images/s | loop images/s |")
    print("|---|---|--:|--:|", flush=True)
    for kind in args.kinds.split(","):
        for layout in ("NCHW", "channels-last"):
            subprocess.run([sys.executable, "-W", "ignore", __file__, "--one", f"{kind}:{layout}",
                            "--threads", str(args.threads), "--warmup", str(args.warmup),
                            "--iters", str(args.iters), "--gap", str(args.gap)], check=True)


if __name__ == "__main__":
    main()
