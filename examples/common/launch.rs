//! Data-parallel runs of the training programs: the built-in single-machine launcher
//! (`--nproc N`) and joining the process group of a launched rank (ours or torchrun's).
use std::ffi::OsString;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use resnext::distributed::{DistEnv, LocalRendezvous, ProcessGroup};

use super::Usage;

/// How long the other ranks get to exit after one failed, before they are killed.
const GRACE: Duration = Duration::from_secs(10);

/// The process group of this process when it was started as a rank of a data-parallel run
/// (`WORLD_SIZE` > 1 in the environment, as torchrun and `--nproc` set it); `None` otherwise.
pub fn join_group(timeout: Duration) -> Result<Option<ProcessGroup>> {
    let env = DistEnv::from_env().context("reading the torchrun variables")?;
    match env {
        Some(env) if env.world_size > 1 => {
            let group = ProcessGroup::from_dist_env(&env, timeout).with_context(|| {
                format!(
                    "joining the data-parallel run as rank {} of {}",
                    env.rank, env.world_size
                )
            })?;
            Ok(Some(group))
        }
        _ => Ok(None),
    }
}

/// Whether this process is itself a launched rank (so `--nproc` must not launch again).
pub fn is_rank() -> bool {
    std::env::var_os("WORLD_SIZE").is_some()
}

/// Runs this program `nproc` times on this machine as the ranks of one data-parallel run,
/// with the torchrun variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`) and,
/// instead of `MASTER_ADDR` / `MASTER_PORT`, `RESNEXT_RENDEZVOUS_DIR`: a private directory
/// (mode 0700, removed at the end) in which the ranks meet through a c10d `FileStore`, so the
/// rendezvous has no network socket and no port to choose, and Gloo binds 127.0.0.1 only.
/// The same arguments but `--nproc`, and the CPU's threads shared between the ranks
/// (`OMP_NUM_THREADS`, unless set). Ctrl-C is
/// passed on to every rank (each saves its checkpoint at the same batch); when one rank fails,
/// the others are stopped (SIGTERM, then SIGKILL after 10 s) and its exit code is returned;
/// when the launcher itself dies, every rank gets SIGTERM.
pub fn launch_local(nproc: usize) -> Result<ExitCode> {
    let rendezvous =
        LocalRendezvous::new().context("creating a private directory for the rendezvous")?;
    let exe = std::env::current_exe().context("finding this program's path")?;
    let args = args_without_nproc(std::env::args_os().skip(1));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let omp = std::env::var("OMP_NUM_THREADS").unwrap_or((threads / nproc).max(1).to_string());
    eprintln!(
        "launching {nproc} processes (rendezvous in {}, Gloo on 127.0.0.1, {omp} thread(s) each)",
        rendezvous.path().display()
    );
    let mut children = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .envs(rendezvous.env(rank, nproc).vars())
            .env("OMP_NUM_THREADS", &omp);
        // Its own process group: a terminal's Ctrl-C reaches the launcher only, which passes
        // it on once to every rank.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe. A rank gets SIGTERM when the launcher dies, even by
        // SIGKILL, so no rank is left training alone.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    forward_ctrl_c(children.iter().map(Child::id).collect())?;
    let code = supervise(children);
    // Every rank has exited: the directory (and its store file) can go.
    drop(rendezvous);
    code
}

/// The arguments without `--nproc N` / `--nproc=N`.
fn args_without_nproc(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip_value = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// Sends SIGINT to every rank on each Ctrl-C the launcher gets.
fn forward_ctrl_c(pids: Vec<u32>) -> Result<()> {
    let first = Arc::new(AtomicBool::new(true));
    ctrlc::set_handler(move || {
        if first.swap(false, Ordering::SeqCst) {
            eprintln!(
                "\nCtrl-C: passed on to every rank (they save a checkpoint at the same batch)"
            );
        }
        for &pid in &pids {
            // SAFETY: kill(2) with a PID this process started and a valid signal number.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        }
    })
    .context("installing the Ctrl-C handler")
}

/// Waits for every rank; when one fails, stops the others. The exit code: 0 when all
/// succeeded, else the first failure's (130 when they were stopped by Ctrl-C).
fn supervise(mut children: Vec<Child>) -> Result<ExitCode> {
    let mut codes: Vec<Option<ExitStatus>> = vec![None; children.len()];
    while codes.iter().any(Option::is_none) {
        for (rank, child) in children.iter_mut().enumerate() {
            if codes[rank].is_some() {
                continue;
            }
            if let Some(status) = child.try_wait().context("waiting for a rank")? {
                codes[rank] = Some(status);
                if !status.success() && status.code() != Some(130) {
                    eprintln!("rank {rank} failed ({status}): stopping the other ranks");
                    stop_all(&mut children);
                    return Ok(exit_code_of(status));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(codes
        .into_iter()
        .flatten()
        .find(|s| !s.success())
        .map_or(ExitCode::SUCCESS, exit_code_of))
}

/// SIGTERM to every rank still running, SIGKILL to those left after [`GRACE`].
fn stop_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) with a PID this process started and a valid signal number.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let start = Instant::now();
    for child in children.iter_mut() {
        while let Ok(None) = child.try_wait() {
            if start.elapsed() > GRACE {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn exit_code_of(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    }
}

/// Checks a `--nproc` value: at least 1, and not inside a launched rank.
pub fn check_nproc(nproc: usize) -> Result<()> {
    if nproc == 0 {
        return Err(Usage("--nproc must be at least 1".into()).into());
    }
    if nproc > 1 && is_rank() {
        return Err(Usage(
            "--nproc cannot be used inside a launched rank (WORLD_SIZE is set): use one launcher, torchrun or --nproc".into(),
        )
        .into());
    }
    Ok(())
}
