//! The errors of the optimisers, their configuration, their state and gradient clipping.
use thiserror::Error;

/// What can go wrong building an optimiser, stepping it, clipping gradients or restoring its
/// state. Every variant names the value concerned and what was expected.
#[derive(Debug, Error)]
pub enum OptimError {
    /// An optimiser name that is not one of [`OPTIMIZER_NAMES`](super::OPTIMIZER_NAMES).
    #[error("unknown optimizer `{name}`: expected one of {expected}")]
    UnknownOptimizer {
        /// The name given.
        name: String,
        /// The valid names, comma separated.
        expected: String,
    },
    /// A hyper-parameter out of range (momentum, betas, eps, weight decay, learning rate,
    /// learning-rate multiplier, clipping norm).
    #[error("invalid {field} `{value}`: expected {expected}")]
    InvalidHyperParameter {
        /// The hyper-parameter (`momentum`, `betas[0]`, `eps`, ...).
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A state tensor whose name is not one this optimiser keeps for its parameters.
    #[error("state tensor `{name}` is not part of the state of this {optimizer} optimizer: expected {expected}")]
    UnknownState {
        /// The optimiser (`sgd`, `adamw`).
        optimizer: &'static str,
        /// The state tensor's name.
        name: String,
        /// The names it keeps, as a pattern.
        expected: &'static str,
    },
    /// A state tensor whose shape differs from what its parameter needs.
    #[error("state tensor `{name}` has shape {shape:?}, expected {expected:?}")]
    StateShape {
        /// The state tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<i64>,
        /// The shape it must have.
        expected: Vec<i64>,
    },
    /// The state of a parameter lacks one of the tensors that go together (AdamW's `step`,
    /// `exp_avg` and `exp_avg_sq`).
    #[error("the state of parameter `{param}` has no `{missing}` tensor (its other state tensors are present)")]
    IncompleteState {
        /// The parameter.
        param: String,
        /// The missing state tensor's name.
        missing: String,
    },
    /// A state tensor whose value cannot be (AdamW's `step` below 1, for example).
    #[error("state tensor `{name}` {problem}")]
    InvalidState {
        /// The state tensor's name.
        name: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// libtorch reported an error.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}

/// [`OptimError::InvalidHyperParameter`].
pub(crate) fn invalid(field: &'static str, value: f64, expected: &'static str) -> OptimError {
    OptimError::InvalidHyperParameter {
        field,
        value: value.to_string(),
        expected,
    }
}

/// Checks a learning rate as torch does (`0 <= lr`), finite.
pub(crate) fn check_lr(lr: f64) -> Result<(), OptimError> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(())
    } else {
        Err(invalid("lr", lr, "a finite number >= 0"))
    }
}

/// Checks a weight decay: finite and `>= 0`.
pub(crate) fn check_weight_decay(field: &'static str, wd: f64) -> Result<(), OptimError> {
    if wd.is_finite() && wd >= 0.0 {
        Ok(())
    } else {
        Err(invalid(field, wd, "a finite number >= 0"))
    }
}
