//! Exporting a [`ResNeXt`](crate::ResNeXt) for deployment outside this crate.
//!
//! * [`onnx`]: an ONNX model (opset 17) that ONNX Runtime, OpenVINO and TensorRT run;
//! * [`torchscript`]: a traced TorchScript module that `torch.jit.load` (PyTorch, libtorch)
//!   runs;
//! * [`ExportFormat`]: the formats by name, for command-line tools.
//!
//! Imports run one way: this module reads the model, the weights and the BN folding of
//! [`crate::inference`]; nothing else in the crate depends on it.
mod error;
mod graph;
mod lower;
pub mod onnx;
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
mod onnx_proto;
pub mod torchscript;

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
    /// TorchScript (see [`torchscript`]).
    TorchScript,
}

impl ExportFormat {
    /// Every format name, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["onnx", "torchscript"];
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
