//! The colour ops of torchvision's auto-augmentation on `uint8` images, with the arithmetic of
//! `torchvision.transforms.v2.functional` on a `uint8` tensor (torchvision 0.26):
//!
//! * blends (brightness, saturation, contrast, sharpness) compute in `f32`: the factor is cast
//!   to `f32`, `a * r + b * (1 - r)` is `fma(b, f32(1 - r), a * f32(r))` (libtorch's
//!   `add(other, alpha)` kernel is a fused multiply-add), the result is clamped to `[0, 255]`
//!   and converted back by truncation (`.to(torch.uint8)`), not rounding;
//! * the grey image of saturation and contrast is `0.2989 R + 0.587 G + 0.114 B` in `f32`,
//!   floored; contrast blends with its mean;
//! * sharpness blends with a 3x3 blur (weights 1/13, centre 5/13) rounded to integers, and
//!   leaves the one-pixel border as it is;
//! * posterize, solarize, autocontrast, equalize and invert are integer ops (autocontrast
//!   divides in `f32` and truncates).
use super::RgbPlanes;

/// `_blend(image1, image2, ratio)` on one value: `clamp(a * r + b * (1 - r), 0, 255)`
/// truncated, with `r = f32(ratio)` and `one_minus = f32(1 - ratio)`.
#[inline]
fn blend(a: f32, b: f32, r: f32, one_minus: f32) -> u8 {
    b.mul_add(one_minus, a * r).clamp(0.0, 255.0) as u8
}

/// The `f32` blend weights of `ratio`: `(f32(ratio), f32(1 - ratio))`.
fn weights(ratio: f64) -> (f32, f32) {
    (ratio as f32, (1.0 - ratio) as f32)
}

/// `adjust_brightness(image, factor)`: every value times `factor`, clamped and truncated.
pub fn adjust_brightness(image: &RgbPlanes, factor: f64) -> RgbPlanes {
    let f = factor as f32;
    image.map_values(|v| (f32::from(v) * f).clamp(0.0, 255.0) as u8)
}

/// The floored grey plane of `image` in `f32`: `floor(0.2989 R + 0.587 G + 0.114 B)`, as
/// `_rgb_to_grayscale_image(preserve_dtype=False)` then `floor_()`.
fn grey_plane(image: &RgbPlanes) -> Vec<f32> {
    let n = image.plane_len();
    let (r, gb) = image.as_slice().split_at(n);
    let (g, b) = gb.split_at(n);
    r.iter()
        .zip(g)
        .zip(b)
        .map(|((&r, &g), &b)| {
            let l = f32::from(r) * 0.2989f32;
            let l = f32::from(g).mul_add(0.587f32, l);
            f32::from(b).mul_add(0.114f32, l).floor()
        })
        .collect()
}

/// `adjust_saturation(image, factor)` (auto-augmentation's "Color"): a blend with the grey
/// image (0: grey, 1: unchanged, above 1: more saturated).
pub fn adjust_saturation(image: &RgbPlanes, factor: f64) -> RgbPlanes {
    let grey = grey_plane(image);
    let (r, one_minus) = weights(factor);
    image.map_planes(|_, src, dst| {
        for ((o, &v), &l) in dst.iter_mut().zip(src).zip(&grey) {
            *o = blend(f32::from(v), l, r, one_minus);
        }
    })
}

/// `adjust_contrast(image, factor)`: a blend with the mean of the grey image (0: flat grey,
/// 1: unchanged).
pub fn adjust_contrast(image: &RgbPlanes, factor: f64) -> RgbPlanes {
    let grey = grey_plane(image);
    // The grey values are integers, so their f32 sum is exact in any order up to 2^24
    // (65 793 pixels of 255); beyond that the f64 sum rounded once is the closest value.
    let sum: f64 = grey.iter().map(|&l| f64::from(l)).sum();
    let mean = (sum as f32) / grey.len() as f32;
    let (r, one_minus) = weights(factor);
    image.map_values(|v| blend(f32::from(v), mean, r, one_minus))
}

/// `adjust_sharpness(image, factor)`: a blend with a 3x3 blur of the interior (0: blurred,
/// 1: unchanged, above 1: sharpened); images of 2 or fewer rows or columns are unchanged.
pub fn adjust_sharpness(image: &RgbPlanes, factor: f64) -> RgbPlanes {
    let (h, w) = (image.height(), image.width());
    if h <= 2 || w <= 2 {
        return image.clone();
    }
    let one_minus = (1.0 - factor) as f32;
    image.map_planes(|_, src, dst| {
        dst.copy_from_slice(src);
        for y in 1..h - 1 {
            let rows = [
                &src[(y - 1) * w..y * w],
                &src[y * w..(y + 1) * w],
                &src[(y + 1) * w..(y + 2) * w],
            ];
            for x in 1..w - 1 {
                let window: u32 = rows
                    .iter()
                    .map(|r| u32::from(r[x - 1]) + u32::from(r[x]) + u32::from(r[x + 1]))
                    .sum();
                let centre = u32::from(rows[1][x]);
                // (8 neighbours + 5 centre) / 13 is never a half-integer, so rounding it
                // exactly is what libtorch's f32 convolution then round() gives.
                let total = window + 4 * centre;
                let blurred = ((total as f64) / 13.0).round() as f32;
                let v = centre as f32;
                dst[y * w + x] = (blurred - v).mul_add(one_minus, v).clamp(0.0, 255.0) as u8;
            }
        }
    })
}

/// `posterize(image, bits)`: keeps the `bits` high bits of every value (`bits >= 8`: the image
/// unchanged, 0: all black).
pub fn posterize(image: &RgbPlanes, bits: u8) -> RgbPlanes {
    if bits >= 8 {
        return image.clone();
    }
    let mask = (((1u16 << bits) - 1) << (8 - bits)) as u8;
    image.map_values(|v| v & mask)
}

/// `solarize(image, threshold)`: values `>= threshold` (compared in `f32`) are inverted.
pub fn solarize(image: &RgbPlanes, threshold: f64) -> RgbPlanes {
    let t = threshold as f32;
    image.map_values(|v| if f32::from(v) >= t { 255 - v } else { v })
}

/// `autocontrast(image)`: each channel stretched so that its minimum becomes 0 and its maximum
/// 255 (`(v - min) / ((max - min) / 255)` in `f32`, truncated); a constant channel is left as
/// it is.
pub fn autocontrast(image: &RgbPlanes) -> RgbPlanes {
    image.map_planes(|_, src, dst| {
        let lo = src.iter().copied().min().unwrap_or(0);
        let hi = src.iter().copied().max().unwrap_or(0);
        if lo == hi {
            dst.copy_from_slice(src);
            return;
        }
        let min = f32::from(lo);
        let inv_scale = (f32::from(hi) - min) * (1.0f32 / 255.0);
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = ((f32::from(v) - min) / inv_scale).clamp(0.0, 255.0) as u8;
        }
    })
}

/// `equalize(image)`: each channel through PIL's histogram-equalisation table; a channel whose
/// values all but the largest one number fewer than 255 pixels is left as it is.
pub fn equalize(image: &RgbPlanes) -> RgbPlanes {
    image.map_planes(|_, src, dst| {
        let mut hist = [0u64; 256];
        for &v in src {
            hist[usize::from(v)] += 1;
        }
        let last = hist.iter().rposition(|&n| n > 0).unwrap_or(0);
        let step = (src.len() as u64 - hist[last]) / 255;
        if step == 0 {
            dst.copy_from_slice(src);
            return;
        }
        let mut lut = [0u8; 256];
        let mut cum = 0u64;
        for k in 1..256 {
            cum += hist[k - 1];
            lut[k] = ((cum + step / 2) / step).min(255) as u8;
        }
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = lut[usize::from(v)];
        }
    })
}

/// `invert(image)`: `255 - v`.
pub fn invert(image: &RgbPlanes) -> RgbPlanes {
    image.map_values(|v| !v)
}
