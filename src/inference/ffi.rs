//! The C ABI of `csrc/inference_shim.cpp`: libtorch's fused oneDNN convolutions
//! (`mkldnn::_convolution_pointwise`), found through the dispatcher at run time.
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use tch::{TchError, Tensor};

use crate::resnext::ConvSpec;

extern "C" {
    fn rx_infer_fused_available() -> c_int;
    fn rx_infer_conv(
        x: *const c_void,
        weight: *const c_void,
        bias: *const c_void,
        padding: *const i64,
        stride: *const i64,
        dilation: *const i64,
        groups: i64,
        attr: *const c_char,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rx_infer_conv_add_(
        other: *mut c_void,
        x: *const c_void,
        weight: *const c_void,
        bias: *const c_void,
        padding: *const i64,
        stride: *const i64,
        dilation: *const i64,
        groups: i64,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Whether this libtorch registers the fused convolution operators (asked once).
pub(super) fn fused_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    // SAFETY: a dispatcher lookup without arguments; it catches nothing and throws nothing.
    *AVAILABLE.get_or_init(|| unsafe { rx_infer_fused_available() } != 0)
}

/// The post-operation fused into [`conv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Post {
    None,
    Relu,
}

/// A shim call's failure as a [`TchError`] with libtorch's message.
fn call(f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), TchError> {
    crate::shim::call(f).map_err(|e| TchError::Torch(format!("fused convolution: {}", e.message)))
}

/// `conv2d(x, weight, bias)` with `post` fused in; `weight` prepacked (or dense).
pub(super) fn conv(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: &ConvSpec,
    post: Post,
) -> Result<Tensor, TchError> {
    let attr = match post {
        Post::None => c"none",
        Post::Relu => c"relu",
    };
    let (padding, stride, dilation) = ([spec.padding; 2], [spec.stride; 2], [1i64; 2]);
    let mut out: *mut c_void = std::ptr::null_mut();
    call(|err| {
        // SAFETY: the tensors are live `at::Tensor*` (tch's C_tensor) borrowed for the call; the
        // arrays hold two values each, as the shim reads; `out` receives a new `at::Tensor*`.
        unsafe {
            rx_infer_conv(
                x.as_ptr() as *const c_void,
                weight.as_ptr() as *const c_void,
                bias.as_ptr() as *const c_void,
                padding.as_ptr(),
                stride.as_ptr(),
                dilation.as_ptr(),
                spec.groups,
                attr.as_ptr(),
                &mut out,
                err,
            )
        }
    })?;
    if out.is_null() {
        return Err(TchError::Torch(
            "fused convolution returned no tensor".into(),
        ));
    }
    // SAFETY: `out` is a tensor allocated by the shim with `new at::Tensor`, owned from here on
    // (tch frees it on drop).
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// `other += conv2d(x, weight, bias)` in place; `other` has the output's shape, kind and memory
/// format.
pub(super) fn conv_add_(
    other: &mut Tensor,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: &ConvSpec,
) -> Result<(), TchError> {
    let (padding, stride, dilation) = ([spec.padding; 2], [spec.stride; 2], [1i64; 2]);
    call(|err| {
        // SAFETY: as in `conv`; `other` is borrowed mutably, and the shim writes into its data.
        unsafe {
            rx_infer_conv_add_(
                other.as_mut_ptr() as *mut c_void,
                x.as_ptr() as *const c_void,
                weight.as_ptr() as *const c_void,
                bias.as_ptr() as *const c_void,
                padding.as_ptr(),
                stride.as_ptr(),
                dilation.as_ptr(),
                spec.groups,
                err,
            )
        }
    })
}
