//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), exactly as PyTorch's
//! `torch.optim.AdamW` (its single-tensor path, the one it takes on the CPU; no AMSGrad).
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, TchError, Tensor};

use super::error::{check_lr, check_weight_decay, invalid};
use super::{
    check_shape, own_copy, state_slot, trainable_parameters, OptimError, Optimizer,
    OptimizerConfig, ParamGroups, ParamSetting,
};

/// The keys of AdamW's state tensors: `step/<parameter>` (an `int64` scalar, the parameter's
/// update count), `exp_avg/<parameter>` and `exp_avg_sq/<parameter>` (its moments).
const STEP: &str = "step";
const EXP_AVG: &str = "exp_avg";
const EXP_AVG_SQ: &str = "exp_avg_sq";
const KEYS: [&str; 3] = [STEP, EXP_AVG, EXP_AVG_SQ];

/// AdamW hyper-parameters (the learning rate is passed to every step); the defaults are
/// PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moment estimates, each in `[0, 1)`.
    pub betas: (f64, f64),
    /// Added to the square root of the second moment (outside it), finite and `>= 0`.
    pub eps: f64,
    /// Decoupled weight decay: `p *= 1 - lr * weight_decay` before the Adam update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamWConfig {
    /// Checks the values as `torch.optim.AdamW` does (betas in `[0, 1)`, eps `>= 0`, weight
    /// decay `>= 0`), and that they are finite.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] naming the value.
    pub fn validate(&self) -> Result<(), OptimError> {
        let (b1, b2) = self.betas;
        if !(0.0..1.0).contains(&b1) {
            return Err(invalid("betas[0]", b1, "in [0, 1)"));
        }
        if !(0.0..1.0).contains(&b2) {
            return Err(invalid("betas[1]", b2, "in [0, 1)"));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(invalid("eps", self.eps, "a finite number >= 0"));
        }
        check_weight_decay("weight_decay", self.weight_decay)
    }
}

/// The state of one parameter after its first step.
#[derive(Debug)]
struct Moments {
    step: i64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over the trainable variables of a [`nn::VarStore`]. For every parameter `p` with
/// gradient `g`, with its group's learning rate `lr` and weight decay `wd`, as PyTorch:
/// `t += 1`; `p *= 1 - lr * wd`; `m = lerp(m, g, 1 - b1)`; `v = b2 * v + (1 - b2) * g * g`;
/// `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`.
///
/// ```
/// use resnext::trainer::{AdamW, AdamWConfig, Optimizer, ParamGroups};
/// use tch::{nn, Device, Kind};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let w = vs.root().var("w", &[1], nn::Init::Const(1.0));
/// let config = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
/// let mut adamw = AdamW::new(&vs, config, &ParamGroups::default())?;
/// (&w * 3.0).sum(Kind::Float).backward();
/// adamw.step(0.1)?; // the first step moves by lr, whatever the gradient's size
/// assert!((w.double_value(&[0]) - 0.9).abs() < 1e-6);
/// # Ok::<(), resnext::trainer::OptimError>(())
/// ```
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    /// Trainable variables by name, sorted by name.
    params: Vec<(String, Tensor)>,
    /// The weight decay and learning-rate multiplier of each parameter.
    settings: Vec<ParamSetting>,
    /// The state of each parameter, once it has had a step.
    state: Vec<Option<Moments>>,
}

impl AdamW {
    /// AdamW over every variable of `vs` that requires a gradient, with `groups`.
    ///
    /// # Errors
    /// [`OptimError::InvalidHyperParameter`] for a bad configuration or group override.
    pub fn new(
        vs: &nn::VarStore,
        config: AdamWConfig,
        groups: &ParamGroups,
    ) -> Result<Self, OptimError> {
        config.validate()?;
        groups.validate()?;
        let params = trainable_parameters(vs);
        let settings = params
            .iter()
            .map(|(n, _)| groups.setting(n, config.weight_decay))
            .collect();
        let state = params.iter().map(|_| None).collect();
        Ok(AdamW {
            config,
            params,
            settings,
            state,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// The update of one parameter, in the operation order of `_single_tensor_adam` (torch
    /// 2.11, `decoupled_weight_decay=True`): `addcmul_`'s and `addcdiv_`'s scalar factor is
    /// applied to their first tensor beforehand, which libtorch's kernels compute the same way.
    fn update_one(
        &self,
        p: &mut Tensor,
        grad: &Tensor,
        m: &mut Moments,
        lr: f64,
        weight_decay: f64,
    ) -> Result<(), TchError> {
        let (beta1, beta2) = self.config.betas;
        m.step += 1;
        if weight_decay != 0.0 {
            let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
        }
        let _ = m.exp_avg.f_lerp_(grad, 1.0 - beta1)?;
        let _ = m
            .exp_avg_sq
            .f_mul_scalar_(beta2)?
            .f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, grad)?;
        let step = m.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        let bias_correction2_sqrt = bias_correction2.powf(0.5);
        let denom = m
            .exp_avg_sq
            .f_sqrt()?
            .f_div_scalar(bias_correction2_sqrt)?
            .f_add_scalar_(self.config.eps)?;
        let _ = p.f_addcdiv_(&m.exp_avg.f_mul_scalar(-step_size)?, &denom)?;
        Ok(())
    }

    fn update(&mut self, lr: f64) -> Result<(), TchError> {
        for i in 0..self.params.len() {
            let mut p = self.params[i].1.shallow_clone();
            let grad = p.grad();
            // A frozen parameter is left alone, as in `torch.optim.AdamW` (gradient `None`).
            if !grad.defined() || !p.requires_grad() {
                continue;
            }
            let mut m = match self.state[i].take() {
                Some(m) => m,
                None => Moments {
                    step: 0,
                    exp_avg: p.f_zeros_like()?,
                    exp_avg_sq: p.f_zeros_like()?,
                },
            };
            let s = self.settings[i];
            let result =
                self.update_one(&mut p, &grad, &mut m, lr * s.lr_multiplier, s.weight_decay);
            self.state[i] = Some(m);
            result?;
        }
        Ok(())
    }

    /// Checks one state tensor; the index of its parameter and of its key in `KEYS`.
    fn check_one(&self, name: &str, t: &Tensor) -> Result<(usize, usize), OptimError> {
        let slot = state_slot(&self.params, name)
            .and_then(|(key, i)| Some((i, KEYS.iter().position(|k| *k == key)?)));
        let Some((i, k)) = slot else {
            return Err(self.unknown(name));
        };
        if KEYS[k] == STEP {
            check_shape(name, t, &[])?;
            let step = t.f_double_value(&[])?;
            if !(step >= 1.0 && step.fract() == 0.0) {
                return Err(OptimError::InvalidState {
                    name: name.to_string(),
                    problem: format!("is {step}, expected a whole number of steps >= 1"),
                });
            }
        } else {
            check_shape(name, t, &self.params[i].1.size())?;
        }
        Ok((i, k))
    }

    fn unknown(&self, name: &str) -> OptimError {
        OptimError::UnknownState {
            optimizer: "adamw",
            name: name.to_string(),
            expected: "step/<parameter>, exp_avg/<parameter> or exp_avg_sq/<parameter> for parameters of the model",
        }
    }
}

impl Optimizer for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    fn settings(&self) -> &[ParamSetting] {
        &self.settings
    }

    fn optimizer_config(&self) -> OptimizerConfig {
        OptimizerConfig::AdamW(self.config)
    }

    fn step(&mut self, lr: f64) -> Result<(), OptimError> {
        check_lr(lr)?;
        Ok(tch::no_grad(|| self.update(lr))?)
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, _), m) in self.params.iter().zip(&self.state) {
            if let Some(m) = m {
                out.push((format!("{STEP}/{name}"), Tensor::from(m.step)));
                out.push((format!("{EXP_AVG}/{name}"), m.exp_avg.shallow_clone()));
                out.push((format!("{EXP_AVG_SQ}/{name}"), m.exp_avg_sq.shallow_clone()));
            }
        }
        out
    }

    fn check_state(&self, state: &[(String, Tensor)]) -> Result<(), OptimError> {
        let mut seen = vec![[false; 3]; self.params.len()];
        for (name, t) in state {
            let (i, k) = self.check_one(name, t)?;
            seen[i][k] = true;
        }
        for ((param, _), keys) in self.params.iter().zip(&seen) {
            if keys.iter().any(|&k| k) {
                if let Some(k) = keys.iter().position(|&k| !k) {
                    let missing = KEYS[k];
                    return Err(OptimError::IncompleteState {
                        param: param.clone(),
                        missing: format!("{missing}/{param}"),
                    });
                }
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError> {
        self.check_state(&state)?;
        let mut parts: Vec<[Option<Tensor>; 3]> =
            self.params.iter().map(|_| Default::default()).collect();
        for (name, t) in state {
            if let Some((key, i)) = state_slot(&self.params, &name) {
                if let Some(k) = KEYS.iter().position(|s| *s == key) {
                    parts[i][k] = Some(t);
                }
            }
        }
        let mut fresh = Vec::with_capacity(self.params.len());
        for ((_, p), [step, m, v]) in self.params.iter().zip(parts) {
            fresh.push(match (step, m, v) {
                (Some(step), Some(m), Some(v)) => Some(Moments {
                    step: step.f_to_kind(Kind::Int64)?.f_int64_value(&[])?,
                    exp_avg: own_copy(&m, p)?,
                    exp_avg_sq: own_copy(&v, p)?,
                }),
                _ => None,
            });
        }
        self.state = fresh;
        Ok(())
    }
}
