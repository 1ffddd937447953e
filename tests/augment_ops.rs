//! The augmentation ops and policies of `resnext::data::ops` against torchvision 0.26
//! (`transforms.v2`) on the same `uint8` images, magnitudes, λ and boxes. Python: see
//! `tests/common/python.rs`; one Python process per test, every image of the test at once.
//!
//! Tolerances: geometric ops, posterize, solarize, autocontrast, equalize and invert must be
//! exact (integer results, or an `f32` sampling grid computed with torchvision's arithmetic),
//! with one exception: an output pixel of a warp whose source lies within 1e-4 pixel of a
//! half-way point between two pixels (a tie, which a shear of 0.2 makes often) may take either
//! neighbour. libtorch computes the grid with or without a fused multiply-add depending on the
//! CPU's vector unit (fused with AVX-512, not fused with AVX2 only), which moves such sources by
//! one `f32` rounding across the tie; ours computes one fixed way on every CPU, so that a seed
//! gives the same augmented images everywhere. Every other warped pixel must match.
//! The four blends (brightness, saturation, contrast, sharpness) compute `a * r + b * (1 - r)`
//! in `f32` and truncate to `u8`, so a result within one `f32` rounding of an integer can
//! land on either side of it when libtorch's kernel rounds differently from ours (a fused
//! multiply-add or not, which depends on the CPU's vector unit): they are allowed one level
//! of difference, on at most 0.1 % of the values. On an Intel CPU with AVX-512 every op
//! matches exactly, the blends and the ties included.
#[path = "common/python.rs"]
mod python;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use python::run_python;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnext::data::ops::{
    cutmix_box, cutmix_with, erase, mixup_with, AugmentationSpace, AutoAugment, AutoAugmentPolicy,
    CutMix, EraseBox, MixUp, Op, OpDraw, Policy, RandAugment, RandomErasing, RgbPlanes,
    TrivialAugmentWide, AUTO_AUGMENT_BINS,
};
use resnext::data::DataError;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("augment_ops")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A random image of `h` x `w` pixels.
fn random_image(rng: &mut ChaCha8Rng, h: usize, w: usize) -> RgbPlanes {
    let data = (0..3 * h * w).map(|_| rng.gen::<u8>()).collect();
    RgbPlanes::new(h, w, data).unwrap()
}

/// A smooth, photograph-like 32x32 image: gradients and a soft blob.
fn gradient_image() -> RgbPlanes {
    let (h, w) = (32usize, 32usize);
    let mut data = vec![0u8; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64 / 31.0, y as f64 / 31.0);
            let blob = (-((fx - 0.6).powi(2) + (fy - 0.4).powi(2)) * 8.0).exp();
            let v = [
                30.0 + 180.0 * fx + 40.0 * blob,
                60.0 + 120.0 * fy + 60.0 * blob,
                200.0 - 150.0 * fx * fy + 30.0 * (6.0 * fx).sin(),
            ];
            for c in 0..3 {
                data[c * h * w + y * w + x] = v[c].round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbPlanes::new(h, w, data).unwrap()
}

/// Edge cases: a constant red plane (autocontrast's and equalize's constant channel), a green
/// plane with one value on 900 of 1024 pixels (equalize's `step == 0`), a low-contrast blue.
fn special_image(rng: &mut ChaCha8Rng) -> RgbPlanes {
    let n = 32 * 32;
    let mut data = vec![77u8; n];
    data.extend((0..n).map(|i| if i < 900 { 200 } else { rng.gen() }));
    data.extend((0..n).map(|_| rng.gen_range(100..=110)));
    RgbPlanes::new(32, 32, data).unwrap()
}

/// The test images: 4 random 32x32, the gradient, the edge cases, a random 24x40.
fn test_images() -> Vec<RgbPlanes> {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut images: Vec<RgbPlanes> = (0..4).map(|_| random_image(&mut rng, 32, 32)).collect();
    images.push(gradient_image());
    images.push(special_image(&mut rng));
    images.push(random_image(&mut rng, 24, 40));
    images
}

/// Every (op, magnitude) that the three policies can draw for an image of `h` x `w`, both
/// signs, plus rotations on the fast paths and large shifts and shears.
fn cases(h: usize, w: usize) -> Vec<(Op, f64)> {
    let mut set = BTreeSet::new();
    let spaces = [
        (AugmentationSpace::TrivialWide, 31),
        (AugmentationSpace::RandAugment, 31),
        (AugmentationSpace::AutoAugment, AUTO_AUGMENT_BINS),
    ];
    for (space, bins) in spaces {
        for &op in space.ops() {
            let table = space
                .magnitudes(op, bins, h, w)
                .unwrap_or_else(|| vec![0.0]);
            for m in table {
                set.insert((op, m.to_bits()));
                if space.is_signed(op) {
                    set.insert((op, (-m).to_bits()));
                }
            }
        }
    }
    let extra = [
        (
            Op::Rotate,
            [90.0, -90.0, 180.0, 270.0, 45.0, 0.5, -359.0, 720.0],
        ),
        (Op::ShearX, [2.0, -5.0, 0.5, 0.25, 0.05, -0.125, 1.0, 0.0]),
        (
            Op::TranslateY,
            [40.0, -33.0, 3.7, -3.7, 0.9, -0.9, 1.0, 2.0],
        ),
        (Op::Invert, [0.0; 8]),
    ];
    for (op, ms) in extra {
        for m in ms {
            set.insert((op, f64::to_bits(m)));
        }
    }
    set.into_iter()
        .map(|(op, m)| (op, f64::from_bits(m)))
        .collect()
}

fn is_geometric(op: Op) -> bool {
    matches!(
        op,
        Op::ShearX | Op::ShearY | Op::TranslateX | Op::TranslateY | Op::Rotate
    )
}

/// The fills each case is run with: torchvision's default (None, i.e. 0) for every op, and a
/// colour for the geometric ops.
fn fills(op: Op) -> Vec<Option<[u8; 3]>> {
    if is_geometric(op) {
        vec![None, Some([10, 200, 33])]
    } else {
        vec![None]
    }
}

/// Applies each case of every image with torchvision's own dispatcher,
/// `_AutoAugmentBase._apply_image_or_video_transform`, nearest interpolation.
const APPLY_OPS: &str = r#"
import json, sys, torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
torch.set_num_threads(1)
manifest = json.load(open(sys.argv[1]))
raw = open(sys.argv[2], "rb").read()
out = bytearray()
augs = {}
def aug(fill):
    key = json.dumps(fill)
    if key not in augs:
        augs[key] = v2.TrivialAugmentWide(fill=fill)
    return augs[key]
n = 0
for img in manifest["images"]:
    h, w, off = img["h"], img["w"], img["offset"]
    t = torch.frombuffer(bytearray(raw[off:off + 3 * h * w]), dtype=torch.uint8).reshape(3, h, w)
    for op, mag, fill in img["cases"]:
        a = aug(fill)
        r = a._apply_image_or_video_transform(t, op, float(mag),
                interpolation=InterpolationMode.NEAREST, fill=a._fill)
        assert r.dtype == torch.uint8 and r.shape == t.shape, (op, r.dtype, r.shape)
        out += r.contiguous().numpy().tobytes()
        n += 1
open(sys.argv[3], "wb").write(out)
print(f"{n} ops applied")
"#;

/// Per op: (values compared, values that differ, largest difference).
type Stats = BTreeMap<Op, (usize, usize, u8)>;

/// One op applied to one image: (op, magnitude, fill, height, width).
type Case = (Op, f64, Option<[u8; 3]>, usize, usize);

/// Our outputs of every case on `images`, the cases, and torchvision's manifest of them.
fn our_outputs(images: &[RgbPlanes]) -> (Vec<u8>, Vec<Case>, Vec<Value>) {
    let (mut ours, mut labels, mut manifest, mut offset) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for (i, img) in images.iter().enumerate() {
        let mut img_cases = Vec::new();
        for (op, m) in cases(img.height(), img.width()) {
            // A warp's source of each pixel depends on the size and magnitude only, so the
            // geometric ops run on one image of each size (the first, and the 24x40 one).
            if is_geometric(op) && !(i == 0 || img.height() != img.width()) {
                continue;
            }
            for fill in fills(op) {
                let out = op.apply(img, m, fill.unwrap_or([0; 3])).unwrap();
                ours.extend_from_slice(out.as_slice());
                img_cases.push(json!([op.name(), format!("{m:?}"), fill]));
                labels.push((op, m, fill, img.height(), img.width()));
            }
        }
        let (h, w) = (img.height(), img.width());
        manifest.push(json!({"h": h, "w": w, "offset": offset, "cases": img_cases}));
        offset += img.as_slice().len();
    }
    (ours, labels, manifest)
}

/// For every output pixel of an `h` x `w` warp through `matrix` (row-major), whether its
/// source position, computed in `f64` from the `f32` matrix, lies within 1e-4 pixel of a
/// half-way point along either axis: the ties whose rounding depends on the CPU's kernel.
fn tie_pixels(matrix: &[f64; 6], h: usize, w: usize) -> Vec<bool> {
    let t: Vec<f64> = matrix.iter().map(|&v| v as f32 as f64).collect();
    let near_tie = |p: f64| (p - p.floor() - 0.5).abs() < 1e-4;
    let mut ties = Vec::with_capacity(h * w);
    for row in 0..h {
        let y = row as f64 - (h as f64 - 1.0) * 0.5;
        for col in 0..w {
            let x = col as f64 - (w as f64 - 1.0) * 0.5;
            // grid_sample's source: theta * [x, y, 1] + size / 2 - 0.5, per axis.
            let px = t[0] * x + t[1] * y + t[2] + w as f64 * 0.5 - 0.5;
            let py = t[3] * x + t[4] * y + t[5] + h as f64 * 0.5 - 0.5;
            ties.push(near_tie(px) || near_tie(py));
        }
    }
    ties
}

/// Per op, how many values differ between `ours` and `theirs` (laid out as `cases`) outside
/// the ties of [`tie_pixels`], and the first case where one does; and per op how many values
/// differ at ties.
fn compare(
    ours: &[u8],
    theirs: &[u8],
    cases: &[Case],
) -> (Stats, BTreeMap<Op, Case>, BTreeMap<Op, usize>) {
    let (mut stats, mut first_mismatch, mut at_ties) =
        (Stats::new(), BTreeMap::new(), BTreeMap::new());
    let mut offset = 0;
    for &case in cases {
        let (op, m, _, h, w) = case;
        let n = 3 * h * w;
        let (a, b) = (&ours[offset..offset + n], &theirs[offset..offset + n]);
        offset += n;
        let ties = op.warp_matrix(m, h, w).map(|mat| tie_pixels(&mat, h, w));
        let e = stats.entry(op).or_default();
        e.0 += n;
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            if x == y {
                continue;
            }
            if ties.as_ref().is_some_and(|t| t[i % (h * w)]) {
                *at_ties.entry(op).or_insert(0) += 1;
                continue;
            }
            e.1 += 1;
            e.2 = e.2.max(x.abs_diff(y));
            first_mismatch.entry(op).or_insert(case);
        }
    }
    (stats, first_mismatch, at_ties)
}

#[test]
fn ops_match_torchvision() {
    let dir = scratch("ops");
    let images = test_images();
    let (ours, cases, manifest) = our_outputs(&images);
    let raw: Vec<u8> = images.iter().flat_map(|i| i.as_slice().to_vec()).collect();
    let paths = ["cases.json", "in.bin", "out.bin"].map(|f| dir.join(f));
    std::fs::write(&paths[0], json!({ "images": manifest }).to_string()).unwrap();
    std::fs::write(&paths[1], &raw).unwrap();
    let args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    run_python(APPLY_OPS, &args);
    let theirs = std::fs::read(&paths[2]).unwrap();
    assert_eq!(
        theirs.len(),
        ours.len(),
        "torchvision returned another number of values"
    );

    let (stats, first_mismatch, at_ties) = compare(&ours, &theirs, &cases);
    for (op, (n, bad, max)) in &stats {
        let ties = at_ties.get(op).copied().unwrap_or(0);
        eprintln!(
            "{op:>12}: {n:>8} values, {bad:>5} differ, max difference {max}; {ties} differ at ties"
        );
    }
    for (op, &(n, bad, max)) in &stats {
        let blend = matches!(
            op,
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness
        );
        let context = format!("{op}: first mismatch at {:?}", first_mismatch.get(op));
        if blend {
            assert!(max <= 1, "{context}: difference {max} > 1 level");
            assert!(
                bad * 1000 <= n,
                "{context}: {bad} of {n} values differ (over 0.1 %)"
            );
        } else {
            assert_eq!(bad, 0, "{context}: {bad} of {n} values differ (max {max})");
        }
    }
    assert_eq!(stats.len(), Op::ALL.len(), "every op is compared");
}

/// Dumps torchvision's augmentation spaces (ops in order, signed flags, magnitude tables for
/// the given sizes) and AutoAugment's sub-policies as JSON.
const DUMP_SPACES: &str = r#"
import json, sys, torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy
torch.set_num_threads(1)
out = {"spaces": {}, "policies": {}}
for name, cls, bins in [("TrivialWide", v2.TrivialAugmentWide, 31), ("RandAugment", v2.RandAugment, 31),
                        ("AutoAugment", v2.AutoAugment, 10)]:
    for (h, w) in [(32, 32), (24, 40)]:
        ops = []
        for op, (fn, signed) in cls._AUGMENTATION_SPACE.items():
            mags = fn(bins, h, w)
            ops.append([op, signed, None if mags is None else [repr(float(m)) for m in mags]])
        out["spaces"][f"{name} {h}x{w}"] = ops
for p in AutoAugmentPolicy:
    subs = v2.AutoAugment(p)._policies
    out["policies"][p.value] = [[[op, prob, idx] for (op, prob, idx) in sub] for sub in subs]
json.dump(out, open(sys.argv[1], "w"))
print("spaces dumped")
"#;

fn torchvision_spaces() -> &'static Value {
    static SPACES: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SPACES.get_or_init(|| {
        let path = scratch("spaces").join("spaces.json");
        run_python(DUMP_SPACES, &[path.to_str().unwrap()]);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    })
}

/// torchvision's (op, signed, magnitudes) of `space` for an image of `h` x `w`.
type SpaceTable = Vec<(Op, bool, Option<Vec<f64>>)>;

fn their_space(space: &str, h: usize, w: usize) -> SpaceTable {
    let v = &torchvision_spaces()["spaces"][format!("{space} {h}x{w}")];
    (v.as_array().unwrap().iter())
        .map(|e| {
            let op = Op::from_name(e[0].as_str().unwrap()).unwrap();
            let mags = e[2].as_array().map(|ms| {
                ms.iter()
                    .map(|m| m.as_str().unwrap().parse::<f64>().unwrap())
                    .collect()
            });
            (op, e[1].as_bool().unwrap(), mags)
        })
        .collect()
}

#[test]
fn spaces_match_torchvision() {
    let spaces = [
        (AugmentationSpace::TrivialWide, "TrivialWide", 31),
        (AugmentationSpace::RandAugment, "RandAugment", 31),
        (
            AugmentationSpace::AutoAugment,
            "AutoAugment",
            AUTO_AUGMENT_BINS,
        ),
    ];
    for (space, name, bins) in spaces {
        for (h, w) in [(32, 32), (24, 40)] {
            let theirs = their_space(name, h, w);
            let ops: Vec<Op> = theirs.iter().map(|e| e.0).collect();
            assert_eq!(space.ops(), ops, "{name}: the ops and their order");
            for (op, signed, mags) in theirs {
                assert_eq!(space.is_signed(op), signed, "{name} {op}: signed");
                let ours = space.magnitudes(op, bins, h, w);
                let bits = |v: &Option<Vec<f64>>| {
                    v.as_ref()
                        .map(|v| v.iter().map(|m| m.to_bits()).collect::<Vec<_>>())
                };
                assert_eq!(
                    bits(&ours),
                    bits(&mags),
                    "{name} {op} {h}x{w}: {ours:?} vs {mags:?}"
                );
            }
        }
    }
    for policy in AutoAugmentPolicy::ALL {
        let theirs = &torchvision_spaces()["policies"][policy.name()];
        let ours: Vec<Value> = (policy.sub_policies().iter())
            .map(|sub| {
                json!(sub
                    .iter()
                    .map(|&(op, p, i)| json!([op.name(), p, i]))
                    .collect::<Vec<_>>())
            })
            .collect();
        assert_eq!(&Value::Array(ours), theirs, "{policy}: the sub-policies");
    }
}

/// An observed outcome of one draw: the ops and the bits of their magnitudes.
type Outcome = Vec<(Op, u64)>;

fn outcome(draws: &[OpDraw]) -> Outcome {
    draws
        .iter()
        .map(|d| (d.op, d.magnitude.to_bits()))
        .collect()
}

/// The distribution of one op drawn uniformly from `table` (torchvision's space): the bin
/// uniform (`bin = None`) or fixed, the sign negative with probability 1/2 when signed.
fn single_op_distribution(table: &SpaceTable, bin: Option<usize>) -> HashMap<(Op, u64), f64> {
    let mut dist = HashMap::new();
    let p_op = 1.0 / table.len() as f64;
    for (op, signed, mags) in table {
        let Some(mags) = mags else {
            *dist.entry((*op, 0f64.to_bits())).or_default() += p_op;
            continue;
        };
        let bins: Vec<usize> = bin.map_or_else(|| (0..mags.len()).collect(), |b| vec![b]);
        let p_bin = p_op / bins.len() as f64;
        for b in bins {
            let m = mags[b];
            if *signed {
                *dist.entry((*op, m.to_bits())).or_default() += p_bin / 2.0;
                *dist.entry((*op, (-m).to_bits())).or_default() += p_bin / 2.0;
            } else {
                *dist.entry((*op, m.to_bits())).or_default() += p_bin;
            }
        }
    }
    dist
}

/// Pearson's chi-square of `counts` against `probs`, and the critical value of its degrees of
/// freedom at a false-failure probability of 1e-6 (Wilson–Hilferty, z = 4.753). Panics on an
/// outcome that has probability 0.
fn chi_square<K: std::hash::Hash + Eq + std::fmt::Debug>(
    counts: &HashMap<K, u64>,
    probs: &HashMap<K, f64>,
    n: u64,
) -> (f64, f64) {
    for k in counts.keys() {
        assert!(
            probs.get(k).is_some_and(|&p| p > 0.0),
            "impossible outcome drawn: {k:?}"
        );
    }
    let cells: Vec<f64> = probs.values().copied().filter(|&p| p > 0.0).collect();
    let stat: f64 = (probs.iter())
        .filter(|(_, &p)| p > 0.0)
        .map(|(k, &p)| {
            let e = p * n as f64;
            let o = *counts.get(k).unwrap_or(&0) as f64;
            (o - e).powi(2) / e
        })
        .sum();
    let df = (cells.len() - 1) as f64;
    let a = 2.0 / (9.0 * df);
    let critical = df * (1.0 - a + 4.753 * a.sqrt()).powi(3);
    (stat, critical)
}

fn assert_fits<K: std::hash::Hash + Eq + std::fmt::Debug>(
    what: &str,
    counts: &HashMap<K, u64>,
    probs: &HashMap<K, f64>,
    n: u64,
) {
    let (stat, critical) = chi_square(counts, probs, n);
    eprintln!(
        "{what}: chi-square {stat:.1} over {} cells (critical {critical:.1})",
        probs.len()
    );
    assert!(stat < critical, "{what}: chi-square {stat:.1} >= {critical:.1}: the draws do not follow torchvision's probabilities");
}

#[test]
fn trivial_augment_draws_follow_torchvision() {
    let (h, w) = (32, 32);
    let probs = single_op_distribution(&their_space("TrivialWide", h, w), None);
    let policy = TrivialAugmentWide::default();
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let n = 400_000u64;
    let mut counts = HashMap::new();
    for _ in 0..n {
        let d = policy.draw(&mut rng, h, w);
        *counts.entry((d.op, d.magnitude.to_bits())).or_insert(0u64) += 1;
    }
    assert_fits("TrivialAugmentWide", &counts, &probs, n);
}

#[test]
fn rand_augment_draws_follow_torchvision() {
    for (num_ops, magnitude, (h, w)) in [(2, 9, (32, 32)), (3, 30, (24, 40)), (1, 0, (32, 32))] {
        let probs = single_op_distribution(&their_space("RandAugment", h, w), Some(magnitude));
        let policy = RandAugment::new(num_ops, magnitude, 31).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7 + magnitude as u64);
        let images = 100_000u64;
        let mut counts = HashMap::new();
        for _ in 0..images {
            let draws = policy.draw(&mut rng, h, w);
            assert_eq!(draws.len(), num_ops);
            for d in draws {
                *counts.entry((d.op, d.magnitude.to_bits())).or_insert(0u64) += 1;
            }
        }
        let what = format!("RandAugment({num_ops}, {magnitude}) {h}x{w}");
        assert_fits(&what, &counts, &probs, images * num_ops as u64);
    }
}

/// The distribution of AutoAugment's outcomes (the applied ops in order), from torchvision's
/// sub-policies and space: each sub-policy with probability 1/25, each op applied with its
/// probability, a signed magnitude negated with probability 1/2.
fn auto_augment_distribution(
    policy: AutoAugmentPolicy,
    h: usize,
    w: usize,
) -> HashMap<Outcome, f64> {
    let space: HashMap<Op, (bool, Option<Vec<f64>>)> = (their_space("AutoAugment", h, w)
        .into_iter())
    .map(|(op, s, m)| (op, (s, m)))
    .collect();
    let subs = torchvision_spaces()["policies"][policy.name()]
        .as_array()
        .unwrap();
    let mut dist: HashMap<Outcome, f64> = HashMap::new();
    for sub in subs {
        // The partial outcomes after each op, with their probabilities.
        let mut partial: Vec<(Outcome, f64)> = vec![(vec![], 1.0 / subs.len() as f64)];
        for e in sub.as_array().unwrap() {
            let op = Op::from_name(e[0].as_str().unwrap()).unwrap();
            let p = e[1].as_f64().unwrap();
            let (signed, mags) = &space[&op];
            let values: Vec<(u64, f64)> = match (mags, e[2].as_u64()) {
                (Some(m), Some(i)) if *signed => {
                    let m = m[i as usize];
                    vec![(m.to_bits(), 0.5), ((-m).to_bits(), 0.5)]
                }
                (Some(m), Some(i)) => vec![(m[i as usize].to_bits(), 1.0)],
                _ => vec![(0f64.to_bits(), 1.0)],
            };
            let mut next = Vec::new();
            for (out, q) in partial {
                next.push((out.clone(), q * (1.0 - p)));
                for &(bits, r) in &values {
                    let mut o = out.clone();
                    o.push((op, bits));
                    next.push((o, q * p * r));
                }
            }
            partial = next;
        }
        for (o, q) in partial {
            *dist.entry(o).or_default() += q;
        }
    }
    dist
}

#[test]
fn auto_augment_draws_follow_torchvision() {
    for (policy, (h, w)) in [
        (AutoAugmentPolicy::Cifar10, (32, 32)),
        (AutoAugmentPolicy::ImageNet, (32, 32)),
        (AutoAugmentPolicy::Svhn, (24, 40)),
    ] {
        let probs = auto_augment_distribution(policy, h, w);
        let aa = AutoAugment { policy };
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let n = 200_000u64;
        let mut counts = HashMap::new();
        for _ in 0..n {
            *counts
                .entry(outcome(&aa.draw(&mut rng, h, w)))
                .or_insert(0u64) += 1;
        }
        assert_fits(
            &format!("AutoAugment({policy}) {h}x{w}"),
            &counts,
            &probs,
            n,
        );
    }
}

/// MixUp and CutMix through torchvision's own `transform` with the same λ; CutMix's box from
/// `make_params` with its Beta draw and `torch.randint` replaced by the same values; and
/// `F.erase` with the same rectangle.
const MIX: &str = r#"
import json, sys, torch
import torchvision.transforms.v2._augment as A
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from safetensors.torch import load_file, save_file
cfg = json.load(open(sys.argv[1]))
t = load_file(sys.argv[2])
images, labels, k = t["images"], t["labels"], cfg["classes"]
out = {}
lam = float(cfg["mixup_lam"])
m = v2.MixUp(alpha=1.0, num_classes=k)
p = dict(lam=lam, labels=labels, batch_size=labels.shape[0])
out["mixup_images"], out["mixup_targets"] = m.transform(images, p), m.transform(labels, p)
boxes = []
for i, (lam, rx, ry) in enumerate(cfg["cutmix"]):
    c = v2.CutMix(alpha=1.0, num_classes=k)
    class Fixed:
        def sample(self, shape): return torch.tensor(float(lam))
    c._dist = Fixed()
    queue = [rx, ry]
    real = torch.randint
    A.torch.randint = lambda high, size: torch.tensor([queue.pop(0)])
    try:
        params = c.make_params([images])
    finally:
        A.torch.randint = real
    boxes.append([list(params["box"]), repr(params["lam_adjusted"])])
    params.update(labels=labels, batch_size=labels.shape[0])
    out[f"cutmix_images_{i}"] = c.transform(images, params)
    out[f"cutmix_targets_{i}"] = c.transform(labels, params)
i, j, h, w = cfg["erase"]
out["erased"] = F.erase(images[0], i, j, h, w, torch.tensor([float(cfg["erase_value"])])[:, None, None])
save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[3])
json.dump(boxes, open(sys.argv[4], "w"))
print(f"mixed, {len(boxes)} cutmix boxes")
"#;

fn assert_same(what: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.size(), theirs.size(), "{what}: shape");
    assert_eq!(ours.kind(), theirs.kind(), "{what}: kind");
    let diff = (ours - theirs).abs().max().double_value(&[]);
    assert!(
        ours.equal(theirs),
        "{what}: differs from torchvision (max difference {diff:e})"
    );
}

/// Runs [`MIX`] on `cfg`, `images` and `labels`: torchvision's tensors by name, and its
/// CutMix boxes and λs.
fn run_mix(cfg: &Value, images: &Tensor, labels: &Tensor) -> (HashMap<String, Tensor>, Value) {
    let dir = scratch("mix");
    let files = [
        "cfg.json",
        "in.safetensors",
        "out.safetensors",
        "boxes.json",
    ];
    let paths = files.map(|f| dir.join(f));
    std::fs::write(&paths[0], cfg.to_string()).unwrap();
    Tensor::write_safetensors(&[("images", images), ("labels", labels)], &paths[1]).unwrap();
    let args: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
    run_python(MIX, &args);
    let tensors = Tensor::read_safetensors(&paths[2]).unwrap();
    let boxes = serde_json::from_str(&std::fs::read_to_string(&paths[3]).unwrap()).unwrap();
    (tensors.into_iter().collect(), boxes)
}

#[test]
fn mixup_cutmix_and_erase_match_torchvision() {
    tch::manual_seed(5);
    let (n, classes, h, w) = (6i64, 7i64, 9i64, 11i64);
    let images = Tensor::randn([n, 3, h, w], (Kind::Float, tch::Device::Cpu));
    let labels = Tensor::from_slice(&[3i64, 0, 6, 3, 1, 5]);
    let mixup_lam = 0.3717;
    // (λ, r_x, r_y): inside, clipped at the top-left, clipped at the bottom-right, λ = 1.
    let cut = [(0.41, 5, 4), (0.05, 0, 0), (0.7, 10, 8), (1.0, 3, 3)];
    let erase_box = EraseBox {
        top: 2,
        left: 3,
        height: 4,
        width: 5,
    };
    let cfg = json!({
        "classes": classes,
        "mixup_lam": format!("{mixup_lam:?}"),
        "cutmix": cut.iter().map(|&(l, x, y)| json!([format!("{l:?}"), x, y])).collect::<Vec<_>>(),
        "erase": [erase_box.top, erase_box.left, erase_box.height, erase_box.width],
        "erase_value": "-0.5",
    });
    let (theirs, boxes) = run_mix(&cfg, &images, &labels);

    let mixed = mixup_with(&images, &labels, classes, mixup_lam).unwrap();
    assert_same("mixup images", &mixed.images, &theirs["mixup_images"]);
    assert_same("mixup targets", &mixed.targets, &theirs["mixup_targets"]);
    for (i, &(lam, rx, ry)) in cut.iter().enumerate() {
        let b = cutmix_box(lam, (rx, ry), h, w).unwrap();
        let their_box: Vec<i64> = (boxes[i][0].as_array().unwrap().iter())
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(vec![b.x1, b.y1, b.x2, b.y2], their_box, "cutmix box {i}");
        let their_lam: f64 = boxes[i][1].as_str().unwrap().parse().unwrap();
        assert_eq!(
            b.lambda(h, w).to_bits(),
            their_lam.to_bits(),
            "cutmix λ {i}"
        );
        let cutm = cutmix_with(&images, &labels, classes, b).unwrap();
        assert_same(
            &format!("cutmix images {i}"),
            &cutm.images,
            &theirs[&format!("cutmix_images_{i}")],
        );
        assert_same(
            &format!("cutmix targets {i}"),
            &cutm.targets,
            &theirs[&format!("cutmix_targets_{i}")],
        );
    }
    let first = images.get(0).contiguous();
    let mut values = Vec::<f32>::try_from(first.flatten(0, -1)).unwrap();
    erase(&mut values, 3, h as usize, w as usize, erase_box, -0.5).unwrap();
    let erased = Tensor::from_slice(&values).reshape([3, h, w]);
    assert_same("erased image", &erased, &theirs["erased"]);
}

#[test]
fn random_draws_of_mixing_and_erasing() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let images = Tensor::rand([4, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 1, 2, 1]);
    let (mixed, lam) = MixUp::new(0.2)
        .unwrap()
        .apply(&mut rng, &images, &labels, 3)
        .unwrap();
    assert!((0.0..=1.0).contains(&lam));
    let sums = mixed
        .targets
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    assert!(sums.allclose(
        &Tensor::ones([4], (Kind::Float, tch::Device::Cpu)),
        1e-6,
        1e-6,
        false
    ));
    let (cut, b) = CutMix::new(1.0)
        .unwrap()
        .apply(&mut rng, &images, &labels, 3)
        .unwrap();
    let again = cutmix_with(&images, &labels, 3, b).unwrap();
    assert!(cut.images.equal(&again.images));

    // RandomErasing: applied with probability p; every box inside the image with an area in
    // the scale range (up to the rounding of its sides). 20 000 draws at p = 0.5: the count is
    // within 6 standard deviations (70.7) of 10 000.
    let re = RandomErasing::default();
    let (h, w) = (32, 32);
    let mut applied = 0;
    for _ in 0..20_000 {
        if let Some(b) = re.draw(&mut rng, h, w) {
            applied += 1;
            assert!(b.top + b.height <= h && b.left + b.width <= w && b.height < h && b.width < w);
            let area = (b.height * b.width) as f64 / (h * w) as f64;
            assert!((0.02 * 0.3..=0.33 * 1.5).contains(&area), "{b:?}");
        }
    }
    assert!(
        (applied as i64 - 10_000).abs() < 425,
        "{applied} of 20000 erased at p = 0.5"
    );
    let mut img = vec![1.0f32; 3 * h * w];
    let never = RandomErasing { p: 0.0, ..re };
    assert_eq!(never.apply(&mut rng, &mut img, 3, h, w).unwrap(), None);
    let always = RandomErasing { p: 1.0, ..re };
    let b = always.apply(&mut rng, &mut img, 3, h, w).unwrap().unwrap();
    let zeros = img.iter().filter(|&&v| v == 0.0).count();
    assert_eq!(zeros, 3 * b.height * b.width);
}

fn config_error(e: DataError) -> (String, String, String) {
    let text = e.to_string();
    match e {
        DataError::InvalidConfig {
            field,
            value,
            expected,
        } => (field.to_string(), value, expected),
        DataError::InvalidTensor {
            what,
            expected,
            actual,
        } => (what.to_string(), actual, expected),
        other => panic!("unexpected error {other:?} ({text})"),
    }
}

#[test]
fn bad_policy_and_op_inputs_are_typed_errors() {
    // Unknown policy names list the valid ones.
    let e = "autoaugment".parse::<Policy>().unwrap_err().to_string();
    for name in Policy::NAMES {
        assert!(e.contains(name), "{e}");
    }
    assert!(e.contains("\"autoaugment\""), "{e}");
    for name in Policy::NAMES {
        assert_eq!(Policy::from_name(name).unwrap().name(), name);
    }
    assert!(
        matches!(Policy::from_name("ra").unwrap(), Policy::RandAugment(r) if r == RandAugment::new(2, 9, 31).unwrap())
    );
    // Magnitudes out of range.
    let (field, value, expected) = config_error(RandAugment::new(2, 31, 31).unwrap_err());
    assert_eq!(
        (field.as_str(), value.as_str()),
        ("RandAugment magnitude", "31")
    );
    assert!(expected.contains("0..=30"), "{expected}");
    assert!(TrivialAugmentWide::new(1).is_err());
    assert!(RandAugment::new(2, 0, 1).is_err());
    let img = RgbPlanes::filled(4, 4, 9).unwrap();
    for (op, m) in [
        (Op::Solarize, 1.5),
        (Op::Posterize, 9.0),
        (Op::Posterize, -1.0),
        (Op::Brightness, -1.5),
        (Op::Sharpness, -2.0),
        (Op::Rotate, f64::NAN),
        (Op::TranslateX, f64::INFINITY),
    ] {
        let (field, value, _) = config_error(op.apply(&img, m, [0; 3]).unwrap_err());
        assert_eq!(field, "augmentation magnitude");
        assert!(value.contains(op.name()), "{value}");
    }
    assert!(Op::Posterize.apply(&img, 8.9, [0; 3]).is_ok());
    assert!(Op::Solarize.apply(&img, 1.0, [0; 3]).is_ok());
    let e = Op::from_name("Shear").unwrap_err().to_string();
    assert!(e.contains("ShearX") && e.contains("Invert"), "{e}");
    // Images.
    assert!(RgbPlanes::new(2, 2, vec![0; 11]).is_err());
    assert!(RgbPlanes::new(0, 2, vec![]).is_err());
}

/// Mixing: a batch of 1, alpha <= 0, labels outside the classes, wrong shapes, λ out of
/// range, a box outside the image.
#[test]
fn bad_mixing_inputs_are_typed_errors() {
    let cpu = (Kind::Float, tch::Device::Cpu);
    let one = Tensor::zeros([1, 3, 4, 4], cpu);
    let (field, value, _) =
        config_error(mixup_with(&one, &Tensor::from_slice(&[0i64]), 3, 0.5).unwrap_err());
    assert_eq!((field.as_str(), value.as_str()), ("mix batch size", "1"));
    for alpha in [0.0, -1.0, f64::NAN] {
        assert_eq!(config_error(MixUp::new(alpha).unwrap_err()).0, "mix alpha");
        assert_eq!(config_error(CutMix::new(alpha).unwrap_err()).0, "mix alpha");
    }
    let two = Tensor::zeros([2, 3, 4, 4], cpu);
    let (what, actual, _) =
        config_error(mixup_with(&two, &Tensor::from_slice(&[0i64, 3]), 3, 0.5).unwrap_err());
    assert_eq!(
        (what.as_str(), actual.as_str()),
        ("labels to mix", "labels from 0 to 3")
    );
    assert!(mixup_with(&two, &Tensor::from_slice(&[0i64, 1, 2]), 3, 0.5).is_err());
    assert!(mixup_with(&two, &Tensor::from_slice(&[0i32, 1]), 3, 0.5).is_err());
    assert!(mixup_with(
        &two.to_kind(Kind::Uint8),
        &Tensor::from_slice(&[0i64, 1]),
        3,
        0.5
    )
    .is_err());
    assert!(mixup_with(&two, &Tensor::from_slice(&[0i64, 1]), 3, 1.5).is_err());
    assert!(cutmix_box(0.5, (4, 0), 4, 4).is_err());
    let outside = resnext::data::ops::CutMixBox {
        x1: 0,
        y1: 0,
        x2: 5,
        y2: 2,
    };
    assert!(cutmix_with(&two, &Tensor::from_slice(&[0i64, 1]), 3, outside).is_err());
}

#[test]
fn bad_erasing_inputs_are_typed_errors() {
    let bad = RandomErasing {
        scale: (0.5, 0.2),
        ..RandomErasing::default()
    };
    assert_eq!(
        config_error(bad.validate().unwrap_err()).0,
        "random erasing scale"
    );
    let bad = RandomErasing {
        ratio: (0.0, 1.0),
        ..RandomErasing::default()
    };
    assert!(bad.validate().is_err());
    let mut small = vec![0f32; 10];
    assert!(erase(
        &mut small,
        3,
        2,
        2,
        EraseBox {
            top: 0,
            left: 0,
            height: 1,
            width: 1
        },
        0.0
    )
    .is_err());
    let mut ok = vec![0f32; 12];
    assert!(erase(
        &mut ok,
        3,
        2,
        2,
        EraseBox {
            top: 1,
            left: 0,
            height: 2,
            width: 1
        },
        0.0
    )
    .is_err());
}

/// What each op costs on a 32x32 image (release-like numbers need `--release`):
/// `cargo test --release --test augment_ops -- --ignored --nocapture op_costs`.
#[test]
#[ignore]
fn op_costs() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let img = random_image(&mut rng, 32, 32);
    let reps = 20_000;
    for (op, m) in [
        (Op::Identity, 0.0),
        (Op::ShearX, 0.3),
        (Op::ShearY, -0.3),
        (Op::TranslateX, 9.0),
        (Op::TranslateY, -9.0),
        (Op::Rotate, 30.0),
        (Op::Brightness, 0.5),
        (Op::Color, 0.5),
        (Op::Contrast, 0.5),
        (Op::Sharpness, 0.5),
        (Op::Posterize, 4.0),
        (Op::Solarize, 0.5),
        (Op::AutoContrast, 0.0),
        (Op::Equalize, 0.0),
        (Op::Invert, 0.0),
    ] {
        let start = std::time::Instant::now();
        for _ in 0..reps {
            std::hint::black_box(op.apply(std::hint::black_box(&img), m, [0; 3]).unwrap());
        }
        let per = start.elapsed().as_secs_f64() / reps as f64;
        eprintln!("{:>12}: {:7.2} µs per 32x32 image", op.name(), per * 1e6);
    }
    let policy = Policy::from_name("ta_wide").unwrap();
    let start = std::time::Instant::now();
    for _ in 0..reps {
        std::hint::black_box(policy.apply(&mut rng, &img, [0; 3]).unwrap());
    }
    let per = start.elapsed().as_secs_f64() / reps as f64;
    eprintln!(
        "{:>12}: {:7.2} µs per 32x32 image (draw + op)",
        "ta_wide",
        per * 1e6
    );
}
