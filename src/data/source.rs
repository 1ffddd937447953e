//! What the trainer trains on: the [`Dataset`] trait, the batches of an epoch of any dataset
//! ([`epoch_batches`]), and the two sets of a run ([`DataSplits`]).
use std::sync::Arc;

use tch::{Device, Tensor};

use super::augmentation::mix_rng;
use super::{batch_indices, epoch_order, mix_batch, BatchConfig, Batches, DataError};

/// What [`Dataset::make_batch`] is asked to make: batch `index` of `epoch`, the examples
/// `indices` in that order, under `config` (its `seed`, `augment` and `normalization`).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct BatchRequest<'a> {
    /// The epoch's batching settings.
    pub config: &'a BatchConfig,
    /// 0-based epoch.
    pub epoch: u64,
    /// 0-based position of the batch in its epoch.
    pub index: usize,
    /// Dataset indices of the batch's examples, in batch order.
    pub indices: &'a [usize],
}

impl BatchRequest<'_> {
    /// The number of the random stream this batch's augmentation is drawn from (with
    /// [`augmentation_rng`](super::augmentation_rng) or
    /// [`batch_augment_params`](super::batch_augment_params)): the batch index, made distinct
    /// for each [`Shard`](super::Shard) of a data-parallel run (`index * count + shard`), so
    /// that the processes do not crop their batches alike. With one shard it is `index`.
    pub fn augmentation_stream(&self) -> usize {
        let shard = self.config.shard;
        self.index * shard.count.max(1) + shard.index
    }
}

/// A labelled dataset that the trainer and [`epoch_batches`] batch.
///
/// The order of an epoch (shuffling, `limit`, [`Shard`](super::Shard)) is drawn by the caller
/// from `(seed, epoch)`; an implementation only makes the batch it is asked for. For exact
/// resume, [`make_batch`](Self::make_batch) must be a pure function of the request: draw any
/// augmentation from `(request.config.seed, request.epoch, request.augmentation_stream())`
/// (for example with [`augmentation_rng`](super::augmentation_rng)), never from a generator
/// shared across calls.
/// Batches are made on a background thread, hence `Send + Sync`: keep examples in host memory,
/// or tensors behind a `Mutex`.
///
/// ```
/// use resnext::data::{epoch_batches, BatchConfig, BatchRequest, DataError, Dataset};
/// use tch::{Device, Tensor};
///
/// /// Constant images whose value is their label.
/// struct Levels { classes: Vec<String> }
///
/// impl Dataset for Levels {
///     fn len(&self) -> usize { 100 }
///     fn classes(&self) -> &[String] { &self.classes }
///     fn device(&self) -> Device { Device::Cpu }
///     fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError> {
///         let labels: Vec<i64> = request.indices.iter().map(|&i| (i % 2) as i64).collect();
///         let labels = Tensor::from_slice(&labels);
///         let images = labels.to_kind(tch::Kind::Float).view([-1, 1, 1, 1]).expand([-1, 3, 8, 8], false);
///         Ok((images.contiguous(), labels))
///     }
/// }
///
/// let data = std::sync::Arc::new(Levels { classes: vec!["dark".into(), "light".into()] });
/// let cfg = BatchConfig { batch_size: 32, ..BatchConfig::default() };
/// let sizes: Vec<usize> = epoch_batches(data, &cfg, 0, 0)?.map(|b| b.indices.len()).collect();
/// assert_eq!(sizes, [32, 32, 32, 4]);
/// # Ok::<(), DataError>(())
/// ```
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names in label order: label `i` is `classes()[i]`.
    fn classes(&self) -> &[String];

    /// The device the batches are on.
    fn device(&self) -> Device;

    /// The examples `request.indices` as `f32` images `[B, C, H, W]` and `int64` labels `[B]`
    /// on [`device`](Self::device), augmented when `request.config.augment`.
    ///
    /// # Errors
    /// A [`DataError`] (a file that cannot be read, a libtorch failure, …); the batch iterator
    /// ends there and reports it.
    fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError>;

    /// The stages of `config`'s [`Augmentation`](super::Augmentation) that this dataset cannot
    /// carry out in the batched form of its pipeline and runs image by image instead, each
    /// with the reason: the trainer says so when a run starts. None by default.
    fn per_image_stages(&self, config: &BatchConfig) -> Vec<String> {
        let _ = config;
        Vec::new()
    }
}

/// The batches of `epoch` of `data` from batch `start_batch` on, made one or two ahead on a
/// background thread. The order is [`epoch_order`] (from `cfg.seed` and `epoch`, with `cfg`'s
/// limit and shard), so `start_batch = k` yields exactly the batches `k..` of an iteration
/// from 0. With MixUp or CutMix on (`cfg.augmentation`), each batch is mixed after
/// [`Dataset::make_batch`] and carries soft [`targets`](super::Batch::targets).
///
/// # Errors
/// [`DataError::InvalidConfig`] for an invalid `cfg` or a `start_batch` beyond the epoch.
pub fn epoch_batches(
    data: Arc<dyn Dataset>,
    cfg: &BatchConfig,
    epoch: u64,
    start_batch: usize,
) -> Result<Batches, DataError> {
    cfg.validate()?;
    let num_batches = cfg.num_batches(data.len());
    if start_batch > num_batches {
        return Err(DataError::InvalidConfig {
            field: "start_batch",
            value: start_batch.to_string(),
            expected: format!("at most {num_batches}, the number of batches of this epoch"),
        });
    }
    let order = epoch_order(data.len(), cfg, epoch);
    let mix = cfg.augmentation.batch_mix()?;
    let cfg = cfg.clone();
    let make = move |index: usize| {
        let indices = batch_indices(&order, cfg.batch_size, index);
        let request = BatchRequest {
            config: &cfg,
            epoch,
            index,
            indices,
        };
        let (images, labels) = data.make_batch(&request)?;
        if !mix.is_on() {
            return Ok((images, labels, None, indices.to_vec()));
        }
        let mut rng = mix_rng(cfg.seed, epoch, request.augmentation_stream());
        let classes = data.classes().len() as i64;
        let (images, targets) = match mix_batch(&mix, &mut rng, &images, &labels, classes)? {
            Some((mixed, targets)) => (mixed, Some(targets)),
            None => (images, None),
        };
        Ok((images, labels, targets, indices.to_vec()))
    };
    Batches::spawn(Box::new(make), start_batch, num_batches)
}

/// The two sets of a training run: batches are drawn from `train`, `test` is evaluated.
#[derive(Clone)]
pub struct DataSplits {
    /// The training set.
    pub train: Arc<dyn Dataset>,
    /// The test (or validation) set.
    pub test: Arc<dyn Dataset>,
}

impl DataSplits {
    /// The splits of `train` and `test`.
    pub fn new(train: impl Dataset + 'static, test: impl Dataset + 'static) -> Self {
        DataSplits {
            train: Arc::new(train),
            test: Arc::new(test),
        }
    }
}

impl std::fmt::Debug for DataSplits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSplits")
            .field("train", &self.train.len())
            .field("test", &self.test.len())
            .field("classes", &self.train.classes())
            .finish()
    }
}

/// Some examples of another dataset, in a given order: position `i` of the subset is example
/// `indices[i]` of `data`. The trainer splits a test set between the processes of a
/// data-parallel run with it.
pub struct Subset {
    data: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The examples `indices` of `data`.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] naming the first index beyond `data`.
    pub fn new(data: Arc<dyn Dataset>, indices: Vec<usize>) -> Result<Self, DataError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= data.len()) {
            return Err(DataError::InvalidConfig {
                field: "indices",
                value: bad.to_string(),
                expected: format!("below {}, the size of the dataset", data.len()),
            });
        }
        Ok(Subset { data, indices })
    }
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("len", &self.indices.len())
            .finish_non_exhaustive()
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn classes(&self) -> &[String] {
        self.data.classes()
    }

    fn device(&self) -> Device {
        self.data.device()
    }

    fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError> {
        let indices = request
            .indices
            .iter()
            .map(|&i| {
                self.indices
                    .get(i)
                    .copied()
                    .ok_or_else(|| DataError::InvalidConfig {
                        field: "indices",
                        value: i.to_string(),
                        expected: format!("below {}, the size of the subset", self.indices.len()),
                    })
            })
            .collect::<Result<Vec<usize>, DataError>>()?;
        self.data.make_batch(&BatchRequest {
            indices: &indices,
            ..*request
        })
    }

    fn per_image_stages(&self, config: &BatchConfig) -> Vec<String> {
        self.data.per_image_stages(config)
    }
}
