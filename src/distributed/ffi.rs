//! The C ABI of `csrc/c10d_shim.cpp` (see `csrc/c10d_shim.h`), compiled and linked by build.rs.
use std::ffi::{c_char, c_int, c_void};

pub(crate) use crate::shim::{call, ShimError};

/// Opaque `rx_store`.
#[repr(C)]
pub(crate) struct RxStore {
    _private: [u8; 0],
}

/// Opaque `rx_group`.
#[repr(C)]
pub(crate) struct RxGroup {
    _private: [u8; 0],
}

pub(crate) const RX_ERR_NETWORK: c_int = 1;
// 2: c10::DistStoreError, 3: c10::DistBackendError, 4: other c10::Error (see csrc/c10d_shim.h);
// told apart by their messages in group/errors.rs.
/// Any other exception (and, on the Rust side, a shim call that returned no handle).
pub(crate) const RX_ERR_OTHER: c_int = 5;

pub(crate) const RX_OP_SUM: c_int = 0;
pub(crate) const RX_OP_AVG: c_int = 1;

extern "C" {
    pub(crate) fn rx_store_create(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        listen_fd: c_int,
        world_size: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut RxStore,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_store_create_file(
        path: *const c_char,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut RxStore,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_store_prefixed(
        base: *mut RxStore,
        prefix: *const c_char,
        out: *mut *mut RxStore,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_store_destroy(store: *mut RxStore);
    pub(crate) fn rx_group_gloo_create(
        store: *mut RxStore,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        host: *const c_char,
        out: *mut *mut RxGroup,
        err: *mut *mut c_char,
    ) -> c_int;
    #[cfg(feature = "nccl")]
    pub(crate) fn rx_group_nccl_create(
        store: *mut RxStore,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut RxGroup,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_group_destroy(group: *mut RxGroup);
    pub(crate) fn rx_group_all_reduce(
        group: *mut RxGroup,
        tensor: *mut c_void,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_group_broadcast(
        group: *mut RxGroup,
        tensor: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_group_all_gather(
        group: *mut RxGroup,
        input: *const c_void,
        outputs: *const *mut c_void,
        n_outputs: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn rx_group_barrier(group: *mut RxGroup, err: *mut *mut c_char) -> c_int;
}
