//! The ResNeXt model family (Xie et al., CVPR 2017), laid out as torchvision's `resnet.py`.
//!
//! * [`ResNeXtBlock`]: the grouped bottleneck block with its shortcut,
//! * [`ResNeXt`]: stem, stages built from a [`ResNeXtConfig`], pooling and classifier,
//! * [`ResNeXtConfig`]: the architecture as data; [`PRESETS`]: the paper's and torchvision's
//!   named architectures, one line each,
//! * [`StemSpec`], [`StageSpec`], [`BlockSpec`], [`ConvSpec`]: the geometry of every layer,
//!   derived once from a configuration ([`ResNeXtConfig::stem_spec`],
//!   [`ResNeXtConfig::stages`]) and read by the network builder, the FLOP count and the
//!   inference form,
//! * [`flops`](ResNeXtConfig::forward_flops): analytic FLOP counts and stage shapes.
//!
//! Parameter and buffer names are exactly those of torchvision's `state_dict`
//! (`conv1.weight`, `layer1.0.bn1.running_mean`, `layer2.0.downsample.0.weight`, `fc.bias`, …), so
//! weights move between this crate and PyTorch as safetensors.

mod block;
mod config;
mod error;
mod flops;
mod network;
mod presets;
mod spec;
mod whitening;

pub use block::ResNeXtBlock;
pub use config::{
    Activation, ConfigLimits, Downsample, ResNeXtConfig, Stem, CONFIG_LIMITS, WHITENING_CHANNELS,
};
pub use error::ModelError;
pub use flops::StageShape;
pub use network::ResNeXt;
pub use presets::{Layout, Preset, MODEL_NAMES, PRESETS};
pub use spec::{BlockSpec, ConvSpec, FeatureInfo, PoolSpec, StageSpec, StemSpec};
pub use whitening::{whiten_stem, WHITENING_EPS, WHITENING_IMAGES};
