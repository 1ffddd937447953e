//! Trains a ResNeXt on CIFAR-10 (the main job of this crate).
//!
//! ```text
//! cargo run --release --example train_cifar10 -- --download                     # ResNeXt-50, 200 epochs
//! cargo run --release --example train_cifar10 -- --model tiny --epochs 5        # a quick CPU run
//! cargo run --release --example train_cifar10 -- --resume runs/tiny-seed1       # continue a run
//! ```
//!
//! Settings come from the defaults, then `--config FILE` (JSON), then the flags given. Bad values
//! exit with code 2 and a message listing what is valid; Ctrl-C saves a checkpoint at the next
//! batch boundary and exits with code 130 (a second Ctrl-C exits at once).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::Parser;
use resnext::data::{ensure_cifar10, Cifar10, DownloadOptions};
use resnext::resnext::MODEL_NAMES;
use resnext::trainer::{
    DataLocation, Outcome, ProgressMode, TrainConfig, TrainError, Trainer, PRECISION_NAMES,
    SCHEDULE_NAMES,
};

#[derive(Parser, Debug)]
#[command(
    about = "Train a ResNeXt on CIFAR-10",
    after_help = "Settings: defaults < --config FILE < flags. Outputs go to the run directory \
                  (--out): config.json, metrics.jsonl, curves.svg, summary.json, \
                  checkpoint.safetensors, last.safetensors, best.safetensors."
)]
struct Args {
    /// Root folder holding cifar-10-batches-bin/ (or the folder of the .bin files)
    /// [default: data; with --resume, the folder the run was trained from].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Download CIFAR-10 into --data-dir when it is not there (MD5 checked).
    #[arg(long)]
    download: bool,
    /// Download from this URL, file:// URL or path instead of the official one.
    #[arg(long, value_name = "URL", requires = "download")]
    data_url: Option<String>,
    /// Expected MD5 of the archive at --data-url.
    #[arg(long, value_name = "HEX", requires = "download")]
    data_md5: Option<String>,
    /// Model configuration.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: Option<String>,
    /// Number of epochs [default: 200].
    #[arg(long)]
    epochs: Option<usize>,
    /// Training batch size [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// SGD momentum [default: 0.9].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Weight decay [default: 5e-4].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Learning-rate schedule [default: cosine].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCHEDULE_NAMES))]
    schedule: Option<String>,
    /// Epochs of linear warm-up [default: 0].
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Label smoothing of the loss, in [0, 1) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    label_smoothing: Option<f64>,
    /// Seed of initialisation, shuffling and augmentation [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N [default: auto = CUDA when available].
    #[arg(long)]
    device: Option<String>,
    /// Forward/backward precision: auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRECISION_NAMES))]
    precision: Option<String>,
    /// Channels-last weights and inputs: auto (on), on, off.
    #[arg(long, value_parser = ["auto", "on", "off"])]
    channels_last: Option<String>,
    /// Run directory [default: runs/<model>-seed<seed>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory with the configuration saved there.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = [
        "model", "epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov",
        "schedule", "warmup_epochs", "label_smoothing", "seed", "out", "limit_train",
        "limit_test", "eval_every", "config", "precision", "channels_last",
    ])]
    resume: Option<PathBuf>,
    /// Train on the first N training images only.
    #[arg(long, value_name = "N")]
    limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N")]
    limit_test: Option<usize>,
    /// Evaluate every N epochs (and after the last) [default: 1].
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// JSON configuration file (a TrainConfig; flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No progress bar, only one line per epoch.
    #[arg(long)]
    quiet: bool,
}

/// Defaults, then the config file, then the flags.
fn resolve_config(args: &Args) -> Result<TrainConfig, TrainError> {
    let mut cfg = match &args.config {
        Some(path) => TrainConfig::from_file(path)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = &args.$field { cfg.$field = v.clone(); } )* };
    }
    set!(
        model,
        epochs,
        batch_size,
        lr,
        momentum,
        weight_decay,
        warmup_epochs,
        label_smoothing
    );
    set!(seed, device, eval_every);
    if let Some(s) = &args.schedule {
        cfg.schedule = s.parse()?;
    }
    if let Some(p) = &args.precision {
        cfg.precision = p.parse().map_err(|expected| TrainError::InvalidConfig {
            field: "precision",
            value: p.clone(),
            expected,
        })?;
    }
    if let Some(c) = &args.channels_last {
        cfg.channels_last = match c.as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        };
    }
    if args.nesterov {
        cfg.nesterov = true;
    }
    if args.limit_train.is_some() {
        cfg.limit_train = args.limit_train;
    }
    if args.limit_test.is_some() {
        cfg.limit_test = args.limit_test;
    }
    cfg.data = data_location(args, &DataLocation::default());
    cfg.validate()?;
    cfg.resolve_device()?;
    Ok(cfg)
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

/// Builds the trainer; `Err(Ok(e))` is a usage error (exit 2), `Err(Err(e))` any other.
fn make_trainer(args: &Args) -> Result<Trainer<resnext::ResNeXt>, Result<TrainError, TrainError>> {
    let usage = |e: TrainError| match e {
        e @ (TrainError::InvalidConfig { .. }
        | TrainError::ConfigJson { .. }
        | TrainError::DeviceUnavailable { .. }
        | TrainError::RunExists { .. }) => Ok(e),
        e => Err(e),
    };
    match &args.resume {
        Some(dir) => {
            let mut trainer = Trainer::resume(dir, args.device.as_deref()).map_err(usage)?;
            let location = data_location(args, &trainer.state().config.data);
            if location != trainer.state().config.data {
                trainer.relocate_data(location);
            }
            Ok(trainer)
        }
        None => {
            let cfg = resolve_config(args).map_err(usage)?;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("runs/{}-seed{}", cfg.model, cfg.seed)));
            Trainer::resnext(cfg)
                .and_then(|t| t.with_run_dir(&out))
                .map_err(usage)
        }
    }
}

/// Loads CIFAR-10 from `location`, downloading it first when its source is recorded (or
/// `--download` was given) and it is missing.
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

/// What to do about `e` with this program's options, if it is a fix the user makes here.
fn cli_hint(e: &TrainError) -> Option<String> {
    match e {
        TrainError::DeviceUnavailable { .. } => Some("use --device cpu".into()),
        TrainError::RunExists { path } => Some(format!(
            "resume it with --resume {}, or choose another --out",
            path.display()
        )),
        TrainError::Diverged { .. } => Some("try a lower --lr or some --warmup-epochs".into()),
        TrainError::OutOfMemory { .. } => Some("try a smaller --batch-size".into()),
        TrainError::TensorFile(resnext::io::IoError::Locked { .. }) => {
            Some("let that run finish, or stop it (Ctrl-C), before resuming here".into())
        }
        _ => None,
    }
}

/// `e` as one line, with the command-line hint when there is one.
fn describe(e: &TrainError) -> String {
    let report = resnext::error_report(e);
    match cli_hint(e) {
        Some(hint) => format!("{report}; {hint}"),
        None => report,
    }
}

fn run(args: Args) -> Result<ExitCode> {
    let mut trainer = match make_trainer(&args) {
        Ok(t) => t,
        Err(Ok(usage)) => {
            eprintln!("error: {}", describe(&usage));
            return Ok(ExitCode::from(2));
        }
        Err(Err(e)) => {
            eprintln!("error: {}", describe(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    let dir = trainer.run_dir().map(PathBuf::from).unwrap_or_default();
    trainer.set_progress(if args.quiet {
        ProgressMode::Lines
    } else {
        ProgressMode::Auto
    });
    let location = trainer.state().config.data.clone();
    let data = load_data(&location, args.resume.is_some(), args.quiet)?
        .splits(trainer.device())
        .context("preparing CIFAR-10 for training")?;

    let stop = trainer.stop_flag();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting now, without a checkpoint of this epoch");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: saving a checkpoint at the next batch (Ctrl-C again to quit at once)");
    })
    .context("installing the Ctrl-C handler")?;

    let outcome = match trainer.fit(&data) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    match outcome {
        Outcome::Completed(_) => {
            println!("outputs in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::AlreadyComplete => {
            println!(
                "the run in {} is already complete ({} epochs); its files are up to date, see its summary.json",
                dir.display(),
                trainer.state().config.epochs
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Stopped { saved, .. } => {
            if saved {
                println!("continue with --resume {}", dir.display());
            }
            Ok(ExitCode::from(130))
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", resnext::error_report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
