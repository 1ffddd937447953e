//! What goes wrong loading weights: [`WeightsError`], with the tensors that do not fit
//! ([`ShapeMismatch`], [`KindMismatch`]) described in a few lines.
use std::fmt;
use std::path::PathBuf;

use tch::{Kind, TchError};
use thiserror::Error;

use super::FileFit;
use crate::io::IoError;
use crate::resnext::ModelError;

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
        /// Tensors the model does not have; an error only with
        /// [`LoadOptions::strict`](super::LoadOptions::strict), else empty here.
        unexpected: Vec<String>,
        /// The preset whose variables the file has, if any.
        fit: FileFit,
    },
    /// The file's `resnext.*` metadata (see [`WeightsMetadata`](super::WeightsMetadata)) is
    /// incomplete or malformed.
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
    /// [`config_from_weights`](super::config_from_weights) cannot tell the architecture from the
    /// file.
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

/// How many problems [`WeightsError::Incompatible`] shows; the rest are counted.
const SHOWN_PROBLEMS: usize = 5;

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
