//! Which architecture a weights file is for, from the names and shapes of its tensors alone:
//! the shapes a configuration's variables have ([`expected_shapes`]) and the preset of
//! [`PRESETS`] whose shapes a file has ([`matching_preset`]).
use std::collections::BTreeMap;
use std::fmt;

use super::NUM_BATCHES_TRACKED;
use crate::resnext::{ConvSpec, Preset, ResNeXtConfig, Stem, PRESETS};

/// Tensor names and their shapes, sorted by name.
pub type Shapes = BTreeMap<String, Vec<i64>>;

fn conv_shape(spec: &ConvSpec) -> Vec<i64> {
    vec![
        spec.out_channels,
        spec.in_channels / spec.groups,
        spec.kernel,
        spec.kernel,
    ]
}

fn add_conv(shapes: &mut Shapes, name: &str, spec: &ConvSpec) {
    shapes.insert(format!("{name}.weight"), conv_shape(spec));
}

fn add_batch_norm(shapes: &mut Shapes, name: &str, channels: i64) {
    for part in ["weight", "bias", "running_mean", "running_var"] {
        shapes.insert(format!("{name}.{part}"), vec![channels]);
    }
}

/// The name and shape of every variable of the network `config` describes, as
/// [`ResNeXt::new`](crate::ResNeXt::new) creates them (torchvision's names), without building
/// it.
///
/// ```
/// use resnext::weights::expected_shapes;
/// use resnext::ResNeXtConfig;
/// let shapes = expected_shapes(&ResNeXtConfig::tiny(10));
/// assert_eq!(shapes["conv1.weight"], vec![32, 3, 3, 3]);
/// assert_eq!(shapes["fc.weight"], vec![10, 256]);
/// ```
pub fn expected_shapes(config: &ResNeXtConfig) -> Shapes {
    let mut shapes = Shapes::new();
    let stem = config.stem_spec();
    add_conv(&mut shapes, "conv1", &stem.conv);
    match stem.batch_norm {
        true => add_batch_norm(&mut shapes, "bn1", stem.channels()),
        // A stem without BN (the whitening stem) has a bias instead.
        false => {
            shapes.insert("conv1.bias".into(), vec![stem.channels()]);
        }
    }
    for stage in config.stages() {
        for block in stage.block_specs() {
            let prefix = format!("{}.{}", stage.name, block.index);
            for (i, conv) in block.main_path().iter().enumerate() {
                add_conv(&mut shapes, &format!("{prefix}.conv{}", i + 1), conv);
                add_batch_norm(
                    &mut shapes,
                    &format!("{prefix}.bn{}", i + 1),
                    conv.out_channels,
                );
            }
            if let Some(conv) = block.projection() {
                add_conv(&mut shapes, &format!("{prefix}.downsample.0"), &conv);
                add_batch_norm(
                    &mut shapes,
                    &format!("{prefix}.downsample.1"),
                    conv.out_channels,
                );
            }
        }
    }
    let features = config.feature_channels();
    shapes.insert("fc.weight".into(), vec![config.num_classes, features]);
    shapes.insert("fc.bias".into(), vec![config.num_classes]);
    shapes
}

/// The shapes of the model tensors among `tensors`: everything but BN `num_batches_tracked`
/// counters.
pub fn model_shapes<'a>(tensors: impl IntoIterator<Item = (&'a str, Vec<i64>)>) -> Shapes {
    tensors
        .into_iter()
        .filter(|(name, _)| !name.ends_with(NUM_BATCHES_TRACKED))
        .map(|(name, shape)| (name.to_string(), shape))
        .collect()
}

/// The first preset of [`PRESETS`], with the stem and number of classes that fit, whose
/// variables are exactly `shapes` (every name, every shape; BN `num_batches_tracked` counters
/// aside), or `None` when no preset fits. The number of classes is read from `fc.weight`.
///
/// ```
/// use resnext::weights::{expected_shapes, matching_preset};
/// use resnext::{ResNeXtConfig, Stem};
/// let config = ResNeXtConfig::resnext29_2x64d(7).with_stem(Stem::ImageNet);
/// assert_eq!(matching_preset(&expected_shapes(&config)), Some(config));
/// ```
pub fn matching_preset(shapes: &Shapes) -> Option<ResNeXtConfig> {
    let shapes = model_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())));
    let classes = match shapes.get("fc.weight").map(Vec::as_slice) {
        Some(&[n, _]) if n >= 1 => n,
        _ => return None,
    };
    PRESETS
        .iter()
        .flat_map(|preset: &Preset| {
            [Stem::Cifar, Stem::ImageNet, Stem::Whitening]
                .map(|stem| preset.config(classes).with_stem(stem))
        })
        .find(|config| expected_shapes(config) == shapes)
}

/// What [`matching_preset`] found for a file, for messages.
#[derive(Debug, Clone, PartialEq)]
pub enum FileFit {
    /// The file has exactly the variables of this configuration.
    Preset(Box<ResNeXtConfig>),
    /// No preset, with either stem, has the file's variables.
    NoPreset,
}

impl FileFit {
    /// What [`matching_preset`] says of `shapes`.
    pub fn of(shapes: &Shapes) -> Self {
        match matching_preset(shapes) {
            Some(config) => FileFit::Preset(Box::new(config)),
            None => FileFit::NoPreset,
        }
    }
}

impl fmt::Display for FileFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileFit::Preset(config) => write!(
                f,
                "the file fits the preset `{}` ({:?} stem, {} classes)",
                config.name, config.stem, config.num_classes
            ),
            FileFit::NoPreset => write!(
                f,
                "no preset fits the file (with either stem): it is not a ResNeXt of this crate \
                 or torchvision"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resnext::ResNeXt;
    use tch::{nn, Device};

    /// Every preset with both stems; the large ones are too slow to build, and share their
    /// block code with the ones built here.
    #[test]
    fn expected_shapes_are_those_of_the_built_network() {
        for name in ["tiny", "resnext29_2x64d", "resnext29_32x4d", "resnext_fast"] {
            for stem in [Stem::Cifar, Stem::ImageNet, Stem::Whitening] {
                if stem == Stem::Whitening && name != "resnext_fast" {
                    continue; // the whitening stem is 24 channels wide
                }
                let config = ResNeXtConfig::from_name(name, 5).unwrap().with_stem(stem);
                let vs = nn::VarStore::new(Device::Cpu);
                let _net = ResNeXt::new(&vs.root(), &config);
                let built: Shapes = vs
                    .variables()
                    .into_iter()
                    .map(|(n, t)| (n, t.size()))
                    .collect();
                assert_eq!(expected_shapes(&config), built, "{name} {stem:?}");
            }
        }
    }

    #[test]
    fn every_preset_and_stem_is_found_from_its_own_shapes() {
        for preset in PRESETS {
            for stem in [Stem::Cifar, Stem::ImageNet] {
                let config = preset.config(3).with_stem(stem);
                let mut shapes = expected_shapes(&config);
                shapes.insert("bn1.num_batches_tracked".into(), vec![]);
                assert_eq!(matching_preset(&shapes), Some(config.clone()));
                shapes.remove("layer1.0.bn1.bias");
                assert_eq!(matching_preset(&shapes), None, "{} {stem:?}", preset.name);
            }
        }
    }
}
