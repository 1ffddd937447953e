//! Learning-rate schedules: [`Schedule`], the names it is known by, and the rate of an epoch.
use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

use super::TrainError;

/// How the learning rate moves over training (see [`Schedule::lr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Cosine annealing from the base lr to 0 over all epochs after warm-up (the widely used
    /// PyTorch CIFAR recipe: `CosineAnnealingLR(T_max=epochs)` stepped once per epoch).
    #[default]
    Cosine,
    /// The paper's CIFAR recipe: divide by 10 at 50% and at 75% of the epochs, as PyTorch's
    /// `MultiStepLR(milestones=[int(0.5 * T), int(0.75 * T)], gamma=0.1)`.
    Step,
    /// The base lr throughout (the tutorial's literal recipe).
    Constant,
}

/// Names accepted for [`Schedule`], as in JSON.
pub const SCHEDULE_NAMES: [&str; 3] = ["cosine", "step", "constant"];

impl std::str::FromStr for Schedule {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "step" => Ok(Schedule::Step),
            "constant" => Ok(Schedule::Constant),
            _ => Err(TrainError::InvalidConfig {
                field: "schedule",
                value: s.to_string(),
                expected: format!("one of {}", SCHEDULE_NAMES.join(", ")),
            }),
        }
    }
}

impl Schedule {
    /// The learning rate of (0-based) `epoch` out of `epochs`, after `warmup` warm-up epochs,
    /// for base rate `base`. The rate is constant within an epoch. (A training run reads it
    /// through [`TrainConfig::lr_at`](super::TrainConfig::lr_at).)
    ///
    /// * warm-up, `epoch < warmup`: `base * (epoch + 1) / (warmup + 1)`, rising linearly;
    /// * then, with `t = epoch - warmup` and `T = epochs - warmup`:
    ///   * `Cosine`: `base * (1 + cos(pi * t / T)) / 2` (PyTorch's `CosineAnnealingLR` with
    ///     `T_max = T`, `eta_min = 0`);
    ///   * `Step`: `base`, divided by 10 from `t >= floor(T/2)` and by 100 from
    ///     `t >= floor(3T/4)` (PyTorch's `MultiStepLR` with milestones `int(0.5 * T)` and
    ///     `int(0.75 * T)`);
    ///   * `Constant`: `base`.
    ///
    /// ```
    /// use resnext::trainer::Schedule;
    /// assert_eq!(Schedule::Cosine.lr(0.1, 0, 200, 0), 0.1);
    /// assert!((Schedule::Cosine.lr(0.1, 100, 200, 0) - 0.05).abs() < 1e-12);
    /// assert!((Schedule::Step.lr(0.1, 150, 200, 0) - 0.001).abs() < 1e-12);
    /// // T = 5: milestones int(2.5) = 2 and int(3.75) = 3.
    /// assert!((Schedule::Step.lr(0.1, 2, 5, 0) - 0.01).abs() < 1e-12);
    /// assert_eq!(Schedule::Constant.lr(0.1, 0, 200, 4), 0.02);
    /// ```
    pub fn lr(self, base: f64, epoch: usize, epochs: usize, warmup: usize) -> f64 {
        if epoch < warmup {
            return base * (epoch + 1) as f64 / (warmup + 1) as f64;
        }
        let t = epoch - warmup;
        let total = epochs.saturating_sub(warmup).max(1);
        match self {
            Schedule::Cosine => base * (1.0 + (PI * t as f64 / total as f64).cos()) / 2.0,
            Schedule::Step => {
                // int(0.5 * T) and int(0.75 * T), exactly, in integers.
                if t >= 3 * total / 4 {
                    base / 100.0
                } else if t >= total / 2 {
                    base / 10.0
                } else {
                    base
                }
            }
            Schedule::Constant => base,
        }
    }
}
