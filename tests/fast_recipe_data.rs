//! The data pieces of airbench94's CIFAR-10 speed recipe (`airbench==0.1.8`, `CifarLoader`
//! in `airbench/utils.py`): the crop's padding and reflection padding, checked pixel for pixel
//! against torchvision for every offset; the alternating ("derandomised") flip, checked for
//! airbench's invariant on our pipelines and on airbench's own loader; both pipelines equal bit
//! for bit; and the defaults equal to the crop and flip of earlier versions. Python: see
//! `tests/common/python.rs`.
#[path = "common/python.rs"]
mod python;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use python::run_python;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnext::data::{
    augment_image_with, augmentation_rng, base_flip, crop_flip_params, epoch_batches,
    AugmentParams, Augmentation, BatchConfig, CropFlip, DataError, Dataset, DeviceDataset,
    FlipMode, ImageFolder, ImageFolderOptions, Normalization, PaddingMode, Pipeline, Recipe,
};
use resnext::trainer::{TrainConfig, TrainError};
use tch::{Device, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fast_recipe_data")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` random `uint8 [3, 32, 32]` images (flat), as a tensor too, with labels `i % 10`.
fn synthetic(n: usize, seed: u64) -> (Vec<u8>, Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bytes: Vec<u8> = (0..n * 3072).map(|_| rng.gen()).collect();
    let images = Tensor::from_slice(&bytes).view([n as i64, 3, 32, 32]);
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    (bytes, images, Tensor::from_slice(&labels))
}

/// Photograph-like test images: a smooth gradient with a blob, one with a hard vertical edge
/// and a diagonal stripe near the borders (what the padding mirrors), a textured one and pure
/// noise.
fn test_images() -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(94);
    let mut images = Vec::new();
    for kind in 0..4 {
        let mut img = vec![0u8; 3072];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let (fx, fy) = (x as f64 / 31.0, y as f64 / 31.0);
                    let blob = (-((fx - 0.6).powi(2) + (fy - 0.4).powi(2)) * 8.0).exp();
                    let v = match kind {
                        0 => 30.0 + 180.0 * fx + 40.0 * blob + 20.0 * c as f64 * fy,
                        1 if x < 3 || (x + y) % 11 == c => 240.0,
                        1 => 20.0 + 5.0 * y as f64,
                        2 => 128.0 + 90.0 * ((x * (c + 1)) as f64 * 0.7).sin() * fy,
                        _ => f64::from(rng.gen::<u8>()),
                    };
                    img[c * 1024 + y * 32 + x] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        images.push(img);
    }
    images
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

/// One batch: its epoch, its index in the epoch, its dataset indices, its images.
type Made = (u64, usize, Vec<usize>, Tensor);

/// Every batch of epochs `0..epochs` of `data` under `cfg`.
fn epochs(data: Arc<dyn Dataset>, cfg: &BatchConfig, epochs: u64) -> Vec<Made> {
    let mut out = Vec::new();
    for e in 0..epochs {
        let mut batches = epoch_batches(Arc::clone(&data), cfg, e, 0).unwrap();
        for b in batches.by_ref() {
            out.push((e, b.index, b.indices, b.images));
        }
        assert!(batches.error().is_none(), "{:?}", batches.error());
    }
    out
}

fn dataset(images: &Tensor, labels: &Tensor, pipeline: Pipeline) -> Arc<dyn Dataset> {
    Arc::new(DeviceDataset::with_pipeline(images, labels, Device::Cpu, pipeline).unwrap())
}

fn crop(padding: u8, padding_mode: PaddingMode, flip: FlipMode) -> CropFlip {
    CropFlip {
        padding,
        padding_mode,
        flip,
    }
}

fn config(crop_flip: CropFlip, batch_size: usize, seed: u64) -> BatchConfig {
    BatchConfig {
        batch_size,
        seed,
        augmentation: Augmentation {
            crop_flip,
            ..Augmentation::default()
        },
        ..BatchConfig::default()
    }
}

/// torchvision's `v2.functional.pad(img, p, padding_mode=...)` + `crop(top, left, 32, 32)` +
/// `horizontal_flip` (the order of `RandomCrop` then `RandomHorizontalFlip`) against ours for
/// every offset pair, both flips, on `uint8` images, compared before normalisation: ours runs
/// with the unit normalisation (`px / 255` in `f32`), turned back into bytes by `* 255` and
/// rounding, which is exact. For reflect padding 2 the script also checks that torchvision's
/// pad is airbench's `F.pad(images, (2,) * 4, 'reflect')` (on floats, as airbench pads).
#[test]
fn padded_crops_equal_torchvision_for_every_offset_and_flip() {
    let dir = scratch("torchvision");
    let images = test_images();
    std::fs::write(dir.join("images.u8"), images.concat()).unwrap();
    let settings = [
        (2, PaddingMode::Reflect),
        (2, PaddingMode::Zeros),
        (4, PaddingMode::Reflect),
        (4, PaddingMode::Zeros),
        (0, PaddingMode::Reflect),
    ];
    let code = r#"
import sys, torch
import torch.nn.functional as TF
from torchvision.transforms.v2 import functional as F
d, spec = sys.argv[1], sys.argv[2]
images = torch.frombuffer(bytearray(open(d + '/images.u8', 'rb').read()), dtype=torch.uint8)
images = images.view(-1, 3, 32, 32)
out = []
for item in spec.split(','):
    p, mode = item.split(':')
    p = int(p)
    for img in images:
        padded = F.pad(img, [p], padding_mode={'zeros': 'constant', 'reflect': 'reflect'}[mode])
        if mode == 'reflect' and p == 2:
            ab = TF.pad(img.float()[None], (2,) * 4, 'reflect')[0]
            assert torch.equal(ab, padded.float()), 'airbench pad differs'
        for top in range(2 * p + 1):
            for left in range(2 * p + 1):
                c = F.crop(padded, top, left, 32, 32)
                for flip in (False, True):
                    out.append(F.horizontal_flip(c) if flip else c)
open(d + '/out.u8', 'wb').write(torch.stack(out).contiguous().numpy().tobytes())
print(len(out), 'crops')
"#;
    let spec: Vec<String> = settings.iter().map(|(p, m)| format!("{p}:{m}")).collect();
    run_python(code, &[dir.to_str().unwrap(), &spec.join(",")]);
    let want = std::fs::read(dir.join("out.u8")).unwrap();
    let mut at = 0;
    for (padding, mode) in settings {
        let crop = crop(padding, mode, FlipMode::Random);
        for (k, img) in images.iter().enumerate() {
            for dy in 0..=2 * padding {
                for dx in 0..=2 * padding {
                    for flip in [false, true] {
                        let p = AugmentParams { dx, dy, flip };
                        let mut out = vec![0f32; 3072];
                        augment_image_with(img, Some(p), &crop, &Normalization::unit(), &mut out)
                            .unwrap();
                        let got: Vec<u8> = out.iter().map(|v| (v * 255.0).round() as u8).collect();
                        let w = &want[at * 3072..(at + 1) * 3072];
                        assert!(got == w, "{mode} padding {padding}, image {k}, {p:?}");
                        at += 1;
                    }
                }
            }
        }
    }
    assert_eq!(at * 3072, want.len());
}

/// The flip state of every image of every batch, found from its pixels (crop padding 0, the
/// unit normalisation): `(epoch, dataset index) -> flipped`.
fn flip_states(bytes: &[u8], batches: &[Made]) -> HashMap<(u64, usize), bool> {
    let mut states = HashMap::new();
    for (e, _, indices, images) in batches {
        let values = to_vec(images);
        for (k, &i) in indices.iter().enumerate() {
            let got: Vec<u8> = values[k * 3072..(k + 1) * 3072]
                .iter()
                .map(|v| (v * 255.0).round() as u8)
                .collect();
            let img = &bytes[i * 3072..(i + 1) * 3072];
            let mirrored: Vec<u8> = (0..3072).map(|j| img[j - j % 32 + 31 - j % 32]).collect();
            let flipped = match (got == img, got == mirrored) {
                (true, false) => false,
                (false, true) => true,
                _ => panic!("epoch {e}, image {i}: neither the image nor its mirror"),
            };
            assert!(
                states.insert((*e, i), flipped).is_none(),
                "image {i} twice in epoch {e}"
            );
        }
    }
    states
}

/// (a) Over 4 shuffled epochs every image's flip alternates epoch to epoch, its state at epoch
/// 0 is its [`base_flip`] (a function of the seed and its index in the dataset, not of its
/// batch position: another batch size gives the same states), and about half the images start
/// flipped: a binomial(256, 1/2) count within 4 standard deviations (8) of 128.
///
/// (b) airbench's `CifarLoader(..., aug=dict(flip=True, translate=2), altflip=True)`
/// (`airbench/utils.py`, `__iter__`): at epoch 0 it flips every image with a coin
/// (`batch_flip_lr` on the normalised set, kept as `proc_images['flip']`) and pads that with
/// reflection once; each epoch then crops at fresh random shifts in `-2..=2` per axis
/// (`batch_crop`), and on odd epochs flips the whole cropped set (`images.flip(-1)`), before
/// shuffling. Mirroring commutes with reflection padding and maps the crop at shift `sx` to the
/// mirrored crop at `-sx` (an equally likely shift), so image `i` is seen mirrored at epoch `e`
/// iff coin(i) XOR `e` is odd, with per-epoch random crops: exactly our `alternate` (crop
/// offsets from each epoch's stream, flip = `base_flip(seed, i)` XOR `e` odd). We cannot share
/// its draws, so [`airbench_altflip_has_the_same_invariant`] checks this reading on airbench's
/// own loader.
#[test]
fn alternate_flip_alternates_every_epoch_from_one_coin_per_image() {
    let n = 256;
    let (bytes, images, labels) = synthetic(n, 8);
    let seed = 3;
    let unit = |cfg: BatchConfig| BatchConfig {
        normalization: Normalization::unit(),
        ..cfg
    };
    let alternate = crop(0, PaddingMode::Zeros, FlipMode::Alternate);
    let data = dataset(&images, &labels, Pipeline::HostLoop);
    let states = flip_states(
        &bytes,
        &epochs(Arc::clone(&data), &unit(config(alternate, 32, seed)), 4),
    );
    assert_eq!(states.len(), 4 * n);
    let mut started_flipped = 0;
    for i in 0..n {
        let base = states[&(0, i)];
        assert_eq!(base, base_flip(seed, i), "image {i}");
        for e in 0..4 {
            assert_eq!(states[&(e, i)], base ^ (e % 2 == 1), "image {i}, epoch {e}");
        }
        started_flipped += usize::from(base);
    }
    assert!(
        started_flipped.abs_diff(n / 2) <= 32,
        "{started_flipped} of {n} start flipped"
    );
    // Another batch size (other batch positions for every image): the same states.
    let other = flip_states(&bytes, &epochs(data, &unit(config(alternate, 7, seed)), 4));
    assert_eq!(other, states);
    // With translation the crops keep their per-epoch draws (those of the random flip, whose
    // coins are drawn and replaced) and the flips follow the same rule.
    let indices: Vec<usize> = (0..64).collect();
    let reflect = crop(2, PaddingMode::Reflect, FlipMode::Alternate);
    let random = CropFlip {
        flip: FlipMode::Random,
        ..reflect
    };
    for e in 0..4 {
        let alt = crop_flip_params(&reflect, seed, e, 1, &indices);
        let rnd = crop_flip_params(&random, seed, e, 1, &indices);
        for (k, (a, r)) in alt.iter().zip(&rnd).enumerate() {
            assert_eq!((a.dx, a.dy), (r.dx, r.dy));
            assert!(a.dx <= 4 && a.dy <= 4);
            assert_eq!(a.flip, base_flip(seed, k) ^ (e % 2 == 1));
        }
    }
}

/// (b) airbench's own `CifarLoader` with airbench94's settings on 200 images (labels = their
/// indices, to find them after the shuffle), 4 epochs: each output image is matched against
/// the 50 candidates (25 shifts of the reflection-padded image, in either orientation) to read
/// its flip state, and the script asserts that it is the epoch-0 state XOR (epoch odd).
#[test]
fn airbench_altflip_has_the_same_invariant() {
    let dir = scratch("airbench");
    let code = r#"
import os, sys, torch
import torch.nn.functional as F
from airbench.utils import CifarLoader
d, n = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
torch.save({'images': images, 'labels': torch.arange(n), 'classes': list('abcdefghij')},
           os.path.join(d, 'train.pt'))
torch.manual_seed(1)
loader = CifarLoader(d, train=True, batch_size=50, aug=dict(flip=True, translate=2),
                     altflip=True, gpu='cpu')
norm = loader.normalize(loader.images)
cands = []
for f in (False, True):
    p = F.pad(norm.flip(-1) if f else norm, (2,) * 4, 'reflect')
    for sy in range(-2, 3):
        for sx in range(-2, 3):
            cands.append(p[:, :, 2 + sy:34 + sy, 2 + sx:34 + sx])
cands = torch.stack(cands, 1)  # [n, 50, 3, 32, 32]; 0..25 unflipped, 25..50 flipped
state = {}
for e in range(4):
    seen = 0
    for x, y in loader:
        match = (cands[y] == x[:, None]).flatten(2).all(2)  # [B, 50]
        for k in range(len(y)):
            hits = match[k].nonzero().flatten().tolist()
            orient = {h >= 25 for h in hits}
            assert len(orient) == 1, (e, int(y[k]), hits)
            state[(e, int(y[k]))] = orient.pop()
        seen += len(y)
    assert seen == n, seen
for i in range(n):
    for e in range(4):
        assert state[(e, i)] == (state[(0, i)] ^ (e % 2 == 1)), (i, e)
print('altflip invariant holds;', sum(state[(0, i)] for i in range(n)), 'of', n, 'start flipped')
"#;
    let out = run_python(code, &[dir.to_str().unwrap(), "200"]);
    let flipped: usize = out
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {out}"));
    // binomial(200, 1/2): within 4 standard deviations (7.1) of 100.
    assert!(flipped.abs_diff(100) <= 28, "{out}");
}

/// (c) The host loop and the tensor-ops pipeline make the same batches, bit for bit, with
/// airbench's settings (reflect padding 2, alternate flip) and a few others, over 3 shuffled
/// epochs; so do image folders of the same pictures (the small-image recipe), and resuming an
/// epoch mid-way gives its remaining batches.
#[test]
fn host_loop_tensor_ops_and_image_folders_agree_with_every_crop_setting() {
    let n = 40;
    let (bytes, images, labels) = synthetic(n, 4);
    let dir = scratch("folder");
    write_pngs(&dir, &bytes, n);
    let folder: Arc<dyn Dataset> = Arc::new(
        ImageFolder::open(&dir, ImageFolderOptions::new(Recipe::Small { size: 32 })).unwrap(),
    );
    let host = dataset(&images, &labels, Pipeline::HostLoop);
    let ops = dataset(&images, &labels, Pipeline::TensorOps);
    for crop_flip in [
        crop(2, PaddingMode::Reflect, FlipMode::Alternate),
        crop(2, PaddingMode::Zeros, FlipMode::Alternate),
        crop(5, PaddingMode::Reflect, FlipMode::Random),
        crop(0, PaddingMode::Zeros, FlipMode::None),
    ] {
        let cfg = config(crop_flip, 8, 6);
        let a = epochs(Arc::clone(&host), &cfg, 3);
        let b = epochs(Arc::clone(&ops), &cfg, 3);
        let c = epochs(Arc::clone(&folder), &cfg, 3);
        assert_eq!(a.len(), 15);
        for ((x, y), z) in a.iter().zip(&b).zip(&c) {
            assert_eq!((x.0, x.1, &x.2), (y.0, y.1, &y.2));
            assert!(
                x.3.equal(&y.3),
                "{crop_flip}: tensor ops differ, epoch {}",
                x.0
            );
            // The folder's labels are all 0, its order and pixels the same.
            assert!(
                x.3.equal(&z.3),
                "{crop_flip}: image folder differs, epoch {}",
                x.0
            );
        }
        let resumed: Vec<Tensor> = epoch_batches(Arc::clone(&ops), &cfg, 1, 3)
            .unwrap()
            .map(|b| b.images)
            .collect();
        assert_eq!(resumed.len(), 2);
        assert!(resumed.iter().zip(&a[8..10]).all(|(r, x)| r.equal(&x.3)));
    }
}

fn write_pngs(dir: &Path, bytes: &[u8], n: usize) {
    let class_dir = dir.join("only");
    std::fs::create_dir_all(&class_dir).unwrap();
    for k in 0..n {
        let chw = &bytes[k * 3072..(k + 1) * 3072];
        let hwc: Vec<u8> = (0..1024)
            .flat_map(|p| [chw[p], chw[1024 + p], chw[2048 + p]])
            .collect();
        let png = image::RgbImage::from_raw(32, 32, hwc).unwrap();
        png.save(class_dir.join(format!("{k:05}.png"))).unwrap();
    }
}

/// The FNV-1a hash of the bits of every value.
fn fnv(values: &[f32], mut h: u64) -> u64 {
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The crop and flip of earlier versions, written out: offsets `dy`, `dx` in `0..=8` then a
/// coin from the batch's crop stream, 4 pixels of zero padding, `px * scale + shift`.
fn old_batch(bytes: &[u8], indices: &[usize], seed: u64, epoch: u64, batch: usize) -> Vec<f32> {
    let a = Normalization::default().affine();
    let mut rng = augmentation_rng(seed, epoch, batch);
    let mut out = Vec::new();
    for &i in indices {
        let (dy, dx) = (
            rng.gen_range(0..=8u8) as isize,
            rng.gen_range(0..=8u8) as isize,
        );
        let flip = rng.gen_bool(0.5);
        for c in 0..3 {
            for y in 0..32isize {
                for x in 0..32isize {
                    let (sy, sx) = (y + dy - 4, if flip { 31 - x } else { x } + dx - 4);
                    out.push(if (0..32).contains(&sy) && (0..32).contains(&sx) {
                        let px = bytes[i * 3072 + c * 1024 + (sy * 32 + sx) as usize];
                        f32::from(px) * a.scale[c] + a.shift[c]
                    } else {
                        a.shift[c]
                    });
                }
            }
        }
    }
    out
}

/// (d) With the default settings both pipelines make the batches of earlier versions: equal to
/// the old crop and flip written out, and to the hash of 3 epochs recorded with the code before
/// the crop settings existed (commit e7712bd).
#[test]
fn default_settings_give_the_batches_of_earlier_versions() {
    let n = 40;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let bytes: Vec<u8> = (0..n * 3072).map(|_| rng.gen()).collect();
    let images = Tensor::from_slice(&bytes).view([n as i64, 3, 32, 32]);
    let labels = Tensor::from_slice(&(0..n as i64).map(|i| i % 10).collect::<Vec<_>>());
    let cfg = BatchConfig {
        batch_size: 16,
        seed: 9,
        ..BatchConfig::default()
    };
    assert!(cfg.augmentation.crop_flip.is_default());
    for pipeline in [Pipeline::HostLoop, Pipeline::TensorOps] {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for (e, batch, indices, x) in epochs(dataset(&images, &labels, pipeline), &cfg, 3) {
            let values = to_vec(&x);
            let old = old_batch(&bytes, &indices, 9, e, batch);
            assert!(values == old, "{pipeline:?}, epoch {e}, batch {batch}");
            h = fnv(&values, h);
        }
        assert_eq!(h, 0x5e68_0d2c_bd48_481e, "{pipeline:?}");
    }
}

/// Bad crop values are typed errors naming the setting, never panics.
#[test]
fn bad_crop_settings_are_errors_naming_the_setting() {
    let e = crop(17, PaddingMode::Zeros, FlipMode::Random)
        .validate(32)
        .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::InvalidConfig {
                field: "crop_padding",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("17") && e.to_string().contains("0..=16"),
        "{e}"
    );
    let e = crop(8, PaddingMode::Reflect, FlipMode::Random)
        .validate(8)
        .unwrap_err();
    assert!(e.to_string().contains("below the image side 8"), "{e}");
    // Offsets beyond the padding: an error, not a panic.
    let p = AugmentParams {
        dx: 5,
        dy: 0,
        flip: false,
    };
    let reflect2 = crop(2, PaddingMode::Reflect, FlipMode::Random);
    let e = augment_image_with(
        &[0; 3072],
        Some(p),
        &reflect2,
        &Normalization::unit(),
        &mut [0.0; 3072],
    )
    .unwrap_err();
    assert!(e.to_string().contains("0..=4"), "{e}");
    let (_, images, labels) = synthetic(4, 1);
    let bad = config(crop(17, PaddingMode::Zeros, FlipMode::Random), 2, 0);
    assert!(bad.validate().is_err());
    assert!(DeviceDataset::new(&images, &labels, Device::Cpu)
        .unwrap()
        .batches(&bad, 0, 0)
        .is_err());
}

/// Configurations of earlier versions load with the defaults; airbench's settings load,
/// survive a JSON round trip and reach the pipeline; bad values are errors naming the field.
#[test]
fn train_config_crop_fields_load_and_are_checked() {
    let cfg = TrainConfig::from_json(r#"{ "model": "tiny" }"#).unwrap();
    assert_eq!(
        (cfg.crop_padding, cfg.crop_padding_mode, cfg.flip),
        (4, PaddingMode::Zeros, FlipMode::Random)
    );
    let airbench = r#"{ "crop_padding": 2, "crop_padding_mode": "reflect", "flip": "alternate" }"#;
    let cfg = TrainConfig::from_json(airbench).unwrap();
    let airbench_crop = crop(2, PaddingMode::Reflect, FlipMode::Alternate);
    assert_eq!(cfg.augmentation().crop_flip, airbench_crop);
    assert_eq!(TrainConfig::from_json(&cfg.to_json()).unwrap(), cfg);
    for (json, field) in [
        (r#"{ "crop_padding": 20 }"#, "crop_padding"),
        (
            r#"{ "crop_padding": 12, "crop_padding_mode": "reflect", "image_size": 12 }"#,
            "crop_padding",
        ),
    ] {
        match TrainConfig::from_json(json) {
            Err(TrainError::InvalidConfig { field: f, .. }) => assert_eq!(f, field, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
    for (json, value, name) in [
        (r#"{ "crop_padding_mode": "wrap" }"#, "wrap", "reflect"),
        (r#"{ "flip": "sometimes" }"#, "sometimes", "alternate"),
    ] {
        let e = TrainConfig::from_json(json).unwrap_err().to_string();
        assert!(e.contains(value) && e.contains(name), "{e}");
    }
    assert_eq!(
        "wrap".parse::<PaddingMode>().unwrap_err(),
        "one of zeros, reflect"
    );
    assert_eq!(
        "x".parse::<FlipMode>().unwrap_err(),
        "one of random, alternate, none"
    );
}

/// The ImageNet transforms (`RandomResizedCrop`) neither pad nor flip otherwise: a batch
/// asked with other settings fails with an error naming the setting.
#[test]
fn imagenet_folders_refuse_other_crop_settings() {
    let (bytes, _, _) = synthetic(4, 2);
    let dir = scratch("imagenet");
    write_pngs(&dir, &bytes, 4);
    let folder: Arc<dyn Dataset> = Arc::new(
        ImageFolder::open(&dir, ImageFolderOptions::new(Recipe::ImageNet { size: 72 })).unwrap(),
    );
    for (crop_flip, field) in [
        (
            crop(2, PaddingMode::Zeros, FlipMode::Random),
            "crop_padding",
        ),
        (
            crop(4, PaddingMode::Reflect, FlipMode::Random),
            "crop_padding_mode",
        ),
        (crop(4, PaddingMode::Zeros, FlipMode::Alternate), "flip"),
    ] {
        let mut batches =
            epoch_batches(Arc::clone(&folder), &config(crop_flip, 2, 0), 0, 0).unwrap();
        assert!(batches.next().is_none());
        let e = batches.take_error().expect("an error");
        assert!(
            matches!(e, DataError::InvalidConfig { field: f, .. } if f == field),
            "{e}"
        );
        assert!(e.to_string().contains("ImageNet"), "{e}");
    }
    // The defaults still work there.
    let cfg = config(CropFlip::default(), 2, 0);
    assert_eq!(epochs(folder, &cfg, 1).len(), 2);
}
