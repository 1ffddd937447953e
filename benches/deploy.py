"""Deploy comparison (run through benches/deploy.sh): ResNeXt-50 32x4d inference in fp32 on the
CPU, side by side in one run, by engine:

* ours: resnext::inference::InferenceModel (examples/bench_step) with each of its kernels,
  generic (`ours-generic`) and oneDNN fused (`ours-fused`); `ours` (not in the default list)
  is its default, `Kernels::Auto` (generic on Intel CPUs, fused on the others);
* PyTorch eager: torchvision's resnext50_32x4d, channels-last weights and input, no_grad,
  eval (the best plain-loop configuration);
* ONNX Runtime: that model exported by torch.onnx.export (opset 17, dynamic batch), CPU
  execution provider, ORT_ENABLE_ALL graph optimisations, intra-op threads = --threads;
* OpenVINO: the same ONNX file compiled for CPU (f32 inference precision, LATENCY hint,
  --threads inference threads).

Workloads: 224x224 batch 1 (latency), 224x224 batch 32 and the CIFAR stem (3x3 conv, no
max-pool) at 32x32 batch 64 (throughput). Each measurement runs in a fresh process: a warm-up of
two passes, then passes for --seconds, median wall time per pass. Engines alternate within each
round; the table gives the median over rounds, each round's figure, and the ratio to the faster
of ours (> 1: ours is faster). All
networks have random weights (speed does not depend on them).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKLOADS = {
    # name: (stem, side, batch, unit)
    "224 batch 1": ("imagenet", 224, 1, "ms"),
    "224 batch 32": ("imagenet", 224, 32, "img/s"),
    "CIFAR stem 32x32 batch 64": ("cifar", 32, 64, "img/s"),
}
ENGINES = ["ours-generic", "ours-fused", "pytorch", "onnxruntime", "openvino"]
# bench_step's eval variant for each of our engines.
OURS = {"ours": "inference", "ours-generic": "inference-generic", "ours-fused": "inference-fused"}


def torchvision_model(stem):
    import torch
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnext50_32x4d(num_classes=10 if stem == "cifar" else 1000)
    if stem == "cifar":
        m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = torch.nn.Identity()
    return m.eval()


def onnx_file(stem, cache):
    path = os.path.join(cache, f"resnext50_32x4d-{stem}.onnx")
    if not os.path.exists(path):
        import torch

        side = 224 if stem == "imagenet" else 32
        torch.onnx.export(torchvision_model(stem), torch.randn(1, 3, side, side), path,
                          opset_version=17, dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "N"}})
    return path


def timed(run, seconds):
    """Median seconds per call of `run` after two warm-up calls, over at least `seconds`."""
    run()
    run()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(engine, workload, args):
    """Runs in a fresh process: prints the median seconds per pass."""
    import numpy as np

    stem, side, batch, _ = WORKLOADS[workload]
    x = np.random.default_rng(0).standard_normal((batch, 3, side, side), dtype=np.float32)
    if engine == "pytorch":
        import torch

        torch.set_num_threads(args.threads)
        m = torchvision_model(stem).to(memory_format=torch.channels_last)
        xs = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return timed(lambda: m(xs), args.seconds)
    if engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession(onnx_file(stem, args.cache), so,
                                 providers=["CPUExecutionProvider"])
        return timed(lambda: s.run(None, {"images": x}), args.seconds)
    if engine == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(onnx_file(stem, args.cache), "CPU", config)
        request = compiled.create_infer_request()
        return timed(lambda: request.infer({0: x}), args.seconds)
    raise SystemExit(f"unknown engine {engine}")


def ours(variant, workload, args):
    """Median seconds per pass of examples/bench_step (one process per measurement)."""
    stem, side, batch, _ = WORKLOADS[workload]
    p = subprocess.Popen([args.binary, "--threads", str(args.threads)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)

    def ask(line):
        p.stdin.write(line + "\n")
        p.stdin.flush()
        answer = p.stdout.readline().strip()
        if answer.startswith("error") or not answer:
            raise SystemExit(f"bench_step: {line}: {answer}")
        return answer

    ask(f"setup a eval resnext50_32x4d {batch} {variant} {stem} {side}")
    ask("run a")
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < args.seconds or len(times) < 3:
        times.append(float(ask("run a")))
    ask("drop a")
    p.stdin.write("quit\n")
    p.stdin.close()
    p.wait()
    return statistics.median(times)


def measure(engine, workload, args):
    if engine in OURS:
        return ours(OURS[engine], workload, args)
    out = subprocess.run([sys.executable, "-W", "ignore", __file__, "--worker", engine, workload,
                          "--threads", str(args.threads), "--seconds", str(args.seconds),
                          "--cache", args.cache], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"[deploy] {engine} failed: {out.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return float(out.stdout.strip().splitlines()[-1])


def figure(secs, workload):
    _, _, batch, unit = WORKLOADS[workload]
    return secs * 1000 if unit == "ms" else batch / secs


def table(results, engines, rounds):
    lines = ["| workload | " + " | ".join(engines) + " |",
             "|---|" + "--:|" * len(engines)]
    for workload, (_, _, _, unit) in WORKLOADS.items():
        cells = []
        ours_medians = [statistics.median(runs) for e in OURS
                        if (runs := [r for r in results.get((workload, e), []) if r is not None])]
        base = min(ours_medians) if ours_medians else None
        for engine in engines:
            runs = [r for r in results.get((workload, engine), []) if r is not None]
            if not runs:
                cells.append("n/a")
                continue
            med = statistics.median(runs)
            each = " / ".join(f"{figure(r, workload):.1f}" for r in runs)
            ratio = ""
            if base and engine not in OURS:
                # > 1: ours is faster.
                ratio = f" ({med / base:.2f}x)"
            cells.append(f"{figure(med, workload):.1f} [{each}]{ratio}")
        lines.append(f"| {workload} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--only", default=None, help="one workload name")
    ap.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                   "resnext-deploy-bench"))
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--worker", nargs=2, default=None)
    args = ap.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    if args.worker:
        print(worker(args.worker[0], args.worker[1], args))
        return
    engines = args.engines.split(",")
    workloads = [w for w in WORKLOADS if args.only in (None, w)]
    for stem in {WORKLOADS[w][0] for w in workloads}:
        onnx_file(stem, args.cache)
    results = {}
    for r in range(args.rounds):
        for workload in workloads:
            order = engines if r % 2 == 0 else list(reversed(engines))
            for engine in order:
                secs = measure(engine, workload, args)
                results.setdefault((workload, engine), []).append(secs)
                shown = "failed" if secs is None else f"{figure(secs, workload):.1f}"
                print(f"[deploy] round {r + 1} {workload} {engine}: {shown}", file=sys.stderr)
    print(table(results, engines, args.rounds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{w}|{e}": v for (w, e), v in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
