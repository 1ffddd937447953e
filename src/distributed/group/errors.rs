//! c10d's failures sorted into the [`DistError`] that says what to check.
use std::ptr::NonNull;
use std::time::Duration;

use crate::distributed::ffi::{self, ShimError};
use crate::distributed::{Backend, DistError};

/// A handle the shim returned with success: never null, unless the shim is broken, which is
/// then an error rather than a crash.
pub(super) fn non_null<T>(
    raw: *mut T,
    rank: usize,
    op: &'static str,
) -> Result<NonNull<T>, DistError> {
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
pub(super) fn store_error(
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
pub(super) fn classify(
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
