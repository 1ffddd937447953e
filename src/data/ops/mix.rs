//! MixUp and CutMix on a batch, as torchvision's `transforms.v2.MixUp` / `CutMix`: every image
//! is mixed with the one before it in the batch (the batch rolled by one, `roll(1, 0)`: image
//! `i` with image `i - 1`, image 0 with the last), and the one-hot targets the same way:
//!
//! * MixUp: `images = roll(images) * (1 - λ) + images * λ`, `targets = roll(onehot) * (1 - λ)
//!   + onehot * λ`, λ ~ Beta(α, α);
//! * CutMix: the box `[y1, y2) x [x1, x2)` of every image replaced by the rolled image's, the
//!   targets mixed with λ' = 1 - box area / image area. The box is centred at a uniform pixel
//!   `(r_x, r_y)` with half-sides `int(0.5 sqrt(1 - λ) W)` and `int(0.5 sqrt(1 - λ) H)`,
//!   clipped to the image, λ ~ Beta(α, α).
//!
//! [`mixup_with`], [`cutmix_box`] and [`cutmix_with`] take λ and the box centre, so tests can
//! give torchvision the same values; [`MixUp`] and [`CutMix`] draw them. No label smoothing.
use rand::Rng;
use tch::{Kind, Tensor};

use super::sample::beta;
use crate::data::DataError;

/// A mixed batch: the images and their soft targets.
#[derive(Debug)]
pub struct MixedBatch {
    /// The mixed images, `[N, C, H, W]`, of the kind given.
    pub images: Tensor,
    /// The targets, `[N, classes]` `f32`, each row summing to 1.
    pub targets: Tensor,
}

/// A CutMix box: columns `x1..x2`, rows `y1..y2` (torchvision's `(x1, y1, x2, y2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CutMixBox {
    /// First column.
    pub x1: i64,
    /// First row.
    pub y1: i64,
    /// Column after the last.
    pub x2: i64,
    /// Row after the last.
    pub y2: i64,
}

impl CutMixBox {
    /// The λ of the targets: `1 - area / (height * width)`.
    pub fn lambda(&self, height: i64, width: i64) -> f64 {
        let area = ((self.x2 - self.x1) * (self.y2 - self.y1)) as f64;
        1.0 - area / (width * height) as f64
    }
}

/// Checks the batch and returns `(N, H, W)`: `images` floating `[N, C, H, W]`, `labels` `int64`
/// `[N]` with every label in `0..classes`, `N >= 2`.
fn check_batch(
    images: &Tensor,
    labels: &Tensor,
    classes: i64,
) -> Result<(i64, i64, i64), DataError> {
    let bad = |what: &'static str, expected: String, actual: String| DataError::InvalidTensor {
        what,
        expected,
        actual,
    };
    let size = images.size();
    if size.len() != 4 || !images.f_is_floating_point()? {
        return Err(bad(
            "images to mix",
            "a floating [N, C, H, W] batch".to_string(),
            format!("{:?} {:?}", images.kind(), size),
        ));
    }
    let n = size[0];
    if size[2] < 1 || size[3] < 1 {
        return Err(bad(
            "images to mix",
            "images of at least 1x1 pixels".to_string(),
            format!("{:?}", size),
        ));
    }
    if labels.size() != [n] || labels.kind() != Kind::Int64 {
        return Err(bad(
            "labels to mix",
            format!("int64 [{n}] (one class index per image)"),
            format!("{:?} {:?}", labels.kind(), labels.size()),
        ));
    }
    if n < 2 {
        return Err(DataError::InvalidConfig {
            field: "mix batch size",
            value: n.to_string(),
            expected: "at least 2 images (each is mixed with another of the batch)".to_string(),
        });
    }
    if classes < 1 {
        return Err(DataError::InvalidConfig {
            field: "mix classes",
            value: classes.to_string(),
            expected: "at least 1".to_string(),
        });
    }
    let (lo, hi) = (
        labels.f_min()?.int64_value(&[]),
        labels.f_max()?.int64_value(&[]),
    );
    if lo < 0 || hi >= classes {
        return Err(bad(
            "labels to mix",
            format!("class indices in 0..{classes}"),
            format!("labels from {lo} to {hi}"),
        ));
    }
    Ok((n, size[2], size[3]))
}

/// Checks that `lam` is in `[0, 1]`.
fn check_lambda(lam: f64) -> Result<(), DataError> {
    if !(0.0..=1.0).contains(&lam) {
        return Err(DataError::InvalidConfig {
            field: "mix lambda",
            value: lam.to_string(),
            expected: "a weight in [0, 1]".to_string(),
        });
    }
    Ok(())
}

/// `_mixup_label`: `roll(onehot(labels)) * (1 - lam) + onehot(labels) * lam`, `f32`.
fn mix_targets(labels: &Tensor, classes: i64, lam: f64) -> Result<Tensor, DataError> {
    let onehot = labels.f_one_hot(classes)?.f_to_kind(Kind::Float)?;
    let rolled = onehot.f_roll([1], [0])?.f_mul_scalar(1.0 - lam)?;
    Ok(rolled.f_add(&onehot.f_mul_scalar(lam)?)?)
}

/// MixUp with a given `lam`: see the module documentation.
///
/// Errors: `images` not a floating `[N, C, H, W]` batch, `labels` not `int64 [N]` indices in
/// `0..classes`, a batch of 1, `lam` outside `[0, 1]`.
pub fn mixup_with(
    images: &Tensor,
    labels: &Tensor,
    classes: i64,
    lam: f64,
) -> Result<MixedBatch, DataError> {
    check_batch(images, labels, classes)?;
    check_lambda(lam)?;
    let rolled = images.f_roll([1], [0])?.f_mul_scalar(1.0 - lam)?;
    let mixed = rolled.f_add(&images.f_mul_scalar(lam)?)?;
    Ok(MixedBatch {
        images: mixed,
        targets: mix_targets(labels, classes, lam)?,
    })
}

/// torchvision's CutMix box for `lam` and the centre `(r_x, r_y)` (a pixel of the `height` x
/// `width` image).
///
/// Errors: `lam` outside `[0, 1]`, a centre outside the image.
pub fn cutmix_box(
    lam: f64,
    center: (i64, i64),
    height: i64,
    width: i64,
) -> Result<CutMixBox, DataError> {
    check_lambda(lam)?;
    let (r_x, r_y) = center;
    if !(0..width).contains(&r_x) || !(0..height).contains(&r_y) {
        return Err(DataError::InvalidConfig {
            field: "cutmix centre (x, y)",
            value: format!("({r_x}, {r_y})"),
            expected: format!("a pixel of the {height}x{width} image"),
        });
    }
    let r = 0.5 * (1.0 - lam).sqrt();
    let r_w_half = (r * width as f64) as i64;
    let r_h_half = (r * height as f64) as i64;
    Ok(CutMixBox {
        x1: (r_x - r_w_half).max(0),
        y1: (r_y - r_h_half).max(0),
        x2: (r_x + r_w_half).min(width),
        y2: (r_y + r_h_half).min(height),
    })
}

/// CutMix with a given box: the box of every image taken from the image before it, the
/// targets mixed with [`CutMixBox::lambda`].
///
/// Errors: as [`mixup_with`], and a box that is not inside the images.
pub fn cutmix_with(
    images: &Tensor,
    labels: &Tensor,
    classes: i64,
    b: CutMixBox,
) -> Result<MixedBatch, DataError> {
    let (_, h, w) = check_batch(images, labels, classes)?;
    if !(0 <= b.x1 && b.x1 <= b.x2 && b.x2 <= w && 0 <= b.y1 && b.y1 <= b.y2 && b.y2 <= h) {
        return Err(DataError::InvalidConfig {
            field: "cutmix box (x1, y1, x2, y2)",
            value: format!("({}, {}, {}, {})", b.x1, b.y1, b.x2, b.y2),
            expected: format!("0 <= x1 <= x2 <= {w} and 0 <= y1 <= y2 <= {h}"),
        });
    }
    let rolled = images.f_roll([1], [0])?;
    let out = images.f_detach_copy()?;
    let (bh, bw) = (b.y2 - b.y1, b.x2 - b.x1);
    let mut window = out.f_narrow(2, b.y1, bh)?.f_narrow(3, b.x1, bw)?;
    window.f_copy_(&rolled.f_narrow(2, b.y1, bh)?.f_narrow(3, b.x1, bw)?)?;
    Ok(MixedBatch {
        images: out,
        targets: mix_targets(labels, classes, b.lambda(h, w))?,
    })
}

/// Checks a Beta parameter.
fn check_alpha(alpha: f64) -> Result<(), DataError> {
    if !(alpha > 0.0 && alpha.is_finite()) {
        return Err(DataError::InvalidConfig {
            field: "mix alpha",
            value: alpha.to_string(),
            expected: "a finite number above 0 (the Beta(alpha, alpha) parameter)".to_string(),
        });
    }
    Ok(())
}

/// MixUp with λ ~ Beta(α, α) (torchvision's `MixUp(alpha, num_classes)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixUp {
    alpha: f64,
}

impl MixUp {
    /// MixUp with parameter `alpha` (torchvision's default and reference recipe: 0.2 or 1).
    ///
    /// Errors: `alpha <= 0` or not finite.
    pub fn new(alpha: f64) -> Result<MixUp, DataError> {
        check_alpha(alpha)?;
        Ok(MixUp { alpha })
    }

    /// Draws λ from `rng`.
    pub fn draw_lambda<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        beta(rng, self.alpha, self.alpha)
    }

    /// Draws λ and mixes the batch ([`mixup_with`]); returns the batch and λ.
    ///
    /// Errors: as [`mixup_with`].
    pub fn apply<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        images: &Tensor,
        labels: &Tensor,
        classes: i64,
    ) -> Result<(MixedBatch, f64), DataError> {
        check_batch(images, labels, classes)?;
        let lam = self.draw_lambda(rng);
        Ok((mixup_with(images, labels, classes, lam)?, lam))
    }
}

/// CutMix with λ ~ Beta(α, α) and a uniform box centre (torchvision's `CutMix(alpha,
/// num_classes)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutMix {
    alpha: f64,
}

impl CutMix {
    /// CutMix with parameter `alpha` (torchvision's default and reference recipe: 1).
    ///
    /// Errors: `alpha <= 0` or not finite.
    pub fn new(alpha: f64) -> Result<CutMix, DataError> {
        check_alpha(alpha)?;
        Ok(CutMix { alpha })
    }

    /// Draws the box for `height` x `width` images: λ, then the centre column, then the
    /// centre row (torchvision's order).
    pub fn draw_box<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        height: i64,
        width: i64,
    ) -> Result<CutMixBox, DataError> {
        let lam = beta(rng, self.alpha, self.alpha);
        let r_x = rng.gen_range(0..width.max(1));
        let r_y = rng.gen_range(0..height.max(1));
        cutmix_box(lam, (r_x, r_y), height, width)
    }

    /// Draws a box and cuts the batch ([`cutmix_with`]); returns the batch and the box.
    ///
    /// Errors: as [`cutmix_with`].
    pub fn apply<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        images: &Tensor,
        labels: &Tensor,
        classes: i64,
    ) -> Result<(MixedBatch, CutMixBox), DataError> {
        let (_, h, w) = check_batch(images, labels, classes)?;
        let b = self.draw_box(rng, h, w)?;
        Ok((cutmix_with(images, labels, classes, b)?, b))
    }
}
