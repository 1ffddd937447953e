//! One training step: forward and loss under the run's precision, backward, the gradient hook,
//! and the optimiser's update (with fp16 loss scaling when the run has it).
use tch::nn::ModuleT;
use tch::{Kind, Reduction, Tensor};

use super::guard::torch_guard;
use super::{clip_grad_norm, Execution, LossScale, Optimizer, TrainError};

/// Code run by [`TrainStep::run`] between backward and the optimiser update, with every
/// trainable parameter `(name, tensor)` of the optimiser; the gradients are in `tensor.grad()`,
/// already unscaled under fp16. It runs on every step, also one that fp16 loss scaling then
/// skips for non-finite gradients. This is where a gradient all-reduce (data-parallel training) or
/// gradient clipping goes: change the gradients in place, under `tch::no_grad`. An error stops
/// training before the update.
pub type GradientHook = Box<dyn FnMut(&[(String, Tensor)]) -> Result<(), TrainError>>;

/// What one step returns. The tensors stay on the training device: reading them waits for the
/// device, so the loop decides when (see [`EpochAccumulator`](super::EpochAccumulator)).
#[derive(Debug)]
pub struct StepOutput {
    /// The batch's mean loss (label smoothing included), a detached scalar.
    pub loss: Tensor,
    /// Correctly classified examples of the batch, an `int64` scalar.
    pub correct: Tensor,
    /// Examples in the batch.
    pub examples: usize,
    /// Whether fp16 loss scaling skipped the update because the gradients were not finite
    /// (always `false` without loss scaling).
    pub skipped: bool,
}

/// One training batch as [`TrainStep::run_batch`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct StepBatch<'a> {
    /// The images, `[B, C, H, W]`.
    pub images: &'a Tensor,
    /// The class labels, `int64 [B]`.
    pub labels: &'a Tensor,
    /// Soft targets `f32 [B, classes]` (MixUp / CutMix), replacing `labels` in the loss.
    pub targets: Option<&'a Tensor>,
}

/// Forward, loss, backward, hook and update for one batch under the run's precision.
///
/// ```
/// use resnext::trainer::{Execution, Sgd, SgdConfig, TrainStep};
/// use resnext::{ResNeXt, ResNeXtConfig};
/// use tch::{nn, Device, Kind, Tensor};
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
/// let mut sgd = Sgd::new(&vs, SgdConfig::default());
/// let mut step = TrainStep::new(Execution::plain(Device::Cpu), 0.0);
/// let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
/// let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
/// let out = step.run(&net, &mut sgd, &mut None, &images, &labels, 0.1)?;
/// assert_eq!(out.examples, 4);
/// assert!(out.loss.double_value(&[]).is_finite());
/// # Ok::<(), resnext::trainer::TrainError>(())
/// ```
pub struct TrainStep {
    exec: Execution,
    label_smoothing: f64,
    reducer: Option<GradientHook>,
    hook: Option<GradientHook>,
    /// Total gradient 2-norm to clip to before the update, if any.
    clip_grad_norm: Option<f64>,
    /// Micro-batches each batch is split into (1: the whole batch at once).
    grad_accum_steps: usize,
}

impl std::fmt::Debug for TrainStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainStep")
            .field("exec", &self.exec)
            .field("label_smoothing", &self.label_smoothing)
            .field("reducer", &self.reducer.is_some())
            .field("hook", &self.hook.is_some())
            .field("clip_grad_norm", &self.clip_grad_norm)
            .field("grad_accum_steps", &self.grad_accum_steps)
            .finish()
    }
}

impl TrainStep {
    /// A step running as `exec` says (device, precision, layout), with cross-entropy and
    /// `label_smoothing`.
    pub fn new(exec: Execution, label_smoothing: f64) -> Self {
        TrainStep {
            exec,
            label_smoothing,
            reducer: None,
            hook: None,
            clip_grad_norm: None,
            grad_accum_steps: 1,
        }
    }

    /// The same step, splitting every batch into `steps` micro-batches (see
    /// [`set_grad_accum_steps`](Self::set_grad_accum_steps)).
    pub fn with_grad_accum_steps(mut self, steps: usize) -> Self {
        self.set_grad_accum_steps(steps);
        self
    }

    /// Splits every batch into `steps` micro-batches (timm's `--grad-accum-steps`): forward
    /// and backward of each on its own (BatchNorm normalises each with its own statistics and
    /// updates its running statistics once per micro-batch), each loss weighted by its share
    /// of the batch so that the summed gradients are those of the batch's mean loss, then one
    /// reducer / clipping / hook / update. 1 (the default, and 0) is the whole batch at once.
    /// A batch of fewer images than `steps` is split into one image per micro-batch.
    pub fn set_grad_accum_steps(&mut self, steps: usize) {
        self.grad_accum_steps = steps.max(1);
    }

    /// The same step, clipping the gradients to a total 2-norm of `max_norm` before each
    /// update (see [`set_clip_grad_norm`](Self::set_clip_grad_norm)).
    pub fn with_clip_grad_norm(mut self, max_norm: Option<f64>) -> Self {
        self.clip_grad_norm = max_norm;
        self
    }

    /// Clips the gradients to a total 2-norm of `max_norm` before every update
    /// (`torch.nn.utils.clip_grad_norm_`), after the reducer and after unscaling under fp16, as
    /// PyTorch's `scaler.unscale_` then `clip_grad_norm_`, and before the hook; `None`: no
    /// clipping.
    pub fn set_clip_grad_norm(&mut self, max_norm: Option<f64>) {
        self.clip_grad_norm = max_norm;
    }

    /// Runs from now on as `exec` says, with `label_smoothing` (the hook stays).
    pub fn reconfigure(&mut self, exec: Execution, label_smoothing: f64) {
        self.exec = exec;
        self.label_smoothing = label_smoothing;
    }

    /// Sets the [`GradientHook`] (replacing any earlier one).
    pub fn set_gradient_hook(&mut self, hook: GradientHook) {
        self.hook = Some(hook);
    }

    /// Sets the gradient reducer: code run right after backward, before the gradients are
    /// unscaled (fp16) and before the [`GradientHook`], with the same arguments. Data-parallel
    /// training averages the gradients of every process here, so that fp16's decision to skip
    /// a step (any gradient not finite) and the hook see the same gradients on every process.
    /// The reducer must be linear in the gradients (a sum or a mean is).
    pub fn set_gradient_reducer(&mut self, reducer: GradientHook) {
        self.reducer = Some(reducer);
    }

    /// How the step runs.
    pub fn execution(&self) -> &Execution {
        &self.exec
    }

    /// Trains `model` on one batch with learning rate `lr`: zero the gradients, forward and
    /// loss (under autocast for bf16 / fp16), backward, the reducer (see
    /// [`set_gradient_reducer`](Self::set_gradient_reducer)), the hook, then the update by
    /// `optimizer` (any [`Optimizer`]: an [`Sgd`](super::Sgd), an [`AdamW`](super::AdamW)). With a
    /// `loss_scale` (fp16) the loss is scaled before backward and the gradients unscaled
    /// after; a step whose gradients are not finite is skipped and the scale lowered.
    ///
    /// # Errors
    /// [`TrainError::OutOfMemory`] when the batch does not fit in memory,
    /// [`TrainError::Torch`] when libtorch fails otherwise (also inside the model's forward
    /// pass, where tch would panic), the hook's error, or [`TrainError::Optim`] for an `lr` the
    /// optimiser refuses (not finite, below 0).
    pub fn run<M: ModuleT + ?Sized>(
        &mut self,
        model: &M,
        optimizer: &mut dyn Optimizer,
        loss_scale: &mut Option<LossScale>,
        images: &Tensor,
        labels: &Tensor,
        lr: f64,
    ) -> Result<StepOutput, TrainError> {
        let batch = StepBatch {
            images,
            labels,
            targets: None,
        };
        self.run_batch(model, optimizer, loss_scale, &batch, lr)
    }

    /// As [`run`](Self::run), on a batch that may carry soft targets (MixUp / CutMix): the
    /// loss is then the cross-entropy against the targets' probabilities (label smoothing
    /// applied to them, as PyTorch's `cross_entropy` does), and an image counts as correct
    /// when the model's class is the target's most probable one (torchvision's reference
    /// script does the same).
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub fn run_batch<M: ModuleT + ?Sized>(
        &mut self,
        model: &M,
        optimizer: &mut dyn Optimizer,
        loss_scale: &mut Option<LossScale>,
        batch: &StepBatch<'_>,
        lr: f64,
    ) -> Result<StepOutput, TrainError> {
        let n = batch.labels.size().first().map_or(0, |&n| n as usize);
        torch_guard(n, self.exec.device, || {
            self.run_unguarded(model, optimizer, loss_scale, batch, lr)
        })
    }

    /// Forward and loss of one micro-batch.
    fn forward<M: ModuleT + ?Sized>(
        &self,
        model: &M,
        part: &StepBatch<'_>,
    ) -> Result<(Tensor, Tensor), TrainError> {
        let input = self.exec.input(part.images)?;
        let smoothing = self.label_smoothing;
        let target = part.targets.unwrap_or(part.labels);
        self.exec.run(|| -> Result<_, TrainError> {
            let logits = model.forward_t(&input, true);
            let loss = logits.f_cross_entropy_loss::<Tensor>(
                target,
                None,
                Reduction::Mean,
                -100,
                smoothing,
            )?;
            Ok((logits, loss))
        })
    }

    /// Forward and backward of every micro-batch; the batch's mean loss and correct count.
    fn accumulate<M: ModuleT + ?Sized>(
        &self,
        model: &M,
        loss_scale: &Option<LossScale>,
        batch: &StepBatch<'_>,
    ) -> Result<(Tensor, Tensor), TrainError> {
        let n = batch.labels.size().first().copied().unwrap_or(0);
        let parts = (self.grad_accum_steps as i64).min(n).max(1);
        let chunk = |t: &Tensor| t.f_chunk(parts, 0);
        let images = chunk(batch.images)?;
        let labels = chunk(batch.labels)?;
        let targets = batch.targets.map(chunk).transpose()?;
        let (mut loss_sum, mut correct_sum) = (None::<Tensor>, None::<Tensor>);
        for (k, (images, labels)) in images.iter().zip(&labels).enumerate() {
            let part = StepBatch {
                images,
                labels,
                targets: targets.as_ref().map(|t| &t[k]),
            };
            let (logits, loss) = self.forward(model, &part)?;
            // One part is the whole batch: its loss unweighted, as before accumulation existed.
            let weighted = match parts {
                1 => loss,
                _ => loss.f_mul_scalar(labels.size()[0] as f64 / n as f64)?,
            };
            match loss_scale {
                Some(scale) => (&weighted * scale.scale).f_backward()?,
                None => weighted.f_backward()?,
            }
            let correct = tch::no_grad(|| {
                let truth = match part.targets {
                    Some(t) => t.argmax(-1, false),
                    None => labels.shallow_clone(),
                };
                logits.argmax(-1, false).eq_tensor(&truth).sum(Kind::Int64)
            });
            let weighted = weighted.detach();
            loss_sum = Some(loss_sum.map_or(weighted.shallow_clone(), |s| s + &weighted));
            correct_sum = Some(correct_sum.map_or(correct.shallow_clone(), |s| s + &correct));
        }
        let zero = || Tensor::zeros([], (Kind::Float, self.exec.device));
        Ok((
            loss_sum.unwrap_or_else(zero),
            correct_sum.unwrap_or_else(|| Tensor::zeros([], (Kind::Int64, self.exec.device))),
        ))
    }

    fn run_unguarded<M: ModuleT + ?Sized>(
        &mut self,
        model: &M,
        optimizer: &mut dyn Optimizer,
        loss_scale: &mut Option<LossScale>,
        batch: &StepBatch<'_>,
        lr: f64,
    ) -> Result<StepOutput, TrainError> {
        optimizer.zero_grad();
        let (loss, correct) = self.accumulate(model, loss_scale, batch)?;
        if let Some(reducer) = &mut self.reducer {
            reducer(optimizer.parameters())?;
        }
        let applied = match loss_scale {
            Some(scale) => {
                let finite = optimizer.scale_grads(1.0 / scale.scale);
                scale.update(finite);
                finite
            }
            None => true,
        };
        if let (Some(max_norm), true) = (self.clip_grad_norm, applied) {
            let _total_norm = clip_grad_norm(optimizer.parameters(), max_norm)?;
        }
        if let Some(hook) = &mut self.hook {
            hook(optimizer.parameters())?;
        }
        if applied {
            optimizer.step(lr)?;
        }
        Ok(StepOutput {
            loss,
            correct,
            examples: batch.labels.size().first().map_or(0, |&n| n as usize),
            skipped: !applied,
        })
    }
}
