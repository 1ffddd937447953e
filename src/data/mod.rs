//! Data: the [`Dataset`] trait the trainer consumes, the CIFAR-10 pipeline and the image
//! folders that implement it.
//!
//! * [`ImageFolder`]: JPEG/PNG files in class folders (`root/<class>/<image>`, as torchvision's
//!   `ImageFolder`; [`FolderIndex`] lists them, splits them and takes stratified subsets),
//!   decoded by [`decode_rgb8`] and prepared by a [`Recipe`] (torchvision's ImageNet transforms
//!   or the CIFAR pad-and-crop) on worker threads;
//! * [`Dataset`]: any labelled set of images that makes the batch it is asked for;
//!   [`epoch_batches`] batches one epoch of it (order from [`epoch_order`], optionally one
//!   [`Shard`] of it) on a background thread; [`DataSplits`] pairs a training and a test set;
//! * [`Cifar10`]: the "binary version" of CIFAR-10 loaded into `uint8` image and `int64` label
//!   tensors, with every file validated ([`DataError`] names the file and what was expected),
//!   or built from tensors for synthetic data;
//! * [`ensure_cifar10`]: download (official URL, a mirror, `file://` or a path; MD5 checked;
//!   size, time and rate bounded by [`DownloadLimits`]), extraction and reuse of an existing
//!   copy;
//! * [`batches`] / [`DeviceDataset::batches`]: shuffled, augmented (random crop with 4 pixels
//!   of zero padding + horizontal flip, as torchvision's `RandomCrop(32, padding=4)` +
//!   `RandomHorizontalFlip()`; [`CropFlip`] sets another padding, reflection padding and
//!   airbench's alternating flip) and normalised batches, prefetched on a background thread and
//!   reproducible from a seed, epoch and batch index (resumable mid-epoch);
//! * [`augment_image`] / [`augment_image_with`]: the per-image kernel, and
//!   [`AugmentParams`]: its random draw ([`crop_flip_params`] for a batch);
//! * [`Augmentation`]: the stages after crop and flip (an auto-augmentation policy, random
//!   erasing, MixUp / CutMix; the ops themselves in [`ops`]), in torchvision's order, each
//!   from its own random stream ([`stage_rng`]), run the same way by every pipeline;
//! * [`permutation_rng`], [`augmentation_rng`]: every random choice of the data as a pure
//!   function of `(seed, epoch, batch)`.
//!
//! ```no_run
//! use resnext::data::{batches, ensure_cifar10, BatchConfig, Cifar10, DownloadOptions};
//! # fn main() -> Result<(), resnext::data::DataError> {
//! let dir = ensure_cifar10("data".as_ref(), &DownloadOptions::default())?;
//! let cifar = Cifar10::load(&dir)?;
//! let cfg = BatchConfig { batch_size: 128, seed: 7, ..BatchConfig::default() };
//! for batch in batches(&cifar.train_images, &cifar.train_labels, &cfg, 0, 0, tch::Device::Cpu)? {
//!     assert_eq!(batch.images.size()[1..], [3, 32, 32]);
//! }
//! # Ok(())
//! # }
//! ```

mod augment;
mod augmentation;
mod batches;
mod cifar;
mod config;
mod dataset;
mod decode;
pub mod download;
mod error;
mod extract;
mod folder;
mod image_folder;
pub mod ops;
mod random;
mod source;
mod transform;

pub use augment::{
    augment_image, augment_image_with, AugmentParams, CropFlip, FlipMode, PaddingMode, MAX_OFFSET,
    MAX_PADDING, PADDING,
};
pub use augmentation::{image_draws, mix_batch, Augmentation, BatchMix, ImageDraws};
pub use batches::{batches, Batch, Batches};
pub use cifar::{
    Cifar10, BATCHES_DIR, CLASS_NAMES, IMAGE_BYTES, META_FILE, RECORDS_PER_FILE, RECORD_BYTES,
    TEST_FILE, TRAIN_FILES,
};
pub use config::{Affine, BatchConfig, Normalization, Shard};
pub use dataset::{DeviceDataset, Pipeline};
pub use decode::{decode_rgb8, decode_rgb8_bytes, MAX_PIXELS};
pub use download::{
    ensure_cifar10, ensure_cifar10_with, DownloadLimits, DownloadOptions, CIFAR10_BYTES,
    CIFAR10_MD5, CIFAR10_URL,
};
pub use error::DataError;
pub use folder::{FolderIndex, Ignored, IMAGE_EXTENSIONS};
pub use image_folder::{FolderSplit, ImageFolder, ImageFolderOptions};
pub use random::{
    alternate_flip, augmentation_rng, base_flip, batch_augment_params, batch_indices,
    crop_flip_params, epoch_order, permutation_rng, stage_rng, Stage,
};
pub use source::{epoch_batches, BatchRequest, DataSplits, Dataset, Subset};
pub use transform::{
    center_crop_box, prepare, prepare_with_crop, random_resized_crop, resize_crop, CropBox, Draw,
    Recipe, EVAL_CROP_FRACTION, IMAGENET_NORMALIZATION,
};
