//! The augmentation of training images as one ordered list of stages, shared by every
//! pipeline (the CPU and GPU-resident CIFAR pipelines and image folders), in the order of
//! torchvision's reference recipe (`references/classification/presets.py`):
//!
//! 1. random crop + horizontal flip ([`BatchConfig::augment`](super::BatchConfig::augment):
//!    pad-and-crop for small images, with the padding, padding mode and flip mode of
//!    `crop_flip` ([`CropFlip`]), `RandomResizedCrop` for image folders at ImageNet sizes);
//! 2. an auto-augmentation [`Policy`] (`auto_augment`: TrivialAugmentWide, RandAugment,
//!    AutoAugment) on the cropped 8-bit image, fill 0;
//! 3. normalisation;
//! 4. random erasing (`random_erase`: probability, torchvision's other defaults) on the
//!    normalised image, value 0;
//! 5. per batch, MixUp or CutMix (`mixup_alpha`, `cutmix_alpha`; one of the two chosen with
//!    probability 1/2 when both are on, as torchvision's `RandomChoice`) into soft targets.
//!
//! Every stage draws from its own random stream, a pure function of `(seed, epoch, batch,
//! stage)` ([`stage_rng`]): the crop and flip keep their stream, so a run with the new stages
//! off is bit for bit the run of earlier versions, and turning one stage on does not move
//! another's draws.
use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::ops::{apply_draws, EraseBox, OpDraw, Policy, RandAugment, RandomErasing, RgbPlanes};
use super::random::{stage_rng, Stage};
use super::{Affine, CropFlip, DataError};

/// The settings of crop and flip ([`CropFlip`]; the stage itself is on with
/// [`BatchConfig::augment`](super::BatchConfig::augment)) and the stages of the data pipeline
/// after it, in torchvision's order: an auto-augmentation policy on the cropped 8-bit image,
/// normalisation, random erasing on the normalised image, then per batch MixUp or CutMix into
/// soft targets. Each stage draws from its own random stream ([`stage_rng`](super::stage_rng)),
/// so turning one on moves no other stage's draws, and with all off (the default) batches are
/// those of earlier versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augmentation {
    /// Padding, padding mode and flip mode of the crop and flip (4 pixels of zeros and a
    /// random flip by default).
    pub crop_flip: CropFlip,
    /// Auto-augmentation policy, torchvision's reference-script names: `ta_wide`, `ra`,
    /// `cifar10`, `imagenet`, `svhn` (see [`Policy::from_name`]); `None` for none.
    pub auto_augment: Option<String>,
    /// RandAugment's magnitude bin (of 31) when `auto_augment` is `ra` (torchvision's
    /// `--ra-magnitude`, default 9).
    pub ra_magnitude: usize,
    /// Probability of random erasing per image (torchvision's `--random-erase`); 0 for none.
    pub random_erase: f64,
    /// MixUp's α (torchvision's `--mixup-alpha`); 0 for none.
    pub mixup_alpha: f64,
    /// CutMix's α (torchvision's `--cutmix-alpha`); 0 for none.
    pub cutmix_alpha: f64,
}

impl Default for Augmentation {
    fn default() -> Self {
        Augmentation {
            crop_flip: CropFlip::default(),
            auto_augment: None,
            ra_magnitude: RandAugment::DEFAULT.magnitude(),
            random_erase: 0.0,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
        }
    }
}

/// The batch stage: which of MixUp and CutMix may be drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchMix {
    /// MixUp's α, if on.
    pub mixup: Option<super::ops::MixUp>,
    /// CutMix's α, if on.
    pub cutmix: Option<super::ops::CutMix>,
}

impl Augmentation {
    /// The policy `auto_augment` names, with `ra_magnitude` for RandAugment.
    ///
    /// Errors: an unknown name (the valid ones listed), a RandAugment magnitude outside 0..=30.
    pub fn policy(&self) -> Result<Option<Policy>, DataError> {
        let Some(name) = &self.auto_augment else {
            return Ok(None);
        };
        Ok(Some(match Policy::from_name(name)? {
            Policy::RandAugment(ra) => Policy::RandAugment(RandAugment::new(
                ra.num_ops(),
                self.ra_magnitude,
                ra.bins(),
            )?),
            other => other,
        }))
    }

    /// Random erasing with probability `random_erase` (torchvision's defaults otherwise).
    ///
    /// Errors: a probability outside `[0, 1]`.
    pub fn erasing(&self) -> Result<Option<RandomErasing>, DataError> {
        let erasing = RandomErasing {
            p: self.random_erase,
            ..RandomErasing::default()
        };
        erasing.validate()?;
        Ok((self.random_erase > 0.0).then_some(erasing))
    }

    /// The batch stage.
    ///
    /// Errors: an α that is negative or not finite.
    pub fn batch_mix(&self) -> Result<BatchMix, DataError> {
        let on = |alpha: f64, field: &'static str| -> Result<bool, DataError> {
            if !alpha.is_finite() || alpha < 0.0 {
                return Err(DataError::InvalidConfig {
                    field,
                    value: alpha.to_string(),
                    expected: "0 (off) or a positive, finite α".into(),
                });
            }
            Ok(alpha > 0.0)
        };
        let mixup = on(self.mixup_alpha, "mixup_alpha")?;
        let cutmix = on(self.cutmix_alpha, "cutmix_alpha")?;
        Ok(BatchMix {
            mixup: mixup
                .then(|| super::ops::MixUp::new(self.mixup_alpha))
                .transpose()?,
            cutmix: cutmix
                .then(|| super::ops::CutMix::new(self.cutmix_alpha))
                .transpose()?,
        })
    }

    /// Checks every stage, and that a mixing stage has batches of at least 2 images. The crop
    /// padding is checked against [`MAX_PADDING`](super::MAX_PADDING) here, against the side
    /// of the images by the pipelines.
    ///
    /// Errors: as [`CropFlip::validate`], [`policy`](Self::policy), [`erasing`](Self::erasing)
    /// and [`batch_mix`](Self::batch_mix); mixing with `batch_size < 2`.
    pub fn validate(&self, batch_size: usize) -> Result<(), DataError> {
        self.crop_flip.validate(usize::MAX)?;
        self.policy()?;
        self.erasing()?;
        if self.batch_mix()?.is_on() && batch_size < 2 {
            return Err(DataError::InvalidConfig {
                field: "batch_size",
                value: batch_size.to_string(),
                expected: "at least 2 with mixup or cutmix (each image is mixed with another \
                           of its batch)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Whether any per-image stage after crop and flip is on.
    pub fn has_image_stages(&self) -> bool {
        self.auto_augment.is_some() || self.random_erase > 0.0
    }
}

impl fmt::Display for Augmentation {
    /// The crop and flip settings when not the default, then the stages after crop and flip,
    /// as `crop: reflect padding 2, alternate flip; ta_wide, erase 0.25, mixup 0.2 | cutmix 1`,
    /// or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let crop = (!self.crop_flip.is_default()).then(|| format!("crop: {}", self.crop_flip));
        let mut parts = Vec::new();
        match self.auto_augment.as_deref() {
            Some("ra") => parts.push(format!("ra (magnitude {})", self.ra_magnitude)),
            Some(name) => parts.push(name.to_string()),
            None => {}
        }
        if self.random_erase > 0.0 {
            parts.push(format!("random erasing {}", self.random_erase));
        }
        let mix: Vec<String> = [("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)]
            .into_iter()
            .filter(|(_, a)| *a > 0.0)
            .map(|(n, a)| format!("{n} {a}"))
            .collect();
        if !mix.is_empty() {
            parts.push(mix.join(" or "));
        }
        match (crop, parts.is_empty()) {
            (None, true) => f.write_str("none"),
            (None, false) => f.write_str(&parts.join(", ")),
            (Some(crop), true) => f.write_str(&crop),
            (Some(crop), false) => write!(f, "{crop}; {}", parts.join(", ")),
        }
    }
}

impl BatchMix {
    /// Whether MixUp or CutMix is on.
    pub fn is_on(&self) -> bool {
        self.mixup.is_some() || self.cutmix.is_some()
    }
}

/// The random choices of the stages after crop and flip for one image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDraws {
    /// The policy's ops, in order (empty without a policy).
    pub ops: Vec<OpDraw>,
    /// Whether a policy is on: the image then goes through [`ImageDraws::apply_policy`] even
    /// when it drew no op (AutoAugment's sub-policies can draw none).
    pub policy: bool,
    /// The rectangle random erasing sets to 0 on the normalised image, if any.
    pub erase: Option<EraseBox>,
}

/// The draws of `count` images of `side` x `side` pixels of batch stream `stream` of `epoch`:
/// the policy's ops from the policy stream, then the erasing boxes from the erasing stream,
/// each in batch order.
///
/// Errors: as [`Augmentation::validate`].
pub fn image_draws(
    aug: &Augmentation,
    seed: u64,
    epoch: u64,
    stream: usize,
    count: usize,
    side: usize,
) -> Result<Vec<ImageDraws>, DataError> {
    let mut draws = vec![ImageDraws::default(); count];
    if let Some(policy) = aug.policy()? {
        let mut rng = stage_rng(seed, epoch, stream, Stage::Policy);
        for d in &mut draws {
            d.ops = policy.draw(&mut rng, side, side);
            d.policy = true;
        }
    }
    if let Some(erasing) = aug.erasing()? {
        let mut rng = stage_rng(seed, epoch, stream, Stage::Erasing);
        for d in &mut draws {
            d.erase = erasing.draw(&mut rng, side, side);
        }
    }
    Ok(draws)
}

/// The map of the raw byte onto itself: crop and flip kernels write `u8` values as `f32` with
/// it, for a policy to work on the 8-bit image.
pub(crate) const UNIT_AFFINE: Affine = Affine {
    scale: [1.0; 3],
    shift: [0.0; 3],
};

impl ImageDraws {
    /// Whether the image must be cropped in pixel values (`UNIT_AFFINE`) for
    /// [`apply_policy`](Self::apply_policy), rather than normalised straight away.
    pub fn needs_pixels(&self) -> bool {
        self.policy
    }

    /// The policy's ops on the 8-bit `image`, fill 0 (torchvision's default).
    ///
    /// Errors: a magnitude an op refuses (not with the policies' own tables).
    pub fn apply_ops(&self, image: RgbPlanes) -> Result<RgbPlanes, DataError> {
        match self.ops.is_empty() {
            true => Ok(image),
            false => apply_draws(&image, &self.ops, [0; 3]),
        }
    }

    /// The policy's ops on `out`, a `[3, side, side]` image of pixel values (0..=255 as `f32`,
    /// written with `UNIT_AFFINE`), then the normalisation `affine`, in place.
    ///
    /// Errors: a magnitude an op refuses (not with the policies' own tables).
    pub fn apply_policy(
        &self,
        out: &mut [f32],
        side: usize,
        affine: &Affine,
    ) -> Result<(), DataError> {
        let bytes: Vec<u8> = out.iter().map(|&v| v as u8).collect();
        let image = self.apply_ops(RgbPlanes::new(side, side, bytes)?)?;
        let plane = side * side;
        for (c, (dst, src)) in out
            .chunks_exact_mut(plane)
            .zip(image.as_slice().chunks_exact(plane))
            .enumerate()
        {
            let (scale, shift) = (affine.scale[c], affine.shift[c]);
            for (o, &px) in dst.iter_mut().zip(src) {
                *o = f32::from(px) * scale + shift;
            }
        }
        Ok(())
    }

    /// Random erasing on the normalised `[3, side, side]` image `out`, if drawn.
    ///
    /// Errors: an `out` of another length.
    pub fn apply_erase(&self, out: &mut [f32], side: usize) -> Result<(), DataError> {
        match self.erase {
            Some(b) => super::ops::erase(out, 3, side, side, b, 0.0),
            None => Ok(()),
        }
    }

    /// Both per-image stages on `out`, cropped with `UNIT_AFFINE` when
    /// [`needs_pixels`](Self::needs_pixels) and with `affine` otherwise.
    ///
    /// Errors: as [`apply_policy`](Self::apply_policy) and [`apply_erase`](Self::apply_erase).
    pub fn finish(&self, out: &mut [f32], side: usize, affine: &Affine) -> Result<(), DataError> {
        if self.needs_pixels() {
            self.apply_policy(out, side, affine)?;
        }
        self.apply_erase(out, side)
    }
}

/// The batch stage's stream for batch stream `stream` of `epoch`, from which [`mix_batch`]
/// draws MixUp or CutMix (probability 1/2 each when both are on, torchvision's
/// `RandomChoice`), then its λ and box.
pub(crate) fn mix_rng(seed: u64, epoch: u64, stream: usize) -> rand_chacha::ChaCha8Rng {
    stage_rng(seed, epoch, stream, Stage::Mix)
}

/// The batch stage on one batch: `images` `[B, C, H, W]` floating and `labels` `int64 [B]`
/// mixed into soft targets `[B, classes]`; `None` when no mix is on or the batch has a single
/// image (mixing an image with itself changes nothing: the trailing batch of an epoch can have
/// one).
///
/// Errors: labels outside `0..classes`, a libtorch failure.
pub fn mix_batch(
    mix: &BatchMix,
    rng: &mut impl Rng,
    images: &tch::Tensor,
    labels: &tch::Tensor,
    classes: i64,
) -> Result<Option<(tch::Tensor, tch::Tensor)>, DataError> {
    if !mix.is_on() || labels.size().first().copied().unwrap_or(0) < 2 {
        return Ok(None);
    }
    let use_mixup = match (mix.mixup, mix.cutmix) {
        (Some(_), Some(_)) => rng.gen_bool(0.5),
        (m, _) => m.is_some(),
    };
    let mixed = match (use_mixup, mix.mixup, mix.cutmix) {
        (true, Some(m), _) => m.apply(rng, images, labels, classes)?.0,
        (_, _, Some(c)) => c.apply(rng, images, labels, classes)?.0,
        _ => return Ok(None),
    };
    Ok(Some((mixed.images, mixed.targets)))
}
