//! torchvision's `RandomErasing(p, scale, ratio, value)` (`transforms.v2._augment`): with
//! probability `p`, a rectangle of random area and aspect ratio is set to `value`.
//!
//! It works on the normalised `f32` image (`[C, H, W]`), as torchvision's reference recipe
//! applies it after `Normalize` with `value = 0` (the mean colour); [`erase_u8`] does the same
//! on [`RgbPlanes`] for callers that erase before normalising. The draw follows
//! `RandomErasing.make_params`: up to 10 attempts of an area uniform in `scale` times the image
//! area and an aspect ratio log-uniform in `ratio`, sides `round(sqrt(area * ratio))` and
//! `round(sqrt(area / ratio))` (half to even, as Python's `round`), kept when both are smaller
//! than the image's; a position uniform over where it fits. When no attempt fits, nothing is
//! erased (torchvision's `v = None`).
use rand::Rng;

use super::RgbPlanes;
use crate::data::DataError;

/// The rectangle erased from one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EraseBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// The parameters of random erasing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomErasing {
    /// Probability that an image is erased at all.
    pub p: f64,
    /// Range of the erased area, as a fraction of the image area.
    pub scale: (f64, f64),
    /// Range of the aspect ratio (height / width) of the rectangle, drawn log-uniformly.
    pub ratio: (f64, f64),
    /// The value written into the rectangle (on the normalised image: 0 is the mean colour).
    pub value: f32,
}

impl Default for RandomErasing {
    /// torchvision's defaults: `p = 0.5`, `scale = (0.02, 0.33)`, `ratio = (0.3, 3.3)`,
    /// `value = 0`.
    fn default() -> Self {
        RandomErasing {
            p: 0.5,
            scale: (0.02, 0.33),
            ratio: (0.3, 3.3),
            value: 0.0,
        }
    }
}

impl RandomErasing {
    /// Checks the parameters: `p` in `[0, 1]`, `0 <= scale.0 <= scale.1 <= 1`,
    /// `0 < ratio.0 <= ratio.1` (finite), `value` finite.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |field: &'static str, value: String, expected: &str| DataError::InvalidConfig {
            field,
            value,
            expected: expected.to_string(),
        };
        if !(0.0..=1.0).contains(&self.p) {
            return Err(bad(
                "random erasing p",
                self.p.to_string(),
                "a probability in [0, 1]",
            ));
        }
        let (s0, s1) = self.scale;
        if !(0.0 <= s0 && s0 <= s1 && s1 <= 1.0) {
            return Err(bad(
                "random erasing scale",
                format!("({s0}, {s1})"),
                "0 <= min <= max <= 1 (fractions of the image area)",
            ));
        }
        let (r0, r1) = self.ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return Err(bad(
                "random erasing ratio",
                format!("({r0}, {r1})"),
                "0 < min <= max, finite (aspect ratios)",
            ));
        }
        if !self.value.is_finite() {
            return Err(bad(
                "random erasing value",
                self.value.to_string(),
                "a finite number",
            ));
        }
        Ok(())
    }

    /// Draws the rectangle to erase from an image of `height` x `width` pixels: `None` when the
    /// image is left alone (probability `1 - p`, or no attempt fits). The parameters must be
    /// valid ([`RandomErasing::validate`]).
    pub fn draw<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        height: usize,
        width: usize,
    ) -> Option<EraseBox> {
        if rng.gen::<f64>() >= self.p {
            return None;
        }
        let area = (height * width) as f64;
        let (log_r0, log_r1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let erase_area = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_r0, log_r1).exp();
            let h = (erase_area * aspect).sqrt().round_ties_even() as usize;
            let w = (erase_area / aspect).sqrt().round_ties_even() as usize;
            if !(h < height && w < width) {
                continue;
            }
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return Some(EraseBox {
                top,
                left,
                height: h,
                width: w,
            });
        }
        None
    }

    /// Draws and erases on `image`, a normalised `[channels, height, width]` `f32` image;
    /// returns the rectangle erased, if any.
    ///
    /// Errors: invalid parameters, or an `image` length other than `channels * height * width`.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        image: &mut [f32],
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Option<EraseBox>, DataError> {
        self.validate()?;
        check_len(image.len(), channels, height, width)?;
        let b = self.draw(rng, height, width);
        if let Some(b) = b {
            erase(image, channels, height, width, b, self.value)?;
        }
        Ok(b)
    }
}

/// A uniform draw in `[lo, hi)` (`lo` when the range is empty).
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// Checks that `len` is `channels * height * width`.
fn check_len(len: usize, channels: usize, height: usize, width: usize) -> Result<(), DataError> {
    let expected = channels
        .checked_mul(height)
        .and_then(|v| v.checked_mul(width));
    if expected != Some(len) {
        return Err(DataError::InvalidTensor {
            what: "image to erase",
            expected: format!("{channels} * {height} * {width} values ([C, H, W])"),
            actual: format!("{len} values"),
        });
    }
    Ok(())
}

/// Checks that `b` lies inside an image of `height` x `width` pixels.
fn check_box(b: EraseBox, height: usize, width: usize) -> Result<(), DataError> {
    if b.top + b.height > height || b.left + b.width > width {
        return Err(DataError::InvalidConfig {
            field: "erase box (top, left, height, width)",
            value: format!("({}, {}, {}, {})", b.top, b.left, b.height, b.width),
            expected: format!("a rectangle inside the {height}x{width} image"),
        });
    }
    Ok(())
}

/// torchvision's `F.erase(image, i, j, h, w, v)` on a `[channels, height, width]` `f32` image:
/// the rectangle `b` set to `value` in every channel.
///
/// Errors: a wrong `image` length, or a rectangle outside the image.
pub fn erase(
    image: &mut [f32],
    channels: usize,
    height: usize,
    width: usize,
    b: EraseBox,
    value: f32,
) -> Result<(), DataError> {
    check_len(image.len(), channels, height, width)?;
    check_box(b, height, width)?;
    if height == 0 || width == 0 {
        return Ok(());
    }
    for plane in image.chunks_exact_mut(height * width) {
        for row in plane.chunks_exact_mut(width).skip(b.top).take(b.height) {
            row[b.left..b.left + b.width].fill(value);
        }
    }
    Ok(())
}

/// [`erase`] on a `u8` image.
///
/// Errors: a rectangle outside the image.
pub fn erase_u8(image: &mut RgbPlanes, b: EraseBox, value: u8) -> Result<(), DataError> {
    let (height, width) = (image.height(), image.width());
    check_box(b, height, width)?;
    for plane in image.as_mut_slice().chunks_exact_mut(height * width) {
        for row in plane.chunks_exact_mut(width).skip(b.top).take(b.height) {
            row[b.left..b.left + b.width].fill(value);
        }
    }
    Ok(())
}
