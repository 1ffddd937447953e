//! Building a trainer and reopening a run: [`Trainer::resnext`], [`Trainer::resume`] and its
//! data-parallel form, [`Trainer::with_run_dir`] and [`Trainer::resume_from`]. A resume reads
//! its checkpoint file once: the configuration to build the model with and the tensors to load
//! come from the same read.
use std::path::Path;

use tch::nn::{self, ModuleT};

use super::checkpoint::CheckpointFile;
use super::control::all_ok;
use super::outputs::files;
use super::run_dir::RunDir;
use super::{
    tune_process_for_training, Execution, LossScale, Precision, TrainConfig, TrainError, Trainer,
};
use crate::data::{Augmentation, BatchConfig, BatchRequest, Dataset, Shard};
use crate::distributed::ProcessGroup;
use crate::inference::InferenceModel;
use crate::layout::{vars_to_channels_last, vars_to_contiguous};
use crate::resnext::{whiten_stem, ResNeXt, Stem, WHITENING_IMAGES};
use crate::weights::{PretrainedReport, WeightsFile, WeightsMetadata};

impl Trainer<ResNeXt> {
    /// A trainer for the ResNeXt `config` describes ([`TrainConfig::model_config`]), built on
    /// the configured device with `tch::manual_seed(config.seed)`, so the same seed gives the
    /// same initial weights. With [`TrainConfig::pretrained`], the stem comes from the file
    /// (and is recorded in the run's configuration) and its weights are loaded with
    /// [`load_pretrained`](crate::weights::load_pretrained): a classifier with another number of classes keeps its seeded
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
        // The starting weights, opened once: their architecture, then their tensors.
        let pretrained = match config.pretrained.as_deref().filter(|_| read_pretrained) {
            Some(path) => Some(WeightsFile::open(path)?),
            None => None,
        };
        if let Some(file) = &pretrained {
            // The file fixes the stem: a torchvision ImageNet checkpoint means the ImageNet stem.
            config.stem = Some(file.architecture()?.0);
        }
        let model_config = config.model_config()?;
        tch::manual_seed(config.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let model = ResNeXt::try_new(&vs.root(), &model_config)?;
        let report = match pretrained {
            Some(file) => Some(file.load_pretrained(&mut vs, &model_config)?),
            None => None,
        };
        let standard = model_config.nonstandard_part().is_none();
        let whitening = model_config.stem == Stem::Whitening;
        let metadata = WeightsMetadata {
            model: model_config,
            classes: Vec::new(),
            image_size: config.image_size,
            normalization: config.normalization,
        };
        let mut trainer = Trainer::from_validated(config, vs, model)?;
        if standard {
            // The inference form covers torchvision's layout; other networks evaluate
            // themselves in eval mode.
            trainer = trainer.with_eval_form(Box::new(|net: &ResNeXt| {
                Ok(Box::new(InferenceModel::new(net)?) as Box<dyn ModuleT>)
            }));
        }
        if whitening {
            trainer = trainer.with_data_init(Box::new(whiten_from_training_set));
        }
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
        if !path.is_file() {
            let mut config = RunDir::saved_config(run_dir)?;
            if let Some(d) = device {
                config.device = d.to_string();
            }
            return Self::restart(run_dir, config, group);
        }
        let checkpoint = CheckpointFile::read(&path)?;
        let mut config = checkpoint.state.config.clone();
        if let Some(d) = device {
            config.device = d.to_string();
        }
        let trainer = Trainer::build_resnext(config, false)?;
        let trainer = match group {
            Some(group) => trainer.data_parallel(group)?,
            None => trainer,
        };
        trainer.resume_with_file(run_dir, Some(checkpoint))
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

impl<M: ModuleT> Trainer<M> {
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
            true => RunDir::create(dir, &self.state.config).map(Some),
            false => Ok(None),
        };
        if let Some(held) = all_ok(self.dist.as_ref(), opened)? {
            self.run_dir = Some(held);
        }
        Ok(self)
    }

    /// Continues the run in `dir` from its checkpoint: weights, optimiser state, the
    /// callbacks' sections (the EMA's), epoch and batch position, metrics. The trainer's own configuration is replaced by the saved one,
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
    pub fn resume_from(self, dir: &Path) -> Result<Self, TrainError> {
        self.resume_with_file(dir, None)
    }

    /// [`Trainer::resume_from`] with the checkpoint already read, when `read` (and still the
    /// file in `dir` once `dir` is held).
    fn resume_with_file(
        mut self,
        dir: &Path,
        read: Option<CheckpointFile>,
    ) -> Result<Self, TrainError> {
        let loaded = self.load_run(dir, read);
        let held = all_ok(self.dist.as_ref(), loaded)?;
        if let Some(dp) = &self.dist {
            dp.check_position(&self.state)?;
        }
        if let Some(held) = held {
            self.run_dir = Some(held);
        }
        Ok(self)
    }

    /// Loads the checkpoint of `dir` (holding `dir` on rank 0), from `read` when it is still
    /// the file there; the held directory, on rank 0.
    fn load_run(
        &mut self,
        dir: &Path,
        read: Option<CheckpointFile>,
    ) -> Result<Option<RunDir>, TrainError> {
        let held = match self.is_main() {
            true => Some(RunDir::hold(dir)?),
            false => None,
        };
        let path = dir.join(files::CHECKPOINT);
        let checkpoint = match read {
            Some(file) if file.is_current() => file,
            _ => CheckpointFile::read(&path)?,
        };
        // The trainer is dropped on error: what loading changed in it does not matter.
        let state = checkpoint.load_into(&mut self.vs, &mut self.optimizer, &mut self.callbacks)?;
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
        Ok(held)
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
}

/// The whitening stem of a fresh run set from the first [`WHITENING_IMAGES`] training images
/// (airbench's), as training normalises them, without augmentation: the same images whatever
/// the seed, the shuffling or the process of a data-parallel run.
fn whiten_from_training_set(
    net: &ResNeXt,
    train: &dyn Dataset,
    batching: &BatchConfig,
) -> Result<(), TrainError> {
    let count = train
        .len()
        .min(batching.limit.unwrap_or(usize::MAX))
        .min(WHITENING_IMAGES);
    let indices: Vec<usize> = (0..count).collect();
    let plain = BatchConfig {
        augment: false,
        augmentation: Augmentation::default(),
        shard: Shard::default(),
        ..batching.clone()
    };
    let request = BatchRequest {
        config: &plain,
        epoch: 0,
        index: 0,
        indices: &indices,
    };
    let (images, _) = train.make_batch(&request)?;
    let device = net.stem_device();
    whiten_stem(net, &images.f_to_device(device)?)?;
    Ok(())
}
