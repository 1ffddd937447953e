//! Numeric precision and memory layout of training: bf16 / fp16 autocast on CUDA, dynamic loss
//! scaling for fp16, and the layout of a training run (see [`crate::layout`]).
use serde::{Deserialize, Serialize};
use tch::{Device, TchError, Tensor};

use crate::layout::channels_last;

/// The precision of the forward and backward passes. Weights, optimiser state and BN statistics
/// stay fp32 in every mode (autocast runs convolutions and matrix products in the low
/// precision, as PyTorch's `torch.autocast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 autocast on CUDA, fp32 on the CPU.
    #[default]
    Auto,
    /// fp32 throughout.
    Fp32,
    /// bf16 autocast (CUDA only; the CPU runs fp32).
    Bf16,
    /// fp16 autocast with dynamic loss scaling (CUDA only; the CPU runs fp32).
    Fp16,
}

/// Names accepted for [`Precision`].
pub const PRECISION_NAMES: [&str; 4] = ["auto", "fp32", "bf16", "fp16"];

impl Precision {
    /// What actually runs on `device`: [`Precision::Fp32`] on the CPU, `Auto` → `Bf16` on CUDA.
    pub fn resolve(self, device: Device) -> Precision {
        match (self, device) {
            (_, Device::Cpu) | (_, Device::Mps) | (_, Device::Vulkan) => Precision::Fp32,
            (Precision::Auto, _) => Precision::Bf16,
            (p, _) => p,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Precision::Auto),
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            _ => Err(format!("one of {}", PRECISION_NAMES.join(", "))),
        }
    }
}

/// libtorch's `c10::DeviceType` and `c10::ScalarType` codes used here.
const DEVICE_CPU: i8 = 0;
const DEVICE_CUDA: i8 = 1;
const SCALAR_HALF: i8 = 5;
const SCALAR_BFLOAT16: i8 = 15;

// tch exposes autocast on/off but not its dtype (CUDA autocast defaults to fp16). These are the
// C++ functions `at::autocast::{set,get}_autocast_dtype(c10::DeviceType, c10::ScalarType)` of
// libtorch 2.11 (both enums are `int8_t`), called by their Itanium-mangled names; the link
// fails if a libtorch lacks them, rather than misbehaving at run time.
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn at_get_autocast_dtype(device: i8) -> i8;
}

/// Sets the dtype of CUDA autocast (`tch::autocast`) for `precision` (bf16 or fp16); other
/// precisions leave it alone.
pub fn set_cuda_autocast_dtype(precision: Precision) {
    let code = match precision {
        Precision::Bf16 => SCALAR_BFLOAT16,
        Precision::Fp16 => SCALAR_HALF,
        _ => return,
    };
    // SAFETY: a plain setter of a thread-local/global enum in libtorch; the arguments are valid
    // c10 enum values.
    unsafe { at_set_autocast_dtype(DEVICE_CUDA, code) }
}

/// The current autocast dtype of the CPU (`false`) or CUDA (`true`) as a `c10::ScalarType`
/// code; for tests of the binding above.
#[doc(hidden)]
pub fn autocast_dtype_code(cuda: bool) -> i8 {
    // SAFETY: a plain getter.
    unsafe { at_get_autocast_dtype(if cuda { DEVICE_CUDA } else { DEVICE_CPU }) }
}

#[doc(hidden)]
pub fn set_autocast_dtype_code(cuda: bool, code: i8) {
    // SAFETY: callers pass valid ScalarType codes (tests only).
    unsafe { at_set_autocast_dtype(if cuda { DEVICE_CUDA } else { DEVICE_CPU }, code) }
}

/// Dynamic loss scaling for fp16 (as PyTorch's `GradScaler`): the loss is multiplied by
/// `scale` before backward; a step whose gradients hold an inf or NaN is skipped and halves the
/// scale; 2000 good steps in a row double it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The current factor.
    #[serde(with = "super::float_json::any")]
    pub scale: f64,
    /// Consecutive steps without overflow.
    pub good_steps: u64,
}

impl Default for LossScale {
    /// Starts at 65536, as PyTorch.
    fn default() -> Self {
        LossScale {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScale {
    /// Steps without overflow before the scale doubles.
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// Records the outcome of a step: `finite` gradients or an overflow.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        }
    }
}

/// How tensors are laid out and computed on the training device (resolved from a
/// [`TrainConfig`](super::TrainConfig) and the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    /// The device.
    pub device: Device,
    /// The precision that runs there ([`Precision::resolve`]d).
    pub precision: Precision,
    /// Channels-last weights and inputs.
    pub channels_last: bool,
}

impl Execution {
    /// The execution settings of `config` on `device`.
    pub fn new(config: &super::TrainConfig, device: Device) -> Self {
        Execution {
            device,
            precision: config.precision.resolve(device),
            channels_last: config.resolve_channels_last(device),
        }
    }

    /// Plain fp32, default layout, on `device`.
    pub fn plain(device: Device) -> Self {
        Execution {
            device,
            precision: Precision::Fp32,
            channels_last: false,
        }
    }

    /// A batch of images in the layout the model expects.
    ///
    /// # Errors
    /// A libtorch error (for example when out of memory).
    pub fn input(&self, images: &Tensor) -> Result<Tensor, TchError> {
        if self.channels_last {
            channels_last(images)
        } else {
            Ok(images.shallow_clone())
        }
    }

    /// Runs `f` (a forward pass and loss) under autocast when the precision asks for it.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.device.is_cuda() && matches!(self.precision, Precision::Bf16 | Precision::Fp16) {
            set_cuda_autocast_dtype(self.precision);
            tch::autocast(true, f)
        } else {
            f()
        }
    }
}
