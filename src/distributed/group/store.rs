//! The c10d store a group meets in: a `FileStore` in a private directory, or a `TCPStore`
//! hosted by rank 0, each group's keys under a prefix of its own.
use std::ffi::{c_int, CStr, CString};
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::errors::{classify, non_null, store_error};
use super::{Store, GROUPS_CREATED};
use crate::distributed::ffi::{self, ShimError};
use crate::distributed::{local, net, Backend, DistError};

/// Where a group's store is, and this process's part in it.
pub(super) enum StoreSpec<'a> {
    /// A `FileStore` in this private directory (every rank on this machine).
    File(&'a Path),
    /// A `TCPStore` at `addr:port`, hosted by this process when `is_server`, its keys under
    /// `prefix` (torchelastic's, or empty).
    Tcp {
        addr: &'a str,
        port: u16,
        is_server: bool,
        prefix: String,
    },
}

impl StoreSpec<'_> {
    /// Opens the store, its keys under the next group prefix of this process.
    pub(super) fn open(
        &self,
        rank: usize,
        world_size: usize,
        timeout: Duration,
    ) -> Result<Store, DistError> {
        match self {
            StoreSpec::File(dir) => {
                let base = file_store(dir, world_size, timeout)?;
                let prefix = store_prefix("")?;
                prefixed(&base, &prefix).map_err(|e| {
                    classify(e, rank, "open the rendezvous store", Backend::Gloo, timeout)
                })
            }
            StoreSpec::Tcp {
                addr,
                port,
                is_server,
                prefix,
            } => tcp_store(addr, *port, *is_server, prefix, rank, world_size, timeout),
        }
    }

    /// The address for Gloo to bind: 127.0.0.1 for a file rendezvous; for a TCP one, see
    /// [`net::gloo_address`] (`None`: torch.distributed's own choice).
    pub(super) fn gloo_host(&self) -> Option<CString> {
        let ip = match self {
            StoreSpec::File(_) => Some(Ipv4Addr::LOCALHOST.into()),
            StoreSpec::Tcp { addr, port, .. } => net::gloo_address(addr, *port),
        };
        ip.and_then(|ip| CString::new(ip.to_string()).ok())
    }
}

/// The `FileStore` of the private rendezvous directory `dir` (checked first), for
/// `world_size` processes, its waits bounded by `timeout`.
fn file_store(dir: &Path, world_size: usize, timeout: Duration) -> Result<Store, DistError> {
    let file = local::store_file(dir)?;
    let bad = |problem: String| DistError::RendezvousDir {
        dir: dir.to_path_buf(),
        problem,
    };
    let path = CString::new(file.as_os_str().as_encoded_bytes())
        .map_err(|_| bad("its path contains NUL".into()))?;
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let mut raw = std::ptr::null_mut();
    // SAFETY: `path` is NUL-terminated and outlives the call (the shim copies it), `raw` is a
    // valid out-pointer.
    ffi::call(|err| unsafe {
        ffi::rx_store_create_file(
            path.as_ptr(),
            world_size as c_int,
            timeout_ms,
            &mut raw,
            err,
        )
    })
    .map_err(|e| bad(format!("c10d's FileStore failed: {}", e.message.trim())))?;
    NonNull::new(raw)
        .map(Store)
        .ok_or_else(|| bad("the c10d shim returned no store".into()))
}

/// The TCP store at `addr:port`: hosted here, on a socket this function binds to `addr`'s
/// address, when `is_server`; a client of it otherwise. Keys under `prefix`'s next group prefix.
fn tcp_store(
    addr: &str,
    port: u16,
    is_server: bool,
    prefix: &str,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<Store, DistError> {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let host = CString::new(addr)
        .map_err(|_| DistError::InvalidArgument(format!("address {addr:?} contains NUL")))?;
    let prefix = store_prefix(prefix)?;
    let listen_fd = match is_server {
        true => net::store_listener(addr, port)?.into_raw_fd(),
        false => -1,
    };
    let mut raw_store = std::ptr::null_mut();
    // SAFETY: `host` and `prefix` are NUL-terminated and outlive the call, `raw_store` is a
    // valid out-pointer; the shim copies the strings. `listen_fd` (-1 for a client) is a
    // listening socket that nothing else owns: the store takes it over and closes it.
    ffi::call(|err| unsafe {
        ffi::rx_store_create(
            host.as_ptr(),
            port,
            c_int::from(is_server),
            listen_fd,
            world_size as c_int,
            timeout_ms,
            prefix.as_ptr(),
            &mut raw_store,
            err,
        )
    })
    .map_err(|e| store_error(e, rank, addr, port, is_server, timeout))?;
    Ok(Store(non_null(
        raw_store,
        rank,
        "create the rendezvous store",
    )?))
}

/// `base` with its keys under `prefix`.
pub(super) fn prefixed(base: &Store, prefix: &CStr) -> Result<Store, ShimError> {
    let mut raw = std::ptr::null_mut();
    // SAFETY: `base` is live, `prefix` NUL-terminated, `raw` a valid out-pointer; the new
    // store holds its own reference to `base`'s.
    ffi::call(|err| unsafe {
        ffi::rx_store_prefixed(base.0.as_ptr(), prefix.as_ptr(), &mut raw, err)
    })?;
    NonNull::new(raw).map(Store).ok_or_else(|| ShimError {
        status: ffi::RX_ERR_OTHER,
        message: "the c10d shim returned no store".into(),
    })
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
