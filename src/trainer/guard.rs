//! libtorch failures inside a model's forward or backward pass as errors, not panics.
//!
//! A [`tch::nn::ModuleT`] cannot return an error: tch's layers call libtorch and unwrap, so an
//! out-of-memory error, or any other libtorch error, becomes a panic. [`torch_guard`] runs such
//! code and turns exactly those panics (their message carries tch's `Torch(...)` error) into
//! [`TrainError`]s, without printing the panic; any other panic is a bug and goes on unwinding.
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use super::TrainError;

thread_local! {
    /// Whether this thread is inside [`torch_guard`] (its panics are reported as errors).
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once, a panic hook that stays silent for guarded libtorch panics and hands every
/// other panic to the hook that was there before.
fn install_quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = payload_message(info.payload());
            let torch = message.as_deref().is_some_and(is_torch_error);
            if !(GUARDED.with(Cell::get) && torch) {
                previous(info);
            }
        }));
    });
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

/// Whether a panic message is tch's unwrapped libtorch error.
fn is_torch_error(message: &str) -> bool {
    message.contains("Torch(")
}

/// Whether a libtorch error message reports exhausted memory (CUDA or host).
fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "not enough memory",
        "can't allocate memory",
        "cannot allocate memory",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// libtorch's own message inside tch's panic message, up to its C++ stack trace: the text
/// of `Torch("…")` before the first (escaped) line break.
fn torch_message(panic: &str) -> String {
    let inner = panic.split_once("Torch(\"").map_or(panic, |(_, rest)| rest);
    let end = [inner.find("\\n"), inner.find("\")")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(inner.len());
    inner[..end].to_string()
}

/// Runs `f`; a libtorch error that panics inside it becomes [`TrainError::OutOfMemory`]
/// (naming `batch` images and `device`) or [`TrainError::Torch`]. Other panics unwind as
/// they would without the guard.
///
/// # Errors
/// As above, or `f`'s own error.
pub(crate) fn torch_guard<T>(
    batch: usize,
    device: tch::Device,
    f: impl FnOnce() -> Result<T, TrainError>,
) -> Result<T, TrainError> {
    install_quiet_hook();
    let was = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match result {
        Ok(result) => result.map_err(|e| classify(e, batch, device)),
        Err(payload) => match payload_message(payload.as_ref()) {
            Some(message) if is_torch_error(&message) => Err(classify(
                TrainError::Torch(tch::TchError::Torch(torch_message(&message))),
                batch,
                device,
            )),
            _ => panic::resume_unwind(payload),
        },
    }
}

/// A libtorch error that says memory ran out, as [`TrainError::OutOfMemory`].
fn classify(error: TrainError, batch: usize, device: tch::Device) -> TrainError {
    match error {
        TrainError::Torch(e) if is_out_of_memory(&e.to_string()) => {
            let message = e.to_string();
            let first_line = message.lines().next().unwrap_or_default().to_string();
            TrainError::OutOfMemory {
                device: format!("{device:?}"),
                batch,
                message: first_line,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn a_failed_allocation_is_an_out_of_memory_error() {
        let err = torch_guard(64, Device::Cpu, || {
            // 2^48 bytes: more than any machine has.
            Ok(Tensor::empty([1i64 << 46], (Kind::Float, Device::Cpu)))
        })
        .unwrap_err();
        match err {
            TrainError::OutOfMemory { batch, device, .. } => {
                assert_eq!((batch, device.as_str()), (64, "Cpu"));
            }
            other => panic!("expected out of memory, got {other}"),
        }
    }

    #[test]
    fn other_libtorch_errors_are_errors_and_other_panics_still_panic() {
        let err = torch_guard(8, Device::Cpu, || {
            let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
            Ok(a.matmul(&a))
        })
        .unwrap_err();
        assert!(matches!(err, TrainError::Torch(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("mat1 and mat2") && !message.contains("frame #"),
            "{message}"
        );
        let caught = panic::catch_unwind(|| {
            let _ = torch_guard(8, Device::Cpu, || -> Result<(), TrainError> {
                panic!("a bug, not libtorch")
            });
        });
        assert!(caught.is_err());
        assert!(!GUARDED.with(Cell::get));
    }
}
