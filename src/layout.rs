//! Channels-last memory layout: tensors and the variables of a [`nn::VarStore`] in `NHWC`
//! order, which oneDNN's convolutions (CPU) and cuDNN's (recent GPUs) prefer.
//!
//! With the convolution weights and the input batch channels-last, libtorch keeps every
//! activation and gradient of the network in that order; on CPU this makes a training step of
//! ResNeXt about twice as fast (see `docs/benchmarks.md`). The [`crate::trainer`] uses it by
//! default and [`crate::inference::InferenceModel`] always.
use tch::{nn, TchError, Tensor};

/// Whether `t` is 4-D with exactly the channels-last strides `[H·W·C, 1, W·C, C]` (`[N, C, H, W]`
/// stored as `N, H, W, C`), as [`channels_last`] makes them.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let x = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu));
/// assert!(!resnext::layout::is_channels_last(&x));
/// assert!(resnext::layout::is_channels_last(&resnext::layout::channels_last(&x)?));
/// # Ok::<(), tch::TchError>(())
/// ```
pub fn is_channels_last(t: &Tensor) -> bool {
    let size = t.size();
    size.len() == 4 && {
        let (c, h, w) = (size[1], size[2], size[3]);
        t.stride() == [h * w * c, 1, w * c, c]
    }
}

/// A tensor with the same shape and values as `t` and channels-last strides when it is 4-D;
/// other tensors, and 4-D tensors already channels-last, are returned as they are (shared).
///
/// PyTorch's `t.contiguous(memory_format=torch.channels_last)`, which tch does not expose.
///
/// # Errors
/// A libtorch error (for example when out of memory).
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let x = Tensor::arange(120, (Kind::Float, Device::Cpu)).view([2, 3, 4, 5]);
/// let y = resnext::layout::channels_last(&x)?;
/// assert_eq!(y.size(), vec![2, 3, 4, 5]);
/// assert_eq!(y.stride(), vec![60, 1, 15, 3]);
/// assert!(x.equal(&y));
/// # Ok::<(), tch::TchError>(())
/// ```
pub fn channels_last(t: &Tensor) -> Result<Tensor, TchError> {
    if t.dim() != 4 || is_channels_last(t) {
        return Ok(t.shallow_clone());
    }
    // Exactly these strides, also for dimensions of size 1: libtorch picks the memory format
    // of a convolution from its weight's strides, and reads a 1x1 weight `[O, I, 1, 1]` with
    // strides `[I, 1, 1, 1]` (what a permute and `contiguous` give) as NCHW.
    let size = t.size();
    let (c, h, w) = (size[1], size[2], size[3]);
    let mut out = Tensor::f_empty_strided(&size, [h * w * c, 1, w * c, c], (t.kind(), t.device()))?;
    tch::no_grad(|| out.f_copy_(t))?;
    Ok(out)
}

/// Gives every 4-D variable of `vs` (the convolution weights of a [`crate::ResNeXt`])
/// channels-last strides in place, keeping values, names, `requires_grad` and the identity of
/// the variables (optimisers holding them, such as [`crate::trainer::Sgd`], see the change).
/// Safetensors files written afterwards are unchanged (values are saved in logical order).
///
/// # Errors
/// A libtorch error (for example when out of memory).
///
/// ```
/// use resnext::{layout, ResNeXt, ResNeXtConfig};
/// use tch::{nn, Device};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// layout::vars_to_channels_last(&vs)?;
/// assert!(layout::is_channels_last(&vs.variables()["conv1.weight"]));
/// # Ok::<(), tch::TchError>(())
/// ```
pub fn vars_to_channels_last(vs: &nn::VarStore) -> Result<(), TchError> {
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            if var.dim() == 4 && !is_channels_last(&var) {
                let converted = channels_last(&var.f_detach()?)?;
                var.f_set_data(&converted)?;
            }
        }
        Ok(())
    })
}

/// The reverse of [`vars_to_channels_last`]: gives every 4-D variable of `vs` contiguous
/// (NCHW) strides in place, keeping values, names and identities.
///
/// # Errors
/// A libtorch error (for example when out of memory).
pub fn vars_to_contiguous(vs: &nn::VarStore) -> Result<(), TchError> {
    tch::no_grad(|| {
        for (_, mut var) in vs.variables() {
            if var.dim() == 4 && !var.is_contiguous() {
                let converted = var.f_detach()?.f_contiguous()?;
                var.f_set_data(&converted)?;
            }
        }
        Ok(())
    })
}
