//! Stochastic gradient descent with momentum, weight decay and Nesterov, exactly as PyTorch's
//! `torch.optim.SGD` (dampening 0), with its momentum buffers visible so checkpoints keep them.
use tch::{nn, Tensor};

/// SGD hyper-parameters (the learning rate is passed to every [`Sgd::step`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Momentum factor (0 for plain SGD).
    pub momentum: f64,
    /// L2 penalty added to the gradient: `g += weight_decay * p`.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// Momentum 0.9, weight decay 5e-4, no Nesterov.
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
        }
    }
}

/// SGD over the trainable variables of a [`nn::VarStore`].
///
/// For every parameter `p` with gradient `g`, as PyTorch:
/// `g += wd * p`; `buf = g` on the first step, else `buf = momentum * buf + g`;
/// `g = g + momentum * buf` with Nesterov, else `g = buf`; `p -= lr * g`.
///
/// ```
/// use resnext::trainer::{Sgd, SgdConfig};
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let w = vs.root().var("w", &[1], nn::Init::Const(1.0));
/// let mut sgd = Sgd::new(&vs, SgdConfig { momentum: 0.0, weight_decay: 0.0, nesterov: false });
/// (&w * 3.0).sum(Kind::Float).backward(); // dL/dw = 3
/// sgd.step(0.1);
/// assert!((w.double_value(&[0]) - 0.7).abs() < 1e-6);
/// ```
#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    /// Trainable variables by name, sorted by name.
    params: Vec<(String, Tensor)>,
    /// Momentum buffer of each parameter, once it has had a step.
    momentum: Vec<Option<Tensor>>,
}

impl Sgd {
    /// SGD over every variable of `vs` that requires a gradient.
    pub fn new(vs: &nn::VarStore, config: SgdConfig) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let momentum = params.iter().map(|_| None).collect();
        Sgd {
            config,
            params,
            momentum,
        }
    }

    /// The trainable parameters `(name, tensor)` this optimiser updates, sorted by name (their
    /// gradients are in `tensor.grad()` after backward).
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// The hyper-parameters.
    pub fn config(&self) -> SgdConfig {
        self.config
    }

    /// Sets every parameter's gradient to zero.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// Multiplies every gradient by `factor` (to undo a loss scale) and says whether all of
    /// them are finite (one device synchronisation).
    pub fn scale_grads(&mut self, factor: f64) -> bool {
        tch::no_grad(|| {
            let mut total: Option<Tensor> = None;
            for (_, p) in &self.params {
                let mut g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = g.g_mul_scalar_(factor);
                let s = g.sum(tch::Kind::Float);
                total = Some(match total {
                    Some(t) => t + s,
                    None => s,
                });
            }
            total.is_none_or(|t| t.isfinite().int64_value(&[]) != 0)
        })
    }

    /// One update with learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        let SgdConfig {
            momentum,
            weight_decay,
            nesterov,
        } = self.config;
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(&mut self.momentum) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut d = if weight_decay != 0.0 {
                    grad + &*p * weight_decay
                } else {
                    grad.shallow_clone()
                };
                if momentum != 0.0 {
                    let b = match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(momentum).g_add_(&d);
                            b
                        }
                        None => buf.insert(d.detach().copy()),
                    };
                    d = if nesterov {
                        d + &*b * momentum
                    } else {
                        b.shallow_clone()
                    };
                }
                let _ = p.g_sub_(&(d * lr));
            }
        })
    }

    /// The momentum buffers that exist, by parameter name (saved in checkpoints).
    pub fn momentum_buffers(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.momentum)
            .filter_map(|((name, _), b)| b.as_ref().map(|b| (name.clone(), b.shallow_clone())))
            .collect()
    }

    /// Restores momentum buffers by parameter name (from [`Sgd::momentum_buffers`]); parameters
    /// not named get none, as before their first step.
    ///
    /// # Errors
    /// The name of a buffer that matches no parameter, or whose shape differs from it, with
    /// both shapes.
    pub fn set_momentum_buffers(&mut self, buffers: Vec<(String, Tensor)>) -> Result<(), String> {
        let mut fresh: Vec<Option<Tensor>> = self.params.iter().map(|_| None).collect();
        for (name, t) in buffers {
            let Ok(i) = self.params.binary_search_by(|(n, _)| n.as_str().cmp(&name)) else {
                return Err(format!(
                    "momentum buffer `{name}` matches no parameter of the model"
                ));
            };
            let p = &self.params[i].1;
            if t.size() != p.size() {
                return Err(format!(
                    "momentum buffer `{name}` has shape {:?}, the parameter {:?}",
                    t.size(),
                    p.size()
                ));
            }
            fresh[i] = Some(t.to_device(p.device()).to_kind(p.kind()));
        }
        self.momentum = fresh;
        Ok(())
    }
}
