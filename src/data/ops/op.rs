//! [`Op`]: the image operations of torchvision's auto-augmentation (`_apply_op`), each applied
//! with a signed magnitude exactly as torchvision's `_AutoAugmentBase` passes it on.
use std::fmt;

use super::{color, geometry, RgbPlanes};
use crate::data::DataError;

/// One image operation of auto-augmentation, named as in torchvision's augmentation spaces.
///
/// [`Op::apply`] interprets the magnitude as torchvision's `_apply_image_or_video_transform`
/// does: shears take `degrees(atan(m))`, translations `int(m)` pixels, rotations `m` degrees,
/// the four blends a factor `1 + m`, posterize `int(m)` bits, solarize a threshold of `255 m`;
/// the other ops ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// The image unchanged.
    Identity,
    /// A horizontal shear about the top-left corner.
    ShearX,
    /// A vertical shear about the top-left corner.
    ShearY,
    /// A horizontal shift by whole pixels.
    TranslateX,
    /// A vertical shift by whole pixels.
    TranslateY,
    /// A rotation about the centre (degrees, counter-clockwise).
    Rotate,
    /// Brightness: every value scaled.
    Brightness,
    /// Saturation ("Color" in the AutoAugment paper): a blend with the grey image.
    Color,
    /// Contrast: a blend with the mean grey level.
    Contrast,
    /// Sharpness: a blend with a 3x3 blur.
    Sharpness,
    /// Posterize: fewer bits per value.
    Posterize,
    /// Solarize: values above a threshold inverted.
    Solarize,
    /// Autocontrast: each channel stretched to the full range.
    AutoContrast,
    /// Equalize: each channel's histogram equalised.
    Equalize,
    /// Invert: `255 - v`.
    Invert,
}

impl Op {
    /// Every op, in the order above.
    pub const ALL: [Op; 15] = [
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
        Op::Invert,
    ];

    /// torchvision's name of the op (`"ShearX"`, `"AutoContrast"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateX => "TranslateX",
            Op::TranslateY => "TranslateY",
            Op::Rotate => "Rotate",
            Op::Brightness => "Brightness",
            Op::Color => "Color",
            Op::Contrast => "Contrast",
            Op::Sharpness => "Sharpness",
            Op::Posterize => "Posterize",
            Op::Solarize => "Solarize",
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
            Op::Invert => "Invert",
        }
    }

    /// The op named `name` (torchvision's spelling, as [`Op::name`]).
    ///
    /// Errors: an unknown name; the message lists the valid ones.
    pub fn from_name(name: &str) -> Result<Op, DataError> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == name)
            .ok_or_else(|| DataError::InvalidConfig {
                field: "augmentation op",
                value: format!("{name:?}"),
                expected: format!("one of {}", Op::ALL.map(Op::name).join(", ")),
            })
    }

    /// Applies the op with `magnitude` (see [`Op`] for its meaning), `fill` being the value of
    /// the pixels that geometric ops bring in from outside the image.
    ///
    /// Errors: a magnitude that is not finite, or outside what torchvision accepts: below -1
    /// for the blends (a negative factor), a posterize magnitude whose `int` is not 0..=8, a
    /// solarize magnitude above 1 (a threshold above 255).
    pub fn apply(
        self,
        image: &RgbPlanes,
        magnitude: f64,
        fill: [u8; 3],
    ) -> Result<RgbPlanes, DataError> {
        self.check_magnitude(magnitude)?;
        let m = magnitude;
        Ok(match self {
            Op::Identity => image.clone(),
            Op::ShearX => geometry::shear(image, shear_degrees(m), 0.0, fill),
            Op::ShearY => geometry::shear(image, 0.0, shear_degrees(m), fill),
            Op::TranslateX => geometry::translate(image, m as i64, 0, fill),
            Op::TranslateY => geometry::translate(image, 0, m as i64, fill),
            Op::Rotate => geometry::rotate(image, m, fill),
            Op::Brightness => color::adjust_brightness(image, 1.0 + m),
            Op::Color => color::adjust_saturation(image, 1.0 + m),
            Op::Contrast => color::adjust_contrast(image, 1.0 + m),
            Op::Sharpness => color::adjust_sharpness(image, 1.0 + m),
            Op::Posterize => color::posterize(image, m as u8),
            Op::Solarize => color::solarize(image, 255.0 * m),
            Op::AutoContrast => color::autocontrast(image),
            Op::Equalize => color::equalize(image),
            Op::Invert => color::invert(image),
        })
    }

    /// The inverse affine matrix (row-major 2x3, as
    /// [`geometry::inverse_affine_matrix`] returns it) that [`Op::apply`] warps a `height` x
    /// `width` image through for `magnitude`; `None` for the ops that do not warp. A rotation
    /// by 0 or 180 degrees (or 90 and 270 of a square image) is done as an exact transposition
    /// rather than through this matrix.
    pub fn warp_matrix(self, magnitude: f64, height: usize, width: usize) -> Option<[f64; 6]> {
        let m = magnitude;
        match self {
            Op::ShearX => Some(geometry::shear_matrix(height, width, shear_degrees(m), 0.0)),
            Op::ShearY => Some(geometry::shear_matrix(height, width, 0.0, shear_degrees(m))),
            Op::TranslateX => Some(geometry::translate_matrix(m as i64, 0)),
            Op::TranslateY => Some(geometry::translate_matrix(0, m as i64)),
            Op::Rotate => Some(geometry::rotate_matrix(m)),
            _ => None,
        }
    }

    /// Checks `magnitude` against what [`Op::apply`] accepts for this op.
    pub fn check_magnitude(self, magnitude: f64) -> Result<(), DataError> {
        let bad = |expected: &str| DataError::InvalidConfig {
            field: "augmentation magnitude",
            value: format!("{magnitude} ({})", self.name()),
            expected: expected.to_string(),
        };
        if !magnitude.is_finite() {
            return Err(bad("a finite number"));
        }
        match self {
            Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness if magnitude < -1.0 => Err(
                bad("at least -1 (the factor 1 + magnitude must not be negative)"),
            ),
            Op::Posterize if magnitude <= -1.0 || magnitude >= 9.0 => {
                Err(bad("a magnitude in (-1, 9): int(magnitude) bits, 0..=8"))
            }
            Op::Solarize if magnitude > 1.0 => Err(bad(
                "at most 1 (the threshold 255 * magnitude must not exceed 255)",
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ShearX / ShearY's magnitude is the shear factor; torchvision's `affine` takes the angle
/// `atan(magnitude)` in degrees.
fn shear_degrees(magnitude: f64) -> f64 {
    magnitude.atan().to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matrix `warp_matrix` reports is the one `apply` warps through: warping with it
    /// gives `apply`'s image, and a matrix for another magnitude does not.
    #[test]
    fn warp_matrix_is_the_matrix_apply_warps_through() {
        let (h, w) = (9, 13);
        let data: Vec<u8> = (0..3 * h * w).map(|v| (v * 7 % 251) as u8).collect();
        let img = RgbPlanes::new(h, w, data).unwrap();
        let fill = [5, 6, 7];
        let cases = [
            (Op::ShearX, 0.2),
            (Op::ShearY, -0.3),
            (Op::TranslateX, 3.0),
            (Op::TranslateY, -2.0),
            (Op::Rotate, 30.0),
            (Op::Rotate, -100.0),
        ];
        for (op, m) in cases {
            let matrix = op.warp_matrix(m, h, w).unwrap();
            let applied = op.apply(&img, m, fill).unwrap();
            assert_eq!(
                geometry::warp_nearest(&img, &matrix, fill),
                applied,
                "{op} {m}"
            );
            let other = op.warp_matrix(m * 0.5, h, w).unwrap();
            assert_ne!(
                geometry::warp_nearest(&img, &other, fill),
                applied,
                "{op} {m}"
            );
        }
        assert_eq!(Op::Brightness.warp_matrix(0.5, h, w), None);
    }
}
