//! Test-set evaluation: eval mode, no gradients, confusion matrix accumulated on the device.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

use super::guard::torch_guard;
use super::{Evaluation, Execution, TrainError};
use crate::data::{epoch_batches, BatchConfig, Dataset};
use crate::inference::Tta;

/// Evaluates `model` in eval mode without gradients on the first `batches.limit` images of
/// `data` (all with `None`), in batches of `batches.batch_size` normalised with
/// `batches.normalization`, in order and without augmentation whatever `batches` says (start
/// from [`BatchConfig::eval`]), on `exec.device` (batches made elsewhere are moved there). `num_classes` sizes the confusion
/// matrix; `exec` says how batches run (use [`Execution::plain`] for plain fp32).
///
/// # Errors
/// [`TrainError::InvalidConfig`] when `num_classes` is below 1 or the model's logits have
/// another width; [`TrainError::Data`] if the data pipeline fails, [`TrainError::Torch`] if
/// libtorch does.
pub fn evaluate<M: ModuleT + ?Sized>(
    model: &M,
    data: &Arc<dyn Dataset>,
    batches: &BatchConfig,
    num_classes: i64,
    exec: &Execution,
) -> Result<Evaluation, TrainError> {
    let never = AtomicBool::new(false);
    let control = EvalControl {
        stop: &never,
        reduce: None,
        tta: Tta::None,
    };
    let eval = evaluate_until(model, data, batches, num_classes, exec, control)?;
    eval.ok_or_else(|| TrainError::InvalidConfig {
        field: "stop",
        value: "set".into(),
        expected: "no stop request".into(),
    })
}

/// Sums a tensor over the processes of a data-parallel evaluation, in place.
pub(crate) type Reduce<'a> = &'a dyn Fn(&mut Tensor) -> Result<(), TrainError>;

/// What an evaluation checks and does beyond [`evaluate`].
#[derive(Clone, Copy)]
pub(crate) struct EvalControl<'a> {
    /// Checked after every batch: the evaluation stops when it is set.
    pub(crate) stop: &'a AtomicBool,
    /// Sums the loss sum, image count and confusion counts before they are read (each process
    /// of a data-parallel run evaluated its part of the data).
    pub(crate) reduce: Option<Reduce<'a>>,
    /// Test-time augmentation of every batch.
    pub(crate) tta: Tta,
}

/// As [`evaluate`], with `control`: `None` when its stop flag was set.
pub(crate) fn evaluate_until<M: ModuleT + ?Sized>(
    model: &M,
    data: &Arc<dyn Dataset>,
    batches: &BatchConfig,
    num_classes: i64,
    exec: &Execution,
    control: EvalControl<'_>,
) -> Result<Option<Evaluation>, TrainError> {
    let EvalControl { stop, reduce, tta } = control;
    if num_classes < 1 {
        return Err(TrainError::InvalidConfig {
            field: "num_classes",
            value: num_classes.to_string(),
            expected: "at least 1".into(),
        });
    }
    let cfg = BatchConfig {
        limit: batches.limit,
        normalization: batches.normalization,
        ..BatchConfig::eval(batches.batch_size)
    };
    let device = exec.device;
    let mut sums = EvalSums::new(num_classes, device);
    let mut batches = epoch_batches(Arc::clone(data), &cfg, 0, 0)?;
    let stopped = tch::no_grad(|| -> Result<bool, TrainError> {
        for batch in &mut batches {
            let input = exec.input(&batch.images.f_to_device(device)?)?;
            let labels = batch.labels.f_to_device(device)?;
            let logits = torch_guard(batch.indices.len(), device, || {
                exec.run(|| tta.logits(&input, &|x| Ok(model.forward_t(x, false))))
                    .map_err(TrainError::from)
            })?;
            sums.add(&logits.f_to_kind(Kind::Float)?, &labels)?;
            if stop.load(Ordering::SeqCst) {
                return Ok(true);
            }
        }
        Ok(false)
    })?;
    if let Some(e) = batches.take_error() {
        return Err(e.into());
    }
    match stopped {
        true => Ok(None),
        false => sums.finish(reduce).map(Some),
    }
}

/// Loss and confusion counts of an evaluation, kept on the device.
struct EvalSums {
    num_classes: i64,
    loss_sum: Tensor,
    confusion: Tensor,
    images: usize,
}

impl EvalSums {
    fn new(num_classes: i64, device: tch::Device) -> Self {
        EvalSums {
            num_classes,
            loss_sum: Tensor::zeros([], (Kind::Double, device)),
            confusion: Tensor::zeros([num_classes * num_classes], (Kind::Int64, device)),
            images: 0,
        }
    }

    /// Adds a batch's `f32` logits and its labels.
    fn add(&mut self, logits: &Tensor, labels: &Tensor) -> Result<(), TrainError> {
        let nc = self.num_classes;
        let width = logits.size().get(1).copied().unwrap_or(0);
        if width != nc {
            return Err(TrainError::InvalidConfig {
                field: "num_classes",
                value: nc.to_string(),
                expected: format!("the width of the model's logits, {width}"),
            });
        }
        let loss =
            logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Sum, -100, 0.0)?;
        let _ = self.loss_sum.f_add_(&loss.f_to_kind(Kind::Double)?)?;
        let cell = (labels * nc).f_add(&logits.f_argmax(-1, false)?)?;
        // A label beyond `num_classes` makes the counts longer: an error, not a panic.
        let _ = self
            .confusion
            .f_add_(&cell.f_bincount::<Tensor>(None, nc * nc)?)?;
        self.images += labels.size().first().copied().unwrap_or(0) as usize;
        Ok(())
    }

    /// The evaluation (reads the device), with the sums first passed through `reduce`.
    fn finish(mut self, reduce: Option<Reduce<'_>>) -> Result<Evaluation, TrainError> {
        let mut totals = Tensor::f_cat(
            &[
                self.loss_sum.f_view([1])?,
                Tensor::f_full(
                    [1],
                    self.images as f64,
                    (Kind::Double, self.loss_sum.device()),
                )?,
            ],
            0,
        )?;
        if let Some(reduce) = reduce {
            reduce(&mut totals)?;
            reduce(&mut self.confusion)?;
        }
        let [loss_sum, images] =
            <[f64; 2]>::try_from(Vec::<f64>::try_from(&totals)?).map_err(|v| {
                TrainError::InvalidConfig {
                    field: "reduce",
                    value: format!("{} values", v.len()),
                    expected: "the 2 sums it was given".into(),
                }
            })?;
        let counts = Vec::<i64>::try_from(&self.confusion)?;
        let confusion: Vec<Vec<u64>> = counts
            .chunks(self.num_classes as usize)
            .map(|row| row.iter().map(|&c| c as u64).collect())
            .collect();
        let correct: u64 = (0..confusion.len()).map(|i| confusion[i][i]).sum();
        let n = images.max(1.0);
        Ok(Evaluation {
            loss: loss_sum / n,
            acc: 100.0 * correct as f64 / n,
            images: images as usize,
            confusion,
        })
    }
}
