//! The augmentation spaces of torchvision's auto-augmentation policies: which ops a policy
//! draws from, and each op's table of magnitudes (`_AUGMENTATION_SPACE`).
use super::Op;

/// The ops and magnitude tables of one of torchvision's policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AugmentationSpace {
    /// `TrivialAugmentWide._AUGMENTATION_SPACE`: 14 ops (no Invert), the wide ranges.
    TrivialWide,
    /// `RandAugment._AUGMENTATION_SPACE`: 14 ops (Identity, no Invert), the standard ranges.
    RandAugment,
    /// `AutoAugment._AUGMENTATION_SPACE`: 14 ops (Invert, no Identity), the standard ranges.
    AutoAugment,
}

/// The ops of the three spaces, in torchvision's order (the order of its dictionaries, which
/// is what a uniform draw of an index picks from).
const TRIVIAL_WIDE_OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];
const AUTO_AUGMENT_OPS: [Op; 14] = [
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
    Op::Invert,
];

impl AugmentationSpace {
    /// The ops of the space, in torchvision's order.
    pub fn ops(self) -> &'static [Op] {
        match self {
            // RandAugment's space has the same ops and order as TrivialAugmentWide's.
            AugmentationSpace::TrivialWide | AugmentationSpace::RandAugment => &TRIVIAL_WIDE_OPS,
            AugmentationSpace::AutoAugment => &AUTO_AUGMENT_OPS,
        }
    }

    /// Whether `op`'s magnitude gets a random sign (the `signed` flag of the space).
    pub fn is_signed(self, op: Op) -> bool {
        matches!(
            op,
            Op::ShearX
                | Op::ShearY
                | Op::TranslateX
                | Op::TranslateY
                | Op::Rotate
                | Op::Brightness
                | Op::Color
                | Op::Contrast
                | Op::Sharpness
        )
    }

    /// `op`'s table of `bins` magnitudes for an image of `height` x `width` pixels, as the
    /// `f32` tensor torchvision builds (`torch.linspace`, or the rounded posterize bits), read
    /// back as `f64`; `None` for ops without a magnitude (and ops not in the space).
    pub fn magnitudes(self, op: Op, bins: usize, height: usize, width: usize) -> Option<Vec<f64>> {
        if !self.ops().contains(&op) {
            return None;
        }
        let wide = self == AugmentationSpace::TrivialWide;
        let (small, translate_x, translate_y, rotate, posterize_span) = if wide {
            (0.99, 32.0, 32.0, 135.0, 6.0)
        } else {
            let (h, w) = (height as f64, width as f64);
            (0.3, 150.0 / 331.0 * w, 150.0 / 331.0 * h, 30.0, 4.0)
        };
        let blend = if wide { 0.99 } else { 0.9 };
        let table = match op {
            Op::ShearX | Op::ShearY => linspace(0.0, small, bins),
            Op::TranslateX => linspace(0.0, translate_x, bins),
            Op::TranslateY => linspace(0.0, translate_y, bins),
            Op::Rotate => linspace(0.0, rotate, bins),
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => linspace(0.0, blend, bins),
            Op::Posterize => posterize_bits(bins, posterize_span),
            Op::Solarize => linspace(1.0, 0.0, bins),
            Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert => return None,
        };
        Some(table.into_iter().map(f64::from).collect())
    }
}

/// `torch.linspace(start, end, steps)` in `f32` as libtorch's CPU kernel computes it: with
/// `step = (end - start) / (steps - 1)`, the first half `start + step * i`, the second half
/// `end - step * (steps - 1 - i)`, each a fused multiply-add (as the compiler contracts it in
/// libtorch's x86 build; checked value for value against torchvision's tables).
pub(crate) fn linspace(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// `(8 - torch.arange(bins) / ((bins - 1) / span)).round().int()`: the posterize bits.
fn posterize_bits(bins: usize, span: f64) -> Vec<f32> {
    let divisor = ((bins as f64 - 1.0) / span) as f32;
    (0..bins)
        .map(|i| (8.0 - i as f32 / divisor).round_ties_even())
        .collect()
}
