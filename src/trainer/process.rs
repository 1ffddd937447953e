//! Process-wide settings that make training fast. They change the whole process (every model
//! and thread in it), so they are explicit calls, made by the entry points that document them.
use tch::Device;

/// Tunes the process for training on `device`: on CUDA, cuDNN's benchmark mode (it times the
/// convolution algorithms for every new input shape and keeps the fastest; results may differ
/// in the last bits from run to run); on the CPU, [`crate::memory::keep_freed_memory`] (freed
/// activations stay in the process, so steps stop page-faulting them in again: README's 5-epoch
/// `tiny` run took 564 s instead of 977 s on a 2-core CPU, at the price of memory once used
/// staying with the process). Idempotent.
///
/// [`Trainer::resnext`](super::Trainer::resnext) and [`Trainer::resume`](super::Trainer::resume)
/// call it; [`Trainer::new`](super::Trainer::new) does not.
pub fn tune_process_for_training(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    } else {
        crate::memory::keep_freed_memory();
    }
}
