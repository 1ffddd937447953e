//! What a run leaves behind and prints: the files of the run directory, the summary, and the
//! one-line report of an epoch.
use std::path::Path;

use tch::nn;

use super::{curves_svg, ClassAccuracy, EpochMetrics, Summary, TrainError, TrainState};
use crate::io::write_atomic;
use crate::weights::{save_weights_with, WeightsMetadata};

/// Files of a run directory.
pub mod files {
    /// The resolved configuration.
    pub const CONFIG: &str = "config.json";
    /// One JSON object per completed epoch.
    pub const METRICS: &str = "metrics.jsonl";
    /// Loss and accuracy curves.
    pub const CURVES: &str = "curves.svg";
    /// The outcome of a completed run.
    pub const SUMMARY: &str = "summary.json";
    /// Trainer state and the named sections of the weights, the optimiser and the callbacks
    /// (see [`super::super::save_checkpoint`]).
    pub const CHECKPOINT: &str = "checkpoint.safetensors";
    /// Weights after the latest epoch (torchvision names).
    pub const LAST: &str = "last.safetensors";
    /// Weights of the epoch with the best test accuracy (torchvision names).
    pub const BEST: &str = "best.safetensors";
}

/// The one-line summary of an epoch.
pub fn epoch_line(m: &EpochMetrics, epochs: usize) -> String {
    let test = match (m.test_loss, m.test_acc) {
        (Some(l), Some(a)) => format!("test loss {l:.4} acc {a:6.2}%"),
        _ => "test -".to_string(),
    };
    let test = match m.ema_test_acc {
        Some(a) => format!("{test} (EMA {a:6.2}%)"),
        None => test,
    };
    format!(
        "epoch {:>3}/{epochs}  train loss {:.4} acc {:6.2}%  {test}  lr {:.5}  {:.1} s  {:.0} img/s",
        m.epoch, m.train_loss, m.train_acc, m.lr, m.seconds, m.train_images_per_sec
    )
}

/// Writes `metrics.jsonl`, `curves.svg`, `last.safetensors` and, when the epoch `improved` the
/// best test accuracy, `best.safetensors` into `dir`, each atomically. All are derived from
/// `state` and `vs` as the checkpoint just written holds them; the weights carry `metadata`
/// when given.
///
/// # Errors
/// [`TrainError::TensorFile`] or [`TrainError::Plot`] naming the file.
pub(crate) fn write_epoch_outputs(
    dir: &Path,
    state: &TrainState,
    vs: &nn::VarStore,
    improved: bool,
    metadata: Option<&WeightsMetadata>,
) -> Result<(), TrainError> {
    write_metric_files(dir, state)?;
    let steps = state.steps as i64;
    save_weights_with(vs, &dir.join(files::LAST), steps, metadata)?;
    if improved {
        save_weights_with(vs, &dir.join(files::BEST), steps, metadata)?;
    }
    Ok(())
}

/// Writes `metrics.jsonl` and `curves.svg` of `state` into `dir`, each atomically.
///
/// # Errors
/// [`TrainError::TensorFile`] or [`TrainError::Plot`] naming the file.
pub(crate) fn write_metric_files(dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    let mut jsonl = String::new();
    for m in &state.metrics {
        jsonl.push_str(&serde_json::to_string(m).unwrap_or_default());
        jsonl.push('\n');
    }
    write_atomic(&dir.join(files::METRICS), jsonl.as_bytes())?;
    let curves = dir.join(files::CURVES);
    let best_epoch = state.best.map(|(_, epoch)| epoch);
    write_atomic(
        &curves,
        curves_svg(&state.metrics, best_epoch, &curves)?.as_bytes(),
    )?;
    Ok(())
}

/// The summary of a completed run from its state; `classes` names the labels, `device` is
/// recorded as trained on.
///
/// # Errors
/// [`TrainError::Checkpoint`] (naming `checkpoint`) when the state holds no test evaluation.
pub(crate) fn summary(
    state: &TrainState,
    classes: &[String],
    device: tch::Device,
    checkpoint: &Path,
) -> Result<Summary, TrainError> {
    let missing = || TrainError::Checkpoint {
        path: checkpoint.to_path_buf(),
        problem: "the run has no test evaluation".into(),
    };
    let eval = state.last_eval.as_ref().ok_or_else(missing)?;
    let (best, best_epoch) = state.best.ok_or_else(missing)?;
    let per_class_acc = eval
        .per_class_acc()
        .into_iter()
        .zip(classes)
        .map(|(acc, class)| ClassAccuracy {
            class: class.clone(),
            acc: acc.is_finite().then_some(acc),
        })
        .collect();
    let metrics = &state.metrics;
    let total_seconds: f64 = metrics.iter().map(|m| m.seconds).sum();
    let images: u64 = metrics.iter().map(|m| m.train_images).sum();
    let train_seconds: f64 = metrics
        .iter()
        .filter(|m| m.train_images_per_sec > 0.0)
        .map(|m| m.train_images as f64 / m.train_images_per_sec)
        .sum();
    Ok(Summary {
        model: state.config.model.clone(),
        device: format!("{device:?}"),
        world_size: state.config.world_size,
        epochs: metrics.len(),
        best_test_acc: best,
        best_epoch,
        final_test_acc: eval.acc,
        final_test_loss: eval.loss,
        per_class_acc,
        confusion_matrix: eval.confusion.clone(),
        classes: classes.to_vec(),
        total_seconds,
        train_images_per_sec: images as f64 / train_seconds.max(1e-9),
    })
}

/// Writes `summary.json` into `dir`, atomically.
///
/// # Errors
/// [`TrainError::TensorFile`] naming the file.
pub(crate) fn write_summary(dir: &Path, summary: &Summary) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(summary).unwrap_or_default();
    write_atomic(&dir.join(files::SUMMARY), json.as_bytes())?;
    Ok(())
}

/// The summary's closing line.
pub(crate) fn done_line(summary: &Summary) -> String {
    format!(
        "done: best test accuracy {:.2}% (epoch {}), final {:.2}%, {:.0} s, {:.0} train images/s",
        summary.best_test_acc,
        summary.best_epoch,
        summary.final_test_acc,
        summary.total_seconds,
        summary.train_images_per_sec
    )
}
