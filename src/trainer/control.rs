//! Stopping a run: the stop flag and the batch hook that ask for a stop, and the vote that
//! makes the ranks of a data-parallel run act together on what any of them asked.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::data_parallel::DataParallel;
use super::TrainError;

/// What a batch hook (see [`Trainer::on_batch`](super::Trainer::on_batch)) asks the trainer
/// to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchControl {
    /// Go on training.
    Continue,
    /// Save a checkpoint and stop, as on Ctrl-C ([`Outcome::Stopped`](super::Outcome::Stopped)).
    Stop,
    /// Stop at once without saving anything, as a crash or a kill would: the run directory
    /// keeps the checkpoint of the last completed epoch.
    Abort,
}

impl BatchControl {
    /// The stronger of two requests: abort over stop over continue.
    fn strongest(self, other: BatchControl) -> BatchControl {
        let rank = |c| match c {
            BatchControl::Continue => 0,
            BatchControl::Stop => 1,
            BatchControl::Abort => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

type BatchHook = Box<dyn FnMut(usize, usize) -> BatchControl>;

/// The stop requests of one process (the stop flag, the batch hook) and, in a data-parallel
/// run, the vote that turns every rank's requests into one decision for all.
pub(super) struct Control {
    stop: Arc<AtomicBool>,
    on_batch: Option<BatchHook>,
    /// A data-parallel rank's stop or abort request, until the ranks decide together.
    pending: BatchControl,
}

impl Control {
    /// No request: the flag down, no hook.
    pub(super) fn new() -> Self {
        Control {
            stop: Arc::new(AtomicBool::new(false)),
            on_batch: None,
            pending: BatchControl::Continue,
        }
    }

    /// The stop flag (shared with a Ctrl-C handler).
    pub(super) fn flag(&self) -> &Arc<AtomicBool> {
        &self.stop
    }

    /// Lowers the stop flag (a request left from an earlier `fit`).
    pub(super) fn clear(&self) {
        self.stop.store(false, Ordering::SeqCst);
    }

    /// Sets the batch hook (replacing any earlier one).
    pub(super) fn set_hook(&mut self, hook: BatchHook) {
        self.on_batch = Some(hook);
    }

    /// What the batch hook and the stop flag ask for after batch `batch` of `epoch` (on this
    /// process).
    pub(super) fn asked_after(&mut self, epoch: usize, batch: usize) -> BatchControl {
        let mut control = BatchControl::Continue;
        if let Some(hook) = &mut self.on_batch {
            control = hook(epoch, batch);
        }
        if self.stop.load(Ordering::SeqCst) && control == BatchControl::Continue {
            control = BatchControl::Stop;
        }
        control
    }

    /// Without data-parallel training (`dist` `None`), `asked`. A data-parallel rank keeps
    /// its request until the ranks [`decide`](Self::decide) together, and goes on meanwhile.
    pub(super) fn defer(
        &mut self,
        asked: BatchControl,
        dist: Option<&DataParallel>,
    ) -> BatchControl {
        if dist.is_none() {
            return asked;
        }
        self.pending = self.pending.strongest(asked);
        BatchControl::Continue
    }

    /// The number of non-finite losses and what to do next, over all ranks of a data-parallel
    /// run (one small collective): a stop or an abort asked by any rank holds for all, so that
    /// every rank leaves the epoch at the same batch. Without data-parallel training, the
    /// arguments.
    pub(super) fn decide(
        &mut self,
        non_finite: u64,
        asked: BatchControl,
        dist: Option<&DataParallel>,
    ) -> Result<(u64, BatchControl), TrainError> {
        let Some(dp) = dist else {
            return Ok((non_finite, asked));
        };
        let mine = std::mem::replace(&mut self.pending, BatchControl::Continue).strongest(asked);
        let flag = |c: BatchControl| f64::from(u8::from(mine == c));
        let sums = dp.sum(&[
            non_finite as f64,
            flag(BatchControl::Stop),
            flag(BatchControl::Abort),
        ])?;
        let control = match (sums[1] > 0.0, sums[2] > 0.0) {
            (_, true) => BatchControl::Abort,
            (true, false) => BatchControl::Stop,
            (false, false) => BatchControl::Continue,
        };
        Ok((sums[0] as u64, control))
    }
}

/// `result` on every rank of a data-parallel run: `Ok` only when it is `Ok` on all of them
/// (one small collective), so that one rank's failure to open the run stops all. Without
/// data-parallel training (`dist` `None`), `result`.
pub(super) fn all_ok<T>(
    dist: Option<&DataParallel>,
    result: Result<T, TrainError>,
) -> Result<T, TrainError> {
    let Some(dp) = dist else {
        return result;
    };
    let failed = dp.sum(&[f64::from(u8::from(result.is_err()))])?[0];
    match result {
        Ok(_) if failed > 0.0 => Err(TrainError::RanksDisagree {
            world_size: dp.world_size(),
            what: "opening the run",
            detail: format!("{failed} other rank(s) failed: see their error"),
        }),
        result => result,
    }
}
