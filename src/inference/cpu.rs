//! Which CPU this is, as far as the choice of [`Kernels::Auto`](super::Kernels::Auto) needs it.

/// Whether the CPU is Intel's (CPUID vendor `GenuineIntel`); `false` on other x86-64 vendors
/// and on other architectures.
///
/// The generic kernels' 1x1 convolutions are MKL matrix products, and MKL takes its best
/// paths on Intel CPUs only; on the others oneDNN's convolutions were measured faster.
pub(super) fn is_intel() -> bool {
    vendor().as_deref() == Some("GenuineIntel")
}

/// The CPUID vendor string (`GenuineIntel`, `AuthenticAMD`, ...), `None` off x86-64.
#[cfg(target_arch = "x86_64")]
fn vendor() -> Option<String> {
    // SAFETY: CPUID leaf 0 (the vendor and the highest leaf) exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    let bytes: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The CPUID vendor string, `None` off x86-64.
#[cfg(not(target_arch = "x86_64"))]
fn vendor() -> Option<String> {
    None
}
