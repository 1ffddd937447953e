//! BatchNorm folded into the convolution before it, shared by both inference paths and the ONNX
//! export.
use tch::nn;
use tch::{Kind, TchError, Tensor};

use crate::resnext::ResNeXt;

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
