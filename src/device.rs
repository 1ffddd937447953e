//! The device a program runs on, named as on the command line and in a training
//! configuration: `auto`, `cpu`, `cuda` or `cuda:N`.
//!
//! ```
//! use resnext::device::{DeviceError, DeviceSpec};
//! assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(Some(1)));
//! assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), tch::Device::Cpu);
//! let e = "gpu".parse::<DeviceSpec>().unwrap_err();
//! assert!(matches!(e, DeviceError::Unknown { .. }));
//! assert!(e.to_string().contains("auto, cpu, cuda or cuda:N"));
//! ```
use std::fmt;
use std::str::FromStr;

use tch::Device;

/// The valid forms of a device name, as error messages list them.
pub const DEVICE_FORMS: &str = "auto, cpu, cuda or cuda:N";

/// Why a device name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The name is none of the valid forms.
    #[error("unknown device `{value}`: expected {DEVICE_FORMS}")]
    Unknown {
        /// The name given.
        value: String,
    },
    /// The device is not present on this machine.
    #[error("device `{device}` is not available: this machine has {available} CUDA device(s) visible to libtorch")]
    Unavailable {
        /// The device asked for.
        device: String,
        /// CUDA devices libtorch sees.
        available: usize,
    },
}

/// A device as named, before it is checked against the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// CUDA (the first GPU) when libtorch sees one, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU: `cuda` (`None`: the first one) or `cuda:N` (`Some(N)`).
    Cuda(Option<usize>),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(Some(n))),
                _ => Err(DeviceError::Unknown { value: s.into() }),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Whether this asks for a GPU or lets one be chosen (`auto` or `cuda` with no index).
    pub fn wants_any_gpu(self) -> bool {
        matches!(self, Self::Auto | Self::Cuda(None))
    }

    /// The device on this machine: `auto` is CUDA when available, else the CPU.
    ///
    /// # Errors
    /// [`DeviceError::Unavailable`] for CUDA on a machine without it, or a GPU index beyond the
    /// GPUs libtorch sees.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let n = match self {
            Self::Auto => return Ok(Device::cuda_if_available()),
            Self::Cpu => return Ok(Device::Cpu),
            Self::Cuda(n) => n.unwrap_or(0),
        };
        let available = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        if n >= available {
            return Err(DeviceError::Unavailable {
                device: self.to_string(),
                available,
            });
        }
        Ok(Device::Cuda(n))
    }
}

/// Parses a device name and checks it against this machine: `s.parse::<DeviceSpec>()` then
/// [`DeviceSpec::resolve`].
///
/// # Errors
/// [`DeviceError::Unknown`] for a name that is none of [`DEVICE_FORMS`],
/// [`DeviceError::Unavailable`] for a GPU this machine does not have.
pub fn parse_device(s: &str) -> Result<Device, DeviceError> {
    s.parse::<DeviceSpec>()?.resolve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valid_forms_parse_and_print_back() {
        for (s, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(None)),
            ("cuda:0", DeviceSpec::Cuda(Some(0))),
            ("cuda:12", DeviceSpec::Cuda(Some(12))),
        ] {
            assert_eq!(s.parse::<DeviceSpec>(), Ok(spec), "{s}");
            assert_eq!(spec.to_string(), s);
        }
    }

    #[test]
    fn bad_forms_are_refused_naming_the_value_and_the_valid_forms() {
        for s in [
            "", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:1.5", "CPU", " cpu", "cuda0",
            "cuda:0:1", "tpu",
        ] {
            let e = s.parse::<DeviceSpec>().unwrap_err();
            assert_eq!(e, DeviceError::Unknown { value: s.into() });
            let message = e.to_string();
            assert!(message.contains(&format!("`{s}`")), "{message}");
            assert!(message.contains(DEVICE_FORMS), "{message}");
            assert_eq!(parse_device(s), Err(e));
        }
    }

    #[test]
    fn cpu_and_auto_always_resolve() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("auto"), Ok(Device::cuda_if_available()));
    }

    #[test]
    fn a_gpu_beyond_those_present_is_unavailable() {
        let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let name = format!("cuda:{count}");
        let e = parse_device(&name).unwrap_err();
        assert_eq!(
            e,
            DeviceError::Unavailable {
                device: name.clone(),
                available: count
            }
        );
        assert!(e.to_string().contains("not available"), "{e}");
        let first = parse_device("cuda");
        if count == 0 {
            assert!(matches!(first, Err(DeviceError::Unavailable { .. })));
        } else {
            assert_eq!(first, Ok(Device::Cuda(0)));
        }
    }

    #[test]
    fn only_auto_and_bare_cuda_let_a_gpu_be_chosen() {
        let wants: Vec<bool> = ["auto", "cpu", "cuda", "cuda:0"]
            .iter()
            .map(|s| s.parse::<DeviceSpec>().unwrap().wants_any_gpu())
            .collect();
        assert_eq!(wants, [true, false, true, false]);
    }
}
