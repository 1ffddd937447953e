//! Seeded random streams: the order of an epoch and the augmentation of each batch.
//!
//! Both are pure functions of `(seed, epoch)` and `(seed, epoch, batch)`, so an epoch can be
//! resumed at any batch with exactly the batches an uninterrupted run would have produced.
//! The generator is ChaCha8 (`rand_chacha`), whose output is the same on every platform:
//!
//! * the permutation of epoch `e` uses the key `seed_from_u64(mix(seed, PERMUTATION))` and the
//!   ChaCha stream `e`;
//! * the augmentation of batch `b` of epoch `e` uses the key
//!   `seed_from_u64(mix(mix(seed, AUGMENTATION), e))` and the ChaCha stream `b`,
//!
//! where `mix(a, b) = splitmix64(splitmix64(a) ^ b)`. The other stages of the pipeline
//! ([`Stage`]) draw from streams of the same form under their own tags ([`stage_rng`]). The
//! one draw that is not per epoch, the base flip of [`FlipMode::Alternate`] ([`base_flip`]),
//! is the top bit of `mix(mix(seed, FLIP_BASE), index)` for the image's index in the dataset.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{AugmentParams, BatchConfig, CropFlip, FlipMode};

/// Domain tag of the permutation streams.
const PERMUTATION: u64 = 0x7065_726d_7574_6521;
/// Domain tag of the augmentation streams.
const AUGMENTATION: u64 = 0x6175_676d_656e_7421;
/// Domain tag of the base flips of [`FlipMode::Alternate`].
const FLIP_BASE: u64 = 0x666c_6970_6261_7365;

/// The SplitMix64 finaliser (a bijection of `u64`).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combines two words into one seed.
fn mix(a: u64, b: u64) -> u64 {
    splitmix64(splitmix64(a) ^ b)
}

/// The generator of the permutation of `epoch`.
pub fn permutation_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, PERMUTATION));
    rng.set_stream(epoch);
    rng
}

/// The generator of the augmentation (crop and flip) of batch `batch` of `epoch`: the stream
/// of [`Stage::CropFlip`].
pub fn augmentation_rng(seed: u64, epoch: u64, batch: usize) -> ChaCha8Rng {
    stage_rng(seed, epoch, batch, Stage::CropFlip)
}

/// A stage of the data pipeline with a random stream of its own (see
/// [`Augmentation`](super::Augmentation)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Crop and flip (and the ImageNet recipe's per-image seeds): the stream of every earlier
    /// version.
    CropFlip,
    /// The auto-augmentation policy.
    Policy,
    /// Random erasing.
    Erasing,
    /// MixUp / CutMix, per batch.
    Mix,
}

impl Stage {
    /// The domain tag of the stage's streams.
    fn tag(self) -> u64 {
        match self {
            Stage::CropFlip => AUGMENTATION,
            Stage::Policy => 0x706f_6c69_6379_2121,
            Stage::Erasing => 0x6572_6173_696e_6721,
            Stage::Mix => 0x6d69_7875_7021_2121,
        }
    }
}

/// The generator of `stage` for batch `batch` of `epoch`: the key
/// `seed_from_u64(mix(mix(seed, tag), epoch))` with the stage's own tag, ChaCha stream `batch`.
pub fn stage_rng(seed: u64, epoch: u64, batch: usize, stage: Stage) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(mix(seed, stage.tag()), epoch));
    rng.set_stream(batch as u64);
    rng
}

/// The dataset indices of epoch `epoch`, in the order they are batched: the first
/// `cfg.used_len(len)` indices, shuffled with [`permutation_rng`] when `cfg.shuffle`, then
/// `cfg.shard`'s part of them (all of them by default).
pub fn epoch_order(len: usize, cfg: &BatchConfig, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cfg.used_len(len)).collect();
    if cfg.shuffle {
        order.shuffle(&mut permutation_rng(cfg.seed, epoch));
    }
    cfg.shard.select(order)
}

/// The dataset indices of batch `batch` of an epoch batched in `order`.
pub fn batch_indices(order: &[usize], batch_size: usize, batch: usize) -> &[usize] {
    let start = batch.saturating_mul(batch_size).min(order.len());
    let end = start.saturating_add(batch_size).min(order.len());
    &order[start..end]
}

/// The augmentation of the `count` images of batch `batch` of `epoch`, one
/// [`AugmentParams::draw`] per image in batch order from [`augmentation_rng`].
pub fn batch_augment_params(
    seed: u64,
    epoch: u64,
    batch: usize,
    count: usize,
) -> Vec<AugmentParams> {
    let mut rng = augmentation_rng(seed, epoch, batch);
    (0..count).map(|_| AugmentParams::draw(&mut rng)).collect()
}

/// The coin of image `index` (its index in the dataset) for [`FlipMode::Alternate`], drawn
/// once for the whole run: the top bit of `mix(mix(seed, FLIP_BASE), index)`.
pub fn base_flip(seed: u64, index: usize) -> bool {
    mix(mix(seed, FLIP_BASE), index as u64) >> 63 == 1
}

/// Whether image `index` is flipped at `epoch` under [`FlipMode::Alternate`]: its
/// [`base_flip`] XOR `epoch` is odd (airbench's `altflip`).
pub fn alternate_flip(seed: u64, index: usize, epoch: u64) -> bool {
    base_flip(seed, index) ^ (epoch % 2 == 1)
}

/// The crops and flips of the images `indices` (dataset indices, in batch order) of batch
/// stream `stream` of `epoch` under `crop`: one [`CropFlip::draw`] per image from
/// [`augmentation_rng`], its coin kept for [`FlipMode::Random`], replaced by
/// [`alternate_flip`] for [`FlipMode::Alternate`] and by `false` for [`FlipMode::None`]. With
/// the default `crop` this is [`batch_augment_params`].
pub fn crop_flip_params(
    crop: &CropFlip,
    seed: u64,
    epoch: u64,
    stream: usize,
    indices: &[usize],
) -> Vec<AugmentParams> {
    let mut rng = augmentation_rng(seed, epoch, stream);
    indices
        .iter()
        .map(|&i| {
            let mut p = crop.draw(&mut rng);
            p.flip = match crop.flip {
                FlipMode::Random => p.flip,
                FlipMode::Alternate => alternate_flip(seed, i, epoch),
                FlipMode::None => false,
            };
            p
        })
        .collect()
}
