//! ONNX export of a [`ResNeXt`], for ONNX Runtime, OpenVINO, TensorRT and other engines.
//!
//! The model, in evaluation mode:
//!
//! * **input** `images`: float32 `[N, 3, H, W]`, already normalised (`(x / 255 − mean) / std`
//!   per channel, with the normalisation in the metadata below). `N`, `H` and `W` are all
//!   dynamic axes (named `N`, `H`, `W`): any batch size, and any image size the strides allow;
//!   the size the network was trained on is in the metadata (`resnext.image_size`);
//! * **output** `logits`: float32 `[N, classes]` (no softmax);
//! * **opset 17** (default domain), IR version 8. Every operator used (`Conv`, `Relu`, `Add`,
//!   `MaxPool`, `GlobalAveragePool`, `Flatten`, `Gemm`, `BatchNormalization`) has had its
//!   present form since opset 15 or earlier, and opset 17 is widely supported: ONNX Runtime
//!   1.12 and later, OpenVINO 2022.2 and later, TensorRT 8.6 and later. Nothing newer is needed;
//! * **BatchNorm** folded into the convolutions by default (`w' = w·γ/√(σ²+ε)`,
//!   `b' = β + (b − μ)·γ/√(σ²+ε)`, computed in double precision, as [`crate::inference`]
//!   does), or kept as `BatchNormalization` nodes with [`OnnxOptions::keep_batchnorm`];
//! * **initializers** named as torchvision's parameters (`conv1.weight`,
//!   `layer1.0.conv2.weight`, `fc.bias`, …; a folded convolution gains a `.bias`);
//! * **`metadata_props`**: `resnext.model` (JSON of the [`ResNeXtConfig`]) and
//!   [`BATCHNORM_KEY`] always; with [`WeightsMetadata`] also its `resnext.classes` (JSON array
//!   of the class names, in output order), `resnext.image_size` and `resnext.normalization`
//!   (JSON `{"mean": [..], "std": [..]}`), the keys of a weights file's metadata.
//!
//! The file is one protobuf (no external data), written atomically; models whose parameters
//! exceed protobuf's 2 GiB limit are refused (every preset is far below it). The message types
//! are generated from ONNX 1.23.2's `onnx.proto` (vendored in `proto/`).
//!
//! ```no_run
//! # fn main() -> Result<(), resnext::export::ExportError> {
//! use resnext::export::onnx::{export_onnx_from_weights, OnnxOptions};
//! use std::path::Path;
//! let weights = Path::new("runs/tiny-seed1/best.safetensors");
//! export_onnx_from_weights(weights, None, Path::new("model.onnx"), OnnxOptions::default())?;
//! # Ok(()) }
//! ```
use std::path::{Path, PathBuf};

use prost::Message;
use tch::{Device, Kind};

use super::graph::{Dim, GraphBuilder};
use super::lower::{lower, INPUT, OUTPUT};
use super::onnx_proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use super::ExportError;
use crate::resnext::{ResNeXt, ResNeXtConfig};
use crate::weights::{LoadOptions, LoadedModel, WeightsFile, WeightsMetadata, MODEL_KEY};

/// The ONNX opset the models are written for (default domain).
pub const OPSET: i64 = 17;
/// The ONNX IR version of the models (IR 8 goes with opset 17).
pub const IR_VERSION: i64 = 8;
/// Name of the model's input, float32 `[N, 3, H, W]`.
pub const INPUT_NAME: &str = INPUT;
/// Name of the model's output, float32 `[N, classes]`.
pub const OUTPUT_NAME: &str = OUTPUT;
/// `metadata_props` key saying how BN was exported: `folded` or `kept`.
pub const BATCHNORM_KEY: &str = "resnext.batchnorm";
/// Protobuf's limit on one message; larger models would need ONNX's external data.
const PROTOBUF_LIMIT: usize = (1 << 31) - (1 << 20);

/// How [`onnx_bytes`] writes a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnnxOptions {
    /// Keep every BN as a `BatchNormalization` node instead of folding it into the
    /// convolution before it (the default).
    pub keep_batchnorm: bool,
}

/// What [`export_onnx`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxReport {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// The model's configuration.
    pub config: ResNeXtConfig,
}

/// The ONNX model of `net` (its parameters and BN running statistics now) as protobuf bytes
/// (see the [module](self) docs), with `meta`'s class names, image size and normalisation in
/// its `metadata_props` when given.
///
/// ```
/// use resnext::export::onnx::{onnx_bytes, OnnxOptions};
/// use resnext::{ResNeXt, ResNeXtConfig};
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let bytes = onnx_bytes(&net, None, OnnxOptions::default())?;
/// assert!(bytes.len() > 4 * 1000);
/// # Ok::<(), resnext::export::ExportError>(())
/// ```
///
/// # Errors
/// [`ExportError::Metadata`] when `meta` describes another model or class count,
/// [`ExportError::Unsupported`] for parameters that are not floating point or a model over
/// protobuf's 2 GiB, [`ExportError::Torch`] if libtorch fails reading a parameter.
pub fn onnx_bytes(
    net: &ResNeXt,
    meta: Option<&WeightsMetadata>,
    options: OnnxOptions,
) -> Result<Vec<u8>, ExportError> {
    check_model(net, meta)?;
    let mut g = GraphBuilder::default();
    lower(&mut g, net, !options.keep_batchnorm)?;
    if g.data_bytes > PROTOBUF_LIMIT {
        return Err(ExportError::Unsupported {
            what: format!(
                "{} has {} bytes of parameters, over protobuf's 2 GiB limit (ONNX external \
                 data is not written)",
                net.config().name,
                g.data_bytes
            ),
        });
    }
    let classes = net.config().num_classes;
    let graph = g.finish(
        "resnext",
        (
            INPUT,
            &[
                Dim::Named("N"),
                Dim::Fixed(3),
                Dim::Named("H"),
                Dim::Named("W"),
            ],
        ),
        (OUTPUT, &[Dim::Named("N"), Dim::Fixed(classes)]),
    );
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("resnext".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "{} exported by the resnext crate",
            net.config().name
        )),
        graph: Some(graph),
        metadata_props: metadata_props(net.config(), meta, options),
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// Writes the ONNX model of `net` (see [`onnx_bytes`]) to `out`, atomically: a failure leaves
/// no partial file (and an existing `out` unchanged).
///
/// # Errors
/// Those of [`onnx_bytes`]; [`ExportError::Io`] naming `out` when it cannot be written.
pub fn export_onnx(
    net: &ResNeXt,
    meta: Option<&WeightsMetadata>,
    out: &Path,
    options: OnnxOptions,
) -> Result<OnnxReport, ExportError> {
    let bytes = onnx_bytes(net, meta, options)?;
    crate::io::write_atomic(out, &bytes)?;
    Ok(OnnxReport {
        path: out.to_path_buf(),
        bytes: bytes.len(),
        config: net.config().clone(),
    })
}

/// Exports the weights file `weights` (safetensors or PyTorch `.pth`, as
/// [`load_model`](crate::weights::load_model) reads them) to `out`: the architecture is `config`
/// when given, else the file's [`WeightsMetadata`], else the preset whose tensors the file has
/// ([`preset_for_weights`](crate::weights::preset_for_weights)). The file's metadata, if any, goes
/// into the model's `metadata_props`. The file must fit the architecture exactly (strict loading).
///
/// # Errors
/// [`ExportError::Weights`] for an unreadable file, malformed metadata or tensors that do not
/// fit; [`ExportError::UnknownArchitecture`] when nothing tells the architecture; those of
/// [`export_onnx`].
pub fn export_onnx_from_weights(
    weights: &Path,
    config: Option<&ResNeXtConfig>,
    out: &Path,
    options: OnnxOptions,
) -> Result<OnnxReport, ExportError> {
    let (loaded, meta) = model_from_weights(weights, config)?;
    export_onnx(&loaded.model, meta.as_ref(), out, options)
}

/// The network of `weights` (on the CPU) and the file's metadata when it describes that
/// network: the architecture is `config` when given, else the file's metadata, else the preset
/// whose tensors the file has. Shared by every export format.
pub(crate) fn model_from_weights(
    weights: &Path,
    config: Option<&ResNeXtConfig>,
) -> Result<(LoadedModel, Option<WeightsMetadata>), ExportError> {
    // One opening of the file: its header (or pickle) read once, each tensor once.
    let file = WeightsFile::open(weights)?;
    let meta = file.metadata()?;
    let config = match (config, &meta) {
        (Some(c), _) => c.clone(),
        (None, Some(m)) => m.model.clone(),
        (None, None) => file
            .preset()
            .ok_or_else(|| ExportError::UnknownArchitecture {
                path: weights.to_path_buf(),
            })?,
    };
    let loaded = file.load_model(&config, Device::Cpu, LoadOptions { strict: true })?;
    let meta = meta.filter(|m| m.model == config);
    Ok((loaded, meta))
}

/// Checks that the exporter covers `net` and that `meta` describes it.
pub(crate) fn check_model(
    net: &ResNeXt,
    meta: Option<&WeightsMetadata>,
) -> Result<(), ExportError> {
    if let Some(part) = net.config().nonstandard_part() {
        return Err(ExportError::Unsupported {
            what: format!("the exporters cover torchvision's layout; this network has {part}"),
        });
    }
    let kind = net.classifier().ws.kind();
    if !matches!(
        kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(ExportError::Unsupported {
            what: format!(
                "parameters of kind {kind:?} (only floating-point networks are exported)"
            ),
        });
    }
    let Some(meta) = meta else { return Ok(()) };
    if meta.model != *net.config() {
        return Err(ExportError::Metadata {
            problem: format!(
                "it is for {:?}, the network is {:?}",
                meta.model,
                net.config()
            ),
        });
    }
    if meta.classes.len() as i64 != net.config().num_classes {
        return Err(ExportError::Metadata {
            problem: format!(
                "{} class names for a network with {} classes",
                meta.classes.len(),
                net.config().num_classes
            ),
        });
    }
    Ok(())
}

/// The `metadata_props` of the model, sorted by key.
fn metadata_props(
    config: &ResNeXtConfig,
    meta: Option<&WeightsMetadata>,
    options: OnnxOptions,
) -> Vec<StringStringEntryProto> {
    let mut map = meta.map(WeightsMetadata::to_map).unwrap_or_default();
    let model = serde_json::to_string(config).unwrap_or_default();
    map.insert(MODEL_KEY.into(), model);
    let bn = if options.keep_batchnorm {
        "kept"
    } else {
        "folded"
    };
    map.insert(BATCHNORM_KEY.into(), bn.into());
    let mut props: Vec<_> = map.into_iter().collect();
    props.sort();
    props
        .into_iter()
        .map(|(key, value)| StringStringEntryProto {
            key: Some(key),
            value: Some(value),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;
    use crate::resnext::Stem;

    fn decoded(config: &ResNeXtConfig, keep_batchnorm: bool) -> (ModelProto, BTreeSet<String>) {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let net = ResNeXt::new(&vs.root(), config);
        let bytes = onnx_bytes(&net, None, OnnxOptions { keep_batchnorm }).unwrap();
        let names = vs.variables().into_keys().collect();
        (ModelProto::decode(bytes.as_slice()).unwrap(), names)
    }

    /// Every node reads only the input, initializers and outputs of earlier nodes.
    fn assert_topological(model: &ModelProto) {
        let graph = model.graph.as_ref().unwrap();
        let mut known: HashSet<&str> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        known.insert(INPUT);
        for node in &graph.node {
            for input in &node.input {
                assert!(
                    known.contains(input.as_str()),
                    "{input} read before it is defined"
                );
            }
            known.extend(node.output.iter().map(String::as_str));
        }
        assert!(known.contains(OUTPUT));
    }

    #[test]
    fn onnx_kept_batchnorm_has_torchvision_names() {
        let config = ResNeXtConfig::tiny(5).with_stem(Stem::ImageNet);
        let (model, vars) = decoded(&config, true);
        let graph = model.graph.as_ref().unwrap();
        let inits: BTreeSet<String> = graph
            .initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .collect();
        assert_eq!(inits, vars);
        assert_topological(&model);
        assert_eq!(model.opset_import[0].version, Some(OPSET));
    }

    #[test]
    fn onnx_folded_batchnorm_leaves_no_bn() {
        let (model, vars) = decoded(&ResNeXtConfig::tiny(3), false);
        let graph = model.graph.as_ref().unwrap();
        assert!(graph
            .node
            .iter()
            .all(|n| n.op_type.as_deref() != Some("BatchNormalization")));
        let convs = vars
            .iter()
            .filter(|n| n.contains("conv") || n.contains("downsample.0"))
            .count();
        let conv_nodes = graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("Conv"))
            .count();
        assert_eq!(conv_nodes, convs);
        assert_topological(&model);
    }
}
