//! Image augmentation ops and policies of torchvision, as a standalone library: the ops of
//! auto-augmentation on 8-bit RGB images, the TrivialAugmentWide, RandAugment and AutoAugment
//! policies, random erasing, and MixUp / CutMix on batches. The pipelines run them as the
//! stages of an [`Augmentation`](super::Augmentation).
//!
//! * [`RgbPlanes`]: an RGB `u8` image stored as three planes (`[3, H, W]`, CIFAR's layout);
//! * [`Op`]: Identity, ShearX/Y, TranslateX/Y, Rotate, Brightness, Color, Contrast, Sharpness,
//!   Posterize, Solarize, AutoContrast, Equalize, Invert, with torchvision's magnitudes and
//!   `uint8` arithmetic ([`geometry`] and [`color`] hold the kernels);
//! * [`Policy`] ([`TrivialAugmentWide`], [`RandAugment`], [`AutoAugment`]): ops drawn from a
//!   caller's [`rand::Rng`] with torchvision's probabilities over its [`AugmentationSpace`]s;
//! * [`RandomErasing`]: torchvision's rectangle erasing, on the normalised `f32` image;
//! * [`MixUp`], [`CutMix`] ([`mixup_with`], [`cutmix_with`]): batch mixing into soft targets.
//!
//! ```
//! use rand::SeedableRng;
//! use resnext::data::ops::{Policy, RgbPlanes};
//! # fn main() -> Result<(), resnext::data::DataError> {
//! let image = RgbPlanes::filled(32, 32, 128)?;
//! let policy: Policy = "ta_wide".parse()?;
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
//! let out = policy.apply(&mut rng, &image, [0, 0, 0])?;
//! assert_eq!((out.height(), out.width()), (32, 32));
//! # Ok(())
//! # }
//! ```
mod autoaugment;
pub mod color;
mod erasing;
pub mod geometry;
mod image;
mod mix;
mod op;
mod policy;
mod sample;
mod space;

pub use autoaugment::{AutoAugment, AutoAugmentPolicy, SubPolicy, SubPolicyOp, AUTO_AUGMENT_BINS};
pub use erasing::{erase, erase_u8, EraseBox, RandomErasing};
pub use image::RgbPlanes;
pub use mix::{cutmix_box, cutmix_with, mixup_with, CutMix, CutMixBox, MixUp, MixedBatch};
pub use op::Op;
pub use policy::{apply_draws, OpDraw, Policy, RandAugment, TrivialAugmentWide};
pub use space::AugmentationSpace;
