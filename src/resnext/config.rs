use serde::{Deserialize, Serialize};

use super::ModelError;

/// The first layers of the network, before the residual stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// For 32x32 images (CIFAR): 3x3 conv, stride 1, to `stem_channels`, BN, ReLU; no max-pool.
    Cifar,
    /// As torchvision for 224x224 images: 7x7 conv, stride 2, BN, ReLU, 3x3 max-pool, stride 2.
    ImageNet,
}

/// A ResNeXt architecture, as data.
///
/// Stage `i` has `blocks[i]` bottleneck blocks with `planes[i]` planes: the grouped 3x3
/// convolution is `floor(planes * base_width / 64) * cardinality` channels wide and each block
/// outputs `4 * planes` channels (torchvision's `Bottleneck` with `groups` and `width_per_group`).
/// The first stage keeps the resolution, every later stage halves it in the first block's
/// 3x3 convolution.
///
/// ```
/// use resnext::{ResNeXtConfig, Stem};
/// let mut cfg = ResNeXtConfig::resnext50_32x4d(1000);
/// cfg.stem = Stem::ImageNet; // torchvision's resnext50_32x4d
/// assert_eq!(cfg.blocks, vec![3, 4, 6, 3]);
/// assert_eq!(ResNeXtConfig::from_name("resnext29_8x64d", 10).unwrap().cardinality, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNeXtConfig {
    /// The preset name this configuration came from (informative; `custom` for hand-made ones).
    pub name: String,
    /// The stem: [`Stem::Cifar`] for 32x32 inputs, [`Stem::ImageNet`] for 224x224.
    pub stem: Stem,
    /// Output channels of the stem convolution (64 in torchvision and the paper).
    pub stem_channels: i64,
    /// Number of blocks in each stage.
    pub blocks: Vec<usize>,
    /// Planes of each stage (a block outputs `4 * planes` channels).
    pub planes: Vec<i64>,
    /// Number of groups of the 3x3 convolution (C in the paper).
    pub cardinality: i64,
    /// Width of each group at `planes = 64` (d in the paper).
    pub base_width: i64,
    /// Number of classes of the linear classifier.
    pub num_classes: i64,
    /// Initialise the last BN weight of every block to zero, so each block starts as the
    /// identity (torchvision's `zero_init_residual`). Off by default.
    pub zero_init_residual: bool,
}

/// Names accepted by [`ResNeXtConfig::from_name`].
pub const MODEL_NAMES: [&str; 8] = [
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnext29_8x64d",
    "resnext29_16x64d",
    "resnext29_32x4d",
    "resnext29_2x64d",
    "tiny",
];

/// Block expansion of the bottleneck: a block outputs `EXPANSION * planes` channels.
pub(crate) const EXPANSION: i64 = 4;

impl ResNeXtConfig {
    #[allow(clippy::too_many_arguments)]
    fn preset(
        name: &str,
        stem_channels: i64,
        blocks: &[usize],
        planes: &[i64],
        cardinality: i64,
        base_width: i64,
        num_classes: i64,
    ) -> Self {
        Self {
            name: name.to_string(),
            stem: Stem::Cifar,
            stem_channels,
            blocks: blocks.to_vec(),
            planes: planes.to_vec(),
            cardinality,
            base_width,
            num_classes,
            zero_init_residual: false,
        }
    }

    /// ResNeXt-50 (32x4d), stages [3, 4, 6, 3], with the CIFAR stem (set `stem` to
    /// [`Stem::ImageNet`] for torchvision's `resnext50_32x4d`).
    pub fn resnext50_32x4d(num_classes: i64) -> Self {
        Self::preset(
            "resnext50_32x4d",
            64,
            &[3, 4, 6, 3],
            &[64, 128, 256, 512],
            32,
            4,
            num_classes,
        )
    }

    /// ResNeXt-101 (32x8d), stages [3, 4, 23, 3], CIFAR stem by default.
    pub fn resnext101_32x8d(num_classes: i64) -> Self {
        Self::preset(
            "resnext101_32x8d",
            64,
            &[3, 4, 23, 3],
            &[64, 128, 256, 512],
            32,
            8,
            num_classes,
        )
    }

    /// ResNeXt-101 (64x4d), stages [3, 4, 23, 3], CIFAR stem by default.
    pub fn resnext101_64x4d(num_classes: i64) -> Self {
        Self::preset(
            "resnext101_64x4d",
            64,
            &[3, 4, 23, 3],
            &[64, 128, 256, 512],
            64,
            4,
            num_classes,
        )
    }

    fn resnext29(name: &str, cardinality: i64, base_width: i64, num_classes: i64) -> Self {
        Self::preset(
            name,
            64,
            &[3, 3, 3],
            &[64, 128, 256],
            cardinality,
            base_width,
            num_classes,
        )
    }

    /// The paper's CIFAR network ResNeXt-29 (8x64d): CIFAR stem, three stages of three blocks.
    pub fn resnext29_8x64d(num_classes: i64) -> Self {
        Self::resnext29("resnext29_8x64d", 8, 64, num_classes)
    }

    /// The paper's CIFAR network ResNeXt-29 (16x64d).
    pub fn resnext29_16x64d(num_classes: i64) -> Self {
        Self::resnext29("resnext29_16x64d", 16, 64, num_classes)
    }

    /// ResNeXt-29 (32x4d), a small CIFAR ResNeXt.
    pub fn resnext29_32x4d(num_classes: i64) -> Self {
        Self::resnext29("resnext29_32x4d", 32, 4, num_classes)
    }

    /// ResNeXt-29 (2x64d).
    pub fn resnext29_2x64d(num_classes: i64) -> Self {
        Self::resnext29("resnext29_2x64d", 2, 64, num_classes)
    }

    /// A genuine but small ResNeXt (grouped bottlenecks with shortcuts, three stages of one
    /// block, 8 groups) for tests and quick CPU runs: about 0.3M parameters and 48 MFLOPs per
    /// 32x32 image.
    pub fn tiny(num_classes: i64) -> Self {
        Self::preset("tiny", 32, &[1, 1, 1], &[16, 32, 64], 8, 8, num_classes)
    }

    /// The preset called `name` (one of [`MODEL_NAMES`]).
    ///
    /// # Errors
    /// [`ModelError::UnknownModel`] listing the valid names.
    pub fn from_name(name: &str, num_classes: i64) -> Result<Self, ModelError> {
        let cfg = match name {
            "resnext50_32x4d" => Self::resnext50_32x4d(num_classes),
            "resnext101_32x8d" => Self::resnext101_32x8d(num_classes),
            "resnext101_64x4d" => Self::resnext101_64x4d(num_classes),
            "resnext29_8x64d" => Self::resnext29_8x64d(num_classes),
            "resnext29_16x64d" => Self::resnext29_16x64d(num_classes),
            "resnext29_32x4d" => Self::resnext29_32x4d(num_classes),
            "resnext29_2x64d" => Self::resnext29_2x64d(num_classes),
            "tiny" => Self::tiny(num_classes),
            _ => {
                return Err(ModelError::UnknownModel {
                    name: name.to_string(),
                    valid: MODEL_NAMES.iter().map(|s| s.to_string()).collect(),
                })
            }
        };
        Ok(cfg)
    }

    /// This configuration with another stem.
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }

    /// Width of the grouped 3x3 convolution of a block with `planes` planes.
    pub fn group_width(&self, planes: i64) -> i64 {
        planes * self.base_width / 64 * self.cardinality
    }

    /// Number of channels the classifier sees (`4 * planes` of the last stage).
    pub fn feature_channels(&self) -> i64 {
        self.planes
            .last()
            .map_or(self.stem_channels, |p| EXPANSION * p)
    }

    /// Checks that every size is positive and that the stage lists agree.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] naming the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |field, value: String, expected| {
            Err(ModelError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if self.num_classes < 1 {
            return bad("num_classes", self.num_classes.to_string(), "at least 1");
        }
        if self.stem_channels < 1 {
            return bad(
                "stem_channels",
                self.stem_channels.to_string(),
                "at least 1",
            );
        }
        if self.cardinality < 1 {
            return bad("cardinality", self.cardinality.to_string(), "at least 1");
        }
        if self.base_width < 1 {
            return bad("base_width", self.base_width.to_string(), "at least 1");
        }
        if self.blocks.is_empty() || self.blocks.len() != self.planes.len() {
            return bad(
                "blocks/planes",
                format!("{:?}/{:?}", self.blocks, self.planes),
                "two non-empty lists of the same length",
            );
        }
        if self.blocks.contains(&0) {
            return bad(
                "blocks",
                format!("{:?}", self.blocks),
                "at least one block per stage",
            );
        }
        if let Some(p) = self
            .planes
            .iter()
            .find(|&&p| self.group_width(p) < self.cardinality)
        {
            return bad(
                "planes",
                p.to_string(),
                "large enough that planes * base_width / 64 >= 1 (each group needs a channel)",
            );
        }
        Ok(())
    }
}
