//! The preset table: every named architecture, once. [`MODEL_NAMES`],
//! [`ResNeXtConfig::from_name`] and the named constructors all read it, so adding a preset is
//! one line in [`PRESETS`].
use super::config::DEFAULT_BN_MOMENTUM;
use super::{Activation, Downsample, ModelError, ResNeXtConfig, Stem};

/// A named ResNeXt architecture: everything a [`ResNeXtConfig`] holds but the number of
/// classes and `zero_init_residual` (presets use no zero init). Every preset but the
/// time-to-accuracy one ([`Layout::FAST`]) has torchvision's layout with the CIFAR stem
/// ([`Layout::TORCHVISION`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// The name [`ResNeXtConfig::from_name`] accepts.
    pub name: &'static str,
    /// Output channels of the stem convolution.
    pub stem_channels: i64,
    /// Number of blocks in each stage.
    pub blocks: &'static [usize],
    /// Planes of each stage.
    pub planes: &'static [i64],
    /// Number of groups of the grouped convolutions (C).
    pub cardinality: i64,
    /// Width of each group at `planes = 64` (d).
    pub base_width: i64,
    /// Stem, downsampling, activation and BN momentum.
    pub layout: Layout,
}

/// The parts of an architecture beyond its sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    /// The stem.
    pub stem: Stem,
    /// How stages reduce the resolution.
    pub downsample: Downsample,
    /// The nonlinearity.
    pub activation: Activation,
    /// The BN momentum (PyTorch's convention).
    pub bn_momentum: f64,
    /// The factor on the logits.
    pub logit_scale: f64,
}

impl Layout {
    /// torchvision's, with the CIFAR stem: 3x3 stem convolution, strided downsampling, ReLU,
    /// BN momentum 0.1.
    pub const TORCHVISION: Layout = Layout {
        stem: Stem::Cifar,
        downsample: Downsample::Stride,
        activation: Activation::Relu,
        bn_momentum: DEFAULT_BN_MOMENTUM,
        logit_scale: 1.0,
    };
    /// The time-to-accuracy layout, airbench's around ResNeXt blocks: the whitening stem,
    /// max-pool downsampling in every stage, GELU, BN momentum 0.4 (airbench's 0.6 in its
    /// convention), logits times 1/9 (airbench's `scaling_factor`). See
    /// docs/time-to-accuracy.md for the reasons and measurements.
    pub const FAST: Layout = Layout {
        stem: Stem::Whitening,
        downsample: Downsample::MaxPool,
        activation: Activation::Gelu,
        bn_momentum: 0.4,
        logit_scale: 1.0 / 9.0,
    };
}

/// Every preset, in the order [`MODEL_NAMES`] lists them: ResNeXt-50 and ResNeXt-101 as
/// torchvision, ResNeXt-29 as the paper's CIFAR networks, and a tiny one for tests. Adding a
/// line here adds a name to [`MODEL_NAMES`] and to [`ResNeXtConfig::from_name`].
#[rustfmt::skip]
pub const PRESETS: &[Preset] = &[
    Preset { name: "resnext50_32x4d", stem_channels: 64, blocks: &[3, 4, 6, 3], planes: &[64, 128, 256, 512], cardinality: 32, base_width: 4, layout: Layout::TORCHVISION },
    Preset { name: "resnext101_32x8d", stem_channels: 64, blocks: &[3, 4, 23, 3], planes: &[64, 128, 256, 512], cardinality: 32, base_width: 8, layout: Layout::TORCHVISION },
    Preset { name: "resnext101_64x4d", stem_channels: 64, blocks: &[3, 4, 23, 3], planes: &[64, 128, 256, 512], cardinality: 64, base_width: 4, layout: Layout::TORCHVISION },
    Preset { name: "resnext29_8x64d", stem_channels: 64, blocks: &[3, 3, 3], planes: &[64, 128, 256], cardinality: 8, base_width: 64, layout: Layout::TORCHVISION },
    Preset { name: "resnext29_16x64d", stem_channels: 64, blocks: &[3, 3, 3], planes: &[64, 128, 256], cardinality: 16, base_width: 64, layout: Layout::TORCHVISION },
    Preset { name: "resnext29_32x4d", stem_channels: 64, blocks: &[3, 3, 3], planes: &[64, 128, 256], cardinality: 32, base_width: 4, layout: Layout::TORCHVISION },
    Preset { name: "resnext29_2x64d", stem_channels: 64, blocks: &[3, 3, 3], planes: &[64, 128, 256], cardinality: 2, base_width: 64, layout: Layout::TORCHVISION },
    Preset { name: "tiny", stem_channels: 32, blocks: &[1, 1, 1], planes: &[16, 32, 64], cardinality: 8, base_width: 8, layout: Layout::TORCHVISION },
    Preset { name: "resnext_fast", stem_channels: 24, blocks: &[1, 1, 3], planes: &[16, 64, 64], cardinality: 4, base_width: 48, layout: Layout::FAST },
];

/// Names accepted by [`ResNeXtConfig::from_name`]: the names of [`PRESETS`], in order.
pub const MODEL_NAMES: [&str; PRESETS.len()] = preset_names();

/// The names of [`PRESETS`], at compile time.
const fn preset_names() -> [&'static str; PRESETS.len()] {
    let mut names = [""; PRESETS.len()];
    let mut i = 0;
    while i < PRESETS.len() {
        names[i] = PRESETS[i].name;
        i += 1;
    }
    names
}

impl Preset {
    /// The preset called `name`, if there is one.
    pub fn find(name: &str) -> Option<&'static Preset> {
        PRESETS.iter().find(|p| p.name == name)
    }

    /// This architecture with its layout and `num_classes` classes.
    pub fn config(&self, num_classes: i64) -> ResNeXtConfig {
        ResNeXtConfig {
            name: self.name.to_string(),
            stem: self.layout.stem,
            stem_channels: self.stem_channels,
            blocks: self.blocks.to_vec(),
            planes: self.planes.to_vec(),
            cardinality: self.cardinality,
            base_width: self.base_width,
            num_classes,
            zero_init_residual: false,
            downsample: self.layout.downsample,
            activation: self.layout.activation,
            bn_momentum: self.layout.bn_momentum,
            logit_scale: self.layout.logit_scale,
        }
    }
}

impl ResNeXtConfig {
    /// The preset called `name` (one of [`MODEL_NAMES`]).
    ///
    /// # Errors
    /// [`ModelError::UnknownModel`] listing the valid names.
    pub fn from_name(name: &str, num_classes: i64) -> Result<Self, ModelError> {
        match Preset::find(name) {
            Some(preset) => Ok(preset.config(num_classes)),
            None => Err(ModelError::UnknownModel {
                name: name.to_string(),
                valid: MODEL_NAMES.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    /// The preset `name` of the table, for the named constructors below.
    fn preset(name: &str, num_classes: i64) -> Self {
        match Preset::find(name) {
            Some(preset) => preset.config(num_classes),
            None => unreachable!("{name} is missing from PRESETS"),
        }
    }

    /// ResNeXt-50 (32x4d), stages [3, 4, 6, 3], with the CIFAR stem (set `stem` to
    /// [`Stem::ImageNet`] for torchvision's `resnext50_32x4d`).
    pub fn resnext50_32x4d(num_classes: i64) -> Self {
        Self::preset("resnext50_32x4d", num_classes)
    }

    /// ResNeXt-101 (32x8d), stages [3, 4, 23, 3], CIFAR stem by default.
    pub fn resnext101_32x8d(num_classes: i64) -> Self {
        Self::preset("resnext101_32x8d", num_classes)
    }

    /// ResNeXt-101 (64x4d), stages [3, 4, 23, 3], CIFAR stem by default.
    pub fn resnext101_64x4d(num_classes: i64) -> Self {
        Self::preset("resnext101_64x4d", num_classes)
    }

    /// The paper's CIFAR network ResNeXt-29 (8x64d): CIFAR stem, three stages of three blocks.
    pub fn resnext29_8x64d(num_classes: i64) -> Self {
        Self::preset("resnext29_8x64d", num_classes)
    }

    /// The paper's CIFAR network ResNeXt-29 (16x64d).
    pub fn resnext29_16x64d(num_classes: i64) -> Self {
        Self::preset("resnext29_16x64d", num_classes)
    }

    /// ResNeXt-29 (32x4d), a small CIFAR ResNeXt.
    pub fn resnext29_32x4d(num_classes: i64) -> Self {
        Self::preset("resnext29_32x4d", num_classes)
    }

    /// ResNeXt-29 (2x64d).
    pub fn resnext29_2x64d(num_classes: i64) -> Self {
        Self::preset("resnext29_2x64d", num_classes)
    }

    /// A genuine but small ResNeXt (grouped bottlenecks with shortcuts, three stages of one
    /// block, 8 groups) for tests and quick CPU runs: about 87k parameters and 32 MFLOPs per
    /// 32x32 image.
    pub fn tiny(num_classes: i64) -> Self {
        Self::preset("tiny", num_classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_named_constructor_is_in_the_table() {
        for (i, name) in MODEL_NAMES.iter().enumerate() {
            assert!(!MODEL_NAMES[..i].contains(name), "{name} twice");
        }
        let named = [
            ResNeXtConfig::resnext50_32x4d(10),
            ResNeXtConfig::resnext101_32x8d(10),
            ResNeXtConfig::resnext101_64x4d(10),
            ResNeXtConfig::resnext29_8x64d(10),
            ResNeXtConfig::resnext29_16x64d(10),
            ResNeXtConfig::resnext29_32x4d(10),
            ResNeXtConfig::resnext29_2x64d(10),
            ResNeXtConfig::tiny(10),
        ];
        for cfg in named {
            assert_eq!(ResNeXtConfig::from_name(&cfg.name, 10).unwrap(), cfg);
            cfg.validate().unwrap();
        }
    }
}
