//! Callbacks: code the trainer runs right after every optimiser update and after every epoch,
//! with the model's variables, and whose state is a section of the checkpoint of its own, so
//! that a resumed run continues it exactly. The EMA of the weights ([`EmaCallback`]) and
//! airbench's lookahead ([`LookaheadCallback`]) are two.
//!
//! A new callback is one type implementing [`TrainCallback`], registered either by the
//! configuration (one line in [`Callbacks::for_config`]) or by the caller
//! ([`Trainer::with_callback`](super::Trainer::with_callback)).
use tch::{nn, Tensor};

use super::{
    Ema, EmaCallback, EpochMetrics, LookaheadCallback, StemBiasFreeze, TrainConfig, TrainError,
};

/// The sections of a checkpoint that belong to the trainer itself, which no callback may take.
pub(super) const RESERVED_SECTIONS: [&str; 2] = ["model", "optimizer"];

/// What a callback sees right after an optimiser update.
#[derive(Debug)]
pub struct StepContext<'a> {
    /// The variables being trained, just updated.
    pub vars: &'a nn::VarStore,
    /// 0-based epoch in progress.
    pub epoch: usize,
    /// 0-based batch of `epoch` just trained.
    pub batch: usize,
    /// Whether fp16 loss scaling skipped this update (non-finite gradients).
    pub skipped: bool,
    /// The learning rate of this update (before any parameter group's multiplier).
    pub lr: f64,
    /// Updates of the run so far, this one included (1-based: airbench's `current_steps`),
    /// `epoch * batches_per_epoch + batch + 1`; counted the same in a resumed run.
    pub step: usize,
    /// The updates of the whole run, `epochs * batches_per_epoch`.
    pub total_steps: usize,
}

/// What a callback sees after an epoch, once its metrics are recorded and before its
/// checkpoint is written.
#[derive(Debug)]
pub struct EpochContext<'a> {
    /// The variables being trained.
    pub vars: &'a nn::VarStore,
    /// The metrics of the epoch just finished (its 1-based number included).
    pub metrics: &'a EpochMetrics,
}

/// Code run by the trainer after every update and every epoch, with a checkpoint section of
/// its own: its [`state_tensors`](Self::state_tensors) are saved as `<section>/<name>` in
/// every checkpoint and given back to [`load_state`](Self::load_state) on resume.
///
/// ```
/// use resnext::trainer::{StepContext, TrainCallback, TrainError};
/// use tch::Tensor;
/// /// Counts the updates.
/// struct Steps(i64);
/// impl TrainCallback for Steps {
///     fn section(&self) -> &str {
///         "steps"
///     }
///     fn after_step(&mut self, _ctx: &StepContext<'_>) -> Result<(), TrainError> {
///         self.0 += 1;
///         Ok(())
///     }
///     fn state_tensors(&self) -> Vec<(String, Tensor)> {
///         vec![("count".into(), Tensor::from(self.0))]
///     }
///     fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError> {
///         self.0 = tensors.first().map_or(0, |(_, t)| t.int64_value(&[]));
///         Ok(())
///     }
/// }
/// ```
pub trait TrainCallback {
    /// The name of its checkpoint section: lowercase letters, digits and `_`, neither `model`
    /// nor `optimizer`, one per callback of a trainer.
    fn section(&self) -> &str;

    /// Runs right after the optimiser update of every batch (also one that fp16 loss scaling
    /// skipped, see [`StepContext::skipped`]). An error stops training.
    fn after_step(&mut self, ctx: &StepContext<'_>) -> Result<(), TrainError> {
        let _ = ctx;
        Ok(())
    }

    /// Runs after every epoch, before its checkpoint. An error stops training.
    fn after_epoch(&mut self, ctx: &EpochContext<'_>) -> Result<(), TrainError> {
        let _ = ctx;
        Ok(())
    }

    /// Its state, as named tensors (names without the section prefix).
    fn state_tensors(&self) -> Vec<(String, Tensor)>;

    /// Checks that `tensors` (its section of a checkpoint) fit this callback, without changing
    /// it; called for every section before anything is loaded. The default accepts all.
    ///
    /// # Errors
    /// A message naming what does not fit.
    fn check_state(&self, tensors: &[(String, Tensor)]) -> Result<(), String> {
        let _ = tensors;
        Ok(())
    }

    /// Takes the state saved by [`state_tensors`](Self::state_tensors) back.
    ///
    /// # Errors
    /// An error naming what does not fit; the callback is then unchanged.
    fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError>;

    /// The EMA of the weights this callback keeps, if it keeps one ([`EmaCallback`]):
    /// evaluated beside the trained weights at every evaluation (`ema_test_acc`,
    /// `ema_test_loss`) and, with [`TrainConfig::model_ema_weights`] `ema`, saved as `best` and
    /// `last`. `None` (the default) for other callbacks.
    fn ema(&self) -> Option<&Ema> {
        None
    }
}

/// The callbacks of a trainer, in the order they run: those its configuration asks for, then
/// those the caller added.
#[derive(Default)]
pub struct Callbacks {
    configured: Vec<Box<dyn TrainCallback>>,
    added: Vec<Box<dyn TrainCallback>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.sections()).finish()
    }
}

impl Callbacks {
    /// The callbacks `config` asks for over `vs`, for a run of `world_size` processes: the
    /// registration list of the configured callbacks.
    ///
    /// # Errors
    /// A callback's configuration error ([`TrainError::Ema`], ...).
    pub fn for_config(
        config: &TrainConfig,
        vs: &nn::VarStore,
        world_size: usize,
    ) -> Result<Self, TrainError> {
        let mut configured: Vec<Box<dyn TrainCallback>> = Vec::new();
        // The lookahead first: it changes the weights, which the EMA then averages.
        configured.extend(LookaheadCallback::from_config(config, vs)?.map(boxed));
        configured.extend(EmaCallback::from_config(config, vs, world_size)?.map(boxed));
        configured.extend(StemBiasFreeze::from_config(config, vs)?.map(boxed));
        Ok(Callbacks {
            configured,
            added: Vec::new(),
        })
    }

    /// Adds `callback` after the others.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for a section name that is malformed, reserved or taken.
    pub fn add(&mut self, callback: Box<dyn TrainCallback>) -> Result<(), TrainError> {
        let name = callback.section().to_string();
        let well_formed = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let taken =
            RESERVED_SECTIONS.contains(&name.as_str()) || self.sections().any(|s| s == name);
        if !well_formed || taken {
            return Err(TrainError::InvalidConfig {
                field: "callback section",
                value: name,
                expected: "lowercase letters, digits and `_`, not `model`, `optimizer` or the \
                    section of another callback"
                    .into(),
            });
        }
        self.added.push(callback);
        Ok(())
    }

    /// Replaces the configured callbacks by `configured`'s (those of a checkpoint's
    /// configuration, of another world size); the callbacks replaced.
    pub(super) fn reconfigured(&mut self, configured: Callbacks) -> Callbacks {
        let earlier = std::mem::replace(&mut self.configured, configured.configured);
        Callbacks {
            configured: earlier,
            added: Vec::new(),
        }
    }

    /// The callbacks in the order they run.
    pub fn iter(&self) -> impl Iterator<Item = &dyn TrainCallback> {
        self.configured
            .iter()
            .chain(&self.added)
            .map(|c| c.as_ref())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Box<dyn TrainCallback>> {
        self.configured.iter_mut().chain(&mut self.added)
    }

    /// Their section names, in order.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|c| c.section())
    }

    /// The first EMA of the weights a callback keeps (see [`TrainCallback::ema`]).
    pub fn ema(&self) -> Option<&Ema> {
        self.iter().find_map(|c| c.ema())
    }

    /// Runs every [`TrainCallback::after_step`].
    pub(super) fn after_step(&mut self, ctx: &StepContext<'_>) -> Result<(), TrainError> {
        self.iter_mut().try_for_each(|c| c.after_step(ctx))
    }

    /// Runs every [`TrainCallback::after_epoch`].
    pub(super) fn after_epoch(&mut self, ctx: &EpochContext<'_>) -> Result<(), TrainError> {
        self.iter_mut().try_for_each(|c| c.after_epoch(ctx))
    }

    /// Every callback's section, `(section, its tensors)`.
    pub(super) fn state_sections(&self) -> Vec<(String, Vec<(String, Tensor)>)> {
        self.iter()
            .map(|c| (c.section().to_string(), c.state_tensors()))
            .collect()
    }

    /// Checks `sections` (`(section, tensors)`): one per callback and no other, each fitting
    /// its callback ([`TrainCallback::check_state`]).
    pub(super) fn check_sections(
        &self,
        sections: &[(String, Vec<(String, Tensor)>)],
    ) -> Result<(), String> {
        if let Some((name, _)) = sections
            .iter()
            .find(|(name, _)| !self.sections().any(|s| s == name))
        {
            return Err(format!(
                "it has a section `{name}` that no callback of this trainer reads{}",
                match name.as_str() {
                    "ema" => " (its configuration has no model_ema)",
                    "lookahead" => " (its configuration has no lookahead)",
                    _ => "",
                }
            ));
        }
        for callback in self.iter() {
            let name = callback.section();
            let Some((_, tensors)) = sections.iter().find(|(s, _)| s == name) else {
                return Err(format!(
                    "it has no section `{name}` for that callback (a run trained without it?)"
                ));
            };
            callback
                .check_state(tensors)
                .map_err(|e| format!("section `{name}`: {e}"))?;
        }
        Ok(())
    }

    /// Loads `sections` into the callbacks, after checking them ([`Self::check_sections`]);
    /// on a check's error nothing is changed.
    pub(super) fn load_sections(
        &mut self,
        mut sections: Vec<(String, Vec<(String, Tensor)>)>,
    ) -> Result<(), String> {
        self.check_sections(&sections)?;
        let mut ordered = Vec::new();
        for callback in self.iter() {
            let at = sections.iter().position(|(s, _)| s == callback.section());
            // Checked above: every callback has its section.
            if let Some(at) = at {
                ordered.push(sections.swap_remove(at));
            }
        }
        for (callback, (name, tensors)) in self.iter_mut().zip(ordered) {
            callback
                .load_state(tensors)
                .map_err(|e| format!("section `{name}`: {e}"))?;
        }
        Ok(())
    }
}

fn boxed<C: TrainCallback + 'static>(callback: C) -> Box<dyn TrainCallback> {
    Box::new(callback)
}
