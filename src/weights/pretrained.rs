//! Starting a model from someone else's weights: a safetensors file or a PyTorch
//! `torch.save(model.state_dict(), path)` file (`.pth`/`.pt`, the zip format of PyTorch 1.6 and
//! later or the legacy one), loaded strictly except for a classifier with another number of
//! classes, which keeps the model's fresh initialisation.
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
fn is_safetensors(path: &Path) -> Result<bool, IoError> {
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

/// Reads every tensor of a PyTorch `torch.save` file of a `state_dict`, without Python.
fn read_pytorch(path: &Path) -> Result<TensorFile, WeightsError> {
    let bad = |problem: String| WeightsError::Pytorch {
        path: path.to_path_buf(),
        problem,
    };
    let reader = PytorchReader::new(path).map_err(|e| bad(e.to_string()))?;
    let mut tensors = Vec::with_capacity(reader.len());
    for (name, t) in reader.into_tensors() {
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
    Ok(TensorFile {
        tensors,
        metadata: Default::default(),
    })
}

/// Reads a `state_dict` from a safetensors file or a PyTorch `torch.save(model.state_dict())`
/// file (zip format of PyTorch >= 1.6, or the legacy format of `_use_new_zipfile_serialization
/// =False`), told apart by their first bytes, not their names. Tensors are on the CPU. The
/// `module.` prefix of a model saved inside `DistributedDataParallel` is removed when every
/// name has it.
///
/// # Errors
/// [`WeightsError::Io`] naming the file when it cannot be read (or is a corrupt safetensors
/// file), [`WeightsError::Pytorch`] when it is neither safetensors nor a PyTorch file of
/// tensors (a whole pickled model or a checkpoint dictionary are refused there too).
pub fn read_state_dict(path: &Path) -> Result<TensorFile, WeightsError> {
    let mut file = if is_safetensors(path)? {
        read_safetensors(path)?
    } else {
        read_pytorch(path)?
    };
    strip_ddp_prefix(&mut file);
    Ok(file)
}

/// The prefix PyTorch's `DistributedDataParallel` (and `DataParallel`) put before every name
/// of the wrapped model's `state_dict()`.
const DDP_PREFIX: &str = "module.";

/// Removes [`DDP_PREFIX`] when every tensor name has it (a `state_dict` saved from a wrapped
/// model), so that the names are the model's own.
fn strip_ddp_prefix(file: &mut TensorFile) {
    let all =
        !file.tensors.is_empty() && file.tensors.iter().all(|(n, _)| n.starts_with(DDP_PREFIX));
    if all {
        for (name, _) in &mut file.tensors {
            name.drain(..DDP_PREFIX.len());
        }
    }
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
}

impl fmt::Display for PretrainedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} tensors loaded", self.load.loaded)?;
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
    let mut file = read_state_dict(path)?;
    let replaced_classifier = keep_fresh_classifier(&mut file, vs, model);
    let load = load_tensors(vs, path, file, LoadOptions { strict: true })?;
    Ok(PretrainedReport {
        load,
        replaced_classifier,
    })
}
