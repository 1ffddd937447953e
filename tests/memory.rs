//! `memory::keep_freed_memory`: freed tensor memory is reused without page faults.
//!
//! Its own test binary without libtest's harness (`harness = false` in Cargo.toml): the setting
//! is process-wide, and it is about the main thread's heap, which libtest's test threads would
//! not use (a thread's heap is chosen at its first allocation).
use resnext::memory::{keep_freed_memory, MALLOC_ENV};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage.ru_minflt
    }
}

/// Page faults per training step (forward, backward) of `net` on `xs`, over `steps` steps
/// after two warm-up steps.
fn faults_per_step(net: &ResNeXt, vs: &nn::VarStore, xs: &Tensor, steps: i64) -> i64 {
    let step = || {
        vs.variables().into_values().for_each(|mut v| v.zero_grad());
        net.forward_t(xs, true).sum(Kind::Float).backward();
    };
    step();
    step();
    let before = minor_faults();
    for _ in 0..steps {
        step();
    }
    (minor_faults() - before) / steps
}

fn main() {
    if MALLOC_ENV.iter().any(|v| std::env::var_os(v).is_some()) {
        assert!(
            !keep_freed_memory(),
            "a MALLOC_* variable is set: the user's choice wins"
        );
        println!("memory: a MALLOC_* variable is set, keep_freed_memory left the allocator alone");
        return;
    }
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    let xs = Tensor::randn([64, 3, 32, 32], (Kind::Float, Device::Cpu));
    // glibc's default: multi-megabyte activations are fresh mmaps, faulted in every step.
    let default = faults_per_step(&net, &vs, &xs, 3);
    assert!(keep_freed_memory(), "mallopt refused the settings");
    let kept = faults_per_step(&net, &vs, &xs, 3);
    println!("memory: page faults per tiny training step: {default} by default, {kept} kept");
    assert!(
        default > 1000,
        "{default} page faults a step with glibc's default settings"
    );
    assert!(
        kept * 10 < default,
        "{kept} page faults a step after keep_freed_memory, {default} before"
    );
}
