//! The trainer's side of data-parallel training (see [`Trainer::data_parallel`]): agreeing on
//! the run at start, the gradient reducer, and the few collectives of the loop (metric sums,
//! stop and divergence decisions, rank 0's buffers before an evaluation).
//!
//! [`Trainer::data_parallel`]: super::Trainer::data_parallel
use std::rc::Rc;

use md5::{Digest, Md5};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::{GradientHook, TrainConfig, TrainError, TrainState};
use crate::data::Shard;
use crate::distributed::{
    broadcast_tensors, broadcast_variables, Backend, GradientBuckets, ProcessGroup,
    DEFAULT_BUCKET_BYTES,
};

/// A trainer's process group and what it does with it.
#[derive(Debug, Clone)]
pub(crate) struct DataParallel {
    group: Rc<ProcessGroup>,
}

impl DataParallel {
    /// Joins `group` for training on `device`: the backend of `device` is set up now (so that
    /// a missing NCCL fails before training).
    pub fn new(group: ProcessGroup, device: Device) -> Result<Self, TrainError> {
        group.init_backend(Backend::for_device(device))?;
        Ok(DataParallel {
            group: Rc::new(group),
        })
    }

    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// This process's part of every epoch.
    pub fn shard(&self) -> Shard {
        Shard {
            index: self.rank(),
            count: self.world_size(),
        }
    }

    /// Refuses a run whose ranks were given different configurations. The device and the data
    /// location are left out: each process has its own GPU, each machine its own paths.
    pub fn check_config(&self, config: &TrainConfig) -> Result<(), TrainError> {
        let shared = TrainConfig {
            device: String::new(),
            data: Default::default(),
            ..config.clone()
        };
        let hash = Md5::digest(shared.to_json().as_bytes());
        let words =
            [&hash[..8], &hash[8..]].map(|h| i64::from_le_bytes(h.try_into().unwrap_or_default()));
        self.agree("the training configuration", &words, |r| {
            format!("rank {r} was started with another configuration than rank 0 (compare the flags each was started with); start every rank with the same command")
        })
    }

    /// Refuses a resumed run whose ranks read different positions (different checkpoints).
    pub fn check_position(&self, state: &TrainState) -> Result<(), TrainError> {
        let position = [state.epoch as i64, state.batch as i64, state.steps as i64];
        self.agree("the position in the run", &position, |r| {
            format!(
                "rank {r} resumed at another epoch, batch or step than rank 0 (it read another \
                 checkpoint): every rank must see the same run directory"
            )
        })
    }

    /// Gathers `values` from every rank and fails, naming the first rank that differs from
    /// rank 0 with `detail`, when they are not all equal.
    fn agree(
        &self,
        what: &'static str,
        values: &[i64],
        detail: impl Fn(usize) -> String,
    ) -> Result<(), TrainError> {
        let all = self.group.all_gather(&Tensor::from_slice(values))?;
        let first = Vec::<i64>::try_from(&all[0])?;
        for (rank, t) in all.iter().enumerate().skip(1) {
            if Vec::<i64>::try_from(t)? != first {
                return Err(TrainError::RanksDisagree {
                    world_size: self.world_size(),
                    what,
                    detail: detail(rank),
                });
            }
        }
        Ok(())
    }

    /// Copies rank 0's variables (parameters and buffers) to every rank: the same start.
    pub fn broadcast_model(&self, vs: &VarStore) -> Result<(), TrainError> {
        Ok(broadcast_variables(&self.group, vs, 0)?)
    }

    /// Copies rank 0's buffers (the variables that take no gradient: BatchNorm's running
    /// statistics, frozen parameters) to every rank. The trained parameters are left alone:
    /// averaged gradients keep them equal.
    pub fn broadcast_buffers(&self, vs: &VarStore) -> Result<(), TrainError> {
        let mut buffers: Vec<(String, Tensor)> = (vs.variables().into_iter())
            .filter(|(_, t)| !t.requires_grad())
            .collect();
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(broadcast_tensors(
            &self.group,
            &buffers,
            0,
            DEFAULT_BUCKET_BYTES,
        )?)
    }

    /// The gradient reducer of the training step: the gradients of `params` averaged over all
    /// ranks, in buckets of a few large flat buffers.
    pub fn gradient_reducer(
        &self,
        params: &[(String, Tensor)],
    ) -> Result<GradientHook, TrainError> {
        let mut buckets = GradientBuckets::new(params)?;
        let group = Rc::clone(&self.group);
        Ok(Box::new(move |params: &[(String, Tensor)]| {
            Ok(buckets.average(&group, params)?)
        }))
    }

    /// The sums of `values` over all ranks (one small collective on the CPU).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        let mut t = Tensor::from_slice(values);
        self.group.all_reduce_sum(&mut t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Sums `tensor` over all ranks, in place (on its device's backend).
    pub fn sum_tensor(&self, tensor: &mut Tensor) -> Result<(), TrainError> {
        Ok(self.group.all_reduce_sum(tensor)?)
    }
}
