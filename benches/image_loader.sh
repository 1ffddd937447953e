#!/usr/bin/env bash
# Image folder loading speed: this crate's ImageFolder against torchvision's ImageFolder +
# DataLoader, on the same JPEG files, alternating in one run; prints the tables for docs/benchmarks.md.
#
#   benches/image_loader.sh [--data-dir DIR] [--workers "1 2"] [--rounds R] [--epochs K]
#                           [--batch-size B]
#
# * builds examples/bench_images.rs in release mode (the Rust side) and runs
#   benches/torchvision_loader.py with the torch/torchvision of the crate's libtorch
#   (PYTHONPATH: the folder above $LIBTORCH, from the environment or .cargo/config.toml, plus
#   its python-deps folder next to it; set TORCH_PYTHONPATH to override);
# * without --data-dir, makes (once, cached in $BENCH_CACHE, default ~/.cache/resnext/image-bench)
#   a folder of 2 classes x 200 real photographs: the colour photos that scikit-image ships
#   (its wheel fetched with `pip download`, not installed), cut into random crops at typical
#   ImageNet sizes (mostly 500x375 and 500x333) and saved as JPEG quality 90; if pip cannot
#   fetch the wheel, upscaled CIFAR-10 test images (500x375) from ../shared/data, and says so;
# * decode-only: single-thread JPEG decoding, `image` 0.25 (zune-jpeg inside) vs zune-jpeg
#   directly vs PIL; stages: single-thread microseconds per picture of decode, resized crop,
#   normalise, ours and torchvision's;
# * loader: for each round and each worker count, ours, torchvision's, and ours with
#   `--keep-freed-memory` (glibc keeps freed memory, as the trainer sets on the CPU) alternate
#   (the order reverses every round); each run is one warm-up epoch then --epochs timed epochs
#   of the ImageNet training recipe at 224; the tables give the median over rounds (ratios:
#   the median of the rounds' ratios).
# About 5 minutes on 2 CPU cores with the defaults (after the build). CARGO_TARGET_DIR is
# honoured.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { printf '[image_loader] %s\n' "$*" >&2; }

data_dir=""
workers="1 2"
rounds=4
epochs=3
batch=64
while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir) data_dir=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) say "unknown argument $1"; exit 2 ;;
    esac
done

libtorch=${LIBTORCH:-}
if [ -z "$libtorch" ] && [ -f .cargo/config.toml ]; then
    libtorch=$(sed -n 's/^LIBTORCH *= *"\(.*\)"/\1/p' .cargo/config.toml | head -n1)
fi
pythonpath=${TORCH_PYTHONPATH:-}
if [ -z "$pythonpath" ]; then
    if [ -n "$libtorch" ] && [ -f "$libtorch/__init__.py" ]; then
        pythonpath=$(dirname "$libtorch")
        deps="$(dirname "$pythonpath")/python-deps"
        [ -d "$deps" ] && pythonpath="$pythonpath:$deps"
    else
        say "error: cannot find the torch package of libtorch '${libtorch:-unset}'; set TORCH_PYTHONPATH"
        exit 1
    fi
fi
py() { PYTHONPATH="$pythonpath${PYTHONPATH:+:$PYTHONPATH}" python3 -W ignore "$@"; }
py -c 'import torchvision, PIL' || { say "error: torchvision and Pillow must import with PYTHONPATH=$pythonpath"; exit 1; }

say "building examples/bench_images (release)"
cargo build --release --example bench_images >&2
target=${CARGO_TARGET_DIR:-$repo/target}
ours="$target/release/examples/bench_images"
[ -x "$ours" ] || { say "error: $ours was not built"; exit 1; }

cache=${BENCH_CACHE:-$HOME/.cache/resnext/image-bench}
source_note="given folder"
if [ -z "$data_dir" ]; then
    photos="$cache/photos"
    cifar="$cache/cifar-upscaled"
    if [ -f "$photos/.complete" ]; then
        data_dir=$photos
    else
        mkdir -p "$cache/wheel"
        if ! ls "$cache"/wheel/scikit_image-*.whl >/dev/null 2>&1; then
            say "fetching the scikit-image wheel (for its sample photographs) with pip download"
            timeout 180 python3 -m pip download --quiet scikit-image --no-deps -d "$cache/wheel" >&2 \
                || say "pip download failed"
        fi
        wheel=$(ls "$cache"/wheel/scikit_image-*.whl 2>/dev/null | head -n1 || true)
        if [ -n "$wheel" ]; then
            say "making $photos from the photographs in $(basename "$wheel")"
            rm -rf "$photos"
            py - "$wheel" "$photos" <<'EOF'
import io, random, sys, zipfile
from PIL import Image
wheel, out = sys.argv[1], sys.argv[2]
# The colour photographs among scikit-image's sample data.
names = ["astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
         "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg"]
z = zipfile.ZipFile(wheel)
sources = [Image.open(io.BytesIO(z.read("skimage/data/" + n))).convert("RGB") for n in names]
# Typical ImageNet training picture sizes (most are 500 pixels on the long side).
sizes = [(500, 375)] * 8 + [(500, 333)] * 4 + [(375, 500)] * 3 + [(500, 500)] * 2 \
    + [(333, 500)] * 2 + [(640, 480)]
rng = random.Random(15)
import os
for c in ("class_a", "class_b"):
    os.makedirs(os.path.join(out, c))
for i in range(400):
    src = sources[i % len(sources)]
    w, h = rng.choice(sizes)
    # A random crop of the aspect ratio w:h, 35-100% of the largest such crop.
    sw, sh = src.size
    cw = min(sw, sh * w / h)
    s = rng.uniform(0.35, 1.0) ** 0.5
    cw, ch = cw * s, cw * s * h / w
    left, top = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    img = src.resize((w, h), Image.LANCZOS, box=(left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img.save(os.path.join(out, ("class_a", "class_b")[i % 2], f"{i:04d}.jpg"), quality=90)
open(os.path.join(out, ".complete"), "w").write("skimage photographs\n")
EOF
            data_dir=$photos
        else
            data_dir=$cifar
            if [ ! -f "$cifar/.complete" ]; then
                archive="$repo/../shared/data/cifar-10-binary.tar.gz"
                [ -f "$archive" ] || { say "error: no photographs and no $archive"; exit 1; }
                say "FALLBACK: no scikit-image wheel; making $cifar from upscaled CIFAR-10 test images"
                rm -rf "$cifar"
                py - "$archive" "$cifar" <<'EOF'
import os, sys, tarfile
from PIL import Image
archive, out = sys.argv[1], sys.argv[2]
with tarfile.open(archive) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("test_batch.bin"))
    data = t.extractfile(member).read()
for c in ("class_a", "class_b"):
    os.makedirs(os.path.join(out, c))
for i in range(400):
    rec = data[i * 3073 + 1:(i + 1) * 3073]
    planes = [Image.frombytes("L", (32, 32), rec[k * 1024:(k + 1) * 1024]) for k in range(3)]
    img = Image.merge("RGB", planes).resize((500, 375), Image.BICUBIC)
    img.save(os.path.join(out, ("class_a", "class_b")[i % 2], f"{i:04d}.jpg"), quality=90)
open(os.path.join(out, ".complete"), "w").write("upscaled CIFAR-10\n")
EOF
            fi
        fi
    fi
    source_note=$(cat "$data_dir/.complete")
    [ "$data_dir" = "$cifar" ] && say "FALLBACK in use: the pictures are upscaled CIFAR-10 images, not photographs"
fi
count=$(find "$data_dir" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | wc -l)
say "data: $data_dir ($count images; $source_note)"

results=$(mktemp)
trap 'rm -f "$results"' EXIT
record() { # side workers command...
    local side=$1 w=$2; shift 2
    "$@" | sed -n "s/^RESULT /$side $w /p" >>"$results"
}

say "decode-only and stages, single thread"
for r in 1 2; do
    record ours 0 "$ours" --data-dir "$data_dir" --decode-only --rounds 2
    record torchvision 0 py benches/torchvision_loader.py --data-dir "$data_dir" --decode-only --rounds 2
done
record ours 0 "$ours" --data-dir "$data_dir" --stages --rounds 3
record torchvision 0 py benches/torchvision_loader.py --data-dir "$data_dir" --stages --rounds 3

for r in $(seq 1 "$rounds"); do
    for w in $workers; do
        say "round $r/$rounds, $w worker(s)"
        run_ours() { record ours "$w" "$ours" --data-dir "$data_dir" --workers "$w" --epochs "$epochs" --batch-size "$batch"; }
        run_kept() { record kept "$w" "$ours" --data-dir "$data_dir" --workers "$w" --epochs "$epochs" --batch-size "$batch" --keep-freed-memory; }
        run_tv() { record torchvision "$w" py benches/torchvision_loader.py --data-dir "$data_dir" --workers "$w" --epochs "$epochs" --batch-size "$batch"; }
        if [ $((r % 2)) -eq 1 ]; then run_ours; run_tv; run_kept; else run_kept; run_tv; run_ours; fi
    done
done

echo
echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) CPUs; data: $count JPEGs ($source_note)"
echo "Loader: ImageNet training recipe at 224 (decode, RandomResizedCrop(224), flip, normalise), batch $batch; $epochs epochs after a warm-up epoch; median of $rounds rounds"
py - "$results" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    side, w, payload = line.split(" ", 2)
    rows.setdefault((side, int(w), json.loads(payload)["mode"]), []).append(json.loads(payload))
med = lambda key, field: statistics.median(r[field] for r in rows.get(key, [])) if key in rows else float("nan")
print()
print("| workers | ours images/s | torchvision images/s | ratio | ours, freed memory kept | ratio |")
print("|---:|---:|---:|---:|---:|---:|")
# Ratios: the median of each round's ratio (the runs of a round are next to each other in time,
# which cancels most of the drift of a shared machine's speed).
def ratio(a, b):
    pairs = zip(rows.get(a, []), rows.get(b, []))
    return statistics.median(x["images_per_s"] / y["images_per_s"] for x, y in pairs)
for w in sorted({k[1] for k in rows if k[2] == "loader"}):
    o, t = med(("ours", w, "loader"), "images_per_s"), med(("torchvision", w, "loader"), "images_per_s")
    k = med(("kept", w, "loader"), "images_per_s")
    tv = ("torchvision", w, "loader")
    print(f"| {w} | {o:.0f} | {t:.0f} | {ratio(('ours', w, 'loader'), tv):.2f} | {k:.0f} "
          f"| {ratio(('kept', w, 'loader'), tv):.2f} |")
print()
print("| JPEG decoder, 1 thread | images/s |")
print("|---|---:|")
print(f"| `image` 0.25 (`decode_rgb8`, zune-jpeg inside) | {med(('ours', 0, 'decode'), 'image_images_per_s'):.0f} |")
print(f"| zune-jpeg 0.5 directly | {med(('ours', 0, 'decode'), 'zune_images_per_s'):.0f} |")
print(f"| PIL (libjpeg-turbo), torchvision's loader | {med(('torchvision', 0, 'decode'), 'pil_images_per_s'):.0f} |")
print()
print("| stage, 1 thread, microseconds per picture | ours | torchvision |")
print("|---|---:|---:|")
for field, name in [("decode_us", "decode"), ("resize_us", "RandomResizedCrop(224) (+ flip for torchvision)"),
                    ("normalise_us", "to normalised f32 CHW (+ flip for ours)"), ("total_us", "total")]:
    o, t = med(("ours", 0, "stages"), field), med(("torchvision", 0, "stages"), field)
    print(f"| {name} | {o:.0f} | {t:.0f} |")
EOF
