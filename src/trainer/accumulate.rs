//! The sums of an epoch in progress: kept on the training device, read only now and then.
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::{EpochProgress, StepOutput, TrainError};

/// How often the sums are read on CUDA, in batches (reading waits for the GPU).
const CUDA_READ_EVERY: usize = 25;

/// What an epoch looks like so far, read by [`EpochAccumulator::read`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunningMetrics {
    /// Mean training loss over the epoch so far.
    pub loss: f64,
    /// Training accuracy (percent) over the epoch so far.
    pub acc: f64,
    /// Training images per second in this piece of the epoch (since the accumulator started).
    pub images_per_sec: f64,
    /// The mean loss of the latest batch.
    pub batch_loss: f64,
    /// Steps of this piece of the epoch whose loss was not finite (steps that fp16 loss
    /// scaling skipped excluded): any is divergence.
    pub non_finite: u64,
    /// The latest of those losses (NaN when there is none).
    pub non_finite_loss: f64,
    /// Steps that fp16 loss scaling skipped (not counted in the sums).
    pub skipped: u64,
}

/// Loss and accuracy sums of one epoch (or of the rest of one, after a resume), accumulated on
/// the device from every [`StepOutput`] and added to the sums carried in from before.
#[derive(Debug)]
pub struct EpochAccumulator {
    base: EpochProgress,
    loss_sum: Tensor,
    correct: Tensor,
    non_finite: Tensor,
    bad_loss: Tensor,
    seen: u64,
    skipped: u64,
    started: Instant,
    read_every: usize,
}

impl EpochAccumulator {
    /// Starts accumulating on `device`, on top of `base` (the sums saved mid-epoch, or zeros).
    /// The sums are read every batch on the CPU and every 25 batches elsewhere.
    pub fn new(base: EpochProgress, device: Device) -> Self {
        let read_every = if device == Device::Cpu {
            1
        } else {
            CUDA_READ_EVERY
        };
        EpochAccumulator {
            base,
            loss_sum: Tensor::zeros([], (Kind::Double, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            non_finite: Tensor::zeros([], (Kind::Int64, device)),
            bad_loss: Tensor::full([], f64::NAN, (Kind::Double, device)),
            seen: 0,
            skipped: 0,
            started: Instant::now(),
            read_every,
        }
    }

    /// Adds one step's loss (weighted by its examples) and correct count, on the device, and
    /// notes a non-finite loss there. A step that fp16 loss scaling skipped is only counted.
    pub fn add(&mut self, out: &StepOutput) {
        if out.skipped {
            self.skipped += 1;
            return;
        }
        let n = out.examples as u64;
        tch::no_grad(|| {
            let loss = out.loss.to_kind(Kind::Double);
            let finite = loss.isfinite();
            self.non_finite += finite.logical_not().to_kind(Kind::Int64);
            self.bad_loss = self.bad_loss.where_self(&finite, &loss);
            self.loss_sum += loss * n as f64;
            self.correct += &out.correct;
        });
        self.seen += n;
    }

    /// Examples added since this accumulator started.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Whether the loop should [`read`](Self::read) after batch `index` of `num_batches`: every
    /// `read_every` batches and after the last one.
    pub fn is_read_due(&self, index: usize, num_batches: usize) -> bool {
        index.is_multiple_of(self.read_every) || index + 1 == num_batches
    }

    /// The epoch's running loss and accuracy, with `last`'s loss (waits for the device).
    ///
    /// # Errors
    /// [`TrainError::Torch`] if a value cannot be read.
    pub fn read(&self, last: &StepOutput) -> Result<RunningMetrics, TrainError> {
        let batch_loss = last.loss.f_double_value(&[])?;
        let total = (self.base.seen + self.seen).max(1) as f64;
        let correct = self.base.correct as f64 + self.correct.f_double_value(&[])?;
        let loss_sum = self.base.loss_sum + self.loss_sum.f_double_value(&[])?;
        Ok(RunningMetrics {
            loss: loss_sum / total,
            acc: 100.0 * correct / total,
            images_per_sec: self.seen as f64 / self.started.elapsed().as_secs_f64().max(1e-9),
            batch_loss,
            non_finite: self.non_finite.f_int64_value(&[])? as u64,
            non_finite_loss: self.bad_loss.f_double_value(&[])?,
            skipped: self.skipped,
        })
    }

    /// The epoch's sums so far, base included, with the time spent (what a checkpoint keeps).
    ///
    /// # Errors
    /// [`TrainError::Torch`] if a value cannot be read.
    pub fn progress(&self) -> Result<EpochProgress, TrainError> {
        self.progress_combined(|own| Ok(own.to_vec()))
    }

    /// As [`progress`](Self::progress), with this accumulator's own `[loss_sum, correct,
    /// seen]` (the base left out) passed through `combine` first: data-parallel training sums
    /// them over the processes there, each of which trained on its part of the epoch.
    ///
    /// # Errors
    /// [`TrainError::Torch`] if a value cannot be read, or `combine`'s error.
    pub fn progress_combined(
        &self,
        combine: impl FnOnce(&[f64]) -> Result<Vec<f64>, TrainError>,
    ) -> Result<EpochProgress, TrainError> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let own = [
            self.loss_sum.f_double_value(&[])?,
            self.correct.f_int64_value(&[])? as f64,
            self.seen as f64,
        ];
        let all = combine(&own)?;
        let [loss_sum, correct, seen] = all[..] else {
            return Err(TrainError::InvalidConfig {
                field: "combine",
                value: format!("{} values", all.len()),
                expected: "the 3 sums it was given".into(),
            });
        };
        Ok(EpochProgress {
            loss_sum: self.base.loss_sum + loss_sum,
            correct: self.base.correct + correct as u64,
            seen: self.base.seen + seen as u64,
            seconds: self.base.seconds + elapsed,
            train_seconds: self.base.train_seconds + elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(loss: f32, correct: i64, examples: usize) -> StepOutput {
        StepOutput {
            loss: Tensor::from(loss),
            correct: Tensor::from(correct),
            examples,
            skipped: false,
        }
    }

    #[test]
    fn every_non_finite_loss_is_counted_and_skipped_steps_are_left_out() {
        let mut acc = EpochAccumulator::new(EpochProgress::default(), Device::Cpu);
        acc.add(&step(1.0, 1, 4));
        acc.add(&step(f32::INFINITY, 0, 4));
        acc.add(&step(2.0, 2, 4));
        let skipped = StepOutput {
            skipped: true,
            ..step(f32::NAN, 0, 4)
        };
        acc.add(&skipped);
        let last = step(3.0, 1, 4);
        acc.add(&last);
        let read = acc.read(&last).unwrap();
        assert_eq!((read.non_finite, read.skipped), (1, 1), "{read:?}");
        assert_eq!(read.non_finite_loss, f64::INFINITY);
        assert_eq!(acc.seen(), 16);
        let clean = EpochAccumulator::new(EpochProgress::default(), Device::Cpu);
        let read = clean.read(&last).unwrap();
        assert_eq!(read.non_finite, 0);
        assert!(read.non_finite_loss.is_nan());
    }

    #[test]
    fn sums_are_weighted_by_batch_size_and_added_to_the_base() {
        let base = EpochProgress {
            loss_sum: 10.0,
            correct: 3,
            seen: 10,
            seconds: 5.0,
            train_seconds: 4.0,
        };
        let mut acc = EpochAccumulator::new(base, Device::Cpu);
        acc.add(&step(2.0, 4, 8));
        let last = step(0.5, 1, 2);
        acc.add(&last);
        assert_eq!(acc.seen(), 10);
        let read = acc.read(&last).unwrap();
        // (10 + 2*8 + 0.5*2) / 20 and (3 + 4 + 1) / 20.
        assert!((read.loss - 27.0 / 20.0).abs() < 1e-12, "{read:?}");
        assert!((read.acc - 40.0).abs() < 1e-12, "{read:?}");
        assert_eq!(read.batch_loss, 0.5);
        let p = acc.progress().unwrap();
        assert_eq!((p.correct, p.seen), (8, 20));
        assert!((p.loss_sum - 27.0).abs() < 1e-12);
        assert!(p.seconds >= 5.0 && p.train_seconds >= 4.0);
    }

    #[test]
    fn combined_progress_adds_the_combined_own_sums_to_the_base() {
        let base = EpochProgress {
            loss_sum: 1.0,
            correct: 1,
            seen: 2,
            ..EpochProgress::default()
        };
        let mut acc = EpochAccumulator::new(base, Device::Cpu);
        acc.add(&step(0.5, 3, 4));
        // As two processes with the same sums would combine them.
        let p = acc
            .progress_combined(|own| {
                assert_eq!(own, [2.0, 3.0, 4.0]);
                Ok(own.iter().map(|v| 2.0 * v).collect())
            })
            .unwrap();
        assert_eq!((p.loss_sum, p.correct, p.seen), (5.0, 7, 10));
        assert!(acc.progress_combined(|_| Ok(vec![1.0])).is_err());
    }

    #[test]
    fn an_empty_epoch_reads_zeros_and_keeps_the_base() {
        let acc = EpochAccumulator::new(EpochProgress::default(), Device::Cpu);
        let read = acc.read(&step(f32::NAN, 0, 0)).unwrap();
        assert_eq!((read.loss, read.acc), (0.0, 0.0));
        assert!(read.batch_loss.is_nan());
        assert_eq!(acc.progress().unwrap().seen, 0);
    }

    #[test]
    fn reads_are_due_every_batch_on_the_cpu_and_every_25_elsewhere() {
        let cpu = EpochAccumulator::new(EpochProgress::default(), Device::Cpu);
        assert!((0..10).all(|i| cpu.is_read_due(i, 10)));
        let mut gpu = EpochAccumulator::new(EpochProgress::default(), Device::Cpu);
        gpu.read_every = CUDA_READ_EVERY;
        let due: Vec<usize> = (0..60).filter(|&i| gpu.is_read_due(i, 60)).collect();
        assert_eq!(due, [0, 25, 50, 59]);
    }
}
