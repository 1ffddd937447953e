//! Images and labels prepared once for batching on a device, and the making of one batch.
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::augment::{fill_image, PIXELS};
use super::cifar::{check_images, check_labels};
use super::{
    batch_augment_params, epoch_order, Affine, AugmentParams, BatchConfig, Batches, DataError,
};

/// How batches are augmented and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// A loop over the bytes on the host, writing every batch straight into one `f32` buffer
    /// (then moved to the device). The default on the CPU.
    HostLoop,
    /// The `uint8` images live on the device and every batch is gathered, padded, cropped,
    /// flipped and normalised there in a few batched tensor operations (no per-image kernel).
    /// The default on CUDA. The random draws are the same as with [`Pipeline::HostLoop`].
    TensorOps,
}

/// A dataset held where its batches are made: host bytes for [`Pipeline::HostLoop`], `uint8`
/// tensors on the device for [`Pipeline::TensorOps`]. Build it once and call
/// [`batches`](Self::batches) every epoch.
#[derive(Debug)]
pub struct DeviceDataset {
    storage: Storage,
    len: usize,
    device: Device,
}

#[derive(Debug)]
enum Storage {
    Host {
        images: Arc<Vec<[u8; PIXELS]>>,
        labels: Arc<Vec<i64>>,
    },
    Tensors {
        images: Tensor,
        labels: Tensor,
    },
}

impl Storage {
    /// A handle on the same data, for the prefetch thread.
    fn share(&self) -> Storage {
        match self {
            Storage::Host { images, labels } => Storage::Host {
                images: Arc::clone(images),
                labels: Arc::clone(labels),
            },
            Storage::Tensors { images, labels } => Storage::Tensors {
                images: images.shallow_clone(),
                labels: labels.shallow_clone(),
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
                images: images.f_to_device(device)?.f_contiguous()?,
                labels: labels.f_to_device(device)?,
            },
        };
        Ok(DeviceDataset {
            storage,
            len,
            device,
        })
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
    /// background thread, one or two ahead of the consumer.
    ///
    /// Errors: an invalid `cfg`, or `start_batch` beyond the number of batches.
    pub fn batches(
        &self,
        cfg: &BatchConfig,
        epoch: u64,
        start_batch: usize,
    ) -> Result<Batches, DataError> {
        cfg.validate()?;
        let num_batches = cfg.num_batches(self.len);
        if start_batch > num_batches {
            return Err(DataError::InvalidConfig {
                field: "start_batch",
                value: start_batch.to_string(),
                expected: format!("at most {num_batches}, the number of batches of this epoch"),
            });
        }
        let maker = BatchMaker {
            storage: self.storage.share(),
            order: epoch_order(self.len, cfg, epoch),
            cfg: cfg.clone(),
            affine: cfg.normalization.affine(),
            epoch,
            device: self.device,
        };
        Batches::spawn(maker, start_batch, num_batches)
    }
}

/// Everything the prefetch thread needs to make the batches of one epoch.
pub(crate) struct BatchMaker {
    storage: Storage,
    order: Vec<usize>,
    cfg: BatchConfig,
    affine: Affine,
    epoch: u64,
    device: Device,
}

/// One batch as made by [`BatchMaker::make`]: images, labels, dataset indices.
pub(crate) type Made = (Tensor, Tensor, Vec<usize>);

impl BatchMaker {
    /// Makes batch `b` (which must be below the epoch's number of batches).
    pub(crate) fn make(&self, b: usize) -> Result<Made, DataError> {
        let bs = self.cfg.batch_size;
        let start = (b * bs).min(self.order.len());
        let end = (start + bs).min(self.order.len());
        let indices = &self.order[start..end];
        let params = self
            .cfg
            .augment
            .then(|| batch_augment_params(self.cfg.seed, self.epoch, b, indices.len()));
        let (images, labels) = match &self.storage {
            Storage::Host { images, labels } => {
                self.host_batch(images, labels, indices, params.as_deref())?
            }
            Storage::Tensors { images, labels } => {
                self.tensor_batch(images, labels, indices, params.as_deref())?
            }
        };
        Ok((images, labels, indices.to_vec()))
    }

    fn host_batch(
        &self,
        images: &[[u8; PIXELS]],
        labels: &[i64],
        indices: &[usize],
        params: Option<&[AugmentParams]>,
    ) -> Result<(Tensor, Tensor), DataError> {
        let count = indices.len();
        let mut out = vec![[0f32; PIXELS]; count];
        let mut batch_labels = Vec::with_capacity(count);
        for (k, (&i, dst)) in indices.iter().zip(out.iter_mut()).enumerate() {
            let p = params.and_then(|p| p.get(k).copied());
            fill_image(&images[i], p, &self.affine, dst);
            batch_labels.push(labels[i]);
        }
        let x = Tensor::f_from_slice(out.as_flattened())?.f_view([count as i64, 3, 32, 32])?;
        let y = Tensor::f_from_slice(&batch_labels)?;
        if self.device == Device::Cpu {
            Ok((x, y))
        } else {
            Ok((x.f_to_device(self.device)?, y.f_to_device(self.device)?))
        }
    }

    fn tensor_batch(
        &self,
        images: &Tensor,
        labels: &Tensor,
        indices: &[usize],
        params: Option<&[AugmentParams]>,
    ) -> Result<(Tensor, Tensor), DataError> {
        let count = indices.len() as i64;
        let dev = self.device;
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_to_device(dev)?;
        let mut x = images.f_index_select(0, &idx)?;
        let y = labels.f_index_select(0, &idx)?;
        if let Some(params) = params {
            // Row and column gather indices into the zero-padded [B, 3, 40, 40] batch, built on
            // the host from the same draws as the host loop and uploaded in one copy.
            let mut rc = Vec::with_capacity(params.len() * 64);
            for p in params {
                rc.extend((0..32).map(|y| y + i64::from(p.dy)));
            }
            for p in params {
                let dx = i64::from(p.dx);
                if p.flip {
                    rc.extend((0..32).map(|x| 31 - x + dx));
                } else {
                    rc.extend((0..32).map(|x| x + dx));
                }
            }
            let rc = Tensor::f_from_slice(&rc)?.f_to_device(dev)?;
            let rows = rc
                .f_narrow(0, 0, count * 32)?
                .f_view([count, 1, 32, 1])?
                .f_expand([count, 3, 32, 40], false)?;
            let cols = rc
                .f_narrow(0, count * 32, count * 32)?
                .f_view([count, 1, 1, 32])?
                .f_expand([count, 3, 32, 32], false)?;
            x = x
                .f_constant_pad_nd([4, 4, 4, 4])?
                .f_gather(2, &rows, false)?
                .f_gather(3, &cols, false)?;
        }
        let (scale, shift) = affine_tensors(&self.affine, dev)?;
        let x = x.f_to_kind(Kind::Float)?.f_mul(&scale)?.f_add(&shift)?;
        Ok((x, y))
    }
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
