//! Evaluation inside a run: the test set with the trained weights (in their evaluation form)
//! or the EMA's, split between the ranks of a data-parallel run, and the check that the data's
//! classes fit the model before anything is trained.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tch::nn::ModuleT;
use tch::Tensor;

use super::{
    evaluate::{evaluate_until, EvalControl},
    guard::torch_guard,
    Ema, Evaluation, Precision, TrainError, Trainer,
};
use crate::data::{BatchConfig, BatchRequest, DataSplits, Dataset, Subset};
use crate::inference::Tta;

impl<M: ModuleT> Trainer<M> {
    /// Refuses, before anything is trained or written, data whose classes the model's output
    /// does not fit (one training image through the model in eval mode tells its width).
    pub(super) fn check_classes(&self, data: &DataSplits) -> Result<(), TrainError> {
        if data.train.is_empty() {
            return Ok(());
        }
        let cfg = BatchConfig::eval(1);
        let request = BatchRequest {
            config: &cfg,
            epoch: 0,
            index: 0,
            indices: &[0],
        };
        let (images, _) = data.train.make_batch(&request)?;
        let input = self
            .step
            .execution()
            .input(&images.f_to_device(self.device)?)?;
        let logits = torch_guard(1, self.device, || {
            Ok(tch::no_grad(|| {
                self.step
                    .execution()
                    .run(|| self.model.forward_t(&input, false))
            }))
        })?;
        let outputs = logits.size().last().copied().unwrap_or(0);
        for (split, set) in [("training", &data.train), ("test", &data.test)] {
            let classes = set.classes();
            if classes.len() as i64 != outputs {
                let mut names = classes
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if classes.len() > 5 {
                    names.push_str(", …");
                }
                return Err(TrainError::ClassCount {
                    outputs,
                    split,
                    classes: classes.len(),
                    names,
                });
            }
        }
        Ok(())
    }

    /// Evaluates `test` with the evaluation form (fp32 runs) or the trained model; `None`
    /// when a stop was requested during the evaluation.
    pub(super) fn evaluate_test(
        &self,
        test: &Arc<dyn Dataset>,
    ) -> Result<Option<Evaluation>, TrainError> {
        let cfg = &self.state.config;
        if let Some(dp) = &self.dist {
            dp.broadcast_buffers(&self.vs)?;
        }
        let last = self.state.epoch + 1 >= cfg.epochs;
        let tta = match cfg.tta_last_only && !last {
            true => Tta::None,
            false => cfg.tta,
        };
        let fast = match &self.eval_form {
            Some(form) if self.step.execution().precision == Precision::Fp32 => {
                Some(form(&self.model)?)
            }
            _ => None,
        };
        let model: &dyn ModuleT = match &fast {
            Some(m) => m.as_ref(),
            None => &self.model,
        };

        let mut batches = BatchConfig {
            limit: cfg.limit_test,
            normalization: cfg.normalization,
            ..BatchConfig::eval(cfg.batch_size.max(256))
        };
        let classes = test.classes().len() as i64;
        let exec = self.step.execution();
        let Some(dp) = &self.dist else {
            let control = EvalControl {
                stop: self.control.flag(),
                reduce: None,
                tta,
            };
            return evaluate_until(model, test, &batches, classes, exec, control);
        };
        // Rank r evaluates the images r, r + world_size, ... (none twice, unlike the padded
        // training shards); the sums are added up over the ranks. A stop waits for the
        // next epoch's first batch, where the ranks decide together.
        let used = batches.used_len(test.len());
        let mine = (dp.rank()..used).step_by(dp.world_size()).collect();
        let part: Arc<dyn Dataset> = Arc::new(Subset::new(Arc::clone(test), mine)?);
        batches.limit = None;
        let never = AtomicBool::new(false);
        let reduce = |t: &mut Tensor| dp.sum_tensor(t);
        let control = EvalControl {
            stop: &never,
            reduce: Some(&reduce),
            tta,
        };
        evaluate_until(model, &part, &batches, classes, exec, control)
    }

    /// Evaluates `test` with the EMA's averages in place of the weights and buffers (restored
    /// afterwards, also on error); `None` without an EMA, or when a stop was requested during
    /// the evaluation.
    pub(super) fn evaluate_ema(
        &self,
        test: &Arc<dyn Dataset>,
    ) -> Result<Option<Evaluation>, TrainError> {
        match self.callbacks.ema() {
            Some(ema) => self.with_ema_weights(ema, || self.evaluate_test(test)),
            None => Ok(None),
        }
    }

    /// Runs `f` with `ema`'s averages in place of the weights and buffers, restored
    /// afterwards, also when `f` fails.
    pub(super) fn with_ema_weights<T>(
        &self,
        ema: &Ema,
        f: impl FnOnce() -> Result<T, TrainError>,
    ) -> Result<T, TrainError> {
        let raw: Vec<(String, Tensor)> = tch::no_grad(|| {
            self.vs
                .variables()
                .into_iter()
                .map(|(n, t)| t.f_detach_copy().map(|c| (n, c)))
                .collect::<Result<_, _>>()
        })?;
        ema.copy_into(&self.vs)?;
        let result = f();
        let live = self.vs.variables();
        tch::no_grad(|| -> Result<(), tch::TchError> {
            for (name, saved) in &raw {
                live[name].shallow_clone().f_copy_(saved)?;
            }
            Ok(())
        })?;
        result
    }
}
