//! Model weights as safetensors with torchvision's names, readable by PyTorch's
//! `load_state_dict(..., strict=True)`.
use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Kind, Tensor};

use crate::io::{write_safetensors, IoError};

/// Saves every variable of `vs` (parameters and BN running statistics) under its own name, plus
/// a `num_batches_tracked` int64 scalar beside each BN's `running_mean` (PyTorch's state_dict
/// has one; `num_batches_tracked` is the number of training steps taken). Atomic: see
/// [`crate::io::write_atomic`].
///
/// # Errors
/// [`IoError`] naming the file.
pub fn save_weights(
    vs: &nn::VarStore,
    path: &Path,
    num_batches_tracked: i64,
) -> Result<(), IoError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut tensors = Vec::with_capacity(vars.len() * 2);
    for (name, t) in vars {
        if let Some(bn) = name.strip_suffix(".running_mean") {
            tensors.push((
                format!("{bn}.num_batches_tracked"),
                Tensor::from(num_batches_tracked).to_kind(Kind::Int64),
            ));
        }
        tensors.push((name, t.detach()));
    }
    write_safetensors(path, &tensors, None)
}
