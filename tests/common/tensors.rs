//! Tensors between the tests and Python programs (raw little-endian float32 files), their
//! comparison, and networks whose BN is not the identity.
#![allow(dead_code)]
use std::path::Path;

use tch::nn;
use tch::{Device, Kind, Tensor};

/// Gives every BN non-trivial parameters and running statistics (a fresh network has
/// γ = 1, β = 0, μ = 0, σ² = 1, with which folding would be the identity and go unchecked).
pub fn randomize_batch_norms(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let is_bn = t.dim() == 1 && !name.starts_with("fc.");
            if !is_bn {
                continue;
            }
            let n = t.size()[0];
            let opts = (Kind::Float, Device::Cpu);
            let value = if name.ends_with("running_var") || name.ends_with(".weight") {
                Tensor::rand([n], opts) + 0.5
            } else {
                Tensor::randn([n], opts) * 0.2
            };
            t.copy_(&value);
        }
    });
}

/// Writes `t` as raw little-endian float32.
pub fn write_f32(path: &Path, t: &Tensor) {
    let values = Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Reads raw little-endian float32 as a tensor of shape `shape`.
pub fn read_f32(path: &Path, shape: &[i64]) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let values: Vec<f32> = (bytes.chunks_exact(4))
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Tensor::from_slice(&values).reshape(shape)
}

/// `max |got − want| / max |want|`.
pub fn max_rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    let scale = want.abs().max().double_value(&[]);
    assert!(scale > 0.0, "the reference logits are all zero");
    (got - want).abs().max().double_value(&[]) / scale
}
