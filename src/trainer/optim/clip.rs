//! Gradient clipping by the global norm, as PyTorch's `torch.nn.utils.clip_grad_norm_`.
use tch::Tensor;

use super::error::invalid;
use super::OptimError;
use crate::trainer::{GradientHook, TrainError};

/// The 2-norm of all gradients of `params` together (as if concatenated into one vector), as
/// PyTorch computes it: the norm of the stacked per-tensor norms; a scalar on the device of
/// the first gradient (0 on the CPU when no parameter has a gradient). Nothing is read back.
///
/// # Errors
/// [`OptimError::Torch`] when libtorch fails.
pub fn total_grad_norm(params: &[(String, Tensor)]) -> Result<Tensor, OptimError> {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .collect();
        let Some(first) = grads.first() else {
            return Ok(Tensor::from(0.0f32));
        };
        let device = first.device();
        let norms = grads
            .iter()
            .map(|g| g.f_norm()?.f_to_device(device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::f_stack(&norms, 0)?.f_norm()?)
    })
}

/// Scales the gradients of `params` so that their global 2-norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: `coef = max_norm / (total + 1e-6)`,
/// clamped to 1, and every gradient multiplied by it (also when it is 1, so nothing waits for
/// the device). Returns the total norm before clipping ([`total_grad_norm`]).
///
/// Call it after backward and before the optimiser's step; under fp16 loss scaling, after the
/// gradients are unscaled (see [`gradient_clipper`]).
///
/// ```
/// use resnext::trainer::clip_grad_norm;
/// use tch::{nn, Device, Kind};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let w = vs.root().var("w", &[2], nn::Init::Const(1.0));
/// (&w * 3.0).sum(Kind::Float).backward(); // gradient [3, 3], norm 4.24
/// let params = vec![("w".to_string(), w.shallow_clone())];
/// let total = clip_grad_norm(&params, 1.0)?;
/// assert!((total.double_value(&[]) - 18f64.sqrt()).abs() < 1e-5);
/// assert!((w.grad().norm().double_value(&[]) - 1.0).abs() < 1e-5);
/// # Ok::<(), resnext::trainer::OptimError>(())
/// ```
///
/// # Errors
/// [`OptimError::InvalidHyperParameter`] for a `max_norm` that is not finite and above 0 (no
/// gradient is changed); [`OptimError::Torch`] when libtorch fails.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<Tensor, OptimError> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(invalid("max_norm", max_norm, "a finite number above 0"));
    }
    let total = total_grad_norm(params)?;
    tch::no_grad(|| {
        let coef = total
            .f_add_scalar(1e-6)?
            .f_reciprocal()?
            .f_mul_scalar(max_norm)?
            .f_clamp_max(1.0)?;
        for (_, p) in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_mul_(&coef.f_to_device(g.device())?)?;
            }
        }
        Ok::<_, OptimError>(())
    })?;
    Ok(total)
}

/// A [`GradientHook`] that clips the gradients to the global norm `max_norm`
/// ([`clip_grad_norm`]). [`TrainStep`](crate::trainer::TrainStep) runs its hook after the
/// gradients of a data-parallel run are averaged and, under fp16, after they are unscaled:
/// where PyTorch's reference scripts clip (`scaler.unscale_(optimizer)` then
/// `clip_grad_norm_`). A step that fp16 then skips (gradients not finite) is clipped in vain,
/// as in PyTorch.
///
/// # Errors
/// [`OptimError::InvalidHyperParameter`] for a `max_norm` that is not finite and above 0.
pub fn gradient_clipper(max_norm: f64) -> Result<GradientHook, OptimError> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(invalid("max_norm", max_norm, "a finite number above 0"));
    }
    Ok(Box::new(move |params: &[(String, Tensor)]| {
        clip_grad_norm(params, max_norm)
            .map(|_| ())
            .map_err(TrainError::from)
    }))
}
