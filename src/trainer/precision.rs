//! Numeric precision and memory layout of training: bf16 / fp16 autocast on CUDA, bf16
//! autocast on the CPU when asked for, dynamic loss scaling for fp16, and the layout of a
//! training run (see [`crate::layout`]).
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
    /// bf16 autocast, on CUDA and on the CPU (libtorch's CPU autocast: convolutions and matrix
    /// products in bf16 through oneDNN; fast on CPUs with native bf16 dot products, such as
    /// AVX512-BF16 or AMX, and slower than fp32 elsewhere: see [`cpu_has_native_bf16`]).
    Bf16,
    /// fp16 autocast with dynamic loss scaling (CUDA only; the CPU runs fp32).
    Fp16,
}

/// Names accepted for [`Precision`].
pub const PRECISION_NAMES: [&str; 4] = ["auto", "fp32", "bf16", "fp16"];

impl Precision {
    /// What actually runs on `device`: on the CPU `Bf16` and otherwise [`Precision::Fp32`]
    /// (`Auto` stays fp32 there, fp16 autocast is CUDA's only); on CUDA `Auto` → `Bf16`.
    pub fn resolve(self, device: Device) -> Precision {
        match (self, device) {
            (Precision::Bf16, Device::Cpu) => Precision::Bf16,
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
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn at_autocast_increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn at_autocast_decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn at_autocast_clear_cache();
}

/// Whether this CPU computes bf16 dot products natively (AVX512-BF16 or AMX-BF16, the
/// instructions oneDNN's bf16 convolutions use); without them bf16 autocast on the CPU is
/// emulated and slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return true;
        }
    }
    // AMX has no stable runtime check; Linux names it in /proc/cpuinfo.
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_bf16"))
    })
}

/// The warning for bf16 on a CPU without native bf16 dot products, where it runs (slowly)
/// emulated; `None` elsewhere.
pub fn cpu_bf16_warning(exec: &Execution) -> Option<String> {
    (exec.device == Device::Cpu && exec.precision == Precision::Bf16 && !cpu_has_native_bf16())
        .then(|| {
            "warning: bf16 autocast on a CPU without AVX512-BF16 or AMX-BF16 runs emulated, \
             usually slower than fp32 (precision \"fp32\" runs fp32)"
                .to_string()
        })
}

/// Restores the CPU autocast state on drop, also when the closure inside panics.
struct CpuAutocast {
    was_enabled: bool,
    was_dtype: i8,
}

impl CpuAutocast {
    /// Turns on bf16 CPU autocast (as `torch.autocast("cpu", torch.bfloat16)` does).
    fn enter() -> Self {
        // SAFETY: plain setters and getters of libtorch's thread-local autocast state, called
        // with valid c10 enum values; the nesting counter pairs with `drop`.
        unsafe {
            let guard = CpuAutocast {
                was_enabled: at_is_autocast_enabled(DEVICE_CPU),
                was_dtype: at_get_autocast_dtype(DEVICE_CPU),
            };
            at_set_autocast_dtype(DEVICE_CPU, SCALAR_BFLOAT16);
            at_set_autocast_enabled(DEVICE_CPU, true);
            at_autocast_increment_nesting();
            guard
        }
    }
}

impl Drop for CpuAutocast {
    fn drop(&mut self) {
        // SAFETY: as in `enter`. The cast cache (bf16 copies of the fp32 weights) is cleared
        // when the outermost autocast region ends, as PyTorch does, so that a step's update is
        // seen by the next forward pass.
        unsafe {
            if at_autocast_decrement_nesting() == 0 {
                at_autocast_clear_cache();
            }
            at_set_autocast_enabled(DEVICE_CPU, self.was_enabled);
            at_set_autocast_dtype(DEVICE_CPU, self.was_dtype);
        }
    }
}

/// Runs `f` under bf16 CPU autocast.
fn cpu_autocast<T>(f: impl FnOnce() -> T) -> T {
    let _guard = CpuAutocast::enter();
    f()
}

/// Whether CPU autocast is on in this thread; for tests of the binding above.
#[doc(hidden)]
pub fn cpu_autocast_enabled() -> bool {
    // SAFETY: a plain getter.
    unsafe { at_is_autocast_enabled(DEVICE_CPU) }
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
        } else if self.device == Device::Cpu && self.precision == Precision::Bf16 {
            cpu_autocast(f)
        } else {
            f()
        }
    }
}
