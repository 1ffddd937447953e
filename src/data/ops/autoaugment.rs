//! torchvision's `AutoAugment(policy)`: 25 sub-policies of two ops per dataset (the policies
//! learned in "AutoAugment: Learning Augmentation Strategies from Data"), one sub-policy
//! uniform per image, each of its ops applied with its probability at its magnitude bin of
//! 10.
use std::fmt;

use rand::Rng;

use super::{AugmentationSpace, Op, OpDraw};

/// One op of a sub-policy: the op, the probability it is applied, its magnitude bin (of 10;
/// `None` for ops without a magnitude).
pub type SubPolicyOp = (Op, f64, Option<u8>);
/// A sub-policy: two ops applied in order.
pub type SubPolicy = [SubPolicyOp; 2];

/// AutoAugment's number of magnitude bins.
pub const AUTO_AUGMENT_BINS: usize = 10;

/// The dataset an AutoAugment policy was learned on (torchvision's `AutoAugmentPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutoAugmentPolicy {
    /// `AutoAugmentPolicy.IMAGENET` (`"imagenet"`).
    ImageNet,
    /// `AutoAugmentPolicy.CIFAR10` (`"cifar10"`).
    Cifar10,
    /// `AutoAugmentPolicy.SVHN` (`"svhn"`).
    Svhn,
}

impl AutoAugmentPolicy {
    /// Every policy.
    pub const ALL: [AutoAugmentPolicy; 3] = [
        AutoAugmentPolicy::ImageNet,
        AutoAugmentPolicy::Cifar10,
        AutoAugmentPolicy::Svhn,
    ];

    /// torchvision's value of the policy (`"imagenet"`, `"cifar10"`, `"svhn"`).
    pub fn name(self) -> &'static str {
        match self {
            AutoAugmentPolicy::ImageNet => "imagenet",
            AutoAugmentPolicy::Cifar10 => "cifar10",
            AutoAugmentPolicy::Svhn => "svhn",
        }
    }

    /// The 25 sub-policies, in torchvision's order.
    pub fn sub_policies(self) -> &'static [SubPolicy; 25] {
        match self {
            AutoAugmentPolicy::ImageNet => &IMAGENET_POLICY,
            AutoAugmentPolicy::Cifar10 => &CIFAR10_POLICY,
            AutoAugmentPolicy::Svhn => &SVHN_POLICY,
        }
    }
}

impl fmt::Display for AutoAugmentPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// torchvision's `AutoAugment(policy)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AutoAugment {
    /// The learned policy it applies.
    pub policy: AutoAugmentPolicy,
}

impl AutoAugment {
    /// Draws the ops applied to an image of `height` x `width` pixels (0, 1 or 2 of them, in
    /// order): a sub-policy uniform over the 25, then each of its ops with its probability,
    /// its magnitude negated with probability 1/2 when signed.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R, height: usize, width: usize) -> Vec<OpDraw> {
        let subs = self.policy.sub_policies();
        let sub = &subs[rng.gen_range(0..subs.len())];
        let space = AugmentationSpace::AutoAugment;
        let mut draws = Vec::with_capacity(2);
        for &(op, probability, bin) in sub {
            if rng.gen::<f64>() >= probability {
                continue;
            }
            let table = space.magnitudes(op, AUTO_AUGMENT_BINS, height, width);
            let magnitude = match (table, bin) {
                (Some(t), Some(b)) => {
                    let m = t[usize::from(b)];
                    if space.is_signed(op) && rng.gen_bool(0.5) {
                        -m
                    } else {
                        m
                    }
                }
                _ => 0.0,
            };
            draws.push(OpDraw { op, magnitude });
        }
        draws
    }
}

/// torchvision's `AutoAugmentPolicy.IMAGENET` sub-policies.
const IMAGENET_POLICY: [SubPolicy; 25] = [
    [(Op::Posterize, 0.4, Some(8)), (Op::Rotate, 0.6, Some(9))],
    [(Op::Solarize, 0.6, Some(5)), (Op::AutoContrast, 0.6, None)],
    [(Op::Equalize, 0.8, None), (Op::Equalize, 0.6, None)],
    [(Op::Posterize, 0.6, Some(7)), (Op::Posterize, 0.6, Some(6))],
    [(Op::Equalize, 0.4, None), (Op::Solarize, 0.2, Some(4))],
    [(Op::Equalize, 0.4, None), (Op::Rotate, 0.8, Some(8))],
    [(Op::Solarize, 0.6, Some(3)), (Op::Equalize, 0.6, None)],
    [(Op::Posterize, 0.8, Some(5)), (Op::Equalize, 1.0, None)],
    [(Op::Rotate, 0.2, Some(3)), (Op::Solarize, 0.6, Some(8))],
    [(Op::Equalize, 0.6, None), (Op::Posterize, 0.4, Some(6))],
    [(Op::Rotate, 0.8, Some(8)), (Op::Color, 0.4, Some(0))],
    [(Op::Rotate, 0.4, Some(9)), (Op::Equalize, 0.6, None)],
    [(Op::Equalize, 0.0, None), (Op::Equalize, 0.8, None)],
    [(Op::Invert, 0.6, None), (Op::Equalize, 1.0, None)],
    [(Op::Color, 0.6, Some(4)), (Op::Contrast, 1.0, Some(8))],
    [(Op::Rotate, 0.8, Some(8)), (Op::Color, 1.0, Some(2))],
    [(Op::Color, 0.8, Some(8)), (Op::Solarize, 0.8, Some(7))],
    [(Op::Sharpness, 0.4, Some(7)), (Op::Invert, 0.6, None)],
    [(Op::ShearX, 0.6, Some(5)), (Op::Equalize, 1.0, None)],
    [(Op::Color, 0.4, Some(0)), (Op::Equalize, 0.6, None)],
    [(Op::Equalize, 0.4, None), (Op::Solarize, 0.2, Some(4))],
    [(Op::Solarize, 0.6, Some(5)), (Op::AutoContrast, 0.6, None)],
    [(Op::Invert, 0.6, None), (Op::Equalize, 1.0, None)],
    [(Op::Color, 0.6, Some(4)), (Op::Contrast, 1.0, Some(8))],
    [(Op::Equalize, 0.8, None), (Op::Equalize, 0.6, None)],
];

/// torchvision's `AutoAugmentPolicy.CIFAR10` sub-policies.
const CIFAR10_POLICY: [SubPolicy; 25] = [
    [(Op::Invert, 0.1, None), (Op::Contrast, 0.2, Some(6))],
    [(Op::Rotate, 0.7, Some(2)), (Op::TranslateX, 0.3, Some(9))],
    [(Op::Sharpness, 0.8, Some(1)), (Op::Sharpness, 0.9, Some(3))],
    [(Op::ShearY, 0.5, Some(8)), (Op::TranslateY, 0.7, Some(9))],
    [(Op::AutoContrast, 0.5, None), (Op::Equalize, 0.9, None)],
    [(Op::ShearY, 0.2, Some(7)), (Op::Posterize, 0.3, Some(7))],
    [(Op::Color, 0.4, Some(3)), (Op::Brightness, 0.6, Some(7))],
    [
        (Op::Sharpness, 0.3, Some(9)),
        (Op::Brightness, 0.7, Some(9)),
    ],
    [(Op::Equalize, 0.6, None), (Op::Equalize, 0.5, None)],
    [(Op::Contrast, 0.6, Some(7)), (Op::Sharpness, 0.6, Some(5))],
    [(Op::Color, 0.7, Some(7)), (Op::TranslateX, 0.5, Some(8))],
    [(Op::Equalize, 0.3, None), (Op::AutoContrast, 0.4, None)],
    [
        (Op::TranslateY, 0.4, Some(3)),
        (Op::Sharpness, 0.2, Some(6)),
    ],
    [(Op::Brightness, 0.9, Some(6)), (Op::Color, 0.2, Some(8))],
    [(Op::Solarize, 0.5, Some(2)), (Op::Invert, 0.0, None)],
    [(Op::Equalize, 0.2, None), (Op::AutoContrast, 0.6, None)],
    [(Op::Equalize, 0.2, None), (Op::Equalize, 0.6, None)],
    [(Op::Color, 0.9, Some(9)), (Op::Equalize, 0.6, None)],
    [(Op::AutoContrast, 0.8, None), (Op::Solarize, 0.2, Some(8))],
    [(Op::Brightness, 0.1, Some(3)), (Op::Color, 0.7, Some(0))],
    [(Op::Solarize, 0.4, Some(5)), (Op::AutoContrast, 0.9, None)],
    [
        (Op::TranslateY, 0.9, Some(9)),
        (Op::TranslateY, 0.7, Some(9)),
    ],
    [(Op::AutoContrast, 0.9, None), (Op::Solarize, 0.8, Some(3))],
    [(Op::Equalize, 0.8, None), (Op::Invert, 0.1, None)],
    [
        (Op::TranslateY, 0.7, Some(9)),
        (Op::AutoContrast, 0.9, None),
    ],
];

/// torchvision's `AutoAugmentPolicy.SVHN` sub-policies.
const SVHN_POLICY: [SubPolicy; 25] = [
    [(Op::ShearX, 0.9, Some(4)), (Op::Invert, 0.2, None)],
    [(Op::ShearY, 0.9, Some(8)), (Op::Invert, 0.7, None)],
    [(Op::Equalize, 0.6, None), (Op::Solarize, 0.6, Some(6))],
    [(Op::Invert, 0.9, None), (Op::Equalize, 0.6, None)],
    [(Op::Equalize, 0.6, None), (Op::Rotate, 0.9, Some(3))],
    [(Op::ShearX, 0.9, Some(4)), (Op::AutoContrast, 0.8, None)],
    [(Op::ShearY, 0.9, Some(8)), (Op::Invert, 0.4, None)],
    [(Op::ShearY, 0.9, Some(5)), (Op::Solarize, 0.2, Some(6))],
    [(Op::Invert, 0.9, None), (Op::AutoContrast, 0.8, None)],
    [(Op::Equalize, 0.6, None), (Op::Rotate, 0.9, Some(3))],
    [(Op::ShearX, 0.9, Some(4)), (Op::Solarize, 0.3, Some(3))],
    [(Op::ShearY, 0.8, Some(8)), (Op::Invert, 0.7, None)],
    [(Op::Equalize, 0.9, None), (Op::TranslateY, 0.6, Some(6))],
    [(Op::Invert, 0.9, None), (Op::Equalize, 0.6, None)],
    [(Op::Contrast, 0.3, Some(3)), (Op::Rotate, 0.8, Some(4))],
    [(Op::Invert, 0.8, None), (Op::TranslateY, 0.0, Some(2))],
    [(Op::ShearY, 0.7, Some(6)), (Op::Solarize, 0.4, Some(8))],
    [(Op::Invert, 0.6, None), (Op::Rotate, 0.8, Some(4))],
    [(Op::ShearY, 0.3, Some(7)), (Op::TranslateX, 0.9, Some(3))],
    [(Op::ShearX, 0.1, Some(6)), (Op::Invert, 0.6, None)],
    [(Op::Solarize, 0.7, Some(2)), (Op::TranslateY, 0.6, Some(7))],
    [(Op::ShearY, 0.8, Some(4)), (Op::Invert, 0.8, None)],
    [(Op::ShearX, 0.7, Some(9)), (Op::TranslateY, 0.8, Some(3))],
    [(Op::ShearY, 0.8, Some(5)), (Op::AutoContrast, 0.7, None)],
    [(Op::ShearX, 0.7, Some(2)), (Op::Invert, 0.1, None)],
];
