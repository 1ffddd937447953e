//! Training on any [`Dataset`](crate::data::Dataset) (CIFAR-10 first): SGD with momentum and
//! weight decay, cross-entropy (optional label smoothing), cosine / step / constant schedules
//! with warm-up, test evaluation, and a run directory with checkpoints that resume exactly,
//! metrics and plots.
//!
//! The parts, each in its own module:
//!
//! * [`TrainStep`]: one step (forward and loss under the run's precision, backward, the
//!   [`GradientHook`], the SGD update), separate from the loop;
//! * [`EpochAccumulator`]: the epoch's loss and accuracy sums, kept on the device;
//! * [`Trainer`]: the loop over epochs and batches, evaluation, stop and resume, in modules
//!   along its seams: construction and resume, the run directory it holds (lock,
//!   `config.json`, checkpoint, repair of the other files), stop requests with the ranks' vote
//!   on them, the epoch loop, the evaluations of a run;
//! * [`TrainCallback`]: code run after every update and every epoch, with the variables and a
//!   checkpoint section of its own ([`Trainer::with_callback`]); the EMA of the weights
//!   ([`EmaCallback`], [`TrainConfig::model_ema`]) is one, airbench's lookahead
//!   ([`LookaheadCallback`], [`TrainConfig::lookahead`]) another, airbench's frozen whitening
//!   bias ([`StemBiasFreeze`], [`TrainConfig::stem_bias_epochs`]) a third;
//! * [`files`], [`epoch_line`], [`curves_svg`]: what a run writes and prints;
//! * [`Schedule`] with [`TrainConfig::lr_at_step`]: the learning rate of every update (once
//!   per epoch, or every step for airbench's `triangle`, [`TriangleShape`]);
//! * [`recipe`]: named configurations (`cifar`, `tutorial`, `torchvision-v2`), each setting
//!   with its reason;
//! * [`tune_process_for_training`]: the process-wide settings, made explicit.
//!
//! A run directory holds (see [`files`]):
//!
//! | file | content |
//! |---|---|
//! | `config.json` | the resolved [`TrainConfig`] |
//! | `metrics.jsonl` | one [`EpochMetrics`] per line |
//! | `curves.svg` | loss and accuracy of train and test against the epoch |
//! | `summary.json` | a [`Summary`], once training is complete |
//! | `checkpoint.safetensors` | [`TrainState`] and named sections: `model/`, `optimizer/` (momentum buffers, AdamW's moments), one per callback (`ema/`, `lookahead/`, `stem_bias/`); after every epoch (and on stop) |
//! | `last.safetensors`, `best.safetensors` | weights with torchvision's names: the trained ones, or the EMA's with [`TrainConfig::model_ema_weights`] `ema` |
//!
//! Checkpoints are of format [`CHECKPOINT_FORMAT`] (2): each stateful component writes and
//! reads its own section, listed in the metadata; format 1 (written before sections) is
//! migrated on reading, so earlier run directories still resume.
//!
//! Every file is written atomically (temporary file, fsync, rename): a kill at any instant
//! leaves the last complete checkpoint readable.
mod accumulate;
mod callback;
mod checkpoint;
mod config;
mod control;
mod data_parallel;
mod ema;
mod epoch;
mod error;
mod evaluate;
mod float_json;
mod guard;
mod lookahead;
mod lr_schedule;
mod metrics;
mod optim;
mod outputs;
mod plot;
mod precision;
mod process;
mod progress;
pub mod recipe;
pub mod recipe_fast;
mod resume;
mod run;
mod run_dir;
mod run_eval;
mod sections;
mod stem_bias;
mod step;

pub use accumulate::{EpochAccumulator, RunningMetrics};
pub use callback::{Callbacks, EpochContext, StepContext, TrainCallback};
pub use checkpoint::{
    load_checkpoint, read_checkpoint_state, save_checkpoint, EpochProgress, TrainState,
    CHECKPOINT_FORMAT,
};
pub use config::{DataLocation, TrainConfig};
pub use control::BatchControl;
pub use ema::{ema_decay_for, Ema, EmaCallback, EmaError, EmaSchedule, EmaWeights};
pub use error::TrainError;
pub use evaluate::evaluate;
pub use lookahead::LookaheadCallback;
pub use lr_schedule::{Schedule, TriangleShape, SCHEDULE_NAMES};
pub use metrics::{ClassAccuracy, EpochMetrics, Evaluation, Summary};
pub use optim::{
    clip_grad_norm, gradient_clipper, is_bias, is_norm_parameter, total_grad_norm,
    trainable_parameters, AdamW, AdamWConfig, GroupOverride, OptimError, Optimizer,
    OptimizerConfig, ParamClass, ParamGroups, ParamSetting, Sgd, SgdConfig, OPTIMIZER_NAMES,
};
pub use outputs::{epoch_line, files};
pub use plot::curves_svg;
#[doc(hidden)]
pub use precision::{autocast_dtype_code, cpu_autocast_enabled, set_autocast_dtype_code};
pub use precision::{cpu_bf16_warning, cpu_has_native_bf16};
pub use precision::{set_cuda_autocast_dtype, Execution, LossScale, Precision, PRECISION_NAMES};
pub use process::tune_process_for_training;
pub use progress::ProgressMode;
pub use recipe::{
    check_same_recipe, recipe_config, recipe_names, recipe_warning, Recipe, Setting, RECIPES,
};
pub use run::{EvalForm, Outcome, Trainer};
pub use stem_bias::StemBiasFreeze;
pub use step::{GradientHook, StepBatch, StepOutput, TrainStep};
