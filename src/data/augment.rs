//! Random crop with padding and horizontal flip, fused with normalisation, on one image.
//!
//! By default this is torchvision's `RandomCrop(32, padding=4)` then `RandomHorizontalFlip()`
//! then `ToTensor()` + `Normalize(mean, std)`: the image is padded with 4 zero pixels on every
//! side (zero in pixel space, so a padded pixel becomes `-mean / std` after normalisation), a
//! 32x32 window at offset `(dy, dx)` in `0..=8` is cut out of the 40x40 padded image, and the
//! window is mirrored left-right when `flip`. [`CropFlip`] changes the padding (`p` pixels,
//! offsets in `0..=2p`), pads by reflection instead (torchvision's `padding_mode='reflect'`,
//! airbench's `F.pad(images, (2,) * 4, 'reflect')`), and chooses how the flip is drawn
//! ([`FlipMode`]).
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Affine, DataError, Normalization};

/// Side of a CIFAR image.
pub(crate) const SIDE: usize = 32;
/// Pixels of one plane.
const PLANE: usize = SIDE * SIDE;
/// Values of one image (3 planes).
pub(crate) const PIXELS: usize = 3 * PLANE;
/// Zero padding on each side (the default of [`CropFlip::padding`]).
pub const PADDING: u8 = 4;
/// Largest crop offset (`2 * PADDING`): offsets are uniform over `0..=MAX_OFFSET`.
pub const MAX_OFFSET: u8 = 2 * PADDING;
/// Largest [`CropFlip::padding`] (it must also be below the image's side).
pub const MAX_PADDING: u8 = 16;

/// What the crop pads the image with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingMode {
    /// Zero pixels (torchvision's `padding_mode='constant'`, fill 0): the default.
    #[default]
    Zeros,
    /// The image mirrored at its edges without repeating the edge pixel (torchvision's
    /// `padding_mode='reflect'`, `torch.nn.functional.pad(..., mode='reflect')`): padding
    /// pixel `-k` is pixel `k`. Needs a padding below the image's side.
    Reflect,
}

impl PaddingMode {
    /// The names, as configurations and flags spell them.
    pub const NAMES: [&'static str; 2] = ["zeros", "reflect"];

    /// The name of this mode.
    pub fn name(self) -> &'static str {
        match self {
            PaddingMode::Zeros => "zeros",
            PaddingMode::Reflect => "reflect",
        }
    }
}

impl FromStr for PaddingMode {
    type Err = String;

    /// `zeros` or `reflect`; the error lists them.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zeros" => Ok(PaddingMode::Zeros),
            "reflect" => Ok(PaddingMode::Reflect),
            _ => Err(format!("one of {}", Self::NAMES.join(", "))),
        }
    }
}

impl fmt::Display for PaddingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the horizontal flip of each training image is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlipMode {
    /// A fresh coin per image and epoch (torchvision's `RandomHorizontalFlip()`): the default.
    #[default]
    Random,
    /// airbench's `altflip`: image `i` gets one coin for the whole run, drawn from the seed
    /// and its index in the dataset ([`base_flip`](super::base_flip)), and is flipped at epoch
    /// `e` iff that coin XOR `e` is odd, so it is seen mirrored in exactly every other epoch.
    Alternate,
    /// Never flipped.
    None,
}

impl FlipMode {
    /// The names, as configurations and flags spell them.
    pub const NAMES: [&'static str; 3] = ["random", "alternate", "none"];

    /// The name of this mode.
    pub fn name(self) -> &'static str {
        match self {
            FlipMode::Random => "random",
            FlipMode::Alternate => "alternate",
            FlipMode::None => "none",
        }
    }
}

impl FromStr for FlipMode {
    type Err = String;

    /// `random`, `alternate` or `none`; the error lists them.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(FlipMode::Random),
            "alternate" => Ok(FlipMode::Alternate),
            "none" => Ok(FlipMode::None),
            _ => Err(format!("one of {}", Self::NAMES.join(", "))),
        }
    }
}

impl fmt::Display for FlipMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The settings of the crop and flip stage (the stage itself is on with
/// [`BatchConfig::augment`](super::BatchConfig::augment)): `padding` pixels of
/// `padding_mode` on each side, a random crop back to the image's size, the flip as `flip`
/// says. The default is torchvision's `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`,
/// drawn exactly as earlier versions drew it.
///
/// ```
/// use resnext::data::{CropFlip, FlipMode, PaddingMode};
/// // airbench94's translation and flip.
/// let airbench: CropFlip = serde_json::from_str(
///     r#"{ "padding": 2, "padding_mode": "reflect", "flip": "alternate" }"#,
/// ).unwrap();
/// assert_eq!(airbench.padding_mode, PaddingMode::Reflect);
/// assert!(airbench.validate(32).is_ok() && airbench.validate(2).is_err());
/// assert_eq!(CropFlip::default().to_string(), "zeros padding 4, random flip");
/// assert_eq!(CropFlip { flip: FlipMode::None, ..CropFlip::default() }.max_offset(), 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CropFlip {
    /// Pixels of padding on each side, `0..=16`, and below the image's side with reflection (4
    /// by default; 0 for no translation). Crop offsets are uniform over `0..=2 * padding` per
    /// axis.
    pub padding: u8,
    /// What the padding is made of.
    pub padding_mode: PaddingMode,
    /// How the flip is chosen.
    pub flip: FlipMode,
}

impl Default for CropFlip {
    /// 4 pixels of zero padding, a random flip.
    fn default() -> Self {
        CropFlip {
            padding: PADDING,
            padding_mode: PaddingMode::Zeros,
            flip: FlipMode::Random,
        }
    }
}

impl fmt::Display for CropFlip {
    /// As `reflect padding 2, alternate flip`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} padding {}, {} flip",
            self.padding_mode, self.padding, self.flip
        )
    }
}

impl CropFlip {
    /// Largest crop offset, `2 * padding`.
    pub fn max_offset(&self) -> u8 {
        self.padding.saturating_mul(2)
    }

    /// Whether these are the default settings.
    pub fn is_default(&self) -> bool {
        *self == CropFlip::default()
    }

    /// Checks the padding against [`MAX_PADDING`] and, with [`PaddingMode::Reflect`] on images
    /// of `side` pixels, that it is below the side (torch's limit for reflection; zero padding
    /// may be wider, as torchvision's `RandomCrop` allows).
    ///
    /// Errors: [`DataError::InvalidConfig`] naming `crop_padding`.
    pub fn validate(&self, side: usize) -> Result<(), DataError> {
        let expected = if self.padding > MAX_PADDING {
            format!("0..={MAX_PADDING}")
        } else if self.padding_mode == PaddingMode::Reflect && usize::from(self.padding) >= side {
            format!(
                "below the image side {side} with reflect padding (0..={})",
                side.saturating_sub(1)
            )
        } else {
            return Ok(());
        };
        Err(DataError::InvalidConfig {
            field: "crop_padding",
            value: self.padding.to_string(),
            expected,
        })
    }

    /// Draws one image's crop: `dy` then `dx`, each uniform over `0..=2 * padding`, then the
    /// coin of a random flip with probability 1/2 (the order of torchvision's draws). The coin
    /// is drawn whatever [`flip`](Self::flip) says, so the crops do not depend on the flip
    /// mode; [`crop_flip_params`](super::crop_flip_params) replaces it for the other modes.
    /// With the default padding these are exactly [`AugmentParams::draw`]'s draws.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> AugmentParams {
        let max = self.max_offset();
        let dy = rng.gen_range(0..=max);
        let dx = rng.gen_range(0..=max);
        let flip = rng.gen_bool(0.5);
        AugmentParams { dx, dy, flip }
    }

    /// The parameters that leave an image unchanged under these settings: offsets
    /// `(padding, padding)`, no flip.
    pub fn identity(&self) -> AugmentParams {
        AugmentParams {
            dx: self.padding,
            dy: self.padding,
            flip: false,
        }
    }
}

/// The random choices of one augmented image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Left edge of the crop in the padded image, `0..=2 * padding` (`padding`, 4 by default,
    /// is no shift).
    pub dx: u8,
    /// Top edge of the crop in the padded image, `0..=2 * padding` (`padding` is no shift).
    pub dy: u8,
    /// Mirror the crop left-right.
    pub flip: bool,
}

impl AugmentParams {
    /// No crop shift and no flip with the default padding: the image unchanged.
    pub const IDENTITY: AugmentParams = AugmentParams {
        dx: PADDING,
        dy: PADDING,
        flip: false,
    };

    /// Draws one image's parameters with the default padding: `dy` then `dx`, each uniform
    /// over `0..=8`, then `flip` with probability 1/2 (the order of torchvision's draws).
    pub fn draw<R: Rng + ?Sized>(rng: &mut R) -> AugmentParams {
        CropFlip::default().draw(rng)
    }

    /// Checks that both offsets are within `0..=8` (the default padding).
    pub fn validate(&self) -> Result<(), DataError> {
        self.validate_for(&CropFlip::default())
    }

    /// Checks that both offsets are within `0..=2 * crop.padding`.
    pub fn validate_for(&self, crop: &CropFlip) -> Result<(), DataError> {
        let max = crop.max_offset();
        if self.dx > max || self.dy > max {
            return Err(DataError::InvalidConfig {
                field: "augment offsets (dx, dy)",
                value: format!("({}, {})", self.dx, self.dy),
                expected: format!("values in 0..={max} (crop padding {})", crop.padding),
            });
        }
        Ok(())
    }
}

/// Augments and normalises one image with the default crop (4 pixels of zero padding):
/// `image` is 3072 bytes (`[3, 32, 32]`, red, green, blue planes, row-major), `out` receives
/// 3072 floats in the same layout.
///
/// `params = None` only normalises.
pub fn augment_image(
    image: &[u8],
    params: Option<AugmentParams>,
    norm: &Normalization,
    out: &mut [f32],
) -> Result<(), DataError> {
    augment_image_with(image, params, &CropFlip::default(), norm, out)
}

/// [`augment_image`] with the padding and padding mode of `crop` (its flip mode is not read:
/// `params.flip` is the flip).
///
/// Errors: [`DataError::InvalidConfig`] for a bad padding, offsets beyond `2 * padding` or a
/// bad normalisation; [`DataError::InvalidTensor`] for buffers of another length.
pub fn augment_image_with(
    image: &[u8],
    params: Option<AugmentParams>,
    crop: &CropFlip,
    norm: &Normalization,
    out: &mut [f32],
) -> Result<(), DataError> {
    norm.validate()?;
    crop.validate(SIDE)?;
    if let Some(p) = &params {
        p.validate_for(crop)?;
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
    fill_image(image, params, crop, &norm.affine(), out);
    Ok(())
}

/// Padding-pixel index `i` of an axis of `n` pixels, reflected into `0..n` (torchvision's
/// `reflect`: `-k` is `k`, `n - 1 + k` is `n - 1 - k`); `i` must be in `-(n - 1)..2n - 1`.
pub(crate) fn reflect(i: isize, n: isize) -> usize {
    let i = i.abs();
    (if i >= n { 2 * (n - 1) - i } else { i }) as usize
}

/// The fast kernel behind [`augment_image_with`]; `crop` must be valid for 32-pixel images
/// and the offsets within `0..=2 * crop.padding`.
pub(crate) fn fill_image(
    src: &[u8; PIXELS],
    params: Option<AugmentParams>,
    crop: &CropFlip,
    affine: &Affine,
    out: &mut [f32; PIXELS],
) {
    let p = params.unwrap_or(crop.identity());
    let max = crop.max_offset();
    // Shift of the source relative to the output: source = output + shift.
    let pad = isize::from(crop.padding);
    let sx = isize::from(p.dx.min(max)) - pad;
    let sy = isize::from(p.dy.min(max)) - pad;
    match crop.padding_mode {
        PaddingMode::Zeros => fill_zero_padded(src, (sx, sy), p.flip, affine, out),
        PaddingMode::Reflect => fill_reflected(src, (sx, sy), p.flip, affine, out),
    }
}

/// The crop at shift `(sx, sy)` of the zero-padded image, mirrored when `flip`, normalised.
fn fill_zero_padded(
    src: &[u8; PIXELS],
    (sx, sy): (isize, isize),
    flip: bool,
    affine: &Affine,
    out: &mut [f32; PIXELS],
) {
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
            if flip {
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

/// The crop at shift `(sx, sy)` of the reflection-padded image, mirrored when `flip`,
/// normalised: `out[y][x] = src[reflect(y + sy)][reflect((flip ? 31 - x : x) + sx)]`.
fn fill_reflected(
    src: &[u8; PIXELS],
    (sx, sy): (isize, isize),
    flip: bool,
    affine: &Affine,
    out: &mut [f32; PIXELS],
) {
    let side = SIDE as isize;
    let mut cols = [0usize; SIDE];
    for (x, col) in cols.iter_mut().enumerate() {
        let x = if flip { SIDE - 1 - x } else { x } as isize;
        *col = reflect(x + sx, side);
    }
    for c in 0..3 {
        let (scale, shift) = (affine.scale[c], affine.shift[c]);
        let plane = &src[c * PLANE..(c + 1) * PLANE];
        let out_plane = &mut out[c * PLANE..(c + 1) * PLANE];
        for (y, out_row) in out_plane.chunks_exact_mut(SIDE).enumerate() {
            let row_y = reflect(y as isize + sy, side);
            let row = &plane[row_y * SIDE..(row_y + 1) * SIDE];
            for (o, &col) in out_row.iter_mut().zip(&cols) {
                *o = f32::from(row[col]) * scale + shift;
            }
        }
    }
}
