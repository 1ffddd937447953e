//! Checkpoints: weights, momentum buffers and trainer state in one safetensors file, written
//! atomically so that a kill at any instant leaves the last complete checkpoint readable.
//!
//! Layout: tensors `model/<variable>` (every variable of the var store, BN statistics
//! included) and `momentum/<parameter>`; the metadata key `resnext.trainer_state` holds a
//! [`TrainState`] as JSON.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{EpochMetrics, Evaluation, LossScale, Sgd, TrainConfig, TrainError};
use crate::io::{read_safetensors, write_safetensors};

/// Version of the checkpoint layout; a checkpoint of another version is refused.
pub const CHECKPOINT_FORMAT: u32 = 1;
const STATE_KEY: &str = "resnext.trainer_state";
const MODEL_PREFIX: &str = "model/";
const MOMENTUM_PREFIX: &str = "momentum/";

/// Running sums of an epoch in progress (kept so that a run resumed mid-epoch reports the
/// same epoch metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Sum of per-batch mean loss times batch size.
    pub loss_sum: f64,
    /// Correctly classified training images.
    pub correct: u64,
    /// Training images seen.
    pub seen: u64,
    /// Seconds spent on the epoch so far.
    pub seconds: f64,
    /// Seconds spent in training batches so far.
    pub train_seconds: f64,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// The run's configuration.
    pub config: TrainConfig,
    /// 0-based epoch in progress; equal to `config.epochs` once training is complete.
    pub epoch: usize,
    /// Next batch of `epoch` (0 at an epoch boundary). Shuffling and augmentation are drawn
    /// from `(seed, epoch, batch)`, so this is the whole random state of the data.
    pub batch: usize,
    /// Sums of the epoch in progress.
    pub progress: EpochProgress,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Best test accuracy so far (percent) and its 1-based epoch.
    pub best: Option<(f64, usize)>,
    /// Metrics of every completed epoch.
    pub metrics: Vec<EpochMetrics>,
    /// The latest test evaluation.
    pub last_eval: Option<Evaluation>,
    /// fp16 loss scaling state (fp16 runs only).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

impl TrainState {
    /// The state of a run about to start.
    pub fn new(config: TrainConfig) -> Self {
        TrainState {
            format: CHECKPOINT_FORMAT,
            config,
            epoch: 0,
            batch: 0,
            progress: EpochProgress::default(),
            steps: 0,
            best: None,
            metrics: Vec::new(),
            last_eval: None,
            loss_scale: None,
        }
    }

    /// Whether every epoch is done.
    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }
}

/// Writes a checkpoint of `vs`, the optimiser's momentum buffers and `state` to `path`,
/// atomically.
///
/// # Errors
/// [`TrainError::TensorFile`] naming the file; an existing checkpoint is then unchanged.
pub fn save_checkpoint(
    path: &Path,
    vs: &nn::VarStore,
    sgd: &Sgd,
    state: &TrainState,
) -> Result<(), TrainError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut tensors: Vec<(String, Tensor)> = vars
        .into_iter()
        .map(|(n, t)| (format!("{MODEL_PREFIX}{n}"), t.detach()))
        .collect();
    tensors.extend(
        sgd.momentum_buffers()
            .into_iter()
            .map(|(n, t)| (format!("{MOMENTUM_PREFIX}{n}"), t)),
    );
    let json = serde_json::to_string(state).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: format!("cannot encode the trainer state: {e}"),
    })?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json)]);
    write_safetensors(path, &tensors, Some(metadata))?;
    Ok(())
}

/// Reads only the trainer state of a checkpoint (for example to learn its configuration before
/// building the model).
///
/// # Errors
/// [`TrainError::Checkpoint`] or [`TrainError::TensorFile`] naming the file and the problem.
pub fn read_checkpoint_state(path: &Path) -> Result<TrainState, TrainError> {
    let file = read_safetensors(path)?;
    parse_state(path, &file.metadata)
}

fn parse_state(path: &Path, metadata: &HashMap<String, String>) -> Result<TrainState, TrainError> {
    let bad = |problem: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    let json = metadata.get(STATE_KEY).ok_or_else(|| {
        bad(format!(
            "no `{STATE_KEY}` metadata: this is not a resnext training checkpoint (a weights file?)"
        ))
    })?;
    let state: TrainState =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable trainer state: {e}")))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(bad(format!(
            "checkpoint format {} but this version reads format {CHECKPOINT_FORMAT}",
            state.format
        )));
    }
    state
        .config
        .validate()
        .map_err(|e| bad(format!("invalid configuration inside: {e}")))?;
    Ok(state)
}

/// Loads a checkpoint into `vs` and `sgd` and returns its trainer state. Everything is checked
/// before anything is changed: every variable of `vs` must be present with the same shape, and
/// the file must hold nothing else; otherwise `vs` and `sgd` are left as they were.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the file and the first problem (missing, extra or
/// differently shaped tensor, both shapes given); [`TrainError::TensorFile`] for a file that
/// cannot be read or is corrupt.
pub fn load_checkpoint(
    path: &Path,
    vs: &mut nn::VarStore,
    sgd: &mut Sgd,
) -> Result<TrainState, TrainError> {
    let file = read_safetensors(path)?;
    let state = parse_state(path, &file.metadata)?;
    let bad = |problem: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    let mut model: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut momentum = Vec::new();
    for (name, t) in file.tensors {
        if let Some(n) = name.strip_prefix(MODEL_PREFIX) {
            model.insert(n.to_string(), t);
        } else if let Some(n) = name.strip_prefix(MOMENTUM_PREFIX) {
            momentum.push((n.to_string(), t));
        } else {
            return Err(bad(format!("unexpected tensor `{name}`")));
        }
    }
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (name, var) in &vars {
        let Some(t) = model.get(name) else {
            return Err(bad(format!(
                "tensor `{name}` of the model is missing (a checkpoint of another model? this one was trained as `{}`)",
                state.config.model
            )));
        };
        if t.size() != var.size() {
            return Err(bad(format!(
                "tensor `{name}` has shape {:?} in the checkpoint but {:?} in the model (a checkpoint of another model? this one was trained as `{}`)",
                t.size(),
                var.size(),
                state.config.model
            )));
        }
    }
    if let Some(extra) = model.keys().find(|n| !vars.contains_key(*n)) {
        return Err(bad(format!(
            "tensor `{extra}` is not a variable of the model (a checkpoint of another model? this one was trained as `{}`)",
            state.config.model
        )));
    }
    // Check the momentum buffers against a scratch optimiser first, so `sgd` is untouched
    // on error.
    let mut check = Sgd::new(vs, sgd.config());
    check
        .set_momentum_buffers(
            momentum
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        )
        .map_err(bad)?;
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, mut var) in vars {
            if let Some(t) = model.get(&name) {
                var.f_copy_(t)?;
            }
        }
        Ok(())
    })?;
    sgd.set_momentum_buffers(momentum).map_err(bad)?;
    Ok(state)
}
