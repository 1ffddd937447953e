//! Exporting a [`ResNeXt`](crate::ResNeXt) for deployment outside this crate.
//!
//! * [`onnx`]: an ONNX model (opset 17) that ONNX Runtime, OpenVINO and TensorRT run;
//! * [`ExportFormat`]: the formats by name, for command-line tools (TorchScript is not
//!   supported yet and is refused with [`ExportError::Unsupported`]).
//!
//! Imports run one way: this module reads the model, the weights and the BN folding of
//! [`crate::inference`]; nothing else in the crate depends on it.
mod error;
mod graph;
mod lower;
pub mod onnx;
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
mod onnx_proto;

use std::str::FromStr;

pub use error::ExportError;

/// An export format, by its name on a command line (`onnx`, `torchscript`).
///
/// ```
/// use resnext::export::ExportFormat;
/// assert_eq!("onnx".parse::<ExportFormat>().unwrap(), ExportFormat::Onnx);
/// assert!("tflite".parse::<ExportFormat>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// ONNX (see [`onnx`]).
    Onnx,
    /// TorchScript: not supported yet ([`ExportFormat::check_supported`] refuses it).
    TorchScript,
}

impl ExportFormat {
    /// Every format name, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["onnx", "torchscript"];

    /// `Ok` for a format this crate can write.
    ///
    /// # Errors
    /// [`ExportError::Unsupported`] for [`ExportFormat::TorchScript`].
    pub fn check_supported(self) -> Result<(), ExportError> {
        match self {
            ExportFormat::Onnx => Ok(()),
            ExportFormat::TorchScript => Err(ExportError::Unsupported {
                what: "the torchscript format is not supported yet (only onnx is)".into(),
            }),
        }
    }
}

impl FromStr for ExportFormat {
    type Err = ExportError;

    fn from_str(name: &str) -> Result<Self, ExportError> {
        match name.to_ascii_lowercase().as_str() {
            "onnx" => Ok(ExportFormat::Onnx),
            "torchscript" => Ok(ExportFormat::TorchScript),
            _ => Err(ExportError::UnknownFormat {
                name: name.into(),
                valid: Self::NAMES.to_vec(),
            }),
        }
    }
}
