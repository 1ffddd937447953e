//! A file turned into a model: its architecture from its tensors' shapes
//! ([`config_from_weights`], [`preset_for_weights`]) and the network built with its weights
//! ([`load_model`]).
use std::path::Path;

use tch::{nn, Device};

use super::{
    check_fits_config, load_tensors, LoadOptions, LoadReport, Shapes, TensorSource, WeightsError,
    WeightsFile,
};
use crate::resnext::{ResNeXt, ResNeXtConfig, Stem};

/// The stem (from the kernel of `conv1.weight`) and the number of classes (from the rows of
/// `fc.weight`) of the tensors of the file `path`.
pub(crate) fn stem_and_classes(path: &Path, shapes: &Shapes) -> Result<(Stem, i64), WeightsError> {
    let shape_of = |tensor: &str, what: &'static str| {
        shapes.get(tensor).ok_or_else(|| WeightsError::Infer {
            path: path.to_path_buf(),
            what,
            reason: format!("the file has no `{tensor}` tensor"),
        })
    };
    let conv1 = shape_of("conv1.weight", "stem")?;
    let stem = match conv1.as_slice() {
        [_, 3, 3, 3] => Stem::Cifar,
        [_, 3, 7, 7] => Stem::ImageNet,
        other => {
            return Err(WeightsError::Infer {
                path: path.to_path_buf(),
                what: "stem",
                reason: format!(
                    "`conv1.weight` has shape {other:?}; expected [C, 3, 3, 3] (CIFAR stem) or \
                     [C, 3, 7, 7] (ImageNet stem)"
                ),
            })
        }
    };
    let fc = shape_of("fc.weight", "number of classes")?;
    let num_classes = match fc.as_slice() {
        [n, _] if *n >= 1 => *n,
        other => {
            return Err(WeightsError::Infer {
                path: path.to_path_buf(),
                what: "number of classes",
                reason: format!("`fc.weight` has shape {other:?}; expected [classes, features]"),
            })
        }
    };
    Ok((stem, num_classes))
}

/// The preset (with its stem and number of classes) whose variables are exactly the tensors of the
/// safetensors or PyTorch file `path` (see [`matching_preset`](super::matching_preset)), or `None`
/// when no preset fits: the architecture of a file that carries no
/// [`WeightsMetadata`](super::WeightsMetadata). Only the file's header (or pickle) is read.
///
/// # Errors
/// As [`read_state_dict`](super::read_state_dict).
pub fn preset_for_weights(path: &Path) -> Result<Option<ResNeXtConfig>, WeightsError> {
    Ok(WeightsFile::open(path)?.preset())
}

/// The configuration of the preset `name` (one of [`crate::resnext::MODEL_NAMES`]) with the stem
/// and number of classes of the weights in `path` (safetensors or PyTorch, as
/// [`read_state_dict`](super::read_state_dict) reads them): the stem from the kernel of
/// `conv1.weight` (3x3: [`Stem::Cifar`], 7x7: [`Stem::ImageNet`]), the classes from the rows of
/// `fc.weight`. Only the file's header (or pickle) is read; the rest of the file is checked when
/// the weights are loaded.
///
/// # Errors
/// [`WeightsError::Io`] for an unreadable or corrupt file, [`WeightsError::Infer`] when
/// `conv1.weight` or `fc.weight` is missing or oddly shaped, [`WeightsError::Model`] for an
/// unknown name.
pub fn config_from_weights(name: &str, path: &Path) -> Result<ResNeXtConfig, WeightsError> {
    WeightsFile::open(path)?.config_for(name)
}

/// A network with its variables, built by [`load_model`].
#[derive(Debug)]
pub struct LoadedModel {
    /// The variables (on the device asked for).
    pub vs: nn::VarStore,
    /// The network.
    pub model: ResNeXt,
    /// What loading found.
    pub report: LoadReport,
}

/// Builds the network `config` describes on `device` and loads its weights from `path`, a
/// safetensors file or a PyTorch `.pth` (the model found in it as
/// [`read_state_dict`](super::read_state_dict) finds it; checked and copied as
/// [`load_weights_with`](super::load_weights_with) does). The configuration is validated and the
/// file's names and shapes are compared with it before the network is built, so a file that does
/// not fit costs neither the network's memory nor a read of its tensors. With
/// [`config_from_weights`] this turns a file into a model:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resnext::weights::{config_from_weights, load_model, LoadOptions};
/// use std::path::Path;
/// let path = Path::new("resnext50_32x4d.safetensors");
/// let config = config_from_weights("resnext50_32x4d", path)?;
/// let loaded = load_model(&config, path, tch::Device::Cpu, LoadOptions { strict: true })?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`WeightsError::Model`] for an invalid configuration, [`WeightsError::Incompatible`] for a file
/// that does not fit it, else those of [`read_state_dict`](super::read_state_dict) and
/// [`load_weights_with`](super::load_weights_with).
pub fn load_model(
    config: &ResNeXtConfig,
    path: &Path,
    device: Device,
    options: LoadOptions,
) -> Result<LoadedModel, WeightsError> {
    config.validate()?;
    WeightsFile::open(path)?.load_model(config, device, options)
}

/// [`load_model`] from the model's tensors of a file already open.
pub(crate) fn load_model_from(
    config: &ResNeXtConfig,
    source: TensorSource,
    device: Device,
    options: LoadOptions,
) -> Result<LoadedModel, WeightsError> {
    config.validate()?;
    // The file must fit the configuration before a network of its size is built.
    check_fits_config(config, &source, options)?;
    let mut vs = nn::VarStore::new(device);
    let model = ResNeXt::try_new(&vs.root(), config)?;
    let report = load_tensors(&mut vs, source, options)?;
    Ok(LoadedModel { vs, model, report })
}
