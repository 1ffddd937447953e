//! Test-set evaluation: eval mode, no gradients, confusion matrix accumulated on the device.
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

use super::{Evaluation, Execution, TrainError};
use crate::data::{epoch_batches, BatchConfig, Dataset};

/// Evaluates `model` in eval mode without gradients on the first `limit` images of `data`
/// (all with `None`), in order and without augmentation, in batches of `batch_size`, on
/// `exec.device` (batches made elsewhere are moved there). `num_classes` sizes the confusion
/// matrix; `exec` says how batches run (use [`Execution::plain`] for plain fp32).
///
/// # Errors
/// [`TrainError::Data`] if the data pipeline fails, [`TrainError::Torch`] if libtorch does.
pub fn evaluate<M: ModuleT + ?Sized>(
    model: &M,
    data: &Arc<dyn Dataset>,
    batch_size: usize,
    limit: Option<usize>,
    num_classes: i64,
    exec: &Execution,
) -> Result<Evaluation, TrainError> {
    let cfg = BatchConfig {
        limit,
        ..BatchConfig::eval(batch_size)
    };
    let device = exec.device;
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    let mut confusion = Tensor::zeros([num_classes * num_classes], (Kind::Int64, device));
    let mut images = 0usize;
    let mut batches = epoch_batches(Arc::clone(data), &cfg, 0, 0)?;
    tch::no_grad(|| -> Result<(), TrainError> {
        for batch in &mut batches {
            let input = exec.input(&batch.images.f_to_device(device)?)?;
            let labels = batch.labels.f_to_device(device)?;
            let logits = exec
                .run(|| model.forward_t(&input, false))
                .to_kind(Kind::Float);
            let loss =
                logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0)?;
            loss_sum += loss.to_kind(Kind::Double);
            let pred = logits.argmax(-1, false);
            let cell = &labels * num_classes + pred;
            confusion += cell.bincount::<Tensor>(None, num_classes * num_classes);
            images += batch.indices.len();
        }
        Ok(())
    })?;
    if let Some(e) = batches.take_error() {
        return Err(e.into());
    }
    let counts = Vec::<i64>::try_from(&confusion)?;
    let confusion: Vec<Vec<u64>> = counts
        .chunks(num_classes as usize)
        .map(|row| row.iter().map(|&c| c as u64).collect())
        .collect();
    let correct: u64 = (0..confusion.len()).map(|i| confusion[i][i]).sum();
    let n = images.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum.double_value(&[]) / n,
        acc: 100.0 * correct as f64 / n,
        images,
        confusion,
    })
}
