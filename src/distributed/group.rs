//! [`ProcessGroup`]: the ranks of a run, joined through a c10d store (a `FileStore` in a private
//! directory on one machine, a `TCPStore` across machines), and their collectives.
mod backend;
mod errors;
mod store;

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use tch::{Device, Tensor};

use super::env::{DistEnv, EnvError, Rendezvous};
use super::ffi::{self, RxGroup, RxStore, ShimError};
use super::local::LocalRendezvous;
use super::{peers, Backend, DistError};
use backend::create_backend;
use errors::classify;
use store::StoreSpec;

/// Process groups created by this process so far: each gets its own key prefix in the store,
/// so that several groups (one after another, or torchrun's long-lived agent store) never see
/// each other's keys. Every rank creates its groups in the same order, so the numbers agree.
static GROUPS_CREATED: AtomicU64 = AtomicU64::new(0);

/// An owned `rx_store`.
struct Store(NonNull<RxStore>);

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by rx_store_create / rx_store_prefixed, destroyed once.
        unsafe { ffi::rx_store_destroy(self.0.as_ptr()) }
    }
}

/// An owned `rx_group` (one c10d backend).
struct Group(NonNull<RxGroup>);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: created by rx_group_*_create, destroyed once.
        unsafe { ffi::rx_group_destroy(self.0.as_ptr()) }
    }
}

/// A group of processes (ranks) that run collectives together: libtorch's c10d, as
/// torch.distributed uses it, with Gloo for CPU tensors and NCCL for CUDA tensors.
///
/// Every rank must call the same collectives, in the same order, with tensors of the same shape
/// and kind. Each call blocks until it is done on this rank, and fails with a typed
/// [`DistError`] rather than hanging: a peer that exits or crashes breaks its connections
/// ([`DistError::PeerGone`], at once), and one that does not take part within the group's
/// timeout gives [`DistError::Timeout`]. After an error the group is unusable: drop it and exit
/// (the other ranks get errors too).
///
/// The Gloo backend is set up when the group is created; the NCCL backend on the first
/// collective over a CUDA tensor (or [`ProcessGroup::init_backend`]), which every rank must then
/// reach at the same point, as with any collective.
pub struct ProcessGroup {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    // Field order is drop order: the backends go before the store they use.
    gloo: Group,
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    nccl: Mutex<Option<Group>>,
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    store: Store,
    // The private rendezvous directory of a single-process group, removed after the store.
    _dir: Option<LocalRendezvous>,
}

// SAFETY: the c10d objects behind the handles are not tied to the thread that made them.
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProcessGroup {
    /// Joins the group that the torchrun environment describes (see [`DistEnv`]), with
    /// `timeout` for joining and for every collective ([`DEFAULT_TIMEOUT`](super::DEFAULT_TIMEOUT) is a good default).
    ///
    /// Fails with [`DistError::Env`] when the environment is not a distributed launch
    /// (`WORLD_SIZE` unset) or is inconsistent. Under torchrun's agent store
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`) every rank connects to the agent's store.
    pub fn from_env(timeout: Duration) -> Result<Self, DistError> {
        let env = DistEnv::from_env()?.ok_or(EnvError::Missing {
            var: "WORLD_SIZE",
            hint: "the number of processes of the run",
        })?;
        Self::from_dist_env(&env, timeout)
    }

    /// Joins the group that `env` describes (see [`ProcessGroup::from_env`]): in the private
    /// directory of a [`Rendezvous::File`] (a c10d `FileStore`, Gloo on 127.0.0.1), or through
    /// the TCP store at `MASTER_ADDR:MASTER_PORT` (see [`ProcessGroup::new`]).
    pub fn from_dist_env(env: &DistEnv, timeout: Duration) -> Result<Self, DistError> {
        let spec = match &env.rendezvous {
            Rendezvous::File { dir } => StoreSpec::File(dir),
            Rendezvous::Tcp { addr, port } => StoreSpec::Tcp {
                addr,
                port: *port,
                is_server: !env.agent_store && env.rank == 0,
                // As torch.distributed's env:// rendezvous does under torchelastic.
                prefix: match env.agent_store {
                    true => format!("/worker/attempt_{}", env.restart_count),
                    false => String::new(),
                },
            },
        };
        Self::create(env.rank, env.world_size, spec, timeout, None)
    }

    /// Joins a group of `world_size` ranks as `rank` through a TCP store at `addr:port`: rank 0
    /// hosts it, on a socket bound to `addr`'s address only (so `addr` must name rank 0's
    /// machine, as the others reach it), and the others connect to it. `timeout` bounds the
    /// wait for every rank to join and every collective.
    ///
    /// Gloo binds `GLOO_SOCKET_IFNAME`'s interface when that is set, else the local address
    /// that reaches `addr` (the loopback for 127.0.0.1). Neither the store nor Gloo
    /// authenticates or encrypts: use this across machines on a trusted network only (on one
    /// machine, [`LocalRendezvous`] needs no network socket for the rendezvous).
    pub fn new(
        rank: usize,
        world_size: usize,
        addr: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        let spec = StoreSpec::Tcp {
            addr,
            port,
            is_server: rank == 0,
            prefix: String::new(),
        };
        Self::create(rank, world_size, spec, timeout, None)
    }

    /// A group of this process alone: data-parallel code run as one process (one GPU with
    /// NCCL, a benchmark's baseline, tests). Its store is a `FileStore` in a private temporary
    /// directory (removed with the group) and Gloo binds 127.0.0.1: no port is chosen.
    pub fn single(timeout: Duration) -> Result<Self, DistError> {
        let dir = LocalRendezvous::new().map_err(|e| DistError::Failed {
            rank: 0,
            op: "create a private rendezvous directory",
            detail: e.to_string(),
        })?;
        let path = dir.path().to_path_buf();
        Self::create(0, 1, StoreSpec::File(&path), timeout, Some(dir))
    }

    /// Creates the store `spec` describes, Gloo on it, and checks who connected to Gloo.
    /// `dir` is kept (and removed) with the group.
    fn create(
        rank: usize,
        world_size: usize,
        spec: StoreSpec<'_>,
        timeout: Duration,
        dir: Option<LocalRendezvous>,
    ) -> Result<Self, DistError> {
        check_group_args(rank, world_size, timeout)?;
        let store = spec.open(rank, world_size, timeout)?;
        let gloo_host = spec.gloo_host();
        let before = peers::own_sockets().map_err(|e| DistError::Failed {
            rank,
            op: "list this process's sockets",
            detail: e.to_string(),
        })?;
        let gloo = create_backend(&store, Backend::Gloo, rank, world_size, timeout, gloo_host)?;
        peers::check_accepted(&before, rank)?;
        Ok(ProcessGroup {
            rank,
            world_size,
            timeout,
            gloo,
            nccl: Mutex::new(None),
            store,
            _dir: dir,
        })
    }

    /// This process's rank, `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The timeout of every collective (and of joining).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets up `backend` now rather than on its first collective, so that a missing NCCL fails
    /// at start: [`DistError::NcclUnavailable`] in builds without the `nccl` feature,
    /// [`DistError::NoCuda`] without a CUDA device. A collective on every rank: all must call it.
    /// Gloo is always set up.
    pub fn init_backend(&self, backend: Backend) -> Result<(), DistError> {
        self.with_backend(backend, |_| Ok(()))
    }

    /// Sums `tensor` over all ranks, in place: afterwards every rank holds the sum. For large
    /// flat buffers (gradient buckets) as well as single values. A non-contiguous tensor is
    /// reduced through a contiguous copy.
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), DistError> {
        // SAFETY (here and in the other in-place collectives): `group` is this process group's
        // live backend handle and `t` a contiguous tensor that `in_place` keeps alive and
        // exclusively borrowed for the call; the shim does not keep either pointer.
        self.in_place(tensor, "all_reduce", |group, t| unsafe {
            ffi::call(|err| {
                ffi::rx_group_all_reduce(group, t.as_mut_ptr() as *mut c_void, ffi::RX_OP_SUM, err)
            })
        })
    }

    /// Averages `tensor` over all ranks, in place (the sum divided by the world size). Floating
    /// point tensors only (`InvalidArgument` otherwise).
    ///
    /// One collective with c10d's `ReduceOp::AVG`, which Gloo (in libtorch 2.11) and NCCL both
    /// implement: no separate pass over the tensor to divide it.
    pub fn all_reduce_mean(&self, tensor: &mut Tensor) -> Result<(), DistError> {
        if !tensor.is_floating_point() {
            return Err(DistError::InvalidArgument(format!(
                "all_reduce_mean needs a floating point tensor, not {:?}",
                tensor.kind()
            )));
        }
        // SAFETY: as in `all_reduce_sum`.
        self.in_place(tensor, "all_reduce (average)", |group, t| unsafe {
            ffi::call(|err| {
                ffi::rx_group_all_reduce(group, t.as_mut_ptr() as *mut c_void, ffi::RX_OP_AVG, err)
            })
        })
    }

    /// Copies rank `root`'s `tensor` into every other rank's `tensor` (same shape and kind on
    /// all ranks), in place. A non-contiguous tensor goes through a contiguous copy.
    pub fn broadcast(&self, tensor: &mut Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::InvalidArgument(format!(
                "broadcast root {root} is not a rank (world size {})",
                self.world_size
            )));
        }
        // SAFETY: as in `all_reduce_sum`.
        self.in_place(tensor, "broadcast", |group, t| unsafe {
            ffi::call(|err| {
                ffi::rx_group_broadcast(group, t.as_mut_ptr() as *mut c_void, root as c_int, err)
            })
        })
    }

    /// Gathers every rank's `tensor` (same shape and kind on all ranks): element `r` of the
    /// result is rank `r`'s. Meant for small values (metric sums, a configuration hash); the
    /// result takes `world_size` times the memory of `tensor`.
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>, DistError> {
        let input = tensor.contiguous();
        let mut outputs: Vec<Tensor> = (0..self.world_size).map(|_| input.empty_like()).collect();
        let backend = Backend::for_device(input.device());
        self.with_backend(backend, |group| {
            let ptrs: Vec<*mut c_void> = outputs
                .iter_mut()
                .map(|t| t.as_mut_ptr() as *mut c_void)
                .collect();
            // SAFETY: `group` is live; `input` and the `world_size` outputs are contiguous
            // tensors of the same shape and kind, alive until after the call; `ptrs` outlives it.
            ffi::call(|err| unsafe {
                ffi::rx_group_all_gather(
                    group,
                    input.as_ptr() as *const c_void,
                    ptrs.as_ptr(),
                    ptrs.len() as c_int,
                    err,
                )
            })
            .map_err(|e| self.collective_error(e, "all_gather", backend))
        })?;
        Ok(outputs)
    }

    /// Waits until every rank has called `barrier` (on the Gloo backend).
    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: the Gloo handle lives as long as `self`.
        ffi::call(|err| unsafe { ffi::rx_group_barrier(self.gloo.0.as_ptr(), err) })
            .map_err(|e| self.collective_error(e, "barrier", Backend::Gloo))
    }

    /// Runs an in-place collective `op` on `tensor` (through a contiguous copy if need be).
    fn in_place(
        &self,
        tensor: &mut Tensor,
        name: &'static str,
        op: impl Fn(*mut RxGroup, &mut Tensor) -> Result<(), ShimError>,
    ) -> Result<(), DistError> {
        let backend = Backend::for_device(tensor.device());
        self.with_backend(backend, |group| {
            let result = if tensor.is_contiguous() {
                op(group, tensor)
            } else {
                let mut copy = tensor.contiguous();
                let result = op(group, &mut copy);
                if result.is_ok() {
                    tensor.copy_(&copy);
                }
                result
            };
            result.map_err(|e| self.collective_error(e, name, backend))
        })
    }

    /// Runs `f` with the handle of `backend`, setting it up first if need be.
    fn with_backend<T>(
        &self,
        backend: Backend,
        f: impl FnOnce(*mut RxGroup) -> Result<T, DistError>,
    ) -> Result<T, DistError> {
        match backend {
            Backend::Gloo => f(self.gloo.0.as_ptr()),
            Backend::Nccl => {
                #[cfg(not(feature = "nccl"))]
                {
                    let _ = f;
                    Err(DistError::NcclUnavailable)
                }
                #[cfg(feature = "nccl")]
                {
                    if !tch::Cuda::is_available() {
                        return Err(DistError::NoCuda);
                    }
                    let mut nccl = self.nccl.lock().unwrap_or_else(|e| e.into_inner());
                    let group = match &mut *nccl {
                        Some(group) => group,
                        slot @ None => slot.insert(create_backend(
                            &self.store,
                            Backend::Nccl,
                            self.rank,
                            self.world_size,
                            self.timeout,
                            None,
                        )?),
                    };
                    f(group.0.as_ptr())
                }
            }
        }
    }

    fn collective_error(&self, e: ShimError, op: &'static str, backend: Backend) -> DistError {
        classify(e, self.rank, op, backend, self.timeout)
    }
}

/// A TCP port of 127.0.0.1 that was free a moment ago (the system's choice).
///
/// Racy by nature: another process can take the port between this call and its use, and a
/// rendezvous on it would then fail, or, worse, meet that process. Nothing in this crate uses
/// it any more: a rendezvous on one machine is a [`LocalRendezvous`] (no port at all), and rank
/// 0 of a TCP rendezvous binds its port itself. Kept for callers that need a probably-free port
/// for something else (tests of connection errors, say).
///
/// # Errors
/// When no socket can be bound on 127.0.0.1.
#[deprecated(
    since = "0.1.0",
    note = "racy between choosing the port and binding it: use LocalRendezvous (no port) for \
            ranks on one machine, or bind 127.0.0.1:0 and keep the listener"
)]
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Refuses a world size outside `1..=c_int::MAX`, a rank outside it and a zero timeout.
fn check_group_args(rank: usize, world_size: usize, timeout: Duration) -> Result<(), DistError> {
    if world_size == 0 || world_size > c_int::MAX as usize {
        return Err(DistError::InvalidArgument(format!(
            "world size {world_size} is not in 1..={}",
            c_int::MAX
        )));
    }
    if rank >= world_size {
        return Err(EnvError::RankOutOfRange { rank, world_size }.into());
    }
    if timeout.is_zero() {
        return Err(DistError::InvalidArgument(
            "the timeout must be positive".into(),
        ));
    }
    Ok(())
}

impl Backend {
    /// The backend that serves tensors on `device`: Gloo on the CPU, NCCL on CUDA devices.
    pub fn for_device(device: Device) -> Backend {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }
}
