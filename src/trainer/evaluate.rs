//! Test-set evaluation: eval mode, no gradients, confusion matrix accumulated on the device.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

use super::guard::torch_guard;
use super::{Evaluation, Execution, TrainError};
use crate::data::{epoch_batches, BatchConfig, Dataset};

/// Evaluates `model` in eval mode without gradients on the first `limit` images of `data`
/// (all with `None`), in order and without augmentation, in batches of `batch_size`, on
/// `exec.device` (batches made elsewhere are moved there). `num_classes` sizes the confusion
/// matrix; `exec` says how batches run (use [`Execution::plain`] for plain fp32).
///
/// # Errors
/// [`TrainError::InvalidConfig`] when `num_classes` is below 1 or the model's logits have
/// another width; [`TrainError::Data`] if the data pipeline fails, [`TrainError::Torch`] if
/// libtorch does.
pub fn evaluate<M: ModuleT + ?Sized>(
    model: &M,
    data: &Arc<dyn Dataset>,
    batch_size: usize,
    limit: Option<usize>,
    num_classes: i64,
    exec: &Execution,
) -> Result<Evaluation, TrainError> {
    let never = AtomicBool::new(false);
    let eval = evaluate_until(model, data, batch_size, limit, num_classes, exec, &never)?;
    eval.ok_or_else(|| TrainError::InvalidConfig {
        field: "stop",
        value: "set".into(),
        expected: "no stop request".into(),
    })
}

/// As [`evaluate`], checking `stop` after every batch: `None` when it was set.
pub(crate) fn evaluate_until<M: ModuleT + ?Sized>(
    model: &M,
    data: &Arc<dyn Dataset>,
    batch_size: usize,
    limit: Option<usize>,
    num_classes: i64,
    exec: &Execution,
    stop: &AtomicBool,
) -> Result<Option<Evaluation>, TrainError> {
    if num_classes < 1 {
        return Err(TrainError::InvalidConfig {
            field: "num_classes",
            value: num_classes.to_string(),
            expected: "at least 1".into(),
        });
    }
    let cfg = BatchConfig {
        limit,
        ..BatchConfig::eval(batch_size)
    };
    let device = exec.device;
    let mut loss_sum = Tensor::zeros([], (Kind::Double, device));
    let mut confusion = Tensor::zeros([num_classes * num_classes], (Kind::Int64, device));
    let mut images = 0usize;
    let mut batches = epoch_batches(Arc::clone(data), &cfg, 0, 0)?;
    let stopped = tch::no_grad(|| -> Result<bool, TrainError> {
        for batch in &mut batches {
            let input = exec.input(&batch.images.f_to_device(device)?)?;
            let labels = batch.labels.f_to_device(device)?;
            let logits = torch_guard(batch.indices.len(), device, || {
                Ok(exec.run(|| model.forward_t(&input, false)))
            })?
            .f_to_kind(Kind::Float)?;
            let width = logits.size().get(1).copied().unwrap_or(0);
            if width != num_classes {
                return Err(TrainError::InvalidConfig {
                    field: "num_classes",
                    value: num_classes.to_string(),
                    expected: format!("the width of the model's logits, {width}"),
                });
            }
            let loss =
                logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0)?;
            let _ = loss_sum.f_add_(&loss.f_to_kind(Kind::Double)?)?;
            let pred = logits.f_argmax(-1, false)?;
            let cell = (&labels * num_classes).f_add(&pred)?;
            // A label beyond `num_classes` makes the counts longer: an error, not a panic.
            let _ =
                confusion.f_add_(&cell.f_bincount::<Tensor>(None, num_classes * num_classes)?)?;
            images += batch.indices.len();
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    if let Some(e) = batches.take_error() {
        return Err(e.into());
    }
    if stopped {
        return Ok(None);
    }
    let counts = Vec::<i64>::try_from(&confusion)?;
    let confusion: Vec<Vec<u64>> = counts
        .chunks(num_classes as usize)
        .map(|row| row.iter().map(|&c| c as u64).collect())
        .collect();
    let correct: u64 = (0..confusion.len()).map(|i| confusion[i][i]).sum();
    let n = images.max(1) as f64;
    Ok(Some(Evaluation {
        loss: loss_sum.double_value(&[]) / n,
        acc: 100.0 * correct as f64 / n,
        images,
        confusion,
    }))
}
