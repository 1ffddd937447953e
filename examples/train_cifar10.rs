//! Trains a ResNeXt on CIFAR-10 (the main job of this crate).
//!
//! ```text
//! cargo run --release --example train_cifar10 -- --download                     # ResNeXt-50, 200 epochs
//! cargo run --release --example train_cifar10 -- --model tiny --epochs 5        # a quick CPU run
//! cargo run --release --example train_cifar10 -- --resume runs/tiny-seed1       # continue a run
//! cargo run --release --example train_cifar10 -- --model tiny --nproc 2         # 2 processes
//! cargo run --release --example train_cifar10 -- --pretrained w.safetensors --epochs 30 --lr 0.01
//! ```
//!
//! Settings come from the defaults, then `--config FILE` (JSON), then the flags given. Bad values
//! exit with code 2 and a message listing what is valid; Ctrl-C saves a checkpoint at the next
//! batch boundary and exits with code 130 (a second Ctrl-C exits at once).
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use resnext::data::{ensure_cifar10, Cifar10, DownloadOptions};
use resnext::trainer::{DataLocation, TrainConfig};

mod common;
use common::{exit_code, exit_with, open_trainer, print_config, start, train, Start, TrainFlags};

#[derive(Parser, Debug)]
#[command(
    about = "Train a ResNeXt on CIFAR-10",
    after_help = "Settings: --recipe (default cifar: the defaults) < --config FILE < flags. Outputs go to the run directory \
                  (--out): config.json, metrics.jsonl, curves.svg, summary.json, \
                  checkpoint.safetensors, last.safetensors, best.safetensors."
)]
struct Args {
    /// Root folder holding cifar-10-batches-bin/ (or the folder of the .bin files)
    /// [default: data; with --resume, the folder the run was trained from].
    #[arg(long, help_heading = "CIFAR-10 data")]
    data_dir: Option<PathBuf>,
    /// Download CIFAR-10 into --data-dir when it is not there (MD5 checked).
    #[arg(long, help_heading = "CIFAR-10 data")]
    download: bool,
    /// Download from this URL, file:// URL or path instead of the official one.
    #[arg(
        long,
        value_name = "URL",
        requires = "download",
        help_heading = "CIFAR-10 data"
    )]
    data_url: Option<String>,
    /// Expected MD5 of the archive at --data-url.
    #[arg(
        long,
        value_name = "HEX",
        requires = "download",
        help_heading = "CIFAR-10 data"
    )]
    data_md5: Option<String>,
    #[command(flatten)]
    train: TrainFlags,
}

/// Where the data is: `saved` (a resumed run's record, or nothing), with the flags given
/// over it. The folder is made absolute, so that the record holds from any directory.
fn data_location(args: &Args, saved: &DataLocation) -> DataLocation {
    let dir = (args.data_dir.clone())
        .or_else(|| saved.dir.clone())
        .unwrap_or_else(|| PathBuf::from("data"));
    let mut location = DataLocation {
        dir: Some(std::path::absolute(&dir).unwrap_or(dir)),
        ..saved.clone()
    };
    if args.download {
        let opts = DownloadOptions {
            url: args.data_url.clone().or(location.url.take()),
            md5: args.data_md5.clone().or(location.md5.take()),
            ..DownloadOptions::default()
        };
        location.url = Some(opts.resolved_url());
        location.md5 = opts.md5;
    }
    location
}

/// Loads CIFAR-10 from `location`, downloading it first when its source is recorded (or
/// `--download` was given) and it is missing (the ranks of a data-parallel run on one machine
/// download it once: `ensure_cifar10` lets one process at a time fetch into a folder).
fn load_data(location: &DataLocation, resumed: bool, quiet: bool) -> Result<Cifar10> {
    let root = location
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data"));
    let dir = match &location.url {
        Some(url) => {
            let opts = DownloadOptions {
                url: Some(url.clone()),
                md5: location.md5.clone(),
                quiet,
            };
            ensure_cifar10(&root, &opts).context("getting CIFAR-10")?
        }
        None => root,
    };
    let hint = if resumed {
        "the folder this run was trained from; pass --data-dir DIR if the data moved, or --download"
    } else {
        "add --download to fetch it"
    };
    Cifar10::load(&dir).with_context(|| format!("loading CIFAR-10 from {} ({hint})", dir.display()))
}

fn run(args: Args) -> Result<ExitCode> {
    let config = || {
        let mut cfg = args.train.config(TrainConfig::default())?;
        cfg.data = data_location(&args, &DataLocation::default());
        Ok(cfg)
    };
    if args.train.print_config {
        return print_config(config());
    }
    let rank = match start(&args.train)? {
        Start::Launched(code) => return Ok(code),
        Start::Train(rank) => rank,
    };
    let mut trainer = match open_trainer(&args.train, config, rank) {
        Ok(t) => t,
        Err(e) => return Ok(exit_with(e)),
    };
    let resumed = args.train.resume.is_some();
    if resumed {
        let location = data_location(&args, &trainer.state().config.data);
        if location != trainer.state().config.data {
            trainer.relocate_data(location);
        }
    }
    let location = trainer.state().config.data.clone();
    let quiet = args.train.quiet || trainer.rank() != 0;
    let data = load_data(&location, resumed, quiet)?
        .splits(trainer.device())
        .context("preparing CIFAR-10 for training")?;
    train(trainer, &data, args.train.quiet)
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}
