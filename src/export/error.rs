//! The error type of [`crate::export`].
use std::path::PathBuf;

use tch::TchError;
use thiserror::Error;

use crate::io::IoError;
use crate::weights::WeightsError;

/// Errors exporting a network. Nothing is written at `out` when one is returned: the file is
/// written whole or not at all ([`crate::io::write_atomic`]).
#[derive(Debug, Error)]
pub enum ExportError {
    /// The weights file cannot be read or does not fit its metadata or any preset (unknown
    /// format, corrupt file, wrong tensors); the inner error names the file.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The output file cannot be written (missing folder, no permission, full disk); the inner
    /// error names the file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The weights file carries no metadata and its tensors match no preset, so the
    /// architecture is unknown.
    #[error("{}: cannot tell the architecture: the file has no `resnext.model` metadata and its \
             tensors match no preset (name one with `config_from_weights`)", path.display())]
    UnknownArchitecture {
        /// The weights file.
        path: PathBuf,
    },
    /// An export format name other than those of [`ExportFormat`](super::ExportFormat).
    #[error("unknown export format `{name}`; valid formats are: {}", valid.join(", "))]
    UnknownFormat {
        /// The name that was asked for.
        name: String,
        /// The accepted names.
        valid: Vec<&'static str>,
    },
    /// The exporter does not cover this model or format.
    #[error("cannot export: {what}")]
    Unsupported {
        /// What is not covered, and why.
        what: String,
    },
    /// The metadata given with the network does not describe it.
    #[error("the metadata does not describe the network: {problem}")]
    Metadata {
        /// What disagrees.
        problem: String,
    },
    /// libtorch failed reading or folding a parameter.
    #[error("parameter `{name}`: {source}")]
    Torch {
        /// The parameter (torchvision's name).
        name: String,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
}
