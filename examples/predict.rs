//! Classifies images with ResNeXt weights: a `.safetensors` file written by this crate (a run's
//! `best.safetensors` or `last.safetensors`) or a `state_dict` saved by PyTorch with
//! `safetensors.torch.save_file(model.state_dict(), path)`.
//!
//! ```text
//! cargo run --release --example predict -- --weights runs/resnext50_32x4d-seed1/best.safetensors cat.png dog.jpg
//! cargo run --release --example predict -- --weights tv.safetensors --imagenet --labels imagenet.txt photo.jpg
//! ```
//!
//! The stem and the number of classes are read from the weights (`conv1.weight`, `fc.weight`)
//! unless `--imagenet`/`--cifar` or `--classes` say otherwise. Images (PNG or JPEG, any size)
//! are prepared as the model was trained: CIFAR stem: resized to 32x32 and normalised with the
//! crate's CIFAR-10 mean and std; ImageNet stem: torchvision's evaluation transform (shorter side
//! resized to 256, bilinear; 224x224 centre crop; ImageNet mean and std). Prints the top classes
//! with their probabilities. A file that cannot be read or decoded is reported and skipped; the
//! exit code is 0 when every image was classified, 1 otherwise.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use image::imageops::FilterType;
use image::{ImageReader, RgbImage};
use resnext::data::{Normalization, CLASS_NAMES};
use resnext::resnext::MODEL_NAMES;
use resnext::weights::{config_from_weights, load_model, LoadOptions};
use resnext::{ResNeXt, Stem};
use tch::{Device, Kind, Tensor};

/// ImageNet's per-channel mean and standard deviation (torchvision's pretrained models).
const IMAGENET_NORM: Normalization = Normalization {
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

#[derive(Parser, Debug)]
#[command(about = "Classify PNG/JPEG images with ResNeXt weights (ours or PyTorch's safetensors)")]
struct Args {
    /// The weights: a safetensors state_dict with torchvision's names.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Model configuration.
    #[arg(long, default_value = "resnext50_32x4d",
          value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: String,
    /// ImageNet stem (7x7 conv and max-pool; 224x224 inputs) [default: read from the weights].
    #[arg(long)]
    imagenet: bool,
    /// CIFAR stem (3x3 conv; 32x32 inputs) [default: read from the weights].
    #[arg(long, conflicts_with = "imagenet")]
    cifar: bool,
    /// Number of classes [default: read from the weights].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    classes: Option<i64>,
    /// Class names, one per line, in class order [default: CIFAR-10's names for 10 classes,
    /// else class indices].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// How many of the most probable classes to print.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top: usize,
    /// Device: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// The images (PNG or JPEG, any size).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => bail!("unknown device `{s}`; expected auto, cpu, cuda or cuda:N"),
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count().max(0) as usize;
        if n >= count {
            bail!("device `{s}` is not available ({count} CUDA device(s) found)");
        }
    }
    Ok(device)
}

/// Class names: from `--labels`, CIFAR-10's for 10 classes, else the indices.
fn class_names(labels: Option<&Path>, classes: i64) -> Result<Vec<String>> {
    let Some(path) = labels else {
        return Ok(if classes == CLASS_NAMES.len() as i64 {
            CLASS_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            (0..classes).map(|i| i.to_string()).collect()
        });
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the labels file {}", path.display()))?;
    let names: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if names.len() as i64 != classes {
        bail!(
            "{} has {} labels but the model has {classes} classes",
            path.display(),
            names.len()
        );
    }
    Ok(names)
}

/// Reads an image, finding its format from its content (not its name).
fn read_image(path: &Path) -> Result<RgbImage> {
    let img = ImageReader::open(path)
        .context("cannot open the file")?
        .with_guessed_format()
        .context("cannot read the file")?
        .decode()
        .map_err(|e| anyhow!("not a PNG or JPEG image (or a damaged one): {e}"))?;
    if img.width() == 0 || img.height() == 0 {
        bail!("the image is empty");
    }
    Ok(img.to_rgb8())
}

/// The `[1, 3, H, W]` input for `stem`: resized (and cropped) as at training time, on the 0..1
/// scale, normalised per channel.
fn preprocess(img: &RgbImage, stem: Stem) -> Result<Tensor> {
    let (img, norm) = match stem {
        Stem::Cifar => (
            image::imageops::resize(img, 32, 32, FilterType::Triangle),
            Normalization::default(),
        ),
        Stem::ImageNet => {
            // torchvision: Resize(256) (shorter side, bilinear, antialiased), CenterCrop(224) (whose
            // offsets Python rounds half to even).
            let (w, h) = img.dimensions();
            let (short, long) = (w.min(h) as u64, w.max(h) as u64);
            if long > 100 * short {
                // The resized image would be 256 pixels by more than 25,600.
                bail!("a {w}x{h} image is too elongated to resize to 256 pixels on its short side");
            }
            let long = ((256 * long) / short).max(256) as u32;
            let (nw, nh) = if w <= h { (256, long) } else { (long, 256) };
            let resized = image::imageops::resize(img, nw, nh, FilterType::Triangle);
            let left = ((nw - 224) as f64 / 2.0).round_ties_even() as u32;
            let top = ((nh - 224) as f64 / 2.0).round_ties_even() as u32;
            let crop = image::imageops::crop_imm(&resized, left, top, 224, 224).to_image();
            (crop, IMAGENET_NORM)
        }
    };
    let (w, h) = img.dimensions();
    let mean = Tensor::from_slice(&norm.mean).view([3, 1, 1]);
    let std = Tensor::from_slice(&norm.std).view([3, 1, 1]);
    let x = Tensor::from_slice(img.as_raw())
        .f_view([h as i64, w as i64, 3])?
        .f_permute([2, 0, 1])?
        .f_to_kind(Kind::Float)?
        / 255.0;
    Ok(((x - mean) / std).unsqueeze(0))
}

/// Classifies one image: the `top` classes with their probabilities.
fn classify(net: &ResNeXt, device: Device, path: &Path, top: usize) -> Result<Vec<(usize, f64)>> {
    let img = read_image(path)?;
    let x = preprocess(&img, net.config().stem)?.f_to_device(device)?;
    let probs = tch::no_grad(|| net.try_forward_t(&x, false))?
        .f_softmax(-1, Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_view([-1])?;
    let probs = Vec::<f32>::try_from(&probs)?;
    let mut ranked: Vec<(usize, f64)> = probs
        .iter()
        .enumerate()
        .map(|(i, &p)| (i, p as f64))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top);
    Ok(ranked)
}

fn run(args: Args) -> Result<ExitCode> {
    let device = parse_device(&args.device)?;
    let mut config = config_from_weights(&args.model, &args.weights)
        .with_context(|| format!("reading the weights {}", args.weights.display()))?;
    if args.imagenet {
        config.stem = Stem::ImageNet;
    }
    if args.cifar {
        config.stem = Stem::Cifar;
    }
    if let Some(c) = args.classes {
        config.num_classes = c;
    }
    let loaded = load_model(&config, &args.weights, device, LoadOptions::default())
        .with_context(|| format!("loading the weights {}", args.weights.display()))?;
    eprintln!(
        "{}: {} ({:?} stem, {} classes) on {device:?}, {} tensors loaded",
        args.weights.display(),
        config.name,
        config.stem,
        config.num_classes,
        loaded.report.loaded
    );
    if !loaded.report.unexpected.is_empty() {
        eprintln!(
            "warning: {} tensor(s) in the file are not part of the model and were ignored: {}",
            loaded.report.unexpected.len(),
            loaded.report.unexpected.join(", ")
        );
    }
    let names = class_names(args.labels.as_deref(), config.num_classes)?;
    let width = names.iter().map(|n| n.len()).max().unwrap_or(1);

    let mut failed = 0;
    for path in &args.images {
        match classify(&loaded.model, device, path, args.top) {
            Ok(ranked) => {
                println!("{}:", path.display());
                for (rank, (class, p)) in ranked.iter().enumerate() {
                    let name = names.get(*class).map_or("?", String::as_str);
                    println!("  {}. {name:<width$}  {:6.2}%", rank + 1, 100.0 * p);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!(
                    "error: {}: {}",
                    path.display(),
                    resnext::error_report(e.as_ref())
                );
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} image(s) could not be classified",
            args.images.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
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
