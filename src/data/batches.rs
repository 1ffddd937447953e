//! The batch iterator, with its prefetch thread.
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

use tch::{Device, Tensor};

use super::{BatchConfig, DataError, DeviceDataset};

/// One batch as a maker returns it: images, labels, soft targets, dataset indices.
pub(crate) type Made = (Tensor, Tensor, Option<Tensor>, Vec<usize>);

/// Makes batch `index` of an epoch (on the prefetch thread).
pub(crate) type MakeBatch = Box<dyn FnMut(usize) -> Result<Made, DataError> + Send>;

/// One batch of an epoch.
#[derive(Debug)]
pub struct Batch {
    /// Augmented and normalised images, `f32 [B, 3, 32, 32]`, on the requested device.
    pub images: Tensor,
    /// Class labels, `int64 [B]`, on the requested device.
    pub labels: Tensor,
    /// With MixUp or CutMix: the soft targets `f32 [B, classes]` of the mixed images (each row
    /// sums to 1), on the same device; `None` otherwise (the targets are `labels`).
    pub targets: Option<Tensor>,
    /// Position of this batch in its epoch (0-based).
    pub index: usize,
    /// Dataset indices of the images, in batch order.
    pub indices: Vec<usize>,
}

/// The batches of one epoch (see [`batches`]), made one or two ahead on a background thread.
///
/// Dropping the iterator early stops the thread and waits for it. Should libtorch fail while
/// making a batch (for example out of device memory), the iteration ends early and
/// [`error`](Self::error) says why.
#[derive(Debug)]
pub struct Batches {
    rx: Option<Receiver<Result<Batch, DataError>>>,
    worker: Option<JoinHandle<()>>,
    next_index: usize,
    num_batches: usize,
    error: Option<DataError>,
}

/// Batches the thread makes ahead of the consumer.
const PREFETCH: usize = 2;

impl Batches {
    /// Starts the prefetch thread for batches `start..num_batches`.
    pub(crate) fn spawn(
        mut make: MakeBatch,
        start: usize,
        num_batches: usize,
    ) -> Result<Batches, DataError> {
        let mut batches = Batches {
            rx: None,
            worker: None,
            next_index: start,
            num_batches,
            error: None,
        };
        if start >= num_batches {
            return Ok(batches);
        }
        let (tx, rx) = sync_channel(PREFETCH);
        let worker = std::thread::Builder::new()
            .name("resnext-data-prefetch".into())
            .spawn(move || {
                for index in start..num_batches {
                    let made = make(index).map(|(images, labels, targets, indices)| Batch {
                        images,
                        labels,
                        targets,
                        index,
                        indices,
                    });
                    let failed = made.is_err();
                    // A send error means the iterator was dropped: stop.
                    if tx.send(made).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| DataError::Worker {
                message: format!("cannot start the prefetch thread: {e}"),
            })?;
        batches.rx = Some(rx);
        batches.worker = Some(worker);
        Ok(batches)
    }

    /// Batches in the whole epoch (including those before the starting batch).
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Index of the batch the next call to `next` returns.
    pub fn next_index(&self) -> usize {
        self.next_index
    }

    /// Why the iteration ended early, if it did.
    pub fn error(&self) -> Option<&DataError> {
        self.error.as_ref()
    }

    /// Takes the error that ended the iteration early, if any.
    pub fn take_error(&mut self) -> Option<DataError> {
        self.error.take()
    }

    /// Stops the thread (if running) and waits for it; returns its panic message if it panicked.
    fn shutdown(&mut self) -> Option<String> {
        // Dropping the receiver makes a pending or future `send` fail, so the thread exits.
        self.rx = None;
        let worker = self.worker.take()?;
        worker.join().err().map(|payload| {
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into())
        })
    }
}

impl Iterator for Batches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let received = self.rx.as_ref()?.recv();
        match received {
            Ok(Ok(batch)) => {
                self.next_index = batch.index + 1;
                Some(batch)
            }
            Ok(Err(e)) => {
                self.error = Some(e);
                self.shutdown();
                None
            }
            Err(_) => {
                // The thread is gone: either the epoch is complete or it panicked.
                if let Some(message) = self.shutdown() {
                    self.error = Some(DataError::Worker {
                        message: format!("the prefetch thread panicked: {message}"),
                    });
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.rx.is_some() {
            self.num_batches.saturating_sub(self.next_index)
        } else {
            0
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

impl Drop for Batches {
    fn drop(&mut self) {
        // A panic of the thread was already reported through `error` or is of no interest now.
        let _ = self.shutdown();
    }
}

/// The batches of `epoch` of (`images`, `labels`) on `device`, from batch `start_batch` on.
///
/// `images` is `uint8 [N, 3, 32, 32]` and `labels` `int64 [N]` (as in
/// [`Cifar10`](super::Cifar10)); each batch holds normalised `f32 [B, 3, 32, 32]` images and
/// `int64 [B]` labels on `device`. The order and augmentation depend only on `cfg.seed`,
/// `epoch` and the batch index, so `start_batch = k` yields exactly the batches `k..` of an
/// iteration from 0 (to resume mid-epoch).
///
/// This prepares a [`DeviceDataset`] (a copy of the images on the host, or on the device for
/// CUDA) on every call; to batch many epochs, build one [`DeviceDataset`] and call its
/// [`batches`](DeviceDataset::batches).
pub fn batches(
    images: &Tensor,
    labels: &Tensor,
    cfg: &BatchConfig,
    epoch: u64,
    start_batch: usize,
    device: Device,
) -> Result<Batches, DataError> {
    DeviceDataset::new(images, labels, device)?.batches(cfg, epoch, start_batch)
}
