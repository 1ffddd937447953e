//! `predict --compare-onnx MODEL`: the same prepared images through an exported ONNX model in
//! ONNX Runtime (and OpenVINO when it imports), by `scripts/onnx/check.py`, compared with the
//! crate's logits. Needs `python3` with onnx and onnxruntime: on `PYTHONPATH`, or the path
//! `scripts/setup-onnx-deps.sh` prints (`eval "$(bash scripts/setup-onnx-deps.sh)"`).
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use tch::Tensor;

/// The largest accepted `max |engine − crate| / max |crate|` (fp32 on both sides, sums in
/// another order; see docs/deploy.md).
pub const MAX_REL_DIFF: f64 = 1e-4;

const CHECK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx/check.py");

/// Fails with what to run unless `python3` imports onnx and onnxruntime.
fn check_python() -> Result<()> {
    let ok = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "--compare-onnx needs python3 with onnx and onnxruntime; run \
             `eval \"$(bash scripts/setup-onnx-deps.sh)\"` (it installs them into a cache and \
             sets PYTHONPATH), then predict again"
        );
    }
    Ok(())
}

/// Runs `model` on `images` `[N, 3, S, S]` in every engine check.py has and compares with the
/// crate's `logits` `[N, classes]`: the largest relative difference per engine.
pub fn compare(model: &Path, images: &Tensor, logits: &Tensor) -> Result<Vec<(String, f64)>> {
    check_python()?;
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("images.f32");
    let values = Vec::<f32>::try_from(&images.reshape([-1]))?;
    std::fs::write(
        &input,
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    let size = images.size();
    let dims = [size[0], size[2], size[3]].map(|d| d.to_string());
    let out = Command::new("python3")
        .arg(CHECK_SCRIPT)
        .args([model, &input])
        .args(&dims)
        .arg(dir.path())
        .output()
        .context("running python3 scripts/onnx/check.py")?;
    if !out.status.success() {
        bail!(
            "{}: the ONNX check failed: {}",
            model.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .context("reading check.py's report")?;
    let scale = logits.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
    let mut diffs = Vec::new();
    for engine in report["engines"].as_array().into_iter().flatten() {
        let engine = engine.as_str().unwrap_or("?").to_string();
        let bytes = std::fs::read(dir.path().join(format!("{engine}.f32")))?;
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if got.len() != logits.numel() {
            bail!(
                "{engine}: {} logits, expected {} (another model?)",
                got.len(),
                logits.numel()
            );
        }
        let got = Tensor::from_slice(&got).view(logits.size().as_slice());
        diffs.push((engine, (got - logits).abs().max().double_value(&[]) / scale));
    }
    Ok(diffs)
}
