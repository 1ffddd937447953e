"""Time to accuracy on CIFAR-10: the parts of benches/time_to_accuracy.sh written in Python.

    time_to_accuracy.py ours --binary B --data-dir D --seed S --threads T --t0 T0 --run-dir R --out run.jsonl [--device cuda]
    time_to_accuracy.py pytorch --config CONFIG.json --data-dir D --seed S --threads T --t0 T0 --out run.jsonl
    time_to_accuracy.py table --targets 0.90,0.93 RUN.jsonl...
    time_to_accuracy.py plot --out curves.svg RUN.jsonl...

Every run writes one JSON line per evaluation, {"engine", "seed", "epoch", "test_acc",
"wall_s", "final"}, `wall_s` counted from `--t0` (the launching script's clock right before
it started the process: start-up, data loading, whitening and every evaluation count). The last
line of a run (`"final": true`) is its final evaluation, with the test-time augmentation
each engine uses.

* `ours` runs our `train_cifar10` binary and records each line of its metrics.jsonl when it
  appears (polled every 0.2 s), then the final accuracy from summary.json.
* `pytorch` trains the same network with the same recipe in PyTorch: the network from
  scripts/pytorch/fast_net.py, the settings from the JSON our binary prints with
  `--print-config`, written as a plain PyTorch loop (channels-last, torch.optim.SGD with
  Nesterov and parameter groups, airbench's `LookaheadState` and `init_whitening_conv`
  imported from the airbench package).
"""
import argparse
import json
import os
import subprocess
import sys
import time


def record(out, row):
    out.write(json.dumps(row) + "\n")
    out.flush()


def run_ours(a):
    """Our binary, its metrics.jsonl lines timed as they appear."""
    metrics = os.path.join(a.run_dir, "metrics.jsonl")
    cmd = [a.binary, "--data-dir", a.data_dir, "--recipe", "fast", "--seed", str(a.seed),
           "--device", a.device, "--quiet", "--out", a.run_dir] + a.extra
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    seen = 0
    with open(a.out, "w") as out, open(os.path.join(a.run_dir + ".log"), "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            done = proc.poll() is not None
            lines = open(metrics).read().splitlines() if os.path.exists(metrics) else []
            for line in lines[seen:]:
                m = json.loads(line)
                if m.get("test_acc") is not None:
                    record(out, {"engine": "ours", "seed": a.seed, "epoch": m["epoch"],
                                 "test_acc": m["test_acc"] / 100, "wall_s": round(time.time() - a.t0, 2),
                                 "final": False})
            seen = len(lines)
            if done:
                break
            time.sleep(0.2)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}); see {a.run_dir}.log")
        summary = json.load(open(os.path.join(a.run_dir, "summary.json")))
        record(out, {"engine": "ours", "seed": a.seed, "epoch": summary.get("epochs"),
                     "test_acc": summary["final_test_acc"] / 100, "wall_s": round(time.time() - a.t0, 2),
                     "final": True})


def read_cifar(data_dir, torch):
    """Our copy in the official binary layout: (train images, labels), (test images, labels)."""
    import numpy
    base = os.path.join(data_dir, "cifar-10-batches-bin")

    def read(names):
        raw = numpy.concatenate([numpy.fromfile(os.path.join(base, n), dtype=numpy.uint8) for n in names])
        rec = raw.reshape(-1, 3073)
        return torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(rec[:, 0].astype("int64"))
    return read([f"data_batch_{i}.bin" for i in range(1, 6)]), read(["test_batch.bin"])


def init_like_ours(net, torch):
    """The crate's initialisation: Kaiming-normal (fan-out, ReLU) convolutions, BN 1 / 0, the
    stem's bias 0, PyTorch's default Linear (as tch's)."""
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)


def param_groups(net, cfg):
    """The crate's parameter classes (src/trainer/optim/groups.rs): BN biases (lr times
    norm_bias_lr_multiplier, decay bias_weight_decay), other biases (bias_weight_decay), the
    rest (weight_decay)."""
    wd, bias_wd = cfg["weight_decay"], cfg.get("bias_weight_decay") or cfg["weight_decay"]
    mult = cfg.get("norm_bias_lr_multiplier") or 1.0
    norm_bias, bias, rest = [], [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        norm = parts[-2].startswith("bn") or name.endswith("downsample.1." + parts[-1])
        if norm and parts[-1] == "bias":
            norm_bias.append(p)
        elif parts[-1] == "bias":
            bias.append(p)
        else:
            rest.append(p)
    lr = cfg["lr"]
    return [dict(params=norm_bias, lr=lr * mult, weight_decay=bias_wd),
            dict(params=bias, lr=lr, weight_decay=bias_wd),
            dict(params=rest, lr=lr, weight_decay=wd)]


def triangle(step, total, cfg):
    """airbench's triangle at update `step` of `total`."""
    peak = int(cfg["lr_peak_fraction"] * total)
    start, end = cfg["lr_start_factor"], cfg["lr_end_factor"]
    if step < peak:
        return start + (1 - start) * step / peak
    return 1 + (end - 1) * (step - peak) / (total - peak)


def crops(padded, pad, base_flip, epoch, torch):
    """Every image translated by up to `pad` pixels (uniform offsets) and mirrored iff its base
    coin XOR the epoch is odd (the crate's alternating flip)."""
    n, side = padded.shape[0], padded.shape[-1] - 2 * pad
    dy = torch.randint(0, 2 * pad + 1, (n,))
    dx = torch.randint(0, 2 * pad + 1, (n,))
    out = torch.empty((n, 3, side, side), dtype=padded.dtype)
    for y in range(2 * pad + 1):
        for x in range(2 * pad + 1):
            mask = (dy == y) & (dx == x)
            out[mask] = padded[mask, :, y:y + side, x:x + side]
    flip = base_flip ^ bool(epoch % 2)
    out[flip] = out[flip].flip(-1)
    return out


def autocast(cfg, torch):
    """The recipe's precision as ours runs it on the CPU: bf16 autocast for "bf16", else fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.get("precision") == "bf16")


def evaluate(net, images, labels, tta, cfg, torch, F):
    """Test accuracy, batches of 1024, the crate's TTA (flip_translate: airbench's level 2)."""
    net.eval()
    correct = 0
    with torch.no_grad(), autocast(cfg, torch):
        for i in range(0, len(images), 1024):
            x = images[i:i + 1024].contiguous(memory_format=torch.channels_last)
            mirror = lambda t: 0.5 * (net(t) + net(t.flip(-1)))  # noqa: E731
            if tta == "flip_translate":
                p = F.pad(x, (1,) * 4, "reflect")
                shifted = 0.5 * (mirror(p[:, :, 0:32, 0:32]) + mirror(p[:, :, 2:34, 2:34]))
                logits = 0.5 * mirror(x) + 0.5 * shifted
            elif tta == "flip":
                logits = mirror(x)
            else:
                logits = net(x)
            correct += (logits.argmax(1) == labels[i:i + 1024]).sum().item()
    net.train()
    return correct / len(images)


def run_pytorch(a):
    """Our network and recipe (the JSON of `train_cifar10 --print-config` and of
    `model_summary --json`) as a plain PyTorch loop."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "pytorch"))
    from fast_net import Net
    from airbench.utils import LookaheadState, init_whitening_conv
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg, model_cfg = json.load(open(a.config)), json.load(open(a.model))
    (train_x, train_y), (test_x, test_y) = read_cifar(a.data_dir, torch)
    mean = torch.tensor(cfg["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["normalization"]["std"]).view(1, 3, 1, 1)
    norm = lambda u8: (u8.float() / 255 - mean) / std  # noqa: E731
    train_x, test_x = norm(train_x), norm(test_x)
    net = Net(model_cfg)
    init_like_ours(net, torch)
    net = net.to(memory_format=torch.channels_last)
    init_whitening_conv(net.conv1, train_x[:5000])
    if cfg.get("freeze_norm_weights"):  # the crate's freeze_norm_weights: BN scales stay 1
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.requires_grad_(False)
    stem_bias_epochs = cfg.get("stem_bias_epochs")
    optimizer = torch.optim.SGD(param_groups(net, cfg), momentum=cfg["momentum"], nesterov=cfg["nesterov"])
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    lookahead = LookaheadState(net)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    pad, bs, epochs = cfg["crop_padding"], cfg["batch_size"], cfg["epochs"]
    padded = F.pad(train_x, (pad,) * 4, "reflect")
    base_flip = torch.rand(len(train_x)) < 0.5
    per_epoch = (len(train_x) + bs - 1) // bs
    total, step = epochs * per_epoch, 0
    with open(a.out, "w") as out:
        for epoch in range(epochs):
            if stem_bias_epochs is not None:  # airbench's whiten_bias_epochs
                net.conv1.bias.requires_grad = epoch < stem_bias_epochs
            images = crops(padded, pad, base_flip, epoch, torch)
            order = torch.randperm(len(images))
            for i in range(per_epoch):
                idx = order[i * bs:(i + 1) * bs]
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * triangle(step, total, cfg)
                x = images[idx].contiguous(memory_format=torch.channels_last)
                with autocast(cfg, torch):
                    loss = loss_fn(net(x), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step % cfg["lookahead_steps"] == 0:
                    lookahead.update(net, decay=cfg["lookahead_decay"] ** cfg["lookahead_steps"] * (step / total) ** 3)
                if step == total:
                    lookahead.update(net, decay=1.0)
            last = epoch + 1 == epochs
            tta = cfg["tta"] if (last or not cfg.get("tta_last_only")) else "none"
            acc = evaluate(net, test_x, test_y, tta, cfg, torch, F)
            record(out, {"engine": "pytorch", "seed": a.seed, "epoch": epoch + 1, "test_acc": acc,
                         "wall_s": round(time.time() - a.t0, 2), "final": last})


def load_rows(paths):
    rows = []
    for p in paths:
        for n, line in enumerate(open(p), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("engine", "seed", "epoch", "test_acc", "wall_s") if k not in row]
            if missing:
                sys.exit(f"{p}:{n}: not a run row (no {', '.join(missing)}): {line.strip()[:120]}")
            rows.append(row)
    return rows


def runs_of(rows):
    runs = {}
    for r in rows:
        runs.setdefault((r["engine"], r["seed"]), []).append(r)
    return runs


def time_to(run, target):
    """Wall time of the first evaluation at or above `target`, or None."""
    for r in run:
        if r["test_acc"] >= target:
            return r["wall_s"]
    return None


def table(a):
    targets = [float(t) for t in a.targets.split(",")]
    runs = runs_of(load_rows(a.runs))
    head = ["engine", "seed"] + [f"time to {100 * t:g}% (s)" for t in targets] + \
        ["final test acc (%)", "total wall time (s)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    by_engine = {}
    for (engine, seed), run in sorted(runs.items()):
        final = run[-1]
        times = [time_to(run, t) for t in targets]
        cells = [engine, str(seed)] + ["-" if t is None else f"{t:.0f}" for t in times] + \
            [f"{100 * final['test_acc']:.2f}", f"{final['wall_s']:.0f}"]
        print("| " + " | ".join(cells) + " |")
        by_engine.setdefault(engine, []).append((final["test_acc"], final["wall_s"]))
    print()
    for engine, finals in sorted(by_engine.items()):
        accs = [100 * f[0] for f in finals]
        walls = [f[1] for f in finals]
        mean = sum(accs) / len(accs)
        spread = (max(accs) - min(accs)) / 2
        print(f"- {engine}: final test accuracy {mean:.2f} ± {spread:.2f} % over {len(accs)} seed(s); "
              f"wall time {sum(walls) / len(walls):.0f} s mean")


def plot(a):
    """An SVG of test accuracy against wall-clock time, one polyline per run."""
    runs = runs_of(load_rows(a.runs))
    colours = {"ours": "#1f77b4", "airbench94": "#d62728", "airbench94-bf16": "#ff7f0e", "pytorch": "#2ca02c"}
    w, h, m = 720, 420, 60
    tmax = max(r["wall_s"] for run in runs.values() for r in run) * 1.05
    amin, amax = 0.5, 1.0
    x = lambda t: m + (w - 2 * m) * t / tmax  # noqa: E731
    y = lambda acc: h - m - (h - 2 * m) * (max(acc, amin) - amin) / (amax - amin)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
             f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">wall-clock time since process start (minutes)</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">test accuracy</text>']
    for acc in [0.5, 0.6, 0.7, 0.8, 0.9, 0.93, 0.94, 1.0]:
        parts.append(f'<line x1="{m}" y1="{y(acc):.1f}" x2="{w - m}" y2="{y(acc):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{m - 5}" y="{y(acc) + 4:.1f}" text-anchor="end">{100 * acc:.0f}%</text>')
    step = max(1, int(tmax / 60 / 8))
    for minute in range(0, int(tmax / 60) + 1, step):
        parts.append(f'<text x="{x(60 * minute):.1f}" y="{h - m + 15}" text-anchor="middle">{minute}</text>')
    for i, ((engine, seed), run) in enumerate(sorted(runs.items())):
        pts = " ".join(f"{x(r['wall_s']):.1f},{y(r['test_acc']):.1f}" for r in run)
        colour = colours.get(engine, "#555")
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        last = run[-1]
        parts.append(f'<circle cx="{x(last["wall_s"]):.1f}" cy="{y(last["test_acc"]):.1f}" r="3" fill="{colour}"/>')
    for i, engine in enumerate(sorted({e for e, _ in runs})):
        parts.append(f'<text x="{m + 10}" y="{m + 15 * (i + 1)}" fill="{colours.get(engine, "#555")}">{engine}</text>')
    parts.append("</svg>")
    open(a.out, "w").write("\n".join(parts) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("ours")
    o.add_argument("--binary", required=True)
    o.add_argument("--run-dir", required=True)
    o.add_argument("--device", default="cpu", help="the binary's --device (the GPU check: cuda)")
    for q in [o]:
        q.add_argument("--data-dir", required=True)
        q.add_argument("--seed", type=int, required=True)
        q.add_argument("--threads", type=int, required=True)
        q.add_argument("--t0", type=float, required=True)
        q.add_argument("--out", required=True)
    o.add_argument("extra", nargs="*", help="more flags for the binary (after --)")
    q = sub.add_parser("pytorch")
    q.add_argument("--config", required=True, help="JSON of train_cifar10 --recipe fast --print-config")
    q.add_argument("--model", required=True, help="JSON of model_summary resnext_fast --json")
    for arg in ["--data-dir", "--out"]:
        q.add_argument(arg, required=True)
    for arg in ["--seed", "--threads"]:
        q.add_argument(arg, type=int, required=True)
    q.add_argument("--t0", type=float, required=True)
    t = sub.add_parser("table")
    t.add_argument("--targets", default="0.90,0.93")
    t.add_argument("runs", nargs="+")
    g = sub.add_parser("plot")
    g.add_argument("--out", required=True)
    g.add_argument("runs", nargs="+")
    a = p.parse_args()
    {"ours": run_ours, "pytorch": run_pytorch, "table": table, "plot": plot}[a.cmd](a)


if __name__ == "__main__":
    main()
