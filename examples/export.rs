//! Exports ResNeXt weights for deployment: a `.safetensors` file of this crate (a run's
//! `best.safetensors`, with its metadata) or weights PyTorch saved (safetensors or `.pth`).
//!
//! ```text
//! cargo run --release --example export -- --weights runs/tiny-seed1/best.safetensors --format onnx --out model.onnx
//! cargo run --release --example export -- --weights resnext50_32x4d-1a0047aa.pth --out model.onnx --keep-batchnorm
//! cargo run --release --example export -- --weights runs/tiny-seed1/best.safetensors --format torchscript --out model.pt
//! ```
//!
//! The architecture comes from the file's metadata (like `predict`), else `--model`, else the
//! preset whose tensors the file has. The ONNX model (opset 17) reads `images` float32
//! `[N, 3, H, W]` (normalised; N, H, W dynamic) and writes `logits` `[N, classes]`; the class
//! names, image size and normalisation of the file's metadata go into its `metadata_props`.
//! BatchNorm is folded into the convolutions unless `--keep-batchnorm`. `--format torchscript`
//! writes a traced TorchScript module (`torch.jit.load`; the metadata as its extra files, BN
//! kept). See `resnext::export` and docs/deploy.md.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use resnext::export::onnx::{export_onnx_from_weights, OnnxOptions};
use resnext::export::torchscript::export_torchscript_from_weights;
use resnext::export::{ExportError, ExportFormat};
use resnext::resnext::MODEL_NAMES;
use resnext::weights::config_from_weights;

#[derive(Parser, Debug)]
#[command(
    about = "Export ResNeXt weights (ours, or PyTorch's safetensors or .pth) to ONNX or TorchScript"
)]
struct Args {
    /// The weights, with torchvision's names: safetensors, or a PyTorch .pth.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Output format: onnx or torchscript.
    #[arg(long, default_value = "onnx")]
    format: String,
    /// The file to write (atomically: nothing is left on failure).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Keep BatchNorm as BatchNormalization nodes instead of folding it into the convolutions
    /// (ONNX; TorchScript always keeps it).
    #[arg(long)]
    keep_batchnorm: bool,
    /// Model configuration, for a file without metadata [default: the file's metadata, else
    /// the preset whose tensors the file has].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: Option<String>,
}

fn run(args: &Args) -> Result<(), ExportError> {
    let format = args.format.parse::<ExportFormat>()?;
    let config = match &args.model {
        Some(name) => Some(config_from_weights(name, &args.weights)?),
        None => None,
    };
    if format == ExportFormat::TorchScript {
        let report = export_torchscript_from_weights(&args.weights, config.as_ref(), &args.out)?;
        println!(
            "wrote {} ({} bytes): {} ({:?} stem, {} classes), TorchScript (traced, BatchNorm kept)",
            report.path.display(),
            report.bytes,
            report.config.name,
            report.config.stem,
            report.config.num_classes,
        );
        return Ok(());
    }
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
