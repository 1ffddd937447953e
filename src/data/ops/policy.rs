//! The auto-augmentation policies of torchvision (`transforms.v2._auto_augment`):
//! [`TrivialAugmentWide`], [`RandAugment`] and [`AutoAugment`], and [`Policy`], which parses
//! the names of torchvision's reference script (`--auto-augment ta_wide | ra | cifar10 |
//! imagenet | svhn`).
//!
//! Each policy draws its ops from an [`rand::Rng`] the caller owns, with torchvision's
//! probabilities (an op index uniform over the space, a magnitude bin uniform or fixed, a
//! negative sign with probability 1/2 for signed ops, each AutoAugment op applied with its
//! sub-policy's probability); the draws themselves are not torch's stream.
use std::fmt;
use std::str::FromStr;

use rand::Rng;

use super::{AugmentationSpace, AutoAugment, AutoAugmentPolicy, Op, RgbPlanes};
use crate::data::DataError;

/// One drawn op and its signed magnitude, ready for [`Op::apply`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpDraw {
    /// The op.
    pub op: Op,
    /// Its magnitude (0 for ops without one).
    pub magnitude: f64,
}

/// Applies `draws` in order to `image`.
pub fn apply_draws(
    image: &RgbPlanes,
    draws: &[OpDraw],
    fill: [u8; 3],
) -> Result<RgbPlanes, DataError> {
    let mut out = image.clone();
    for d in draws {
        out = d.op.apply(&out, d.magnitude, fill)?;
    }
    Ok(out)
}

/// The magnitude of `op` at `bin` of `space`, negated with probability 1/2 when signed (one
/// draw from `rng` for signed ops only); 0 for ops without a magnitude table.
fn signed_magnitude<R: Rng + ?Sized>(
    rng: &mut R,
    space: AugmentationSpace,
    op: Op,
    bins: usize,
    bin: BinChoice,
    size: (usize, usize),
) -> f64 {
    let Some(table) = space.magnitudes(op, bins, size.0, size.1) else {
        return 0.0;
    };
    let index = match bin {
        BinChoice::Fixed(i) => i,
        BinChoice::Uniform => rng.gen_range(0..bins),
    };
    let m = table[index];
    if space.is_signed(op) && rng.gen_bool(0.5) {
        -m
    } else {
        m
    }
}

/// How a policy picks the magnitude bin.
#[derive(Debug, Clone, Copy)]
enum BinChoice {
    /// Always this bin.
    Fixed(usize),
    /// Uniform over the bins.
    Uniform,
}

/// Checks a number of magnitude bins (torchvision needs at least 2 for its tables).
fn check_bins(bins: usize) -> Result<(), DataError> {
    if bins < 2 {
        return Err(DataError::InvalidConfig {
            field: "num_magnitude_bins",
            value: bins.to_string(),
            expected: "at least 2".to_string(),
        });
    }
    Ok(())
}

/// torchvision's `TrivialAugmentWide(num_magnitude_bins)`: one op uniform over the 14 ops of
/// [`AugmentationSpace::TrivialWide`], with a magnitude bin uniform over the bins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrivialAugmentWide {
    bins: usize,
}

impl TrivialAugmentWide {
    /// torchvision's default number of magnitude bins.
    pub const DEFAULT_BINS: usize = 31;

    /// The policy with `num_magnitude_bins` bins.
    ///
    /// Errors: fewer than 2 bins.
    pub fn new(num_magnitude_bins: usize) -> Result<TrivialAugmentWide, DataError> {
        check_bins(num_magnitude_bins)?;
        Ok(TrivialAugmentWide {
            bins: num_magnitude_bins,
        })
    }

    /// The number of magnitude bins.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// Draws the op for an image of `height` x `width` pixels.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, height: usize, width: usize) -> OpDraw {
        let space = AugmentationSpace::TrivialWide;
        let ops = space.ops();
        let op = ops[rng.gen_range(0..ops.len())];
        let magnitude = signed_magnitude(
            rng,
            space,
            op,
            self.bins,
            BinChoice::Uniform,
            (height, width),
        );
        OpDraw { op, magnitude }
    }
}

impl Default for TrivialAugmentWide {
    fn default() -> Self {
        TrivialAugmentWide {
            bins: Self::DEFAULT_BINS,
        }
    }
}

/// torchvision's `RandAugment(num_ops, magnitude, num_magnitude_bins)`: `num_ops` ops, each
/// uniform over the 14 ops of [`AugmentationSpace::RandAugment`], all at bin `magnitude`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RandAugment {
    num_ops: usize,
    magnitude: usize,
    bins: usize,
}

impl RandAugment {
    /// torchvision's defaults: 2 ops at magnitude 9 of 31 bins.
    pub const DEFAULT: RandAugment = RandAugment {
        num_ops: 2,
        magnitude: 9,
        bins: 31,
    };

    /// The policy of `num_ops` ops at bin `magnitude` of `num_magnitude_bins`.
    ///
    /// Errors: fewer than 2 bins, or `magnitude >= num_magnitude_bins` (torchvision would
    /// index past its table).
    pub fn new(
        num_ops: usize,
        magnitude: usize,
        num_magnitude_bins: usize,
    ) -> Result<RandAugment, DataError> {
        check_bins(num_magnitude_bins)?;
        if magnitude >= num_magnitude_bins {
            return Err(DataError::InvalidConfig {
                field: "RandAugment magnitude",
                value: magnitude.to_string(),
                expected: format!(
                    "a bin index in 0..={} (num_magnitude_bins = {num_magnitude_bins})",
                    num_magnitude_bins - 1
                ),
            });
        }
        Ok(RandAugment {
            num_ops,
            magnitude,
            bins: num_magnitude_bins,
        })
    }

    /// Number of ops applied to each image.
    pub fn num_ops(&self) -> usize {
        self.num_ops
    }

    /// The magnitude bin.
    pub fn magnitude(&self) -> usize {
        self.magnitude
    }

    /// The number of magnitude bins.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// Draws the `num_ops` ops for an image of `height` x `width` pixels, in order.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, height: usize, width: usize) -> Vec<OpDraw> {
        let space = AugmentationSpace::RandAugment;
        let ops = space.ops();
        (0..self.num_ops)
            .map(|_| {
                let op = ops[rng.gen_range(0..ops.len())];
                let bin = BinChoice::Fixed(self.magnitude);
                let magnitude = signed_magnitude(rng, space, op, self.bins, bin, (height, width));
                OpDraw { op, magnitude }
            })
            .collect()
    }
}

impl Default for RandAugment {
    fn default() -> Self {
        RandAugment::DEFAULT
    }
}

/// An auto-augmentation policy, as torchvision's reference script chooses it
/// (`--auto-augment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// `ta_wide`: [`TrivialAugmentWide`].
    TrivialAugmentWide(TrivialAugmentWide),
    /// `ra`: [`RandAugment`].
    RandAugment(RandAugment),
    /// `imagenet`, `cifar10`, `svhn`: [`AutoAugment`] with that policy.
    AutoAugment(AutoAugment),
}

impl Policy {
    /// The names [`Policy::from_name`] accepts.
    pub const NAMES: [&'static str; 5] = ["ta_wide", "ra", "imagenet", "cifar10", "svhn"];

    /// The policy of torchvision's reference-script name: `ta_wide` (31 bins), `ra` (2 ops at
    /// magnitude 9 of 31, the script's `--ra-magnitude` default; see [`RandAugment::new`] for
    /// others), `imagenet`, `cifar10` or `svhn` (AutoAugment). The script's `augmix` is not
    /// implemented.
    ///
    /// Errors: any other name; the message lists the valid ones.
    pub fn from_name(name: &str) -> Result<Policy, DataError> {
        Ok(match name {
            "ta_wide" => Policy::TrivialAugmentWide(TrivialAugmentWide::default()),
            "ra" => Policy::RandAugment(RandAugment::default()),
            _ => {
                let policy = AutoAugmentPolicy::ALL
                    .into_iter()
                    .find(|p| p.name() == name)
                    .ok_or_else(|| DataError::InvalidConfig {
                        field: "auto_augment",
                        value: format!("{name:?}"),
                        expected: format!("one of {}", Policy::NAMES.join(", ")),
                    })?;
                Policy::AutoAugment(AutoAugment { policy })
            }
        })
    }

    /// The name [`Policy::from_name`] takes for this kind of policy.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::TrivialAugmentWide(_) => "ta_wide",
            Policy::RandAugment(_) => "ra",
            Policy::AutoAugment(a) => a.policy.name(),
        }
    }

    /// Draws the ops applied to an image of `height` x `width` pixels, in order.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, height: usize, width: usize) -> Vec<OpDraw> {
        match self {
            Policy::TrivialAugmentWide(p) => vec![p.draw(rng, height, width)],
            Policy::RandAugment(p) => p.draw(rng, height, width),
            Policy::AutoAugment(p) => p.draw(rng, height, width),
        }
    }

    /// Draws the ops for `image` and applies them, `fill` being the value of the pixels that
    /// geometric ops bring in (torchvision's default: 0).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        image: &RgbPlanes,
        fill: [u8; 3],
    ) -> Result<RgbPlanes, DataError> {
        let draws = self.draw(rng, image.height(), image.width());
        apply_draws(image, &draws, fill)
    }
}

impl FromStr for Policy {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Policy, DataError> {
        Policy::from_name(s)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
