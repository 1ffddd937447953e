//! Helpers of the tests that run several processes of their own binary as the ranks of a
//! process group (tests/distributed.rs, tests/distributed_trainer.rs): the binary re-executes
//! itself with `RESNEXT_DIST_ROLE` naming what a child does and the torchrun variables (with
//! the private rendezvous directory of the `--nproc` launcher), and reads which TCP sockets
//! the children listen on.
#![allow(dead_code)]
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resnext::distributed::{DistEnv, LocalRendezvous};

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

/// A TCP port of 127.0.0.1 that was free a moment ago, for tests where a race does no harm
/// (connecting to a store that is not there, a rank that never comes).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The children of one launch and their private rendezvous directory (removed when dropped,
/// after the children: keep it until they have exited).
pub struct Ranks {
    pub children: Vec<Child>,
    pub rendezvous: LocalRendezvous,
}

impl Deref for Ranks {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.children
    }
}

impl DerefMut for Ranks {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.children
    }
}

/// Starts `world_size` children running `role`, as the `--nproc` launcher does (the torchrun
/// variables and a private rendezvous directory), with `timeout`.
pub fn spawn_ranks(role: &str, world_size: usize, timeout: Duration) -> Ranks {
    spawn_ranks_with(role, world_size, timeout, &[])
}

/// As [`spawn_ranks`], with extra environment variables for every child.
pub fn spawn_ranks_with(
    role: &str,
    world_size: usize,
    timeout: Duration,
    env: &[(&str, String)],
) -> Ranks {
    let rendezvous = LocalRendezvous::new().unwrap();
    let places: Vec<DistEnv> = (0..world_size)
        .map(|rank| rendezvous.env(rank, world_size))
        .collect();
    let children = spawn_places(role, &places, timeout, env);
    Ranks {
        children,
        rendezvous,
    }
}

/// Starts one child running `role` for each place of `places` (any rendezvous), with
/// `timeout` and the extra variables `env`.
pub fn spawn_places(
    role: &str,
    places: &[DistEnv],
    timeout: Duration,
    env: &[(&str, String)],
) -> Vec<Child> {
    let exe = std::env::current_exe().unwrap();
    places
        .iter()
        .map(|place| {
            Command::new(&exe)
                .env(ROLE, role)
                .env_remove("GLOO_SOCKET_IFNAME")
                .envs(place.vars())
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

/// A TCP socket in the LISTEN state held by process `pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    pub pid: u32,
    pub addr: SocketAddr,
    /// The socket's inode (`/proc/<pid>/fd/* -> socket:[inode]`).
    pub inode: u64,
}

/// The TCP sockets that the processes `pids` listen on, read from `/proc/net/tcp{,6}` (every
/// socket of this network namespace, with its inode) and `/proc/<pid>/fd` (whose sockets are
/// whose). A process that has exited holds none.
pub fn listening_sockets(pids: &[u32]) -> Vec<Listening> {
    let mut rows = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // `st` 0A is TCP_LISTEN.
            if f.len() >= 10 && f[3] == "0A" {
                rows.push((kernel_endpoint(f[1]), f[9].parse::<u64>().unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    for &pid in pids {
        let inodes = socket_inodes(pid);
        for (addr, inode) in &rows {
            if inodes.contains(inode) {
                out.push(Listening {
                    pid,
                    addr: *addr,
                    inode: *inode,
                });
            }
        }
    }
    out
}

/// The inodes of the sockets of process `pid` (none once it has exited).
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// `ADDR:PORT` of `/proc/net/tcp{,6}`: native-endian 32-bit words in hex, then the port.
fn kernel_endpoint(text: &str) -> SocketAddr {
    let (addr, port) = text.split_once(':').unwrap();
    let bytes: Vec<u8> = (0..addr.len())
        .step_by(8)
        .flat_map(|i| {
            u32::from_str_radix(&addr[i..i + 8], 16)
                .unwrap()
                .to_ne_bytes()
        })
        .collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap())),
        _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap())),
    };
    SocketAddr::new(ip, u16::from_str_radix(port, 16).unwrap())
}

/// Polls `listening_sockets(pids)` until `enough` accepts it or `limit` passes.
pub fn wait_for_listening(
    pids: &[u32],
    limit: Duration,
    enough: impl Fn(&[Listening]) -> bool,
) -> Vec<Listening> {
    let start = Instant::now();
    loop {
        let found = listening_sockets(pids);
        if enough(&found) || start.elapsed() > limit {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the file `path` exists, at most `limit`; whether it does.
pub fn wait_for_file(path: &std::path::Path, limit: Duration) -> bool {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
