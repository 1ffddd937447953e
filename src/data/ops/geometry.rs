//! The geometric ops of torchvision's auto-augmentation on `uint8` images: affine warps
//! (shear, translation, rotation) with nearest-neighbour sampling, exactly as
//! `torchvision.transforms.v2.functional.affine` / `rotate` compute them on a tensor.
//!
//! torchvision builds the inverse affine matrix in `f64` (`_get_inverse_affine_matrix`),
//! casts it to `f32`, maps every output pixel centre through it in `f32` (`_affine_grid`: the
//! pixel centres relative to the image centre, the matrix divided by half the size) and samples
//! with `grid_sample(mode="nearest", padding_mode="zeros", align_corners=False)`: the source
//! index is `round_half_even((g + 1) * size / 2 - 0.5)`; a source outside the image gives the
//! fill value. The same arithmetic is done here, in the same precision and order, with the
//! multiply-add that libtorch's AVX-512 kernel fuses fused on every CPU: sources that fall
//! exactly half-way between two pixels (a shear of 0.2 makes many) round as torchvision's do on
//! an AVX-512 CPU. On a CPU with AVX2 only, libtorch does not fuse it, and such a tie can round
//! to the other neighbour there (tests/augment_ops.rs allows exactly those pixels to differ);
//! ours does not depend on the CPU, so a seed gives the same images on every machine.
use super::RgbPlanes;

/// torchvision's `_get_inverse_affine_matrix(center, angle, translate, scale, shear)` (angles
/// in degrees, `center` relative to the image centre): the 2x3 matrix, row-major, that maps an
/// output point to the source point it is read from.
pub fn inverse_affine_matrix(
    center: [f64; 2],
    angle: f64,
    translate: [f64; 2],
    scale: f64,
    shear: [f64; 2],
) -> [f64; 6] {
    let rot = angle.to_radians();
    let sx = shear[0].to_radians();
    let sy = shear[1].to_radians();
    let [cx, cy] = center;
    let [tx, ty] = translate;
    let cos_sy = sy.cos();
    let tan_sx = sx.tan();
    let rot_minus_sy = rot - sy;
    let cx_plus_tx = cx + tx;
    let cy_plus_ty = cy + ty;
    let a = rot_minus_sy.cos() / cos_sy;
    let b = -(a * tan_sx + rot.sin());
    let c = rot_minus_sy.sin() / cos_sy;
    let d = rot.cos() - c * tan_sx;
    let mut m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0];
    m[2] += cx - m[0] * cx_plus_tx - m[1] * cy_plus_ty;
    m[5] += cy - m[3] * cx_plus_tx - m[4] * cy_plus_ty;
    m
}

/// Warps `image` through the inverse matrix `matrix` (as [`inverse_affine_matrix`] returns it)
/// with nearest-neighbour sampling; output pixels whose source is outside the image get
/// `fill` (one value per channel).
pub fn warp_nearest(image: &RgbPlanes, matrix: &[f64; 6], fill: [u8; 3]) -> RgbPlanes {
    let (h, w) = (image.height(), image.width());
    let index = source_indices(h, w, matrix);
    image.map_planes(|c, src, dst| {
        for (o, idx) in dst.iter_mut().zip(&index) {
            *o = match idx {
                Some(i) => src[*i as usize],
                None => fill[c],
            };
        }
    })
}

/// For every output pixel (row-major), the flat index of the source pixel it takes, or `None`
/// when the source is outside the image: torchvision's `_affine_grid` + `grid_sample`, in
/// `f32`.
fn source_indices(h: usize, w: usize, matrix: &[f64; 6]) -> Vec<Option<u32>> {
    let t: Vec<f32> = matrix.iter().map(|&v| v as f32).collect();
    let (half_w, half_h) = (0.5 * w as f32, 0.5 * h as f32);
    // rescaled_theta = theta.T / [0.5 w, 0.5 h]: columns x and y.
    let (rx, ry) = (
        [t[0] / half_w, t[1] / half_w, t[2] / half_w],
        [t[3] / half_h, t[4] / half_h, t[5] / half_h],
    );
    let mut out = Vec::with_capacity(h * w);
    for row in 0..h {
        // The base grid: pixel centres relative to the image centre (exact half-integers).
        let y = row as f32 - (h as f32 - 1.0) * 0.5;
        for col in 0..w {
            let x = col as f32 - (w as f32 - 1.0) * 0.5;
            // libtorch's `bmm` of [x, y, 1] by the 3x2 matrix accumulates in this order, the
            // second product fused as its AVX-512 kernel does (bit for bit against
            // `_affine_grid` there; its AVX2 kernel rounds that product first).
            let gx = y.mul_add(rx[1], x * rx[0]) + rx[2];
            let gy = y.mul_add(ry[1], x * ry[0]) + ry[2];
            let ix = unnormalize(gx, w);
            let iy = unnormalize(gy, h);
            out.push(match (ix, iy) {
                (Some(ix), Some(iy)) => Some((iy * w + ix) as u32),
                _ => None,
            });
        }
    }
    out
}

/// `grid_sample`'s nearest source index along a side of `size` pixels (`align_corners=False`):
/// `round_half_even((g + 1) * size / 2 - 0.5)`, or `None` outside `0..size`.
fn unnormalize(g: f32, size: usize) -> Option<usize> {
    let scale = size as f32 / 2.0;
    let pos = ((g + 1.0) * scale - 0.5).round_ties_even();
    (pos >= 0.0 && pos < size as f32).then_some(pos as usize)
}

/// torchvision's `affine(image, angle=0, translate=[0, 0], scale=1, shear=[shear_x, shear_y],
/// center=[0, 0])`: a shear (degrees) about the top-left corner, as auto-augmentation's
/// ShearX / ShearY use it.
pub fn shear(image: &RgbPlanes, shear_x: f64, shear_y: f64, fill: [u8; 3]) -> RgbPlanes {
    let m = shear_matrix(image.height(), image.width(), shear_x, shear_y);
    warp_nearest(image, &m, fill)
}

/// The inverse matrix [`shear`] warps a `height` x `width` image through: the shear (degrees)
/// about the top-left corner, torchvision's `center=[0, 0]` in pixels, which is `(-w/2, -h/2)`
/// relative to the image centre.
pub fn shear_matrix(height: usize, width: usize, shear_x: f64, shear_y: f64) -> [f64; 6] {
    let center = [-(width as f64) * 0.5, -(height as f64) * 0.5];
    inverse_affine_matrix(center, 0.0, [0.0, 0.0], 1.0, [shear_x, shear_y])
}

/// torchvision's `affine(image, angle=0, translate=[dx, dy], scale=1, shear=[0, 0])`: a
/// translation by whole pixels (positive `dx` moves the content right).
pub fn translate(image: &RgbPlanes, dx: i64, dy: i64, fill: [u8; 3]) -> RgbPlanes {
    warp_nearest(image, &translate_matrix(dx, dy), fill)
}

/// The inverse matrix [`translate`] warps through.
pub fn translate_matrix(dx: i64, dy: i64) -> [f64; 6] {
    inverse_affine_matrix([0.0, 0.0], 0.0, [dx as f64, dy as f64], 1.0, [0.0, 0.0])
}

/// torchvision's `rotate(image, angle, expand=False, center=None)`: a rotation by `angle`
/// degrees counter-clockwise about the image centre, keeping the size. As torchvision, angles
/// of 0 and 180 degrees (and 90 and 270 degrees of a square image) are exact transpositions.
pub fn rotate(image: &RgbPlanes, angle: f64, fill: [u8; 3]) -> RgbPlanes {
    let angle = angle.rem_euclid(360.0);
    let square = image.height() == image.width();
    if angle == 0.0 {
        return image.clone();
    }
    if angle == 180.0 || (square && (angle == 90.0 || angle == 270.0)) {
        return rot90(image, (angle / 90.0) as u32);
    }
    warp_nearest(image, &rotate_matrix(angle), fill)
}

/// The inverse matrix [`rotate`] warps through for `angle` degrees counter-clockwise (taken
/// modulo 360) where it warps, that is except at the exact transpositions: torchvision's
/// `rotate` passes the negated angle to `_get_inverse_affine_matrix`.
pub fn rotate_matrix(angle: f64) -> [f64; 6] {
    inverse_affine_matrix(
        [0.0, 0.0],
        -angle.rem_euclid(360.0),
        [0.0, 0.0],
        1.0,
        [0.0, 0.0],
    )
}

/// `torch.rot90(image, k, dims=(-2, -1))` for `k` in 1..=3 (counter-clockwise); `k = 1` or `3`
/// only on square images.
fn rot90(image: &RgbPlanes, k: u32) -> RgbPlanes {
    let (h, w) = (image.height(), image.width());
    image.map_planes(|_, src, dst| {
        for i in 0..h {
            for j in 0..w {
                dst[i * w + j] = match k {
                    1 => src[j * w + (w - 1 - i)],
                    2 => src[(h - 1 - i) * w + (w - 1 - j)],
                    _ => src[(h - 1 - j) * w + i],
                };
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_matrix_keeps_the_image() {
        let data: Vec<u8> = (0..3 * 5 * 7).map(|v| v as u8).collect();
        let img = RgbPlanes::new(5, 7, data).unwrap();
        let m = inverse_affine_matrix([0.0, 0.0], 0.0, [0.0, 0.0], 1.0, [0.0, 0.0]);
        assert_eq!(warp_nearest(&img, &m, [9, 9, 9]), img);
        assert_eq!(translate(&img, 0, 0, [1, 2, 3]), img);
    }
}
