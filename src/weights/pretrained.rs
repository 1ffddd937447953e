//! Starting a model from someone else's weights: a safetensors file or a PyTorch
//! `torch.save(model.state_dict(), path)` file (`.pth`/`.pt`, the zip format of PyTorch 1.6 and
//! later or the legacy one; the model is also found inside checkpoint dictionaries and whole
//! pickled models, see [`read_state_dict`]), loaded strictly except for a classifier with
//! another number of classes, which keeps the model's fresh initialisation.
use std::fmt;
use std::path::Path;

use tch::nn;

use super::{load_tensors, LoadOptions, LoadReport, TensorSource, WeightsError, WeightsFile};
use crate::io::TensorFile;
use crate::resnext::{ResNeXtConfig, Stem};

/// Reads a model's `state_dict` from a safetensors file or a PyTorch `torch.save` file (zip
/// format of PyTorch >= 1.6, or the legacy format of `_use_new_zipfile_serialization=False`),
/// told apart by their first bytes, not their names. Tensors are on the CPU. Besides a plain
/// `state_dict`, the model is found (by its `conv1.weight` and `fc.weight`) inside what
/// training scripts save: a model wrapped in `DistributedDataParallel` (names under
/// `module.`), a checkpoint dictionary such as `{"epoch": .., "model": state_dict,
/// "optimizer": ..}` or `{"state_dict": .., "state_dict_ema": ..}` (the EMA copy only when
/// nothing else is there), or a whole pickled model (`torch.save(model)`); the tensors are
/// renamed to the model's own names and the rest is left out.
///
/// PyTorch files are read by this crate's own bounded reader (no code in the file runs; see
/// `docs/from-and-to-pytorch.md` for what it accepts compared with
/// `torch.load(weights_only=True)`). This reads every tensor of the model part; to load a
/// model, [`load_pretrained`] and [`super::load_model`] read only the tensors that fit the
/// model, after comparing names and shapes.
///
/// # Errors
/// [`WeightsError::Io`] naming the file when it cannot be read (or is a corrupt safetensors
/// file), [`WeightsError::Pytorch`] when it is neither safetensors nor a PyTorch file that
/// holds tensors, or holds tensors that would take more than twice its size in memory.
pub fn read_state_dict(path: &Path) -> Result<TensorFile, WeightsError> {
    TensorSource::open(path)?.read_all()
}

/// The stem and number of classes of the weights in `path`, a safetensors or PyTorch file
/// (see [`read_state_dict`]): a torchvision ImageNet checkpoint means [`Stem::ImageNet`]
/// whatever size the images to train on are. Only the header (or pickle) is read.
///
/// # Errors
/// As [`read_state_dict`]; [`WeightsError::Infer`] when `conv1.weight` or `fc.weight` is
/// missing or oddly shaped.
pub fn pretrained_architecture(path: &Path) -> Result<(Stem, i64), WeightsError> {
    WeightsFile::open(path)?.architecture()
}

/// What [`load_pretrained`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PretrainedReport {
    /// What loading the file found (every variable of the model was set from the file, the
    /// classifier from itself when replaced).
    pub load: LoadReport,
    /// `(classes in the file, classes of the model)` when the file's classifier has another
    /// number of classes and the model kept its freshly initialised `fc`; `None` when the
    /// file's classifier was loaded.
    pub replaced_classifier: Option<(i64, i64)>,
    /// The prefix the model's tensors had in the file (`module.`, `model.`, `state_dict.`, ...:
    /// see [`read_state_dict`]); `None` for a plain `state_dict`.
    pub found_under: Option<String>,
}

impl fmt::Display for PretrainedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tensors loaded", self.load.loaded)?;
        if let Some(prefix) = &self.found_under {
            write!(f, " (the file's `{prefix}*` entries)")?;
        }
        if let Some((file, model)) = self.replaced_classifier {
            write!(
                f,
                "; classifier replaced: file has {file} classes, model {model} (freshly \
                 initialised)"
            )?;
        }
        Ok(())
    }
}

/// Swaps the file's classifier for the model's own when the file's has another number of
/// classes (and the model's number of features); returns `(file classes, model classes)`.
/// The file's classifier is then never read.
fn keep_fresh_classifier(
    source: &mut TensorSource,
    vs: &nn::VarStore,
    model: &ResNeXtConfig,
) -> Option<(i64, i64)> {
    let (weight, bias) = (source.find("fc.weight")?, source.find("fc.bias")?);
    let (weight_shape, bias_shape) = (&source.entries[weight].shape, &source.entries[bias].shape);
    let file_classes = match weight_shape.as_slice() {
        &[n, features] if features == model.feature_channels() && bias_shape == &[n] => n,
        _ => return None,
    };
    if file_classes == model.num_classes {
        return None;
    }
    let vars = vs.variables();
    for (index, name) in [(weight, "fc.weight"), (bias, "fc.bias")] {
        if let Some(var) = vars.get(name) {
            source.replace(index, var.detach().to_device(tch::Device::Cpu).copy());
        }
    }
    Some((file_classes, model.num_classes))
}

/// Loads pretrained weights (see [`read_state_dict`]) into `vs`, the variables of the network
/// `model` describes: every variable strictly (present, same shape, no tensor the model does
/// not have; BN `num_batches_tracked` counters aside), except the classifier when the file's
/// has another number of classes: then `fc` keeps its current (fresh) values and
/// [`PretrainedReport::replaced_classifier`] says so.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resnext::weights::{load_pretrained, pretrained_architecture};
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use std::path::Path;
/// let path = Path::new("resnext50_32x4d-imagenet.pth");
/// let (stem, _) = pretrained_architecture(path)?;
/// let config = ResNeXtConfig::resnext50_32x4d(5).with_stem(stem);
/// let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let net = ResNeXt::try_new(&vs.root(), &config)?;
/// let report = load_pretrained(&mut vs, path, &config)?;
/// println!("{report}"); // ...; classifier replaced: file has 1000 classes, model 5 (...)
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`read_state_dict`]; [`WeightsError::Incompatible`] listing the first mismatching
/// tensors, their counts and the preset the file fits, for any other difference. `vs` is
/// unchanged on error.
pub fn load_pretrained(
    vs: &mut nn::VarStore,
    path: &Path,
    model: &ResNeXtConfig,
) -> Result<PretrainedReport, WeightsError> {
    WeightsFile::open(path)?.load_pretrained(vs, model)
}

/// [`load_pretrained`] from the model's tensors of a file already open.
pub(crate) fn load_pretrained_from(
    vs: &mut nn::VarStore,
    mut source: TensorSource,
    model: &ResNeXtConfig,
) -> Result<PretrainedReport, WeightsError> {
    let prefix = source.prefix.clone();
    let replaced_classifier = keep_fresh_classifier(&mut source, vs, model);
    let load = load_tensors(vs, source, LoadOptions { strict: true })?;
    Ok(PretrainedReport {
        load,
        replaced_classifier,
        found_under: Some(prefix).filter(|p| !p.is_empty()),
    })
}
