//! Collectives across processes, GPUs and machines on libtorch's own c10d, the engine of
//! torch.distributed: Gloo for CPU tensors, NCCL for CUDA tensors.
//!
//! This is what data-parallel training ([`Trainer::data_parallel`](crate::trainer::Trainer::data_parallel))
//! runs on: a [`ProcessGroup`] joined from the torchrun environment ([`ProcessGroup::from_env`],
//! [`DistEnv`]) or from explicit values ([`ProcessGroup::new`]), with
//!
//! * [`all_reduce_sum`](ProcessGroup::all_reduce_sum) / [`all_reduce_mean`](ProcessGroup::all_reduce_mean)
//!   in place, for large flat buffers (gradient buckets) as for single values;
//! * [`broadcast`](ProcessGroup::broadcast) from a root rank (parameters and buffers at start);
//! * [`all_gather`](ProcessGroup::all_gather) of small values (metric sums, a configuration hash);
//! * [`barrier`](ProcessGroup::barrier).
//!
//! Every failure is a typed [`DistError`] that says what failed and what to check, and nothing
//! waits without end: joining and every collective are bounded by the group's timeout
//! ([`DEFAULT_TIMEOUT`], five minutes, unless configured), and a peer that exits breaks the
//! collective at once ([`DistError::PeerGone`]).
//!
//! ```no_run
//! use resnext::distributed::{ProcessGroup, DEFAULT_TIMEOUT};
//! use tch::{Device, Kind, Tensor};
//! # fn main() -> Result<(), resnext::distributed::DistError> {
//! // Started by `torchrun --no-python --nproc-per-node=2 ./binary`:
//! let group = ProcessGroup::from_env(DEFAULT_TIMEOUT)?;
//! let mut grads = Tensor::ones([1 << 20], (Kind::Float, Device::Cpu));
//! group.all_reduce_mean(&mut grads)?;
//! group.barrier()?;
//! # Ok(())
//! # }
//! ```
//!
//! How it is built: `csrc/c10d_shim.cpp` is a C ABI over c10d's `TCPStore`, `PrefixStore`,
//! `ProcessGroupGloo` (and, with the `nccl` cargo feature, `ProcessGroupNCCL`), compiled by
//! build.rs against the headers of the libtorch that tch links, plus gloo's headers, which the
//! torch wheel lacks and `scripts/setup-gloo-headers.sh` installs into a cache. Every C++
//! exception is caught in the shim and comes back as an error message.
//!
//! Rendezvous: rank 0 hosts c10d's TCP store on `MASTER_PORT` (all interfaces); the other ranks
//! connect to `MASTER_ADDR:MASTER_PORT`. Under torchrun the agent hosts the store
//! (`TORCHELASTIC_USE_AGENT_STORE=True`) and every rank connects to it. Gloo picks its network
//! interface as torch.distributed does: `GLOO_SOCKET_IFNAME` if set, else the address this
//! host's name resolves to, else the loopback; on several machines make sure the host name
//! resolves to a reachable address or set `GLOO_SOCKET_IFNAME`.
mod data_parallel;
mod env;
mod ffi;
mod group;

use std::time::Duration;

use thiserror::Error;

pub use data_parallel::{
    broadcast_tensors, broadcast_variables, GradientBuckets, DEFAULT_BUCKET_BYTES,
};
pub use env::{DistEnv, EnvError};
pub use group::{free_local_port, ProcessGroup};

/// The default timeout of joining a group and of every collective: five minutes, as long as a
/// slow rank may reasonably lag (an evaluation, a checkpoint) and far short of "hangs forever".
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A c10d communication backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Gloo: CPU tensors, over TCP. Always available.
    Gloo,
    /// NCCL: CUDA tensors. Only in builds with the `nccl` feature, on a CUDA libtorch.
    Nccl,
}

/// A failure of the distributed layer, naming what failed and what to check.
#[derive(Debug, Error)]
pub enum DistError {
    /// The torchrun environment is missing or inconsistent.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// A call with arguments that cannot work (a root that is not a rank, an integer tensor to
    /// average, a tensor kind the backend cannot reduce, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Rank 0 could not host the rendezvous store: its port is taken.
    #[error(
        "rank 0 could not host the rendezvous store on port {port}: the port is in use (another \
         run, or a previous one still closing); choose another MASTER_PORT ({detail})"
    )]
    PortInUse {
        /// The port.
        port: u16,
        /// libtorch's message.
        detail: String,
    },
    /// A rank could not reach the rendezvous store in time.
    #[error(
        "rank {rank}: could not reach the rendezvous store at {addr}:{port} within {timeout:?}: \
         check that rank 0 is running and that MASTER_ADDR and MASTER_PORT point at its machine \
         ({detail})"
    )]
    Connect {
        /// This rank.
        rank: usize,
        /// The store's host.
        addr: String,
        /// The store's port.
        port: u16,
        /// The timeout that ran out.
        timeout: Duration,
        /// libtorch's message.
        detail: String,
    },
    /// A step did not complete within the timeout: a peer did not take part in time.
    #[error(
        "rank {rank}: {op} timed out after {timeout:?}: a peer did not take part in time (it is \
         stuck, slower than the timeout, gone, or running other collectives); check the other \
         ranks' output, or raise the timeout ({detail})"
    )]
    Timeout {
        /// This rank.
        rank: usize,
        /// What timed out.
        op: &'static str,
        /// The timeout that ran out.
        timeout: Duration,
        /// libtorch's message.
        detail: String,
    },
    /// The connection to a peer was lost during a step: the peer exited or crashed.
    #[error(
        "rank {rank}: {op} failed: the connection to a peer was lost (it exited or crashed); \
         check the other ranks' output ({detail})"
    )]
    PeerGone {
        /// This rank.
        rank: usize,
        /// What failed.
        op: &'static str,
        /// libtorch's message.
        detail: String,
    },
    /// NCCL was asked for (a CUDA tensor) in a build without the `nccl` feature.
    #[error(
        "NCCL is not available in this build: collectives on CUDA tensors need resnext built \
         with `--features nccl` against a CUDA libtorch (CPU tensors use Gloo)"
    )]
    NcclUnavailable,
    /// NCCL was asked for, and this process has no CUDA device.
    #[error("NCCL needs CUDA, and this process sees no CUDA device (use CPU tensors and Gloo)")]
    NoCuda,
    /// Any other failure of a step, with libtorch's message.
    #[error("rank {rank}: {op} failed: {detail}")]
    Failed {
        /// This rank.
        rank: usize,
        /// What failed.
        op: &'static str,
        /// libtorch's message.
        detail: String,
    },
}
