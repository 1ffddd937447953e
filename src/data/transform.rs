//! The two standard recipes that turn a decoded picture into a network input: torchvision's
//! ImageNet transforms and the small-image (CIFAR) pad-and-crop. Resizing is
//! `fast_image_resize`'s bilinear convolution (Pillow's antialiased bilinear, SIMD).
use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::augment::reflect;
use super::{Affine, AugmentParams, CropFlip, DataError, FlipMode, Normalization, PaddingMode};

/// ImageNet's per-channel mean and standard deviation (torchvision's pretrained weights).
pub const IMAGENET_NORMALIZATION: Normalization = Normalization {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

/// Evaluation images are resized to `size / EVAL_CROP_FRACTION` before the centre crop
/// (torchvision's reference: 256 then 224).
pub const EVAL_CROP_FRACTION: f64 = 0.875;

/// How pictures become square network inputs of side `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipe {
    /// Pictures of any size. Training: torchvision's `RandomResizedCrop(size, scale=(0.08, 1),
    /// ratio=(3/4, 4/3))` + `RandomHorizontalFlip()`; evaluation: `Resize(size / 0.875)` (the
    /// shorter side) + `CenterCrop(size)`.
    ImageNet {
        /// Side of the network input.
        size: u32,
    },
    /// Pictures already at the network's size (others are resized to `size` x `size`).
    /// Training: 4 pixels of zero padding (or the padding of a [`CropFlip`]), a random
    /// `size` x `size` crop and a horizontal flip, exactly as the CIFAR-10 pipeline;
    /// evaluation: the picture as it is.
    Small {
        /// Side of the network input.
        size: u32,
    },
}

impl Recipe {
    /// The recipe for network inputs of side `size`: [`Recipe::Small`] up to 64 pixels
    /// (pictures stored at that size, as CIFAR's), [`Recipe::ImageNet`] above.
    pub fn for_size(size: u32) -> Recipe {
        if size <= 64 {
            Recipe::Small { size }
        } else {
            Recipe::ImageNet { size }
        }
    }

    /// Side of the square images it makes.
    pub fn size(&self) -> u32 {
        match *self {
            Recipe::ImageNet { size } | Recipe::Small { size } => size,
        }
    }

    /// Refuses crop settings this recipe cannot honour: [`Recipe::Small`] takes any valid
    /// [`CropFlip`] for its side; [`Recipe::ImageNet`]'s `RandomResizedCrop` does not pad and
    /// flips with a fresh coin, so it takes only the default padding, mode and flip.
    ///
    /// Errors: [`DataError::InvalidConfig`] naming `crop_padding`, `crop_padding_mode` or
    /// `flip`.
    pub fn check_crop(self, crop: &CropFlip) -> Result<(), DataError> {
        let size = self.size();
        if let Recipe::Small { .. } = self {
            return crop.validate(size as usize);
        }
        let default = CropFlip::default();
        let refuse = |field: &'static str, value: String, default: String| {
            Err(DataError::InvalidConfig {
                field,
                value,
                expected: format!(
                    "{default} (the default) with the ImageNet transforms (image size {size}, \
                     above 64): RandomResizedCrop does not pad and flips with a fresh coin"
                ),
            })
        };
        if crop.padding != default.padding {
            return refuse(
                "crop_padding",
                crop.padding.to_string(),
                default.padding.to_string(),
            );
        }
        if crop.padding_mode != default.padding_mode {
            let (value, default) = (crop.padding_mode.to_string(), default.padding_mode);
            return refuse("crop_padding_mode", value, default.to_string());
        }
        if crop.flip != FlipMode::Random {
            return refuse("flip", crop.flip.to_string(), FlipMode::Random.to_string());
        }
        Ok(())
    }
}

/// The random choice of one training image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Draw {
    /// No augmentation (evaluation).
    None,
    /// [`Recipe::Small`]: the crop offsets and flip, as the CIFAR-10 pipeline draws them.
    Small(AugmentParams),
    /// [`Recipe::ImageNet`]: the seed of the image's own generator (its crop depends on the
    /// picture's size, known only once decoded).
    Seed(u64),
}

/// A source rectangle (pixels, fractional) and whether to mirror the result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

/// torchvision's `RandomResizedCrop.get_params` for a `width` x `height` picture with
/// `scale = (0.08, 1)` and `ratio = (3/4, 4/3)`: ten tries of a random area and log-uniform
/// aspect ratio that fits, else the centre crop at the nearest allowed ratio. Integer pixels,
/// as torchvision.
pub fn random_resized_crop<R: Rng + ?Sized>(rng: &mut R, width: u32, height: u32) -> CropBox {
    let (w_full, h_full) = (f64::from(width), f64::from(height));
    let area = w_full * h_full;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(0.08..1.0);
        let aspect = rng.gen_range(lo..hi).exp();
        let w = (target * aspect).sqrt().round_ties_even();
        let h = (target / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= w_full && h > 0.0 && h <= h_full {
            let top = rng.gen_range(0..=(height - h as u32));
            let left = rng.gen_range(0..=(width - w as u32));
            return CropBox {
                left: f64::from(left),
                top: f64::from(top),
                width: w,
                height: h,
            };
        }
    }
    let ratio = w_full / h_full;
    let (w, h) = if ratio < 3.0 / 4.0 {
        (w_full, (w_full / (3.0 / 4.0)).round_ties_even())
    } else if ratio > 4.0 / 3.0 {
        ((h_full * (4.0 / 3.0)).round_ties_even(), h_full)
    } else {
        (w_full, h_full)
    };
    CropBox {
        left: ((w_full - w) / 2.0).floor(),
        top: ((h_full - h) / 2.0).floor(),
        width: w,
        height: h,
    }
}

/// The source rectangle of torchvision's `Resize(size / 0.875)` + `CenterCrop(size)`: the
/// centre crop of the resized picture, mapped back onto the original.
pub fn center_crop_box(width: u32, height: u32, size: u32) -> CropBox {
    let short = (f64::from(size) / EVAL_CROP_FRACTION).floor();
    let (w, h) = (f64::from(width), f64::from(height));
    // torchvision: the shorter side becomes `short`, the longer `int(short * long / short_side)`.
    let (rw, rh) = if width <= height {
        (short, (short * h / w).floor())
    } else {
        ((short * w / h).floor(), short)
    };
    let s = f64::from(size);
    // Python's `round`, as torchvision's `CenterCrop`: halves to even.
    let (top, left) = (
        ((rh - s) / 2.0).round_ties_even(),
        ((rw - s) / 2.0).round_ties_even(),
    );
    let (sx, sy) = (w / rw, h / rh);
    CropBox {
        left: left * sx,
        top: top * sy,
        width: s * sx,
        height: s * sy,
    }
}

thread_local! {
    /// One resizer per worker thread (it keeps its scratch buffers).
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// The `crop` of `image` resized to `size` x `size` (bilinear with antialiasing), as packed
/// RGB bytes.
pub fn resize_crop(image: &RgbImage, crop: CropBox, size: u32) -> Result<Vec<u8>, DataError> {
    let failed = |e: String| DataError::InvalidTensor {
        what: "image resize",
        expected: "a picture and crop box that fit".into(),
        actual: e,
    };
    let src = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .map_err(|e| failed(e.to_string()))?;
    let mut dst = Image::new(size, size, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.width, crop.height);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .map_err(|e| failed(e.to_string()))?;
    Ok(dst.into_vec())
}

/// Where padded index `i` of an axis of `side` pixels reads from under `mode`: the pixel
/// itself, `None` outside the picture with zeros, the reflected pixel with reflection.
fn source_index(i: isize, side: usize, mode: PaddingMode) -> Option<usize> {
    let n = side as isize;
    match mode {
        _ if (0..n).contains(&i) => Some(i as usize),
        PaddingMode::Zeros => None,
        PaddingMode::Reflect => Some(reflect(i, n)),
    }
}

/// Writes the packed RGB `side` x `side` picture `rgb` into `out` as normalised CHW floats,
/// shifted by `(sx, sy)` (pixels outside are padding of `mode`: a zero byte, or reflected)
/// and mirrored after the shift when `flip`:
/// `out[c][y][x] = rgb[y + sy][(flip ? side-1-x : x) + sx][c]`.
fn write_chw(
    rgb: &[u8],
    side: usize,
    shift: (isize, isize),
    (flip, mode): (bool, PaddingMode),
    a: &Affine,
    out: &mut [f32],
) {
    let plane = side * side;
    let (sx, sy) = shift;
    for y in 0..side {
        let row_y = source_index(y as isize + sy, side, mode);
        for x in 0..side {
            let col = if flip { side - 1 - x } else { x } as isize + sx;
            let source = row_y.zip(source_index(col, side, mode));
            for c in 0..3 {
                out[c * plane + y * side + x] = match source {
                    Some((row, col)) => {
                        let px = rgb[(row * side + col) * 3 + c];
                        f32::from(px) * a.scale[c] + a.shift[c]
                    }
                    None => a.shift[c],
                };
            }
        }
    }
}

/// Makes the network input of one decoded picture under `recipe` and `draw` into `out`
/// (`3 * size * size` floats, CHW, normalised by `affine`), with the default crop (4 pixels
/// of zero padding for [`Recipe::Small`]).
///
/// # Errors
/// [`DataError::InvalidTensor`] when `out` has another length or a resize fails.
pub fn prepare(
    image: &RgbImage,
    recipe: Recipe,
    draw: Draw,
    affine: &Affine,
    out: &mut [f32],
) -> Result<(), DataError> {
    prepare_with_crop(image, recipe, draw, &CropFlip::default(), affine, out)
}

/// [`prepare`] with the padding and padding mode of `crop` for [`Recipe::Small`] (the offsets
/// of a [`Draw::Small`] are in the picture padded by `crop.padding`; the flip is the draw's).
/// [`Recipe::ImageNet`] does not pad and does not read `crop`.
///
/// # Errors
/// [`DataError::InvalidTensor`] when `out` has another length or a resize fails;
/// [`DataError::InvalidConfig`] for a padding too wide for the recipe's size.
pub fn prepare_with_crop(
    image: &RgbImage,
    recipe: Recipe,
    draw: Draw,
    crop: &CropFlip,
    affine: &Affine,
    out: &mut [f32],
) -> Result<(), DataError> {
    let size = recipe.size();
    let side = size as usize;
    if out.len() != 3 * side * side {
        return Err(DataError::InvalidTensor {
            what: "image output",
            expected: format!("{} values ([3, {side}, {side}])", 3 * side * side),
            actual: format!("{} values", out.len()),
        });
    }
    // Where the pixels come from (a crop resized to the output, or the picture itself), the
    // shift of the small-image crop, and the flip.
    let (pixels, shift, flip) = match (recipe, draw) {
        (Recipe::ImageNet { .. }, Draw::Seed(seed)) => {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
            let crop = random_resized_crop(&mut rng, image.width(), image.height());
            let flip = rng.gen_bool(0.5);
            (Some(resize_crop(image, crop, size)?), (0, 0), flip)
        }
        (Recipe::ImageNet { .. }, _) => {
            let crop = center_crop_box(image.width(), image.height(), size);
            (Some(resize_crop(image, crop, size)?), (0, 0), false)
        }
        (Recipe::Small { .. }, draw) => {
            crop.validate(side)?;
            let p = match draw {
                Draw::Small(p) => p,
                _ => crop.identity(),
            };
            p.validate_for(crop)?;
            let shift = (
                isize::from(p.dx) - isize::from(crop.padding),
                isize::from(p.dy) - isize::from(crop.padding),
            );
            let resized = match image.dimensions() == (size, size) {
                true => None,
                false => Some(resize_crop(image, whole(image), size)?),
            };
            (resized, shift, p.flip)
        }
    };
    let rgb = pixels.as_deref().unwrap_or(image.as_raw());
    write_chw(rgb, side, shift, (flip, crop.padding_mode), affine, out);
    Ok(())
}

/// The whole of `image` as a crop box.
fn whole(image: &RgbImage) -> CropBox {
    let (w, h) = image.dimensions();
    CropBox {
        left: 0.0,
        top: 0.0,
        width: f64::from(w),
        height: f64::from(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{augment_image, Normalization};
    use rand::SeedableRng;

    #[test]
    fn small_recipe_equals_the_cifar_kernel() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let chw: Vec<u8> = (0..3 * 32 * 32).map(|_| rng.gen()).collect();
        let mut rgb = RgbImage::new(32, 32);
        for (i, px) in rgb.pixels_mut().enumerate() {
            *px = image::Rgb([chw[i], chw[1024 + i], chw[2048 + i]]);
        }
        let norm = Normalization::default();
        for _ in 0..20 {
            let p = AugmentParams::draw(&mut rng);
            let (mut a, mut b) = (vec![0f32; 3072], vec![0f32; 3072]);
            augment_image(&chw, Some(p), &norm, &mut a).unwrap();
            prepare(
                &rgb,
                Recipe::Small { size: 32 },
                Draw::Small(p),
                &norm.affine(),
                &mut b,
            )
            .unwrap();
            assert_eq!(a, b, "{p:?}");
        }
    }

    #[test]
    fn random_resized_crops_fit_and_follow_the_scale_and_ratio() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (w, h) in [(500, 375), (64, 640), (224, 224), (3, 2)] {
            for _ in 0..200 {
                let c = random_resized_crop(&mut rng, w, h);
                assert!(c.left + c.width <= f64::from(w) && c.top + c.height <= f64::from(h));
                assert!(c.width >= 1.0 && c.height >= 1.0, "{c:?}");
            }
        }
        // A very thin picture falls back to the centre crop at ratio 3/4.
        let c = random_resized_crop(&mut rng, 10, 1000);
        assert_eq!((c.width, c.height), (10.0, 13.0));
    }

    #[test]
    fn center_crop_matches_torchvision_resize_256_crop_224() {
        // 500x375: resized to 341x256, crop left round(58.5) = 58 (Python rounds halves to even), top 16.
        let c = center_crop_box(500, 375, 224);
        let (sx, sy) = (500.0 / 341.0, 375.0 / 256.0);
        assert!((c.left - 58.0 * sx).abs() < 1e-9 && (c.top - 16.0 * sy).abs() < 1e-9);
        assert!((c.width - 224.0 * sx).abs() < 1e-9 && (c.height - 224.0 * sy).abs() < 1e-9);
    }

    #[test]
    fn output_of_the_wrong_length_is_an_error() {
        let img = RgbImage::new(8, 8);
        let affine = Normalization::unit().affine();
        assert!(prepare(
            &img,
            Recipe::Small { size: 8 },
            Draw::None,
            &affine,
            &mut [0.0; 10]
        )
        .is_err());
    }
}
