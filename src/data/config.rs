//! Batching options and per-channel normalisation.
use serde::{Deserialize, Serialize};

use super::{Augmentation, DataError};

/// Per-channel normalisation `(x / 255 - mean) / std`, as torchvision's `ToTensor` followed by
/// `Normalize(mean, std)`.
///
/// The default is the CIFAR-10 training-set statistics: mean `(0.4914, 0.4822, 0.4465)` and
/// std `(0.2470, 0.2435, 0.2616)` (red, green, blue; the standard deviation over all training
/// pixels of each channel).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of each channel (red, green, blue), on the 0..1 scale.
    pub mean: [f32; 3],
    /// Standard deviation of each channel, on the 0..1 scale; must be positive.
    pub std: [f32; 3],
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
        }
    }
}

impl Normalization {
    /// The identity on the 0..1 scale (`x / 255`): mean 0, std 1.
    pub fn unit() -> Self {
        Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// Checks that every mean is finite and every std finite and positive.
    pub fn validate(&self) -> Result<(), DataError> {
        for c in 0..3 {
            if !self.mean[c].is_finite() {
                return Err(DataError::InvalidConfig {
                    field: "normalization.mean",
                    value: format!("{:?}", self.mean),
                    expected: "finite values".into(),
                });
            }
            if !(self.std[c].is_finite() && self.std[c] > 0.0) {
                return Err(DataError::InvalidConfig {
                    field: "normalization.std",
                    value: format!("{:?}", self.std),
                    expected: "finite values above 0".into(),
                });
            }
        }
        Ok(())
    }

    /// The same map as an affine function of the raw byte: `out = px * scale + shift` with
    /// `scale = 1 / (255 * std)` and `shift = -mean / std` (so a zero byte, such as padding,
    /// becomes `shift`).
    pub fn affine(&self) -> Affine {
        let mut a = Affine {
            scale: [0.0; 3],
            shift: [0.0; 3],
        };
        for c in 0..3 {
            a.scale[c] = 1.0 / (255.0 * self.std[c]);
            a.shift[c] = -self.mean[c] / self.std[c];
        }
        a
    }
}

/// A per-channel affine map of raw bytes, `out = px * scale[c] + shift[c]`
/// (see [`Normalization::affine`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    /// Factor of each channel.
    pub scale: [f32; 3],
    /// Offset of each channel (the value of a zero byte).
    pub shift: [f32; 3],
}

/// How [`batches`](super::batches) cuts a dataset into batches for one epoch.
///
/// The same configuration, seed and epoch give the same batches, bit for bit, on every run
/// and machine (see [`epoch_order`](super::epoch_order) and
/// [`batch_augment_params`](super::batch_augment_params)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    /// Images per batch (at least 1). The last batch is smaller unless `drop_last`.
    pub batch_size: usize,
    /// Shuffle the images every epoch (a permutation drawn from `seed` and the epoch).
    pub shuffle: bool,
    /// Random crop with 4 pixels of zero padding and random horizontal flip, as torchvision's
    /// `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`.
    pub augment: bool,
    /// Drop the last batch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Use only the first `limit` images of the dataset (for quick runs); `None` for all.
    pub limit: Option<usize>,
    /// Seed of the shuffling and augmentation random streams.
    pub seed: u64,
    /// Normalisation applied after augmentation.
    pub normalization: Normalization,
    /// The part of every epoch this process batches (data-parallel training); the whole epoch
    /// by default.
    pub shard: Shard,
    /// The stages after crop and flip: auto-augmentation policy, random erasing, MixUp /
    /// CutMix (see [`Augmentation`]); all off by default.
    pub augmentation: Augmentation,
}

/// One of `count` equal parts of every epoch, as PyTorch's `DistributedSampler`: the epoch's
/// order is drawn for the whole dataset, padded by repeating its first indices to a multiple
/// of `count`, and part `index` takes every `count`-th index from position `index`. Every part
/// then has the same number of images and batches, and together they cover the epoch.
///
/// ```
/// use resnext::data::{epoch_order, BatchConfig, Shard};
/// let whole = BatchConfig { shuffle: false, ..BatchConfig::default() };
/// let half = BatchConfig { shard: Shard { index: 1, count: 2 }, ..whole.clone() };
/// assert_eq!(epoch_order(5, &whole, 0), [0, 1, 2, 3, 4]);
/// assert_eq!(epoch_order(5, &half, 0), [1, 3, 0]); // padded with the first index
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which part, in `0..count` (the rank of the process).
    pub index: usize,
    /// Number of parts (the number of processes); 1 for the whole epoch.
    pub count: usize,
}

impl Default for Shard {
    /// The whole epoch: part 0 of 1.
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Images of one part when the epoch uses `used` images.
    pub fn len(&self, used: usize) -> usize {
        if self.count <= 1 {
            used
        } else {
            used.div_ceil(self.count)
        }
    }

    /// Part `index` of the epoch `order` (see [`Shard`]).
    pub fn select(&self, order: Vec<usize>) -> Vec<usize> {
        if self.count <= 1 || order.is_empty() {
            return order;
        }
        (0..self.len(order.len()))
            .map(|k| order[(k * self.count + self.index) % order.len()])
            .collect()
    }
}

impl Default for BatchConfig {
    /// Training defaults: batch size 128, shuffled, augmented, last batch kept, seed 0.
    fn default() -> Self {
        BatchConfig {
            batch_size: 128,
            shuffle: true,
            augment: true,
            drop_last: false,
            limit: None,
            seed: 0,
            normalization: Normalization::default(),
            shard: Shard::default(),
            augmentation: Augmentation::default(),
        }
    }
}

impl BatchConfig {
    /// Evaluation settings: in order, no augmentation, every image used.
    pub fn eval(batch_size: usize) -> Self {
        BatchConfig {
            batch_size,
            shuffle: false,
            augment: false,
            drop_last: false,
            ..BatchConfig::default()
        }
    }

    /// Checks the batch size (at least 1), the shard, the normalisation and the augmentation
    /// stages.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.batch_size == 0 {
            return Err(DataError::InvalidConfig {
                field: "batch_size",
                value: "0".into(),
                expected: "at least 1".into(),
            });
        }
        if self.shard.count == 0 || self.shard.index >= self.shard.count {
            return Err(DataError::InvalidConfig {
                field: "shard",
                value: format!("{} of {}", self.shard.index, self.shard.count),
                expected: "an index below a count of at least 1".into(),
            });
        }
        self.normalization.validate()?;
        self.augmentation.validate(self.batch_size)
    }

    /// Images used per epoch out of a dataset of `len` images (`limit` applied).
    pub fn used_len(&self, len: usize) -> usize {
        self.limit.map_or(len, |l| l.min(len))
    }

    /// Batches per epoch for a dataset of `len` images (`limit`, `shard` and `drop_last`
    /// applied).
    pub fn num_batches(&self, len: usize) -> usize {
        let n = self.shard.len(self.used_len(len));
        let b = self.batch_size.max(1);
        if self.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }
}
