//! Throughput of the CPU data pipeline over one epoch of 50,000 synthetic CIFAR-sized images
//! (random crop with zero padding + horizontal flip + normalisation), against tch's own
//! `tch::vision::dataset::augmentation` (flip + crop with padding 4) on the same data, with
//! libtorch limited to one thread.
//!
//! Then the per-image cost of each augmentation stage after crop and flip (the recipe's extra
//! ops): the same epoch through [`epoch_batches`] with (i) crop + flip only, (ii) +
//! TrivialAugmentWide, (iii) + random erasing with p = 0.25, (iv) + the MixUp / CutMix batch
//! stage (α 0.2 / 1.0, one of the two per batch), each stage added to the previous ones.
//!
//! Run with `cargo bench --bench data_pipeline`.
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use resnext::data::{
    augment_image, batch_augment_params, epoch_batches, Augmentation, BatchConfig, Dataset,
    DeviceDataset, Normalization,
};
use tch::{Device, Kind, Tensor};

const N: usize = 50_000;
const BATCH: usize = 128;
const RUNS: usize = 3;

/// Best of `RUNS` timings of `f`.
fn best(mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut count = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        count = f();
        best = best.min(t.elapsed());
    }
    (best, count)
}

fn row(name: &str, (time, images): (Duration, usize)) -> f64 {
    let rate = images as f64 / time.as_secs_f64();
    println!("{name:<58} {rate:>12.0} {:>10.3}", time.as_secs_f64());
    rate
}

fn main() {
    tch::set_num_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let bytes: Vec<u8> = (0..N * 3072).map(|_| rng.gen()).collect();
    let images = Tensor::from_slice(&bytes).view([N as i64, 3, 32, 32]);
    let labels = Tensor::from_slice(&(0..N as i64).map(|i| i % 10).collect::<Vec<_>>());
    let norm = Normalization::default();
    let cfg = BatchConfig {
        batch_size: BATCH,
        shuffle: true,
        augment: true,
        seed: 1,
        ..BatchConfig::default()
    };

    println!(
        "one epoch of {N} random 3x32x32 images, batch {BATCH}, crop(pad 4) + flip + normalise, \
         best of {RUNS}; libtorch threads: {}",
        tch::get_num_threads()
    );
    println!("{:<58} {:>12} {:>10}", "pipeline", "images/s", "epoch (s)");

    // The per-image kernel alone, on this thread.
    let kernel = best(|| {
        let mut out = vec![0f32; BATCH * 3072];
        let mut done = 0;
        for (b, chunk) in bytes.chunks(BATCH * 3072).enumerate() {
            let params = batch_augment_params(1, 0, b, chunk.len() / 3072);
            for (k, img) in chunk.chunks_exact(3072).enumerate() {
                let dst = &mut out[k * 3072..(k + 1) * 3072];
                if augment_image(img, Some(params[k]), &norm, dst).is_err() {
                    panic!("augment_image failed");
                }
                done += 1;
            }
        }
        std::hint::black_box(&out);
        done
    });
    row("resnext::data augment_image kernel (1 thread)", kernel);

    // The whole iterator: shuffle, gather, draws, kernel, tensors; made on its prefetch thread.
    let data = match DeviceDataset::new(&images, &labels, Device::Cpu) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let mut epoch = 0;
    let ours = best(|| {
        epoch += 1;
        let it = match data.batches(&cfg, epoch, 0) {
            Ok(it) => it,
            Err(e) => panic!("{e}"),
        };
        it.map(|b| b.images.size()[0] as usize).sum()
    });
    let ours_rate = row(
        "resnext::data DeviceDataset::batches (prefetch thread)",
        ours,
    );

    // tch's augmentation on the same data: shuffle-gather, u8 -> f32, normalise, flip + crop.
    let mean = Tensor::from_slice(&norm.mean).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&norm.std).view([1, 3, 1, 1]);
    let tch_once = || {
        let perm = Tensor::randperm(N as i64, (Kind::Int64, Device::Cpu));
        let mut done = 0;
        for start in (0..N).step_by(BATCH) {
            let len = BATCH.min(N - start) as i64;
            let idx = perm.narrow(0, start as i64, len);
            let x = (images.index_select(0, &idx).to_kind(Kind::Float) / 255.0 - &mean) / &std;
            let y = labels.index_select(0, &idx);
            let x = tch::vision::dataset::augmentation(&x, true, 4, 0);
            std::hint::black_box((&x, &y));
            done += len as usize;
        }
        done
    };
    let theirs = best(tch_once);
    let tch_rate = row(
        "tch::vision::dataset::augmentation (1 libtorch thread)",
        theirs,
    );
    println!(
        "ratio resnext::data batches / tch augmentation: {:.1}x",
        ours_rate / tch_rate
    );
    println!(
        "target >= 50000 images/s: {}",
        if ours_rate >= 50_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    stage_costs(&data, &cfg);
}

/// The stage cases, each with the stages of the ones before it.
fn stage_cases() -> Vec<(&'static str, Augmentation)> {
    let none = Augmentation::default();
    let ta_wide = Augmentation {
        auto_augment: Some("ta_wide".into()),
        ..none.clone()
    };
    let erase = Augmentation {
        random_erase: 0.25,
        ..ta_wide.clone()
    };
    let mix = Augmentation {
        mixup_alpha: 0.2,
        cutmix_alpha: 1.0,
        ..erase.clone()
    };
    vec![
        ("(i) crop + flip (+ normalise)", none),
        ("(ii) + TrivialAugmentWide", ta_wide),
        ("(iii) + random erase p 0.25", erase),
        ("(iv) + MixUp 0.2 / CutMix 1.0 batch stage", mix),
    ]
}

/// One epoch through `epoch_batches` for every stage case: images/s, microseconds per image and
/// the cost per image over case (i).
fn stage_costs(data: &DeviceDataset, base: &BatchConfig) {
    println!();
    println!(
        "per-image cost of the stages: epoch_batches over the same {N} images, batch {BATCH}, \
         best of {RUNS}, each case with the stages above it"
    );
    println!(
        "{:<58} {:>12} {:>10} {:>10} {:>10}",
        "stages", "images/s", "epoch (s)", "us/image", "+us/image"
    );
    let shared: Arc<dyn Dataset> = Arc::new(data.share());
    let mut first = None;
    for (name, augmentation) in stage_cases() {
        let cfg = BatchConfig {
            augmentation,
            ..base.clone()
        };
        let mut epoch = 0;
        let (time, images) = best(|| {
            epoch += 1;
            let it = match epoch_batches(Arc::clone(&shared), &cfg, epoch, 0) {
                Ok(it) => it,
                Err(e) => panic!("{name}: {e}"),
            };
            it.map(|b| b.images.size()[0] as usize).sum()
        });
        let per_image = time.as_secs_f64() * 1e6 / images as f64;
        let extra = per_image - *first.get_or_insert(per_image);
        println!(
            "{name:<58} {:>12.0} {:>10.3} {per_image:>10.2} {extra:>10.2}",
            images as f64 / time.as_secs_f64(),
            time.as_secs_f64()
        );
    }
}
