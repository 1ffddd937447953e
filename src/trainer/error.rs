use std::path::PathBuf;

use thiserror::Error;

use crate::data::DataError;
use crate::distributed::DistError;
use crate::io::IoError;
use crate::resnext::ModelError;
use crate::weights::WeightsError;

/// Errors of the trainer: bad configuration, unusable checkpoints, I/O, data and libtorch.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration value is out of range or unknown.
    #[error("invalid {field} `{value}`: expected {expected}")]
    InvalidConfig {
        /// The configuration field concerned.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A configuration file or text is not valid JSON for a [`TrainConfig`](super::TrainConfig).
    #[error("bad training configuration{}: {message}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    ConfigJson {
        /// The file, when the configuration came from one.
        path: Option<PathBuf>,
        /// What the JSON parser found wrong.
        message: String,
    },
    /// The requested device is not present on this machine.
    #[error("device `{device}` is not available: this machine has {available} CUDA device(s) visible to libtorch")]
    DeviceUnavailable {
        /// The requested device.
        device: String,
        /// CUDA devices libtorch sees.
        available: usize,
    },
    /// A checkpoint cannot be used: corrupt, truncated, from another model or another version.
    #[error("checkpoint {}: {problem}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A fresh run was asked for in a directory that already holds one.
    #[error("{} already holds a training run (checkpoint.safetensors): resume it, or start the new run in another directory", path.display())]
    RunExists {
        /// The run directory.
        path: PathBuf,
    },
    /// A file of the run directory could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing or reading a tensor file failed.
    #[error(transparent)]
    TensorFile(#[from] IoError),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model could not be built or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The pretrained weights (see [`TrainConfig::pretrained`](super::TrainConfig::pretrained))
    /// could not be read or do not fit the model (boxed to keep the error small).
    #[error(transparent)]
    Weights(Box<WeightsError>),
    /// Training diverged: one rule for every precision. Without loss scaling, any batch whose
    /// loss is NaN or infinite (every batch is checked, on the device; on CUDA the check is
    /// read every 25 batches, so `batch` is where it was seen, at most 24 batches after the
    /// first bad one). With fp16 loss scaling, a non-finite step is skipped and the scale
    /// halved, as PyTorch's `GradScaler` does; it is divergence when a step overflows with
    /// the scale already at its floor of 1.
    #[error("training diverged at epoch {epoch}, batch {batch}: the loss is {loss}; try a lower learning rate or some warm-up epochs")]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 0-based batch within the epoch where divergence was seen.
        batch: usize,
        /// The non-finite loss (the latest one, when several).
        loss: f64,
    },
    /// libtorch ran out of memory running a batch.
    #[error("out of memory on {device} with a batch of {batch} images: {message}; try a smaller batch size (or a smaller model)")]
    OutOfMemory {
        /// The device, as `Cpu` or `Cuda(0)`.
        device: String,
        /// Images in the batch that failed.
        batch: usize,
        /// libtorch's message (its first line).
        message: String,
    },
    /// The model's output does not fit the data's classes.
    #[error("the model outputs {outputs} logits but the {split} set has {classes} classes ({names}); build the model with {classes} classes")]
    ClassCount {
        /// Width of the model's logits.
        outputs: i64,
        /// `training` or `test`.
        split: &'static str,
        /// Number of classes of that set.
        classes: usize,
        /// Their names, abbreviated.
        names: String,
    },
    /// libtorch reported an error.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
    /// An optimiser, its state or gradient clipping failed.
    #[error(transparent)]
    Optim(#[from] super::OptimError),
    /// The moving average of the weights failed.
    #[error(transparent)]
    Ema(#[from] super::EmaError),
    /// A collective of data-parallel training failed (a peer gone, a timeout, ...).
    #[error(transparent)]
    Distributed(#[from] DistError),
    /// The processes of a data-parallel run do not agree on what they train.
    #[error("the {world_size} processes of this data-parallel run disagree on {what}: {detail}")]
    RanksDisagree {
        /// Processes in the run.
        world_size: usize,
        /// What differs (`the training configuration`, `the position in the run`, ...).
        what: &'static str,
        /// Which ranks differ, and how.
        detail: String,
    },
    /// A run is resumed with another number of processes than it was trained with.
    #[error(
        "run {} was trained by {saved} process(es) and is resumed by {now}: exact resume needs \
         the same number (a single process can still start from its weights, e.g. \
         last.safetensors as pretrained weights)",
        path.display()
    )]
    WorldSizeChanged {
        /// The checkpoint.
        path: PathBuf,
        /// Processes that trained it.
        saved: usize,
        /// Processes resuming it.
        now: usize,
    },
    /// The metrics plot could not be drawn.
    #[error("drawing {}: {message}", path.display())]
    Plot {
        /// The SVG file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl From<WeightsError> for TrainError {
    fn from(e: WeightsError) -> Self {
        TrainError::Weights(Box::new(e))
    }
}
