//! An exponential moving average (EMA) of a model's weights, as torchvision's reference
//! scripts keep it (`references/classification/utils.py`, `ExponentialMovingAverage`: an
//! `AveragedModel` with `avg = decay * avg + (1 - decay) * param` and `use_buffers=True`, so
//! the BatchNorm statistics are averaged too), with their schedule ([`EmaSchedule`]: an update
//! every `model_ema_steps` steps, the average reset to the model during warm-up) and their
//! decay adjustment ([`ema_decay_for`]). In a run it is a trainer callback
//! ([`EmaCallback`], the checkpoint section `ema`); [`EmaWeights`] says whether `best` and
//! `last` hold its averages or the trained weights.
use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use tch::{nn, Tensor};
use thiserror::Error;

use super::{StepContext, TrainCallback, TrainConfig, TrainError};

/// The name of the update count among the state tensors (torchvision's).
const N_AVERAGED: &str = "n_averaged";
/// The prefix of the averages among the state tensors (torchvision's `AveragedModel.module`).
const MODULE_PREFIX: &str = "module.";

/// Which weights a run with an EMA saves as `best.safetensors` and `last.safetensors`
/// ([`TrainConfig::model_ema_weights`]).
///
/// ```
/// use resnext::trainer::EmaWeights;
/// assert_eq!("ema".parse::<EmaWeights>(), Ok(EmaWeights::Ema));
/// assert_eq!(EmaWeights::default(), EmaWeights::Raw);
/// assert!("average".parse::<EmaWeights>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmaWeights {
    /// The trained weights.
    #[default]
    Raw,
    /// The EMA's averages of the weights and buffers.
    Ema,
}

impl EmaWeights {
    /// Every choice's name, as [`FromStr`] takes them.
    pub const NAMES: [&'static str; 2] = ["raw", "ema"];
}

impl FromStr for EmaWeights {
    type Err = String;

    /// `raw` or `ema`; otherwise the accepted names, as an error.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(EmaWeights::Raw),
            "ema" => Ok(EmaWeights::Ema),
            _ => Err(format!("one of {}", EmaWeights::NAMES.join(", "))),
        }
    }
}

/// What can go wrong with an [`Ema`].
#[derive(Debug, Error)]
pub enum EmaError {
    /// A decay outside the accepted range.
    #[error("invalid EMA decay `{decay}`: expected {expected}")]
    InvalidDecay {
        /// The decay given.
        decay: f64,
        /// The accepted range.
        expected: &'static str,
    },
    /// A schedule value out of range (`every`, `epochs`, `batch_size`, `world_size`).
    #[error("invalid EMA {field} `{value}`: expected at least 1")]
    InvalidSchedule {
        /// The value concerned.
        field: &'static str,
        /// Its value.
        value: usize,
    },
    /// A variable (or saved average) without an average, an average without its variable
    /// (or saved value), or a state tensor of another name.
    #[error("{what} `{name}` {problem}")]
    Mismatch {
        /// `variable`, `average` or `state tensor`.
        what: &'static str,
        /// Its name.
        name: String,
        /// What is wrong (`of the model has no average`, ...).
        problem: String,
    },
    /// An average, a variable or a state tensor with another shape than its counterpart.
    #[error("`{name}` has shape {shape:?}, expected {expected:?}")]
    Shape {
        /// Its name.
        name: String,
        /// Its shape.
        shape: Vec<i64>,
        /// The shape expected.
        expected: Vec<i64>,
    },
    /// libtorch reported an error.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}

/// The decay torchvision's `train.py` gives the EMA for a run: its `--model-ema-decay`
/// (`decay`, in `(0, 1)`) adjusted so that the average spans about the same share of training
/// whatever the batch size, the update interval and the length of the run:
/// `adjust = world_size * batch_size * every / epochs`, `alpha = min(1, (1 - decay) * adjust)`,
/// and the decay used is `1 - alpha` (0, a plain copy of the model, when `alpha` reaches 1).
///
/// ```
/// use resnext::trainer::ema_decay_for;
/// // torchvision's defaults: decay 0.99998, 32 images per GPU on 8 GPUs, every 32 steps, 600 epochs.
/// let d = ema_decay_for(0.99998, 8, 32, 32, 600)?;
/// assert!((d - (1.0 - 2e-5 * 8.0 * 32.0 * 32.0 / 600.0)).abs() < 1e-12);
/// assert_eq!(ema_decay_for(0.5, 1, 128, 32, 10)?, 0.0);
/// assert!(ema_decay_for(1.0, 1, 128, 32, 10).is_err());
/// # Ok::<(), resnext::trainer::EmaError>(())
/// ```
///
/// # Errors
/// [`EmaError::InvalidDecay`] for a `decay` outside `(0, 1)`, [`EmaError::InvalidSchedule`]
/// for a count of 0.
pub fn ema_decay_for(
    decay: f64,
    world_size: usize,
    batch_size: usize,
    every: usize,
    epochs: usize,
) -> Result<f64, EmaError> {
    if !(decay > 0.0 && decay < 1.0) {
        return Err(EmaError::InvalidDecay {
            decay,
            expected: "a number in (0, 1)",
        });
    }
    let counts = [
        ("world_size", world_size),
        ("batch_size", batch_size),
        ("every", every),
        ("epochs", epochs),
    ];
    for (field, value) in counts {
        if value == 0 {
            return Err(EmaError::InvalidSchedule { field, value });
        }
    }
    // Python's `world_size * batch_size * steps / epochs`: an exact integer product, then one
    // correctly rounded division.
    let product = (world_size as u128) * (batch_size as u128) * (every as u128);
    let adjust = product as f64 / epochs as f64;
    let alpha = ((1.0 - decay) * adjust).min(1.0);
    Ok(1.0 - alpha)
}

/// When the EMA is updated, as torchvision's `train.py`: after the optimiser step of every
/// batch whose index in its epoch is a multiple of `every` (`i % model_ema_steps == 0`, the
/// first batch included), and during the first `warmup_epochs` epochs the average is reset
/// right after (`n_averaged.fill_(0)`), so that it follows the model until warm-up ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmaSchedule {
    /// Update every this many batches (`--model-ema-steps`, torchvision's default 32).
    pub every: usize,
    /// Epochs of learning-rate warm-up (`--lr-warmup-epochs`).
    pub warmup_epochs: usize,
}

impl EmaSchedule {
    /// Runs the schedule after the optimiser step of batch `batch` (0-based in its epoch) of
    /// the 0-based `epoch`; whether the EMA was updated.
    ///
    /// # Errors
    /// [`EmaError::InvalidSchedule`] for `every` 0; the errors of [`Ema::update`].
    pub fn after_step(
        &self,
        ema: &mut Ema,
        vs: &nn::VarStore,
        epoch: usize,
        batch: usize,
    ) -> Result<bool, EmaError> {
        if self.every == 0 {
            return Err(EmaError::InvalidSchedule {
                field: "every",
                value: 0,
            });
        }
        if !batch.is_multiple_of(self.every) {
            return Ok(false);
        }
        ema.update(vs)?;
        if epoch < self.warmup_epochs {
            ema.reset();
        }
        Ok(true)
    }
}

/// The exponential moving average of every variable of a [`nn::VarStore`] (parameters and
/// buffers: BatchNorm's running statistics too), as torchvision's `ExponentialMovingAverage`.
///
/// The first update after creation or [`reset`](Self::reset) copies the model; every later
/// one computes `avg = decay * avg + (1 - decay) * var` (for an integer variable, such as a
/// `num_batches_tracked`, in float and truncated back, as PyTorch's `copy_` does).
///
/// To evaluate with the averaged weights, build a second model and [`copy_into`](Self::copy_into)
/// its var store:
///
/// ```
/// use resnext::trainer::Ema;
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::{nn, Device};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let mut ema = Ema::new(&vs, 0.999)?;
/// ema.update(&vs)?; // ... after optimiser steps
/// let eval_vs = nn::VarStore::new(Device::Cpu);
/// let eval_net = ResNeXt::new(&eval_vs.root(), &ResNeXtConfig::tiny(10));
/// ema.copy_into(&eval_vs)?; // evaluate `eval_net`
/// assert_eq!(ema.n_averaged(), 1);
/// # Ok::<(), resnext::trainer::EmaError>(())
/// ```
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    /// The average of every variable, sorted by name.
    averages: Vec<(String, Tensor)>,
    /// Updates since creation or the last reset.
    n_averaged: i64,
}

/// The variables of `vs` by name.
fn variables(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
}

impl Ema {
    /// An average of the variables of `vs` with `decay`, in `[0, 1)` (0, a copy of the model,
    /// is what [`ema_decay_for`] gives for a short run with a low decay). It starts as a copy
    /// of the variables, with no update counted.
    ///
    /// # Errors
    /// [`EmaError::InvalidDecay`]; [`EmaError::Torch`] when copying fails.
    pub fn new(vs: &nn::VarStore, decay: f64) -> Result<Self, EmaError> {
        if !(0.0..1.0).contains(&decay) {
            return Err(EmaError::InvalidDecay {
                decay,
                expected: "a number in [0, 1)",
            });
        }
        let mut averages = variables(vs)
            .into_iter()
            .map(|(n, t)| Ok((n, t.f_detach_copy()?)))
            .collect::<Result<Vec<_>, tch::TchError>>()?;
        averages.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Ema {
            decay,
            averages,
            n_averaged: 0,
        })
    }

    /// The decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Updates since creation or the last [`reset`](Self::reset) (torchvision's `n_averaged`).
    pub fn n_averaged(&self) -> i64 {
        self.n_averaged
    }

    /// The averages `(variable name, tensor)`, sorted by name.
    pub fn averages(&self) -> &[(String, Tensor)] {
        &self.averages
    }

    /// Makes the next [`update`](Self::update) copy the model (torchvision's
    /// `n_averaged.fill_(0)`).
    pub fn reset(&mut self) {
        self.n_averaged = 0;
    }

    /// Pairs every average with the tensor of the same name in `vars` (those of `side`, "the
    /// model" or "the saved state"), checking that both have the same names and shapes.
    fn pair<'a>(
        &'a self,
        vars: &'a HashMap<String, Tensor>,
        side: &str,
    ) -> Result<Vec<(&'a Tensor, &'a Tensor)>, EmaError> {
        let mut extra: Vec<&String> = vars.keys().filter(|n| self.find(n).is_none()).collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(EmaError::Mismatch {
                what: "variable",
                name: name.to_string(),
                problem: format!("of {side} has no average (the averages are of another model)"),
            });
        }
        let mut pairs = Vec::with_capacity(self.averages.len());
        for (name, avg) in &self.averages {
            let Some(var) = vars.get(name) else {
                return Err(EmaError::Mismatch {
                    what: "average",
                    name: name.clone(),
                    problem: format!("has no counterpart in {side}"),
                });
            };
            if var.size() != avg.size() {
                return Err(EmaError::Shape {
                    name: name.clone(),
                    shape: var.size(),
                    expected: avg.size(),
                });
            }
            pairs.push((avg, var));
        }
        Ok(pairs)
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.averages
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
    }

    /// One update from the variables of `vs` (the same names and shapes as at creation).
    ///
    /// # Errors
    /// [`EmaError::Mismatch`] or [`EmaError::Shape`] naming a variable that does not fit
    /// (nothing is changed); [`EmaError::Torch`] when libtorch fails.
    pub fn update(&mut self, vs: &nn::VarStore) -> Result<(), EmaError> {
        let vars = variables(vs);
        let pairs = self.pair(&vars, "the model")?;
        let (decay, copy) = (self.decay, self.n_averaged == 0);
        tch::no_grad(|| {
            for (avg, var) in pairs {
                let var = var.f_detach()?.f_to_device(avg.device())?;
                let new = match copy {
                    true => var,
                    false => avg
                        .f_mul_scalar(decay)?
                        .f_add(&var.f_mul_scalar(1.0 - decay)?)?,
                };
                avg.shallow_clone().f_copy_(&new)?;
            }
            Ok::<_, EmaError>(())
        })?;
        self.n_averaged += 1;
        Ok(())
    }

    /// Copies the averages into the variables of `vs` (a second model of the same
    /// architecture, to evaluate the averaged weights; or the trained one, at the end).
    ///
    /// # Errors
    /// [`EmaError::Mismatch`] or [`EmaError::Shape`] naming a variable that does not fit
    /// (nothing is changed); [`EmaError::Torch`] when copying fails.
    pub fn copy_into(&self, vs: &nn::VarStore) -> Result<(), EmaError> {
        let vars = variables(vs);
        let pairs = self.pair(&vars, "the model")?;
        tch::no_grad(|| {
            for (avg, var) in pairs {
                var.shallow_clone().f_copy_(avg)?;
            }
            Ok(())
        })
    }

    /// The state as named tensors, torchvision's `model_ema.state_dict()` names:
    /// `n_averaged` (an `int64` scalar) and `module.<variable>` for every average (the live
    /// tensors, not copies).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(N_AVERAGED.to_string(), Tensor::from(self.n_averaged))];
        out.extend(
            self.averages
                .iter()
                .map(|(n, t)| (format!("{MODULE_PREFIX}{n}"), t.shallow_clone())),
        );
        out
    }

    /// Restores the state from [`state_tensors`](Self::state_tensors): `n_averaged` and an
    /// average for every variable, nothing else. The values are copied in.
    ///
    /// # Errors
    /// [`EmaError::Mismatch`] for a missing or unknown tensor, [`EmaError::Shape`] for one of
    /// another shape (nothing is changed then); [`EmaError::Torch`] when copying fails.
    pub fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), EmaError> {
        let (n_averaged, module) = parse_state(state)?;
        let pairs = self.pair(&module, "the saved state")?;
        tch::no_grad(|| {
            for (avg, saved) in pairs {
                avg.shallow_clone().f_copy_(saved)?;
            }
            Ok::<_, EmaError>(())
        })?;
        self.n_averaged = n_averaged;
        Ok(())
    }
}

impl Ema {
    /// Checks `state` as [`load_state`](Self::load_state) does, changing nothing.
    ///
    /// # Errors
    /// As [`load_state`](Self::load_state).
    pub fn check_state(&self, state: &[(String, Tensor)]) -> Result<(), EmaError> {
        let owned = state.iter().map(|(n, t)| (n.clone(), t.shallow_clone()));
        let (_, module) = parse_state(owned.collect())?;
        self.pair(&module, "the saved state").map(|_| ())
    }
}

/// The update count and the averages by variable name of a saved state (see
/// [`Ema::state_tensors`]).
fn parse_state(state: Vec<(String, Tensor)>) -> Result<(i64, HashMap<String, Tensor>), EmaError> {
    let mut n_averaged = None;
    let mut module = HashMap::new();
    for (name, t) in state {
        if name == N_AVERAGED {
            if !t.size().is_empty() {
                return Err(EmaError::Shape {
                    name,
                    shape: t.size(),
                    expected: vec![],
                });
            }
            n_averaged = Some(t.f_int64_value(&[])?);
        } else if let Some(var) = name.strip_prefix(MODULE_PREFIX) {
            module.insert(var.to_string(), t);
        } else {
            return Err(EmaError::Mismatch {
                what: "state tensor",
                name,
                problem: "is neither `n_averaged` nor `module.<variable>`".into(),
            });
        }
    }
    let n_averaged = n_averaged.ok_or_else(|| EmaError::Mismatch {
        what: "state tensor",
        name: N_AVERAGED.into(),
        problem: "is missing".into(),
    })?;
    Ok((n_averaged, module))
}

/// The EMA of the weights as a trainer callback ([`TrainConfig::model_ema`]): updated on its
/// [`EmaSchedule`] right after the optimiser update, evaluated beside the trained weights, its
/// state the checkpoint section `ema` (torchvision's names, [`Ema::state_tensors`]).
#[derive(Debug)]
pub struct EmaCallback {
    /// The average.
    pub ema: Ema,
    /// When it is updated.
    pub schedule: EmaSchedule,
}

impl EmaCallback {
    /// The EMA `config` asks for over `vs` for `world_size` processes (see
    /// [`TrainConfig::build_ema`]); `None` without `model_ema`.
    ///
    /// # Errors
    /// [`TrainError::Ema`] for a decay or count the EMA refuses.
    pub fn from_config(
        config: &TrainConfig,
        vs: &nn::VarStore,
        world_size: usize,
    ) -> Result<Option<Self>, TrainError> {
        let built = config.build_ema(vs, world_size)?;
        Ok(built.map(|(ema, schedule)| EmaCallback { ema, schedule }))
    }
}

impl TrainCallback for EmaCallback {
    fn section(&self) -> &str {
        "ema"
    }

    fn after_step(&mut self, ctx: &StepContext<'_>) -> Result<(), TrainError> {
        // Right after the update, as torchvision's reference script.
        self.schedule
            .after_step(&mut self.ema, ctx.vars, ctx.epoch, ctx.batch)?;
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.ema.state_tensors()
    }

    fn check_state(&self, tensors: &[(String, Tensor)]) -> Result<(), String> {
        self.ema.check_state(tensors).map_err(|e| e.to_string())
    }

    fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError> {
        Ok(self.ema.load_state(tensors)?)
    }

    fn ema(&self) -> Option<&Ema> {
        Some(&self.ema)
    }
}
