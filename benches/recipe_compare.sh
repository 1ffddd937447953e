#!/usr/bin/env bash
# A short recipe comparison on the real CIFAR-10 copy (../shared/data/cifar-10-binary.tar.gz),
# `tiny` net on the CPU, the same epochs for every run, each configuration with every seed:
#
#   a  cifar                 the defaults (SGD lr 0.1, momentum 0.9, wd 5e-4, cosine, batch 128,
#                            crop + flip)
#   b  cifar+ema+tta+ls      a + --model-ema --tta flip --label-smoothing 0.1
#   c  torchvision-v2 ops    a + --auto-augment ta_wide --random-erase 0.1 --mixup-alpha 0.2
#                            --cutmix-alpha 1.0 --label-smoothing 0.1 --model-ema
#                            --norm-weight-decay 0 (the blog's ops and regularisation; lr,
#                            schedule, weight decay and epochs stay cifar's: an equal budget)
#
# then the same net and recipe in PyTorch with torchvision's implementations
# (benches/recipe_compare.py) for the configurations of --peer (default "c a"), with every
# seed, ours and PyTorch's order alternating from seed to seed. Prints one markdown table
# (config | engine | seed | final test acc | EMA test acc | best | train images/s | wall time)
# and the means per configuration, with the CPU and thread count.
#
#   benches/recipe_compare.sh [--epochs E] [--seeds "1 2"] [--limit-train N] [--limit-test N]
#                             [--threads T] [--peer "c a"] [--out DIR] [--no-pipeline]
#
# * --epochs (default 10), --seeds (default "1 2"), --limit-train / --limit-test (default: the
#   whole sets), --threads: intra-op threads of both engines (default: all cores; ours through
#   OMP_NUM_THREADS, PyTorch's through torch.set_num_threads), --peer: the configurations run
#   in PyTorch too ("" for none), --out: where the runs go (default a fresh temporary folder,
#   kept and printed), --no-pipeline: skip the closing per-image cost of the data pipeline's
#   stages (`cargo bench --bench data_pipeline`, synthetic images, and
#   `recipe_compare.py --pipeline-cost 10000`, torchvision's on real ones; about 2 minutes);
# * the archive is extracted once into ${RESNEXT_BENCH_CACHE:-$HOME/.cache/resnext}/cifar10-bench
#   (RESNEXT_CIFAR10_ARCHIVE names the archive when it is elsewhere);
# * CARGO_TARGET_DIR is honoured.
# Cost: every run is E epochs of 50,000 images; on 2 cores tiny trains at a few hundred
# images/s, so plan for minutes per epoch and run: 10 runs by default.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[recipe_compare] %s\n' "$*" >&2; }

epochs=10
seeds="1 2"
limit_train=""
limit_test=""
threads=$(nproc)
peer="c a"
out=""
pipeline=1
while [ $# -gt 0 ]; do
    case "$1" in
        --epochs) epochs=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --limit-train) limit_train=$2; shift 2 ;;
        --limit-test) limit_test=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --peer) peer=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-pipeline) pipeline=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) say "error: unknown argument '$1' (see --help)"; exit 2 ;;
    esac
done

data=$(bash benches/cifar_data.sh)

say "building examples/train_cifar10 (release)"
eval "$(bash scripts/setup-libtorch.sh | tail -n1)"
cargo build --release --example train_cifar10 >&2
binary=${CARGO_TARGET_DIR:-$repo/target}/release/examples/train_cifar10
[ -x "$binary" ] || { say "error: $binary was not built"; exit 1; }
eval "$(bash scripts/setup-python-deps.sh | tail -n1)"
python3 -c 'import torchvision' || { say "error: torchvision not importable from PYTHONPATH=$PYTHONPATH"; exit 1; }

[ -n "$out" ] || out=$(mktemp -d "${TMPDIR:-/tmp}/recipe_compare.XXXXXX")
mkdir -p "$out"
results="$out/results.tsv"
: > "$results"
log="$out/runs.log"

limits=()
[ -n "$limit_train" ] && limits+=(--limit-train "$limit_train")
[ -n "$limit_test" ] && limits+=(--limit-test "$limit_test")

# The flags of each configuration over `--model tiny --epochs E`.
ours_flags() {
    case "$1" in
        a) ;;
        b) echo --model-ema --tta flip --label-smoothing 0.1 ;;
        c) echo --auto-augment ta_wide --random-erase 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 \
                --label-smoothing 0.1 --model-ema --norm-weight-decay 0 ;;
    esac
}
name_of() {
    case "$1" in
        a) echo "a cifar" ;;
        b) echo "b cifar+ema+tta+ls" ;;
        c) echo "c torchvision-v2 ops" ;;
    esac
}

# timed NAME ENGINE SEED DIR CMD...: runs CMD, appends its row to results.tsv.
timed() {
    local config=$1 engine=$2 seed=$3 dir=$4
    shift 4
    say "$config / $engine / seed $seed -> $dir"
    local t0 t1
    t0=$(date +%s.%N)
    if "$@" >>"$log" 2>&1; then
        t1=$(date +%s.%N)
        printf '%s\t%s\t%s\t%s\t%s\n' "$(name_of "$config")" "$engine" "$seed" "$dir" \
            "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" >>"$results"
    else
        say "run failed (see $log); left out of the table"
    fi
}
ours() {
    local config=$1 seed=$2 dir="$out/ours-$1-seed$2"
    rm -rf "$dir"
    # shellcheck disable=SC2046
    timed "$config" resnext "$seed" "$dir" env OMP_NUM_THREADS="$threads" "$binary" \
        --data-dir "$data" --model tiny --epochs "$epochs" --seed "$seed" "${limits[@]}" \
        --quiet --device cpu --out "$dir" $(ours_flags "$config")
}
theirs() {
    local config=$1 seed=$2 dir="$out/pytorch-$1-seed$2"
    rm -rf "$dir"
    timed "$config" pytorch "$seed" "$dir" python3 -W ignore benches/recipe_compare.py \
        --data-dir "$data" --config "$config" --epochs "$epochs" --seed "$seed" "${limits[@]}" \
        --threads "$threads" --workers 1 --quiet --out "$dir"
}
has_peer() { case " $peer " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

say "runs in $out (log: $log); epochs $epochs, seeds $seeds, threads $threads, peer: ${peer:-none}"
k=0
for seed in $seeds; do
    for config in a b c; do
        if has_peer "$config" && [ $((k % 2)) -eq 1 ]; then
            theirs "$config" "$seed"
            ours "$config" "$seed"
        elif has_peer "$config"; then
            ours "$config" "$seed"
            theirs "$config" "$seed"
        else
            ours "$config" "$seed"
        fi
    done
    k=$((k + 1))
done

echo
echo "## Recipe comparison: tiny on the real CIFAR-10 copy, $epochs epochs, seeds: $seeds"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/^.*: //'), $(nproc) cores; intra-op threads of both engines: $threads;"
echo "limits: train ${limit_train:-50000}, test ${limit_test:-10000}; $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples || echo ' (+ uncommitted changes)')"
echo
python3 benches/recipe_compare.py --table "$results"
cat <<EOF

Notes:
- Every configuration trains with cifar's lr 0.1, momentum 0.9, weight decay 5e-4, cosine per
  epoch over the same $epochs epochs, batch 128: the budget is equal; c takes the ops and
  regularisation of torchvision's recipe (TrivialAugmentWide, RandomErasing 0.1, MixUp 0.2 /
  CutMix 1.0, label smoothing 0.1, EMA, no decay on BatchNorm), not its lr 0.5, warm-up,
  weight decay 2e-5 or 600 epochs (\`--recipe torchvision-v2\` has those).
- EMA: decay 0.99998 adjusted as torchvision's train.py (batch 128, every 32 steps, $epochs
  epochs), evaluated beside the raw weights; "best" is the raw weights' best epoch. b's TTA
  (flip) applies to both evaluations.
- pytorch = benches/recipe_compare.py: the same tiny ResNeXt (torchvision's Bottleneck code),
  torchvision 0.26's transforms.v2 per image and MixUp/CutMix in the collate function, a
  DataLoader with 1 worker process (ours makes batches on 1 background thread), channels-last.
- train images/s counts training batches only; wall time is the whole process (start, data
  loading, training, evaluation) as measured by this script.
- Runs and their metrics.jsonl / summary.json: $out
EOF

[ "$pipeline" = 1 ] || exit 0
echo
echo "## What the extra ops cost per image in the data pipeline (cases i-iv, each with the stages above it)"
echo
echo "Ours (cargo bench --bench data_pipeline: synthetic images, libtorch 1 thread, batches made on the prefetch thread):"
echo
echo '```'
cargo bench --bench data_pipeline 2>>"$log" | sed -n '/^per-image cost/,$p'
echo '```'
echo
echo "torchvision's (recipe_compare.py --pipeline-cost: real images, 1 process, 1 thread):"
echo
echo '```'
python3 -W ignore benches/recipe_compare.py --data-dir "$data" --pipeline-cost 10000
echo '```'
