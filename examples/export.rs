//! Exports ResNeXt weights for deployment: a `.safetensors` file of this crate (a run's
//! `best.safetensors`, with its metadata) or weights PyTorch saved (safetensors or `.pth`).
//!
//! ```text
//! cargo run --release --example export -- --weights runs/tiny-seed1/best.safetensors --format onnx --out model.onnx
//! cargo run --release --example export -- --weights resnext50_32x4d-1a0047aa.pth --out model.onnx --keep-batchnorm
//! ```
//!
//! The architecture comes from the file's metadata (like `predict`), else `--model`, else the
//! preset whose tensors the file has. The ONNX model (opset 17) reads `images` float32
//! `[N, 3, H, W]` (normalised; N, H, W dynamic) and writes `logits` `[N, classes]`; the class
//! names, image size and normalisation of the file's metadata go into its `metadata_props`.
//! BatchNorm is folded into the convolutions unless `--keep-batchnorm`. See
//! `resnext::export::onnx` and docs/deploy.md. `--format torchscript` is refused (not supported
//! yet).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use resnext::export::onnx::{export_onnx_from_weights, OnnxOptions};
use resnext::export::{ExportError, ExportFormat};
use resnext::resnext::MODEL_NAMES;
use resnext::weights::config_from_weights;

#[derive(Parser, Debug)]
#[command(about = "Export ResNeXt weights (ours, or PyTorch's safetensors or .pth) to ONNX")]
struct Args {
    /// The weights, with torchvision's names: safetensors, or a PyTorch .pth.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Output format: onnx (torchscript is not supported yet).
    #[arg(long, default_value = "onnx")]
    format: String,
    /// The file to write (atomically: nothing is left on failure).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Keep BatchNorm as BatchNormalization nodes instead of folding it into the convolutions.
    #[arg(long)]
    keep_batchnorm: bool,
    /// Model configuration, for a file without metadata [default: the file's metadata, else
    /// the preset whose tensors the file has].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: Option<String>,
}

fn run(args: &Args) -> Result<(), ExportError> {
    args.format.parse::<ExportFormat>()?.check_supported()?;
    let config = match &args.model {
        Some(name) => Some(config_from_weights(name, &args.weights)?),
        None => None,
    };
    let options = OnnxOptions {
        keep_batchnorm: args.keep_batchnorm,
    };
    let report = export_onnx_from_weights(&args.weights, config.as_ref(), &args.out, options)?;
    println!(
        "wrote {} ({} bytes): {} ({:?} stem, {} classes), BatchNorm {}",
        report.path.display(),
        report.bytes,
        report.config.name,
        report.config.stem,
        report.config.num_classes,
        if args.keep_batchnorm {
            "kept"
        } else {
            "folded"
        }
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", resnext::error_report(&e));
            ExitCode::FAILURE
        }
    }
}
