//! Classifies images with ResNeXt weights: a `.safetensors` file written by this crate (a run's
//! `best.safetensors` or `last.safetensors`, of `train_cifar10` or any other trainer run), or
//! weights PyTorch saved: `safetensors.torch.save_file(model.state_dict(), path)`, or a `.pth`
//! (`torch.save` of a `state_dict`, a training checkpoint or a whole model, as
//! `resnext::weights::read_state_dict` reads it; torchvision's published files included).
//!
//! ```text
//! cargo run --release --example predict -- --weights runs/tiny-seed1/best.safetensors cat.png dog.jpg
//! cargo run --release --example predict -- --weights resnext50_32x4d-1a0047aa.pth --labels imagenet.txt photo.jpg
//! ```
//!
//! A run's weights need no other flag: they carry the model configuration, the class names,
//! the image size and the normalisation as metadata (see `resnext::weights::WeightsMetadata`).
//! A file without them (one PyTorch wrote) is matched by its tensors' names and shapes against
//! every preset, with the stem read from `conv1.weight` and the number of classes from
//! `fc.weight`; `--model` names the preset instead, and a file that does not fit it is refused
//! in a few lines (the first mismatching tensors, their counts, the preset the file fits).
//! `--imagenet`/`--cifar` and `--classes` override the stem and the number of classes.
//!
//! Images (PNG or JPEG, any size) are prepared as the model was trained, for an image size S
//! (the file's, else 32 for the CIFAR stem and 224 for the ImageNet stem), with the evaluation
//! transform of the training pipeline (`resnext::data::Recipe::for_size(S)`): up to 64 pixels
//! resized to SxS; above, torchvision's (shorter side resized to floor(S / 0.875), bilinear;
//! SxS centre crop). Then normalised with the file's mean and std,
//! else CIFAR-10's (CIFAR stem) or ImageNet's (ImageNet stem). Class names come from
//! `--labels`, else the file, else CIFAR-10's names for 10 classes, else the class indices.
//! Prints the top classes with their probabilities. A file that cannot be read or decoded is
//! reported and skipped; the exit code is 0 when every image was classified, 1 otherwise.
//!
//! `--compare-onnx model.onnx` (a model the `export` example wrote from the same weights) also
//! runs the prepared images through ONNX Runtime, and OpenVINO if it imports, with
//! `scripts/onnx/check.py`, and prints each engine's max relative difference to the crate's
//! logits; above 1e-4 the exit code is 1. It needs python3 with onnx and onnxruntime
//! (`eval "$(bash scripts/setup-onnx-deps.sh)"`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use image::RgbImage;
use resnext::data::{
    decode_rgb8, prepare, Draw, Normalization, Recipe, CLASS_NAMES, IMAGENET_NORMALIZATION,
    MAX_PIXELS,
};
use resnext::device::parse_device;
use resnext::inference::Tta;
use resnext::resnext::MODEL_NAMES;
use resnext::weights::{expected_shapes, LoadOptions, WeightsFile, WeightsMetadata};
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use tch::{Device, Kind, Tensor};

mod onnx_compare;

#[derive(Parser, Debug)]
#[command(
    about = "Classify PNG/JPEG images with ResNeXt weights (ours, or PyTorch's safetensors or .pth)"
)]
struct Args {
    /// The weights, with torchvision's names: safetensors, or a PyTorch .pth.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Model configuration [default: the file's metadata, else the preset whose tensors the
    /// file has].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: Option<String>,
    /// ImageNet stem (7x7 conv and max-pool; 224x224 inputs) [default: read from the weights].
    #[arg(long)]
    imagenet: bool,
    /// CIFAR stem (3x3 conv; 32x32 inputs) [default: read from the weights].
    #[arg(long, conflicts_with = "imagenet")]
    cifar: bool,
    /// Number of classes [default: read from the weights].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    classes: Option<i64>,
    /// Class names, one per line, in class order [default: the file's, else CIFAR-10's names
    /// for 10 classes, else class indices].
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// How many of the most probable classes to print.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top: usize,
    /// Device: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also run the prepared images through this ONNX model (written by the `export` example)
    /// in ONNX Runtime, and OpenVINO if it imports, and compare with the crate's logits (max
    /// relative difference at most 1e-4, else exit code 1). Needs python3 with onnx and
    /// onnxruntime: `eval "$(bash scripts/setup-onnx-deps.sh)"` sets PYTHONPATH for them.
    #[arg(long, value_name = "FILE", conflicts_with = "tta")]
    compare_onnx: Option<PathBuf>,
    /// Test-time augmentation: none, flip (average with the mirror image), flip-translate (also
    /// one-pixel shifts: 6 passes).
    #[arg(long, default_value = "none", value_parser = clap::builder::PossibleValuesParser::new(Tta::NAMES))]
    tta: String,
    /// The images (PNG or JPEG, any size).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// Class names: from `--labels`, the file's metadata, CIFAR-10's for 10 classes, else the
/// indices.
fn class_names(
    labels: Option<&Path>,
    meta: Option<&WeightsMetadata>,
    classes: i64,
) -> Result<Vec<String>> {
    let Some(path) = labels else {
        if let Some(meta) = meta.filter(|m| m.classes.len() as i64 == classes) {
            return Ok(meta.classes.clone());
        }
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

/// Reads an image (PNG or JPEG, any colour type, EXIF orientation applied) as the training
/// pipeline does.
fn read_image(path: &Path) -> Result<RgbImage> {
    let img = decode_rgb8(path, MAX_PIXELS)?;
    if img.width() == 0 || img.height() == 0 {
        bail!("the image is empty");
    }
    Ok(img)
}

/// How images are prepared for the network: side and normalisation.
#[derive(Debug, Clone, Copy)]
struct Prep {
    size: u32,
    norm: Normalization,
}

impl Prep {
    /// The file's image size and normalisation, else the stem's usual ones.
    fn new(stem: Stem, meta: Option<&WeightsMetadata>) -> Result<Self> {
        let (size, norm) = match (meta, stem) {
            (Some(m), _) => (m.image_size, m.normalization),
            (None, Stem::Cifar | Stem::Whitening) => (32, Normalization::default()),
            (None, Stem::ImageNet) => (224, IMAGENET_NORMALIZATION),
        };
        let size = u32::try_from(size)
            .ok()
            .filter(|s| (1..=8192).contains(s))
            .ok_or_else(|| {
                anyhow!("image size {size} in the weights' metadata; expected 1 to 8192")
            })?;
        Ok(Prep { size, norm })
    }
}

/// The `[1, 3, S, S]` input, prepared as the validation images of training were: the
/// evaluation transform of [`Recipe::for_size`] (resized to SxS up to 64 pixels; torchvision's
/// resize to S/0.875 and centre crop above), normalised per channel.
fn preprocess(img: &RgbImage, prep: &Prep) -> Result<Tensor> {
    let side = i64::from(prep.size);
    let mut out = vec![0f32; 3 * (side * side) as usize];
    prepare(
        img,
        Recipe::for_size(prep.size),
        Draw::None,
        &prep.norm.affine(),
        &mut out,
    )?;
    Ok(Tensor::from_slice(&out).view([1, 3, side, side]))
}

/// One classified image: the `top` classes with their probabilities, and (on the CPU) the
/// prepared input `[1, 3, S, S]` and the logits `[1, classes]`.
struct Classified {
    ranked: Vec<(usize, f64)>,
    input: Tensor,
    logits: Tensor,
}

/// Classifies one image.
fn classify(
    net: &ResNeXt,
    prep: &Prep,
    device: Device,
    path: &Path,
    top: usize,
    tta: Tta,
) -> Result<Classified> {
    let img = read_image(path)?;
    let input = preprocess(&img, prep)?;
    let x = input.f_to_device(device)?;
    let forward = |y: &Tensor| {
        net.try_forward_t(y, false)
            .map_err(|e| tch::TchError::Kind(e.to_string()))
    };
    let logits = tch::no_grad(|| tta.logits(&x, &forward))?.f_to_device(Device::Cpu)?;
    let probs = logits.f_softmax(-1, Kind::Float)?.f_view([-1])?;
    let probs = Vec::<f32>::try_from(&probs)?;
    let mut ranked: Vec<(usize, f64)> = probs
        .iter()
        .enumerate()
        .map(|(i, &p)| (i, p as f64))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(top);
    Ok(Classified {
        ranked,
        input,
        logits,
    })
}

/// `--compare-onnx`: the classified images through `model`, compared with the crate's logits;
/// false when an engine differs by more than [`onnx_compare::MAX_REL_DIFF`].
fn compare_onnx(model: &Path, inputs: &[Tensor], logits: &[Tensor]) -> Result<bool> {
    let diffs = onnx_compare::compare(
        model,
        &Tensor::f_cat(inputs, 0)?,
        &Tensor::f_cat(logits, 0)?,
    )?;
    let mut ok = true;
    for (engine, diff) in diffs {
        let within = diff <= onnx_compare::MAX_REL_DIFF;
        ok &= within;
        eprintln!(
            "{}: {engine} on {} image(s): max relative difference to the crate's logits {diff:.1e} ({})",
            model.display(),
            inputs.len(),
            if within { "ok, within 1e-4" } else { "ABOVE 1e-4" }
        );
    }
    Ok(ok)
}

/// The architecture of the weights: `--model` with the file's stem and classes, else the
/// file's metadata, else the preset whose tensors the file has; then the flags' overrides.
/// Also returns where it came from, for the first line printed.
fn model_config(
    args: &Args,
    file: &WeightsFile,
    meta: Option<&WeightsMetadata>,
) -> Result<(ResNeXtConfig, &'static str)> {
    let weights = &args.weights;
    let (mut config, source) = match (&args.model, meta) {
        (Some(name), _) => (file.config_for(name)?, "as --model says"),
        (None, Some(meta)) => (meta.model.clone(), "from the file's metadata"),
        (None, None) => match file.preset() {
            Some(config) => (config, "matched by the tensors' shapes"),
            None => bail!(
                "{}: the file has no model metadata and no preset fits its tensors; name the \
                 architecture with --model (one of {}) to see which tensors differ",
                weights.display(),
                MODEL_NAMES.join(", ")
            ),
        },
    };
    if args.imagenet {
        config.stem = Stem::ImageNet;
    }
    if args.cifar {
        config.stem = Stem::Cifar;
    }
    if let Some(c) = args.classes {
        config.num_classes = c;
    }
    Ok((config, source))
}

fn run(args: Args) -> Result<ExitCode> {
    let device = parse_device(&args.device)?;
    // The library's errors name the file. Opened once: its header (or pickle) is read once,
    // each tensor the model has once.
    let file = WeightsFile::open(&args.weights)?;
    let meta = file.metadata()?;
    let (config, source) = model_config(&args, &file, meta.as_ref())?;
    // The metadata describes these weights only if they are read as the architecture it names.
    let meta = meta.filter(|m| expected_shapes(&m.model) == expected_shapes(&config));
    let prep = Prep::new(config.stem, meta.as_ref())?;
    let loaded = file.load_model(&config, device, LoadOptions::default())?;
    eprintln!(
        "{}: {} ({:?} stem, {} classes, {}x{} images) {source}, on {device:?}, {} tensors loaded",
        args.weights.display(),
        config.name,
        config.stem,
        config.num_classes,
        prep.size,
        prep.size,
        loaded.report.loaded
    );
    if !loaded.report.unexpected.is_empty() {
        eprintln!(
            "warning: {} tensor(s) in the file are not part of the model and were ignored: {}",
            loaded.report.unexpected.len(),
            loaded.report.unexpected.join(", ")
        );
    }
    let names = class_names(args.labels.as_deref(), meta.as_ref(), config.num_classes)?;
    let width = names.iter().map(|n| n.len()).max().unwrap_or(1);

    // The parser accepts only Tta::NAMES.
    let tta: Tta = args.tta.parse().map_err(anyhow::Error::msg)?;
    let mut failed = 0;
    let (mut inputs, mut logits) = (Vec::new(), Vec::new());
    for path in &args.images {
        match classify(&loaded.model, &prep, device, path, args.top, tta) {
            Ok(Classified {
                ranked,
                input,
                logits: out,
            }) => {
                if args.compare_onnx.is_some() {
                    inputs.push(input);
                    logits.push(out);
                }
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
    if let Some(model) = args.compare_onnx.as_deref().filter(|_| !inputs.is_empty()) {
        if !compare_onnx(model, &inputs, &logits)? {
            return Ok(ExitCode::FAILURE);
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
