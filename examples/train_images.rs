//! Trains (or fine-tunes) a ResNeXt on a folder of your own JPEG/PNG images.
//!
//! ```text
//! # DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg, as torchvision's ImageFolder
//! cargo run --release --example train_images -- --data-dir DIR --epochs 30
//! # fine-tune torchvision's weights (a .pth state dict or safetensors), classifier only
//! cargo run --release --example train_images -- --data-dir DIR --pretrained resnext50_32x4d.pth \
//!     --freeze-backbone --epochs 5 --lr 0.01
//! # one folder of class folders: hold 10% of each class out for validation
//! cargo run --release --example train_images -- --data-dir DIR --val-fraction 0.1
//! cargo run --release --example train_images -- --resume runs/resnext50_32x4d-seed1
//! cargo run --release --example train_images -- --data-dir DIR --nproc 2   # 2 processes
//! ```
//!
//! Images are made `--image-size` pixels square: above 64 with torchvision's ImageNet
//! transforms (`RandomResizedCrop` + flip for training, resize to size/0.875 + centre crop for
//! validation) and the ImageNet stem; up to 64 as CIFAR (pictures at that size; pad 4, random
//! crop, flip) with the CIFAR stem. Normalisation is ImageNet's. A pretrained file fixes the
//! stem itself. The number of classes is the number of class folders. Everything else (flags,
//! run directory, Ctrl-C, exit codes) is as `train_cifar10`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use resnext::data::{
    DataError, FolderSplit, ImageFolder, ImageFolderOptions, Recipe, IMAGENET_NORMALIZATION,
};
use resnext::trainer::{DataLocation, TrainConfig, TrainError, Trainer};
use resnext::{ResNeXt, Stem};

mod common;
use common::{exit_code, exit_with, open_trainer, print_config, start, train, Start, TrainFlags};

#[derive(Parser, Debug)]
#[command(
    about = "Train or fine-tune a ResNeXt on a folder of JPEG/PNG images (DIR/train/<class>/, DIR/val/<class>/)",
    after_help = "Settings: --recipe (default cifar: the defaults) < --config FILE < flags. Outputs go to the run directory \
                  (--out): config.json, metrics.jsonl, curves.svg, summary.json, \
                  checkpoint.safetensors, last.safetensors, best.safetensors (with the model \
                  and class names inside, for predict), bad_images.txt with --skip-bad-images."
)]
struct Args {
    /// Folder with train/ and val/ class folders (or class folders, with --val-fraction)
    /// [with --resume: the folder the run was trained from].
    #[arg(
        long,
        required_unless_present = "resume",
        help_heading = "Image folders"
    )]
    data_dir: Option<PathBuf>,
    /// With a --data-dir of class folders only: the fraction of each class held out for
    /// validation (seeded by --seed).
    #[arg(
        long,
        value_name = "F",
        conflicts_with = "resume",
        help_heading = "Image folders"
    )]
    val_fraction: Option<f64>,
    /// Side of the square network input, in pixels [default: 224].
    #[arg(long, value_name = "PIXELS", conflicts_with = "resume",
          value_parser = clap::value_parser!(u32).range(8..=4096),
        help_heading = "Image folders"
    )]
    image_size: Option<u32>,
    /// Threads decoding and augmenting images [default: one per core].
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        hide_default_value = true,
        help_heading = "Image folders"
    )]
    workers: usize,
    /// Keep decoded images in memory after the first epoch (for datasets that fit in RAM).
    #[arg(long, help_heading = "Image folders")]
    cache: bool,
    /// Leave out files that do not decode (listed in the run's bad_images.txt) instead of
    /// stopping at the first one. Decodes every file once at start.
    #[arg(long, conflicts_with = "resume", help_heading = "Image folders")]
    skip_bad_images: bool,
    #[command(flatten)]
    train: TrainFlags,
}

/// The run's configuration: the defaults, `--config`, the flags, then what the folder and
/// the image size decide (classes, stem, normalisation).
fn new_config(args: &Args, classes: usize) -> Result<TrainConfig, TrainError> {
    let mut cfg = args.train.config(TrainConfig::default())?;
    let size = args.image_size.unwrap_or(224);
    cfg.image_size = i64::from(size);
    cfg.num_classes = classes as i64;
    cfg.normalization = IMAGENET_NORMALIZATION;
    cfg.stem = Some(match Recipe::for_size(size) {
        Recipe::ImageNet { .. } => Stem::ImageNet,
        Recipe::Small { .. } => Stem::Cifar,
    });
    // The ImageNet transforms take only the default crop settings: a usage error now rather
    // than at the first batch.
    Recipe::for_size(size)
        .check_crop(&cfg.crop_flip())
        .map_err(|e| match e {
            DataError::InvalidConfig {
                field,
                value,
                expected,
            } => TrainError::InvalidConfig {
                field,
                value,
                expected,
            },
            e => TrainError::from(e),
        })?;
    let dir = args.data_dir.as_deref().map(absolute);
    cfg.data = DataLocation {
        dir,
        val_fraction: args.val_fraction,
        skip_bad_images: args.skip_bad_images,
        ..DataLocation::default()
    };
    Ok(cfg)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The training and validation folders the run `cfg` describes.
fn open_folders(cfg: &TrainConfig, args: &Args) -> Result<(ImageFolder, ImageFolder)> {
    let Some(dir) = cfg.data.dir.clone() else {
        bail!("the run records no data folder: pass --data-dir DIR");
    };
    let size = u32::try_from(cfg.image_size).context("image size")?;
    let options = ImageFolderOptions {
        workers: args.workers,
        cache: args.cache,
        skip_bad_images: cfg.data.skip_bad_images,
        ..ImageFolderOptions::new(Recipe::for_size(size))
    };
    let split = FolderSplit {
        val_fraction: cfg.data.val_fraction,
        seed: cfg.seed,
        limit_train: cfg.limit_train,
        limit_test: cfg.limit_test,
    };
    ImageFolder::open_splits(&dir, &options, &split).map_err(|e| match e {
        e @ DataError::MissingSplit { .. } => {
            anyhow!("{e}; pass --val-fraction 0.1 to hold out 10% of each class")
        }
        e => {
            anyhow::Error::new(e).context(format!("reading the image folders of {}", dir.display()))
        }
    })
}

/// Says what was found, and writes the list of left-out files into the run directory.
fn report_folders(train: &ImageFolder, val: &ImageFolder, run_dir: Option<&Path>) -> Result<()> {
    let (t, v) = (train.index(), val.index());
    let ignored = t.ignored.hidden + t.ignored.other + v.ignored.hidden + v.ignored.other;
    eprintln!(
        "images: {} training, {} validation, {} classes ({}{}); {} other files ignored",
        t.samples.len(),
        v.samples.len(),
        t.classes.len(),
        t.classes
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if t.classes.len() > 5 { ", …" } else { "" },
        ignored,
    );
    let bad: Vec<_> = train.bad_images().iter().chain(val.bad_images()).collect();
    if bad.is_empty() {
        return Ok(());
    }
    let list: String = bad
        .iter()
        .map(|(path, why)| format!("{}\t{why}\n", path.display()))
        .collect();
    let mut where_ = String::new();
    if let Some(dir) = run_dir {
        let path = dir.join("bad_images.txt");
        resnext::io::write_atomic(&path, list.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        where_ = format!(" (listed in {})", path.display());
    }
    eprintln!(
        "warning: {} images do not decode and are left out{where_}",
        bad.len()
    );
    Ok(())
}

/// The number of class folders of the data the flags name (before the trainer exists).
fn count_classes(args: &Args) -> Result<usize> {
    let dir = args.data_dir.clone().context("--data-dir is required")?;
    let root = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        dir.clone()
    };
    let index = resnext::data::FolderIndex::scan(&root)
        .with_context(|| format!("reading the class folders of {}", dir.display()))?;
    Ok(index.classes.len())
}

fn run(args: Args) -> Result<ExitCode> {
    // Decode workers allocate and free a picture-sized buffer per image; glibc would hand
    // each back to the system and page-fault it in again (benches/image_loader.sh: 1.2-1.3x
    // loader throughput when kept). Process-wide, so called here, first, on every device.
    resnext::memory::keep_freed_memory();
    let rank = match start(&args.train)? {
        Start::Launched(code) => return Ok(code),
        Start::Train(rank) => rank,
    };
    let classes = match args.train.resume {
        Some(_) => 0,
        None => count_classes(&args)?,
    };
    let config = || new_config(&args, classes);
    if args.train.print_config {
        return print_config(config());
    }
    let mut trainer: Trainer<ResNeXt> = match open_trainer(&args.train, config, rank) {
        Ok(t) => t,
        Err(e) => return Ok(exit_with(e)),
    };
    if let (Some(dir), Some(_)) = (&args.data_dir, &args.train.resume) {
        let mut location = trainer.state().config.data.clone();
        location.dir = Some(absolute(dir));
        trainer.relocate_data(location);
    }
    let cfg = trainer.state().config.clone();
    let (train_set, val_set) = open_folders(&cfg, &args)?;
    if trainer.rank() == 0 {
        report_folders(&train_set, &val_set, trainer.run_dir())?;
    }
    let data = resnext::data::DataSplits::new(train_set, val_set);
    train(trainer, &data, args.train.quiet)
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}
