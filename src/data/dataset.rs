//! CIFAR-shaped images and labels prepared once for batching on a device, and the making of
//! one batch.
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::augment::{fill_image, reflect, PIXELS, SIDE};
use super::augmentation::UNIT_AFFINE;
use super::cifar::{check_images, check_labels};
use super::ops::RgbPlanes;
use super::{
    crop_flip_params, epoch_batches, image_draws, Affine, AugmentParams, BatchConfig, BatchRequest,
    Batches, Cifar10, CropFlip, DataError, DataSplits, Dataset, ImageDraws, PaddingMode,
    CLASS_NAMES,
};

impl Cifar10 {
    /// The training and test sets as [`Dataset`]s on `device` (see [`DeviceDataset::new`] for
    /// where the images are kept), with this dataset's class names: what
    /// [`Trainer::fit`](crate::trainer::Trainer::fit) takes.
    ///
    /// # Errors
    /// [`DataError::Torch`] if the images cannot be copied to `device`.
    pub fn splits(&self, device: Device) -> Result<DataSplits, DataError> {
        let set = |images: &Tensor, labels: &Tensor| -> Result<DeviceDataset, DataError> {
            Ok(DeviceDataset::new(images, labels, device)?.with_classes(self.classes.clone()))
        };
        Ok(DataSplits::new(
            set(&self.train_images, &self.train_labels)?,
            set(&self.test_images, &self.test_labels)?,
        ))
    }
}

/// How batches are augmented and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// A loop over the bytes on the host, writing every batch straight into one `f32` buffer
    /// (then moved to the device). The default on the CPU.
    HostLoop,
    /// The `uint8` images live on the device and every batch is gathered, padded, cropped,
    /// flipped and normalised there in a few batched tensor operations (no per-image kernel;
    /// reflection padding is gathered straight from the unpadded images).
    /// The default on CUDA. The random draws are the same as with [`Pipeline::HostLoop`].
    TensorOps,
}

/// A set of 32x32 RGB images (CIFAR's shape) held where its batches are made: host bytes for
/// [`Pipeline::HostLoop`], `uint8` tensors on the device for [`Pipeline::TensorOps`]. It is a
/// [`Dataset`]: the trainer batches it, and so does [`batches`](Self::batches). Build it once
/// and batch it every epoch.
#[derive(Debug)]
pub struct DeviceDataset {
    storage: Storage,
    len: usize,
    device: Device,
    classes: Vec<String>,
}

#[derive(Debug)]
enum Storage {
    Host {
        images: Arc<Vec<[u8; PIXELS]>>,
        labels: Arc<Vec<i64>>,
    },
    Tensors {
        images: ReadOnlyTensor,
        labels: ReadOnlyTensor,
    },
}

/// A tensor that is only read once built (indexed into, never written, no autograd), so that
/// batches can be made from it on the prefetch thread while other threads hold it.
#[derive(Debug)]
struct ReadOnlyTensor(Tensor);

// SAFETY: `Tensor` is `Send` but not `Sync` because libtorch does not synchronise writes. A
// `ReadOnlyTensor` is never written after construction: it is only read by out-of-place ops
// (`index_select`) and shallow-cloned, whose reference counting in libtorch is atomic. Reads
// from several threads are what PyTorch's own data loaders do with shared tensors.
unsafe impl Sync for ReadOnlyTensor {}

impl Storage {
    /// A handle on the same data.
    fn share(&self) -> Storage {
        match self {
            Storage::Host { images, labels } => Storage::Host {
                images: Arc::clone(images),
                labels: Arc::clone(labels),
            },
            Storage::Tensors { images, labels } => Storage::Tensors {
                images: ReadOnlyTensor(images.0.shallow_clone()),
                labels: ReadOnlyTensor(labels.0.shallow_clone()),
            },
        }
    }
}

impl DeviceDataset {
    /// Prepares `images` (`uint8 [N, 3, 32, 32]`) and `labels` (`int64 [N]`) for batches on
    /// `device`, with [`Pipeline::HostLoop`] on the CPU and [`Pipeline::TensorOps`] elsewhere.
    pub fn new(images: &Tensor, labels: &Tensor, device: Device) -> Result<Self, DataError> {
        let pipeline = if device == Device::Cpu {
            Pipeline::HostLoop
        } else {
            Pipeline::TensorOps
        };
        Self::with_pipeline(images, labels, device, pipeline)
    }

    /// As [`new`](Self::new), with the pipeline chosen by the caller.
    pub fn with_pipeline(
        images: &Tensor,
        labels: &Tensor,
        device: Device,
        pipeline: Pipeline,
    ) -> Result<Self, DataError> {
        let n = check_images("images", images)?;
        check_labels("labels", labels, n)?;
        let len = n as usize;
        let storage = match pipeline {
            Pipeline::HostLoop => {
                let mut host = vec![[0u8; PIXELS]; len];
                images
                    .f_to_device(Device::Cpu)?
                    .f_contiguous()?
                    .f_copy_data_u8(host.as_flattened_mut(), len * PIXELS)?;
                let mut host_labels = vec![0i64; len];
                labels
                    .f_to_device(Device::Cpu)?
                    .f_contiguous()?
                    .f_copy_data(&mut host_labels, len)?;
                Storage::Host {
                    images: Arc::new(host),
                    labels: Arc::new(host_labels),
                }
            }
            Pipeline::TensorOps => Storage::Tensors {
                images: ReadOnlyTensor(images.f_to_device(device)?.f_contiguous()?),
                labels: ReadOnlyTensor(labels.f_to_device(device)?),
            },
        };
        Ok(DeviceDataset {
            storage,
            len,
            device,
            classes: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// The same dataset with these class names (CIFAR-10's [`CLASS_NAMES`] by default).
    pub fn with_classes(mut self, classes: Vec<String>) -> Self {
        self.classes = classes;
        self
    }

    /// Another handle on the same images and labels (no copy).
    pub fn share(&self) -> DeviceDataset {
        DeviceDataset {
            storage: self.storage.share(),
            len: self.len,
            device: self.device,
            classes: self.classes.clone(),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device batches land on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The pipeline in use.
    pub fn pipeline(&self) -> Pipeline {
        match self.storage {
            Storage::Host { .. } => Pipeline::HostLoop,
            Storage::Tensors { .. } => Pipeline::TensorOps,
        }
    }

    /// The batches of `epoch`, starting at batch `start_batch` (0 for a whole epoch; `k` gives
    /// exactly the batches `k..` of an iterator started at 0). Batches are made on a
    /// background thread, one or two ahead of the consumer (see [`epoch_batches`]).
    ///
    /// Errors: an invalid `cfg`, or `start_batch` beyond the number of batches.
    pub fn batches(
        &self,
        cfg: &BatchConfig,
        epoch: u64,
        start_batch: usize,
    ) -> Result<Batches, DataError> {
        epoch_batches(Arc::new(self.share()), cfg, epoch, start_batch)
    }

    fn host_batch(
        images: &[[u8; PIXELS]],
        labels: &[i64],
        indices: &[usize],
        draws: &BatchDraws,
        affine: &Affine,
        device: Device,
    ) -> Result<(Tensor, Tensor), DataError> {
        let count = indices.len();
        let mut out = vec![[0f32; PIXELS]; count];
        let mut batch_labels = Vec::with_capacity(count);
        for (k, (&i, dst)) in indices.iter().zip(out.iter_mut()).enumerate() {
            let p = draws.crop.as_ref().and_then(|p| p.get(k).copied());
            let stages = draws.images.get(k);
            let first = match stages.is_some_and(ImageDraws::needs_pixels) {
                true => &UNIT_AFFINE,
                false => affine,
            };
            fill_image(&images[i], p, &draws.crop_flip, first, dst);
            if let Some(d) = stages {
                d.finish(dst, SIDE, affine)?;
            }
            batch_labels.push(labels[i]);
        }
        let x = Tensor::f_from_slice(out.as_flattened())?.f_view([count as i64, 3, 32, 32])?;
        let y = Tensor::f_from_slice(&batch_labels)?;
        if device == Device::Cpu {
            Ok((x, y))
        } else {
            Ok((x.f_to_device(device)?, y.f_to_device(device)?))
        }
    }

    fn tensor_batch(
        images: &Tensor,
        labels: &Tensor,
        indices: &[usize],
        draws: &BatchDraws,
        affine: &Affine,
    ) -> Result<(Tensor, Tensor), DataError> {
        let dev = images.device();
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(dev)?;
        let mut x = images.f_index_select(0, &idx)?;
        let y = labels.f_index_select(0, &idx)?;
        if let Some(params) = &draws.crop {
            x = crop_and_flip(&x, params, &draws.crop_flip)?;
        }
        if draws.images.iter().any(ImageDraws::needs_pixels) {
            x = policy_on_host(&x, &draws.images)?;
        }
        let (scale, shift) = affine_tensors(affine, dev)?;
        let x = x.f_to_kind(Kind::Float)?.f_mul(&scale)?.f_add(&shift)?;
        Ok((erase_batched(x, &draws.images)?, y))
    }
}

impl Dataset for DeviceDataset {
    fn len(&self) -> usize {
        self.len
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn device(&self) -> Device {
        self.device
    }

    /// The images `request.indices`, randomly cropped (4 pixels of zero padding by default) and
    /// flipped with [`crop_flip_params`] when `request.config.augment`, then normalised.
    fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError> {
        let draws = BatchDraws::new(request)?;
        let affine = request.config.normalization.affine();
        let indices = request.indices;
        match &self.storage {
            Storage::Host { images, labels } => {
                Self::host_batch(images, labels, indices, &draws, &affine, self.device)
            }
            Storage::Tensors { images, labels } => {
                Self::tensor_batch(&images.0, &labels.0, indices, &draws, &affine)
            }
        }
    }

    /// The policy stage, with [`Pipeline::TensorOps`], runs image by image on the host.
    fn per_image_stages(&self, config: &BatchConfig) -> Vec<String> {
        match (&self.storage, &config.augmentation.auto_augment) {
            (Storage::Tensors { .. }, Some(policy)) => vec![format!(
                "auto_augment {policy}: no batched form on the device, so each batch is \
                 copied to the host for it and back"
            )],
            _ => Vec::new(),
        }
    }
}

/// The random choices of one batch: crop and flip (when `augment`) with its settings, then
/// the later stages.
struct BatchDraws {
    crop: Option<Vec<AugmentParams>>,
    crop_flip: CropFlip,
    images: Vec<ImageDraws>,
}

impl BatchDraws {
    /// The draws of `request`'s images, each stage from its own stream.
    ///
    /// Errors: a crop padding too wide for 32-pixel images, bad later stages.
    fn new(request: &BatchRequest<'_>) -> Result<BatchDraws, DataError> {
        let cfg = request.config;
        let (n, stream) = (request.indices.len(), request.augmentation_stream());
        let crop_flip = cfg.augmentation.crop_flip;
        crop_flip.validate(SIDE)?;
        let crop = cfg.augment.then(|| {
            crop_flip_params(&crop_flip, cfg.seed, request.epoch, stream, request.indices)
        });
        let images = match cfg.augmentation.has_image_stages() {
            true => image_draws(&cfg.augmentation, cfg.seed, request.epoch, stream, n, SIDE)?,
            false => Vec::new(),
        };
        Ok(BatchDraws {
            crop,
            crop_flip,
            images,
        })
    }
}

/// The policy's ops on a `uint8 [B, 3, 32, 32]` batch, image by image on the host (the ops
/// have no batched form), back on the batch's device as `uint8`.
fn policy_on_host(x: &Tensor, draws: &[ImageDraws]) -> Result<Tensor, DataError> {
    let count = draws.len();
    let mut bytes = vec![0u8; count * PIXELS];
    x.f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_copy_data_u8(&mut bytes, count * PIXELS)?;
    for (image, d) in bytes.chunks_exact_mut(PIXELS).zip(draws) {
        let done = d.apply_ops(RgbPlanes::new(SIDE, SIDE, image.to_vec())?)?;
        image.copy_from_slice(done.as_slice());
    }
    Ok(Tensor::f_from_slice(&bytes)?
        .f_view([count as i64, 3, SIDE as i64, SIDE as i64])?
        .f_to_device(x.device())?)
}

/// Random erasing on a normalised `[B, 3, 32, 32]` batch in one masked fill on its device.
fn erase_batched(x: Tensor, draws: &[ImageDraws]) -> Result<Tensor, DataError> {
    if draws.iter().all(|d| d.erase.is_none()) {
        return Ok(x);
    }
    let mut mask = vec![0u8; draws.len() * SIDE * SIDE];
    for (m, d) in mask.chunks_exact_mut(SIDE * SIDE).zip(draws) {
        if let Some(b) = d.erase {
            for row in m.chunks_exact_mut(SIDE).skip(b.top).take(b.height) {
                row[b.left..b.left + b.width].fill(1);
            }
        }
    }
    let mask = Tensor::f_from_slice(&mask)?
        .f_view([draws.len() as i64, 1, SIDE as i64, SIDE as i64])?
        .f_to_device(x.device())?
        .f_to_kind(Kind::Bool)?;
    Ok(x.f_masked_fill(&mask, 0.0)?)
}

/// Crops and flips every image of a `uint8 [B, 3, 32, 32]` batch as `params` and `crop` say,
/// in two gathers on the batch's device: from the batch zero-padded by `crop.padding`, or,
/// with reflection, from the batch itself at reflected rows and columns.
fn crop_and_flip(
    x: &Tensor,
    params: &[AugmentParams],
    crop: &CropFlip,
) -> Result<Tensor, DataError> {
    let count = params.len() as i64;
    let side = SIDE as i64;
    let (pad, reflected) = match crop.padding_mode {
        PaddingMode::Zeros => (i64::from(crop.padding), false),
        PaddingMode::Reflect => (0, true),
    };
    // Row and column gather indices, built on the host from the same draws as the host loop
    // and uploaded in one copy: into the padded [B, 3, 32 + 2p, 32 + 2p] batch, or reflected
    // into the unpadded one.
    let to_source = |i: i64| match reflected {
        true => reflect((i - i64::from(crop.padding)) as isize, SIDE as isize) as i64,
        false => i,
    };
    let mut rc = Vec::with_capacity(params.len() * 2 * SIDE);
    for p in params {
        rc.extend((0..side).map(|y| to_source(y + i64::from(p.dy))));
    }
    for p in params {
        let dx = i64::from(p.dx);
        if p.flip {
            rc.extend((0..side).map(|x| to_source(side - 1 - x + dx)));
        } else {
            rc.extend((0..side).map(|x| to_source(x + dx)));
        }
    }
    let rc = Tensor::f_from_slice(&rc)?.f_to_device(x.device())?;
    let rows = rc
        .f_narrow(0, 0, count * side)?
        .f_view([count, 1, side, 1])?
        .f_expand([count, 3, side, side + 2 * pad], false)?;
    let cols = rc
        .f_narrow(0, count * side, count * side)?
        .f_view([count, 1, 1, side])?
        .f_expand([count, 3, side, side], false)?;
    let source = match pad {
        0 => x.shallow_clone(),
        _ => x.f_constant_pad_nd([pad, pad, pad, pad])?,
    };
    Ok(source
        .f_gather(2, &rows, false)?
        .f_gather(3, &cols, false)?)
}

/// The per-channel scale and shift as `[1, 3, 1, 1]` tensors on `device`.
fn affine_tensors(affine: &Affine, device: Device) -> Result<(Tensor, Tensor), DataError> {
    let t = |v: &[f32; 3]| -> Result<Tensor, DataError> {
        Ok(Tensor::f_from_slice(v)?
            .f_view([1, 3, 1, 1])?
            .f_to_device(device)?)
    };
    Ok((t(&affine.scale)?, t(&affine.shift)?))
}
