//! Model weights as safetensors with torchvision's names, in both directions:
//!
//! * [`save_weights`] writes a file that PyTorch reads with
//!   `model.load_state_dict(safetensors.torch.load_file(path), strict=True)`;
//!   [`save_weights_with`] adds the model configuration, class names, image size and
//!   normalisation as the file's metadata ([`WeightsMetadata`], read back by
//!   [`read_weights_metadata`]; PyTorch ignores it). The trainer writes it into a run's
//!   `last.safetensors` and `best.safetensors`, so they can be used without being told what
//!   they are;
//! * [`load_weights`] reads such a file, ours or a `state_dict` PyTorch saved with
//!   `safetensors.torch.save_file(model.state_dict(), path)`, into a [`nn::VarStore`], checking
//!   every name, shape and element type before it changes anything. A file that does not fit
//!   is refused in a few lines ([`WeightsError::Incompatible`]): the counts of the problems, the
//!   first five, and the preset the file does fit ([`matching_preset`], which compares every
//!   name and shape with [`expected_shapes`] of each preset with either stem);
//! * [`load_model`] builds a [`ResNeXt`] and loads its weights in one go, and
//!   [`config_from_weights`] reads the stem and the number of classes from a file, while
//!   [`preset_for_weights`] finds its whole architecture among the presets;
//! * [`load_pretrained`] starts a model from pretrained weights, safetensors or a PyTorch
//!   `torch.save(model.state_dict())` `.pth` file (read without Python, see
//!   [`read_state_dict`]): strictly, except a classifier with another number of classes, which
//!   keeps its fresh initialisation; [`pretrained_architecture`] gives the file's stem and
//!   number of classes.
//!
//! Files are not trusted: every loader reads a file's tensor names, shapes and element types
//! first (the safetensors header, or the `.pth` pickle through the crate's own bounded reader:
//! `pickle.rs`, `pth.rs`), compares them with the model, and only then reads the tensors the
//! model has, each within its own size; model metadata is validated with bounds and against the
//! file's tensors ([`read_weights_metadata`]).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use resnext::weights::{load_weights, save_weights};
//! use resnext::{ResNeXt, ResNeXtConfig};
//! use tch::{nn, Device};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("weights.safetensors");
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
//! save_weights(&vs, &path, 0)?;
//!
//! let mut other = nn::VarStore::new(Device::Cpu);
//! let _net2 = ResNeXt::new(&other.root(), &ResNeXtConfig::tiny(10));
//! let report = load_weights(&mut other, &path)?;
//! assert_eq!(report.loaded, vs.variables().len());
//! assert!(report.unexpected.is_empty());
//! # Ok(()) }
//! ```
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, TchError, Tensor};
use thiserror::Error;

use crate::io::{write_safetensors, IoError};
use crate::resnext::{ModelError, ResNeXt, ResNeXtConfig, Stem};

mod fit;
mod metadata;
mod pickle;
mod pretrained;
mod pth;
mod source;

pub(crate) use source::TensorSource;

pub use fit::{expected_shapes, matching_preset, model_shapes, FileFit, Shapes};
pub use metadata::{
    read_weights_metadata, WeightsMetadata, CLASSES_KEY, IMAGE_SIZE_KEY, MAX_IMAGE_SIZE, MODEL_KEY,
    NORMALIZATION_KEY,
};
pub use pretrained::{load_pretrained, pretrained_architecture, read_state_dict, PretrainedReport};

/// How many problems [`WeightsError::Incompatible`] shows; the rest are counted.
const SHOWN_PROBLEMS: usize = 5;

/// Suffix of the BN batch counter that PyTorch keeps in its `state_dict` and tch does not.
const NUM_BATCHES_TRACKED: &str = ".num_batches_tracked";

/// Saves every variable of `vs` (parameters and BN running statistics) under its own name, plus
/// a `num_batches_tracked` int64 scalar beside each BN's `running_mean` (PyTorch's state_dict
/// has one; `num_batches_tracked` is the number of training steps taken). Atomic: see
/// [`crate::io::write_atomic`].
///
/// # Errors
/// [`IoError`] naming the file.
pub fn save_weights(
    vs: &nn::VarStore,
    path: &Path,
    num_batches_tracked: i64,
) -> Result<(), IoError> {
    save_weights_with(vs, path, num_batches_tracked, None)
}

/// [`save_weights`], with the model configuration, class names and image preparation as the
/// file's metadata when `metadata` is given (see [`WeightsMetadata`] and
/// [`read_weights_metadata`]). PyTorch ignores the metadata: the file loads into torchvision
/// as [`save_weights`]'s does.
///
/// # Errors
/// [`IoError`] naming the file.
pub fn save_weights_with(
    vs: &nn::VarStore,
    path: &Path,
    num_batches_tracked: i64,
    metadata: Option<&WeightsMetadata>,
) -> Result<(), IoError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut tensors = Vec::with_capacity(vars.len() * 2);
    for (name, t) in vars {
        if let Some(bn) = name.strip_suffix(".running_mean") {
            tensors.push((
                format!("{bn}{NUM_BATCHES_TRACKED}"),
                Tensor::from(num_batches_tracked).to_kind(Kind::Int64),
            ));
        }
        tensors.push((name, t.detach()));
    }
    write_safetensors(path, &tensors, metadata.map(WeightsMetadata::to_map))
}

/// How [`load_weights_with`] treats a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse a file that holds tensors the model does not have, as PyTorch's
    /// `load_state_dict(strict=True)` does. Off by default: such tensors are only listed in
    /// [`LoadReport::unexpected`]. (Missing tensors are always an error.)
    pub strict: bool,
}

/// What [`load_weights`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Number of variables set from the file (every variable of the store).
    pub loaded: usize,
    /// Tensors stored in another floating-point kind than their variable (f16, bf16, f64 for an
    /// f32 model, …), with the kind in the file; they were converted to the variable's kind.
    pub converted: Vec<(String, Kind)>,
    /// Tensors of the file that match no variable of the model and were ignored (sorted).
    /// `num_batches_tracked` counters of the model's BN layers are not listed here.
    pub unexpected: Vec<String>,
    /// The largest BN `num_batches_tracked` counter in the file (PyTorch's count of training
    /// batches), `None` when the file has none. tch does not keep it, so it is only reported.
    pub num_batches_tracked: Option<i64>,
    /// The file's string metadata (`__metadata__`), empty when it has none.
    pub metadata: HashMap<String, String>,
}

/// A tensor whose shape in the file differs from its variable's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The tensor's name (torchvision's, e.g. `fc.weight`).
    pub name: String,
    /// Its shape in the file.
    pub in_file: Vec<i64>,
    /// The variable's shape in the model.
    pub in_model: Vec<i64>,
}

impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` has shape {:?} in the file but {:?} in the model",
            self.name, self.in_file, self.in_model
        )
    }
}

/// A tensor whose element type in the file cannot be converted to its variable's (an integer
/// tensor for a floating-point variable, for example).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindMismatch {
    /// The tensor's name.
    pub name: String,
    /// Its element kind in the file.
    pub in_file: Kind,
    /// The variable's element kind.
    pub in_model: Kind,
}

impl fmt::Display for KindMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is {:?} in the file, which cannot be converted to the model's {:?}",
            self.name, self.in_file, self.in_model
        )
    }
}

/// Errors loading weights. Nothing in the model has been changed when one is returned.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The file cannot be read, or is not a valid safetensors file (truncated, corrupt).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The file's tensors do not fit the model: every problem found is listed here; the
    /// message shows the counts, the first few problems and which preset the file fits.
    #[error("{}: the weights do not fit the model: {}\n  {}", path.display(),
        describe_incompatible(missing, mismatched, wrong_kind, unexpected), fit)]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// Variables of the model that the file lacks (sorted).
        missing: Vec<String>,
        /// Tensors whose shape differs, with both shapes.
        mismatched: Vec<ShapeMismatch>,
        /// Tensors whose element kind cannot be converted, with both kinds (a boxed slice, to
        /// keep the error small).
        wrong_kind: Box<[KindMismatch]>,
        /// Tensors the model does not have; an error only with [`LoadOptions::strict`], else
        /// empty here.
        unexpected: Vec<String>,
        /// The preset whose variables the file has, if any.
        fit: FileFit,
    },
    /// The file's `resnext.*` metadata (see [`WeightsMetadata`]) is incomplete or malformed.
    #[error("{}: metadata `{key}`: {problem}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: &'static str,
        /// What is wrong with its value, and what was expected.
        problem: String,
    },
    /// The file is neither safetensors nor a PyTorch `torch.save` file of a `state_dict`.
    #[error("{}: not a safetensors file nor a PyTorch state_dict saved with torch.save: {problem}",
        path.display())]
    Pytorch {
        /// The file.
        path: PathBuf,
        /// What the PyTorch file reader found wrong.
        problem: String,
    },
    /// The model configuration is invalid (or the preset name unknown).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// [`config_from_weights`] cannot tell the architecture from the file.
    #[error("{}: cannot tell the model's {what} from the file: {reason}", path.display())]
    Infer {
        /// The file.
        path: PathBuf,
        /// What was being determined (`stem`, `number of classes`).
        what: &'static str,
        /// Why not.
        reason: String,
    },
    /// libtorch failed converting or copying a tensor.
    #[error("{}: tensor `{name}`: {source}", path.display())]
    Torch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
}

/// The problems of [`WeightsError::Incompatible`] in a few lines: their counts, then the first
/// [`SHOWN_PROBLEMS`] of them one per line, then how many more there are.
pub(crate) fn describe_incompatible(
    missing: &[String],
    mismatched: &[ShapeMismatch],
    wrong_kind: &[KindMismatch],
    unexpected: &[String],
) -> String {
    let counts = [
        (mismatched.len(), "of another shape"),
        (missing.len(), "of the model missing from the file"),
        (
            wrong_kind.len(),
            "of an element type that cannot be converted",
        ),
        (unexpected.len(), "not in the model (strict loading)"),
    ];
    let counts: Vec<String> = (counts.iter())
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} tensor(s) {what}"))
        .collect();
    let problems: Vec<String> = (mismatched.iter().map(|m| m.to_string()))
        .chain(
            missing
                .iter()
                .map(|n| format!("`{n}` is missing from the file")),
        )
        .chain(wrong_kind.iter().map(|w| w.to_string()))
        .chain(
            unexpected
                .iter()
                .map(|n| format!("`{n}` is not in the model")),
        )
        .collect();
    let mut text = counts.join(", ");
    for problem in problems.iter().take(SHOWN_PROBLEMS) {
        text.push_str("\n  ");
        text.push_str(problem);
    }
    if problems.len() > SHOWN_PROBLEMS {
        text.push_str(&format!(
            "\n  … and {} more",
            problems.len() - SHOWN_PROBLEMS
        ));
    }
    text
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    )
}

/// Loads a safetensors `state_dict` into the variables of `vs`, with the default
/// [`LoadOptions`] (tensors the model does not have are reported, not refused). See
/// [`load_weights_with`].
///
/// # Errors
/// See [`load_weights_with`].
pub fn load_weights(vs: &mut nn::VarStore, path: &Path) -> Result<LoadReport, WeightsError> {
    load_weights_with(vs, path, LoadOptions::default())
}

/// Loads a safetensors `state_dict` (written by [`save_weights`], or by PyTorch with
/// `safetensors.torch.save_file(model.state_dict(), path)`) into the variables of `vs`.
///
/// Every variable of `vs` must be in the file under its name with its shape. Floating-point
/// tensors of another kind (f16, bf16, f64) are converted to the variable's kind, and moved to
/// its device. BN `num_batches_tracked` counters may be present or absent. The names, shapes
/// and kinds in the file's header are checked before any tensor data is read, and only the
/// tensors the model has are read; on error `vs` is unchanged. Then the values are copied in
/// under `no_grad`.
///
/// # Errors
/// * [`WeightsError::Io`] when the file cannot be read or is not a valid safetensors file;
/// * [`WeightsError::Incompatible`] listing every missing tensor, every shape mismatch (name
///   and both shapes), every tensor of an unconvertible kind and, with
///   [`LoadOptions::strict`], every tensor the model does not have;
/// * [`WeightsError::Torch`] if libtorch fails converting a tensor.
pub fn load_weights_with(
    vs: &mut nn::VarStore,
    path: &Path,
    options: LoadOptions,
) -> Result<LoadReport, WeightsError> {
    load_tensors(vs, TensorSource::safetensors(path)?, options)
}

/// What a model expects of each tensor: its shape and element kind.
type Expected = BTreeMap<String, (Vec<i64>, Kind)>;

fn expected_of(vars: &BTreeMap<String, Tensor>) -> Expected {
    (vars.iter())
        .map(|(n, t)| (n.clone(), (t.size(), t.kind())))
        .collect()
}

/// The one check-then-copy loader of the crate, used for weights files and for the model part
/// of training checkpoints: checks the tensors of `source` (by name, shape and kind, before any
/// data is read) against the variables of `vs` under the rules of [`load_weights_with`] and,
/// only if everything fits, reads the tensors the model has and copies them in.
pub(crate) fn load_tensors(
    vs: &mut nn::VarStore,
    mut source: TensorSource,
    options: LoadOptions,
) -> Result<LoadReport, WeightsError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let (found, mut report) = check_tensors(&expected_of(&vars), &source, options)?;
    report.num_batches_tracked = read_batch_counters(&mut source, &vars)?;
    let path = source.path().to_path_buf();
    // Read and convert everything first, so that a failure still leaves the model untouched.
    let torch_err = |name: &str| {
        let name = name.to_string();
        let path = path.clone();
        move |source| WeightsError::Torch { path, name, source }
    };
    let mut ready = Vec::with_capacity(found.len());
    for (name, index) in found {
        let var = &vars[&name];
        let src = source
            .read(index)?
            .f_to_kind(var.kind())
            .and_then(|s| s.f_to_device(var.device()))
            .map_err(torch_err(&name))?;
        ready.push((name, var, src));
    }
    tch::no_grad(|| -> Result<(), WeightsError> {
        for (name, var, src) in &ready {
            var.shallow_clone().f_copy_(src).map_err(torch_err(name))?;
        }
        Ok(())
    })?;
    report.loaded = ready.len();
    Ok(report)
}

/// The largest BN `num_batches_tracked` counter of the model's BN layers in `source` (each a
/// tensor of at most one element; larger ones are not read).
fn read_batch_counters(
    source: &mut TensorSource,
    vars: &BTreeMap<String, Tensor>,
) -> Result<Option<i64>, WeightsError> {
    let counters: Vec<usize> = (0..source.entries.len())
        .filter(|&i| {
            let e = &source.entries[i];
            e.numel() == 1
                && e.kind.is_some_and(|k| !is_float(k))
                && e.name
                    .strip_suffix(NUM_BATCHES_TRACKED)
                    .is_some_and(|bn| vars.contains_key(&format!("{bn}.running_mean")))
        })
        .collect();
    let mut largest = None;
    for i in counters {
        let t = source.read(i)?;
        if let Ok(n) = t.f_view([-1]).and_then(|v| v.f_int64_value(&[0])) {
            largest = largest.max(Some(n));
        }
    }
    Ok(largest)
}

/// The tensors of a file sorted against a model's variables by [`sort_tensors`].
#[derive(Default)]
struct Sorted {
    /// Loadable: in the model, with its shape and a compatible kind; with its entry's index.
    found: Vec<(String, usize)>,
    /// In the model with another shape.
    mismatched: Vec<ShapeMismatch>,
    /// In the model with a kind that does not convert (integer against float).
    wrong_kind: Vec<KindMismatch>,
}

/// Sorts the tensors of a file against `expected`; notes in `report` the tensors the model does
/// not have (BN batch counters aside) and the float kinds that will be converted. Entries of a
/// kind libtorch has none for count as found: reading them names the type.
fn sort_tensors(expected: &Expected, source: &TensorSource, report: &mut LoadReport) -> Sorted {
    let mut sorted = Sorted::default();
    for (index, entry) in source.entries.iter().enumerate() {
        let name = entry.name.clone();
        let Some((shape, kind)) = expected.get(&name) else {
            let counter_of_bn = name
                .strip_suffix(NUM_BATCHES_TRACKED)
                .is_some_and(|bn| expected.contains_key(&format!("{bn}.running_mean")));
            if !counter_of_bn {
                report.unexpected.push(name);
            }
            continue;
        };
        if &entry.shape != shape {
            let m = ShapeMismatch {
                name,
                in_file: entry.shape.clone(),
                in_model: shape.clone(),
            };
            sorted.mismatched.push(m);
            continue;
        }
        match entry.kind {
            Some(k) if k != *kind && !(is_float(k) && is_float(*kind)) => {
                let m = KindMismatch {
                    name,
                    in_file: k,
                    in_model: *kind,
                };
                sorted.wrong_kind.push(m);
                continue;
            }
            Some(k) if k != *kind => report.converted.push((name.clone(), k)),
            _ => {}
        }
        sorted.found.push((name, index));
    }
    report.unexpected.sort();
    sorted
}

/// Checks the tensors of `source` against `expected` and returns those to load (name and
/// entry) with the report so far, or [`WeightsError::Incompatible`] listing every problem.
fn check_tensors(
    expected: &Expected,
    source: &TensorSource,
    options: LoadOptions,
) -> Result<(Vec<(String, usize)>, LoadReport), WeightsError> {
    let mut report = LoadReport {
        metadata: source.metadata.clone(),
        ..LoadReport::default()
    };
    let Sorted {
        found,
        mismatched,
        wrong_kind,
    } = sort_tensors(expected, source, &mut report);
    let present: BTreeSet<&str> = (found.iter().map(|(n, _)| n.as_str()))
        .chain(mismatched.iter().map(|m| m.name.as_str()))
        .chain(wrong_kind.iter().map(|w| w.name.as_str()))
        .collect();
    let missing: Vec<String> = (expected.keys())
        .filter(|k| !present.contains(k.as_str()))
        .cloned()
        .collect();
    let refuse_unexpected = options.strict && !report.unexpected.is_empty();
    if missing.is_empty() && mismatched.is_empty() && wrong_kind.is_empty() && !refuse_unexpected {
        return Ok((found, report));
    }
    Err(WeightsError::Incompatible {
        path: source.path().to_path_buf(),
        missing,
        mismatched,
        wrong_kind: wrong_kind.into_boxed_slice(),
        unexpected: if options.strict {
            report.unexpected
        } else {
            Vec::new()
        },
        fit: FileFit::of(&source.shapes()),
    })
}

/// Checks the tensors of `source` against the variables `config` describes (names, shapes;
/// f32), without building the network, under the rules of [`load_weights_with`].
pub(crate) fn check_fits_config(
    config: &ResNeXtConfig,
    source: &TensorSource,
    options: LoadOptions,
) -> Result<(), WeightsError> {
    let expected: Expected = (expected_shapes(config).into_iter())
        .map(|(n, shape)| (n, (shape, Kind::Float)))
        .collect();
    check_tensors(&expected, source, options).map(drop)
}

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

/// The preset (with its stem and number of classes) whose variables are exactly the tensors
/// of the safetensors or PyTorch file `path` (see [`matching_preset`]), or `None` when no
/// preset fits: the architecture of a file that carries no [`WeightsMetadata`]. Only the
/// file's header (or pickle) is read.
///
/// # Errors
/// As [`read_state_dict`].
pub fn preset_for_weights(path: &Path) -> Result<Option<ResNeXtConfig>, WeightsError> {
    Ok(matching_preset(&TensorSource::open(path)?.shapes()))
}

/// The configuration of the preset `name` (one of [`crate::resnext::MODEL_NAMES`]) with the stem
/// and number of classes of the weights in `path` (safetensors or PyTorch, as
/// [`read_state_dict`] reads them): the stem from the kernel of `conv1.weight`
/// (3x3: [`Stem::Cifar`], 7x7: [`Stem::ImageNet`]), the classes from the rows of `fc.weight`.
/// Only the file's header (or pickle) is read; the rest of the file is checked when the
/// weights are loaded.
///
/// # Errors
/// [`WeightsError::Io`] for an unreadable or corrupt file, [`WeightsError::Infer`] when
/// `conv1.weight` or `fc.weight` is missing or oddly shaped, [`WeightsError::Model`] for an
/// unknown name.
pub fn config_from_weights(name: &str, path: &Path) -> Result<ResNeXtConfig, WeightsError> {
    let (stem, num_classes) = stem_and_classes(path, &TensorSource::open(path)?.shapes())?;
    Ok(ResNeXtConfig::from_name(name, num_classes)?.with_stem(stem))
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
/// safetensors file or a PyTorch `.pth` (the model found in it as [`read_state_dict`] finds
/// it; checked and copied as [`load_weights_with`] does). The configuration is validated and
/// the file's names and shapes are compared with it before the network is built, so a file
/// that does not fit costs neither the network's memory nor a read of its tensors. With
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
/// [`WeightsError::Model`] for an invalid configuration, [`WeightsError::Incompatible`] for a
/// file that does not fit it, else those of [`read_state_dict`] and [`load_weights_with`].
pub fn load_model(
    config: &ResNeXtConfig,
    path: &Path,
    device: Device,
    options: LoadOptions,
) -> Result<LoadedModel, WeightsError> {
    config.validate()?;
    let source = TensorSource::open(path)?;
    // The file must fit the configuration before a network of its size is built.
    check_fits_config(config, &source, options)?;
    let mut vs = nn::VarStore::new(device);
    let model = ResNeXt::try_new(&vs.root(), config)?;
    let report = load_tensors(&mut vs, source, options)?;
    Ok(LoadedModel { vs, model, report })
}
