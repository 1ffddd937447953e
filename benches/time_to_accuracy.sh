#!/usr/bin/env bash
# Time to accuracy on CIFAR-10 (our copy, ../shared/data/cifar-10-binary.tar.gz) on the CPU,
# each engine in its precision (ours and pytorch: the fast recipe's), the same threads for
# every engine, each run in a fresh process timed from just before its start (start-up, data
# loading, whitening and evaluations count):
#
#   ours        train_cifar10 --recipe fast (resnext_fast; TTA flip_translate at the end)
#   airbench94  airbench 0.1.8 from PyPI, unmodified, on the CPU by benches/airbench_cpu.py
#               (its own recipe and network; TTA level 2 at the end), its fp16 as fp32
#   airbench94-bf16  the same with its fp16 as bf16 (for CPUs with native bf16, where ours
#               runs bf16 autocast: the recipe's precision)
#   pytorch     our network and recipe as a plain PyTorch loop (benches/time_to_accuracy.py
#               pytorch: the gap to `ours` is the implementation, ours to airbench94 the recipe)
#
# Engines alternate their order from seed to seed. Prints the CPU, the fp32 FMA peak
# (benches/fma_peak.c) and PyTorch's sgemm rate on the same threads, a table (time to each
# target, final accuracy, wall time per run; mean and spread per engine) and writes a plot of
# test accuracy against wall-clock time (one line per run) to OUT/curves.svg.
#
#   benches/time_to_accuracy.sh [--seeds "1 2 3"] [--engines "ours airbench94 pytorch"]
#                               [--threads T] [--targets 0.90,0.93] [--out DIR]
#
# Cost: each run is 40-70 minutes on 2 cores; the default 3 seeds x 3 engines is about 8 hours.
# Run it on a machine doing nothing else. CARGO_TARGET_DIR is honoured; the archive is
# extracted once into ${RESNEXT_BENCH_CACHE:-$HOME/.cache/resnext}/cifar10-bench.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[time_to_accuracy] %s\n' "$*" >&2; }

seeds="1 2 3"
engines="ours airbench94 pytorch"
threads=$(nproc)
targets="0.90,0.93"
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=$2; shift 2 ;;
        --engines) engines=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --targets) targets=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) say "error: unknown argument '$1' (see --help)"; exit 2 ;;
    esac
done

data=$(bash benches/cifar_data.sh)

eval "$(bash scripts/setup-libtorch.sh | tail -n1)"
say "building train_cifar10 and model_summary (release)"
cargo build --release --example train_cifar10 --example model_summary >&2
bin=${CARGO_TARGET_DIR:-$repo/target}/release/examples
eval "$(bash scripts/setup-python-deps.sh | tail -n1)"
python3 -c 'import airbench, torchvision' || { say "error: airbench not importable from PYTHONPATH=$PYTHONPATH"; exit 1; }

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/time_to_accuracy.XXXXXX")
mkdir -p "$out"
"$bin/train_cifar10" --recipe fast --print-config > "$out/fast-config.json"
"$bin/model_summary" resnext_fast --json > "$out/fast-model.json"

peak_bin="$out/fma_peak"
if grep -q avx512f /proc/cpuinfo; then isa=(-mavx512f -mfma); else isa=(-mavx2 -mfma); fi
cc -O2 "${isa[@]}" -pthread benches/fma_peak.c -o "$peak_bin"
peak=$("$peak_bin" "$threads" 2 | cut -d' ' -f2-)
sgemm=$(python3 - "$threads" <<'PY'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
for _ in range(3): a @ b
t = time.perf_counter(); n = 10
for _ in range(n): a @ b
print(f"{2 * 2048 ** 3 * n / (time.perf_counter() - t) / 1e9:.0f}")
PY
)

bf16=no
grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo && bf16=yes

run() {
    local engine=$1 seed=$2 rows="$out/$1-seed$2.jsonl" t0
    say "$engine, seed $seed -> $rows"
    t0=$(date +%s.%N)
    case "$engine" in
        ours)
            rm -rf "$out/ours-seed$seed"
            python3 benches/time_to_accuracy.py ours --binary "$bin/train_cifar10" --data-dir "$data" \
                --seed "$seed" --threads "$threads" --t0 "$t0" --run-dir "$out/ours-seed$seed" --out "$rows" ;;
        airbench94|airbench94-bf16)
            # airbench's own rows stay in its work folder: OUT/*-seed*.jsonl is per-run rows only.
            local raw="$out/airbench-work/raw-$engine-seed$seed.jsonl" precision=fp32
            [ "$engine" = airbench94-bf16 ] && precision=bf16
            mkdir -p "$out/airbench-work"
            python3 -W ignore benches/airbench_cpu.py --data-dir "$data" --work "$out/airbench-work" \
                --seed "$seed" --threads "$threads" --t0 "$t0" --precision "$precision" --out "$raw" \
                > "$out/$engine-seed$seed.log" 2>&1
            python3 - "$raw" "$seed" "$engine" > "$rows" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    final = r["epoch"] == "eval"
    acc = r["tta_val_acc"] if final else r["val_acc"]
    epoch = len(rows) - 1 if final else int(r["epoch"]) + 1
    print(json.dumps({"engine": sys.argv[3], "seed": int(sys.argv[2]), "epoch": epoch,
                      "test_acc": acc, "wall_s": r["wall_s"], "final": final}))
PY
            ;;
        pytorch)
            python3 -W ignore benches/time_to_accuracy.py pytorch --config "$out/fast-config.json" \
                --model "$out/fast-model.json" --data-dir "$data" --seed "$seed" --threads "$threads" \
                --t0 "$t0" --out "$rows" ;;
        *) say "error: unknown engine $engine"; exit 2 ;;
    esac
}

k=0
for seed in $seeds; do
    order=$engines
    [ $((k % 2)) -eq 1 ] && order=$(echo "$engines" | tr ' ' '\n' | tac | tr '\n' ' ')
    for engine in $order; do
        run "$engine" "$seed" || say "$engine seed $seed failed; left out of the table"
    done
    k=$((k + 1))
done

echo "## Time to accuracy: CIFAR-10 (our JPEG-75 copy) on the CPU"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: //'), $(nproc) cores, $threads threads for every engine;"
echo "fp32 FMA peak $peak GFLOP/s; PyTorch sgemm 2048^3 $sgemm GFLOP/s; native bf16: $bf16; ours in $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("precision"))' "$out/fast-config.json");"
echo "$(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD)"
echo
python3 benches/time_to_accuracy.py table --targets "$targets" "$out"/*-seed*.jsonl
python3 benches/time_to_accuracy.py plot --out "$out/curves.svg" "$out"/*-seed*.jsonl
echo
echo "Times from just before each process started to each evaluation; the final row of a run is its"
echo "TTA evaluation (ours and pytorch: flip_translate; airbench94: its level 2, the same 6 views)."
echo "Runs, logs and curves.svg: $out"
