use serde::{Deserialize, Serialize};

use super::spec::bottleneck_width;
use super::ModelError;

/// The first layers of the network, before the residual stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// For 32x32 images (CIFAR): 3x3 conv, stride 1, to `stem_channels`, BN, ReLU; no max-pool.
    Cifar,
    /// As torchvision for 224x224 images: 7x7 conv, stride 2, BN, ReLU, 3x3 max-pool, stride 2.
    ImageNet,
    /// airbench's patch-whitening stem for 32x32 images: a 2x2 convolution without padding
    /// (32x32 becomes 31x31) to `stem_channels` channels, with a bias and without BN, then the
    /// activation. Its weights are not trained: [`whiten_stem`](super::whiten_stem) sets them
    /// from the covariance of the training images' 2x2 patches (each eigenvector scaled by its
    /// inverse square root eigenvalue, and its negation), so `stem_channels` must be
    /// `2 * 3 * 2 * 2 = 24`.
    Whitening,
}

/// How stages reduce the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Downsample {
    /// torchvision's: the first stage keeps the resolution, the first block of every later
    /// stage has stride 2 in its grouped convolution and its projection shortcut.
    #[default]
    Stride,
    /// Every stage halves the resolution with a 2x2 max-pool (stride 2) right after the first
    /// block's grouped convolution (which then has stride 1), before its BN; the shortcut pools
    /// the block's input the same way before its 1x1 projection. The convolution runs at the
    /// full resolution, as airbench's `ConvGroup` (convolution, then pool).
    MaxPool,
}

/// The nonlinearity after every BN (and after the stem).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// ReLU (the paper's, torchvision's).
    #[default]
    Relu,
    /// GELU, exact (erf) form, as PyTorch's `nn.GELU()` (airbench's).
    Gelu,
}

/// Channels of the whitening stem: each eigenvector of the 12-dimensional 2x2 RGB patches and
/// its negation.
pub const WHITENING_CHANNELS: i64 = 24;

/// PyTorch's BatchNorm momentum (the weight of the new batch statistics in the running ones).
pub(crate) const DEFAULT_BN_MOMENTUM: f64 = 0.1;

fn default_bn_momentum() -> f64 {
    DEFAULT_BN_MOMENTUM
}

fn is_default_bn_momentum(m: &f64) -> bool {
    *m == DEFAULT_BN_MOMENTUM
}

fn default_logit_scale() -> f64 {
    1.0
}

fn is_default_logit_scale(s: &f64) -> bool {
    *s == 1.0
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
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
    /// How the stages reduce the resolution ([`Downsample::Stride`], torchvision's, by
    /// default; absent from JSON when it is the default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub downsample: Downsample,
    /// The nonlinearity ([`Activation::Relu`] by default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub activation: Activation,
    /// Momentum of every BatchNorm, PyTorch's convention (0.1 by default; airbench's 0.6 is
    /// 0.4 here, since airbench passes `1 - momentum` to PyTorch).
    #[serde(
        default = "default_bn_momentum",
        skip_serializing_if = "is_default_bn_momentum"
    )]
    pub bn_momentum: f64,
    /// The logits are the classifier's output times this (1 by default; airbench's
    /// `scaling_factor` 1/9 keeps the logits, and the gradients flowing back from them, small
    /// early in training).
    #[serde(
        default = "default_logit_scale",
        skip_serializing_if = "is_default_logit_scale"
    )]
    pub logit_scale: f64,
}

impl ResNeXtConfig {
    /// Whether this is torchvision's layout ([`Stem::Cifar`] or [`Stem::ImageNet`], strided
    /// downsampling, ReLU): what the inference form, the ONNX and TorchScript exporters and
    /// torchvision's weights cover. `None` when it is; otherwise what differs, for an error.
    pub fn nonstandard_part(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.stem == Stem::Whitening {
            parts.push("the whitening stem".to_string());
        }
        if self.downsample != Downsample::Stride {
            parts.push(format!("downsampling {:?}", self.downsample));
        }
        if self.activation != Activation::Relu {
            parts.push(format!("activation {:?}", self.activation));
        }
        if self.logit_scale != 1.0 {
            parts.push(format!("logit scale {}", self.logit_scale));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// This configuration with another stem.
    pub fn with_stem(mut self, stem: Stem) -> Self {
        self.stem = stem;
        self
    }

    /// Width of the grouped 3x3 convolution of a block with `planes` planes.
    pub fn group_width(&self, planes: i64) -> i64 {
        bottleneck_width(planes, self.base_width, self.cardinality)
    }

    /// Number of channels the classifier sees (`4 * planes` of the last stage).
    pub fn feature_channels(&self) -> i64 {
        self.stages()
            .last()
            .map_or(self.stem_channels, |stage| stage.out_channels)
    }

    /// Checks that every size is positive and within [`CONFIG_LIMITS`], and that the stage lists
    /// agree, with checked arithmetic: a configuration read from a file cannot overflow a size
    /// or ask for a network of absurd size.
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
        let sizes = [
            (
                "num_classes",
                self.num_classes,
                CONFIG_LIMITS.classes,
                "1 to 2^20",
            ),
            (
                "stem_channels",
                self.stem_channels,
                CONFIG_LIMITS.channels,
                "1 to 65536",
            ),
            (
                "cardinality",
                self.cardinality,
                CONFIG_LIMITS.channels,
                "1 to 65536",
            ),
            (
                "base_width",
                self.base_width,
                CONFIG_LIMITS.channels,
                "1 to 65536",
            ),
        ];
        for (field, value, limit, expected) in sizes {
            if !(1..=limit).contains(&value) {
                return bad(field, value.to_string(), expected);
            }
        }
        self.validate_stages()?;
        self.validate_layout()
    }

    /// The whitening stem's width and the BN momentum.
    fn validate_layout(&self) -> Result<(), ModelError> {
        if self.stem == Stem::Whitening && self.stem_channels != WHITENING_CHANNELS {
            return Err(ModelError::InvalidConfig {
                field: "stem_channels",
                value: self.stem_channels.to_string(),
                expected: "24 with the whitening stem (2 x 3 channels x 2 x 2 pixels)",
            });
        }
        if !(self.logit_scale.is_finite() && self.logit_scale > 0.0) {
            return Err(ModelError::InvalidConfig {
                field: "logit_scale",
                value: self.logit_scale.to_string(),
                expected: "a finite number above 0",
            });
        }
        if !(0.0..=1.0).contains(&self.bn_momentum) {
            return Err(ModelError::InvalidConfig {
                field: "bn_momentum",
                value: self.bn_momentum.to_string(),
                expected: "a number from 0 to 1",
            });
        }
        Ok(())
    }

    fn validate_stages(&self) -> Result<(), ModelError> {
        let bad = |field, value: String, expected| {
            Err(ModelError::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if self.blocks.is_empty()
            || self.blocks.len() != self.planes.len()
            || self.blocks.len() > CONFIG_LIMITS.stages
        {
            return bad(
                "blocks/planes",
                format!("{:?}/{:?}", self.blocks, self.planes),
                "two non-empty lists of the same length, at most 16 stages",
            );
        }
        if let Some(b) = self
            .blocks
            .iter()
            .find(|&&b| !(1..=CONFIG_LIMITS.blocks).contains(&b))
        {
            return bad("blocks", b.to_string(), "1 to 1024 blocks per stage");
        }
        if let Some(p) = self
            .planes
            .iter()
            .find(|&&p| !(1..=CONFIG_LIMITS.channels).contains(&p))
        {
            return bad("planes", p.to_string(), "1 to 65536");
        }
        // Bounded above, so these products fit in an i64.
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
        if let Some(p) = self
            .planes
            .iter()
            .find(|&&p| self.group_width(p) > CONFIG_LIMITS.width)
        {
            return bad(
                "planes",
                p.to_string(),
                "small enough that a block's width (planes * base_width / 64 * cardinality) is at most 2^20",
            );
        }
        Ok(())
    }
}

/// The bounds [`ResNeXtConfig::validate`] holds every configuration to: far above any published
/// ResNeXt (ResNeXt-101 64x4d: 1,000 classes, 64 groups, widths up to 2,048, 23 blocks in a
/// stage), low enough that every size and product fits in an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigLimits {
    /// Most classes (2^20).
    pub classes: i64,
    /// Most stem channels, planes, groups or base width (65,536).
    pub channels: i64,
    /// Widest grouped convolution of a block (2^20 channels).
    pub width: i64,
    /// Most stages (16).
    pub stages: usize,
    /// Most blocks in a stage (1,024).
    pub blocks: usize,
}

/// The [`ConfigLimits`] of every configuration.
pub const CONFIG_LIMITS: ConfigLimits = ConfigLimits {
    classes: 1 << 20,
    channels: 1 << 16,
    width: 1 << 20,
    stages: 16,
    blocks: 1024,
};
