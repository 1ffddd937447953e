//! Checkpoints: weights, optimiser state, the callbacks' state and the trainer state in one
//! safetensors file, written atomically so that a kill at any instant leaves the last complete
//! checkpoint readable.
//!
//! Layout (format 2): named sections of tensors, `<section>/<name>` (see [`super::sections`]:
//! `model`, `optimizer`, one per callback such as `ema`), listed in the metadata key
//! `resnext.sections`; the metadata key `resnext.trainer_state` holds a [`TrainState`] as JSON
//! (position, epoch sums, loss scale, metrics, configuration).
//!
//! Later versions read earlier checkpoints: the state carries its [`CHECKPOINT_FORMAT`], an
//! older format is migrated step by step to the current one, fields this version does not know
//! are ignored (in the state and in its configuration) and fields it misses take their
//! defaults. Only a checkpoint of a newer format is refused. Format 1 (no list of sections, the
//! optimiser's tensors at the top) is read as format 2; `tests/fixtures/` holds a checkpoint of
//! format 1 that the tests resume.
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{nn, Tensor};

use super::sections::{read_sections, take_section, write_sections, Sections, MODEL, OPTIMIZER};
use super::{Callbacks, EpochMetrics, Evaluation, LossScale, Optimizer, TrainConfig, TrainError};
use crate::io::{read_safetensors, write_safetensors, IoError, TensorFile};
use crate::weights::{
    describe_incompatible, load_tensors, LoadOptions, TensorSource, WeightsError,
};

/// Version of the checkpoint layout this version writes; it reads this one and every earlier
/// one.
pub const CHECKPOINT_FORMAT: u32 = 2;
const STATE_KEY: &str = "resnext.trainer_state";
/// The longest header read (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Running sums of an epoch in progress (kept so that a run resumed mid-epoch reports the
/// same epoch metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Sum of per-batch mean loss times batch size.
    #[serde(with = "super::float_json::any")]
    pub loss_sum: f64,
    /// Correctly classified training images.
    pub correct: u64,
    /// Training images seen.
    pub seen: u64,
    /// Seconds spent on the epoch so far.
    #[serde(with = "super::float_json::any")]
    pub seconds: f64,
    /// Seconds spent in training batches so far.
    #[serde(with = "super::float_json::any")]
    pub train_seconds: f64,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    pub loss_scale: Option<LossScale>,
}

impl Default for TrainState {
    /// The state of a run of the default configuration about to start.
    fn default() -> Self {
        TrainState::new(TrainConfig::default())
    }
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

/// Writes a checkpoint of `vs` (section `model`), the optimiser's state (section
/// `optimizer`: an [`Sgd`](super::Sgd)'s momentum buffers, ...), every callback's state (its
/// own section, `ema` for the EMA of the weights) and `state` to `path`, atomically.
///
/// # Errors
/// [`TrainError::TensorFile`] naming the file; an existing checkpoint is then unchanged.
pub fn save_checkpoint(
    path: &Path,
    vs: &nn::VarStore,
    optimizer: &dyn Optimizer,
    callbacks: &Callbacks,
    state: &TrainState,
) -> Result<(), TrainError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let model = vars.into_iter().map(|(n, t)| (n, t.detach())).collect();
    let mut sections: Sections = vec![
        (MODEL.to_string(), model),
        (OPTIMIZER.to_string(), optimizer.state_tensors()),
    ];
    sections.extend(callbacks.state_sections());
    let (tensors, list) = write_sections(sections);
    let json = serde_json::to_string(state).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem: format!("cannot encode the trainer state: {e}"),
    })?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json), list]);
    write_safetensors(path, &tensors, Some(metadata))?;
    Ok(())
}

/// Reads only the trainer state of a checkpoint (for example to learn its configuration before
/// building the model): the file's header, not its tensors.
///
/// # Errors
/// [`TrainError::Checkpoint`] or [`TrainError::TensorFile`] naming the file and the problem.
pub fn read_checkpoint_state(path: &Path) -> Result<TrainState, TrainError> {
    Ok(parse_state(path, &read_metadata(path)?)?.0)
}

/// The `__metadata__` map of the safetensors file at `path`, read from its header alone.
fn read_metadata(path: &Path) -> Result<HashMap<String, String>, TrainError> {
    let io = |source: std::io::Error| {
        TrainError::TensorFile(IoError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })
    };
    let corrupt = |message: String| {
        TrainError::TensorFile(IoError::Format {
            path: path.to_path_buf(),
            message,
        })
    };
    let mut file = File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(io)?.len();
    if len > size.saturating_sub(8) || len > MAX_HEADER {
        return Err(corrupt(format!(
            "header length {len} does not fit a file of {size} bytes"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: Value =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("unreadable header: {e}")))?;
    let metadata = match header.get("__metadata__") {
        None | Some(Value::Null) => HashMap::new(),
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| corrupt(format!("unreadable metadata: {e}")))?,
    };
    Ok(metadata)
}

/// The trainer state in `metadata`, migrated and validated, and the format it was written in.
fn parse_state(
    path: &Path,
    metadata: &HashMap<String, String>,
) -> Result<(TrainState, u64), TrainError> {
    let bad = |problem: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    let json = metadata.get(STATE_KEY).ok_or_else(|| {
        bad(format!(
            "no `{STATE_KEY}` metadata: this is not a resnext training checkpoint (a weights file?)"
        ))
    })?;
    let value: Value =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable trainer state: {e}")))?;
    let written = value.get("format").and_then(Value::as_u64).unwrap_or(0);
    let value = migrate(value).map_err(bad)?;
    let mut state: TrainState =
        serde_json::from_value(value).map_err(|e| bad(format!("unreadable trainer state: {e}")))?;
    state.format = CHECKPOINT_FORMAT;
    state
        .config
        .validate()
        .map_err(|e| bad(format!("invalid configuration inside: {e}")))?;
    Ok((state, written))
}

/// Brings a trainer state of any format up to [`CHECKPOINT_FORMAT`]: each format's step is
/// applied in turn (format 1 is the first), and configuration fields this version does not
/// know are dropped (a later version may have added them).
fn migrate(mut state: Value) -> Result<Value, String> {
    let format = state
        .get("format")
        .and_then(Value::as_u64)
        .ok_or("the trainer state has no format number")?;
    if format > u64::from(CHECKPOINT_FORMAT) {
        return Err(format!(
            "checkpoint format {format} was written by a newer version of resnext; this one reads formats up to {CHECKPOINT_FORMAT}"
        ));
    }
    // Format steps go here: `if format < 3 { ...rename or fill fields... }`. From 1 to 2 the
    // state is unchanged: the tensors moved into sections (see `read_sections`).
    if let Some(config) = state.get_mut("config") {
        let known = serde_json::to_value(TrainConfig::default()).unwrap_or(Value::Null);
        retain_known(config, &known);
    }
    Ok(state)
}

/// Drops the fields of `value` (and of its nested objects) that `known` does not have.
fn retain_known(value: &mut Value, known: &Value) {
    if let (Value::Object(fields), Value::Object(known)) = (value, known) {
        fields.retain(|field, _| known.contains_key(field));
        for (field, v) in fields.iter_mut() {
            retain_known(v, &known[field]);
        }
    }
}

/// Loads a checkpoint into `vs`, `optimizer` (replaced by the optimiser that the
/// checkpoint's configuration names, holding the saved state) and `callbacks` (the configured
/// ones replaced by those the checkpoint's configuration asks for; every callback given its
/// section) and returns its trainer state. Everything is checked before anything is changed:
/// every variable of `vs` must be present with the same shape, the optimiser's state must fit
/// it ([`Optimizer::check_state`]), every callback must have its section and every section a
/// callback ([`TrainCallback::check_state`](super::TrainCallback::check_state)), and the file
/// must hold nothing else; otherwise `vs`, `optimizer` and `callbacks` are left as they were.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the file and the first problem (missing, extra or
/// differently shaped tensor, both shapes given); [`TrainError::TensorFile`] for a file that
/// cannot be read or is corrupt.
pub fn load_checkpoint(
    path: &Path,
    vs: &mut nn::VarStore,
    optimizer: &mut Box<dyn Optimizer>,
    callbacks: &mut Callbacks,
) -> Result<TrainState, TrainError> {
    CheckpointFile::read(path)?.load_into(vs, optimizer, callbacks)
}

/// A checkpoint file read whole, once: its trainer state (configuration included) and its
/// tensors, to build a trainer from and then load into it.
#[derive(Debug)]
pub(super) struct CheckpointFile {
    path: PathBuf,
    /// The trainer state, migrated to [`CHECKPOINT_FORMAT`] and validated.
    pub(super) state: TrainState,
    /// The format it was written in.
    written: u64,
    tensors: TensorFile,
    /// The file's length and modification time when it was read.
    stamp: Option<(u64, SystemTime)>,
}

impl CheckpointFile {
    /// Reads the checkpoint at `path`.
    ///
    /// # Errors
    /// As [`read_checkpoint_state`].
    pub(super) fn read(path: &Path) -> Result<Self, TrainError> {
        let stamp = file_stamp(path);
        let tensors = read_safetensors(path)?;
        let (state, written) = parse_state(path, &tensors.metadata)?;
        Ok(CheckpointFile {
            path: path.to_path_buf(),
            state,
            written,
            tensors,
            stamp,
        })
    }

    /// Whether the file at the path read is still the one read (same length and modification
    /// time), for example after waiting for the run directory's lock.
    pub(super) fn is_current(&self) -> bool {
        self.stamp.is_some() && file_stamp(&self.path) == self.stamp
    }

    fn bad(&self, problem: String) -> TrainError {
        TrainError::Checkpoint {
            path: self.path.clone(),
            problem,
        }
    }

    /// [`load_checkpoint`] from this file.
    pub(super) fn load_into(
        self,
        vs: &mut nn::VarStore,
        optimizer: &mut Box<dyn Optimizer>,
        callbacks: &mut Callbacks,
    ) -> Result<TrainState, TrainError> {
        // The optimiser and the callbacks the checkpoint was written with (from the saved
        // configuration), so that their state is read by what wrote it.
        let config = &self.state.config;
        let rebuilt = config.build_optimizer(vs).map_err(|e| {
            self.bad(format!(
                "its configuration names an optimiser that cannot be built: {e}"
            ))
        })?;
        let configured = Callbacks::for_config(config, vs, config.world_size)
            .map_err(|e| self.bad(format!("its callbacks' configuration: {e}")))?;
        let earlier = callbacks.reconfigured(configured);
        let loaded = self.load_checked(vs, rebuilt, callbacks);
        match loaded {
            Ok((state, rebuilt)) => {
                *optimizer = rebuilt;
                Ok(state)
            }
            Err(e) => {
                callbacks.reconfigured(earlier);
                Err(e)
            }
        }
    }

    /// Checks every section against `vs`, `optimizer` and `callbacks`, then loads them; the
    /// state and the loaded optimiser.
    fn load_checked(
        self,
        vs: &mut nn::VarStore,
        mut optimizer: Box<dyn Optimizer>,
        callbacks: &mut Callbacks,
    ) -> Result<(TrainState, Box<dyn Optimizer>), TrainError> {
        let CheckpointFile {
            path,
            state,
            written,
            tensors,
            ..
        } = self;
        let bad = |problem: String| TrainError::Checkpoint {
            path: path.clone(),
            problem,
        };
        let mut sections = read_sections(written, tensors).map_err(bad)?;
        let model = take_section(&mut sections, MODEL).unwrap_or_default();
        let optimizer_state = take_section(&mut sections, OPTIMIZER).unwrap_or_default();
        // Check the optimiser's and the callbacks' state first, so nothing is touched on
        // error; then the model's tensors are checked and copied by the crate's one loader.
        optimizer
            .check_state(&optimizer_state)
            .map_err(|e| bad(e.to_string()))?;
        callbacks.check_sections(&sections).map_err(bad)?;
        let model = TensorFile {
            tensors: model,
            metadata: HashMap::new(),
        };
        let trained_as = &state.config.model;
        load_tensors(
            vs,
            TensorSource::from_file(&path, model),
            LoadOptions { strict: true },
        )
        .map_err(|e| match e {
            WeightsError::Incompatible {
                missing,
                mismatched,
                wrong_kind,
                unexpected,
                ..
            } => bad(format!(
                "{} (a checkpoint of another model? this one was trained as `{trained_as}`)",
                describe_incompatible(&missing, &mismatched, &wrong_kind, &unexpected),
            )),
            WeightsError::Io(e) => TrainError::TensorFile(e),
            other => bad(other.to_string()),
        })?;
        optimizer
            .load_state(optimizer_state)
            .map_err(|e| bad(e.to_string()))?;
        callbacks.load_sections(sections).map_err(bad)?;
        Ok((state, optimizer))
    }
}

/// The length and modification time of the file at `path`, when it has them.
fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}
