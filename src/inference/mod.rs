//! A fast, evaluation-only form of a [`ResNeXt`].
//!
//! [`InferenceModel`] is built once from a trained network and computes the same logits as
//! `net.forward_t(xs, false)` (up to float rounding), faster. Every batch normalisation is
//! folded into the convolution before it (`w' = w·γ/√(σ²+ε)`, `b' = β + (b − μ)·γ/√(σ²+ε)`),
//! for the stem, the three convolutions of each block and the projection shortcuts, so no BN
//! pass is left; activations stay channels-last (NHWC); everything runs under
//! [`tch::no_grad`]. Two sets of kernels do the rest ([`Kernels`]):
//!
//! * **generic** (every device and float kind; the default on Intel CPUs, on GPUs and for
//!   other float kinds): in channels-last order a 1x1
//!   convolution is a matrix product `[N·H·W, C_in] × [C_in, C_out]`, so the first and last
//!   convolutions of every block and the shortcut projection run as `addmm` with the bias and
//!   the residual addition fused in, writing into buffers reused from one call to the next
//!   (fresh multi-megabyte tensors cost a page fault per 4 KiB page on first touch); the
//!   grouped 3x3 convolution is a libtorch convolution; ReLUs run in place.
//! * **oneDNN fused** (float32 on the CPU; the default on x86-64 CPUs other than Intel's): each
//!   convolution is one call of
//!   libtorch's oneDNN convolution with its ReLU fused in, on weights reordered once into
//!   oneDNN's blocked layout, and the last 1x1 convolution of every block accumulates into the
//!   shortcut in place, so neither the ReLUs nor the residual additions cost a pass over memory
//!   of their own (see `fused.rs`). The operators (`mkldnn::_convolution_pointwise`, which
//!   torch.compile's CPU backend emits) are looked up in libtorch's dispatcher when the model is
//!   built. On a 2-core Intel Xeon (AVX-512) it measured as fast as the generic kernels at
//!   batch 1 and on CIFAR images, and 17% slower at 224x224 batch 32 (MKL's matrix products beat
//!   oneDNN's 1x1 convolutions there: MKL takes its best paths on Intel CPUs only); on a 2-core
//!   AMD EPYC (AVX2 only) 1.18x the generic kernels at batch 1, 1.2x at 224x224 batch 32 and
//!   level on CIFAR images (docs/deploy.md has the figures). [`Kernels::Auto`] therefore picks
//!   them for a float32 network on the CPU unless the CPU is Intel's (CPUID vendor); on other
//!   architectures it stays with the generic kernels (not measured there).
//!
//! [`Tta`] averages the logits over mirrored and shifted copies of the images
//! (test-time augmentation at airbench's levels), around this model or any other.
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
mod cpu;
mod ffi;
mod fold;
mod fused;
mod matmul;
mod tta;

use tch::nn::ModuleT;
use tch::{Device, TchError, Tensor};

pub(crate) use fold::fold;
use fused::FusedNet;
use matmul::MatmulNet;
pub use tta::Tta;

use crate::resnext::{ModelError, ResNeXt, ResNeXtConfig};

/// Which kernels an [`InferenceModel`] runs (see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// The kernels measured fastest for the network's device, kind and CPU
    /// ([`Kernels::resolve`]): [`Kernels::OneDnnFused`] for a float32 network on an x86-64 CPU
    /// that is not Intel's (when this libtorch has the operators), [`Kernels::Generic`]
    /// otherwise (see the [module](self) docs).
    Auto,
    /// oneDNN convolutions with fused post-operations on prepacked weights (CPU, float32).
    OneDnnFused,
    /// Matrix products into reused buffers and libtorch convolutions (every device and kind).
    Generic,
}

impl Kernels {
    /// The kernels an [`InferenceModel`] of `net` built with `self` runs: `self`, except that
    /// [`Kernels::Auto`] becomes the choice it stands for on this machine. Asking for
    /// [`Kernels::OneDnnFused`] where they cannot run is an error of
    /// [`InferenceModel::with_kernels`], not decided here.
    pub fn resolve(self, net: &ResNeXt) -> Kernels {
        match self {
            Kernels::Auto if FusedNet::supports(net) && cfg!(target_arch = "x86_64") => {
                if cpu::is_intel() {
                    Kernels::Generic
                } else {
                    Kernels::OneDnnFused
                }
            }
            Kernels::Auto => Kernels::Generic,
            other => other,
        }
    }
}

/// The network in the form of the kernels chosen.
#[derive(Debug)]
enum Engine {
    Fused(FusedNet),
    Generic(MatmulNet),
}

/// An evaluation-only [`ResNeXt`]: BN folded into the convolutions, channels-last activations,
/// fused kernels (see the [module](self) docs).
///
/// It copies the parameters and running statistics at construction: later changes to the
/// network are not seen (build a new one after training). It keeps the device and the float
/// kind of the network; inputs are moved to them. With the generic kernels it keeps, between
/// calls, the intermediate buffers of the largest batch seen so far (about the size of the
/// activations of one forward pass); [`InferenceModel::release_buffers`] frees them. It can be
/// shared between threads.
///
/// ```
/// use resnext::inference::{InferenceModel, Kernels};
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let fast = InferenceModel::new(&net)?;
/// let logits = fast.forward(&Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu)));
/// assert_eq!(logits.size(), vec![4, 10]);
/// assert!(fast.try_forward(&Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu))).is_err());
/// let generic = InferenceModel::with_kernels(&net, Kernels::Generic)?;
/// assert_eq!(generic.kernels(), Kernels::Generic);
/// # Ok::<(), resnext::ModelError>(())
/// ```
#[derive(Debug)]
pub struct InferenceModel {
    config: ResNeXtConfig,
    device: Device,
    engine: Engine,
    fc_weight: Tensor,
    fc_bias: Option<Tensor>,
}

impl InferenceModel {
    /// The inference form of `net`, with its current parameters and BN running statistics,
    /// on the kernels of [`Kernels::Auto`].
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for a network outside torchvision's layout
    /// ([`ResNeXtConfig::nonstandard_part`](crate::ResNeXtConfig::nonstandard_part): the whitening stem, max-pool downsampling, GELU);
    /// [`ModelError::Torch`] if libtorch fails (for example when out of memory).
    pub fn new(net: &ResNeXt) -> Result<Self, ModelError> {
        Self::with_kernels(net, Kernels::Auto)
    }

    /// The inference form of `net` on the kernels asked for.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for [`Kernels::OneDnnFused`] when the network is not float32
    /// on the CPU or this libtorch lacks the fused operators; [`ModelError::Torch`] if libtorch
    /// fails.
    pub fn with_kernels(net: &ResNeXt, kernels: Kernels) -> Result<Self, ModelError> {
        net.stem_parts("the inference form")?;
        let fused = match kernels.resolve(net) {
            Kernels::Auto | Kernels::Generic => false,
            Kernels::OneDnnFused if FusedNet::supports(net) => true,
            Kernels::OneDnnFused => {
                let ws = &net.classifier().ws;
                return Err(ModelError::Unsupported {
                    what: format!(
                        "the oneDNN fused kernels need float32 weights on the CPU and a libtorch \
                         that registers mkldnn::_convolution_pointwise; the network is {:?} on \
                         {:?}{}",
                        ws.kind(),
                        ws.device(),
                        if ffi::fused_available() {
                            ""
                        } else {
                            ", and this libtorch lacks the operators"
                        }
                    ),
                });
            }
        };
        tch::no_grad(|| Self::build(net, fused)).map_err(ModelError::from)
    }

    fn build(net: &ResNeXt, fused: bool) -> Result<Self, TchError> {
        let engine = if fused {
            Engine::Fused(FusedNet::build(net)?)
        } else {
            Engine::Generic(MatmulNet::build(net)?)
        };
        let fc = net.classifier();
        Ok(Self {
            config: net.config().clone(),
            device: fc.ws.device(),
            engine,
            fc_weight: fc.ws.f_detach()?.f_contiguous()?,
            fc_bias: fc.bs.as_ref().map(|b| b.f_detach()).transpose()?,
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

    /// The kernels this model runs: [`Kernels::OneDnnFused`] or [`Kernels::Generic`].
    pub fn kernels(&self) -> Kernels {
        match self.engine {
            Engine::Fused(_) => Kernels::OneDnnFused,
            Engine::Generic(_) => Kernels::Generic,
        }
    }

    /// Logits `[N, num_classes]` for a batch `[N, 3, H, W]`, under [`tch::no_grad`].
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for an input that is not a float tensor `[N, 3, H, W]`
    /// (checked as [`ResNeXt::check_input`]); [`ModelError::Torch`] if libtorch fails, for
    /// example for an image too small for the network's strides.
    pub fn try_forward(&self, xs: &Tensor) -> Result<Tensor, ModelError> {
        ResNeXt::check_input(xs)?;
        tch::no_grad(|| {
            let features = match &self.engine {
                Engine::Fused(net) => net.features(xs)?,
                Engine::Generic(net) => net.features(xs)?,
            };
            features.f_linear(&self.fc_weight, self.fc_bias.as_ref())
        })
        .map_err(ModelError::from)
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
    /// call); the fused kernels keep none.
    pub fn release_buffers(&self) {
        if let Engine::Generic(net) = &self.engine {
            net.release_buffers();
        }
    }

    /// Elements held in reused buffers between calls (for tests of the buffer policy).
    #[doc(hidden)]
    pub fn buffered_elements(&self) -> usize {
        match &self.engine {
            Engine::Generic(net) => net.buffered_elements(),
            Engine::Fused(_) => 0,
        }
    }
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
