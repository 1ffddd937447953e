//! TorchScript export of a [`ResNeXt`], for `torch.jit.load` in PyTorch and libtorch programs.
//!
//! The module is made by tracing the network's own evaluation-mode forward pass
//! ([`ResNeXt::try_forward_t`] with `train = false`) with libtorch's tracer
//! ([`tch::CModule::create_by_tracing`]) on a copy of the network whose tensors do not require
//! gradients (the tracer records them as constants of the graph). What the file holds:
//!
//! * **method** `forward(images) -> logits`: `images` float32 `[N, 3, H, W]`, already normalised
//!   (as for [`super::onnx`]); `logits` float32 `[N, classes]`, no softmax. Nothing in the
//!   forward pass reads a tensor's size, so the traced graph runs on any batch size and any
//!   image size the strides allow (tested: batches 1 and 3, two image sizes);
//! * **BatchNorm** kept as `aten::batch_norm` with the running statistics (evaluation mode;
//!   `torch.jit.freeze` + `torch.jit.optimize_for_inference` fold it on the PyTorch side);
//! * **extra files** (`torch.jit.load(path, _extra_files={...})`): `resnext.model` (JSON of the
//!   [`ResNeXtConfig`]) always, and with [`WeightsMetadata`] its `resnext.classes`,
//!   `resnext.image_size` and `resnext.normalization`, the keys of a weights file's metadata.
//!
//! The parameters are copied to the CPU in their float kind; the file is written atomically.
//!
//! ```no_run
//! # fn main() -> Result<(), resnext::export::ExportError> {
//! use resnext::export::torchscript::export_torchscript_from_weights;
//! use std::path::Path;
//! let weights = Path::new("runs/tiny-seed1/best.safetensors");
//! export_torchscript_from_weights(weights, None, Path::new("model.pt"))?;
//! # Ok(()) }
//! ```
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use tch::nn;
use tch::{CModule, Device, TchError, Tensor};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::onnx::check_model;
use super::ExportError;
use crate::io::IoError;
use crate::resnext::{ResNeXt, ResNeXtConfig, Stem};
use crate::weights::{WeightsMetadata, MODEL_KEY};

/// What [`export_torchscript`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchScriptReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// The model's configuration.
    pub config: ResNeXtConfig,
}

/// The TorchScript archive of `net` (its parameters and BN running statistics now) as bytes
/// (see the [module](self) docs), with `meta`'s class names, image size and normalisation as
/// extra files when given.
///
/// ```
/// use resnext::export::torchscript::torchscript_bytes;
/// use resnext::{ResNeXt, ResNeXtConfig};
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let bytes = torchscript_bytes(&net, None)?;
/// assert_eq!(&bytes[..2], b"PK"); // a zip archive, as torch.jit.save writes
/// # Ok::<(), resnext::export::ExportError>(())
/// ```
///
/// The network is copied to trace it (`net` itself is not changed); building the copy draws
/// from libtorch's global random generator, so seed again afterwards if a later draw must not
/// depend on the export.
///
/// # Errors
/// [`ExportError::Metadata`] when `meta` describes another model or class count,
/// [`ExportError::Unsupported`] for parameters that are not floating point, and
/// [`ExportError::Torch`] when libtorch fails copying, tracing or saving.
pub fn torchscript_bytes(
    net: &ResNeXt,
    meta: Option<&WeightsMetadata>,
) -> Result<Vec<u8>, ExportError> {
    check_model(net, meta)?;
    let torch = |what: &str| {
        let name = what.to_string();
        move |source: TchError| ExportError::Torch { name, source }
    };
    let (_vs, copy) = frozen_copy(net).map_err(torch("copying the parameters"))?;
    let module = trace(&copy).map_err(torch("tracing the forward pass"))?;
    let dir = tempfile::tempdir().map_err(io_error("creating", &std::env::temp_dir()))?;
    let file = dir.path().join("model.pt");
    module
        .save(&file)
        .map_err(torch("saving the traced module"))?;
    let saved = std::fs::read(&file).map_err(io_error("reading back", &file))?;
    with_extra_files(&saved, &extra_files(net.config(), meta))
}

/// Writes the TorchScript archive of `net` (see [`torchscript_bytes`]) to `out`, atomically: a
/// failure leaves no partial file (and an existing `out` unchanged).
///
/// # Errors
/// Those of [`torchscript_bytes`]; [`ExportError::Io`] naming `out` when it cannot be written.
pub fn export_torchscript(
    net: &ResNeXt,
    meta: Option<&WeightsMetadata>,
    out: &Path,
) -> Result<TorchScriptReport, ExportError> {
    let bytes = torchscript_bytes(net, meta)?;
    crate::io::write_atomic(out, &bytes)?;
    Ok(TorchScriptReport {
        path: out.to_path_buf(),
        bytes: bytes.len(),
        config: net.config().clone(),
    })
}

/// Exports the weights file `weights` (safetensors or PyTorch `.pth`) to `out` as TorchScript;
/// the architecture and metadata are found as [`super::onnx::export_onnx_from_weights`] finds
/// them, and the file must fit the architecture exactly.
///
/// # Errors
/// Those of [`super::onnx::export_onnx_from_weights`] for the weights, and of
/// [`export_torchscript`].
pub fn export_torchscript_from_weights(
    weights: &Path,
    config: Option<&ResNeXtConfig>,
    out: &Path,
) -> Result<TorchScriptReport, ExportError> {
    let (net, meta) = super::onnx::model_from_weights(weights, config)?;
    export_torchscript(&net.model, meta.as_ref(), out)
}

/// A CPU copy of `net` whose tensors do not require gradients, in the variable store that owns
/// them. Building it draws initial values (overwritten at once) from libtorch's global
/// generator, as building any network does.
fn frozen_copy(net: &ResNeXt) -> Result<(nn::VarStore, ResNeXt), TchError> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let copy = ResNeXt::try_new(&vs.root(), net.config())
        .map_err(|e| TchError::Kind(format!("building the copy: {e}")))?;
    let kind = net.classifier().ws.kind();
    vs.set_kind(kind);
    tch::no_grad(|| -> Result<(), TchError> {
        for (dst, src) in tensors(&copy)?.into_iter().zip(tensors(net)?) {
            dst.shallow_clone().f_copy_(src)?;
        }
        Ok(())
    })?;
    vs.freeze();
    Ok((vs, copy))
}

/// Every tensor of `net` (parameters and BN running statistics) in one fixed order.
fn tensors(net: &ResNeXt) -> Result<Vec<&Tensor>, TchError> {
    let mut out = Vec::new();
    let (_, conv, bn) = net
        .stem_parts("TorchScript export")
        .map_err(|e| TchError::Kind(e.to_string()))?;
    push_conv_bn(&mut out, conv, bn);
    for block in net.stages().iter().flatten() {
        for (_, conv, bn) in block.main_path() {
            push_conv_bn(&mut out, conv, bn);
        }
        if let Some((_, conv, bn)) = block.downsample_parts() {
            push_conv_bn(&mut out, conv, bn);
        }
    }
    let fc = net.classifier();
    out.push(&fc.ws);
    out.extend(fc.bs.as_ref());
    Ok(out)
}

fn push_conv_bn<'a>(out: &mut Vec<&'a Tensor>, conv: &'a nn::Conv2D, bn: &'a nn::BatchNorm) {
    out.push(&conv.ws);
    out.extend(conv.bs.as_ref());
    out.extend(bn.ws.as_ref());
    out.extend(bn.bs.as_ref());
    out.push(&bn.running_mean);
    out.push(&bn.running_var);
}

/// The traced evaluation-mode forward pass of `net`, on a batch of two images of the
/// network's usual size.
fn trace(net: &ResNeXt) -> Result<CModule, TchError> {
    let side = match net.config().stem {
        Stem::Cifar => 32,
        Stem::ImageNet => 224,
        Stem::Whitening => 32,
    };
    let kind = net.classifier().ws.kind();
    let example = Tensor::f_zeros([2, 3, side, side], (kind, Device::Cpu))?;
    let mut failure = None;
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("ResNeXt", "forward", &[example], &mut |inputs| match net
            .try_forward_t(&inputs[0], false)
        {
            Ok(logits) => vec![logits],
            Err(e) => {
                failure = Some(e.to_string());
                vec![inputs[0].shallow_clone()]
            }
        })
    })?;
    match failure {
        Some(e) => Err(TchError::Kind(e)),
        None => Ok(module),
    }
}

/// The extra files of the archive: the configuration, and the weights file's metadata.
fn extra_files(config: &ResNeXtConfig, meta: Option<&WeightsMetadata>) -> Vec<(String, String)> {
    let mut map = meta.map(WeightsMetadata::to_map).unwrap_or_default();
    map.insert(
        MODEL_KEY.into(),
        serde_json::to_string(config).unwrap_or_default(),
    );
    let mut files: Vec<_> = map.into_iter().collect();
    files.sort();
    files
}

/// `archive` (as `torch.jit.save` writes it: every entry under one top folder) with `files`
/// added as `<top>/extra/<name>`, where `torch.jit.load`'s `_extra_files` looks for them.
fn with_extra_files(archive: &[u8], files: &[(String, String)]) -> Result<Vec<u8>, ExportError> {
    let bad = |e: zip::result::ZipError| ExportError::Unsupported {
        what: format!("libtorch wrote a TorchScript archive that cannot be rewritten: {e}"),
    };
    let mut input = ZipArchive::new(Cursor::new(archive)).map_err(bad)?;
    let top = {
        let first = input.by_index_raw(0).map_err(bad)?;
        let name = first.name().map_err(bad)?.to_string();
        name.split('/').next().unwrap_or_default().to_string()
    };
    let mut out = ZipWriter::new(Cursor::new(Vec::with_capacity(archive.len() + 4096)));
    for i in 0..input.len() {
        let entry = input.by_index_raw(i).map_err(bad)?;
        out.raw_copy_file(entry).map_err(bad)?;
    }
    // Stored and 64-byte aligned, as PyTorch's own writer stores every record.
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .with_alignment(64);
    for (name, value) in files {
        out.start_file(format!("{top}/extra/{name}"), options)
            .map_err(bad)?;
        out.write_all(value.as_bytes()).map_err(|e| bad(e.into()))?;
    }
    let bytes = out.finish().map_err(bad)?.into_inner();
    // Read back what was written: each extra file must be there with its value.
    let mut check = ZipArchive::new(Cursor::new(bytes.as_slice())).map_err(bad)?;
    for (name, value) in files {
        let mut text = String::new();
        check
            .by_name(&format!("{top}/extra/{name}"))
            .map_err(bad)?
            .read_to_string(&mut text)
            .map_err(|e| bad(e.into()))?;
        if text != *value {
            return Err(ExportError::Unsupported {
                what: format!("extra file {name} did not read back as written"),
            });
        }
    }
    Ok(bytes)
}

/// An [`ExportError::Io`] for `action` on `path` (the temporary files of the export).
fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ExportError + 'a {
    move |source| {
        ExportError::Io(IoError::Io {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}
