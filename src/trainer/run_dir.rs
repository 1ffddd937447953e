//! The run directory a trainer holds: its lock, its `config.json`, the path of its
//! checkpoint, and the repair of the files the checkpoint determines (see
//! [`files`](super::files)).
use std::path::{Path, PathBuf};

use tch::nn;

use super::outputs::{self, files};
use super::{Summary, TrainConfig, TrainError, TrainState};
use crate::io::{lock_dir, remove_partial_files, write_atomic, DirLock};
use crate::weights::WeightsMetadata;

/// A run directory, held (locked) for as long as this value lives.
#[derive(Debug)]
pub(super) struct RunDir {
    dir: PathBuf,
    _lock: DirLock,
}

impl RunDir {
    /// Creates and locks `dir` for a fresh run and writes `config.json` there.
    ///
    /// # Errors
    /// [`TrainError::RunExists`] if `dir` already holds a checkpoint (nothing is overwritten);
    /// [`TrainError::Io`] / [`TrainError::TensorFile`] when it cannot be created, locked or
    /// written.
    pub(super) fn create(dir: &Path, config: &TrainConfig) -> Result<Self, TrainError> {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            action: "creating the run directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let held = RunDir::hold(dir)?;
        if held.checkpoint().exists() {
            return Err(TrainError::RunExists {
                path: dir.to_path_buf(),
            });
        }
        write_atomic(&dir.join(files::CONFIG), config.to_json().as_bytes())?;
        Ok(held)
    }

    /// Takes `dir`'s lock and removes the leftovers of interrupted writes there.
    ///
    /// # Errors
    /// [`IoError::Locked`](crate::io::IoError::Locked) (as [`TrainError::TensorFile`]) naming
    /// the process that holds `dir`; I/O errors.
    pub(super) fn hold(dir: &Path) -> Result<Self, TrainError> {
        let lock = lock_dir(dir)?;
        remove_partial_files(dir)?;
        Ok(RunDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub(super) fn path(&self) -> &Path {
        &self.dir
    }

    /// The checkpoint's path in it.
    pub(super) fn checkpoint(&self) -> PathBuf {
        self.dir.join(files::CHECKPOINT)
    }

    /// The configuration in the `config.json` of `run_dir`, a run stopped before its first
    /// checkpoint; an error naming the checkpoint when there is neither (not a run directory).
    pub(super) fn saved_config(run_dir: &Path) -> Result<TrainConfig, TrainError> {
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

    /// Writes the files of a completed epoch (see [`outputs::write_epoch_outputs`]).
    pub(super) fn write_epoch(
        &self,
        state: &TrainState,
        vs: &nn::VarStore,
        improved: bool,
        metadata: Option<&WeightsMetadata>,
    ) -> Result<(), TrainError> {
        outputs::write_epoch_outputs(&self.dir, state, vs, improved, metadata)
    }

    /// Writes `summary.json`.
    pub(super) fn write_summary(&self, summary: &Summary) -> Result<(), TrainError> {
        outputs::write_summary(&self.dir, summary)
    }

    /// Rewrites what the checkpoint (`state`, and the weights) determines: `metrics.jsonl`
    /// and `curves.svg` always; when the checkpoint is at an epoch boundary, whose weights
    /// they hold, `last.safetensors` and, when the last epoch is the best, `best.safetensors`
    /// (`write_epoch(best_is_last)` writes them with the metric files, as after an epoch);
    /// `summary.json` (`summary` gives it) when the run is finished. Files of earlier epochs
    /// were complete before a later checkpoint was written, so after this the directory is that
    /// of an uninterrupted run.
    pub(super) fn repair(
        &self,
        state: &TrainState,
        write_epoch: impl FnOnce(bool) -> Result<(), TrainError>,
        summary: impl FnOnce() -> Result<Summary, TrainError>,
    ) -> Result<(), TrainError> {
        if state.epoch == 0 {
            return Ok(());
        }
        if state.batch == 0 {
            let best_is_last = state.best.is_some_and(|(_, e)| e == state.epoch);
            write_epoch(best_is_last)?;
        } else {
            outputs::write_metric_files(&self.dir, state)?;
        }
        if state.finished() {
            self.write_summary(&summary()?)?;
        }
        Ok(())
    }
}
