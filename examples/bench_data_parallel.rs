//! Data-parallel speed on this machine: the same global batch trained by one process with N
//! threads and by N processes (Gloo, one thread each, gradients averaged in buckets), with the
//! time of the gradient all-reduce per step (the communication share).
//!
//! ```text
//! cargo run --release --example bench_data_parallel -- --model tiny --batch 128 --steps 30
//! ```
//!
//! Every configuration trains the same model from the same weights on random CIFAR-sized
//! images (no data pipeline: the step alone), channels-last, SGD with momentum, after warm-up
//! steps, in fresh processes. The two configurations alternate round by round (`--rounds`)
//! and the table gives the medians, so that drifts of a shared machine hit both alike.
use std::cell::Cell;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use resnext::distributed::{DistEnv, GradientBuckets, ProcessGroup};
use resnext::layout::vars_to_channels_last;
use resnext::trainer::{Execution, Sgd, SgdConfig, TrainConfig, TrainStep};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug, Clone)]
#[command(about = "One process with N threads against N processes of one thread")]
struct Args {
    /// Model preset.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Global batch (split evenly between the processes).
    #[arg(long, default_value_t = 128)]
    batch: i64,
    /// Timed steps per configuration (after 3 warm-up steps).
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Processes (and threads of the single process).
    #[arg(long, default_value_t = 2)]
    nproc: usize,
    /// Rounds of both configurations, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// What one process measured: mean seconds per step, and per all-reduce of the gradients.
#[derive(Clone, Copy)]
struct Timing {
    step: f64,
    /// In the step: the all-reduce calls, waiting for the slower rank included.
    all_reduce: f64,
    /// The same all-reduce of every gradient alone, the ranks in step (after a barrier).
    transfer: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let (Ok(rank), Ok(world)) = (std::env::var("BENCH_RANK"), std::env::var("BENCH_WORLD")) {
        return rank_main(&args, rank.parse()?, world.parse()?);
    }
    if args.batch % args.nproc as i64 != 0 {
        bail!(
            "--batch {} does not split into {} processes",
            args.batch,
            args.nproc
        );
    }
    let n = args.nproc;
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        one.push(launch_ranks(1)?);
        many.push(launch_ranks(n)?);
        eprintln!(
            "round {}: {:.1} / {:.1} ms a step",
            round + 1,
            1e3 * one[round].step,
            1e3 * many[round].step
        );
    }
    let (one, many) = (median(one), median(many));
    println!(
        "{} on the CPU, global batch {}, {} timed steps, 32x32 images, medians of {} rounds",
        args.model, args.batch, args.steps, args.rounds
    );
    println!("| configuration | images/s | ms/step | all-reduce ms/step (waits included) | share of the step | all-reduce alone, ms |");
    println!("|---|---|---|---|---|---|");
    row(&format!("1 process x {n} threads"), &args, &one);
    row(&format!("{n} processes x 1 thread"), &args, &many);
    println!(
        "\n{n} processes / 1 process: {:.2}x images/s",
        one.step / many.step
    );
    for (name, t) in [("resnext-rs-1proc", one), ("resnext-rs-ddp", many)] {
        println!(
            "RESULT {{\"impl\": \"{name}\", \"model\": \"{}\", \"batch\": {}, \"images_per_sec\": {}, \"all_reduce_alone_ms\": {}}}",
            args.model,
            args.batch,
            args.batch as f64 / t.step,
            1e3 * t.transfer
        );
    }
    Ok(())
}

/// The timing of the median step time.
fn median(mut v: Vec<Timing>) -> Timing {
    v.sort_by(|a, b| a.step.total_cmp(&b.step));
    v[v.len() / 2]
}

fn row(name: &str, args: &Args, t: &Timing) {
    println!(
        "| {name} | {:.0} | {:.1} | {:.2} | {:.1}% | {:.2} |",
        args.batch as f64 / t.step,
        1e3 * t.step,
        1e3 * t.all_reduce,
        100.0 * t.all_reduce / t.step,
        1e3 * t.transfer
    );
}

/// Starts `world` ranks of this program with the same arguments (one process with `--nproc`
/// threads when `world` is 1) and returns rank 0's timing (the ranks wait for each other every step, so their
/// step times agree).
fn launch_ranks(world: usize) -> Result<Timing> {
    let rendezvous = resnext::distributed::LocalRendezvous::new()?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("BENCH_RANK", rank.to_string())
            .env("BENCH_WORLD", world.to_string())
            .env("BENCH_RENDEZVOUS", rendezvous.path())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a rank")?;
        children.push(child);
    }
    let mut timing = None;
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("rank {rank} failed: {}", out.status);
        }
        let text = String::from_utf8(out.stdout)?;
        let v: Vec<f64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if rank == 0 {
            timing = Some(Timing {
                step: v[0],
                all_reduce: v[1],
                transfer: v[2],
            });
        }
    }
    timing.context("no rank 0")
}

/// One rank: a one-thread process training its part of the global batch, or (`world` 1) one
/// process with `args.nproc` threads training all of it.
fn rank_main(args: &Args, rank: usize, world: usize) -> Result<()> {
    resnext::memory::keep_freed_memory();
    let t = if world == 1 {
        tch::set_num_threads(args.nproc as i32);
        train_steps(args, args.batch, None)?
    } else {
        tch::set_num_threads(1);
        let dir = std::path::PathBuf::from(std::env::var("BENCH_RENDEZVOUS")?);
        let env = DistEnv::local(rank, world, &dir);
        let group = ProcessGroup::from_dist_env(&env, Duration::from_secs(120))?;
        train_steps(args, args.batch / world as i64, Some(group))?
    };
    println!("{} {} {}", t.step, t.all_reduce, t.transfer);
    Ok(())
}

/// Times `args.steps` training steps on batches of `batch`, averaging the gradients over
/// `group` when there is one.
fn train_steps(args: &Args, batch: i64, group: Option<ProcessGroup>) -> Result<Timing> {
    let device = Device::Cpu;
    tch::manual_seed(1);
    let vs = nn::VarStore::new(device);
    let cfg = ResNeXtConfig::from_name(&args.model, 10)?;
    let net = ResNeXt::try_new(&vs.root(), &cfg)?;
    vars_to_channels_last(&vs)?;
    let mut sgd = Sgd::new(&vs, SgdConfig::default());
    let train = TrainConfig::default();
    let mut step = TrainStep::new(Execution::new(&train, device), 0.0);
    let reduced = Rc::new(Cell::new(0.0f64));
    let group = group.map(Rc::new);
    if let Some(group) = &group {
        let mut buckets = GradientBuckets::new(sgd.parameters())?;
        let reduced = Rc::clone(&reduced);
        let group = Rc::clone(group);
        step.set_gradient_reducer(Box::new(move |params| {
            let start = Instant::now();
            buckets.average(&group, params)?;
            reduced.set(reduced.get() + start.elapsed().as_secs_f64());
            Ok(())
        }));
    }
    let images = Tensor::randn([batch, 3, 32, 32], (Kind::Float, device));
    let labels = Tensor::randint(10, [batch], (Kind::Int64, device));
    for _ in 0..3 {
        step.run(&net, &mut sgd, &mut None, &images, &labels, 0.01)?;
    }
    reduced.set(0.0);
    let start = Instant::now();
    for _ in 0..args.steps {
        step.run(&net, &mut sgd, &mut None, &images, &labels, 0.01)?;
    }
    let steps = args.steps as f64;
    let step_time = start.elapsed().as_secs_f64() / steps;
    let transfer = match &group {
        Some(group) => all_reduce_alone(group, sgd.parameters(), args.steps)?,
        None => 0.0,
    };
    Ok(Timing {
        step: step_time,
        all_reduce: reduced.get() / steps,
        transfer,
    })
}

/// Mean seconds of averaging the gradients of `params` over `group`, `times` times back to
/// back after a barrier: the communication alone.
fn all_reduce_alone(
    group: &ProcessGroup,
    params: &[(String, Tensor)],
    times: usize,
) -> Result<f64> {
    let mut buckets = GradientBuckets::new(params)?;
    buckets.average(group, params)?;
    group.barrier()?;
    let start = Instant::now();
    for _ in 0..times {
        buckets.average(group, params)?;
    }
    Ok(start.elapsed().as_secs_f64() / times as f64)
}
