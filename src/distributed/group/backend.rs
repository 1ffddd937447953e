//! The c10d backends of a group (Gloo, NCCL), created on its store.
use std::ffi::{c_int, CStr, CString};
use std::time::Duration;

use super::errors::{classify, non_null};
use super::store::prefixed;
use super::{Group, Store};
use crate::distributed::{ffi, Backend, DistError};

/// Creates a c10d backend on `store` (under its own key prefix); Gloo binds `gloo_host`
/// (`None`: torch.distributed's choice).
pub(super) fn create_backend(
    store: &Store,
    backend: Backend,
    rank: usize,
    world_size: usize,
    timeout: Duration,
    gloo_host: Option<CString>,
) -> Result<Group, DistError> {
    let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let op = "set up the process group";
    let prefix = match backend {
        Backend::Gloo => c"gloo",
        Backend::Nccl => c"nccl",
    };
    let sub = prefixed(store, prefix).map_err(|e| classify(e, rank, op, backend, timeout))?;
    let (rank_c, world_c) = (rank as c_int, world_size as c_int);
    let mut raw = std::ptr::null_mut();
    let host = gloo_host.as_deref().map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY (both backends): `sub` is live during the call (the backend takes its own
    // reference to it), `host` is null or a NUL-terminated string that outlives the call, and
    // `raw` a valid out-pointer.
    let created = match backend {
        Backend::Gloo => ffi::call(|err| unsafe {
            ffi::rx_group_gloo_create(
                sub.0.as_ptr(),
                rank_c,
                world_c,
                timeout_ms,
                host,
                &mut raw,
                err,
            )
        }),
        #[cfg(feature = "nccl")]
        Backend::Nccl => ffi::call(|err| unsafe {
            ffi::rx_group_nccl_create(sub.0.as_ptr(), rank_c, world_c, timeout_ms, &mut raw, err)
        }),
        #[cfg(not(feature = "nccl"))]
        Backend::Nccl => return Err(DistError::NcclUnavailable),
    };
    created.map_err(|e| classify(e, rank, op, backend, timeout))?;
    // The backend holds its own reference to the (prefixed) store; `sub` can go.
    Ok(Group(non_null(raw, rank, op)?))
}
