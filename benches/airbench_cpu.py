"""Run airbench94 (PyPI `airbench==0.1.8`, unmodified) on the CPU, on our CIFAR-10 copy.

airbench is written for one CUDA GPU in fp16. This adapter changes only what must change for it
to run without CUDA, by replacing torch functions before airbench calls them; airbench's own code
(network, recipe, data loader, whitening, lookahead, TTA) runs as published:

* `Tensor.cuda` / `Module.cuda` return the object itself (everything stays on the CPU);
* `Tensor.half` / `Module.half` become `.float()` (fp16 convolutions on the CPU are slow and
  not what a CPU user would run: fp32), or with `--precision bf16` `.bfloat16()`: the CPU's
  16-bit float in place of the GPU's, everywhere airbench asks for fp16 (its BN layers stay
  fp32, as airbench keeps them; `torch.half` names bf16 too, for airbench's lookahead, which
  averages the weights of that dtype);
* `torch.load` maps onto the CPU (airbench passes `map_location=torch.device(0)`, a GPU);
* `torch.cuda.Event` is a wall-clock timer and `torch.cuda.synchronize` does nothing (CPU work
  is synchronous), so airbench's own timer still measures what it measures on a GPU: training
  and whitening, not its per-epoch evaluations.

Also, as a benchmark harness (not a change to airbench): the data is our copy written in the
layout airbench's `CifarLoader` caches (`cifar10/{train,test}.pt`: uint8 NHWC images, labels,
class names), `torch.manual_seed(seed)` before the run, `torch.set_num_threads(threads)`, and
every table row airbench prints is recorded with the wall-clock time since `--t0` (the
launching script's clock before starting this process, so Python's start and imports count).

    python3 benches/airbench_cpu.py --data-dir DIR --work DIR --seed S --threads T \
        --t0 EPOCH_SECONDS [--precision fp32|bf16] --out run.jsonl

`--data-dir` holds `cifar-10-batches-bin/` (the official binary layout). Writes one JSON line
per airbench row: {"epoch": .., "val_acc": .., "tta_val_acc": .., "airbench_time_s": ..,
"wall_s": ..}; the last row is the final TTA evaluation (epoch "eval").
"""
import argparse
import io
import json
import os
import sys
import time

T_IMPORT = time.time()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--work", required=True, help="folder for airbench's cifar10/*.pt cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--t0", type=float, default=None, help="start time (seconds since the epoch)")
    p.add_argument("--epochs", type=float, default=None, help="airbench's train_epochs (default: its 9.9)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="what airbench's .half() becomes: fp32 (default) or bf16")
    p.add_argument("--out", required=True)
    return p.parse_args()


def read_binary(path, torch):
    """One CIFAR-10 binary batch file: (uint8 NHWC images, int64 labels)."""
    raw = open(path, "rb").read()
    record = 1 + 3 * 32 * 32
    if len(raw) % record != 0:
        sys.exit(f"{path}: {len(raw)} bytes is not a whole number of {record}-byte records")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, record)
    labels = data[:, 0].long()
    images = data[:, 1:].reshape(-1, 3, 32, 32).permute(0, 2, 3, 1).contiguous()
    return images, labels


def write_airbench_cache(data_dir, work, torch):
    """Our copy as airbench's cached cifar10/{train,test}.pt (what its loader writes itself)."""
    base = os.path.join(data_dir, "cifar-10-batches-bin")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    os.makedirs(os.path.join(work, "cifar10"), exist_ok=True)
    splits = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    for split, files in splits.items():
        parts = [read_binary(os.path.join(base, f), torch) for f in files]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        torch.save({"images": images, "labels": labels, "classes": classes},
                   os.path.join(work, "cifar10", f"{split}.pt"))


def patch_for_cpu(torch, precision):
    """The CUDA-only calls airbench makes, replaced by their CPU meaning."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    low = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    torch.Tensor.half = lambda self, *a, **k: self.to(low)
    torch.nn.Module.half = lambda self: self.to(low)
    load = torch.load

    def load_on_cpu(*args, **kwargs):
        kwargs["map_location"] = "cpu"
        half, torch.half = torch.half, torch.float16  # the unpickler's own use of the name
        try:
            return load(*args, **kwargs)
        finally:
            torch.half = half

    torch.load = load_on_cpu

    class WallEvent:
        def __init__(self, *args, **kwargs):
            self.t = None

        def record(self, *args):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return 1e3 * (end.t - self.t)

    torch.cuda.Event = WallEvent
    torch.cuda.synchronize = lambda *a, **k: None


def half_is_bf16(torch):
    """airbench's lookahead averages the weights whose dtype is `torch.half` or `torch.float`
    (utils.py, `LookaheadState.update`): with `--precision bf16` its half weights are bf16, so
    the name means bf16. Set after our own `torch.save` and undone inside `torch.load`, whose
    unpickler maps storage names through `torch.half`."""
    torch.half = torch.bfloat16


class RowRecorder(io.TextIOBase):
    """Passes airbench's output through and records each table row with its wall time."""

    def __init__(self, inner, t0, out):
        self.inner, self.t0, self.out, self.buf = inner, t0, out, ""

    def write(self, s):
        self.inner.write(s)
        self.inner.flush()
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self.row(line)
        return len(s)

    def row(self, line):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[1] in ("epoch", ""):
            return
        num = lambda c: float(c) if c else None  # noqa: E731
        rec = {"epoch": cells[1], "val_acc": num(cells[4]), "tta_val_acc": num(cells[5]),
               "airbench_time_s": num(cells[6]), "wall_s": round(time.time() - self.t0, 2)}
        self.out.write(json.dumps(rec) + "\n")
        self.out.flush()


def main():
    args = parse_args()
    t0 = args.t0 if args.t0 is not None else T_IMPORT
    import torch
    torch.set_num_threads(args.threads)
    patch_for_cpu(torch, args.precision)
    write_airbench_cache(args.data_dir, args.work, torch)
    if args.precision == "bf16":
        half_is_bf16(torch)
    os.chdir(args.work)
    import airbench
    print(f"airbench from {os.path.dirname(airbench.__file__)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, seed {args.seed}, .half() as {args.precision}", file=sys.stderr)
    torch.manual_seed(args.seed)
    with open(args.out, "w") as out:
        sys.stdout = RowRecorder(sys.__stdout__, t0, out)
        kwargs = {} if args.epochs is None else {"epochs": args.epochs}
        airbench.train94(**kwargs)
        sys.stdout = sys.__stdout__


if __name__ == "__main__":
    main()
