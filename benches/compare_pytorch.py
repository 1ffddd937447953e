#!/usr/bin/env python3
"""This crate against PyTorch eager on the same libtorch, alternating them in one run.

Run through ``benches/compare_pytorch.sh``, which builds the Rust side
(``examples/bench_step.rs``) and points ``PYTHONPATH`` at the torch install whose libtorch the
crate links. This script:

* defines torchvision's ResNeXt in plain PyTorch (``Bottleneck`` with ``groups`` and
  ``width_per_group`` exactly as ``torchvision/models/resnet.py``; CIFAR stem: 3x3 conv,
  stride 1, BN, ReLU, no max-pool), so torchvision is not needed;
* for each workload, starts one fresh timing process per variant and side: the Rust binary or
  this script with ``--serve``; both answer ``setup``/``run`` commands on a pipe, time their
  own iterations and use the same number of intra-op threads;
* sets every variant up (two warm-up iterations each), then runs ROUNDS rounds; in each round
  every variant runs once, ours and PyTorch's alternating: one untimed iteration, then
  ``--steps`` iterations back to back, timed together (a plain loop's steady state, which is
  how users run either side; ``--steps 0`` times one lone iteration instead);
* prints, per workload, the median images/s of every variant, and one table of
  ``workload | ours images/s | PyTorch eager images/s | ratio``.

PyTorch evaluation runs under ``torch.inference_mode()``, training is forward, cross-entropy,
backward and ``torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)`` with
``zero_grad(set_to_none=True)`` (PyTorch's defaults), fp32, random data of the same shapes.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet-B: the stride is in the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNeXt(nn.Module):
    """torchvision's ``ResNet`` with ``Bottleneck`` blocks and the CIFAR stem."""

    def __init__(self, blocks, planes, groups, width_per_group, stem_channels=64, num_classes=10):
        super().__init__()
        self.inplanes = stem_channels
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, stem_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.layers = nn.Sequential(
            *[self._make_layer(p, n, 1 if i == 0 else 2) for i, (n, p) in enumerate(zip(blocks, planes))]
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(planes[-1] * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, n, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * Bottleneck.expansion
        for _ in range(1, n):
            layers.append(Bottleneck(self.inplanes, planes, groups=self.groups, base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


MODELS = {
    # ResNeXtConfig::resnext50_32x4d(10): stages [3, 4, 6, 3], 32 groups of width 4.
    "resnext50_32x4d": lambda: ResNeXt([3, 4, 6, 3], [64, 128, 256, 512], 32, 4),
    # ResNeXtConfig::tiny(10): stem 32, stages [1, 1, 1], 8 groups of width 8.
    "tiny": lambda: ResNeXt([1, 1, 1], [16, 32, 64], 8, 8, stem_channels=32),
}


class Torch:
    """A PyTorch eager workload: ``eval`` or ``train``, ``nchw`` or ``cl`` (channels-last)."""

    def __init__(self, kind, model, batch, variant, device):
        cl = variant == "cl"
        fmt = torch.channels_last if cl else torch.contiguous_format
        self.device = device
        self.net = MODELS[model]().to(device=device, memory_format=fmt)
        self.xs = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        self.kind = kind
        if kind == "train":
            self.net.train()
            self.ys = torch.randint(0, 10, (batch,), device=device)
            self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        else:
            self.net.eval()
        self.run()

    def run(self):
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        if self.kind == "train":
            self.opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.net(self.xs), self.ys)
            loss.backward()
            self.opt.step()
            v = loss.item()
        else:
            with torch.inference_mode():
                v = self.net(self.xs).sum().item()
        sync()
        dt = time.perf_counter() - t
        if v != v:
            raise RuntimeError("non-finite output")
        return dt


class Worker:
    """One timing server process, speaking the pipe protocol of ``examples/bench_step.rs``.

    Every variant of every workload gets a fresh process on each side, so that no variant runs
    in an allocator state left by another one (on a VM, page faults on freshly mapped memory
    are a large, history-dependent part of the time).
    """

    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env)

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        answer = self.p.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"{self.p.args[0]}: `{line}` -> `{answer or 'no answer'}`")
        return answer

    def setup(self, kind, model, batch, variant, steps):
        self.ask(f"setup w {kind} {model} {batch} {variant}")
        command = f"run w {steps}" if steps > 0 else "run w"
        return lambda: float(self.ask(command))

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=60)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.p.kill()


def serve(args):
    """The PyTorch side of the protocol (``--serve``): setup/run/drop/quit on stdin/stdout."""
    device = torch.device(args.device)
    workloads = {}
    for line in sys.stdin:
        words = line.split()
        try:
            if words[:1] == ["setup"] and len(words) == 6:
                _, wid, kind, model, batch, variant = words
                workloads[wid] = Torch(kind, model, int(batch), variant, device)
                answer = "ok"
            elif words[:1] == ["run"] and len(words) == 2:
                answer = repr(workloads[words[1]].run())
            elif words[:1] == ["run"] and len(words) == 3 and int(words[2]) > 0:
                w, k = workloads[words[1]], int(words[2])
                w.run()  # untimed, then k back to back as a plain loop runs them
                answer = repr(sum(w.run() for _ in range(k)) / k)
            elif words[:1] == ["drop"] and len(words) == 2:
                workloads.pop(words[1], None)
                answer = "ok"
            elif words == ["quit"]:
                break
            else:
                answer = f"error bad command `{line.strip()}`"
        except Exception as e:  # noqa: BLE001 - reported to the driver
            answer = f"error {type(e).__name__}: {e}"
        print(answer, flush=True)


# What resnext::memory::keep_freed_memory sets, as glibc's environment variables.
KEEP_FREED_MEMORY_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "2147483647",
    "MALLOC_TOP_PAD_": "268435456",
    "MALLOC_ARENA_MAX": "1",
}

# (name, kind, model, batch, rounds key, ours variants, PyTorch variants,
#  table rows as (ours variant, PyTorch variant)).
EVAL_ROWS = [("inference", "nchw"), ("inference", "cl"), ("plain", "nchw")]
TRAIN_ROWS = [("nchw", "nchw"), ("cl", "nchw"), ("cl", "cl")]
OURS_LABEL = {
    "inference": "InferenceModel",
    "plain": "ResNeXt NCHW",
    "plain-cl": "ResNeXt channels-last",
    "nchw": "NCHW",
    "cl": "channels-last",
}
PT_LABEL = {"nchw": "NCHW", "cl": "channels-last"}


def workloads(cuda):
    if cuda:
        b_eval, b_train, b_tiny = (128, 512), (128, 512), (512,)
    else:
        b_eval, b_train, b_tiny = (64,), (64,), (128,)
    out = []
    for b in b_eval:
        out.append(("resnext50_32x4d eval", "eval", "resnext50_32x4d", b, "rounds", ["inference", "plain"], ["nchw", "cl"], EVAL_ROWS))
    for b in b_tiny:
        out.append(("tiny eval", "eval", "tiny", b, "tiny_rounds", ["inference", "plain"], ["nchw", "cl"], EVAL_ROWS))
    for b in b_train:
        out.append(("resnext50_32x4d train step", "train", "resnext50_32x4d", b, "train_rounds", ["nchw", "cl"], ["nchw", "cl"], TRAIN_ROWS))
    for b in b_tiny:
        out.append(("tiny train step", "train", "tiny", b, "tiny_rounds", ["nchw", "cl"], ["nchw", "cl"], TRAIN_ROWS))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="the built examples/bench_step binary")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=7, help="rounds for ResNeXt-50 eval")
    ap.add_argument("--train-rounds", type=int, default=5, help="rounds for ResNeXt-50 training")
    ap.add_argument("--tiny-rounds", type=int, default=11, help="rounds for the tiny model")
    ap.add_argument("--only", default="", help="run only workloads whose name contains this")
    ap.add_argument("--steps", type=int, default=3,
                    help="per sample: one untimed iteration, then this many back to back, timed "
                         "(a plain loop's steady state); 0: one lone iteration per sample, as "
                         "before 2026-11-29")
    ap.add_argument("--malloc", default="ours", choices=["ours", "both"],
                    help="ours: each side as it comes (ours keeps freed memory, see "
                         "resnext::memory; PyTorch with glibc's defaults); both: both sides "
                         "started with the same MALLOC_* settings")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.serve:
        return serve(args)
    if not args.binary:
        ap.error("--binary is required")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA requested but not available")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  host: {platform.node()}  cpu: {cpu_name()}")
    print(f"# torch {torch.__version__} from {os.path.dirname(torch.__file__)}; device {device}; "
          f"intra-op threads: {torch.get_num_threads()} (both sides); fp32, 3x32x32 random inputs")
    per = (f"1 untimed + {args.steps} back-to-back timed iterations" if args.steps > 0
           else "1 lone iteration")
    print(f"# each round runs every variant once ({per}), ours and PyTorch's alternating; "
          "numbers are medians over rounds; each variant had two warm-up iterations", flush=True)
    env = None
    if args.malloc == "both":
        env = dict(os.environ, **KEEP_FREED_MEMORY_ENV)
        print("# both sides started with " + " ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY_ENV.items()))
    else:
        print("# ours keeps freed memory (resnext::memory::keep_freed_memory); PyTorch runs with glibc's defaults")
    ours_argv = [args.binary, "--threads", str(args.threads), "--device", args.device]
    torch_argv = [sys.executable, "-W", "ignore", os.path.abspath(__file__), "--serve",
                  "--threads", str(args.threads), "--device", args.device]
    table = []
    for name, kind, model, batch, rkey, ovars, pvars, rows in workloads(device.type == "cuda"):
        if args.only and args.only not in name:
            continue
        rounds = getattr(args, rkey)
        label = f"{name} b{batch}"
        print(f"\n## {label}: ours {ovars}, PyTorch {pvars}, one fresh process each; "
              f"{rounds} rounds", flush=True)
        workers, runners = [], []
        try:
            for ov, pv in zip(ovars, pvars):
                for side, argv, variant in (("ours", ours_argv, ov), ("torch", torch_argv, pv)):
                    w = Worker(argv, env)
                    workers.append(w)
                    runners.append(((side, variant), w.setup(kind, model, batch, variant, args.steps)))
            for _, f in runners:  # one more warm-up round, alternating, not counted
                f()
            times = {k: [] for k, _ in runners}
            for r in range(rounds):
                line = []
                for k, f in runners:
                    dt = f()
                    times[k].append(dt)
                    line.append(f"{k[0]} {k[1]} {batch / dt:.1f}")
                print(f"  round {r + 1}/{rounds} (images/s): " + ", ".join(line), flush=True)
        finally:
            for w in workers:
                w.close()
        rate = {k: batch / statistics.median(v) for k, v in times.items()}
        for ov, pv in rows:
            o, p = rate[("ours", ov)], rate[("torch", pv)]
            table.append((f"{label}: ours {OURS_LABEL[ov]} vs PyTorch {PT_LABEL[pv]}", o, p, o / p))
    print()
    w = max(len(r[0]) for r in table) if table else 10
    print(f"| {'workload'.ljust(w)} | ours images/s | PyTorch eager images/s | ratio |")
    print(f"|{'-' * (w + 2)}|--------------:|-----------------------:|------:|")
    for name, o, p, ratio in table:
        print(f"| {name.ljust(w)} | {o:13.2f} | {p:22.2f} | {ratio:5.2f} |")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
