//! The generic inference path: 1x1 convolutions as matrix products (`addmm`, the bias and the
//! residual addition fused in) into buffers reused between calls, the grouped 3x3 convolution as
//! a libtorch convolution, channels-last activations. Runs on every device and float kind.
use std::sync::{Mutex, MutexGuard, PoisonError};

use tch::nn;
use tch::{Device, Kind, TchError, Tensor};

use super::fold::fold;
use crate::layout::channels_last;
use crate::resnext::{ConvSpec, PoolSpec, ResNeXt, ResNeXtBlock};

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

/// The generic path's network: folded convolutions, pointwise matrices and the buffer pool.
#[derive(Debug)]
pub(super) struct MatmulNet {
    device: Device,
    kind: Kind,
    stem: FoldedConv,
    /// The max-pool after the stem's ReLU, if any.
    stem_pool: Option<PoolSpec>,
    blocks: Vec<FoldedBlock>,
    buffers: Mutex<BufferPool>,
}

impl MatmulNet {
    /// The generic form of `net` (call under [`tch::no_grad`]).
    pub(super) fn build(net: &ResNeXt) -> Result<Self, TchError> {
        let (stem_spec, stem_conv, stem_bn) = net
            .stem_parts("the inference form")
            .map_err(|e| TchError::Kind(e.to_string()))?;
        let stem = folded_conv(stem_spec.conv, stem_conv, stem_bn)?;
        let blocks = net
            .stages()
            .iter()
            .flatten()
            .map(folded_block)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device: stem.weight.device(),
            kind: stem.weight.kind(),
            stem,
            stem_pool: stem_spec.max_pool,
            blocks,
            buffers: Mutex::new(BufferPool::default()),
        })
    }

    /// Frees the intermediate buffers kept between calls (they are allocated again by the next
    /// call).
    pub(super) fn release_buffers(&self) {
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

    /// Elements held in reused buffers between calls.
    pub(super) fn buffered_elements(&self) -> usize {
        self.pool().free.iter().map(Tensor::numel).sum()
    }

    /// The stem on `xs`: its activations as an `[N·H·W, C]` matrix in NHWC order, and their
    /// shape.
    fn stem_rows(&self, xs: &Tensor) -> Result<(Tensor, Grid), TchError> {
        let xs = xs.f_to_device(self.device)?.f_to_kind(self.kind)?;
        let mut x = self.stem.apply(&channels_last(&xs)?)?;
        let _ = x.f_relu_()?;
        if let Some(pool) = self.stem_pool {
            x = pool.apply(&x)?;
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

    /// The pooled features `[N, C]` of `xs` (call under [`tch::no_grad`]).
    pub(super) fn features(&self, xs: &Tensor) -> Result<Tensor, TchError> {
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
        Ok(features)
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
