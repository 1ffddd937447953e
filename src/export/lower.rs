//! A [`ResNeXt`] as ONNX nodes: the stem, every bottleneck block and the classifier, with
//! torchvision's parameter names as initializer names.
use tch::nn;

use super::graph::{float, int, ints, GraphBuilder};
use super::onnx_proto::AttributeProto;
use super::ExportError;
use crate::inference::fold;
use crate::resnext::{ConvSpec, PoolSpec, ResNeXt, ResNeXtBlock};

/// Name of the graph input.
pub(crate) const INPUT: &str = "images";
/// Name of the graph output.
pub(crate) const OUTPUT: &str = "logits";

/// Lowers `net` (in evaluation mode) into `g`, reading [`INPUT`] and writing [`OUTPUT`]; with
/// `fold_bn` every BN is folded into the convolution before it, else kept as
/// `BatchNormalization` nodes.
pub(crate) fn lower(g: &mut GraphBuilder, net: &ResNeXt, fold_bn: bool) -> Result<(), ExportError> {
    let mut lw = Lowering { g, fold_bn };
    let (stem, conv, bn) = net
        .stem_parts("ONNX export")
        .map_err(|e| ExportError::Unsupported {
            what: e.to_string(),
        })?;
    let x = lw.conv_bn(("conv1", "bn1"), stem.conv, conv, bn, INPUT)?;
    let mut x = lw.g.node("Relu", "relu", &[&x], vec![]);
    if let Some(pool) = stem.max_pool {
        x = max_pool(lw.g, pool, &x);
    }
    let names = net.config().stages();
    for (stage, blocks) in names.iter().zip(net.stages()) {
        for block in blocks {
            let prefix = format!("{}.{}", stage.name, block.spec().index);
            x = lw.block(&prefix, block, &x)?;
        }
    }
    let pooled = lw.g.node("GlobalAveragePool", "avgpool", &[&x], vec![]);
    let flat =
        lw.g.node("Flatten", "flatten", &[&pooled], vec![int("axis", 1)]);
    let fc = net.classifier();
    let w = lw.g.constant("fc.weight", &fc.ws)?;
    let mut inputs = vec![flat, w];
    if let Some(b) = &fc.bs {
        inputs.push(lw.g.constant("fc.bias", b)?);
    }
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    lw.g.node("Gemm", OUTPUT, &inputs, vec![int("transB", 1)]);
    Ok(())
}

/// A max-pool node after `x`.
fn max_pool(g: &mut GraphBuilder, pool: PoolSpec, x: &str) -> String {
    let attrs = vec![
        ints("kernel_shape", &[pool.kernel; 2]),
        ints("strides", &[pool.stride; 2]),
        ints("pads", &[pool.padding; 4]),
    ];
    g.node("MaxPool", "maxpool", &[x], attrs)
}

/// The state of one lowering: the graph and whether BN is folded.
struct Lowering<'a> {
    g: &'a mut GraphBuilder,
    fold_bn: bool,
}

impl Lowering<'_> {
    /// One bottleneck block under `prefix` (`layer1.0`): its output's name.
    fn block(
        &mut self,
        prefix: &str,
        block: &ResNeXtBlock,
        x: &str,
    ) -> Result<String, ExportError> {
        let mut out = x.to_string();
        for (i, (spec, conv, bn)) in block.main_path().into_iter().enumerate() {
            let names = (
                format!("{prefix}.conv{}", i + 1),
                format!("{prefix}.bn{}", i + 1),
            );
            out = self.conv_bn((&names.0, &names.1), spec, conv, bn, &out)?;
            if i < 2 {
                out = self
                    .g
                    .node("Relu", &format!("{prefix}.relu{}", i + 1), &[&out], vec![]);
            }
        }
        let shortcut = match block.downsample_parts() {
            Some((spec, conv, bn)) => {
                let names = (
                    format!("{prefix}.downsample.0"),
                    format!("{prefix}.downsample.1"),
                );
                self.conv_bn((&names.0, &names.1), spec, conv, bn, x)?
            }
            None => x.to_string(),
        };
        let sum = self
            .g
            .node("Add", &format!("{prefix}.add"), &[&out, &shortcut], vec![]);
        Ok(self
            .g
            .node("Relu", &format!("{prefix}.relu"), &[&sum], vec![]))
    }

    /// The convolution `names.0` with its BN `names.1` on `x`: one `Conv` with the BN folded
    /// in, or a `Conv` and a `BatchNormalization`. Returns the output's name.
    fn conv_bn(
        &mut self,
        names: (&str, &str),
        spec: ConvSpec,
        conv: &nn::Conv2D,
        bn: &nn::BatchNorm,
        x: &str,
    ) -> Result<String, ExportError> {
        let (conv_name, bn_name) = names;
        let torch = |source| ExportError::Torch {
            name: format!("{conv_name}.weight"),
            source,
        };
        if self.fold_bn {
            let (w, b) = tch::no_grad(|| fold(conv, bn)).map_err(torch)?;
            let w = self.g.constant(&format!("{conv_name}.weight"), &w)?;
            let b = self.g.constant(&format!("{conv_name}.bias"), &b)?;
            return Ok(self
                .g
                .node("Conv", conv_name, &[x, &w, &b], conv_attrs(spec)));
        }
        let mut inputs = vec![
            x.to_string(),
            self.g.constant(&format!("{conv_name}.weight"), &conv.ws)?,
        ];
        if let Some(b) = &conv.bs {
            inputs.push(self.g.constant(&format!("{conv_name}.bias"), b)?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let y = self.g.node("Conv", conv_name, &inputs, conv_attrs(spec));
        self.batch_norm(bn_name, bn, &y)
    }

    /// A `BatchNormalization` node (inference mode) named `name` on `x`.
    fn batch_norm(
        &mut self,
        name: &str,
        bn: &nn::BatchNorm,
        x: &str,
    ) -> Result<String, ExportError> {
        let channels = bn.running_mean.size()[0];
        let ones = tch::Tensor::ones([channels], (tch::Kind::Float, tch::Device::Cpu));
        let zeros = ones.zeros_like();
        let scale = self
            .g
            .constant(&format!("{name}.weight"), bn.ws.as_ref().unwrap_or(&ones))?;
        let bias = self
            .g
            .constant(&format!("{name}.bias"), bn.bs.as_ref().unwrap_or(&zeros))?;
        let mean = self
            .g
            .constant(&format!("{name}.running_mean"), &bn.running_mean)?;
        let var = self
            .g
            .constant(&format!("{name}.running_var"), &bn.running_var)?;
        let attrs = vec![float("epsilon", ResNeXt::BN_EPS as f32)];
        Ok(self.g.node(
            "BatchNormalization",
            name,
            &[x, &scale, &bias, &mean, &var],
            attrs,
        ))
    }
}

/// The attributes of a `Conv` node of geometry `spec`.
fn conv_attrs(spec: ConvSpec) -> Vec<AttributeProto> {
    vec![
        ints("kernel_shape", &[spec.kernel; 2]),
        ints("strides", &[spec.stride; 2]),
        ints("pads", &[spec.padding; 4]),
        ints("dilations", &[1, 1]),
        int("group", spec.groups),
    ]
}
