//! The training loop and its run directory.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

use super::checkpoint::{load_checkpoint, read_checkpoint_state, save_checkpoint};
use super::{
    curves_svg, evaluate, ClassAccuracy, EpochMetrics, EpochProgress, Evaluation, Execution,
    LossScale, Precision, Sgd, SgdConfig, Summary, TrainConfig, TrainError, TrainState,
};
use crate::data::{BatchConfig, Cifar10, DeviceDataset};
use crate::inference::InferenceModel;
use crate::io::write_atomic;
use crate::layout::vars_to_channels_last;
use crate::resnext::ResNeXt;
use crate::weights::save_weights;

/// Files of a run directory.
pub mod files {
    /// The resolved configuration.
    pub const CONFIG: &str = "config.json";
    /// One JSON object per completed epoch.
    pub const METRICS: &str = "metrics.jsonl";
    /// Loss and accuracy curves.
    pub const CURVES: &str = "curves.svg";
    /// The outcome of a completed run.
    pub const SUMMARY: &str = "summary.json";
    /// Weights, momentum buffers and trainer state (see [`super::super::save_checkpoint`]).
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Weights after the latest epoch (torchvision names).
    pub const LAST: &str = "last.safetensors";
    /// Weights of the epoch with the best test accuracy (torchvision names).
    pub const BEST: &str = "best.safetensors";
}

/// What the trainer prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A progress bar per epoch on stderr when it is a terminal, and one line per epoch on
    /// stdout.
    #[default]
    Auto,
    /// Only the line per epoch (for logs, or `--quiet`).
    Lines,
    /// Nothing.
    Silent,
}

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

/// Trains any [`ModuleT`] whose variables live in a [`nn::VarStore`] on CIFAR-10 with SGD,
/// cross-entropy and a learning-rate schedule, checkpointing after every epoch.
///
/// ```no_run
/// use resnext::data::Cifar10;
/// use resnext::trainer::{Outcome, TrainConfig, Trainer};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let data = Cifar10::load("data")?;
/// let config = TrainConfig { model: "tiny".into(), epochs: 5, ..TrainConfig::default() };
/// let mut trainer = Trainer::resnext(config)?.with_run_dir(std::path::Path::new("runs/tiny"))?;
/// if let Outcome::Completed(summary) = trainer.fit(&data)? {
///     println!("best test accuracy {:.2}%", summary.best_test_acc);
/// }
/// # Ok(()) }
/// ```
pub struct Trainer<M: ModuleT> {
    vs: nn::VarStore,
    model: M,
    device: Device,
    exec: Execution,
    sgd: Sgd,
    state: TrainState,
    run_dir: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    progress: ProgressMode,
    on_batch: Option<BatchHook>,
    eval_form: Option<EvalForm<M>>,
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
    /// A trainer for the ResNeXt named by `config.model` (10 classes), built on the configured
    /// device with `tch::manual_seed(config.seed)`, so the same seed gives the same initial
    /// weights.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] or [`TrainError::DeviceUnavailable`].
    pub fn resnext(config: TrainConfig) -> Result<Self, TrainError> {
        config.validate()?;
        let device = config.resolve_device()?;
        let model_config = config.model_config()?;
        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(device);
        let model = ResNeXt::try_new(&vs.root(), &model_config)?;
        Ok(
            Trainer::new(config, vs, model)?.with_eval_form(Box::new(|net: &ResNeXt| {
                Ok(Box::new(InferenceModel::new(net)?) as Box<dyn ModuleT>)
            })),
        )
    }

    /// Reopens the run in `run_dir` with the configuration saved there, on the device saved
    /// there unless `device` names another (for example `cpu` for a run started on CUDA).
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] / [`TrainError::TensorFile`] for a missing, corrupt or
    /// mismatched checkpoint (nothing is overwritten), or a configuration error.
    pub fn resume(run_dir: &Path, device: Option<&str>) -> Result<Self, TrainError> {
        let path = run_dir.join(files::CHECKPOINT);
        if !path.is_file() {
            return Err(TrainError::Checkpoint {
                path,
                problem: "no checkpoint here: not a run directory, or the run stopped before its first checkpoint".into(),
            });
        }
        let mut config = read_checkpoint_state(&path)?.config;
        if let Some(d) = device {
            config.device = d.to_string();
        }
        Trainer::resnext(config)?.resume_from(run_dir)
    }
}

impl<M: ModuleT> Trainer<M> {
    /// A trainer for `model`, whose variables are those of `vs` (on the device training runs
    /// on). No run directory: call [`Trainer::with_run_dir`] to get checkpoints and files.
    /// On the CPU it calls [`crate::memory::keep_freed_memory`] (much faster steps).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for a bad configuration.
    pub fn new(config: TrainConfig, vs: nn::VarStore, model: M) -> Result<Self, TrainError> {
        config.validate()?;
        let exec = Execution::new(&config, vs.device());
        if exec.channels_last {
            vars_to_channels_last(&vs)?;
        }
        if exec.device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        } else {
            crate::memory::keep_freed_memory();
        }
        let mut state = TrainState::new(config.clone());
        if exec.precision == Precision::Fp16 {
            state.loss_scale = Some(LossScale::default());
        }
        let sgd = Sgd::new(
            &vs,
            SgdConfig {
                momentum: config.momentum,
                weight_decay: config.weight_decay,
                nesterov: config.nesterov,
            },
        );
        Ok(Trainer {
            device: vs.device(),
            exec,
            vs,
            model,
            sgd,
            state,
            run_dir: None,
            stop: Arc::new(AtomicBool::new(false)),
            progress: ProgressMode::Auto,
            on_batch: None,
            eval_form: None,
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

    /// Starts a fresh run in `dir` (created if needed) and writes `config.json` there.
    ///
    /// # Errors
    /// [`TrainError::RunExists`] if `dir` already holds a checkpoint (nothing is overwritten);
    /// [`TrainError::Io`] if it cannot be created or written.
    pub fn with_run_dir(mut self, dir: &Path) -> Result<Self, TrainError> {
        if dir.join(files::CHECKPOINT).exists() {
            return Err(TrainError::RunExists {
                path: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            action: "creating the run directory",
            path: dir.to_path_buf(),
            source,
        })?;
        write_atomic(
            &dir.join(files::CONFIG),
            self.state.config.to_json().as_bytes(),
        )?;
        self.run_dir = Some(dir.to_path_buf());
        Ok(self)
    }

    /// Continues the run in `dir` from its checkpoint: weights, momentum buffers, epoch and
    /// batch position, metrics. The trainer's own configuration is replaced by the saved one
    /// (except the device it was built on).
    ///
    /// # Errors
    /// As [`super::load_checkpoint`]; nothing in `dir` is changed on error.
    pub fn resume_from(mut self, dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(files::CHECKPOINT);
        let state = load_checkpoint(&path, &mut self.vs, &mut self.sgd)?;
        let sgd_config = SgdConfig {
            momentum: state.config.momentum,
            weight_decay: state.config.weight_decay,
            nesterov: state.config.nesterov,
        };
        if sgd_config != self.sgd.config() {
            let buffers = self.sgd.momentum_buffers();
            self.sgd = Sgd::new(&self.vs, sgd_config);
            self.sgd
                .set_momentum_buffers(buffers)
                .map_err(|problem| TrainError::Checkpoint { path, problem })?;
        }
        let loss_scale = self.state.loss_scale;
        self.state = state;
        if self.exec.precision == Precision::Fp16 && self.state.loss_scale.is_none() {
            self.state.loss_scale = loss_scale;
        }
        self.run_dir = Some(dir.to_path_buf());
        Ok(self)
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

    fn say(&self, line: &str) {
        if self.progress != ProgressMode::Silent {
            println!("{line}");
        }
    }

    /// Trains until every epoch is done or a stop is requested, evaluating on the test set
    /// and writing the run directory's files after every epoch.
    ///
    /// # Errors
    /// Data, libtorch or I/O errors, and [`TrainError::Diverged`] when the loss is not finite.
    /// The last checkpoint written stays valid.
    pub fn fit(&mut self, data: &Cifar10) -> Result<Outcome, TrainError> {
        if self.state.finished() {
            return Ok(Outcome::AlreadyComplete);
        }
        let cfg = self.state.config.clone();
        let train = DeviceDataset::new(&data.train_images, &data.train_labels, self.device)?;
        let test = DeviceDataset::new(&data.test_images, &data.test_labels, self.device)?;
        let batch_cfg = BatchConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            augment: cfg.augment,
            drop_last: false,
            limit: cfg.limit_train,
            seed: cfg.seed,
            ..BatchConfig::default()
        };
        let num_batches = batch_cfg.num_batches(train.len());
        if self.state.epoch == 0 && self.state.batch == 0 {
            self.say(&format!(
                "training {} on {:?}: {} epochs of {} images ({} batches of {}), test on {} images",
                cfg.model,
                self.device,
                cfg.epochs,
                batch_cfg.used_len(train.len()),
                num_batches,
                cfg.batch_size,
                cfg.limit_test.map_or(test.len(), |l| l.min(test.len())),
            ));
        } else {
            self.say(&format!(
                "resuming {} at epoch {}, batch {}/{num_batches}",
                cfg.model,
                self.state.epoch + 1,
                self.state.batch
            ));
        }
        let classes = data.classes.clone();
        while !self.state.finished() {
            if let Some(stopped) = self.train_epoch(&train, &batch_cfg, num_batches)? {
                return Ok(stopped);
            }
            self.finish_epoch(&test, &classes)?;
        }
        let summary = self.summary(&classes)?;
        if let Some(dir) = &self.run_dir {
            let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
            write_atomic(&dir.join(files::SUMMARY), json.as_bytes())?;
        }
        self.say(&format!(
            "done: best test accuracy {:.2}% (epoch {}), final {:.2}%, {:.0} s, {:.0} train images/s",
            summary.best_test_acc,
            summary.best_epoch,
            summary.final_test_acc,
            summary.total_seconds,
            summary.train_images_per_sec
        ));
        Ok(Outcome::Completed(summary))
    }

    fn progress_bar(&self, num_batches: usize) -> ProgressBar {
        let show = self.progress == ProgressMode::Auto && std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(
            Some(num_batches as u64),
            if show {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    /// Trains the batches of the current epoch from the saved position; `Some` when stopped.
    fn train_epoch(
        &mut self,
        train: &DeviceDataset,
        batch_cfg: &BatchConfig,
        num_batches: usize,
    ) -> Result<Option<Outcome>, TrainError> {
        let cfg = &self.state.config;
        let epoch = self.state.epoch;
        let lr = cfg
            .schedule
            .lr(cfg.lr, epoch, cfg.epochs, cfg.warmup_epochs);
        let smoothing = cfg.label_smoothing;
        let bar = self.progress_bar(num_batches);
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        bar.set_position(self.state.batch as u64);

        let started = Instant::now();
        let base = self.state.progress.clone();
        let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
        let mut correct = Tensor::zeros([], (Kind::Int64, self.device));
        let mut seen = 0u64;
        // On CUDA reading a value waits for the GPU: read the sums only now and then.
        let read_every = if self.device == Device::Cpu { 1 } else { 25 };
        let mut batches = train.batches(batch_cfg, epoch as u64, self.state.batch)?;
        let mut control = BatchControl::Continue;
        for batch in &mut batches {
            self.sgd.zero_grad();
            let images = self.exec.input(&batch.images)?;
            let (logits, loss) = self.exec.run(|| -> Result<_, TrainError> {
                let logits = self.model.forward_t(&images, true);
                let loss = logits.f_cross_entropy_loss::<Tensor>(
                    &batch.labels,
                    None,
                    Reduction::Mean,
                    -100,
                    smoothing,
                )?;
                Ok((logits, loss))
            })?;
            match &mut self.state.loss_scale {
                Some(scale) => {
                    (&loss * scale.scale).backward();
                    let finite = self.sgd.scale_grads(1.0 / scale.scale);
                    if finite {
                        self.sgd.step(lr);
                    }
                    scale.update(finite);
                }
                None => {
                    loss.backward();
                    self.sgd.step(lr);
                }
            }
            let n = batch.indices.len() as u64;
            tch::no_grad(|| {
                loss_sum += loss.detach().to_kind(Kind::Double) * n as f64;
                correct += logits
                    .argmax(-1, false)
                    .eq_tensor(&batch.labels)
                    .sum(Kind::Int64);
            });
            seen += n;
            self.state.steps += 1;
            self.state.batch = batch.index + 1;
            // Wall time of the batches (data waits included; on CUDA the reads below wait
            // for the GPU, so over an epoch this is the device time too).
            let train_seconds = started.elapsed().as_secs_f64();
            if batch.index % read_every == 0 || batch.index + 1 == num_batches {
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    return Err(TrainError::Diverged {
                        epoch: epoch + 1,
                        batch: batch.index,
                        loss: value,
                    });
                }
                let total_seen = base.seen + seen;
                let acc = 100.0 * (base.correct as f64 + correct.double_value(&[]))
                    / total_seen.max(1) as f64;
                let avg = (base.loss_sum + loss_sum.double_value(&[])) / total_seen.max(1) as f64;
                bar.set_message(format!(
                    "loss {avg:.4} acc {acc:.2}% {:.0} img/s",
                    seen as f64 / train_seconds.max(1e-9)
                ));
            }
            bar.set_position(self.state.batch as u64);
            if let Some(hook) = &mut self.on_batch {
                control = hook(epoch + 1, batch.index);
            }
            if self.stop.load(Ordering::SeqCst) && control == BatchControl::Continue {
                control = BatchControl::Stop;
            }
            if control != BatchControl::Continue {
                break;
            }
        }
        bar.finish_and_clear();
        if let Some(e) = batches.take_error() {
            return Err(e.into());
        }
        drop(batches);
        self.state.progress = EpochProgress {
            loss_sum: base.loss_sum + loss_sum.double_value(&[]),
            correct: base.correct + correct.int64_value(&[]) as u64,
            seen: base.seen + seen,
            seconds: base.seconds + started.elapsed().as_secs_f64(),
            train_seconds: base.train_seconds + started.elapsed().as_secs_f64(),
        };
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
                    Some(dir) => {
                        format!("checkpoint saved; continue with --resume {}", dir.display())
                    }
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

    /// Evaluates (when due), records the epoch's metrics, moves to the next epoch and writes
    /// the checkpoint and the run directory's files.
    fn finish_epoch(&mut self, test: &DeviceDataset, classes: &[String]) -> Result<(), TrainError> {
        let cfg = self.state.config.clone();
        let epoch = self.state.epoch + 1;
        let started = Instant::now();
        let due = epoch % cfg.eval_every == 0 || epoch == cfg.epochs;
        let eval = if due {
            let fast = match &self.eval_form {
                Some(form) if self.exec.precision == Precision::Fp32 => Some(form(&self.model)?),
                _ => None,
            };
            let model: &dyn ModuleT = match &fast {
                Some(m) => m.as_ref(),
                None => &self.model,
            };
            Some(evaluate(
                model,
                test,
                cfg.batch_size.max(256),
                cfg.limit_test,
                classes.len() as i64,
                &self.exec,
            )?)
        } else {
            None
        };
        let p = std::mem::take(&mut self.state.progress);
        let seen = p.seen.max(1) as f64;
        let metrics = EpochMetrics {
            epoch,
            train_loss: p.loss_sum / seen,
            train_acc: 100.0 * p.correct as f64 / seen,
            test_loss: eval.as_ref().map(|e| e.loss),
            test_acc: eval.as_ref().map(|e| e.acc),
            lr: cfg
                .schedule
                .lr(cfg.lr, epoch - 1, cfg.epochs, cfg.warmup_epochs),
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
        self.say(&epoch_line(&metrics, cfg.epochs));
        self.state.metrics.push(metrics);
        self.state.epoch += 1;
        self.state.batch = 0;
        self.save_checkpoint()?;
        if let Some(dir) = &self.run_dir {
            self.write_outputs(dir, improved)?;
        }
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<(), TrainError> {
        match &self.run_dir {
            Some(dir) => save_checkpoint(
                &dir.join(files::CHECKPOINT),
                &self.vs,
                &self.sgd,
                &self.state,
            ),
            None => Ok(()),
        }
    }

    /// metrics.jsonl, curves.svg, last.safetensors and (when improved) best.safetensors.
    /// All are derived from the checkpoint just written, so a crash between them loses nothing.
    fn write_outputs(&self, dir: &Path, improved: bool) -> Result<(), TrainError> {
        let mut jsonl = String::new();
        for m in &self.state.metrics {
            jsonl.push_str(&serde_json::to_string(m).unwrap_or_default());
            jsonl.push('\n');
        }
        write_atomic(&dir.join(files::METRICS), jsonl.as_bytes())?;
        let curves = dir.join(files::CURVES);
        write_atomic(
            &curves,
            curves_svg(&self.state.metrics, &curves)?.as_bytes(),
        )?;
        let steps = self.state.steps as i64;
        save_weights(&self.vs, &dir.join(files::LAST), steps)?;
        if improved {
            save_weights(&self.vs, &dir.join(files::BEST), steps)?;
        }
        Ok(())
    }

    fn summary(&self, classes: &[String]) -> Result<Summary, TrainError> {
        let missing = || TrainError::Checkpoint {
            path: self
                .run_dir
                .as_ref()
                .map_or_else(PathBuf::new, |d| d.join(files::CHECKPOINT)),
            problem: "the run has no test evaluation".into(),
        };
        let eval: &Evaluation = self.state.last_eval.as_ref().ok_or_else(missing)?;
        let (best, best_epoch) = self.state.best.ok_or_else(missing)?;
        let per_class_acc = eval
            .per_class_acc()
            .into_iter()
            .zip(classes)
            .map(|(acc, class)| ClassAccuracy {
                class: class.clone(),
                acc: acc.is_finite().then_some(acc),
            })
            .collect();
        let metrics = &self.state.metrics;
        let total_seconds: f64 = metrics.iter().map(|m| m.seconds).sum();
        let images: u64 = metrics.iter().map(|m| m.train_images).sum();
        let train_seconds: f64 = metrics
            .iter()
            .filter(|m| m.train_images_per_sec > 0.0)
            .map(|m| m.train_images as f64 / m.train_images_per_sec)
            .sum();
        Ok(Summary {
            model: self.state.config.model.clone(),
            device: format!("{:?}", self.device),
            epochs: metrics.len(),
            best_test_acc: best,
            best_epoch,
            final_test_acc: eval.acc,
            final_test_loss: eval.loss,
            per_class_acc,
            confusion_matrix: eval.confusion.clone(),
            classes: classes.to_vec(),
            total_seconds,
            train_images_per_sec: images as f64 / train_seconds.max(1e-9),
        })
    }
}

/// The one-line summary of an epoch.
pub fn epoch_line(m: &EpochMetrics, epochs: usize) -> String {
    let test = match (m.test_loss, m.test_acc) {
        (Some(l), Some(a)) => format!("test loss {l:.4} acc {a:6.2}%"),
        _ => "test -".to_string(),
    };
    format!(
        "epoch {:>3}/{epochs}  train loss {:.4} acc {:6.2}%  {test}  lr {:.5}  {:.1} s  {:.0} img/s",
        m.epoch, m.train_loss, m.train_acc, m.lr, m.seconds, m.train_images_per_sec
    )
}
