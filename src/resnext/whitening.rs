//! The whitening stem's weights from the data (airbench's `init_whitening_conv`): the
//! eigenvectors of the covariance of the training images' 2x2 patches, each scaled by the
//! inverse square root of its eigenvalue, and their negations. The stem's output is then
//! decorrelated, unit-variance features of every patch, split into positive and negative parts
//! by the activation.
use tch::{Kind, Tensor};

use super::{ModelError, ResNeXt, Stem};

/// airbench's `eps` in `eigenvectors / sqrt(eigenvalues + eps)`: keeps the near-zero
/// directions of the patch covariance from being blown up.
pub const WHITENING_EPS: f64 = 5e-4;

/// How many training images airbench's whitening reads (the first 5,000).
pub const WHITENING_IMAGES: usize = 5000;

/// Sets the weight of `net`'s whitening stem ([`Stem::Whitening`]) from `images`, float
/// `[N, 3, H, W]` normalised as training normalises them (airbench reads the first
/// [`WHITENING_IMAGES`] training images, without augmentation). The covariance of every 2x2
/// patch (`H-1` x `W-1` per image) is computed in float32 on the images' device, and
/// `torch.linalg.eigh` gives its eigenvectors; the stem's 24 filters are the 12 eigenvectors
/// `v_i / sqrt(l_i + eps)`, largest eigenvalue first, then their negations. The bias is left
/// as it is.
///
/// # Errors
/// [`ModelError::Unsupported`] for a network without the whitening stem;
/// [`ModelError::InputShape`] for images that are not `[N, 3, H, W]` with `H, W >= 2`;
/// [`ModelError::Torch`] when libtorch fails.
pub fn whiten_stem(net: &ResNeXt, images: &Tensor) -> Result<(), ModelError> {
    if net.config().stem != Stem::Whitening {
        return Err(ModelError::Unsupported {
            what: format!(
                "whitening the stem of a network with the {:?} stem (only Stem::Whitening has one)",
                net.config().stem
            ),
        });
    }
    ResNeXt::check_input(images)?;
    let shape = images.size();
    if shape[2] < 2 || shape[3] < 2 {
        return Err(ModelError::InputShape {
            shape,
            kind: images.kind(),
        });
    }
    let conv = net.stem_conv();
    let weight = tch::no_grad(|| whitening_weights(images, &conv.ws.size()))?;
    tch::no_grad(|| {
        conv.ws.shallow_clone().f_copy_(
            &weight
                .f_to_kind(conv.ws.kind())?
                .f_to_device(conv.ws.device())?,
        )
    })?;
    Ok(())
}

/// The whitening filters `[2 * c * kh * kw, c, kh, kw]` for a weight of `shape`
/// `[2 * c * kh * kw, c, kh, kw]`, from the patches of `images`.
fn whitening_weights(images: &Tensor, shape: &[i64]) -> Result<Tensor, tch::TchError> {
    let (c, kh, kw) = (shape[1], shape[2], shape[3]);
    let dim = c * kh * kw;
    // Every kh x kw patch as a row: [N, C, H', W', kh, kw] -> [N, W', H', C, kh, kw] -> [n, dim],
    // airbench's get_patches order.
    let patches = images
        .f_to_kind(Kind::Float)?
        .f_unfold(2, kh, 1)?
        .f_unfold(3, kw, 1)?
        .f_transpose(1, 3)?
        .f_reshape([-1, dim])?;
    let n = patches.size()[0] as f64;
    let covariance = patches
        .f_transpose(0, 1)?
        .f_matmul(&patches)?
        .f_div_scalar(n)?;
    let (eigenvalues, eigenvectors) = covariance.f_linalg_eigh("U")?;
    // eigh sorts ascending: flip to largest first.
    let eigenvalues = eigenvalues.f_flip([0])?.f_view([-1, 1, 1, 1])?;
    let eigenvectors = eigenvectors
        .f_transpose(0, 1)?
        .f_reshape([dim, c, kh, kw])?
        .f_flip([0])?;
    let scaled = eigenvectors.f_div(&eigenvalues.f_add_scalar(WHITENING_EPS)?.f_sqrt()?)?;
    Tensor::f_cat(&[&scaled, &scaled.f_neg()?], 0)
}
