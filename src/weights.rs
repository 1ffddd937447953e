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
//! * [`load_model`] builds a [`ResNeXt`](crate::ResNeXt) and loads its weights in one go, and
//!   [`config_from_weights`] reads the stem and the number of classes from a file, while
//!   [`preset_for_weights`] finds its whole architecture among the presets;
//! * [`load_pretrained`] starts a model from pretrained weights, safetensors or a PyTorch
//!   `torch.save(model.state_dict())` `.pth` file (read without Python, see
//!   [`read_state_dict`]): strictly, except a classifier with another number of classes, which
//!   keeps its fresh initialisation; [`pretrained_architecture`] gives the file's stem and
//!   number of classes;
//! * [`WeightsFile`] opens a file once and answers all of these from that one reading of its
//!   header (or pickle): its metadata, its architecture, then its model's tensors.
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
use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Kind, Tensor};

use crate::io::{write_safetensors, IoError};

mod error;
mod file;
mod fit;
mod load;
mod metadata;
mod model;
mod pickle;
mod pretrained;
mod pth;
mod source;

pub(crate) use error::describe_incompatible;
pub(crate) use load::{check_fits_config, load_tensors};
pub(crate) use source::TensorSource;

pub use error::{KindMismatch, ShapeMismatch, WeightsError};
pub use file::WeightsFile;
pub use fit::{expected_shapes, matching_preset, model_shapes, FileFit, Shapes};
pub use load::{load_weights, load_weights_with, LoadOptions, LoadReport};
pub use metadata::{
    read_weights_metadata, WeightsMetadata, CLASSES_KEY, IMAGE_SIZE_KEY, MAX_IMAGE_SIZE, MODEL_KEY,
    NORMALIZATION_KEY,
};
pub use model::{config_from_weights, load_model, preset_for_weights, LoadedModel};
pub use pretrained::{load_pretrained, pretrained_architecture, read_state_dict, PretrainedReport};

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
