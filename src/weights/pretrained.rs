//! Starting a model from someone else's weights: a safetensors file or a PyTorch
//! `torch.save(model.state_dict(), path)` file (`.pth`/`.pt`, the zip format of PyTorch 1.6 and
//! later or the legacy one; the model is also found inside checkpoint dictionaries and whole
//! pickled models, see [`read_state_dict`]), loaded strictly except for a classifier with
//! another number of classes, which keeps the model's fresh initialisation.
use std::fmt;
use std::io::Read;
use std::path::Path;

use pytorch_reader::{DType, PytorchReader};
use tch::{nn, Kind, Tensor};

use super::fit::model_shapes;
use super::{load_tensors, stem_and_classes, LoadOptions, LoadReport, WeightsError};
use crate::io::{read_safetensors, IoError, TensorFile};
use crate::resnext::{ResNeXtConfig, Stem};

/// Whether `path` starts as a safetensors file does (an 8-byte header length, then the JSON
/// header); PyTorch's files start with a zip or pickle signature instead.
pub(crate) fn is_safetensors(path: &Path) -> Result<bool, IoError> {
    let io_err = |source| IoError::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::with_capacity(9);
    std::fs::File::open(path)
        .map_err(io_err)?
        .take(9)
        .read_to_end(&mut head)
        .map_err(io_err)?;
    Ok(head.len() == 9 && head[8] == b'{')
}

/// libtorch's element kind for a PyTorch storage type; `None` for the unsigned types libtorch
/// has no kind for.
fn kind_of(dtype: DType) -> Option<Kind> {
    Some(match dtype {
        DType::F64 => Kind::Double,
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
        DType::U64 | DType::U32 | DType::U16 => return None,
    })
}

/// Reads the model's tensors of a PyTorch `torch.save` file, without Python: those under
/// [`model_prefix`], renamed without it, and that prefix; other entries (an optimizer's state,
/// an EMA copy) are not read.
fn read_pytorch(path: &Path) -> Result<(TensorFile, String), WeightsError> {
    let bad = |problem: String| WeightsError::Pytorch {
        path: path.to_path_buf(),
        problem,
    };
    let reader = PytorchReader::new(path).map_err(|e| bad(e.to_string()))?;
    let names = reader.keys();
    let prefix = model_prefix(names.iter().map(String::as_str));
    let mut tensors = Vec::with_capacity(reader.len());
    for (name, t) in reader.into_tensors() {
        let Some(name) = name.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let name = name.to_string();
        let kind = kind_of(t.dtype()).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has the unsupported type {:?}",
                t.dtype()
            ))
        })?;
        let bytes = t.read().map_err(|e| bad(e.to_string()))?;
        let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(&bytes, &shape, kind).map_err(|source| {
            WeightsError::Torch {
                path: path.to_path_buf(),
                name: name.clone(),
                source,
            }
        })?;
        tensors.push((name, tensor));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = Default::default();
    Ok((TensorFile { tensors, metadata }, prefix))
}

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
/// # Errors
/// [`WeightsError::Io`] naming the file when it cannot be read (or is a corrupt safetensors
/// file), [`WeightsError::Pytorch`] when it is neither safetensors nor a PyTorch file that
/// holds tensors.
pub fn read_state_dict(path: &Path) -> Result<TensorFile, WeightsError> {
    read_model(path).map(|(file, _)| file)
}

/// [`read_state_dict`], and the prefix the model's tensors had in the file (see
/// [`model_prefix`]).
fn read_model(path: &Path) -> Result<(TensorFile, String), WeightsError> {
    if !is_safetensors(path)? {
        return read_pytorch(path);
    }
    let mut file = read_safetensors(path)?;
    let prefix = model_prefix(file.tensors.iter().map(|(n, _)| n.as_str()));
    if !prefix.is_empty() {
        file.tensors.retain(|(n, _)| n.starts_with(&prefix));
        for (name, _) in &mut file.tensors {
            name.drain(..prefix.len());
        }
    }
    Ok((file, prefix))
}

/// Where a ResNeXt's `state_dict` is among a file's tensor names: the prefix `P` for which
/// both `P` + `conv1.weight` and `P` + `fc.weight` are there (`""` for a plain `state_dict`,
/// `module.` for `DistributedDataParallel`, `model.`, `state_dict.` or `state_dict.module.`
/// for checkpoint dictionaries, as the file reader names nested entries); when there are
/// several, the shortest that is not an exponential moving average's copy (a part named `ema`,
/// `ema_*` or `*_ema`: `state_dict.module.` before `state_dict_ema.`); `""` when there is none
/// (the loader then names what is missing).
fn model_prefix<'a>(names: impl Iterator<Item = &'a str>) -> String {
    const STEM: &str = "conv1.weight";
    const CLASSIFIER: &str = "fc.weight";
    let names: std::collections::HashSet<&str> = names.collect();
    let mut prefixes: Vec<&str> = (names.iter())
        .filter_map(|n| n.strip_suffix(STEM))
        .filter(|p| p.is_empty() || p.ends_with('.'))
        .filter(|p| names.contains(format!("{p}{CLASSIFIER}").as_str()))
        .collect();
    let is_ema = |p: &str| {
        p.split('.')
            .any(|c| c == "ema" || c.starts_with("ema_") || c.ends_with("_ema"))
    };
    prefixes.sort_by_key(|p| (is_ema(p), p.len(), *p));
    prefixes.first().map_or_else(String::new, |p| p.to_string())
}

/// The stem and number of classes of the weights in `path`, a safetensors or PyTorch file
/// (see [`read_state_dict`]): a torchvision ImageNet checkpoint means [`Stem::ImageNet`]
/// whatever size the images to train on are.
///
/// # Errors
/// As [`read_state_dict`]; [`WeightsError::Infer`] when `conv1.weight` or `fc.weight` is
/// missing or oddly shaped.
pub fn pretrained_architecture(path: &Path) -> Result<(Stem, i64), WeightsError> {
    let file = read_state_dict(path)?;
    let shapes = model_shapes(file.tensors.iter().map(|(n, t)| (n.as_str(), t.size())));
    stem_and_classes(path, &shapes)
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
fn keep_fresh_classifier(
    file: &mut TensorFile,
    vs: &nn::VarStore,
    model: &ResNeXtConfig,
) -> Option<(i64, i64)> {
    let shape = |name: &str| {
        let t = file.tensors.iter().find(|(n, _)| n == name);
        t.map(|(_, t)| t.size())
    };
    let (weight, bias) = (shape("fc.weight")?, shape("fc.bias")?);
    let file_classes = match weight.as_slice() {
        &[n, features] if features == model.feature_channels() && bias == [n] => n,
        _ => return None,
    };
    if file_classes == model.num_classes {
        return None;
    }
    let vars = vs.variables();
    let classifier = |n: &String| n == "fc.weight" || n == "fc.bias";
    for (name, t) in file.tensors.iter_mut().filter(|(n, _)| classifier(n)) {
        if let Some(var) = vars.get(name.as_str()) {
            *t = var.detach().to_device(tch::Device::Cpu).copy();
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
    let (mut file, prefix) = read_model(path)?;
    let replaced_classifier = keep_fresh_classifier(&mut file, vs, model);
    let load = load_tensors(vs, path, file, LoadOptions { strict: true })?;
    Ok(PretrainedReport {
        load,
        replaced_classifier,
        found_under: Some(prefix).filter(|p| !p.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::model_prefix;

    fn prefix(names: &[&str]) -> String {
        model_prefix(names.iter().copied())
    }

    #[test]
    fn the_model_is_found_by_its_stem_and_classifier() {
        let plain = ["conv1.weight", "layer1.0.conv1.weight", "fc.weight"];
        assert_eq!(prefix(&plain), "");
        let ddp = [
            "module.conv1.weight",
            "module.layer1.0.conv1.weight",
            "module.fc.weight",
        ];
        assert_eq!(prefix(&ddp), "module.");
        // A block's conv1 is no model without a classifier beside it.
        assert_eq!(prefix(&["layer1.0.conv1.weight", "fc.weight"]), "");
        assert_eq!(prefix(&["xconv1.weight", "xfc.weight"]), "");
        let checkpoint = [
            "state_dict_ema.conv1.weight",
            "state_dict_ema.fc.weight",
            "state_dict.module.conv1.weight",
            "state_dict.module.fc.weight",
        ];
        assert_eq!(prefix(&checkpoint), "state_dict.module.");
        assert_eq!(prefix(&checkpoint[..2]), "state_dict_ema.");
        let two = [
            "b.conv1.weight",
            "b.fc.weight",
            "a.conv1.weight",
            "a.fc.weight",
        ];
        assert_eq!(prefix(&two), "a.");
    }
}
