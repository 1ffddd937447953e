//! [`ProcessGroup`]: the ranks of a run, joined through a TCP store, and their collectives.
use std::ffi::{c_int, c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tch::{Device, Tensor};

use super::env::{DistEnv, EnvError};
use super::ffi::{self, RxGroup, RxStore, ShimError};
use super::{Backend, DistError};

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

    /// Joins the group that `env` describes (see [`ProcessGroup::from_env`]).
    pub fn from_dist_env(env: &DistEnv, timeout: Duration) -> Result<Self, DistError> {
        let prefix = if env.agent_store {
            // As torch.distributed's env:// rendezvous does under torchelastic.
            format!("/worker/attempt_{}", env.restart_count)
        } else {
            String::new()
        };
        Self::create(
            env.rank,
            env.world_size,
            &env.master_addr,
            env.master_port,
            timeout,
            !env.agent_store && env.rank == 0,
            &prefix,
        )
    }

    /// Joins a group of `world_size` ranks as `rank`: rank 0 hosts the rendezvous store on
    /// `port` (all interfaces), the others connect to it at `addr:port`. `timeout` bounds the
    /// wait for every rank to join and every collective.
    pub fn new(
        rank: usize,
        world_size: usize,
        addr: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        Self::create(rank, world_size, addr, port, timeout, rank == 0, "")
    }

    /// A group of this process alone, its store on a free local port: data-parallel code run
    /// as one process (one GPU with NCCL, a benchmark's baseline, tests).
    pub fn single(timeout: Duration) -> Result<Self, DistError> {
        let port = free_local_port().map_err(|e| DistError::Failed {
            rank: 0,
            op: "find a free local port",
            detail: e.to_string(),
        })?;
        Self::new(0, 1, "127.0.0.1", port, timeout)
    }

    fn create(
        rank: usize,
        world_size: usize,
        addr: &str,
        port: u16,
        timeout: Duration,
        is_server: bool,
        prefix: &str,
    ) -> Result<Self, DistError> {
        check_group_args(rank, world_size, timeout)?;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let host = CString::new(addr)
            .map_err(|_| DistError::InvalidArgument(format!("address {addr:?} contains NUL")))?;
        let prefix = store_prefix(prefix)?;
        let mut raw_store = std::ptr::null_mut();
        // SAFETY: `host` and `prefix` are NUL-terminated and outlive the call, `raw_store` is a
        // valid out-pointer; the shim copies the strings.
        ffi::call(|err| unsafe {
            ffi::rx_store_create(
                host.as_ptr(),
                port,
                c_int::from(is_server),
                world_size as c_int,
                timeout_ms,
                prefix.as_ptr(),
                &mut raw_store,
                err,
            )
        })
        .map_err(|e| store_error(e, rank, addr, port, is_server, timeout))?;
        let store = Store(non_null(raw_store, rank, "create the rendezvous store")?);
        let gloo = create_backend(&store, Backend::Gloo, rank, world_size, timeout)?;
        Ok(ProcessGroup {
            rank,
            world_size,
            timeout,
            gloo,
            nccl: Mutex::new(None),
            store,
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

/// A TCP port of 127.0.0.1 that was free a moment ago (the system's choice), for a rendezvous
/// on this machine: [`ProcessGroup::single`], launchers of local ranks.
///
/// # Errors
/// When no socket can be bound on 127.0.0.1.
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

/// The store prefix of this process's next group: `resnext/<n>` under `prefix` (PrefixStore
/// joins a prefix and a key with '/'), so that groups made one after another on the same
/// store keep their keys apart.
fn store_prefix(prefix: &str) -> Result<CString, DistError> {
    let n = GROUPS_CREATED.fetch_add(1, Ordering::Relaxed);
    let prefix = if prefix.is_empty() {
        format!("resnext/{n}")
    } else {
        format!("{prefix}/resnext/{n}")
    };
    CString::new(prefix).map_err(|e| {
        DistError::InvalidArgument(format!(
            "store prefix {:?} contains NUL",
            String::from_utf8_lossy(&e.into_vec())
        ))
    })
}

/// Creates a c10d backend on `store` (under its own key prefix).
fn create_backend(
    store: &Store,
    backend: Backend,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<Group, DistError> {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let prefix = match backend {
        Backend::Gloo => c"gloo",
        Backend::Nccl => c"nccl",
    };
    let mut raw_store = std::ptr::null_mut();
    // SAFETY: `store` is live, `prefix` a NUL-terminated constant, `raw_store` a valid out-pointer.
    ffi::call(|err| unsafe {
        ffi::rx_store_prefixed(store.0.as_ptr(), prefix.as_ptr(), &mut raw_store, err)
    })
    .map_err(|e| classify(e, rank, "set up the process group", backend, timeout))?;
    let sub = Store(non_null(raw_store, rank, "set up the process group")?);
    let create = match backend {
        Backend::Gloo => ffi::rx_group_gloo_create,
        #[cfg(feature = "nccl")]
        Backend::Nccl => ffi::rx_group_nccl_create,
        #[cfg(not(feature = "nccl"))]
        Backend::Nccl => return Err(DistError::NcclUnavailable),
    };
    let mut raw = std::ptr::null_mut();
    // SAFETY: `sub` is live during the call (the backend takes its own reference to it) and
    // `raw` a valid out-pointer.
    ffi::call(|err| unsafe {
        create(
            sub.0.as_ptr(),
            rank as c_int,
            world_size as c_int,
            timeout_ms,
            &mut raw,
            err,
        )
    })
    .map_err(|e| classify(e, rank, "set up the process group", backend, timeout))?;
    // The backend holds its own reference to the (prefixed) store; `sub` can go.
    Ok(Group(non_null(raw, rank, "set up the process group")?))
}

/// A handle the shim returned with success: never null, unless the shim is broken, which is
/// then an error rather than a crash.
fn non_null<T>(raw: *mut T, rank: usize, op: &'static str) -> Result<NonNull<T>, DistError> {
    NonNull::new(raw).ok_or_else(|| DistError::Failed {
        rank,
        op,
        detail: "the c10d shim returned no handle".into(),
    })
}

/// True when `message` (lower-cased) contains one of `needles`.
fn mentions(message: &str, needles: &[&str]) -> bool {
    let lower = message.to_ascii_lowercase();
    needles.iter().any(|n| lower.contains(n))
}

const TIMEOUT_WORDS: &[&str] = &["timed out", "timeout", "time out"];
const PEER_GONE_WORDS: &[&str] = &[
    "connection closed by peer",
    "connection reset",
    "broken pipe",
    "econnreset",
    "epipe",
    "connection refused",
    "socket closed",
    "closed by peer",
    "end of file",
];

/// A failed store creation: port in use (server), unreachable store (client), or a rank missing.
fn store_error(
    e: ShimError,
    rank: usize,
    addr: &str,
    port: u16,
    is_server: bool,
    timeout: Duration,
) -> DistError {
    let detail = e.message.trim().to_string();
    if is_server && mentions(&detail, &["eaddrinuse", "address already in use"]) {
        DistError::PortInUse { port, detail }
    } else if is_server && mentions(&detail, TIMEOUT_WORDS) {
        DistError::Timeout {
            rank,
            op: "wait for every rank to join",
            timeout,
            detail,
        }
    } else if !is_server {
        DistError::Connect {
            rank,
            addr: addr.to_string(),
            port,
            timeout,
            detail,
        }
    } else {
        DistError::Failed {
            rank,
            op: "set up the rendezvous store",
            detail,
        }
    }
}

/// Sorts a failed collective into the [`DistError`] that says what to check.
fn classify(
    e: ShimError,
    rank: usize,
    op: &'static str,
    backend: Backend,
    timeout: Duration,
) -> DistError {
    let detail = e.message.trim().to_string();
    if mentions(&detail, TIMEOUT_WORDS) {
        DistError::Timeout {
            rank,
            op,
            timeout,
            detail,
        }
    } else if mentions(&detail, PEER_GONE_WORDS) || e.status == ffi::RX_ERR_NETWORK {
        // c10::DistNetworkError: a socket to a peer failed.
        DistError::PeerGone { rank, op, detail }
    } else if backend == Backend::Gloo
        && mentions(&detail, &["unsupported", "cannot use", "not supported"])
    {
        DistError::InvalidArgument(format!("{op} on Gloo: {detail}"))
    } else {
        DistError::Failed { rank, op, detail }
    }
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
