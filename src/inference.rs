//! A fast, evaluation-only form of a [`ResNeXt`].
//!
//! [`InferenceModel`] is built once from a trained network and computes the same logits as
//! `net.forward_t(xs, false)` (up to float rounding), faster:
//!
//! * every batch normalisation is folded into the convolution before it
//!   (`w' = w·γ/√(σ²+ε)`, `b' = β + (b − μ)·γ/√(σ²+ε)`), for the stem, the three convolutions
//!   of each block and the projection shortcuts, so no BN pass is left;
//! * activations are kept in channels-last (NHWC) order, which oneDNN's convolutions prefer on
//!   CPU and cuDNN's on recent GPUs;
//! * in that order a 1x1 convolution is a plain matrix product `[N·H·W, C_in] × [C_in, C_out]`,
//!   so the first and the last convolution of every block and the shortcut projection are run
//!   as `addmm` with the bias fused in, writing into buffers that are reused from one call to
//!   the next (fresh multi-megabyte tensors cost a page fault per 4 KiB page on first touch,
//!   which is a sizeable part of an eager forward pass on CPU);
//! * the residual addition is fused into the last matrix product (`addmm` with the shortcut as
//!   its `input`), and ReLUs run in place;
//! * everything runs under [`tch::no_grad`].
//!
//! The grouped 3x3 convolution stays a libtorch convolution (oneDNN on CPU).
//!
//! The [`crate::trainer`] evaluates the test set with it (in fp32). For channels-last training
//! with the plain [`ResNeXt`] module, see [`crate::layout`].
//!
//! ```
//! use resnext::inference::InferenceModel;
//! use resnext::{ResNeXt, ResNeXtConfig};
//! use tch::{nn, nn::ModuleT, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
//! let fast = InferenceModel::new(&net)?;
//! let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
//! let reference = net.forward_t(&xs, false);
//! let logits = fast.try_forward(&xs)?;
//! let err = (&logits - &reference).abs().max().double_value(&[]);
//! assert!(err <= 1e-4 * reference.abs().max().double_value(&[]).max(1.0));
//! # Ok::<(), resnext::ModelError>(())
//! ```
use std::sync::{Mutex, MutexGuard, PoisonError};

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, TchError, Tensor};

use crate::layout::channels_last;
use crate::resnext::{ConvSpec, ModelError, PoolSpec, ResNeXt, ResNeXtBlock, ResNeXtConfig};

/// A convolution with its BN folded in: channels-last weight and a bias, and its geometry.
#[derive(Debug)]
struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
    spec: ConvSpec,
}

impl FoldedConv {
    fn apply(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        xs.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.spec.stride; 2],
            [self.spec.padding; 2],
            [1, 1],
            self.spec.groups,
        )
    }
}

/// A 1x1 convolution with its BN folded in, as the right operand of a matrix product.
#[derive(Debug)]
struct FoldedPointwise {
    /// `[C_in, C_out]`, the transposed (and contiguous) folded weight.
    weight_t: Tensor,
    bias: Tensor,
}

/// One bottleneck block in inference form.
#[derive(Debug)]
struct FoldedBlock {
    reduce: FoldedPointwise,
    grouped: FoldedConv,
    expand: FoldedPointwise,
    /// The projection shortcut: its transposed weight and stride; its bias is in `out_bias`.
    downsample: Option<(Tensor, i64)>,
    /// Bias added after the last matrix product: `expand.bias`, plus the shortcut's bias.
    out_bias: Tensor,
}

/// `conv` followed by `bn` (in evaluation mode) as one convolution: `(weight, bias)` in the
/// kind of the convolution weight, computed in double precision. Also used by the ONNX export
/// ([`crate::export`]).
pub(crate) fn fold(conv: &nn::Conv2D, bn: &nn::BatchNorm) -> Result<(Tensor, Tensor), TchError> {
    let kind = conv.ws.kind();
    let w = conv.ws.f_detach()?.f_to_kind(Kind::Double)?;
    let out = w.size()[0];
    let dev = w.device();
    let opts = (Kind::Double, dev);
    let double = |t: &Tensor| t.f_detach()?.f_to_kind(Kind::Double);
    let gamma = match &bn.ws {
        Some(g) => double(g)?,
        None => Tensor::f_ones([out], opts)?,
    };
    let beta = match &bn.bs {
        Some(b) => double(b)?,
        None => Tensor::f_zeros([out], opts)?,
    };
    let conv_bias = match &conv.bs {
        Some(b) => double(b)?,
        None => Tensor::f_zeros([out], opts)?,
    };
    let mean = double(&bn.running_mean)?;
    let var = double(&bn.running_var)?;
    let scale = gamma.f_div(&var.f_add_scalar(ResNeXt::BN_EPS)?.f_sqrt()?)?;
    let weight = w.f_mul(&scale.f_reshape([out, 1, 1, 1])?)?;
    let bias = conv_bias.f_sub(&mean)?.f_mul(&scale)?.f_add(&beta)?;
    Ok((weight.f_to_kind(kind)?, bias.f_to_kind(kind)?))
}

fn folded_conv(
    spec: ConvSpec,
    conv: &nn::Conv2D,
    bn: &nn::BatchNorm,
) -> Result<FoldedConv, TchError> {
    let (weight, bias) = fold(conv, bn)?;
    Ok(FoldedConv {
        weight: channels_last(&weight)?,
        bias,
        spec,
    })
}

/// The transposed `[C_in, C_out]` matrix of a folded 1x1 convolution weight `[C_out, C_in, 1, 1]`.
fn pointwise_matrix(weight: &Tensor) -> Result<Tensor, TchError> {
    let size = weight.size();
    weight
        .f_reshape([size[0], size[1]])?
        .f_transpose(0, 1)?
        .f_contiguous()
}

fn folded_pointwise(conv: &nn::Conv2D, bn: &nn::BatchNorm) -> Result<FoldedPointwise, TchError> {
    let (weight, bias) = fold(conv, bn)?;
    Ok(FoldedPointwise {
        weight_t: pointwise_matrix(&weight)?,
        bias,
    })
}

/// The inference form of one block; the geometry comes from the block's spec.
fn folded_block(block: &ResNeXtBlock) -> Result<FoldedBlock, TchError> {
    let [(_, c1, b1), (grouped, c2, b2), (_, c3, b3)] = block.main_path();
    let expand = folded_pointwise(c3, b3)?;
    let (downsample, out_bias) = match block.downsample_parts() {
        Some((spec, conv, bn)) => {
            let (w, b) = fold(conv, bn)?;
            let sum = expand.bias.f_add(&b)?;
            (Some((pointwise_matrix(&w)?, spec.stride)), sum)
        }
        None => (None, expand.bias.shallow_clone()),
    };
    Ok(FoldedBlock {
        reduce: folded_pointwise(c1, b1)?,
        grouped: folded_conv(grouped, c2, b2)?,
        expand,
        downsample,
        out_bias,
    })
}

/// Flat buffers reused between forward passes, every one sized for `batch` images: the
/// largest batch seen. A larger batch replaces them; a smaller one uses their first part.
#[derive(Debug, Default)]
struct BufferPool {
    batch: i64,
    free: Vec<Tensor>,
}

/// An evaluation-only [`ResNeXt`]: BN folded into the convolutions, channels-last activations,
/// 1x1 convolutions as fused matrix products into reused buffers (see the [module](self) docs).
///
/// It copies the parameters and running statistics at construction: later changes to the
/// network are not seen (build a new one after training). It keeps the device and the float
/// kind of the network; inputs are moved to them. Between calls it keeps the intermediate
/// buffers of the largest batch seen so far (about the size of the activations of one forward
/// pass); [`InferenceModel::release_buffers`] frees them. It can be shared between threads.
///
/// ```
/// use resnext::inference::InferenceModel;
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let fast = InferenceModel::new(&net)?;
/// let logits = fast.forward(&Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu)));
/// assert_eq!(logits.size(), vec![4, 10]);
/// assert!(fast.try_forward(&Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu))).is_err());
/// # Ok::<(), resnext::ModelError>(())
/// ```
#[derive(Debug)]
pub struct InferenceModel {
    config: ResNeXtConfig,
    device: Device,
    kind: Kind,
    stem: FoldedConv,
    /// The max-pool after the stem's ReLU, if any.
    stem_pool: Option<PoolSpec>,
    blocks: Vec<FoldedBlock>,
    fc_weight: Tensor,
    fc_bias: Option<Tensor>,
    buffers: Mutex<BufferPool>,
}

impl InferenceModel {
    /// The inference form of `net`, with its current parameters and BN running statistics.
    ///
    /// # Errors
    /// [`ModelError::Torch`] if libtorch fails (for example when out of memory).
    pub fn new(net: &ResNeXt) -> Result<Self, ModelError> {
        tch::no_grad(|| Self::build(net)).map_err(ModelError::from)
    }

    fn build(net: &ResNeXt) -> Result<Self, TchError> {
        let config = net.config().clone();
        let (stem_spec, stem_conv, stem_bn) = net.stem_parts();
        let stem = folded_conv(stem_spec.conv, stem_conv, stem_bn)?;
        let blocks = net
            .stages()
            .iter()
            .flatten()
            .map(folded_block)
            .collect::<Result<Vec<_>, _>>()?;
        let fc = net.classifier();
        Ok(Self {
            device: stem.weight.device(),
            kind: stem.weight.kind(),
            config,
            stem,
            stem_pool: stem_spec.max_pool,
            blocks,
            fc_weight: fc.ws.f_detach()?.f_contiguous()?,
            fc_bias: fc.bs.as_ref().map(|b| b.f_detach()).transpose()?,
            buffers: Mutex::new(BufferPool::default()),
        })
    }

    /// The configuration of the network this was built from.
    pub fn config(&self) -> &ResNeXtConfig {
        &self.config
    }

    /// The device the parameters live on (inputs are moved there).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Logits `[N, num_classes]` for a batch `[N, 3, H, W]`, under [`tch::no_grad`].
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for an input that is not a float tensor `[N, 3, H, W]`
    /// (checked as [`ResNeXt::check_input`]); [`ModelError::Torch`] if libtorch fails, for
    /// example for an image too small for the network's strides.
    pub fn try_forward(&self, xs: &Tensor) -> Result<Tensor, ModelError> {
        ResNeXt::check_input(xs)?;
        tch::no_grad(|| self.run(xs)).map_err(ModelError::from)
    }

    /// Logits `[N, num_classes]` for a batch `[N, 3, H, W]`.
    ///
    /// # Panics
    /// With the message of the [`ModelError`] that [`InferenceModel::try_forward`] returns for
    /// a bad input.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        match self.try_forward(xs) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    /// Frees the intermediate buffers kept between calls (they are allocated again by the next
    /// call).
    pub fn release_buffers(&self) {
        self.pool().free.clear();
    }

    fn pool(&self) -> MutexGuard<'_, BufferPool> {
        // A panic while the lock was held cannot leave the pool inconsistent: it only holds
        // unused buffers.
        self.buffers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A flat buffer of the model's kind on its device for `per_image` elements of each of
    /// `batch` images (or more: use its first `per_image * batch` elements).
    fn take(&self, per_image: i64, batch: i64) -> Result<Tensor, TchError> {
        let (reused, capacity) = {
            let mut pool = self.pool();
            if batch > pool.batch {
                // Buffers of a smaller batch are too small for every layer: drop them all.
                pool.free.clear();
                pool.batch = batch;
            }
            let capacity = per_image * pool.batch;
            let found = pool.free.iter().position(|t| t.numel() as i64 == capacity);
            (found.map(|i| pool.free.swap_remove(i)), capacity)
        };
        match reused {
            Some(t) => Ok(t),
            None => Tensor::f_empty([capacity], (self.kind, self.device)),
        }
    }

    /// Returns a buffer of [`take`](Self::take) for `per_image` elements an image; kept only
    /// if it is sized for the largest batch.
    fn give(&self, buffer: Tensor, per_image: i64) {
        let mut pool = self.pool();
        if buffer.numel() as i64 == per_image * pool.batch {
            pool.free.push(buffer);
        }
    }

    /// Elements held in reused buffers between calls (for tests of the buffer policy).
    #[doc(hidden)]
    pub fn buffered_elements(&self) -> usize {
        self.pool().free.iter().map(Tensor::numel).sum()
    }

    /// The stem on `xs`: its activations as an `[N·H·W, C]` matrix in NHWC order, and their
    /// shape.
    fn stem_rows(&self, xs: &Tensor) -> Result<(Tensor, Grid), TchError> {
        let xs = xs.f_to_device(self.device)?.f_to_kind(self.kind)?;
        let mut x = self.stem.apply(&channels_last(&xs)?)?;
        let _ = x.f_relu_()?;
        if let Some(pool) = self.stem_pool {
            x = x.f_max_pool2d(
                [pool.kernel; 2],
                [pool.stride; 2],
                [pool.padding; 2],
                [1, 1],
                false,
            )?;
        }
        let size = x.size();
        let grid = Grid {
            n: size[0],
            c: size[1],
            h: size[2],
            w: size[3],
        };
        Ok((x.f_permute([0, 2, 3, 1])?.f_reshape([-1, grid.c])?, grid))
    }

    /// `block` on the activations `mat` of shape `g`: its output matrix, the pooled buffer
    /// behind it (with its elements per image, to give back once the next block has read it),
    /// and the output's shape.
    fn run_block(
        &self,
        block: &FoldedBlock,
        mat: &Tensor,
        g: Grid,
    ) -> Result<(Tensor, (Tensor, i64), Grid), TchError> {
        let Grid { n, c, h, w } = g;
        let width = block.reduce.weight_t.size()[1];
        let t1 = self.take(h * w * width, n)?;
        let mut t1m = t1
            .f_narrow(0, 0, n * h * w * width)?
            .f_reshape([n * h * w, width])?;
        let _ = (block.reduce.bias).f_addmm_out(&t1m, mat, &block.reduce.weight_t)?;
        let _ = t1m.f_relu_()?;
        let t1c = t1m.f_reshape([n, h, w, width])?.f_permute([0, 3, 1, 2])?;
        let mut t2 = block.grouped.apply(&t1c)?;
        drop((t1c, t1m));
        self.give(t1, h * w * width);
        let _ = t2.f_relu_()?;
        let (h2, w2) = (t2.size()[2], t2.size()[3]);
        let t2m = t2.f_permute([0, 2, 3, 1])?.f_reshape([-1, width])?;
        let c_out = block.expand.weight_t.size()[1];
        let out_per_image = h2 * w2 * c_out;
        let out = self.take(out_per_image, n)?;
        let mut outm = out
            .f_narrow(0, 0, n * out_per_image)?
            .f_reshape([n * h2 * w2, c_out])?;
        match &block.downsample {
            Some((weight_t, stride)) => {
                let shortcut_in = if *stride == 1 {
                    mat.shallow_clone()
                } else {
                    mat.f_reshape([n, h, w, c])?
                        .f_slice(1, 0, h, *stride)?
                        .f_slice(2, 0, w, *stride)?
                        .f_reshape([-1, c])?
                };
                let _ = block.out_bias.f_addmm_out(&outm, &shortcut_in, weight_t)?;
                let _ = outm.f_addmm_(&t2m, &block.expand.weight_t)?;
            }
            None => {
                let _ = mat.f_addmm_out(&outm, &t2m, &block.expand.weight_t)?;
                let _ = outm.f_add_(&block.out_bias)?;
            }
        }
        let _ = outm.f_relu_()?;
        let grid = Grid {
            n,
            c: c_out,
            h: h2,
            w: w2,
        };
        Ok((outm, (out, out_per_image), grid))
    }

    fn run(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let (mut mat, mut grid) = self.stem_rows(xs)?;
        // `held` is the pooled buffer behind `mat`, returned to the pool once the next block
        // has read it.
        let mut held: Option<(Tensor, i64)> = None;
        for block in &self.blocks {
            let (next, buffer, next_grid) = self.run_block(block, &mat, grid)?;
            mat = next;
            if let Some((previous, per_image)) = held.replace(buffer) {
                self.give(previous, per_image);
            }
            grid = next_grid;
        }
        let Grid { n, c, h, w } = grid;
        let features = mat
            .f_reshape([n, h * w, c])?
            .f_mean_dim(1, false, self.kind)?;
        drop(mat);
        if let Some((buffer, per_image)) = held {
            self.give(buffer, per_image);
        }
        features.f_linear(&self.fc_weight, self.fc_bias.as_ref())
    }
}

/// The shape of a batch of activations: images, channels, height, width.
#[derive(Debug, Clone, Copy)]
struct Grid {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
}

impl ModuleT for InferenceModel {
    /// The evaluation-mode forward pass, whatever `train` says (an [`InferenceModel`] has no
    /// training mode: its BN layers are folded with their running statistics).
    ///
    /// # Panics
    /// As [`InferenceModel::forward`].
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        self.forward(xs)
    }
}
