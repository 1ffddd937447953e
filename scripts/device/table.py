"""Reads the RESULT lines of device-check logs and prints one markdown table: training
images/s, achieved TFLOP/s (the model's own count where the line has one, as ours do; else
ResNeXt-50's 2.69 GFLOPs forward per CIFAR image x 3 for a training step, the model of the
PyTorch references) next to the card's peak, and the ratios the GPU issue targets."""
import json, sys

GFLOPS_FWD = 2.69
# Dense bf16 tensor-core peaks (TFLOP/s); fp32 runs are compared against the same number.
PEAKS = {"H200": 989.0, "H100": 790.0, "A100": 312.0}


def results(paths):
    for p in paths:
        for line in open(p, errors="replace"):
            if line.startswith("RESULT "):
                yield json.loads(line[7:])


def main():
    gpu = sys.argv[1]
    rows = list(results(sys.argv[2:]))
    peak = next((v for k, v in PEAKS.items() if k in gpu), None)
    print(f"GPU: {gpu}; peak used: {peak if peak else 'unknown'} TFLOP/s (dense bf16)\n")
    print("| implementation | batch | precision | channels-last | images/s | TFLOP/s | % of peak | s per 50k epoch |")
    print("|---|---|---|---|---|---|---|---|")
    speed = [r for r in rows if "images_per_sec" in r]
    for r in speed:
        ips = r["images_per_sec"]
        tf = r.get("tflops", ips * GFLOPS_FWD * 3 / 1e3)
        pct = f"{100 * tf / peak:.1f}" if peak else "-"
        prec = r.get("precision", "fp32" if r["impl"] == "pytorch-tutorial" else "bf16")
        cl = r.get("channels_last", r["impl"] == "pytorch-eager-gpu")
        print(f"| {r['impl']} | {r['batch']} | {prec} | {'on' if cl else 'off'} | {ips:.0f} | {tf:.1f} | {pct} | {50000 / ips:.1f} |")
    ours = [r for r in speed if r["impl"] == "resnext-rs"]
    for ref in ("pytorch-tutorial", "pytorch-eager-gpu"):
        for r in [r for r in speed if r["impl"] == ref]:
            same = [o["images_per_sec"] for o in ours if o["batch"] == r["batch"]]
            if same:
                print(f"\nbatch {r['batch']}: best resnext-rs / {ref} = {max(same) / r['images_per_sec']:.2f}x", end="")
    for r in [r for r in speed if r["impl"] == "resnext-rs-ddp"]:
        same = [o["images_per_sec"] for o in ours if o["batch"] == r["batch"]
                and o["precision"] == r["precision"] and o["channels_last"] == r["channels_last"]]
        if same:
            print(f"\nbatch {r['batch']} {r['precision']}: one-process data-parallel group "
                  f"(NCCL on CUDA) / plain trainer = {r['images_per_sec'] / same[0]:.2f}x", end="")
    print()
    for r in rows:
        if "test_acc" in r:
            print(f"\nsubset training: {r['subset_epochs']} epochs, test accuracy {r['test_acc']:.2f}%, {r['train_images_per_sec']:.0f} images/s")


if __name__ == "__main__":
    main()
