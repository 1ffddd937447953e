//! Random crop with zero padding and horizontal flip, fused with normalisation, on one image.
//!
//! This is torchvision's `RandomCrop(32, padding=4)` then `RandomHorizontalFlip()` then
//! `ToTensor()` + `Normalize(mean, std)`: the image is padded with 4 zero pixels on every side
//! (zero in pixel space, so a padded pixel becomes `-mean / std` after normalisation), a 32x32
//! window at offset `(dy, dx)` in `0..=8` is cut out of the 40x40 padded image, and the window
//! is mirrored left-right when `flip`.
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Affine, DataError, Normalization};

/// Side of a CIFAR image.
pub(crate) const SIDE: usize = 32;
/// Pixels of one plane.
const PLANE: usize = SIDE * SIDE;
/// Values of one image (3 planes).
pub(crate) const PIXELS: usize = 3 * PLANE;
/// Zero padding on each side.
pub const PADDING: u8 = 4;
/// Largest crop offset (`2 * PADDING`): offsets are uniform over `0..=MAX_OFFSET`.
pub const MAX_OFFSET: u8 = 2 * PADDING;

/// The random choices of one augmented image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Left edge of the crop in the padded 40x40 image, `0..=8` (4 is no shift).
    pub dx: u8,
    /// Top edge of the crop in the padded 40x40 image, `0..=8` (4 is no shift).
    pub dy: u8,
    /// Mirror the crop left-right.
    pub flip: bool,
}

impl AugmentParams {
    /// No crop shift and no flip: the image unchanged.
    pub const IDENTITY: AugmentParams = AugmentParams {
        dx: PADDING,
        dy: PADDING,
        flip: false,
    };

    /// Draws one image's parameters: `dy` then `dx`, each uniform over `0..=8`, then `flip`
    /// with probability 1/2 (the order of torchvision's draws).
    pub fn draw<R: Rng + ?Sized>(rng: &mut R) -> AugmentParams {
        let dy = rng.gen_range(0..=MAX_OFFSET);
        let dx = rng.gen_range(0..=MAX_OFFSET);
        let flip = rng.gen_bool(0.5);
        AugmentParams { dx, dy, flip }
    }

    /// Checks that both offsets are within `0..=8`.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.dx > MAX_OFFSET || self.dy > MAX_OFFSET {
            return Err(DataError::InvalidConfig {
                field: "augment offsets (dx, dy)",
                value: format!("({}, {})", self.dx, self.dy),
                expected: format!("values in 0..={MAX_OFFSET}"),
            });
        }
        Ok(())
    }
}

/// Augments and normalises one image: `image` is 3072 bytes (`[3, 32, 32]`, red, green, blue
/// planes, row-major), `out` receives 3072 floats in the same layout.
///
/// `params = None` only normalises.
pub fn augment_image(
    image: &[u8],
    params: Option<AugmentParams>,
    norm: &Normalization,
    out: &mut [f32],
) -> Result<(), DataError> {
    norm.validate()?;
    if let Some(p) = &params {
        p.validate()?;
    }
    let len_error = |what: &'static str, len: usize| DataError::InvalidTensor {
        what,
        expected: format!("{PIXELS} values ([3, 32, 32])"),
        actual: format!("{len} values"),
    };
    let image: &[u8; PIXELS] = image
        .try_into()
        .map_err(|_| len_error("image", image.len()))?;
    let out_len = out.len();
    let out: &mut [f32; PIXELS] = out.try_into().map_err(|_| len_error("output", out_len))?;
    fill_image(image, params, &norm.affine(), out);
    Ok(())
}

/// The fast kernel behind [`augment_image`]; offsets must be in `0..=8`.
pub(crate) fn fill_image(
    src: &[u8; PIXELS],
    params: Option<AugmentParams>,
    affine: &Affine,
    out: &mut [f32; PIXELS],
) {
    let p = params.unwrap_or(AugmentParams::IDENTITY);
    // Shift of the source relative to the output: source = output + shift.
    let sx = isize::from(p.dx.min(MAX_OFFSET)) - isize::from(PADDING);
    let sy = isize::from(p.dy.min(MAX_OFFSET)) - isize::from(PADDING);
    let side = SIDE as isize;
    for c in 0..3 {
        let (scale, shift) = (affine.scale[c], affine.shift[c]);
        let plane = &src[c * PLANE..(c + 1) * PLANE];
        let out_plane = &mut out[c * PLANE..(c + 1) * PLANE];
        for (y, out_row) in out_plane.chunks_exact_mut(SIDE).enumerate() {
            let row_y = y as isize + sy;
            if !(0..side).contains(&row_y) {
                out_row.fill(shift);
                continue;
            }
            let row = &plane[row_y as usize * SIDE..(row_y as usize + 1) * SIDE];
            if p.flip {
                // out[x] = row[31 - x + sx], valid for x in [max(0, sx), min(32, 32 + sx)).
                let x0 = sx.max(0) as usize;
                let x1 = (side + sx).min(side) as usize;
                let s_lo = (side - x1 as isize + sx) as usize;
                let s_hi = (side - 1 - x0 as isize + sx) as usize + 1;
                out_row[..x0].fill(shift);
                out_row[x1..].fill(shift);
                for (o, &px) in out_row[x0..x1].iter_mut().zip(row[s_lo..s_hi].iter().rev()) {
                    *o = f32::from(px) * scale + shift;
                }
            } else {
                // out[x] = row[x + sx], valid for x in [max(0, -sx), min(32, 32 - sx)).
                let x0 = (-sx).max(0) as usize;
                let x1 = (side - sx).min(side) as usize;
                let s0 = (x0 as isize + sx) as usize;
                out_row[..x0].fill(shift);
                out_row[x1..].fill(shift);
                for (o, &px) in out_row[x0..x1].iter_mut().zip(&row[s0..s0 + (x1 - x0)]) {
                    *o = f32::from(px) * scale + shift;
                }
            }
        }
    }
}
