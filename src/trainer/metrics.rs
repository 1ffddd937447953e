//! What training measures: per-epoch metrics (`metrics.jsonl`), evaluations with their
//! confusion matrix, and the end-of-run summary (`summary.json`).
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`: one epoch. Accuracies are in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch (with label smoothing, if any).
    #[serde(with = "super::float_json::any")]
    pub train_loss: f64,
    /// Training accuracy (percent) over the epoch, on augmented images in train mode.
    #[serde(with = "super::float_json::any")]
    pub train_acc: f64,
    /// Mean test cross-entropy; `null` on epochs without evaluation (see `eval_every`).
    #[serde(with = "super::float_json::option")]
    pub test_loss: Option<f64>,
    /// Test accuracy (percent); `null` on epochs without evaluation.
    #[serde(with = "super::float_json::option")]
    pub test_acc: Option<f64>,
    /// Test loss of the EMA of the weights (`model_ema`); `null` without one or on epochs
    /// without evaluation.
    #[serde(
        with = "super::float_json::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ema_test_loss: Option<f64>,
    /// Test accuracy (percent) of the EMA of the weights, as `ema_test_loss`.
    #[serde(
        with = "super::float_json::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ema_test_acc: Option<f64>,
    /// Learning rate of the epoch: of its first update, for a schedule that moves every step
    /// (`triangle`).
    #[serde(with = "super::float_json::any")]
    pub lr: f64,
    /// Wall-clock seconds of the epoch, training and evaluation (summed over resumed pieces).
    #[serde(with = "super::float_json::any")]
    pub seconds: f64,
    /// Training images seen in the epoch.
    pub train_images: u64,
    /// Training images per second over the epoch (training batches only).
    #[serde(with = "super::float_json::any")]
    pub train_images_per_sec: f64,
}

/// The result of evaluating a model on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean cross-entropy (no label smoothing).
    #[serde(with = "super::float_json::any")]
    pub loss: f64,
    /// Accuracy in percent.
    #[serde(with = "super::float_json::any")]
    pub acc: f64,
    /// Images evaluated.
    pub images: usize,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// Accuracy of each true class in percent (`NaN` for a class with no image).
    pub fn per_class_acc(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: u64 = row.iter().sum();
                100.0 * row[i] as f64 / total as f64
            })
            .collect()
    }
}

/// Accuracy of one class, in `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// The class name.
    pub class: String,
    /// Its test accuracy in percent (`null` if the test set has none of it).
    pub acc: Option<f64>,
}

/// `summary.json`: the outcome of a completed run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Model configuration name.
    pub model: String,
    /// Device trained on (rank 0's, in a data-parallel run).
    pub device: String,
    /// Processes that trained together (see [`TrainConfig::world_size`](super::TrainConfig::world_size)).
    #[serde(default = "one_process")]
    pub world_size: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Best test accuracy (percent) over the evaluated epochs.
    #[serde(with = "super::float_json::any")]
    pub best_test_acc: f64,
    /// Epoch (1-based) of the best test accuracy.
    pub best_epoch: usize,
    /// Test accuracy (percent) after the last epoch.
    #[serde(with = "super::float_json::any")]
    pub final_test_acc: f64,
    /// Test loss after the last epoch.
    #[serde(with = "super::float_json::any")]
    pub final_test_loss: f64,
    /// Final test accuracy of each class.
    pub per_class_acc: Vec<ClassAccuracy>,
    /// Final `confusion_matrix[true][predicted]` on the test set.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Seconds of all epochs (training and evaluation), over every resumed piece.
    #[serde(with = "super::float_json::any")]
    pub total_seconds: f64,
    /// Training images per second over all epochs (training batches only).
    #[serde(with = "super::float_json::any")]
    pub train_images_per_sec: f64,
}

/// `world_size` of summaries written before it was recorded: one process.
fn one_process() -> usize {
    1
}
