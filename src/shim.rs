//! The calling convention of the crate's C++ shims (`csrc/c10d_shim.cpp` for
//! [`crate::distributed`], `csrc/inference_shim.cpp` for [`crate::inference`]): every entry
//! point that can fail returns a status (0: success) and, on failure, stores a message it
//! allocated with `malloc` in an error out-pointer.
use std::ffi::{c_char, c_int, CStr};

/// The status and message of a failed shim call.
#[derive(Debug)]
pub(crate) struct ShimError {
    pub status: c_int,
    pub message: String,
}

/// Calls `f` with an error out-pointer; turns a non-zero status into a [`ShimError`] with the
/// shim's message (freed here).
pub(crate) fn call(f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), ShimError> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let status = f(&mut err);
    if status == 0 {
        return Ok(());
    }
    let message = if err.is_null() {
        "(no message)".to_string()
    } else {
        // SAFETY: the shim stores a malloc'd, NUL-terminated string, freed right after.
        let m = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `err` was allocated by the shim with malloc, is no longer read, and is freed
        // once.
        unsafe { libc::free(err.cast()) };
        m
    };
    Err(ShimError { status, message })
}
