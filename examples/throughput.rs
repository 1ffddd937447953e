//! Training throughput and a short training run through the real trainer, for any device.
//! Used by `scripts/device-check.sh` on a GPU machine (built here, carried there), and runnable
//! on the CPU.
//!
//! ```text
//! # images/s of training steps over a grid of batch sizes, precisions and layouts
//! throughput speed --model resnext50_32x4d --device cuda --batch 128,256,512 \
//!     --precision fp32,bf16 --channels-last off,on --images 10240
//! # the same through data-parallel training in a one-process group (NCCL on CUDA: built with
//! # --features nccl; Gloo on the CPU), to measure what the collectives cost
//! throughput speed --model resnext50_32x4d --device cuda --batch 256 --precision bf16 \
//!     --data-parallel
//! # a few epochs on CIFAR-format record files of any length (train.bin, test.bin)
//! throughput subset --dir cifar-subset --epochs 5 --device cuda
//! ```
//!
//! `speed` trains two epochs of `--images` synthetic images per setting and reports the second
//! (the first includes cuDNN autotuning and allocator warm-up). One JSON line per setting goes
//! to stdout, prefixed `RESULT `, for scripts.
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use resnext::data::{Cifar10, CLASS_NAMES, RECORD_BYTES};
use resnext::distributed::{ProcessGroup, DEFAULT_TIMEOUT};
use resnext::trainer::{Outcome, Precision, ProgressMode, TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Training throughput and short runs through the resnext trainer")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Training images/s over a grid of settings, on synthetic data.
    Speed {
        /// Model configuration name.
        #[arg(long, default_value = "resnext50_32x4d")]
        model: String,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "128")]
        batch: Vec<usize>,
        /// Precisions (fp32, bf16, fp16), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "fp32")]
        precision: Vec<String>,
        /// Channels-last settings (off, on), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "on")]
        channels_last: Vec<String>,
        /// Synthetic training images per epoch.
        #[arg(long, default_value_t = 10240)]
        images: usize,
        /// Train every setting as rank 0 of a one-process data-parallel group (gradients
        /// all-reduced every step: NCCL on CUDA, Gloo on the CPU).
        #[arg(long)]
        data_parallel: bool,
    },
    /// A short training run on CIFAR-format record files `train.bin` and `test.bin` in a folder.
    Subset {
        /// Folder with train.bin and test.bin (records of 1 label byte + 3072 pixel bytes).
        #[arg(long)]
        dir: PathBuf,
        /// Model configuration name.
        #[arg(long, default_value = "resnext50_32x4d")]
        model: String,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Epochs.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
        /// Batch size.
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Base learning rate.
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
    },
}

/// Reads CIFAR-format records (any number of them) into uint8 images and int64 labels.
fn read_records(path: &Path) -> Result<(Tensor, Tensor)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        !bytes.is_empty() && bytes.len() % RECORD_BYTES == 0,
        "{}: {} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR records",
        path.display(),
        bytes.len()
    );
    if let Some(i) = bytes.chunks(RECORD_BYTES).position(|r| r[0] > 9) {
        bail!(
            "{}: record {i} has label {} (expected 0..=9)",
            path.display(),
            bytes[i * RECORD_BYTES]
        );
    }
    let n = (bytes.len() / RECORD_BYTES) as i64;
    let all = Tensor::from_slice(&bytes).view([n, RECORD_BYTES as i64]);
    let labels = all.narrow(1, 0, 1).squeeze_dim(1).to_kind(Kind::Int64);
    let images = all.narrow(1, 1, 3072).contiguous().view([n, 3, 32, 32]);
    Ok((images, labels))
}

fn fit(
    cfg: TrainConfig,
    data: &Cifar10,
    progress: ProgressMode,
    group: Option<ProcessGroup>,
) -> Result<resnext::trainer::Trainer<resnext::ResNeXt>> {
    let mut trainer = Trainer::resnext(cfg)?;
    if let Some(group) = group {
        trainer = trainer.data_parallel(group)?;
    }
    trainer.set_progress(progress);
    let splits = data.splits(trainer.device())?;
    match trainer.fit(&splits)? {
        Outcome::Completed(_) => Ok(trainer),
        other => bail!("training did not complete: {other:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn speed(
    model: &str,
    device: &str,
    batches: &[usize],
    precisions: &[String],
    layouts: &[String],
    images: usize,
    data_parallel: bool,
) -> Result<()> {
    let n = images as i64;
    tch::manual_seed(0);
    let dev = TrainConfig {
        device: device.into(),
        ..TrainConfig::default()
    }
    .resolve_device()?;
    let gflops = resnext::ResNeXtConfig::from_name(model, 10)?.forward_flops(32, 32) as f64 / 1e9;
    let data = Cifar10::from_tensors(
        Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
        Tensor::randint(10, [n], (Kind::Int64, Device::Cpu)),
        Tensor::randint(256, [512, 3, 32, 32], (Kind::Uint8, Device::Cpu)),
        Tensor::randint(10, [512], (Kind::Int64, Device::Cpu)),
        CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    )?;
    let how = match data_parallel {
        true => ", as a one-process data-parallel group",
        false => "",
    };
    println!(
        "{model} training on {dev:?}{how}, {images} synthetic images per epoch, 2 epochs per setting"
    );
    println!(
        "{:>6} {:>9} {:>13} {:>10} {:>9}",
        "batch", "precision", "channels-last", "images/s", "TFLOP/s"
    );
    for &batch in batches {
        for p in precisions {
            let precision: Precision = p.parse().map_err(anyhow::Error::msg)?;
            for l in layouts {
                let cl = match l.as_str() {
                    "on" => true,
                    "off" => false,
                    other => bail!("--channels-last takes on or off, not {other}"),
                };
                let cfg = TrainConfig {
                    model: model.into(),
                    epochs: 2,
                    batch_size: batch,
                    device: device.into(),
                    precision,
                    channels_last: Some(cl),
                    eval_every: 2,
                    ..TrainConfig::default()
                };
                let group = (data_parallel)
                    .then(|| ProcessGroup::single(DEFAULT_TIMEOUT))
                    .transpose()?;
                let trainer = fit(cfg, &data, ProgressMode::Silent, group)?;
                let rate = trainer.state().metrics[1].train_images_per_sec;
                let tflops = rate * gflops * 3.0 / 1e3;
                println!("{batch:>6} {p:>9} {l:>13} {rate:>10.0} {tflops:>9.1}");
                println!(
                    "RESULT {}",
                    serde_json::json!({"impl": if data_parallel { "resnext-rs-ddp" } else { "resnext-rs" },
                        "model": model, "batch": batch,
                        "precision": p, "channels_last": cl, "images_per_sec": rate,
                        "tflops": tflops, "device": format!("{dev:?}"),
                        "data_parallel": data_parallel})
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn subset(
    dir: &Path,
    model: &str,
    device: &str,
    epochs: usize,
    batch: usize,
    lr: f64,
) -> Result<()> {
    let (train_images, train_labels) = read_records(&dir.join("train.bin"))?;
    let (test_images, test_labels) = read_records(&dir.join("test.bin"))?;
    println!(
        "training {model} for {epochs} epochs on {} CIFAR-10 images, testing on {}",
        train_images.size()[0],
        test_images.size()[0]
    );
    let data = Cifar10::from_tensors(
        train_images,
        train_labels,
        test_images,
        test_labels,
        CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    )?;
    let cfg = TrainConfig {
        model: model.into(),
        epochs,
        batch_size: batch,
        lr,
        device: device.into(),
        ..TrainConfig::default()
    };
    let trainer = fit(cfg, &data, ProgressMode::Lines, None)?;
    let last = trainer.state().metrics.last().context("no epoch ran")?;
    println!(
        "RESULT {}",
        serde_json::json!({"subset_epochs": epochs, "test_acc": last.test_acc,
            "train_images_per_sec": last.train_images_per_sec})
    );
    Ok(())
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Speed {
            model,
            device,
            batch,
            precision,
            channels_last,
            images,
            data_parallel,
        } => speed(
            &model,
            &device,
            &batch,
            &precision,
            &channels_last,
            images,
            data_parallel,
        ),
        Command::Subset {
            dir,
            model,
            device,
            epochs,
            batch,
            lr,
        } => subset(&dir, &model, &device, epochs, batch, lr),
    }
}
