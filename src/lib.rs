//! ResNeXt (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017)
//! on libtorch through [`tch`].
//!
//! * [`resnext`]: the model family, with torchvision's parameter names;
//! * [`data`]: CIFAR-10 and image folders, download, augmentation (and torchvision's
//!   augmentation policies and MixUp/CutMix in [`data::ops`]);
//! * [`distributed`]: process groups and collectives on libtorch's c10d (Gloo, NCCL);
//! * [`trainer`]: training with SGD or AdamW, schedules, exact resume, metrics and plots;
//! * [`weights`]: safetensors weights that PyTorch loads;
//! * [`inference`]: a faster evaluation-only form of the network, test-time augmentation;
//! * [`export`]: ONNX and TorchScript export for deployment (ONNX Runtime, OpenVINO, TensorRT,
//!   `torch.jit.load`);
//! * [`device`]: the device a program runs on (`auto`, `cpu`, `cuda`, `cuda:N`);
//! * [`layout`]: channels-last tensors and variables;
//! * [`memory`]: keeping freed memory in the process (faster CPU training);
//! * [`io`]: atomic writes and safetensors files with metadata;
//! * [`error_report`]: an error and its causes on one line, for command-line tools.
#![warn(missing_docs)]
pub mod data;
pub mod device;
pub mod distributed;
pub mod export;
pub mod inference;
pub mod io;
pub mod layout;
pub mod memory;
mod report;
pub mod resnext;
mod shim;
pub mod trainer;
pub mod weights;

pub use report::error_report;
pub use resnext::{ModelError, ResNeXt, ResNeXtBlock, ResNeXtConfig, Stem};
