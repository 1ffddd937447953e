//! Training on CIFAR-10: SGD with momentum and weight decay, cross-entropy (optional label
//! smoothing), cosine / step / constant schedules with warm-up, test evaluation, and a run
//! directory with checkpoints that resume exactly, metrics and plots.
//!
//! A run directory holds (see [`files`]):
//!
//! | file | content |
//! |---|---|
//! | `config.json` | the resolved [`TrainConfig`] |
//! | `metrics.jsonl` | one [`EpochMetrics`] per line |
//! | `curves.svg` | loss and accuracy of train and test against the epoch |
//! | `summary.json` | a [`Summary`], once training is complete |
//! | `checkpoint.safetensors` | weights, momentum buffers and [`TrainState`], after every epoch (and on stop) |
//! | `last.safetensors`, `best.safetensors` | weights with torchvision's names |
//!
//! Every file is written atomically (temporary file, fsync, rename): a kill at any instant
//! leaves the last complete checkpoint readable.
mod checkpoint;
mod config;
mod error;
mod evaluate;
mod metrics;
mod plot;
mod precision;
mod run;
mod schedule;
mod sgd;

pub use checkpoint::{
    load_checkpoint, read_checkpoint_state, save_checkpoint, EpochProgress, TrainState,
    CHECKPOINT_FORMAT,
};
pub use config::{Schedule, TrainConfig, SCHEDULE_NAMES};
pub use error::TrainError;
pub use evaluate::evaluate;
pub use metrics::{ClassAccuracy, EpochMetrics, Evaluation, Summary};
pub use plot::curves_svg;
#[doc(hidden)]
pub use precision::{autocast_dtype_code, set_autocast_dtype_code};
pub use precision::{set_cuda_autocast_dtype, Execution, LossScale, Precision, PRECISION_NAMES};
pub use run::{epoch_line, files, BatchControl, EvalForm, Outcome, ProgressMode, Trainer};
pub use sgd::{Sgd, SgdConfig};
