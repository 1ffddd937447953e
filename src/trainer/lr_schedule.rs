//! Learning-rate schedules: [`Schedule`], the names it is known by, the rate of an epoch, and
//! the per-step shape of airbench's triangle ([`TriangleShape`]).
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
    /// airbench94's linear one-cycle, moving at every step rather than every epoch: the lr
    /// factor rises linearly from `lr_start_factor` to 1 at step `int(lr_peak_fraction * T)`,
    /// then falls linearly to `lr_end_factor` at step `T`, the run's number of updates
    /// ([`TriangleShape`], read through
    /// [`TrainConfig::lr_at_step`](super::TrainConfig::lr_at_step)). No warm-up epochs.
    Triangle,
}

/// Names accepted for [`Schedule`], as in JSON.
pub const SCHEDULE_NAMES: [&str; 4] = ["cosine", "step", "constant", "triangle"];

impl std::str::FromStr for Schedule {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "cosine" => Ok(Schedule::Cosine),
            "step" => Ok(Schedule::Step),
            "constant" => Ok(Schedule::Constant),
            "triangle" => Ok(Schedule::Triangle),
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
    ///   * `Constant`: `base`;
    ///   * `Triangle` (a per-step schedule, see [`Schedule::is_per_step`]): here as if every
    ///     epoch were one step, with airbench's shape ([`TriangleShape::AIRBENCH`]):
    ///     `base * TriangleShape::AIRBENCH.factor(epoch, epochs)`; `warmup` is not read (a
    ///     configuration refuses warm-up epochs with it).
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
            Schedule::Triangle => base * TriangleShape::AIRBENCH.factor(epoch, epochs),
        }
    }

    /// Whether the rate moves within an epoch (`Triangle`), rather than once per epoch.
    pub fn is_per_step(self) -> bool {
        self == Schedule::Triangle
    }
}

/// The shape of the triangle schedule ([`Schedule::Triangle`]): airbench94's
/// `triangle(steps, start, end, peak)` (in `airbench.utils.train`), a piecewise-linear factor
/// of the base lr through `(0, start)`, `(int(peak * T), 1)` and `(T, end)` over the `T`
/// updates of a run, applied as its `LambdaLR`: update `i` (0-based) uses the factor at `i`,
/// so the last update uses the factor at `T - 1` and `end` itself is never used.
///
/// It is *not* PyTorch's `OneCycleLR(anneal_strategy='linear', three_phase=False)` with
/// `pct_start = peak`, `div_factor = 1/start`, `final_div_factor = start/end`: that one
/// peaks at step `pct_start * T - 1` (a fraction) and reaches `end` at step `T - 1`, the last
/// update; the two differ by up to 15% (at the last step of a 97-step run).
///
/// ```
/// use resnext::trainer::TriangleShape;
/// let shape = TriangleShape::AIRBENCH; // start 0.2, peak 0.23, end 0.07
/// assert!((shape.factor(0, 100) - 0.2).abs() < 1e-12);
/// assert!((shape.factor(23, 100) - 1.0).abs() < 1e-12); // int(0.23 * 100) = 23
/// assert!((shape.factor(100, 100) - 0.07).abs() < 1e-12);
/// // On the way down: 1 + (0.07 - 1) * (61 - 23) / (100 - 23).
/// assert!((shape.factor(61, 100) - (1.0 - 0.93 * 38.0 / 77.0)).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriangleShape {
    /// The factor at step 0 (airbench's `start`, 0.2).
    pub start: f64,
    /// Where the factor is 1, as a fraction of the run's steps, in `(0, 1)` (airbench's
    /// `peak`, 0.23): step `int(peak * T)`.
    pub peak: f64,
    /// The factor at step `T`, after the last update (airbench's `end`, 0.07).
    pub end: f64,
}

impl TriangleShape {
    /// airbench94's shape: `triangle(total_train_steps, start=0.2, end=0.07, peak=0.23)`.
    pub const AIRBENCH: TriangleShape = TriangleShape {
        start: 0.2,
        peak: 0.23,
        end: 0.07,
    };

    /// The factor of the base lr at (0-based) `step` of `total` (at least 1; 0 counts as 1):
    /// with `p = int(peak * total)`, `start + (1 - start) * step / p` before `p`, then
    /// `1 + (end - 1) * (step - p) / (total - p)`; a `step` beyond `total` has `end`. With
    /// `p = 0` (a run of few steps) the rise is empty and step 0 has the factor 1, as in
    /// airbench.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        let total = total.max(1);
        let step = step.min(total);
        // Python's int(peak * steps): the product in f64, truncated.
        let peak_step = ((self.peak * total as f64).max(0.0) as usize).min(total);
        if step < peak_step {
            self.start + (1.0 - self.start) * step as f64 / peak_step as f64
        } else if total == peak_step {
            1.0
        } else {
            let down = (step - peak_step) as f64 / (total - peak_step) as f64;
            1.0 + (self.end - 1.0) * down
        }
    }
}

impl Default for TriangleShape {
    /// [`TriangleShape::AIRBENCH`].
    fn default() -> Self {
        TriangleShape::AIRBENCH
    }
}
