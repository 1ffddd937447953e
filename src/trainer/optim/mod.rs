//! Optimisers behind one trait, [`Optimizer`]: [`Sgd`] (PyTorch's `torch.optim.SGD`) and
//! [`AdamW`] (`torch.optim.AdamW`), both with [`ParamGroups`] (another weight decay and
//! learning-rate multiplier for norm parameters and biases), built from an
//! [`OptimizerConfig`]; and [`clip_grad_norm`] (`torch.nn.utils.clip_grad_norm_`).
//!
//! An optimiser's state is a list of named tensors, `<key>/<parameter>` (SGD: `momentum/…`,
//! the names of format-1 checkpoints; AdamW: `step/…`, `exp_avg/…`, `exp_avg_sq/…`), so the
//! checkpoint section `optimizer/` holds any optimiser's state and [`Optimizer::load_state`]
//! checks it.
//!
//! Where clipping goes in a step: after backward, after the gradients of a data-parallel run
//! are averaged, and under fp16 loss scaling after they are unscaled (as PyTorch's
//! `scaler.unscale_(optimizer)` before `clip_grad_norm_`): that is
//! [`TrainStep`](super::TrainStep)'s [`GradientHook`](super::GradientHook), which
//! [`gradient_clipper`] makes.
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

mod adamw;
mod clip;
mod error;
mod groups;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_grad_norm, gradient_clipper, total_grad_norm};
pub use error::OptimError;
pub use groups::{
    is_bias, is_norm_parameter, GroupOverride, ParamClass, ParamGroups, ParamSetting,
};
pub use sgd::{Sgd, SgdConfig};

/// An optimiser over the trainable parameters of a [`nn::VarStore`], whose gradients are in
/// `tensor.grad()` after backward.
pub trait Optimizer {
    /// Its name in an [`OptimizerConfig`] (`sgd`, `adamw`).
    fn name(&self) -> &'static str;

    /// The parameters `(name, tensor)` it updates, sorted by name.
    fn parameters(&self) -> &[(String, Tensor)];

    /// What each parameter (in the order of [`parameters`](Self::parameters)) is updated
    /// with: its weight decay and learning-rate multiplier.
    fn settings(&self) -> &[ParamSetting];

    /// Its configuration.
    fn optimizer_config(&self) -> OptimizerConfig;

    /// One update with learning rate `lr` (times each parameter's multiplier). Parameters
    /// without a gradient are left alone, their state too.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] for an `lr` that is not finite and `>= 0` (nothing
    /// is changed); [`OptimError::Torch`] when libtorch fails.
    fn step(&mut self, lr: f64) -> Result<(), OptimError>;

    /// Its state as named tensors (`<key>/<parameter>`), only for parameters that have some.
    /// The tensors are the live state, not copies.
    fn state_tensors(&self) -> Vec<(String, Tensor)>;

    /// Checks that `state` (as [`state_tensors`](Self::state_tensors) gives it) fits this
    /// optimiser: every name known, every shape right, nothing partial.
    ///
    /// # Errors
    /// [`OptimError::UnknownState`], [`OptimError::StateShape`] or
    /// [`OptimError::IncompleteState`] naming the first tensor that does not fit.
    fn check_state(&self, state: &[(String, Tensor)]) -> Result<(), OptimError>;

    /// Replaces the state by `state` (parameters it does not name get none, as before their
    /// first step), after [`check_state`](Self::check_state): on error nothing is changed.
    /// The tensors are copied to the parameters' device and kind.
    ///
    /// # Errors
    /// As [`check_state`](Self::check_state); [`OptimError::Torch`] when copying fails.
    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError>;

    /// Sets every parameter's gradient to zero.
    fn zero_grad(&mut self) {
        for (_, p) in self.parameters() {
            p.shallow_clone().zero_grad();
        }
    }

    /// Multiplies every gradient by `factor` (to undo a loss scale) and says whether all of
    /// them are finite (one device synchronisation).
    fn scale_grads(&mut self, factor: f64) -> bool {
        scale_grads(self.parameters(), factor)
    }
}

/// Every variable of `vs` that requires a gradient, sorted by name.
pub fn trainable_parameters(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    params
}

/// Multiplies every gradient of `params` by `factor`; whether all of them are finite.
fn scale_grads(params: &[(String, Tensor)], factor: f64) -> bool {
    tch::no_grad(|| {
        let mut total: Option<Tensor> = None;
        for (_, p) in params {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = g.g_mul_scalar_(factor);
            let s = g.sum(tch::Kind::Float);
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
        }
        total.is_none_or(|t| t.isfinite().int64_value(&[]) != 0)
    })
}

/// Splits a state tensor's name `<key>/<parameter>` and finds the parameter's index.
fn state_slot<'a>(params: &[(String, Tensor)], name: &'a str) -> Option<(&'a str, usize)> {
    let (key, param) = name.split_once('/')?;
    let i = params
        .binary_search_by(|(n, _)| n.as_str().cmp(param))
        .ok()?;
    Some((key, i))
}

/// `t` on the device and in the kind of `param`, in memory of its own (never an alias of `t`).
fn own_copy(t: &Tensor, param: &Tensor) -> Result<Tensor, tch::TchError> {
    t.f_to_device(param.device())?
        .f_to_kind(param.kind())?
        .f_detach_copy()
}

/// Checks that `t` has the shape of `param` (state tensor `name`).
fn check_shape(name: &str, t: &Tensor, expected: &[i64]) -> Result<(), OptimError> {
    if t.size() == expected {
        Ok(())
    } else {
        Err(OptimError::StateShape {
            name: name.to_string(),
            shape: t.size(),
            expected: expected.to_vec(),
        })
    }
}

/// Names accepted for [`OptimizerConfig`].
pub const OPTIMIZER_NAMES: [&str; 2] = ["sgd", "adamw"];

/// Which optimiser, with its hyper-parameters (the learning rate is passed to every step).
/// In JSON: `{"name": "sgd", "momentum": 0.9, ...}` or `{"name": "adamw", "betas": [0.9,
/// 0.999], ...}`; missing hyper-parameters take their defaults.
///
/// ```
/// use resnext::trainer::{OptimizerConfig, ParamGroups};
/// let adamw: OptimizerConfig = "adamw".parse()?;
/// assert_eq!(adamw.name(), "adamw");
/// let json = serde_json::to_string(&adamw).unwrap();
/// assert!(json.starts_with(r#"{"name":"adamw""#));
/// let err = "adam".parse::<OptimizerConfig>().unwrap_err().to_string();
/// assert!(err.contains("sgd, adamw"), "{err}");
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let opt = adamw.build(&vs, &ParamGroups::default())?;
/// assert_eq!(opt.name(), "adamw");
/// # Ok::<(), resnext::trainer::OptimError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// [`Sgd`].
    Sgd(SgdConfig),
    /// [`AdamW`].
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
}

impl Default for OptimizerConfig {
    /// SGD with [`SgdConfig::default`].
    fn default() -> Self {
        OptimizerConfig::Sgd(SgdConfig::default())
    }
}

impl FromStr for OptimizerConfig {
    type Err = OptimError;

    /// The optimiser `name` with its default hyper-parameters.
    fn from_str(name: &str) -> Result<Self, OptimError> {
        match name {
            "sgd" => Ok(OptimizerConfig::Sgd(SgdConfig::default())),
            "adamw" => Ok(OptimizerConfig::AdamW(AdamWConfig::default())),
            _ => Err(OptimError::UnknownOptimizer {
                name: name.to_string(),
                expected: OPTIMIZER_NAMES.join(", "),
            }),
        }
    }
}

impl OptimizerConfig {
    /// Its name, one of [`OPTIMIZER_NAMES`].
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd(_) => "sgd",
            OptimizerConfig::AdamW(_) => "adamw",
        }
    }

    /// Checks the hyper-parameters (the ranges `torch.optim` accepts, finite).
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] naming the value.
    pub fn validate(&self) -> Result<(), OptimError> {
        match self {
            OptimizerConfig::Sgd(c) => c.validate(),
            OptimizerConfig::AdamW(c) => c.validate(),
        }
    }

    /// The optimiser over the trainable variables of `vs`, with `groups`.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] for a bad hyper-parameter or group override.
    pub fn build(
        &self,
        vs: &nn::VarStore,
        groups: &ParamGroups,
    ) -> Result<Box<dyn Optimizer>, OptimError> {
        Ok(match self {
            OptimizerConfig::Sgd(c) => Box::new(Sgd::with_groups(vs, *c, groups)?),
            OptimizerConfig::AdamW(c) => Box::new(AdamW::new(vs, *c, groups)?),
        })
    }
}
