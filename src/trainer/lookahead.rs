//! Lookahead as airbench94 uses it (`airbench.utils.LookaheadState` and its calls in
//! `airbench.utils.train`): a slow copy of every floating-point variable (parameters and
//! BatchNorm running statistics), pulled towards the trained weights every `k` updates, which
//! are then set to it; after the last update of the run the trained weights become the slow
//! ones. In a run it is a trainer callback ([`LookaheadCallback`], the checkpoint section
//! `lookahead`).
use std::collections::HashMap;

use tch::{nn, Tensor};

use super::{EmaError, StepContext, TrainCallback, TrainConfig, TrainError};

/// The checkpoint section of the lookahead.
const SECTION: &str = "lookahead";

/// airbench's lookahead over the variables of a [`nn::VarStore`] ([`TrainConfig::lookahead`]).
///
/// After update `t` (1-based, of the run's `T`), when `t` is a multiple of `steps`:
/// `slow.lerp_(var, 1 - d); var.copy_(slow)` for every floating-point variable, with
/// `d = decay^steps * (t / T)^3` (airbench: `0.95**5 * (t / T)**3`); and after update `T`,
/// once more with `d = 1` (`var := slow`). The slow copies start as the variables when the
/// callback is made. Integer variables (none in this crate's models; airbench's
/// `num_batches_tracked`) are left alone. airbench updates `float` and `half` entries only; this
/// updates every floating-point kind (the same for this crate's fp32 variables). Updates that
/// fp16 loss scaling skipped count as updates.
///
/// ```
/// use resnext::trainer::LookaheadCallback;
/// use tch::{nn, Device};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _ = nn::linear(vs.root(), 4, 2, Default::default());
/// let mut la = LookaheadCallback::new(&vs, 5, 0.95)?;
/// assert!((la.decay_at(50, 100) - 0.95f64.powi(5) / 8.0).abs() < 1e-12);
/// la.update(&vs, 0.5)?; // the variables have not moved: nothing changes
/// assert_eq!(la.slow().len(), 2);
/// # Ok::<(), resnext::trainer::TrainError>(())
/// ```
#[derive(Debug)]
pub struct LookaheadCallback {
    /// Update every this many steps (airbench's 5).
    steps: usize,
    /// The per-step base of the decay (airbench's 0.95).
    decay: f64,
    /// The slow copy of every floating-point variable, sorted by name.
    slow: Vec<(String, Tensor)>,
}

impl LookaheadCallback {
    /// A lookahead over the floating-point variables of `vs`, every `steps` updates, with the
    /// per-step base `decay`; the slow copies start as the variables.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming `lookahead_steps` (0) or `lookahead_decay` (outside
    /// `[0, 1]`, NaN); [`TrainError::Torch`] when copying fails.
    pub fn new(vs: &nn::VarStore, steps: usize, decay: f64) -> Result<Self, TrainError> {
        check_values(steps, decay)?;
        let mut slow = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.is_floating_point())
            .map(|(n, t)| Ok((n, t.f_detach_copy()?)))
            .collect::<Result<Vec<_>, tch::TchError>>()?;
        slow.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(LookaheadCallback { steps, decay, slow })
    }

    /// The lookahead `config` asks for over `vs`; `None` without `lookahead`.
    ///
    /// # Errors
    /// As [`LookaheadCallback::new`].
    pub fn from_config(
        config: &TrainConfig,
        vs: &nn::VarStore,
    ) -> Result<Option<Self>, TrainError> {
        match config.lookahead {
            true => Self::new(vs, config.lookahead_steps, config.lookahead_decay).map(Some),
            false => Ok(None),
        }
    }

    /// The slow copies `(variable name, tensor)`, sorted by name.
    pub fn slow(&self) -> &[(String, Tensor)] {
        &self.slow
    }

    /// The decay after update `step` of `total` (at least 1): `decay^steps * (step / total)^3`.
    pub fn decay_at(&self, step: usize, total: usize) -> f64 {
        let progress = step as f64 / total.max(1) as f64;
        self.decay.powf(self.steps as f64) * progress.powi(3)
    }

    /// One lookahead update with `decay`: `slow.lerp_(var, 1 - decay); var.copy_(slow)` for
    /// every floating-point variable of `vs` (the same names and shapes as at creation).
    ///
    /// # Errors
    /// [`TrainError::Ema`] ([`EmaError::Mismatch`], [`EmaError::Shape`]) naming a variable that
    /// does not fit (nothing is changed then); [`TrainError::Torch`] when libtorch fails.
    pub fn update(&mut self, vs: &nn::VarStore, decay: f64) -> Result<(), TrainError> {
        let vars = floating(vs.variables());
        let pairs = self.pair(&vars, "the model")?;
        tch::no_grad(|| {
            for (slow, var) in pairs {
                let _ = slow.shallow_clone().f_lerp_(var, 1.0 - decay)?;
                var.shallow_clone().f_copy_(slow)?;
            }
            Ok::<_, tch::TchError>(())
        })?;
        Ok(())
    }

    /// Pairs every slow copy with the tensor of the same name in `vars` (those of `side`),
    /// checking that both have the same names and shapes.
    fn pair<'a>(
        &'a self,
        vars: &'a HashMap<String, Tensor>,
        side: &str,
    ) -> Result<Vec<(&'a Tensor, &'a Tensor)>, EmaError> {
        let mut extra: Vec<&String> = vars
            .keys()
            .filter(|n| self.slow.binary_search_by(|(s, _)| s.cmp(n)).is_err())
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(EmaError::Mismatch {
                what: "variable",
                name: name.to_string(),
                problem: format!("of {side} has no slow copy (the lookahead is of another model)"),
            });
        }
        let mut pairs = Vec::with_capacity(self.slow.len());
        for (name, slow) in &self.slow {
            let Some(var) = vars.get(name) else {
                return Err(EmaError::Mismatch {
                    what: "slow copy",
                    name: name.clone(),
                    problem: format!("has no counterpart in {side}"),
                });
            };
            if var.size() != slow.size() {
                return Err(EmaError::Shape {
                    name: name.clone(),
                    shape: var.size(),
                    expected: slow.size(),
                });
            }
            pairs.push((slow, var));
        }
        Ok(pairs)
    }
}

/// The refusals of [`LookaheadCallback::new`] and of [`TrainConfig::validate`].
pub(super) fn check_values(steps: usize, decay: f64) -> Result<(), TrainError> {
    if steps == 0 {
        return Err(TrainError::InvalidConfig {
            field: "lookahead_steps",
            value: "0".into(),
            expected: "at least 1".into(),
        });
    }
    if !(0.0..=1.0).contains(&decay) {
        return Err(TrainError::InvalidConfig {
            field: "lookahead_decay",
            value: decay.to_string(),
            expected: "in [0, 1]".into(),
        });
    }
    Ok(())
}

/// The floating-point tensors of `vars`.
fn floating(vars: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    vars.into_iter()
        .filter(|(_, t)| t.is_floating_point())
        .collect()
}

impl TrainCallback for LookaheadCallback {
    fn section(&self) -> &str {
        SECTION
    }

    fn after_step(&mut self, ctx: &StepContext<'_>) -> Result<(), TrainError> {
        // airbench: `if current_steps % 5 == 0: update(alpha_schedule[current_steps])`, then
        // after the last step `update(decay=1.0)`.
        if ctx.step.is_multiple_of(self.steps) {
            self.update(ctx.vars, self.decay_at(ctx.step, ctx.total_steps))?;
        }
        if ctx.step >= ctx.total_steps {
            self.update(ctx.vars, 1.0)?;
        }
        Ok(())
    }

    /// The slow copies under their variables' names (the live tensors, not copies).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let slow = self.slow.iter();
        slow.map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    fn check_state(&self, tensors: &[(String, Tensor)]) -> Result<(), String> {
        let saved = tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone()));
        let saved: HashMap<String, Tensor> = saved.collect();
        let pairs = self.pair(&saved, "the saved state");
        pairs.map(|_| ()).map_err(|e| e.to_string())
    }

    fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError> {
        let saved: HashMap<String, Tensor> = tensors.into_iter().collect();
        let pairs = self.pair(&saved, "the saved state")?;
        tch::no_grad(|| {
            for (slow, value) in pairs {
                slow.shallow_clone().f_copy_(value)?;
            }
            Ok::<_, tch::TchError>(())
        })?;
        Ok(())
    }
}
