//! Collectives across processes, GPUs and machines on libtorch's own c10d, the engine of
//! torch.distributed: Gloo for CPU tensors, NCCL for CUDA tensors.
//!
//! This is what data-parallel training ([`Trainer::data_parallel`](crate::trainer::Trainer::data_parallel))
//! runs on: a [`ProcessGroup`] joined from the torchrun environment ([`ProcessGroup::from_env`],
//! [`DistEnv`]; or the private directory of a [`LocalRendezvous`]) or from explicit values
//! ([`ProcessGroup::new`]), with
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
//! How it is built: `csrc/c10d_shim.cpp` is a C ABI over c10d's `TCPStore`, `FileStore`, `PrefixStore`,
//! `ProcessGroupGloo` (and, with the `nccl` cargo feature, `ProcessGroupNCCL`), compiled by
//! build.rs against the headers of the libtorch that tch links, plus gloo's headers, which the
//! torch wheel lacks and `scripts/setup-gloo-headers.sh` installs into a cache. Every C++
//! exception is caught in the shim and comes back as an error message.
//!
//! Rendezvous, and what listens where (docs/distributed.md, "What listens where"):
//!
//! * **One machine** ([`Rendezvous::File`]: the `--nproc` launcher, [`LocalRendezvous`],
//!   [`ProcessGroup::single`]): the ranks meet in a c10d `FileStore` in a private directory
//!   (mode 0700, checked by every rank: [`DistError::RendezvousDir`]) named by
//!   [`RENDEZVOUS_DIR_VAR`], and Gloo binds 127.0.0.1 (`GLOO_SOCKET_IFNAME` is not read). No socket for the rendezvous, no port to
//!   choose (no race between choosing and binding), and other users can neither read nor write
//!   the store. Chosen over a TCP store on a socket the launcher binds to 127.0.0.1 and hands to
//!   rank 0 (`masterListenFd`) because c10d's TCP store has no authentication (a secret key
//!   prefix would not stay secret: libtorch 2.11's store lists its keys to any client), so any
//!   local process could join; the kernel's file permissions need no secret.
//! * **Gloo's connections are checked**: Gloo has no authentication either, and its listening
//!   socket hands a connection to whoever first names the right sequence number. Once the pairs
//!   are connected, before any collective, every rank checks in `/proc/net/tcp{,6}` that each
//!   connection its Gloo socket accepted from this machine comes from a live process of its
//!   user, and refuses the group otherwise ([`DistError::ForeignPeer`]). Processes of the same
//!   user are not kept out (they could as well attach a debugger); another machine's user
//!   cannot be known.
//! * **Several machines, torchrun** ([`Rendezvous::Tcp`]): c10d's TCP store at
//!   `MASTER_ADDR:MASTER_PORT`, hosted by torchrun's agent (`TORCHELASTIC_USE_AGENT_STORE=True`,
//!   every rank a client) or by rank 0 on a socket bound to `MASTER_ADDR`'s address only
//!   ([`DistError::StoreAddress`] when that is not this machine's). Gloo binds
//!   `GLOO_SOCKET_IFNAME`'s interface if set, else the local address through which this machine
//!   reaches `MASTER_ADDR` (the loopback for 127.0.0.1), else the address of the host name, as
//!   torch.distributed does. As PyTorch's security notes say, the store and Gloo neither
//!   authenticate nor encrypt: train across machines on a trusted network only.
//!
//! [`free_local_port`] is deprecated: a port chosen and then bound later can be taken in
//! between; nothing here uses it any more.
mod data_parallel;
mod env;
mod ffi;
mod group;
mod local;
mod net;
mod peers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use data_parallel::{
    broadcast_tensors, broadcast_variables, GradientBuckets, DEFAULT_BUCKET_BYTES,
};
pub use env::{DistEnv, EnvError, Rendezvous, RENDEZVOUS_DIR_VAR};
#[allow(deprecated)]
pub use group::free_local_port;
pub use group::ProcessGroup;
pub use local::LocalRendezvous;

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
    /// Rank 0 could not host the rendezvous store at `MASTER_ADDR`: the name does not resolve,
    /// or to no address of this machine.
    #[error(
        "rank 0 could not host the rendezvous store at MASTER_ADDR={addr} (port {port}): \
         {detail}; run rank 0 on the machine MASTER_ADDR names, and give an address (or a name \
         that resolves, on that machine, to an address of it) that the other machines reach"
    )]
    StoreAddress {
        /// `MASTER_ADDR`.
        addr: String,
        /// The port.
        port: u16,
        /// What went wrong.
        detail: String,
    },
    /// The private directory of a one-machine rendezvous ([`Rendezvous::File`]) cannot be
    /// trusted or used.
    #[error(
        "the rendezvous directory {dir} ({RENDEZVOUS_DIR_VAR}) cannot be used: {problem}; it \
         must be a directory of this user with mode 0700, as the --nproc launcher \
         (LocalRendezvous) creates"
    )]
    RendezvousDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A process that is not one of this user's connected to this rank's Gloo socket while the
    /// group was set up: the group is refused before any collective.
    #[error(
        "rank {rank}: refused the group: Gloo's listening socket accepted a connection from \
         {peer}, {detail}; only processes of this user may take part in a run on this machine \
         (look for other processes connecting to the ranks' ports, and start again)"
    )]
    ForeignPeer {
        /// This rank.
        rank: usize,
        /// The other end of the connection.
        peer: SocketAddr,
        /// Who it is.
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
