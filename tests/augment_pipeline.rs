//! The augmentation stages after crop and flip (auto-augmentation policy, random erasing) and
//! the batch stage (MixUp / CutMix) as the pipelines run them: each stage from its own random
//! stream, the same pixels in every pipeline (host loop, tensor ops, image folders), and each
//! checked against the ops of `resnext::data::ops` applied by hand in torchvision's order
//! (those ops are checked against torchvision itself in `tests/augment_ops.rs`).
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnext::data::ops::{apply_draws, erase, MixUp, Policy, RandomErasing, RgbPlanes};
use resnext::data::{
    augment_image, batch_augment_params, epoch_batches, stage_rng, Augmentation, BatchConfig,
    Dataset, DeviceDataset, ImageFolder, ImageFolderOptions, Normalization, Pipeline, Recipe,
    Stage,
};
use tch::{Device, Tensor};

const N: usize = 24;

fn synthetic(seed: u64) -> (Vec<u8>, Tensor, Tensor) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bytes: Vec<u8> = (0..N * 3072).map(|_| rng.gen()).collect();
    let images = Tensor::from_slice(&bytes).view([N as i64, 3, 32, 32]);
    let labels: Vec<i64> = (0..N as i64).map(|i| i % 10).collect();
    (bytes, images, Tensor::from_slice(&labels))
}

fn config(augmentation: Augmentation) -> BatchConfig {
    BatchConfig {
        batch_size: 8,
        shuffle: false,
        seed: 5,
        augmentation,
        ..BatchConfig::default()
    }
}

fn policy_and_erasing() -> Augmentation {
    Augmentation {
        auto_augment: Some("ta_wide".into()),
        random_erase: 0.5,
        ..Augmentation::default()
    }
}

fn batches(data: Arc<dyn Dataset>, cfg: &BatchConfig) -> Vec<(Tensor, Option<Tensor>)> {
    epoch_batches(data, cfg, 3, 0)
        .unwrap()
        .map(|b| (b.images, b.targets))
        .collect()
}

fn host(images: &Tensor, labels: &Tensor) -> Arc<dyn Dataset> {
    Arc::new(DeviceDataset::with_pipeline(images, labels, Device::Cpu, Pipeline::HostLoop).unwrap())
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

/// Batch 1 of epoch 3 made by hand: crop and flip from the crop stream, the policy's ops
/// from the policy stream on the 8-bit image, normalisation, erasing from the erasing stream.
fn by_hand(bytes: &[u8], aug: &Augmentation) -> Vec<f32> {
    let (seed, epoch, batch) = (5, 3, 1);
    let norm = Normalization::default();
    let crops = batch_augment_params(seed, epoch, batch, 8);
    let policy: Policy = aug.auto_augment.as_deref().unwrap().parse().unwrap();
    let mut policy_rng = stage_rng(seed, epoch, batch, Stage::Policy);
    let erasing = RandomErasing {
        p: aug.random_erase,
        ..RandomErasing::default()
    };
    let mut erase_rng = stage_rng(seed, epoch, batch, Stage::Erasing);
    let mut out = Vec::new();
    for (k, crop) in crops.iter().enumerate() {
        let image = &bytes[(8 + k) * 3072..(9 + k) * 3072];
        let mut cropped = vec![0f32; 3072];
        augment_image(image, Some(*crop), &Normalization::unit(), &mut cropped).unwrap();
        let pixels: Vec<u8> = cropped.iter().map(|v| (v * 255.0).round() as u8).collect();
        let draws = policy.draw(&mut policy_rng, 32, 32);
        let done = apply_draws(&RgbPlanes::new(32, 32, pixels).unwrap(), &draws, [0; 3]).unwrap();
        let mut normalised = vec![0f32; 3072];
        augment_image(done.as_slice(), None, &norm, &mut normalised).unwrap();
        if let Some(b) = erasing.draw(&mut erase_rng, 32, 32) {
            erase(&mut normalised, 3, 32, 32, b, 0.0).unwrap();
        }
        out.extend(normalised);
    }
    out
}

#[test]
fn policy_and_erasing_are_torchvisions_order_each_from_its_own_stream() {
    let (bytes, images, labels) = synthetic(1);
    let aug = policy_and_erasing();
    let made = batches(host(&images, &labels), &config(aug.clone()));
    let got = to_vec(&made[1].0);
    let want = by_hand(&bytes, &aug);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // The same arithmetic in the same order: bitwise.
    assert_eq!(worst, 0.0, "largest difference {worst}");
    // Erasing drew some boxes (probability 1/2 on 8 images) and left zeros.
    assert!(got.iter().filter(|&&v| v == 0.0).count() > 3 * 16);
}

#[test]
fn turning_a_stage_on_moves_no_other_stages_draws() {
    let (_, images, labels) = synthetic(2);
    let data = host(&images, &labels);
    let plain = batches(Arc::clone(&data), &config(Augmentation::default()));
    let erasing = Augmentation {
        random_erase: 1.0,
        ..Augmentation::default()
    };
    let erased = batches(data, &config(erasing));
    let mut changed = 0;
    for ((a, _), (b, _)) in plain.iter().zip(&erased) {
        for (x, y) in to_vec(a).iter().zip(to_vec(b)) {
            // Outside the erased boxes the pixels are the crop-and-flip run's, bit for bit.
            assert!(*x == y || y == 0.0, "{x} became {y}");
            changed += usize::from(*x != y);
        }
    }
    assert!(changed > 0, "erasing with p = 1 erased nothing");
}

#[test]
fn host_loop_and_tensor_ops_pipelines_make_the_same_batches_with_every_stage() {
    let (_, images, labels) = synthetic(3);
    let cfg = config(policy_and_erasing());
    let host_batches = batches(host(&images, &labels), &cfg);
    let ops =
        DeviceDataset::with_pipeline(&images, &labels, Device::Cpu, Pipeline::TensorOps).unwrap();
    // The tensor pipeline says which stage it cannot batch, for the trainer to announce.
    let notes = ops.per_image_stages(&cfg);
    assert!(
        notes.len() == 1 && notes[0].contains("ta_wide"),
        "{notes:?}"
    );
    assert!(host(&images, &labels).per_image_stages(&cfg).is_empty());
    let ops_batches = batches(Arc::new(ops), &cfg);
    for ((a, _), (b, _)) in host_batches.iter().zip(&ops_batches) {
        assert!(a.equal(b), "max |diff| {}", (a - b).abs().max());
    }
}

fn write_pngs(dir: &Path, bytes: &[u8]) {
    let class_dir = dir.join("only");
    std::fs::create_dir_all(&class_dir).unwrap();
    for k in 0..N {
        let chw = &bytes[k * 3072..(k + 1) * 3072];
        let hwc: Vec<u8> = (0..1024)
            .flat_map(|p| [chw[p], chw[1024 + p], chw[2048 + p]])
            .collect();
        let png = image::RgbImage::from_raw(32, 32, hwc).unwrap();
        png.save(class_dir.join(format!("{k:05}.png"))).unwrap();
    }
}

#[test]
fn image_folders_apply_the_stages_as_the_cifar_pipeline_does() {
    let (bytes, images, _) = synthetic(4);
    let dir = tempfile::tempdir().unwrap();
    write_pngs(dir.path(), &bytes);
    let folder = ImageFolder::open(
        dir.path(),
        ImageFolderOptions::new(Recipe::Small { size: 32 }),
    )
    .unwrap();
    let zeros = Tensor::zeros([N as i64], (tch::Kind::Int64, Device::Cpu));
    let cfg = config(policy_and_erasing());
    let from_folder = batches(Arc::new(folder), &cfg);
    let from_cifar = batches(host(&images, &zeros), &cfg);
    for ((a, _), (b, _)) in from_folder.iter().zip(&from_cifar) {
        assert!(a.equal(b), "max |diff| {}", (a - b).abs().max());
    }
}

#[test]
fn the_batch_stage_mixes_with_torchvisions_mixup_from_its_own_stream() {
    let (_, images, labels) = synthetic(5);
    let data = host(&images, &labels);
    let plain = batches(Arc::clone(&data), &config(Augmentation::default()));
    let mixing = Augmentation {
        mixup_alpha: 0.4,
        ..Augmentation::default()
    };
    let mixed = batches(data, &config(mixing));
    for (b, ((x, none), (mx, targets))) in plain.iter().zip(&mixed).enumerate() {
        assert!(none.is_none());
        let targets = targets.as_ref().expect("soft targets");
        let lab = labels.narrow(0, 8 * b as i64, 8);
        let mut rng = stage_rng(5, 3, b, Stage::Mix);
        let (want, _) = MixUp::new(0.4)
            .unwrap()
            .apply(&mut rng, x, &lab, 10)
            .unwrap();
        assert!(mx.equal(&want.images), "batch {b} images");
        assert!(targets.equal(&want.targets), "batch {b} targets");
        let sums =
            Vec::<f32>::try_from(targets.sum_dim_intlist(1, false, tch::Kind::Float)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6), "{sums:?}");
    }
}

#[test]
fn cutmix_and_mixup_together_give_each_batch_one_of_the_two() {
    let (_, images, labels) = synthetic(6);
    let both = Augmentation {
        mixup_alpha: 1.0,
        cutmix_alpha: 1.0,
        ..Augmentation::default()
    };
    let cfg = BatchConfig {
        batch_size: 2,
        ..config(both)
    };
    let made = batches(host(&images, &labels), &cfg);
    // CutMix leaves whole pixels of one image or the other; MixUp blends every pixel.
    let plain = batches(host(&images, &labels), &config(Augmentation::default()));
    let originals: Vec<f32> = plain.iter().flat_map(|(x, _)| to_vec(x)).collect();
    let (mut cut, mut blended) = (0, 0);
    for (x, _) in &made {
        let values = to_vec(x);
        let kept = values.iter().filter(|v| originals.contains(v)).count();
        if kept == values.len() {
            cut += 1;
        } else {
            blended += 1;
        }
    }
    assert!(cut > 0 && blended > 0, "cutmix {cut}, mixup {blended}");
}

#[test]
fn bad_stage_settings_are_errors_naming_the_setting() {
    let bad = |aug: Augmentation, batch_size: usize| {
        let cfg = BatchConfig {
            batch_size,
            ..config(aug)
        };
        cfg.validate().unwrap_err().to_string()
    };
    let e = bad(
        Augmentation {
            auto_augment: Some("augmix".into()),
            ..Augmentation::default()
        },
        8,
    );
    assert!(e.contains("augmix") && e.contains("ta_wide, ra"), "{e}");
    let e = bad(
        Augmentation {
            auto_augment: Some("ra".into()),
            ra_magnitude: 31,
            ..Augmentation::default()
        },
        8,
    );
    assert!(e.contains("31") && e.contains("0..=30"), "{e}");
    let e = bad(
        Augmentation {
            random_erase: 1.5,
            ..Augmentation::default()
        },
        8,
    );
    assert!(e.contains("1.5") && e.contains("[0, 1]"), "{e}");
    let e = bad(
        Augmentation {
            mixup_alpha: -1.0,
            ..Augmentation::default()
        },
        8,
    );
    assert!(e.contains("mixup_alpha") && e.contains("-1"), "{e}");
    let e = bad(
        Augmentation {
            cutmix_alpha: 1.0,
            ..Augmentation::default()
        },
        1,
    );
    assert!(e.contains("batch_size") && e.contains("at least 2"), "{e}");
}
