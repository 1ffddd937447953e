//! The loop over epochs and batches: [`Trainer::fit`], one epoch's batches with their stop
//! and divergence checks, and the end of an epoch (evaluation, metrics, checkpoint, files).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tch::nn::ModuleT;

use super::checkpoint::save_checkpoint;
use super::control::BatchControl;
use super::data_parallel::DataParallel;
use super::outputs;
use super::progress::bar_message;
use super::run_dir::RunDir;
use super::{
    Callbacks, EmaWeights, EpochAccumulator, EpochContext, EpochMetrics, Outcome, Precision,
    RunningMetrics, StepBatch, StepContext, Summary, TrainError, Trainer,
};
use crate::data::{epoch_batches, BatchConfig, DataSplits, Dataset};

impl<M: ModuleT> Trainer<M> {
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
        self.control.clear();
        self.check_classes(data)?;
        self.describe_weights(data.train.classes());
        if let Some(dir) = &self.run_dir {
            let write_epoch = |best_is_last| self.write_epoch_files(dir, best_is_last);
            let summary = || self.summary(data.train.classes());
            dir.repair(&self.state, write_epoch, summary)?;
        }
        if self.state.finished() {
            return Ok(Outcome::AlreadyComplete);
        }
        let batch_cfg = self.batch_config();
        if self.state.steps == 0 {
            self.init_from_data(data, &batch_cfg)?;
        }
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

    /// A fresh run's [`Trainer::with_data_init`]: the model set from the training data, then
    /// the configured callbacks built again over the weights it set.
    fn init_from_data(
        &mut self,
        data: &DataSplits,
        batch_cfg: &BatchConfig,
    ) -> Result<(), TrainError> {
        let Some(init) = self.data_init.as_ref() else {
            return Ok(());
        };
        init(&self.model, data.train.as_ref(), batch_cfg)?;
        let fresh = Callbacks::for_config(&self.state.config, &self.vs, self.world_size())?;
        self.callbacks.reconfigured(fresh);
        Ok(())
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
        let summary = self.summary(classes)?;
        if let Some(dir) = &self.run_dir {
            dir.write_summary(&summary)?;
        }
        Ok(summary)
    }

    /// The summary of the finished run.
    fn summary(&self, classes: &[String]) -> Result<Summary, TrainError> {
        let checkpoint = self.checkpoint_path();
        outputs::summary(&self.state, classes, self.device, &checkpoint)
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
            // The network's name: the preset's, with the sizes a configuration overrides.
            let model = cfg
                .model_config()
                .map_or_else(|_| cfg.model.clone(), |m| m.name);
            self.say(&format!(
                "training {model} on {:?}{processes}: {} epochs of {} images ({} batches of {}{processes}), test on {} images",
                self.device,
                cfg.epochs,
                batch_cfg.used_len(data.train.len()),
                num_batches,
                cfg.batch_size,
                cfg.limit_test.map_or(test, |l| l.min(test)),
            ));
            if let Some(warning) = super::recipe_warning(cfg) {
                self.say(&warning);
            }
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
        // A resumed run computes as slowly as the fresh one did: it is told too.
        if let Some(warning) = super::cpu_bf16_warning(self.step.execution()) {
            self.say(&warning);
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
            let lr = self
                .state
                .config
                .lr_at_step(epoch, batch.index, num_batches);
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
            let step = StepContext {
                vars: &self.vs,
                epoch,
                batch: batch.index,
                skipped: out.skipped,
                lr,
                step: epoch * num_batches + batch.index + 1,
                total_steps: epochs * num_batches,
            };
            self.callbacks.after_step(&step)?;
            sums.add(&out);
            self.state.steps += 1;
            self.state.batch = batch.index + 1;
            let scale_exhausted = self.state.loss_scale.is_some_and(|s| s.scale <= 1.0);
            let overflow_at_floor = out.skipped && scale_exhausted;
            let asked = self.control.asked_after(epoch + 1, batch.index);
            if sums.is_read_due(batch.index, num_batches) || overflow_at_floor {
                let running = sums.read(&out)?;
                control = self.read_point(&running, overflow_at_floor, asked, batch.index)?;
                bar.set_message(bar_message(&running));
            } else {
                control = self.control.defer(asked, self.dist.as_ref());
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
        let (non_finite, agreed) =
            self.control
                .decide(running.non_finite, asked, self.dist.as_ref())?;
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
                    Some(dir) => format!("checkpoint saved in {}", dir.path().display()),
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
        let ema_eval = match (due, self.callbacks.ema().is_some()) {
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
            // The rate of the epoch's first update (per-step schedules move within it).
            lr: self.state.config.lr_at_step(epoch - 1, 0, num_batches),
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
        let epoch_done = EpochContext {
            vars: &self.vs,
            metrics: &metrics,
        };
        self.callbacks.after_epoch(&epoch_done)?;
        self.state.metrics.push(metrics);
        self.state.epoch += 1;
        self.state.batch = 0;
        self.save_checkpoint()?;
        if let Some(dir) = &self.run_dir {
            self.write_epoch_files(dir, improved)?;
        }
        Ok(None)
    }

    /// Writes the files of the epoch just completed into `dir`, `best.safetensors` too when it
    /// `improved`: `last` and `best` hold the weights [`TrainConfig::model_ema_weights`] chooses
    /// (the trained ones, or the EMA's averages).
    ///
    /// [`TrainConfig::model_ema_weights`]: super::TrainConfig::model_ema_weights
    fn write_epoch_files(&self, dir: &RunDir, improved: bool) -> Result<(), TrainError> {
        let meta = self.weights_metadata.as_ref();
        let write = || dir.write_epoch(&self.state, &self.vs, improved, meta);
        match (self.state.config.model_ema_weights, self.callbacks.ema()) {
            (EmaWeights::Ema, Some(ema)) => self.with_ema_weights(ema, write),
            _ => write(),
        }
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.run_dir
            .as_ref()
            .map_or_else(PathBuf::new, RunDir::checkpoint)
    }

    fn save_checkpoint(&self) -> Result<(), TrainError> {
        match &self.run_dir {
            Some(dir) => save_checkpoint(
                &dir.checkpoint(),
                &self.vs,
                self.optimizer.as_ref(),
                &self.callbacks,
                &self.state,
            ),
            None => Ok(()),
        }
    }
}
