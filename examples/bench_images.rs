//! Speed of the image folder pipeline: the Rust side of `benches/image_loader.sh`, which runs it
//! side by side with torchvision's `ImageFolder` + `DataLoader` (`benches/torchvision_loader.py`)
//! on the same files.
//!
//! ```text
//! # images/s of whole epochs of ImageFolder, ImageNet training recipe at 224 (decode,
//! # RandomResizedCrop(224), horizontal flip, normalise), after one warm-up epoch
//! bench_images --data-dir DIR --workers 2 --epochs 3 --batch-size 64
//! # single-thread JPEG decoding: the `image` crate (decode_rgb8) against zune-jpeg used directly
//! bench_images --data-dir DIR --decode-only --rounds 3
//! # single-thread cost of each stage of one picture: decode, resized crop, flip + normalise
//! bench_images --data-dir DIR --stages --rounds 3
//! ```
//!
//! The loader mode times `--epochs` epochs after a warm-up epoch (which starts the threads and
//! fills the page cache) and reports their images/s and images/s per worker;
//! `--keep-freed-memory` first makes glibc keep freed memory for reuse, as the trainer does when
//! it trains on the CPU (see `resnext::memory`). The other two
//! modes read every file into memory first, so they time the CPU work alone, and report the
//! median over `--rounds` passes over the files (the decoders alternate within a round). Each
//! mode prints a human summary to stderr and one JSON line prefixed `RESULT ` to stdout.
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rand::{Rng, SeedableRng};
use resnext::data::{
    decode_rgb8_bytes, epoch_batches, prepare, random_resized_crop, resize_crop, BatchConfig,
    Dataset, Draw, FolderIndex, ImageFolder, ImageFolderOptions, Recipe, IMAGENET_NORMALIZATION,
    MAX_PIXELS,
};
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

#[derive(Parser, Debug)]
#[command(about = "Images/s of the ImageFolder pipeline, and single-thread decode speed")]
struct Args {
    /// An ImageFolder root: one sub-folder of JPEG/PNG files per class.
    #[arg(long)]
    data_dir: PathBuf,
    /// Decoding threads of the ImageFolder (loader mode).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Timed epochs, after one warm-up epoch (loader mode).
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    /// Batch size (loader mode).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Side of the network input.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// Compare the single-thread JPEG decoders instead: `image` (decode_rgb8) and zune-jpeg.
    #[arg(long, conflicts_with = "stages")]
    decode_only: bool,
    /// Time each stage of one picture on one thread instead: decode, resized crop, normalise.
    #[arg(long)]
    stages: bool,
    /// Passes over the files (decode-only and stages modes); the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seed of the shuffling and augmentation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Call `resnext::memory::keep_freed_memory` first (as the trainer does on the CPU; not on
    /// a GPU), so the large per-picture buffers are reused instead of page-faulted in afresh.
    #[arg(long)]
    keep_freed_memory: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    if args.keep_freed_memory {
        ensure!(
            resnext::memory::keep_freed_memory(),
            "keep_freed_memory had no effect (not glibc, or a MALLOC_* variable is set)"
        );
    }
    if args.decode_only {
        decode_only(&args)
    } else if args.stages {
        stages(&args)
    } else {
        loader(&args)
    }
}

/// Whole epochs of `ImageFolder` with the ImageNet training recipe on `--workers` threads.
fn loader(args: &Args) -> Result<()> {
    ensure!(args.workers > 0, "--workers must be at least 1");
    ensure!(args.epochs > 0, "--epochs must be at least 1");
    let options = ImageFolderOptions {
        workers: args.workers,
        ..ImageFolderOptions::new(Recipe::ImageNet { size: args.size })
    };
    let folder = ImageFolder::open(&args.data_dir, options)
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    let images = folder.len();
    let data = Arc::new(folder) as Arc<dyn Dataset>;
    let cfg = BatchConfig {
        batch_size: args.batch_size,
        seed: args.seed,
        normalization: IMAGENET_NORMALIZATION,
        ..BatchConfig::default()
    };
    let run_epoch = |epoch: u64| -> Result<usize> {
        let mut batches = epoch_batches(Arc::clone(&data), &cfg, epoch, 0)?;
        let mut seen = 0;
        for batch in batches.by_ref() {
            seen += black_box(batch.images).size()[0] as usize;
        }
        if let Some(e) = batches.take_error() {
            return Err(e.into());
        }
        Ok(seen)
    };
    run_epoch(0).context("warm-up epoch")?;
    let mut per_epoch = Vec::new();
    let (mut total_images, start) = (0, Instant::now());
    for epoch in 1..=args.epochs {
        let t = Instant::now();
        let seen = run_epoch(epoch)?;
        ensure!(
            seen == images,
            "epoch {epoch} gave {seen} of {images} images"
        );
        per_epoch.push(seen as f64 / t.elapsed().as_secs_f64());
        total_images += seen;
    }
    let rate = total_images as f64 / start.elapsed().as_secs_f64();
    let per_worker = rate / args.workers as f64;
    let malloc = if args.keep_freed_memory {
        ", freed memory kept"
    } else {
        ""
    };
    eprintln!(
        "ours{malloc}: {images} images, {} epochs (after a warm-up), {} workers, batch {}: \
         {rate:.1} images/s, {per_worker:.1} images/s per worker (epochs: {})",
        args.epochs,
        args.workers,
        args.batch_size,
        per_epoch
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "RESULT {}",
        serde_json::json!({
            "mode": "loader", "images": images, "epochs": args.epochs,
            "workers": args.workers, "batch_size": args.batch_size, "size": args.size,
            "images_per_s": rate, "images_per_s_per_worker": per_worker,
            "epoch_images_per_s": per_epoch, "keep_freed_memory": args.keep_freed_memory,
        })
    );
    Ok(())
}

/// The bytes of every JPEG file of the folder (read once, so the timings are CPU work only).
fn read_jpegs(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let index = FolderIndex::scan(root).with_context(|| format!("scanning {}", root.display()))?;
    let mut files = Vec::new();
    for (path, _) in index.samples {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext.eq_ignore_ascii_case("jpg") || ext.eq_ignore_ascii_case("jpeg") {
            let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            files.push((path, bytes));
        }
    }
    if files.is_empty() {
        bail!("no JPEG files under {}", root.display());
    }
    Ok(files)
}

/// Decodes a JPEG to packed RGB with zune-jpeg directly (the decoder the `image` crate wraps).
fn zune_rgb8(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder.decode().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let info = decoder.info().context("no header")?;
    Ok((usize::from(info.width), usize::from(info.height), pixels))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Single-thread decode speed of the `image` crate and of zune-jpeg on the same bytes.
fn decode_only(args: &Args) -> Result<()> {
    let files = read_jpegs(&args.data_dir)?;
    // Both decoders must give the same pixels, or the comparison says nothing.
    let mut pixels = 0u64;
    for (path, bytes) in &files {
        let a = decode_rgb8_bytes(bytes, path, MAX_PIXELS)?;
        let (w, h, b) = zune_rgb8(bytes).with_context(|| format!("{}", path.display()))?;
        ensure!(
            (a.width() as usize, a.height() as usize) == (w, h) && a.as_raw() == &b,
            "{}: the two decoders disagree",
            path.display()
        );
        pixels += (w * h) as u64;
    }
    let n = files.len() as f64;
    let (mut image_rates, mut zune_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        // Alternate which decoder goes first, against drift in a shared machine's speed.
        for which in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            for (path, bytes) in &files {
                if which == 0 {
                    black_box(decode_rgb8_bytes(black_box(bytes), path, MAX_PIXELS)?);
                } else {
                    black_box(zune_rgb8(black_box(bytes))?);
                }
            }
            let rate = n / t.elapsed().as_secs_f64();
            if which == 0 {
                &mut image_rates
            } else {
                &mut zune_rates
            }
            .push(rate);
        }
    }
    let (image_rate, zune_rate) = (median(image_rates), median(zune_rates));
    let mpix = pixels as f64 / n / 1e6;
    eprintln!(
        "decode, 1 thread, {} JPEGs ({mpix:.3} Mpixel each on average), median of {} rounds:",
        files.len(),
        args.rounds
    );
    eprintln!("  image 0.25 (decode_rgb8): {image_rate:8.1} images/s");
    eprintln!("  zune-jpeg 0.5 directly  : {zune_rate:8.1} images/s");
    eprintln!("  zune-jpeg / image       : {:8.3}", zune_rate / image_rate);
    println!(
        "RESULT {}",
        serde_json::json!({
            "mode": "decode", "files": files.len(), "mpixel_per_image": mpix,
            "rounds": args.rounds, "image_images_per_s": image_rate,
            "zune_images_per_s": zune_rate,
        })
    );
    Ok(())
}

/// Single-thread cost of each stage of the ImageNet training recipe, per picture.
fn stages(args: &Args) -> Result<()> {
    let files = read_jpegs(&args.data_dir)?;
    let recipe = Recipe::ImageNet { size: args.size };
    let side = args.size as usize;
    let affine = IMAGENET_NORMALIZATION.affine();
    let decoded = files
        .iter()
        .map(|(path, bytes)| decode_rgb8_bytes(bytes, path, MAX_PIXELS))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let seeds: Vec<u64> = decoded.iter().map(|_| rng.gen()).collect();
    let mut out = vec![0f32; 3 * side * side];
    let n = files.len() as f64;
    let (mut decode_us, mut resize_us, mut prepare_us) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let t = Instant::now();
        for (path, bytes) in &files {
            black_box(decode_rgb8_bytes(black_box(bytes), path, MAX_PIXELS)?);
        }
        decode_us.push(t.elapsed().as_secs_f64() * 1e6 / n);
        // The same crop as `prepare` draws from the seed (its generator's first draws).
        let t = Instant::now();
        for (image, &seed) in decoded.iter().zip(&seeds) {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let crop = random_resized_crop(&mut rng, image.width(), image.height());
            black_box(resize_crop(image, crop, args.size)?);
        }
        resize_us.push(t.elapsed().as_secs_f64() * 1e6 / n);
        let t = Instant::now();
        for (image, &seed) in decoded.iter().zip(&seeds) {
            prepare(image, recipe, Draw::Seed(seed), &affine, &mut out)?;
            black_box(&out);
        }
        prepare_us.push(t.elapsed().as_secs_f64() * 1e6 / n);
    }
    let (decode, resize, prepared) = (median(decode_us), median(resize_us), median(prepare_us));
    let normalise = prepared - resize;
    let total = decode + prepared;
    eprintln!(
        "stages, 1 thread, {} JPEGs, microseconds per image (median of {} rounds):",
        files.len(),
        args.rounds
    );
    eprintln!("  decode (image crate)             {decode:8.0}");
    eprintln!("  RandomResizedCrop({side}) resize   {resize:8.0}");
    eprintln!("  flip + normalise to f32 CHW      {normalise:8.0}");
    eprintln!(
        "  total                            {total:8.0}  ({:.1} images/s)",
        1e6 / total
    );
    println!(
        "RESULT {}",
        serde_json::json!({
            "mode": "stages", "files": files.len(), "rounds": args.rounds,
            "decode_us": decode, "resize_us": resize, "normalise_us": normalise,
            "total_us": total,
        })
    );
    Ok(())
}
