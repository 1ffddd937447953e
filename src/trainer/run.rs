//! The trainer: the [`Trainer`] type, its construction from a model and its settings. The
//! rest of it has its own modules: building a ResNeXt and resuming (`resume`), the run
//! directory (`run_dir`), stop requests and the ranks' vote (`control`), the epoch loop
//! (`epoch`) and the evaluations of a run (`run_eval`). The step itself is [`TrainStep`], the
//! epoch's sums [`EpochAccumulator`](super::EpochAccumulator), the files [`super::outputs`].
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::control::{BatchControl, Control};
use super::data_parallel::DataParallel;
use super::run_dir::RunDir;
use super::{
    is_norm_parameter, Callbacks, Execution, LossScale, Optimizer, Precision, ProgressMode,
    Summary, TrainCallback, TrainConfig, TrainError, TrainState, TrainStep,
};
use crate::distributed::ProcessGroup;
use crate::layout::vars_to_channels_last;
use crate::weights::{PretrainedReport, WeightsMetadata};

/// How [`Trainer::fit`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every epoch ran; the summary was written.
    Completed(Summary),
    /// The run was already complete (a resumed finished run); nothing was trained.
    AlreadyComplete,
    /// Stopped (stop flag or hook) after the given batch; a checkpoint was saved when `saved`.
    Stopped {
        /// 1-based epoch in progress.
        epoch: usize,
        /// Batches of that epoch done.
        batch: usize,
        /// Whether a checkpoint was written (false only for [`BatchControl::Abort`]).
        saved: bool,
    },
}

/// Builds the module that evaluates the test set from the trained one (see
/// [`Trainer::with_eval_form`]).
pub type EvalForm<M> = Box<dyn Fn(&M) -> Result<Box<dyn ModuleT>, TrainError>>;

/// Sets part of a fresh run's model from its training set and batching settings, before the
/// first step (see [`Trainer::with_data_init`]).
pub type DataInit<M> =
    Box<dyn Fn(&M, &dyn crate::data::Dataset, &crate::data::BatchConfig) -> Result<(), TrainError>>;

/// Trains any [`ModuleT`] whose variables live in a [`nn::VarStore`] on any [`Dataset`](crate::data::Dataset) with
/// SGD, cross-entropy and a learning-rate schedule, checkpointing after every epoch.
///
/// ```no_run
/// use resnext::data::Cifar10;
/// use resnext::trainer::{Outcome, TrainConfig, Trainer};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = TrainConfig { model: "tiny".into(), epochs: 5, ..TrainConfig::default() };
/// let mut trainer = Trainer::resnext(config)?.with_run_dir(std::path::Path::new("runs/tiny"))?;
/// let data = Cifar10::load("data")?.splits(trainer.device())?;
/// if let Outcome::Completed(summary) = trainer.fit(&data)? {
///     println!("best test accuracy {:.2}%", summary.best_test_acc);
/// }
/// # Ok(()) }
/// ```
pub struct Trainer<M: ModuleT> {
    pub(super) vs: nn::VarStore,
    pub(super) model: M,
    pub(super) device: Device,
    pub(super) step: TrainStep,
    /// The optimiser of the configuration ([`TrainConfig::build_optimizer`]).
    pub(super) optimizer: Box<dyn Optimizer>,
    /// What runs after every update and every epoch, the EMA of the weights among them.
    pub(super) callbacks: Callbacks,
    pub(super) state: TrainState,
    /// The run directory, held (rank 0 only in a data-parallel run).
    pub(super) run_dir: Option<RunDir>,
    /// Stop requests and the ranks' vote on them.
    pub(super) control: Control,
    progress: ProgressMode,
    pub(super) eval_form: Option<EvalForm<M>>,
    /// Run on the training data before a fresh run's first step.
    pub(super) data_init: Option<DataInit<M>>,
    /// Written with `last.safetensors` and `best.safetensors` (classes filled in by `fit`).
    pub(super) weights_metadata: Option<WeightsMetadata>,
    /// What loading `config.pretrained` did, when the trainer loaded it.
    pub(super) pretrained: Option<PretrainedReport>,
    /// The process group of a data-parallel run.
    pub(super) dist: Option<DataParallel>,
}

impl<M: ModuleT> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("device", &self.device)
            .field("state", &self.state)
            .field("run_dir", &self.run_dir().map(Path::to_path_buf))
            .finish_non_exhaustive()
    }
}

/// Stops every variable but the classifier's (`fc.*`) from requiring gradients.
fn freeze_backbone(vs: &nn::VarStore) -> Result<(), TrainError> {
    let vars = vs.variables();
    if !vars.keys().any(|name| name.starts_with("fc.")) {
        return Err(TrainError::InvalidConfig {
            field: "freeze_backbone",
            value: "true".into(),
            expected: "a model with a classifier named `fc` (torchvision's name)".into(),
        });
    }
    for (name, var) in vars {
        if !name.starts_with("fc.") && var.requires_grad() {
            let _ = var.set_requires_grad(false);
        }
    }
    Ok(())
}

/// Stops every BatchNorm weight (scale) from requiring gradients: airbench's BatchNorm
/// without a trained weight.
fn freeze_norm_weights(vs: &nn::VarStore) -> Result<(), TrainError> {
    let mut frozen = 0;
    for (name, var) in vs.variables() {
        if is_norm_parameter(&name) && name.ends_with(".weight") {
            let _ = var.set_requires_grad(false);
            frozen += 1;
        }
    }
    if frozen == 0 {
        return Err(TrainError::InvalidConfig {
            field: "freeze_norm_weights",
            value: "true".into(),
            expected: "a model with BatchNorm layers named as torchvision's (bn*, downsample.1)"
                .into(),
        });
    }
    Ok(())
}

impl<M: ModuleT> Trainer<M> {
    /// A trainer for `model`, whose variables are those of `vs` (on the device training runs
    /// on). No run directory: call [`Trainer::with_run_dir`] to get checkpoints and files.
    /// Process-wide settings are left alone: call
    /// [`tune_process_for_training`](super::tune_process_for_training) for faster
    /// steps.
    ///
    /// With `config.freeze_backbone`, only the variables named `fc.*` (the classifier) are
    /// trained: the others stop requiring gradients here; with `config.freeze_norm_weights`,
    /// the BatchNorm weights stop requiring them.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for a bad configuration, `freeze_backbone` with a model
    /// that has no `fc` classifier, or `freeze_norm_weights` with one without BatchNorm.
    pub fn new(config: TrainConfig, vs: nn::VarStore, model: M) -> Result<Self, TrainError> {
        config.validate()?;
        Self::from_validated(config, vs, model)
    }

    /// [`Trainer::new`] for a configuration its caller has just validated (the one check at
    /// the boundary).
    pub(super) fn from_validated(
        config: TrainConfig,
        vs: nn::VarStore,
        model: M,
    ) -> Result<Self, TrainError> {
        if config.freeze_backbone {
            freeze_backbone(&vs)?;
        }
        if config.freeze_norm_weights {
            freeze_norm_weights(&vs)?;
        }
        let exec = Execution::new(&config, vs.device());
        if exec.channels_last {
            vars_to_channels_last(&vs)?;
        }
        let mut state = TrainState::new(config.clone());
        if exec.precision == Precision::Fp16 {
            state.loss_scale = Some(LossScale::default());
        }
        let optimizer = config.build_optimizer(&vs)?;
        let callbacks = Callbacks::for_config(&config, &vs, config.world_size)?;
        Ok(Trainer {
            device: vs.device(),
            step: TrainStep::new(exec, config.label_smoothing)
                .with_clip_grad_norm(config.clip_grad_norm)
                .with_grad_accum_steps(config.grad_accum_steps),
            vs,
            model,
            optimizer,
            callbacks,
            state,
            run_dir: None,
            control: Control::new(),
            progress: ProgressMode::Auto,
            eval_form: None,
            data_init: None,
            weights_metadata: None,
            pretrained: None,
            dist: None,
        })
    }

    /// Runs `init` with the model, the training set and its batching settings when a fresh
    /// run starts (before its first step; not when a run resumes from a checkpoint, whose
    /// weights already hold what it set), then takes the configured callbacks' copies of the
    /// weights again (the EMA starts from the initialised weights, as torchvision's, which
    /// builds its EMA after the model). [`Trainer::resnext`] sets the whitening of
    /// [`Stem::Whitening`](crate::Stem::Whitening) this way. Callbacks added with
    /// [`Trainer::with_callback`] keep what they took.
    pub fn with_data_init(mut self, init: DataInit<M>) -> Self {
        self.data_init = Some(init);
        self
    }

    /// Evaluates the test set with the module `form` builds from the trained one at each
    /// evaluation, instead of the trained module in eval mode, when training runs in fp32 (under
    /// bf16 / fp16 autocast the trained module is used). [`Trainer::resnext`] sets
    /// [`InferenceModel::new`](crate::inference::InferenceModel::new) (BN folded, channels-last, fused kernels: the same
    /// logits up to float rounding, faster).
    pub fn with_eval_form(mut self, form: EvalForm<M>) -> Self {
        self.eval_form = Some(form);
        self
    }

    /// Makes this trainer one of the `group.world_size()` processes of a data-parallel run,
    /// as PyTorch's `DistributedDataParallel` with a `DistributedSampler`:
    ///
    /// * at start the ranks check that they were given the same configuration (the device and
    ///   the data location aside) and rank 0's parameters and buffers are copied to all;
    /// * each rank trains on its part of every epoch ([`Shard`](crate::data::Shard): the same
    ///   shuffle on every rank, every image once per epoch), `batch_size` images per step, so a
    ///   step trains on `world_size * batch_size` images (the learning rate is not scaled);
    /// * after backward the gradients are averaged over the ranks in a few large buckets
    ///   ([`GradientBuckets`](crate::distributed::GradientBuckets)), before fp16's finiteness
    ///   check, so every rank takes the same step;
    /// * BatchNorm normalises with each rank's own batch statistics (no SyncBatchNorm); the
    ///   running statistics that evaluation uses and checkpoints keep are rank 0's, copied to
    ///   every rank before each evaluation (as DDP's `broadcast_buffers`);
    /// * the test set is split between the ranks and the metrics summed, so every rank computes
    ///   the same epoch figures; only rank 0 prints and writes the run directory, which records
    ///   `world_size`;
    /// * stop requests (the stop flag, a batch hook) and divergence are decided together at the
    ///   points where the epoch's sums are read (every batch on the CPU, every 25 on CUDA): all
    ///   ranks stop at the same batch. A stop during an evaluation takes effect after the
    ///   first batch of the next epoch.
    ///
    /// Call it before [`with_run_dir`](Self::with_run_dir) or [`resume_from`](Self::resume_from)
    /// ([`Trainer::resume_data_parallel`] does both). A one-process group trains as without it.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] when a run directory is already open;
    /// [`TrainError::RanksDisagree`] when the configurations differ;
    /// [`TrainError::Distributed`] when a collective fails or the device's backend is missing
    /// (NCCL for CUDA).
    pub fn data_parallel(mut self, group: ProcessGroup) -> Result<Self, TrainError> {
        if self.run_dir.is_some() || self.dist.is_some() {
            return Err(TrainError::InvalidConfig {
                field: "data_parallel",
                value: "called on a trainer with a run directory or a group".into(),
                expected: "a group joined before with_run_dir / resume_from, once".into(),
            });
        }
        let dp = DataParallel::new(group, self.device)?;
        self.state.config.world_size = dp.world_size();
        dp.check_config(&self.state.config)?;
        dp.broadcast_model(&self.vs)?;
        let reducer = dp.gradient_reducer(self.optimizer.parameters())?;
        self.step.set_gradient_reducer(reducer);
        // torchvision adjusts the EMA's decay for the world size.
        let configured = Callbacks::for_config(&self.state.config, &self.vs, dp.world_size())?;
        self.callbacks.reconfigured(configured);
        self.dist = Some(dp);
        Ok(self)
    }

    /// This process's rank in a data-parallel run (0 without one).
    pub fn rank(&self) -> usize {
        self.dist.as_ref().map_or(0, DataParallel::rank)
    }

    /// The process group of a data-parallel run (see [`Trainer::data_parallel`]), for
    /// collectives of the caller's own (a barrier while rank 0 downloads data, for example).
    pub fn process_group(&self) -> Option<&ProcessGroup> {
        self.dist.as_ref().map(DataParallel::group)
    }

    /// Processes training together (1 without data-parallel training).
    pub fn world_size(&self) -> usize {
        self.dist.as_ref().map_or(1, DataParallel::world_size)
    }

    /// Whether this process prints and writes the run directory: rank 0.
    pub(super) fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// The flag that stops training at the next batch boundary, with a checkpoint (what a
    /// Ctrl-C handler sets).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(self.control.flag())
    }

    /// Chooses what is printed (default [`ProgressMode::Auto`]).
    pub fn set_progress(&mut self, mode: ProgressMode) {
        self.progress = mode;
    }

    /// Calls `hook(epoch, batch)` (1-based epoch, 0-based batch) after every training batch;
    /// its answer may stop training.
    pub fn on_batch(&mut self, hook: impl FnMut(usize, usize) -> BatchControl + 'static) {
        self.control.set_hook(Box::new(hook));
    }

    /// Calls `hook` on every training step between backward and the optimiser update, with
    /// the trainable parameters and their gradients (see [`GradientHook`](super::GradientHook)):
    /// the place for gradient clipping, or your own all-reduce. In a data-parallel run
    /// ([`Trainer::data_parallel`]) the hook sees the gradients already averaged over the
    /// ranks.
    pub fn on_gradients(
        &mut self,
        hook: impl FnMut(&[(String, Tensor)]) -> Result<(), TrainError> + 'static,
    ) {
        self.step.set_gradient_hook(Box::new(hook));
    }

    /// Records where the run's data now is (see [`TrainConfig::data`]), for example after it
    /// moved; saved with the next checkpoint.
    pub fn relocate_data(&mut self, location: super::DataLocation) {
        self.state.config.data = location;
    }

    /// Adds `callback` after the configured ones (the EMA of [`TrainConfig::model_ema`]): it
    /// runs after every update and every epoch, and its state is a section of every
    /// checkpoint. Add it before [`resume_from`](Self::resume_from) to continue it from a
    /// checkpoint; [`Trainer::resume`] reads the checkpoint at once, so a callback of the run
    /// must be added to a trainer that then calls `resume_from`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for a section name that is malformed, reserved (`model`,
    /// `optimizer`) or another callback's.
    pub fn with_callback(
        mut self,
        callback: impl TrainCallback + 'static,
    ) -> Result<Self, TrainError> {
        self.callbacks.add(Box::new(callback))?;
        Ok(self)
    }

    /// The callbacks, in the order they run.
    pub fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    /// The trainer state: configuration, position, metrics so far.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The variables being trained.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The model being trained.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The device training runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The run directory, if any.
    pub fn run_dir(&self) -> Option<&Path> {
        self.run_dir.as_ref().map(RunDir::path)
    }

    /// What this process shows: the chosen mode on rank 0, nothing on the other ranks.
    pub(super) fn shown(&self) -> ProgressMode {
        match self.is_main() {
            true => self.progress,
            false => ProgressMode::Silent,
        }
    }

    pub(super) fn say(&self, line: &str) {
        self.shown().say(line);
    }
}
