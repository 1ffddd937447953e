//! The Rust side of `benches/compare_pytorch.sh`: times forward passes and training steps of
//! this crate's models on request, so that a driver can alternate them with PyTorch's.
//!
//! It reads commands on stdin, one a line, and answers each on stdout with one line:
//!
//! * `setup ID eval|train MODEL BATCH VARIANT [cifar|imagenet SIZE]`: builds the workload
//!   (random weights, a random batch `[BATCH, 3, SIZE, SIZE]`; by default the CIFAR stem and
//!   32x32), runs it once as a warm-up, answers `ok`.
//!   Eval variants: `inference` ([`InferenceModel`], its default kernels), `inference-fused`
//!   (with [`Kernels::OneDnnFused`]), `inference-generic` (with [`Kernels::Generic`]),
//!   `plain` (`ResNeXt::forward_t(xs, false)` under `no_grad`, NCHW), `plain-cl` (the same with channels-last weights and input).
//!   Train variants (forward, cross-entropy, backward, [`Sgd`] step with momentum 0.9 and
//!   weight decay 5e-4): `nchw`, `cl` (channels-last weights and input).
//! * `run ID`: runs the workload once, answers the wall time in seconds;
//! * `run ID K`: runs it once untimed, then `K` times back to back, as a plain training loop
//!   does, and answers the mean wall time of those `K` in seconds;
//! * `drop ID`: frees it, answers `ok`;
//! * `quit`.
//!
//! Errors are answered as `error MESSAGE`. On the CPU it calls
//! [`resnext::memory::keep_freed_memory`] first, as the trainer does.
//!
//! ```text
//! cargo run --release --example bench_step -- --threads 2
//! ```
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use resnext::inference::{InferenceModel, Kernels};
use resnext::layout::{channels_last, vars_to_channels_last};
use resnext::trainer::{Sgd, SgdConfig};
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use tch::nn;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "Times ResNeXt workloads on request (the Rust side of compare_pytorch.sh)")]
struct Args {
    /// libtorch intra-op threads (use the same number on the PyTorch side).
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Device: `cpu`, `cuda`, `cuda:N` or `auto`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

enum Workload {
    Inference(InferenceModel, Tensor),
    Plain(ResNeXt, Tensor),
    Train {
        net: ResNeXt,
        sgd: Sgd,
        xs: Tensor,
        ys: Tensor,
    },
}

impl Workload {
    fn new(kind: &str, model: &str, batch: i64, variant: &str, input: Input) -> Result<Self> {
        let device = input.device;
        let cfg = ResNeXtConfig::from_name(model, 10)?.with_stem(input.stem);
        let vs = nn::VarStore::new(device);
        let net = ResNeXt::try_new(&vs.root(), &cfg)?;
        let xs = Tensor::randn([batch, 3, input.size, input.size], (Kind::Float, device));
        Ok(match (kind, variant) {
            ("eval", "inference") => Workload::Inference(InferenceModel::new(&net)?, xs),
            ("eval", "inference-fused") => Workload::Inference(
                InferenceModel::with_kernels(&net, Kernels::OneDnnFused)?,
                xs,
            ),
            ("eval", "inference-generic") => {
                Workload::Inference(InferenceModel::with_kernels(&net, Kernels::Generic)?, xs)
            }
            ("eval", "plain") => Workload::Plain(net, xs),
            ("eval", "plain-cl") => {
                vars_to_channels_last(&vs)?;
                Workload::Plain(net, channels_last(&xs)?)
            }
            ("train", "nchw" | "cl") => {
                let xs = if variant == "cl" {
                    vars_to_channels_last(&vs)?;
                    channels_last(&xs)?
                } else {
                    xs
                };
                let ys = Tensor::randint(10, [batch], (Kind::Int64, device));
                let sgd = Sgd::new(
                    &vs,
                    SgdConfig {
                        momentum: 0.9,
                        weight_decay: 5e-4,
                        nesterov: false,
                    },
                );
                Workload::Train { net, sgd, xs, ys }
            }
            _ => bail!("unknown workload {kind} {variant}"),
        })
    }

    /// Runs once; returns something computed from the output so that nothing is skipped.
    fn run(&mut self) -> Result<f64> {
        Ok(match self {
            Workload::Inference(model, xs) => model.try_forward(xs)?.f_sum(Kind::Float)?,
            Workload::Plain(net, xs) => {
                tch::no_grad(|| net.try_forward_t(xs, false))?.f_sum(Kind::Float)?
            }
            Workload::Train {
                net, sgd, xs, ys, ..
            } => {
                sgd.zero_grad();
                let loss = net.try_forward_t(xs, true)?.cross_entropy_for_logits(ys);
                loss.backward();
                sgd.step(0.01);
                loss
            }
        }
        .f_double_value(&[])?)
    }
}

/// The stem, image side and device of a workload.
#[derive(Clone, Copy)]
struct Input {
    stem: Stem,
    size: i64,
    device: Device,
}

impl Input {
    /// From the optional `cifar|imagenet SIZE` words of a `setup` line.
    fn parse(words: &[&str], device: Device) -> Result<Self> {
        let (stem, size) = match words {
            [] => (Stem::Cifar, 32),
            ["cifar", size] => (Stem::Cifar, size.parse().context("image size")?),
            ["imagenet", size] => (Stem::ImageNet, size.parse().context("image size")?),
            _ => bail!("expected `cifar SIZE` or `imagenet SIZE` after the variant"),
        };
        Ok(Input { stem, size, device })
    }
}

/// Runs `w` `untimed` times, then `timed` times back to back; answers the mean seconds of the
/// timed runs.
fn time_runs(w: &mut Workload, device: Device, untimed: u32, timed: u32) -> Result<String> {
    let sync = || {
        if device.is_cuda() {
            tch::Cuda::synchronize(0);
        }
    };
    for _ in 0..untimed {
        w.run()?;
    }
    sync();
    let t = Instant::now();
    let mut v = 0.0;
    for _ in 0..timed {
        v += w.run()?;
    }
    sync();
    let secs = t.elapsed().as_secs_f64() / f64::from(timed);
    if !v.is_finite() {
        bail!("non-finite output {v}");
    }
    Ok(format!("{secs}"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let device = resnext::device::parse_device(&args.device)?;
    if device == Device::Cpu {
        // As the trainer does on the CPU (a no-op when MALLOC_* variables are set).
        resnext::memory::keep_freed_memory();
    }
    tch::manual_seed(0);
    let mut workloads: HashMap<String, Workload> = HashMap::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["setup", id, kind, model, batch, variant, rest @ ..] => (|| -> Result<String> {
                let batch: i64 = batch.parse().context("batch size")?;
                let input = Input::parse(rest, device)?;
                let mut w = Workload::new(kind, model, batch, variant, input)?;
                w.run()?;
                workloads.insert(id.to_string(), w);
                Ok("ok".into())
            })(),
            ["run", id] => match workloads.get_mut(*id) {
                Some(w) => time_runs(w, device, 0, 1),
                None => Err(anyhow::anyhow!("unknown workload {id}")),
            },
            ["run", id, k] => match (workloads.get_mut(*id), k.parse::<u32>()) {
                (Some(w), Ok(k)) if k > 0 => time_runs(w, device, 1, k),
                (None, _) => Err(anyhow::anyhow!("unknown workload {id}")),
                _ => Err(anyhow::anyhow!("bad count `{k}`")),
            },
            ["drop", id] => {
                workloads.remove(*id);
                Ok("ok".into())
            }
            ["quit"] => break,
            _ => Err(anyhow::anyhow!("bad command `{line}`")),
        };
        match answer {
            Ok(a) => writeln!(out, "{a}")?,
            Err(e) => writeln!(out, "error {e:#}")?,
        }
        out.flush()?;
    }
    Ok(())
}
