use thiserror::Error;

/// Errors raised when building or running a ResNeXt model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// [`ResNeXtConfig::from_name`](super::ResNeXtConfig::from_name) got a name it does not know.
    #[error("unknown model `{name}`; valid names are: {}", valid.join(", "))]
    UnknownModel {
        /// The name that was asked for.
        name: String,
        /// Every name that is accepted.
        valid: Vec<String>,
    },
    /// A configuration value is out of range (for example zero classes or an empty stage).
    #[error("invalid model configuration: {field} = {value}: {expected}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Its value, as text.
        value: String,
        /// What was expected instead.
        expected: &'static str,
    },
    /// The input tensor of a forward pass does not have the shape the network needs.
    #[error("bad input: expected a float tensor of shape [N, 3, H, W] with N, H, W >= 1, got {kind:?} of shape {shape:?}")]
    InputShape {
        /// The shape that was passed.
        shape: Vec<i64>,
        /// The element kind that was passed.
        kind: tch::Kind,
    },
    /// The input tensor is not of the element kind or not on the device of the weights.
    #[error("bad input: the network's weights are {weights_kind:?} on {weights_device:?}, the input is {kind:?} on {device:?}; convert it with `to_kind` / `to_device` first")]
    InputPlacement {
        /// The input's element kind.
        kind: tch::Kind,
        /// The input's device.
        device: tch::Device,
        /// The weights' element kind.
        weights_kind: tch::Kind,
        /// The weights' device.
        weights_device: tch::Device,
    },
    /// The input images are too small for the network: a stage would get an empty feature map.
    #[error("bad input: {height}x{width} images are too small for this network (a stage's feature map would be empty)")]
    InputTooSmall {
        /// The input's height.
        height: i64,
        /// The input's width.
        width: i64,
    },
    /// Something asked of the model that this network or this libtorch cannot do.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was asked, and why it cannot be done.
        what: String,
    },
    /// libtorch reported an error.
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}
