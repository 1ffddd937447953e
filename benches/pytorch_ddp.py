#!/usr/bin/env python3
"""PyTorch's data-parallel training as its users run it, the peer of
``examples/bench_data_parallel.rs``: the same model (``compare_pytorch.MODELS``, CIFAR stem),
channels-last, SGD with momentum, random 3x32x32 inputs, the same global batch, timed as one
process with N threads and as N processes of one thread under ``DistributedDataParallel``
(Gloo, default 25 MB buckets, ``broadcast_buffers``), each in fresh processes, rounds
alternating, medians::

    PYTHONPATH=<folder above torch> python3 benches/pytorch_ddp.py --model tiny --batch 128

Prints a markdown table like the Rust benchmark's, and ``RESULT`` JSON lines.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from compare_pytorch import MODELS  # noqa: E402


def train(model, batch, steps, ddp):
    torch.manual_seed(1)
    net = MODELS[model]().to(memory_format=torch.channels_last)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xs = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    ys = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xs), ys).backward()
        opt.step()

    for _ in range(3):
        step()
    if ddp:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def child(args):
    world = int(os.environ["BENCH_WORLD"])
    if world == 1:
        torch.set_num_threads(args.nproc)
        print(train(args.model, args.batch, args.steps, False))
        return
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=world)
    t = train(args.model, args.batch // world, args.steps, True)
    if dist.get_rank() == 0:
        print(t)
    dist.destroy_process_group()


def launch(args, world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, BENCH_WORLD=str(world), RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, __file__] + sys.argv[1:], env=env,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"a rank failed: {[p.returncode for p in procs]}")
    return float(outs[0].split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if "BENCH_WORLD" in os.environ:
        return child(args)
    one, many = [], []
    for r in range(args.rounds):
        one.append(launch(args, 1))
        many.append(launch(args, args.nproc))
        print(f"round {r + 1}: {1e3 * one[-1]:.1f} / {1e3 * many[-1]:.1f} ms a step", file=sys.stderr)
    one, many = statistics.median(one), statistics.median(many)
    n = args.nproc
    print(f"PyTorch {torch.__version__} {args.model} on the CPU, global batch {args.batch}, "
          f"{args.steps} timed steps, medians of {args.rounds} rounds")
    print("| configuration | images/s | ms/step |")
    print("|---|---|---|")
    print(f"| 1 process x {n} threads | {args.batch / one:.0f} | {1e3 * one:.1f} |")
    print(f"| {n} processes x 1 thread (DDP, Gloo) | {args.batch / many:.0f} | {1e3 * many:.1f} |")
    for name, t in (("pytorch-1proc", one), ("pytorch-ddp", many)):
        print("RESULT " + json.dumps({"impl": name, "model": args.model, "batch": args.batch,
                                      "images_per_sec": args.batch / t}))


if __name__ == "__main__":
    main()
