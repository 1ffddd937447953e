//! The fused CPU path: every convolution is one call of libtorch's oneDNN convolution with its
//! post-operation fused in (`mkldnn::_convolution_pointwise`, the kernels torch.compile's CPU
//! backend emits), on weights reordered once into oneDNN's preferred blocked layout:
//!
//! * stem, first 1x1 and grouped 3x3 of every block: convolution + ReLU in one pass;
//! * projection shortcut: convolution alone;
//! * last 1x1: accumulated into the shortcut in place (oneDNN's sum post-operation, so the
//!   residual addition costs no pass of its own), then one in-place ReLU;
//! * activations channels-last (NHWC) throughout, as oneDNN's kernels read and write them.
//!
//! Only for float32 on the CPU, with a libtorch that registers the operators
//! ([`super::ffi::fused_available`]); [`super::InferenceModel::with_kernels`] refuses it
//! otherwise.
use tch::nn;
use tch::{Device, Kind, TchError, Tensor};

use super::ffi::{self, Post};
use super::fold::fold;
use crate::layout::channels_last;
use crate::resnext::{ConvSpec, PoolSpec, ResNeXt, ResNeXtBlock, Stem};

/// A convolution with its BN folded in and its weight reordered for oneDNN.
#[derive(Debug)]
struct PackedConv {
    weight: Tensor,
    bias: Tensor,
    spec: ConvSpec,
}

impl PackedConv {
    /// Folds `bn` into `conv` and reorders the weight for inputs of `side x side`: oneDNN picks
    /// the weight layout from the shapes, and a layout chosen for one image serves every batch
    /// size and nearby image sizes (another layout would only cost a reorder per call).
    fn new(
        spec: ConvSpec,
        conv: &nn::Conv2D,
        bn: &nn::BatchNorm,
        side: i64,
    ) -> Result<Self, TchError> {
        let (w, bias) = fold(conv, bn)?;
        let input = [1, spec.in_channels, side, side];
        let weight = w.f_to_mkldnn(None)?.f_mkldnn_reorder_conv2d_weight(
            [spec.padding; 2],
            [spec.stride; 2],
            [1, 1],
            spec.groups,
            input.as_slice(),
        )?;
        Ok(Self { weight, bias, spec })
    }

    fn run(&self, x: &Tensor, post: Post) -> Result<Tensor, TchError> {
        ffi::conv(x, &self.weight, &self.bias, &self.spec, post)
    }

    /// `other += self(x)`, in place.
    fn add_into(&self, other: &mut Tensor, x: &Tensor) -> Result<(), TchError> {
        ffi::conv_add_(other, x, &self.weight, &self.bias, &self.spec)
    }

    fn output_side(&self, side: i64) -> i64 {
        self.spec.output_size(side, side).0
    }
}

/// One bottleneck block in fused form.
#[derive(Debug)]
struct FusedBlock {
    reduce: PackedConv,
    grouped: PackedConv,
    expand: PackedConv,
    downsample: Option<PackedConv>,
}

impl FusedBlock {
    /// The block for inputs of `side x side`, and the side of its output.
    fn new(block: &ResNeXtBlock, side: i64) -> Result<(Self, i64), TchError> {
        let [(s1, c1, b1), (s2, c2, b2), (s3, c3, b3)] = block.main_path();
        let reduce = PackedConv::new(s1, c1, b1, side)?;
        let grouped = PackedConv::new(s2, c2, b2, side)?;
        let out_side = grouped.output_side(side);
        let expand = PackedConv::new(s3, c3, b3, out_side)?;
        let downsample = match block.downsample_parts() {
            Some((spec, conv, bn)) => Some(PackedConv::new(spec, conv, bn, side)?),
            None => None,
        };
        let block = FusedBlock {
            reduce,
            grouped,
            expand,
            downsample,
        };
        Ok((block, out_side))
    }

    /// The block on `x`, which it consumes: without a projection, `x` itself receives the
    /// output.
    fn run(&self, x: Tensor) -> Result<Tensor, TchError> {
        let t1 = self.reduce.run(&x, Post::Relu)?;
        let t2 = self.grouped.run(&t1, Post::Relu)?;
        drop(t1);
        let mut out = match &self.downsample {
            Some(projection) => projection.run(&x, Post::None)?,
            None => x,
        };
        self.expand.add_into(&mut out, &t2)?;
        let _ = out.f_relu_()?;
        Ok(out)
    }
}

/// The fused path's network.
#[derive(Debug)]
pub(super) struct FusedNet {
    stem: PackedConv,
    stem_pool: Option<PoolSpec>,
    blocks: Vec<FusedBlock>,
}

impl FusedNet {
    /// Whether the fused path can run `net`: float32 on the CPU, and the operators registered.
    pub(super) fn supports(net: &ResNeXt) -> bool {
        let ws = &net.classifier().ws;
        ws.device() == Device::Cpu && ws.kind() == Kind::Float && ffi::fused_available()
    }

    /// The fused form of `net` (call under [`tch::no_grad`]), with weights laid out for the
    /// stem's usual image size (32 for the CIFAR stem, 224 for the ImageNet one).
    pub(super) fn build(net: &ResNeXt) -> Result<Self, TchError> {
        let (stem_spec, conv, bn) = net
            .stem_parts("the fused inference form")
            .map_err(|e| TchError::Kind(e.to_string()))?;
        let mut side = match net.config().stem {
            Stem::Cifar | Stem::Whitening => 32,
            Stem::ImageNet => 224,
        };
        let stem = PackedConv::new(stem_spec.conv, conv, bn, side)?;
        side = stem.output_side(side);
        if let Some(pool) = stem_spec.max_pool {
            side = pool.output_size(side, side).0;
        }
        let mut blocks = Vec::new();
        for block in net.stages().iter().flatten() {
            let (fused, next) = FusedBlock::new(block, side)?;
            blocks.push(fused);
            side = next;
        }
        Ok(Self {
            stem,
            stem_pool: stem_spec.max_pool,
            blocks,
        })
    }

    /// The pooled features `[N, C]` of `xs` (call under [`tch::no_grad`]).
    pub(super) fn features(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let xs = xs.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?;
        let mut x = self.stem.run(&channels_last(&xs)?, Post::Relu)?;
        if let Some(pool) = self.stem_pool {
            x = pool.apply(&x)?;
        }
        for block in &self.blocks {
            x = block.run(x)?;
        }
        x.f_mean_dim([2, 3].as_slice(), false, Kind::Float)
    }
}
