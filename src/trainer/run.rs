//! The trainer: its construction, the loop over epochs and batches, and its stop handling.
//! The step itself is [`TrainStep`], the epoch's sums [`EpochAccumulator`], the files
//! [`super::outputs`].
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::checkpoint::{load_checkpoint, read_checkpoint_state, save_checkpoint};
use super::data_parallel::DataParallel;
use super::outputs::{self, files};
use super::progress::bar_message;
use super::{
    evaluate::{evaluate_until, EvalControl},
    guard::torch_guard,
    tune_process_for_training, Ema, EmaSchedule, EpochAccumulator, EpochMetrics, Evaluation,
    Execution, LossScale, Optimizer, Precision, ProgressMode, RunningMetrics, StepBatch, Summary,
    TrainConfig, TrainError, TrainState, TrainStep,
};
use crate::data::{epoch_batches, BatchConfig, BatchRequest, DataSplits, Dataset, Subset};
use crate::distributed::ProcessGroup;
use crate::inference::InferenceModel;
use crate::io::write_atomic;
use crate::io::{lock_dir, remove_partial_files, DirLock};
use crate::layout::{vars_to_channels_last, vars_to_contiguous};
use crate::resnext::ResNeXt;
use crate::weights::{load_pretrained, pretrained_architecture, PretrainedReport, WeightsMetadata};

/// What a batch hook (see [`Trainer::on_batch`]) asks the trainer to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchControl {
    /// Go on training.
    Continue,
    /// Save a checkpoint and stop, as on Ctrl-C ([`Outcome::Stopped`]).
    Stop,
    /// Stop at once without saving anything, as a crash or a kill would: the run directory
    /// keeps the checkpoint of the last completed epoch.
    Abort,
}

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

type BatchHook = Box<dyn FnMut(usize, usize) -> BatchControl>;

/// Builds the module that evaluates the test set from the trained one (see
/// [`Trainer::with_eval_form`]).
pub type EvalForm<M> = Box<dyn Fn(&M) -> Result<Box<dyn ModuleT>, TrainError>>;

/// Trains any [`ModuleT`] whose variables live in a [`nn::VarStore`] on any [`Dataset`] with
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
    vs: nn::VarStore,
    model: M,
    device: Device,
    step: TrainStep,
    /// The optimiser of the configuration ([`TrainConfig::build_optimizer`]).
    optimizer: Box<dyn Optimizer>,
    /// The EMA of the weights and its schedule, with `model_ema`.
    ema: Option<(Ema, EmaSchedule)>,
    state: TrainState,
    run_dir: Option<PathBuf>,
    lock: Option<DirLock>,
    stop: Arc<AtomicBool>,
    progress: ProgressMode,
    on_batch: Option<BatchHook>,
    eval_form: Option<EvalForm<M>>,
    /// Written with `last.safetensors` and `best.safetensors` (classes filled in by `fit`).
    weights_metadata: Option<WeightsMetadata>,
    /// What loading `config.pretrained` did, when the trainer loaded it.
    pretrained: Option<PretrainedReport>,
    /// The process group of a data-parallel run.
    dist: Option<DataParallel>,
    /// A data-parallel rank's stop or abort request, until the ranks decide together.
    pending: BatchControl,
}

impl<M: ModuleT> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("device", &self.device)
            .field("state", &self.state)
            .field("run_dir", &self.run_dir)
            .finish_non_exhaustive()
    }
}

impl Trainer<ResNeXt> {
    /// A trainer for the ResNeXt `config` describes ([`TrainConfig::model_config`]), built on
    /// the configured device with `tch::manual_seed(config.seed)`, so the same seed gives the
    /// same initial weights. With [`TrainConfig::pretrained`], the stem comes from the file
    /// (and is recorded in the run's configuration) and its weights are loaded with
    /// [`load_pretrained`]: a classifier with another number of classes keeps its seeded
    /// initialisation (see [`Trainer::pretrained_report`]). It evaluates with
    /// [`InferenceModel`] in fp32 runs (see [`Trainer::with_eval_form`]), calls
    /// [`tune_process_for_training`] for the device, and writes the model configuration, class
    /// names and image preparation into the weights it saves (see [`WeightsMetadata`]).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] or [`TrainError::DeviceUnavailable`];
    /// [`TrainError::Weights`] naming the pretrained file when it cannot be read or does not
    /// fit the model.
    pub fn resnext(config: TrainConfig) -> Result<Self, TrainError> {
        Self::build_resnext(config, true)
    }

    /// [`Trainer::resnext`], reading `config.pretrained` only when `read_pretrained` (a
    /// resumed run takes its weights from the checkpoint instead).
    fn build_resnext(mut config: TrainConfig, read_pretrained: bool) -> Result<Self, TrainError> {
        config.validate()?;
        let device = config.resolve_device()?;
        tune_process_for_training(device);
        let pretrained = config.pretrained.clone().filter(|_| read_pretrained);
        if let Some(path) = &pretrained {
            // The file fixes the stem: a torchvision ImageNet checkpoint means the ImageNet stem.
            config.stem = Some(pretrained_architecture(path)?.0);
        }
        let model_config = config.model_config()?;
        tch::manual_seed(config.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let model = ResNeXt::try_new(&vs.root(), &model_config)?;
        let report = match &pretrained {
            Some(path) => Some(load_pretrained(&mut vs, path, &model_config)?),
            None => None,
        };
        let metadata = WeightsMetadata {
            model: model_config,
            classes: Vec::new(),
            image_size: config.image_size,
            normalization: config.normalization,
        };
        let mut trainer =
            Trainer::new(config, vs, model)?.with_eval_form(Box::new(|net: &ResNeXt| {
                Ok(Box::new(InferenceModel::new(net)?) as Box<dyn ModuleT>)
            }));
        trainer.weights_metadata = Some(metadata);
        trainer.pretrained = report;
        Ok(trainer)
    }

    /// Reopens the run in `run_dir` with the configuration saved there, on the device saved
    /// there unless `device` names another (for example `cpu` for a run started on CUDA), as
    /// [`Trainer::resnext`] builds it. A run stopped before its first checkpoint (only its
    /// `config.json` written) starts again from its beginning, which gives the same run.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] / [`TrainError::TensorFile`] for a corrupt or mismatched
    /// checkpoint, or a directory with neither a checkpoint nor a `config.json` (nothing is
    /// overwritten); a configuration error.
    pub fn resume(run_dir: &Path, device: Option<&str>) -> Result<Self, TrainError> {
        Self::resume_with(run_dir, device, None)
    }

    /// As [`Trainer::resume`], as one of the processes of a data-parallel run (see
    /// [`Trainer::data_parallel`]): every rank reads the checkpoint (so every rank must see
    /// `run_dir`: one machine, or a shared filesystem), rank 0 alone writes.
    ///
    /// # Errors
    /// As [`Trainer::resume`]; [`TrainError::WorldSizeChanged`] when the run was trained by
    /// another number of processes; [`TrainError::RanksDisagree`] when the ranks read different
    /// runs; [`TrainError::Distributed`] when a collective fails.
    pub fn resume_data_parallel(
        run_dir: &Path,
        device: Option<&str>,
        group: ProcessGroup,
    ) -> Result<Self, TrainError> {
        Self::resume_with(run_dir, device, Some(group))
    }

    fn resume_with(
        run_dir: &Path,
        device: Option<&str>,
        group: Option<ProcessGroup>,
    ) -> Result<Self, TrainError> {
        let path = run_dir.join(files::CHECKPOINT);
        let started = path.is_file();
        let mut config = match started {
            true => read_checkpoint_state(&path)?.config,
            false => saved_config(run_dir)?,
        };
        if let Some(d) = device {
            config.device = d.to_string();
        }
        if !started {
            return Self::restart(run_dir, config, group);
        }
        let trainer = Trainer::build_resnext(config, false)?;
        match group {
            Some(group) => trainer.data_parallel(group)?.resume_from(run_dir),
            None => trainer.resume_from(run_dir),
        }
    }

    /// A run stopped before its first checkpoint, started again from its beginning with
    /// `config`, the one its `config.json` holds: the run an uninterrupted start gives (the
    /// same seed, the same initial or pretrained weights).
    fn restart(
        run_dir: &Path,
        config: TrainConfig,
        group: Option<ProcessGroup>,
    ) -> Result<Self, TrainError> {
        let now = group.as_ref().map_or(1, ProcessGroup::world_size);
        if config.world_size != now {
            return Err(TrainError::WorldSizeChanged {
                path: run_dir.join(files::CONFIG),
                saved: config.world_size,
                now,
            });
        }
        let trainer = Trainer::build_resnext(config, true)?;
        let trainer = match group {
            Some(group) => trainer.data_parallel(group)?,
            None => trainer,
        };
        trainer.with_run_dir(run_dir)
    }

    /// What loading the pretrained weights did (tensors loaded, classifier replaced), when
    /// this trainer loaded them; `None` without [`TrainConfig::pretrained`] and for a resumed
    /// run.
    pub fn pretrained_report(&self) -> Option<&PretrainedReport> {
        self.pretrained.as_ref()
    }
}

/// The configuration in the `config.json` of `run_dir`, a run stopped before its first
/// checkpoint; an error naming the checkpoint when there is neither (not a run directory).
fn saved_config(run_dir: &Path) -> Result<TrainConfig, TrainError> {
    let config_path = run_dir.join(files::CONFIG);
    if !config_path.is_file() {
        return Err(TrainError::Checkpoint {
            path: run_dir.join(files::CHECKPOINT),
            problem: format!(
                "no checkpoint and no {} here: not a run directory",
                files::CONFIG
            ),
        });
    }
    TrainConfig::from_file(&config_path)
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

impl<M: ModuleT> Trainer<M> {
    /// A trainer for `model`, whose variables are those of `vs` (on the device training runs
    /// on). No run directory: call [`Trainer::with_run_dir`] to get checkpoints and files.
    /// Process-wide settings are left alone: call [`tune_process_for_training`] for faster
    /// steps.
    ///
    /// With `config.freeze_backbone`, only the variables named `fc.*` (the classifier) are
    /// trained: the others stop requiring gradients here.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for a bad configuration, or `freeze_backbone` with a model
    /// that has no `fc` classifier.
    pub fn new(config: TrainConfig, vs: nn::VarStore, model: M) -> Result<Self, TrainError> {
        config.validate()?;
        if config.freeze_backbone {
            freeze_backbone(&vs)?;
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
        let ema = config.build_ema(&vs, config.world_size)?;
        Ok(Trainer {
            device: vs.device(),
            step: TrainStep::new(exec, config.label_smoothing)
                .with_clip_grad_norm(config.clip_grad_norm)
                .with_grad_accum_steps(config.grad_accum_steps),
            vs,
            model,
            optimizer,
            ema,
            state,
            run_dir: None,
            lock: None,
            stop: Arc::new(AtomicBool::new(false)),
            progress: ProgressMode::Auto,
            on_batch: None,
            eval_form: None,
            weights_metadata: None,
            pretrained: None,
            dist: None,
            pending: BatchControl::Continue,
        })
    }

    /// Evaluates the test set with the module `form` builds from the trained one at each
    /// evaluation, instead of the trained module in eval mode, when training runs in fp32 (under
    /// bf16 / fp16 autocast the trained module is used). [`Trainer::resnext`] sets
    /// [`InferenceModel::new`] (BN folded, channels-last, fused 1x1 convolutions: the same
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
        self.ema = self.state.config.build_ema(&self.vs, dp.world_size())?;
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
    fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// `result` on every rank of a data-parallel run: `Ok` only when it is `Ok` on all of
    /// them (one small collective), so that one rank's failure to open the run stops all.
    fn all_ok<T>(&self, result: Result<T, TrainError>) -> Result<T, TrainError> {
        let Some(dp) = &self.dist else {
            return result;
        };
        let failed = dp.sum(&[f64::from(u8::from(result.is_err()))])?[0];
        match result {
            Ok(_) if failed > 0.0 => Err(TrainError::RanksDisagree {
                world_size: dp.world_size(),
                what: "opening the run",
                detail: format!("{failed} other rank(s) failed: see their error"),
            }),
            result => result,
        }
    }

    /// Starts a fresh run in `dir` (created if needed) and writes `config.json` there. The
    /// trainer holds `dir` (see [`Trainer::resume_from`]) for as long as it lives. In a
    /// data-parallel run, only rank 0 does this; the other ranks write nothing.
    ///
    /// # Errors
    /// [`TrainError::RunExists`] if `dir` already holds a checkpoint (nothing is overwritten);
    /// [`TrainError::TensorFile`] with [`IoError::Locked`](crate::io::IoError::Locked) when
    /// another process works in `dir`; [`TrainError::Io`] if it cannot be created or written.
    pub fn with_run_dir(mut self, dir: &Path) -> Result<Self, TrainError> {
        let opened = match self.is_main() {
            true => self.open_run_dir(dir).map(Some),
            false => Ok(None),
        };
        if let Some(lock) = self.all_ok(opened)? {
            self.lock = Some(lock);
            self.run_dir = Some(dir.to_path_buf());
        }
        Ok(self)
    }

    /// Creates and locks `dir` for a fresh run and writes `config.json` there.
    fn open_run_dir(&self, dir: &Path) -> Result<DirLock, TrainError> {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            action: "creating the run directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = hold_run_dir(dir)?;
        if dir.join(files::CHECKPOINT).exists() {
            return Err(TrainError::RunExists {
                path: dir.to_path_buf(),
            });
        }
        write_atomic(
            &dir.join(files::CONFIG),
            self.state.config.to_json().as_bytes(),
        )?;
        Ok(lock)
    }

    /// Continues the run in `dir` from its checkpoint: weights, momentum buffers, epoch and
    /// batch position, metrics. The trainer's own configuration is replaced by the saved one,
    /// precision and layout included (the device stays the one it was built on).
    ///
    /// The trainer holds `dir` for as long as it lives: an advisory lock (see
    /// [`crate::io::lock_dir`]) that a second trainer, in this process or another, is refused,
    /// and that the operating system releases when the process ends, however it ends. Holding
    /// it, the trainer removes the temporary files interrupted writes left in `dir`.
    ///
    /// In a data-parallel run every rank reads the checkpoint and only rank 0 holds `dir`;
    /// the ranks then check that they are at the same position.
    ///
    /// # Errors
    /// As [`super::load_checkpoint`], or [`IoError::Locked`](crate::io::IoError::Locked) (as
    /// [`TrainError::TensorFile`]) naming the process that holds `dir`; nothing in `dir` is
    /// changed on error. [`TrainError::WorldSizeChanged`] when the run was trained by another
    /// number of processes than this trainer's.
    pub fn resume_from(mut self, dir: &Path) -> Result<Self, TrainError> {
        let loaded = self.load_run(dir);
        let lock = self.all_ok(loaded)?;
        if let Some(dp) = &self.dist {
            dp.check_position(&self.state)?;
        }
        if let Some(lock) = lock {
            self.run_dir = Some(dir.to_path_buf());
            self.lock = Some(lock);
        }
        Ok(self)
    }

    /// Loads the checkpoint of `dir` (holding `dir` on rank 0); the lock, when held.
    fn load_run(&mut self, dir: &Path) -> Result<Option<DirLock>, TrainError> {
        let lock = match self.is_main() {
            true => Some(hold_run_dir(dir)?),
            false => None,
        };
        let path = dir.join(files::CHECKPOINT);
        // The trainer is dropped on error: what loading changed in it does not matter.
        let state = load_checkpoint(&path, &mut self.vs, &mut self.optimizer, &mut self.ema)?;
        if state.config.world_size != self.world_size() {
            return Err(TrainError::WorldSizeChanged {
                path,
                saved: state.config.world_size,
                now: self.world_size(),
            });
        }
        self.use_execution_of(&state.config)?;
        self.state = state;
        if self.step.execution().precision == Precision::Fp16 && self.state.loss_scale.is_none() {
            self.state.loss_scale = Some(LossScale::default());
        }
        Ok(lock)
    }

    /// Runs as `config` says on the trainer's device: precision, layout, label smoothing.
    fn use_execution_of(&mut self, config: &TrainConfig) -> Result<(), TrainError> {
        let exec = Execution::new(config, self.device);
        if exec.channels_last {
            vars_to_channels_last(&self.vs)?;
        } else {
            vars_to_contiguous(&self.vs)?;
        }
        self.step.reconfigure(exec, config.label_smoothing);
        self.step.set_clip_grad_norm(config.clip_grad_norm);
        self.step.set_grad_accum_steps(config.grad_accum_steps);
        Ok(())
    }

    /// The flag that stops training at the next batch boundary, with a checkpoint (what a
    /// Ctrl-C handler sets).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Chooses what is printed (default [`ProgressMode::Auto`]).
    pub fn set_progress(&mut self, mode: ProgressMode) {
        self.progress = mode;
    }

    /// Calls `hook(epoch, batch)` (1-based epoch, 0-based batch) after every training batch;
    /// its answer may stop training.
    pub fn on_batch(&mut self, hook: impl FnMut(usize, usize) -> BatchControl + 'static) {
        self.on_batch = Some(Box::new(hook));
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
        self.run_dir.as_deref()
    }

    /// What this process shows: the chosen mode on rank 0, nothing on the other ranks.
    fn shown(&self) -> ProgressMode {
        match self.is_main() {
            true => self.progress,
            false => ProgressMode::Silent,
        }
    }

    fn say(&self, line: &str) {
        self.shown().say(line);
    }

    /// Trains until every epoch is done or a stop is requested: batches of `data.train`
    /// (moved to the trainer's device if they are elsewhere), an evaluation of `data.test`
    /// after every `eval_every` epochs and the last, and the run directory's files after every
    /// epoch. [`Cifar10::splits`](crate::data::Cifar10::splits) gives CIFAR-10 in this form;
    /// any [`Dataset`] works.
    ///
    /// Before training, the files of the run directory are brought in line with the
    /// checkpoint (a run killed between writing its checkpoint and its other files gets them
    /// here), and a pending stop request is cleared. A finished run gets its files, summary
    /// included, and [`Outcome::AlreadyComplete`].
    ///
    /// # Errors
    /// Data, libtorch or I/O errors, and [`TrainError::Diverged`] when the loss is not finite.
    /// The last checkpoint written stays valid.
    pub fn fit(&mut self, data: &DataSplits) -> Result<Outcome, TrainError> {
        self.stop.store(false, Ordering::SeqCst);
        self.check_classes(data)?;
        self.describe_weights(data.train.classes());
        self.repair_outputs(data.train.classes())?;
        if self.state.finished() {
            return Ok(Outcome::AlreadyComplete);
        }
        let batch_cfg = self.batch_config();
        let num_batches = batch_cfg.num_batches(data.train.len());
        self.announce(data, &batch_cfg, num_batches);
        while !self.state.finished() {
            if let Some(stopped) = self.train_epoch(&data.train, &batch_cfg, num_batches)? {
                return Ok(stopped);
            }
            if let Some(stopped) = self.finish_epoch(&data.test, num_batches)? {
                return Ok(stopped);
            }
        }
        let summary = self.write_summary(data.train.classes())?;
        self.say(&outputs::done_line(&summary));
        Ok(Outcome::Completed(summary))
    }

    /// Completes the metadata of the saved weights: the data's class names and the run's image
    /// size and normalisation.
    fn describe_weights(&mut self, classes: &[String]) {
        let config = &self.state.config;
        if let Some(meta) = &mut self.weights_metadata {
            meta.classes = classes.to_vec();
            meta.image_size = config.image_size;
            meta.normalization = config.normalization;
        }
    }

    /// The summary of the finished run, written to the run directory if there is one.
    fn write_summary(&self, classes: &[String]) -> Result<Summary, TrainError> {
        let checkpoint = self.checkpoint_path();
        let summary = outputs::summary(&self.state, classes, self.device, &checkpoint)?;
        if let Some(dir) = &self.run_dir {
            outputs::write_summary(dir, &summary)?;
        }
        Ok(summary)
    }

    /// Rewrites what the checkpoint determines: `metrics.jsonl` and `curves.svg` always;
    /// `last.safetensors` (and `best.safetensors` when the last epoch is the best) when the
    /// checkpoint is at an epoch boundary, whose weights they hold; `summary.json` when the
    /// run is finished. Files of earlier epochs were complete before a later checkpoint was
    /// written, so after this the directory is that of an uninterrupted run.
    fn repair_outputs(&self, classes: &[String]) -> Result<(), TrainError> {
        let Some(dir) = &self.run_dir else {
            return Ok(());
        };
        if self.state.epoch == 0 {
            return Ok(());
        }
        if self.state.batch == 0 {
            let best_is_last = self.state.best.is_some_and(|(_, e)| e == self.state.epoch);
            let meta = self.weights_metadata.as_ref();
            outputs::write_epoch_outputs(dir, &self.state, &self.vs, best_is_last, meta)?;
        } else {
            outputs::write_metric_files(dir, &self.state)?;
        }
        if self.state.finished() {
            self.write_summary(classes)?;
        }
        Ok(())
    }

    /// Refuses, before anything is trained or written, data whose classes the model's output
    /// does not fit (one training image through the model in eval mode tells its width).
    fn check_classes(&self, data: &DataSplits) -> Result<(), TrainError> {
        if data.train.is_empty() {
            return Ok(());
        }
        let cfg = BatchConfig::eval(1);
        let request = BatchRequest {
            config: &cfg,
            epoch: 0,
            index: 0,
            indices: &[0],
        };
        let (images, _) = data.train.make_batch(&request)?;
        let input = self
            .step
            .execution()
            .input(&images.f_to_device(self.device)?)?;
        let logits = torch_guard(1, self.device, || {
            Ok(tch::no_grad(|| {
                self.step
                    .execution()
                    .run(|| self.model.forward_t(&input, false))
            }))
        })?;
        let outputs = logits.size().last().copied().unwrap_or(0);
        for (split, set) in [("training", &data.train), ("test", &data.test)] {
            let classes = set.classes();
            if classes.len() as i64 != outputs {
                let mut names = classes
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if classes.len() > 5 {
                    names.push_str(", …");
                }
                return Err(TrainError::ClassCount {
                    outputs,
                    split,
                    classes: classes.len(),
                    names,
                });
            }
        }
        Ok(())
    }

    /// How the training set is batched: the run's batch size, seed, augmentation and limit.
    fn batch_config(&self) -> BatchConfig {
        let cfg = &self.state.config;
        BatchConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            augment: cfg.augment,
            drop_last: false,
            limit: cfg.limit_train,
            seed: cfg.seed,
            normalization: cfg.normalization,
            shard: self
                .dist
                .as_ref()
                .map(DataParallel::shard)
                .unwrap_or_default(),
            augmentation: cfg.augmentation(),
        }
    }

    /// The stages after crop and flip, when any, and those the training set's pipeline runs
    /// image by image.
    fn announce_augmentation(&self, data: &DataSplits, batch_cfg: &BatchConfig) {
        let aug = &batch_cfg.augmentation;
        if *aug != Default::default() {
            self.say(&format!("augmentation after crop and flip: {aug}"));
        }
        for note in data.train.per_image_stages(batch_cfg) {
            self.say(&format!("note: {note}"));
        }
    }

    /// The first line of a run, or of a resumed one.
    fn announce(&self, data: &DataSplits, batch_cfg: &BatchConfig, num_batches: usize) {
        let cfg = &self.state.config;
        if self.state.epoch == 0 && self.state.batch == 0 {
            let test = data.test.len();
            let processes = match self.world_size() {
                1 => String::new(),
                n => format!(" x {n} processes"),
            };
            self.say(&format!(
                "training {} on {:?}{processes}: {} epochs of {} images ({} batches of {}{processes}), test on {} images",
                cfg.model,
                self.device,
                cfg.epochs,
                batch_cfg.used_len(data.train.len()),
                num_batches,
                cfg.batch_size,
                cfg.limit_test.map_or(test, |l| l.min(test)),
            ));
            if let (Some(report), Some(path)) = (&self.pretrained, &cfg.pretrained) {
                self.say(&format!("pretrained weights {}: {report}", path.display()));
            }
            self.announce_augmentation(data, batch_cfg);
        } else {
            self.say(&format!(
                "resuming {} at epoch {}, batch {}/{num_batches}",
                cfg.model,
                self.state.epoch + 1,
                self.state.batch
            ));
        }
    }

    /// Trains the batches of the current epoch from the saved position; `Some` when stopped.
    fn train_epoch(
        &mut self,
        train: &Arc<dyn Dataset>,
        batch_cfg: &BatchConfig,
        num_batches: usize,
    ) -> Result<Option<Outcome>, TrainError> {
        let epoch = self.state.epoch;
        let lr = self.state.config.lr_at(epoch);
        let epochs = self.state.config.epochs;
        let bar = self
            .shown()
            .epoch_bar(epoch + 1, epochs, self.state.batch, num_batches);
        let mut sums = EpochAccumulator::new(self.state.progress.clone(), self.device);
        let start = self.state.batch;
        let mut batches = epoch_batches(Arc::clone(train), batch_cfg, epoch as u64, start)?;
        let mut control = BatchControl::Continue;
        let fp16 = self.step.execution().precision == Precision::Fp16;
        for batch in &mut batches {
            let images = batch.images.f_to_device(self.device)?;
            let labels = batch.labels.f_to_device(self.device)?;
            // Loss scaling only where fp16 runs (a run moved to the CPU keeps its scale).
            let mut unscaled = None;
            let scale = match fp16 {
                true => &mut self.state.loss_scale,
                false => &mut unscaled,
            };
            let targets = batch
                .targets
                .map(|t| t.f_to_device(self.device))
                .transpose()?;
            let step_batch = StepBatch {
                images: &images,
                labels: &labels,
                targets: targets.as_ref(),
            };
            let out = self.step.run_batch(
                &self.model,
                self.optimizer.as_mut(),
                scale,
                &step_batch,
                lr,
            )?;
            // Right after the update, as torchvision's reference script.
            if let Some((ema, schedule)) = &mut self.ema {
                schedule.after_step(ema, &self.vs, epoch, batch.index)?;
            }
            sums.add(&out);
            self.state.steps += 1;
            self.state.batch = batch.index + 1;
            let scale_exhausted = self.state.loss_scale.is_some_and(|s| s.scale <= 1.0);
            let overflow_at_floor = out.skipped && scale_exhausted;
            let asked = self.control_after(epoch + 1, batch.index);
            if sums.is_read_due(batch.index, num_batches) || overflow_at_floor {
                let running = sums.read(&out)?;
                control = self.read_point(&running, overflow_at_floor, asked, batch.index)?;
                bar.set_message(bar_message(&running));
            } else {
                control = self.defer(asked);
            }
            bar.set_position(self.state.batch as u64);
            if control != BatchControl::Continue {
                break;
            }
        }
        bar.finish_and_clear();
        if let Some(e) = batches.take_error() {
            return Err(e.into());
        }
        drop(batches);
        self.state.progress = match &self.dist {
            None => sums.progress()?,
            Some(dp) => sums.progress_combined(|own| dp.sum(own))?,
        };
        self.stop_if_asked(control, num_batches)
    }

    /// At a read point after batch `index` of the current epoch, with the `running` sums just
    /// read: the ranks' stop requests decided together (`asked` is this one's), and divergence
    /// (a non-finite loss on any rank, or an fp16 step skipped with the loss scale already at
    /// 1) an error naming the batch.
    fn read_point(
        &mut self,
        running: &RunningMetrics,
        overflow_at_floor: bool,
        asked: BatchControl,
        index: usize,
    ) -> Result<BatchControl, TrainError> {
        let (non_finite, agreed) = self.decide(running.non_finite, asked)?;
        let diverged = |loss| TrainError::Diverged {
            epoch: self.state.epoch + 1,
            batch: index,
            loss,
        };
        if non_finite > 0 {
            return Err(diverged(running.non_finite_loss));
        }
        if overflow_at_floor {
            return Err(diverged(running.batch_loss));
        }
        Ok(agreed)
    }

    /// Without data-parallel training, `asked`. A data-parallel rank keeps its request until
    /// the ranks [`decide`](Self::decide) together, and goes on meanwhile.
    fn defer(&mut self, asked: BatchControl) -> BatchControl {
        if self.dist.is_none() {
            return asked;
        }
        self.pending = strongest(self.pending, asked);
        BatchControl::Continue
    }

    /// The number of non-finite losses and what to do next, over all ranks of a data-parallel
    /// run (one small collective): a stop or an abort asked by any rank holds for all, so that
    /// every rank leaves the epoch at the same batch. Without data-parallel training, the
    /// arguments.
    fn decide(
        &mut self,
        non_finite: u64,
        asked: BatchControl,
    ) -> Result<(u64, BatchControl), TrainError> {
        let Some(dp) = &self.dist else {
            return Ok((non_finite, asked));
        };
        let mine = strongest(
            std::mem::replace(&mut self.pending, BatchControl::Continue),
            asked,
        );
        let flag = |c: BatchControl| f64::from(u8::from(mine == c));
        let sums = dp.sum(&[
            non_finite as f64,
            flag(BatchControl::Stop),
            flag(BatchControl::Abort),
        ])?;
        let control = match (sums[1] > 0.0, sums[2] > 0.0) {
            (_, true) => BatchControl::Abort,
            (true, false) => BatchControl::Stop,
            (false, false) => BatchControl::Continue,
        };
        Ok((sums[0] as u64, control))
    }

    /// What the batch hook and the stop flag ask for after batch `batch` of `epoch` (on this
    /// process).
    fn control_after(&mut self, epoch: usize, batch: usize) -> BatchControl {
        let mut control = BatchControl::Continue;
        if let Some(hook) = &mut self.on_batch {
            control = hook(epoch, batch);
        }
        if self.stop.load(Ordering::SeqCst) && control == BatchControl::Continue {
            control = BatchControl::Stop;
        }
        control
    }

    /// Saves the checkpoint on a stop; `Some` when the loop must end.
    fn stop_if_asked(
        &mut self,
        control: BatchControl,
        num_batches: usize,
    ) -> Result<Option<Outcome>, TrainError> {
        let (epoch, batch) = (self.state.epoch + 1, self.state.batch);
        match control {
            BatchControl::Continue => Ok(None),
            BatchControl::Abort => Ok(Some(Outcome::Stopped {
                epoch,
                batch,
                saved: false,
            })),
            BatchControl::Stop => {
                self.save_checkpoint()?;
                let how = match &self.run_dir {
                    Some(dir) => format!("checkpoint saved in {}", dir.display()),
                    None => "no run directory: nothing saved".to_string(),
                };
                self.say(&format!(
                    "stopped at epoch {epoch}, batch {batch}/{num_batches}: {how}"
                ));
                Ok(Some(Outcome::Stopped {
                    epoch,
                    batch,
                    saved: self.run_dir.is_some(),
                }))
            }
        }
    }

    /// Evaluates `test` with the evaluation form (fp32 runs) or the trained model; `None`
    /// when a stop was requested during the evaluation.
    fn evaluate_test(&self, test: &Arc<dyn Dataset>) -> Result<Option<Evaluation>, TrainError> {
        let cfg = &self.state.config;
        if let Some(dp) = &self.dist {
            dp.broadcast_buffers(&self.vs)?;
        }
        let fast = match &self.eval_form {
            Some(form) if self.step.execution().precision == Precision::Fp32 => {
                Some(form(&self.model)?)
            }
            _ => None,
        };
        let model: &dyn ModuleT = match &fast {
            Some(m) => m.as_ref(),
            None => &self.model,
        };

        let mut batches = BatchConfig {
            limit: cfg.limit_test,
            normalization: cfg.normalization,
            ..BatchConfig::eval(cfg.batch_size.max(256))
        };
        let classes = test.classes().len() as i64;
        let exec = self.step.execution();
        let Some(dp) = &self.dist else {
            let control = EvalControl {
                stop: &self.stop,
                reduce: None,
                tta: cfg.tta,
            };
            return evaluate_until(model, test, &batches, classes, exec, control);
        };
        // Rank r evaluates the images r, r + world_size, ... (none twice, unlike the padded
        // training shards); the sums are added up over the ranks. A stop waits for the
        // next epoch's first batch, where the ranks decide together.
        let used = batches.used_len(test.len());
        let mine = (dp.rank()..used).step_by(dp.world_size()).collect();
        let part: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::clone(test), mine)?);
        batches.limit = None;
        let never = AtomicBool::new(false);
        let reduce = |t: &mut Tensor| dp.sum_tensor(t);
        let control = EvalControl {
            stop: &never,
            reduce: Some(&reduce),
            tta: cfg.tta,
        };
        evaluate_until(model, &part, &batches, classes, exec, control)
    }

    /// Evaluates `test` with the EMA's averages in place of the weights and buffers (restored
    /// afterwards, also on error); `None` when a stop was requested during the evaluation.
    fn evaluate_ema(&self, test: &Arc<dyn Dataset>) -> Result<Option<Evaluation>, TrainError> {
        let Some((ema, _)) = &self.ema else {
            return Ok(None);
        };
        let raw: Vec<(String, Tensor)> = tch::no_grad(|| {
            self.vs
                .variables()
                .into_iter()
                .map(|(n, t)| t.f_detach_copy().map(|c| (n, c)))
                .collect::<Result<_, _>>()
        })?;
        ema.copy_into(&self.vs)?;
        let result = self.evaluate_test(test);
        let live = self.vs.variables();
        tch::no_grad(|| -> Result<(), tch::TchError> {
            for (name, saved) in &raw {
                live[name].shallow_clone().f_copy_(saved)?;
            }
            Ok(())
        })?;
        result
    }

    /// Evaluates (when due), records the epoch's metrics, moves to the next epoch and writes
    /// the checkpoint and the run directory's files; `Some` when a stop request interrupted
    /// the evaluation (the checkpoint then resumes at the evaluation).
    fn finish_epoch(
        &mut self,
        test: &Arc<dyn Dataset>,
        num_batches: usize,
    ) -> Result<Option<Outcome>, TrainError> {
        let epoch = self.state.epoch + 1;
        let epochs = self.state.config.epochs;
        let started = Instant::now();
        let due = epoch.is_multiple_of(self.state.config.eval_every) || epoch == epochs;
        let eval = match due {
            true => match self.evaluate_test(test)? {
                Some(eval) => Some(eval),
                None => return self.stop_if_asked(BatchControl::Stop, num_batches),
            },
            false => None,
        };
        let ema_eval = match (due, self.ema.is_some()) {
            (true, true) => match self.evaluate_ema(test)? {
                Some(eval) => Some(eval),
                None => return self.stop_if_asked(BatchControl::Stop, num_batches),
            },
            _ => None,
        };
        let p = std::mem::take(&mut self.state.progress);
        let seen = p.seen.max(1) as f64;
        let metrics = EpochMetrics {
            epoch,
            train_loss: p.loss_sum / seen,
            train_acc: 100.0 * p.correct as f64 / seen,
            test_loss: eval.as_ref().map(|e| e.loss),
            test_acc: eval.as_ref().map(|e| e.acc),
            ema_test_loss: ema_eval.as_ref().map(|e| e.loss),
            ema_test_acc: ema_eval.as_ref().map(|e| e.acc),
            lr: self.state.config.lr_at(epoch - 1),
            seconds: p.seconds + started.elapsed().as_secs_f64(),
            train_images: p.seen,
            train_images_per_sec: p.seen as f64 / p.train_seconds.max(1e-9),
        };
        let improved = match (&eval, self.state.best) {
            (Some(e), Some((best, _))) => e.acc > best,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if let (true, Some(e)) = (improved, &eval) {
            self.state.best = Some((e.acc, epoch));
        }
        if eval.is_some() {
            self.state.last_eval = eval;
        }
        self.say(&outputs::epoch_line(&metrics, epochs));
        self.state.metrics.push(metrics);
        self.state.epoch += 1;
        self.state.batch = 0;
        self.save_checkpoint()?;
        if let Some(dir) = &self.run_dir {
            let meta = self.weights_metadata.as_ref();
            outputs::write_epoch_outputs(dir, &self.state, &self.vs, improved, meta)?;
        }
        Ok(None)
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.run_dir
            .as_ref()
            .map_or_else(PathBuf::new, |d| d.join(files::CHECKPOINT))
    }

    fn save_checkpoint(&self) -> Result<(), TrainError> {
        match &self.run_dir {
            Some(dir) => save_checkpoint(
                &dir.join(files::CHECKPOINT),
                &self.vs,
                self.optimizer.as_ref(),
                self.ema.as_ref().map(|(e, _)| e),
                &self.state,
            ),
            None => Ok(()),
        }
    }
}

/// The stronger of two requests: abort over stop over continue.
fn strongest(a: BatchControl, b: BatchControl) -> BatchControl {
    let rank = |c| match c {
        BatchControl::Continue => 0,
        BatchControl::Stop => 1,
        BatchControl::Abort => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Takes `dir`'s lock and removes the leftovers of interrupted writes there.
fn hold_run_dir(dir: &Path) -> Result<DirLock, TrainError> {
    let lock = lock_dir(dir)?;
    remove_partial_files(dir)?;
    Ok(lock)
}
