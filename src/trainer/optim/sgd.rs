//! Stochastic gradient descent with momentum, weight decay and Nesterov, exactly as PyTorch's
//! `torch.optim.SGD` (dampening 0), with its momentum buffers visible so checkpoints keep them.
use serde::{Deserialize, Serialize};
use tch::{nn, TchError, Tensor};

use super::error::{check_lr, check_weight_decay, invalid};
use super::{
    check_shape, own_copy, state_slot, trainable_parameters, OptimError, Optimizer,
    OptimizerConfig, ParamGroups, ParamSetting,
};

/// The key of SGD's state tensors, `momentum/<parameter>` (the names checkpoints have used
/// from the start).
const MOMENTUM: &str = "momentum";

/// SGD hyper-parameters (the learning rate is passed to every [`Sgd::step`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient: `g += weight_decay * p`.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// Momentum 0.9, weight decay 5e-4, no Nesterov.
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
        }
    }
}

impl SgdConfig {
    /// Checks the values: momentum in `[0, 1)`, above 0 with Nesterov; weight decay finite
    /// and `>= 0`.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] naming the value.
    pub fn validate(&self) -> Result<(), OptimError> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid("momentum", self.momentum, "in [0, 1)"));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(invalid("momentum", self.momentum, "above 0 with nesterov"));
        }
        check_weight_decay("weight_decay", self.weight_decay)
    }
}

/// SGD over the trainable variables of a [`nn::VarStore`].
///
/// For every parameter `p` with gradient `g`, as PyTorch:
/// `g += wd * p`; `buf = g` on the first step, else `buf = momentum * buf + g`;
/// `g = g + momentum * buf` with Nesterov, else `g = buf`; `p -= lr * g`, with the weight decay
/// and learning-rate multiplier of the parameter's group (see [`ParamGroups`]).
///
/// ```
/// use resnext::trainer::{Sgd, SgdConfig};
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let w = vs.root().var("w", &[1], nn::Init::Const(1.0));
/// let mut sgd = Sgd::new(&vs, SgdConfig { momentum: 0.0, weight_decay: 0.0, nesterov: false });
/// (&w * 3.0).sum(Kind::Float).backward(); // dL/dw = 3
/// sgd.step(0.1);
/// assert!((w.double_value(&[0]) - 0.7).abs() < 1e-6);
/// ```
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    groups: ParamGroups,
    /// Trainable variables by name, sorted by name.
    params: Vec<(String, Tensor)>,
    /// The weight decay and learning-rate multiplier of each parameter.
    settings: Vec<ParamSetting>,
    /// Momentum buffer of each parameter, once it has had a step.
    momentum: Vec<Option<Tensor>>,
}

impl Sgd {
    /// SGD over every variable of `vs` that requires a gradient, all in one group (the
    /// configuration is not checked: see [`Sgd::with_groups`]).
    pub fn new(vs: &nn::VarStore, config: SgdConfig) -> Self {
        let params = trainable_parameters(vs);
        let groups = ParamGroups::default();
        let settings = params
            .iter()
            .map(|(n, _)| groups.setting(n, config.weight_decay))
            .collect();
        let momentum = params.iter().map(|_| None).collect();
        Sgd {
            config,
            groups,
            params,
            settings,
            momentum,
        }
    }

    /// SGD over every variable of `vs` that requires a gradient, with `groups`.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] for a bad configuration or group override.
    pub fn with_groups(
        vs: &nn::VarStore,
        config: SgdConfig,
        groups: &ParamGroups,
    ) -> Result<Self, OptimError> {
        config.validate()?;
        groups.validate()?;
        let mut sgd = Sgd::new(vs, config);
        sgd.groups = *groups;
        sgd.settings = sgd
            .params
            .iter()
            .map(|(n, _)| groups.setting(n, config.weight_decay))
            .collect();
        Ok(sgd)
    }

    /// The trainable parameters `(name, tensor)` this optimiser updates, sorted by name (their
    /// gradients are in `tensor.grad()` after backward).
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The hyper-parameters.
    pub fn config(&self) -> SgdConfig {
        self.config
    }

    /// The parameter groups.
    pub fn groups(&self) -> ParamGroups {
        self.groups
    }

    /// Sets every parameter's gradient to zero.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Multiplies every gradient by `factor` (to undo a loss scale) and says whether all of
    /// them are finite (one device synchronisation).
    pub fn scale_grads(&mut self, factor: f64) -> bool {
        super::scale_grads(&self.params, factor)
    }

    /// One update with learning rate `lr`. Parameters without a gradient, or that no longer
    /// require one, are left alone.
    ///
    /// # Panics
    /// Where [`Optimizer::step`] returns an error (an `lr` not finite and `>= 0`, a libtorch
    /// failure), as tch's operations panic; use that method to get the error instead.
    pub fn step(&mut self, lr: f64) {
        if let Err(e) = Optimizer::step(self, lr) {
            panic!("SGD step failed: {e:?}");
        }
    }

    /// The update, in the operation order of the first version of this type (results are
    /// bitwise those of every earlier version).
    fn update(&mut self, lr: f64) -> Result<(), TchError> {
        let SgdConfig {
            momentum, nesterov, ..
        } = self.config;
        let slots = self.params.iter_mut().zip(&mut self.momentum);
        for (((_, p), buf), setting) in slots.zip(&self.settings) {
            let grad = p.grad();
            // A parameter that stopped requiring a gradient (a frozen one) is left alone, as
            // PyTorch's optimisers leave one whose gradient is `None`.
            if !grad.defined() || !p.requires_grad() {
                continue;
            }
            let weight_decay = setting.weight_decay;
            let mut d = if weight_decay != 0.0 {
                grad.f_add(&p.f_mul_scalar(weight_decay)?)?
            } else {
                grad.shallow_clone()
            };
            if momentum != 0.0 {
                let b = match buf {
                    Some(b) => {
                        let _ = b.f_mul_scalar_(momentum)?.f_add_(&d)?;
                        b
                    }
                    None => buf.insert(d.f_detach_copy()?),
                };
                d = if nesterov {
                    d.f_add(&b.f_mul_scalar(momentum)?)?
                } else {
                    b.shallow_clone()
                };
            }
            let _ = p.f_sub_(&d.f_mul_scalar(lr * setting.lr_multiplier)?)?;
        }
        Ok(())
    }

    /// The momentum buffers that exist, by parameter name (saved in checkpoints).
    pub fn momentum_buffers(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.momentum)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (name.clone(), b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers by parameter name (from [`Sgd::momentum_buffers`]); parameters
    /// not named get none, as before their first step.
    ///
    /// # Errors
    /// The name of a buffer that matches no parameter, or whose shape differs from it, with
    /// both shapes.
    pub fn set_momentum_buffers(&mut self, buffers: Vec<(String, Tensor)>) -> Result<(), String> {
        let state = buffers
            .into_iter()
            .map(|(n, t)| (format!("{MOMENTUM}/{n}"), t))
            .collect();
        self.load_state(state).map_err(|e| match e {
            OptimError::UnknownState { name, .. } => format!(
                "momentum buffer `{}` matches no parameter of the model",
                &name[MOMENTUM.len() + 1..]
            ),
            OptimError::StateShape {
                name,
                shape,
                expected,
            } => format!(
                "momentum buffer `{}` has shape {shape:?}, the parameter {expected:?}",
                &name[MOMENTUM.len() + 1..]
            ),
            e => e.to_string(),
        })
    }
}

impl Optimizer for Sgd {
    fn name(&self) -> &'static str {
        "sgd"
    }

    fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    fn settings(&self) -> &[ParamSetting] {
        &self.settings
    }

    fn optimizer_config(&self) -> OptimizerConfig {
        OptimizerConfig::Sgd(self.config)
    }

    fn step(&mut self, lr: f64) -> Result<(), OptimError> {
        check_lr(lr)?;
        Ok(tch::no_grad(|| self.update(lr))?)
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.momentum_buffers()
            .into_iter()
            .map(|(n, t)| (format!("{MOMENTUM}/{n}"), t))
            .collect()
    }

    fn check_state(&self, state: &[(String, Tensor)]) -> Result<(), OptimError> {
        for (name, t) in state {
            let unknown = || OptimError::UnknownState {
                optimizer: "sgd",
                name: name.clone(),
                expected: "momentum/<parameter> for parameters of the model",
            };
            match state_slot(&self.params, name) {
                Some((MOMENTUM, i)) => check_shape(name, t, &self.params[i].1.size())?,
                _ => return Err(unknown()),
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError> {
        self.check_state(&state)?;
        let mut fresh: Vec<Option<Tensor>> = self.params.iter().map(|_| None).collect();
        for (name, t) in state {
            if let Some((_, i)) = state_slot(&self.params, &name) {
                let p = &self.params[i].1;
                fresh[i] = Some(own_copy(&t, p)?);
            }
        }
        self.momentum = fresh;
        Ok(())
    }
}
