//! Helpers of the tests that run several processes of their own binary as the ranks of a
//! process group (tests/distributed.rs, tests/distributed_trainer.rs): the binary re-executes
//! itself with `RESNEXT_DIST_ROLE` naming what a child does and the torchrun variables.
#![allow(dead_code)]
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resnext::distributed::DistEnv;

/// The `main` of such a test binary: a child (`ROLE` set) runs `child(role)` on one thread and
/// exits 0 when its checks pass; the parent runs the `tests` whose name contains one of the
/// arguments (all without arguments), one after another.
pub fn main(
    binary: &str,
    tests: &[(&str, fn())],
    child: fn(&str) -> Result<(), Box<dyn std::error::Error>>,
) {
    if let Ok(role) = std::env::var(ROLE) {
        tch::set_num_threads(1);
        let code = match child(&role) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rank {:?} role {role}: FAILED: {e}", std::env::var("RANK"));
                1
            }
        };
        std::process::exit(code);
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let start = Instant::now();
        eprintln!("test {name} ...");
        test();
        eprintln!(
            "test {name} ... ok ({:.1} s)",
            start.elapsed().as_secs_f64()
        );
        ran += 1;
    }
    eprintln!("{binary}: {ran} tests passed");
}

/// The variable naming a child's role.
pub const ROLE: &str = "RESNEXT_DIST_ROLE";
/// The collective timeout a child uses, in milliseconds.
pub const TIMEOUT_MS: &str = "RESNEXT_DIST_TIMEOUT_MS";

pub fn free_port() -> u16 {
    resnext::distributed::free_local_port().unwrap()
}

/// Starts `world_size` children running `role`, with the torchrun variables and `timeout`.
pub fn spawn_ranks(role: &str, world_size: usize, timeout: Duration) -> Vec<Child> {
    spawn_ranks_with(role, world_size, timeout, &[])
}

/// As [`spawn_ranks`], with extra environment variables for every child.
pub fn spawn_ranks_with(
    role: &str,
    world_size: usize,
    timeout: Duration,
    env: &[(&str, String)],
) -> Vec<Child> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    (0..world_size)
        .map(|rank| {
            Command::new(&exe)
                .env(ROLE, role)
                .envs(DistEnv::local(rank, world_size, port).vars())
                .env(TIMEOUT_MS, timeout.as_millis().to_string())
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits for `child` at most `limit`; kills it and panics past that.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn child_timeout() -> Duration {
    Duration::from_millis(std::env::var(TIMEOUT_MS).unwrap().parse().unwrap())
}
