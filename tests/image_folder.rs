//! Image folders on real images: a slice of the workspace's CIFAR-10 written as PNG class
//! folders gives exactly the binary loader's tensors and the same training run; pictures of
//! every colour type decode as Pillow decodes them; every bad input is a clear error.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use resnext::data::{
    decode_rgb8, ensure_cifar10, epoch_batches, BatchConfig, Cifar10, DataError, DataSplits,
    Dataset, DownloadOptions, ImageFolder, ImageFolderOptions, Normalization, Recipe,
};
use resnext::trainer::{Outcome, ProgressMode, TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

mod common;
#[path = "common/python.rs"]
mod python;

const ARCHIVE_ENV: &str = "RESNEXT_CIFAR10_ARCHIVE";
const MIRROR_MD5: &str = "324a4b0b915a15a5b99beeb78016aa48";

fn archive_path() -> PathBuf {
    match std::env::var_os(ARCHIVE_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-binary.tar.gz"),
    }
}

/// Positions of the first `n` images of `labels`, sorted by (label, position): the order an
/// image folder lists them in when files are named by position.
fn folder_order(labels: &Tensor, n: i64) -> Vec<i64> {
    let labels = Vec::<i64>::try_from(labels.narrow(0, 0, n)).unwrap();
    let mut order: Vec<i64> = (0..n).collect();
    order.sort_by_key(|&i| (labels[i as usize], i));
    order
}

/// Writes `images[order]` as `dir/<class>/<position>.png`; returns the selected tensors.
fn write_pngs(
    dir: &Path,
    images: &Tensor,
    labels: &Tensor,
    order: &[i64],
    classes: &[String],
) -> (Tensor, Tensor) {
    let idx = Tensor::from_slice(order);
    let (images, labels) = (images.index_select(0, &idx), labels.index_select(0, &idx));
    for (k, &pos) in order.iter().enumerate() {
        let label = labels.int64_value(&[k as i64]) as usize;
        let class_dir = dir.join(&classes[label]);
        std::fs::create_dir_all(&class_dir).unwrap();
        let hwc = images.get(k as i64).permute([1, 2, 0]).contiguous();
        let pixels = Vec::<u8>::try_from(hwc.view([-1])).unwrap();
        let png = image::RgbImage::from_raw(32, 32, pixels).unwrap();
        png.save(class_dir.join(format!("{pos:05}.png"))).unwrap();
    }
    (images, labels)
}

fn small(workers: usize) -> ImageFolderOptions {
    ImageFolderOptions {
        workers,
        ..ImageFolderOptions::new(Recipe::Small { size: 32 })
    }
}

fn all_batches(data: &Arc<dyn Dataset>, cfg: &BatchConfig, epoch: u64) -> Vec<(Tensor, Tensor)> {
    epoch_batches(Arc::clone(data), cfg, epoch, 0)
        .unwrap()
        .map(|b| (b.images, b.labels))
        .collect()
}

fn tiny_run(data: &DataSplits, dir: &Path) -> (Vec<f64>, Tensor) {
    let cfg = TrainConfig {
        model: "tiny".into(),
        epochs: 2,
        batch_size: 32,
        lr: 0.05,
        device: "cpu".into(),
        ..TrainConfig::default()
    };
    let built = common::seeded(|| Trainer::resnext(cfg).unwrap());
    let mut t = built.with_run_dir(dir).unwrap();
    t.set_progress(ProgressMode::Silent);
    assert!(matches!(t.fit(data).unwrap(), Outcome::Completed(_)));
    let m = &t.state().metrics;
    let figures = m
        .iter()
        .flat_map(|e| [e.train_loss, e.test_loss.unwrap(), e.test_acc.unwrap()])
        .collect();
    let weights = t.var_store().variables()["fc.weight"].detach().copy();
    (figures, weights)
}

#[test]
fn cifar_slice_as_png_folders_equals_the_binary_loader_and_trains_the_same_run() {
    let archive = archive_path();
    if !archive.is_file() {
        common::skip(
            "cifar_slice_as_png_folders_equals_the_binary_loader_and_trains_the_same_run",
            &format!(
                "the real CIFAR-10 archive {} is absent (set {ARCHIVE_ENV}), so ImageFolder was \
                 NOT checked against the binary loader",
                archive.display()
            ),
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        url: Some(archive.to_string_lossy().into_owned()),
        md5: Some(MIRROR_MD5.into()),
        quiet: true,
    };
    let cifar = Cifar10::load(ensure_cifar10(&tmp.path().join("bin"), &opts).unwrap()).unwrap();
    let root = tmp.path().join("folders");
    let train_order = folder_order(&cifar.train_labels, 200);
    let test_order = folder_order(&cifar.test_labels, 100);
    let (xi, xl) = write_pngs(
        &root.join("train"),
        &cifar.train_images,
        &cifar.train_labels,
        &train_order,
        &cifar.classes,
    );
    let (ti, tl) = write_pngs(
        &root.join("val"),
        &cifar.test_images,
        &cifar.test_labels,
        &test_order,
        &cifar.classes,
    );
    let binary = Cifar10::from_tensors(xi, xl, ti, tl, cifar.classes.clone()).unwrap();
    let binary = binary.splits(Device::Cpu).unwrap();
    let folders = ImageFolder::splits(&root, &small(2)).unwrap();
    assert_eq!(folders.train.classes(), binary.train.classes());

    // The same pixels, losslessly: unaugmented at the unit normalisation, x255 = the bytes.
    let unit = BatchConfig {
        normalization: Normalization::unit(),
        ..BatchConfig::eval(64)
    };
    let bytes = |t: &Tensor| (t * 255.0).round().to_kind(Kind::Uint8);
    let (a, b) = (
        all_batches(&folders.test, &unit, 0),
        all_batches(&binary.test, &unit, 0),
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!(bytes(&x.0).equal(&bytes(&y.0)) && x.1.equal(&y.1));
    }
    // Augmented training batches: the same crops and flips, bit for bit, on two epochs.
    let train = BatchConfig {
        batch_size: 48,
        seed: 9,
        ..BatchConfig::default()
    };
    for epoch in 0..2 {
        let (a, b) = (
            all_batches(&folders.train, &train, epoch),
            all_batches(&binary.train, &train, epoch),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(x.0.equal(&y.0) && x.1.equal(&y.1), "epoch {epoch}");
        }
    }
    // And the same training run.
    let (fa, wa) = tiny_run(&folders, &tmp.path().join("run-folders"));
    let (fb, wb) = tiny_run(&binary, &tmp.path().join("run-binary"));
    assert_eq!(fa, fb);
    assert!(wa.equal(&wb));
}

/// Pictures of each colour type, written by Pillow, with Pillow's own `convert("RGB")` (after
/// `exif_transpose`) of each as raw bytes beside them.
const WRITE_PICTURES: &str = r#"
import sys, os
from PIL import Image, ImageOps
out = sys.argv[1]
base = Image.new("RGB", (40, 30))
base.putdata([((x * 6) % 256, (y * 8) % 256, (x * y) % 256) for y in range(30) for x in range(40)])
pics = {
    "rgb.png": base,
    "gray.png": base.convert("L"),
    "palette.png": base.convert("P", palette=Image.ADAPTIVE, colors=64),
    "alpha.png": base.convert("RGBA"),
    "gray_alpha.png": base.convert("LA"),
    "rgb.jpg": base,
    "gray.jpg": base.convert("L"),
    "cmyk.jpg": base.convert("CMYK"),
}
for name, im in pics.items():
    im.save(os.path.join(out, name), quality=95)
exif = base.getexif(); exif[0x0112] = 6  # rotate 90 degrees clockwise to display
base.save(os.path.join(out, "rotated.jpg"), quality=95, exif=exif)
for name in list(pics) + ["rotated.jpg"]:
    im = ImageOps.exif_transpose(Image.open(os.path.join(out, name))).convert("RGB")
    with open(os.path.join(out, name + ".rgb"), "wb") as f:
        f.write(im.width.to_bytes(4, "little") + im.height.to_bytes(4, "little") + im.tobytes())
"#;

#[test]
fn every_colour_type_decodes_as_pillow_decodes_it() {
    let dir = tempfile::tempdir().unwrap();
    python::run_python(WRITE_PICTURES, &[dir.path().to_str().unwrap()]);
    for name in [
        "rgb.png",
        "gray.png",
        "palette.png",
        "alpha.png",
        "gray_alpha.png",
        "rgb.jpg",
        "gray.jpg",
        "cmyk.jpg",
        "rotated.jpg",
    ] {
        let ours =
            decode_rgb8(&dir.path().join(name), 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
        let raw = std::fs::read(dir.path().join(format!("{name}.rgb"))).unwrap();
        let w = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        let h = u32::from_le_bytes(raw[4..8].try_into().unwrap());
        assert_eq!(ours.dimensions(), (w, h), "{name}");
        let diffs: Vec<u8> = ours
            .as_raw()
            .iter()
            .zip(&raw[8..])
            .map(|(&a, &b)| a.abs_diff(b))
            .collect();
        let worst = diffs.iter().copied().max().unwrap();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        eprintln!("{name}: largest difference {worst}, mean {mean:.3}");
        // PNG is lossless: identical. JPEG: two decoders (zune-jpeg here, libjpeg-turbo in
        // Pillow) round the inverse DCT and the chroma upsampling differently, most at sharp
        // colour edges (this picture is full of them).
        if name.ends_with(".png") {
            assert_eq!(worst, 0, "{name}");
        } else {
            assert!(
                worst <= 12 && mean <= 0.6,
                "{name}: largest difference {worst}, mean {mean:.3} from Pillow"
            );
        }
    }
    assert_eq!(
        decode_rgb8(&dir.path().join("rotated.jpg"), 1 << 20)
            .unwrap()
            .dimensions(),
        (30, 40)
    );
}

#[test]
fn sixteen_bit_pictures_become_eight_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.png");
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(4, 3, |x, y| {
        image::Rgb([x as u16 * 16000, y as u16 * 30000, 65535])
    });
    img.save(&path).unwrap();
    let ours = decode_rgb8(&path, 1 << 20).unwrap();
    for (x, y, px) in ours.enumerate_pixels() {
        let expect = |v: u32| ((v as f64) / 257.0).round() as u8;
        assert_eq!(
            px.0,
            [expect(x * 16000), expect(y * 30000), 255],
            "({x}, {y})"
        );
    }
}

/// JPEGs written by Pillow (baseline, progressive, and baseline with an EXIF thumbnail: a
/// whole JPEG, with its own scan and end-of-image marker, inside the APP1 segment), each whole,
/// with trailing bytes after its end-of-image marker, and cut at several lengths; then Pillow's
/// verdict on each (`Image.open(p).load()`), one `name ok` or `name refused: why` a line.
const WRITE_TRUNCATED: &str = r#"
import io, os, struct, sys
from PIL import Image
out = sys.argv[1]
base = Image.new("RGB", (160, 120))
base.putdata([((x * 7 + y * 3) % 256, (x * y) % 256, (x ^ y) % 256) for y in range(120) for x in range(160)])
def jpeg(im, **kw):
    b = io.BytesIO(); im.save(b, "JPEG", quality=90, **kw); return b.getvalue()
thumb = jpeg(base.resize((40, 30)))
# Exif: a TIFF header, an empty IFD0, an IFD1 pointing at the thumbnail (tags 0x201, 0x202).
ifd1 = struct.pack("<H", 2) + struct.pack("<HHII", 0x201, 4, 1, 44) + struct.pack("<HHII", 0x202, 4, 1, len(thumb)) + struct.pack("<I", 0)
tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<HI", 0, 14) + ifd1 + thumb
assert len(b"II*\x00") + 4 + 6 + len(ifd1) == 44
app1 = b"Exif\x00\x00" + tiff
plain = jpeg(base)
sources = {
    "baseline": plain,
    "progressive": jpeg(base, progressive=True),
    "thumbnail": plain[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + plain[2:],
}
for name, data in sources.items():
    files = {"full": data, "trailing": data + b"\x00garbage\xff\xd8\xff\xda junk"}
    for frac in (30, 60, 95):
        files[f"cut{frac}"] = data[: len(data) * frac // 100]
    files["cut_all_but_2"] = data[:-2]
    for kind, b in files.items():
        path = os.path.join(out, f"{name}_{kind}.jpg")
        with open(path, "wb") as f:
            f.write(b)
        try:
            Image.open(path).load()
            print(f"{name}_{kind}.jpg ok")
        except Exception as e:
            print(f"{name}_{kind}.jpg refused: {e}")
"#;

#[test]
fn truncated_jpegs_are_refused_as_pillow_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let verdicts = python::run_python(WRITE_TRUNCATED, &[dir.path().to_str().unwrap()]);
    let mut checked = 0;
    for line in verdicts.lines() {
        let (name, pillow) = line.split_once(' ').unwrap();
        let whole = name.ends_with("_full.jpg") || name.ends_with("_trailing.jpg");
        let pillow_ok = pillow == "ok";
        assert_eq!(pillow_ok, whole, "Pillow on {name}: {pillow}");
        let ours = decode_rgb8(&dir.path().join(name), 1 << 20);
        match (&ours, whole) {
            (Ok(img), true) => assert_eq!(img.dimensions(), (160, 120), "{name}"),
            (Err(e @ DataError::BadImage { .. }), false) => {
                assert!(e.to_string().contains(name), "{e}")
            }
            _ => panic!("{name}: we gave {ours:?}, Pillow said {pillow}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 3 * 6, "{verdicts}");
    // The thumbnail's own end-of-image marker does not make a cut file whole: the cut of the
    // file with the thumbnail falls after it (the thumbnail is near the start).
    let with_thumb = std::fs::read(dir.path().join("thumbnail_full.jpg")).unwrap();
    let first_eoi = with_thumb
        .windows(2)
        .position(|w| w == [0xFF, 0xD9])
        .unwrap();
    assert!(
        first_eoi < with_thumb.len() * 30 / 100,
        "thumbnail ends at {first_eoi}"
    );
}

fn write_jpeg(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]))
        .save(path)
        .unwrap();
}

#[test]
fn bad_files_are_errors_naming_the_file_or_skipped_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("cat/good.jpg"), 64, 48);
    write_jpeg(&root.join("dog/good.jpg"), 50, 50);
    let full = std::fs::read(root.join("cat/good.jpg")).unwrap();
    std::fs::write(root.join("cat/truncated.jpg"), &full[..full.len() / 3]).unwrap();
    std::fs::write(root.join("dog/text.png"), b"not a picture at all").unwrap();
    for (file, what) in [
        ("cat/truncated.jpg", "truncated"),
        ("dog/text.png", "not a picture"),
    ] {
        let err = decode_rgb8(&root.join(file), 1 << 20).unwrap_err();
        assert!(matches!(err, DataError::BadImage { .. }), "{what}: {err}");
        assert!(
            err.to_string()
                .contains(file.split('/').next_back().unwrap()),
            "{err}"
        );
    }
    // The pixel limit is checked on the header.
    let err = decode_rgb8(&root.join("cat/good.jpg"), 1000).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ImageTooLarge {
                width: 64,
                height: 48,
                ..
            }
        ),
        "{err}"
    );

    // Without skipping, the batch holding a bad file fails, naming it.
    let opts = ImageFolderOptions::new(Recipe::ImageNet { size: 32 });
    let folder: Arc<dyn Dataset> = Arc::new(ImageFolder::open(root, opts.clone()).unwrap());
    let mut batches = epoch_batches(folder, &BatchConfig::eval(4), 0, 0).unwrap();
    assert!(batches.next().is_none());
    let err = batches.take_error().unwrap().to_string();
    assert!(
        err.contains("truncated.jpg") || err.contains("text.png"),
        "{err}"
    );

    // Skipping: the two bad files are listed and left out.
    let skip = ImageFolderOptions {
        skip_bad_images: true,
        ..opts
    };
    let folder = ImageFolder::open(root, skip).unwrap();
    assert_eq!(folder.len(), 2);
    let mut bad: Vec<_> = folder
        .bad_images()
        .iter()
        .map(|(p, _)| p.strip_prefix(root).unwrap().to_path_buf())
        .collect();
    bad.sort();
    assert_eq!(
        bad,
        [
            PathBuf::from("cat/truncated.jpg"),
            PathBuf::from("dog/text.png")
        ]
    );
    let (images, labels) = epoch_batches(Arc::new(folder), &BatchConfig::eval(4), 0, 0)
        .unwrap()
        .next()
        .map(|b| (b.images, b.labels))
        .unwrap();
    assert_eq!(images.size(), [2, 3, 32, 32]);
    assert_eq!(Vec::<i64>::try_from(labels).unwrap(), [0, 1]);
}

#[test]
fn folders_that_cannot_train_are_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_jpeg(&root.join("train/cat/a.jpg"), 8, 8);
    write_jpeg(&root.join("train/dog/a.jpg"), 8, 8);
    write_jpeg(&root.join("val/cat/a.jpg"), 8, 8);
    write_jpeg(&root.join("val/bird/a.jpg"), 8, 8);
    let opts = small(1);
    let err = ImageFolder::splits(root, &opts).unwrap_err().to_string();
    assert!(
        err.contains("only in the training folder: dog")
            && err.contains("only in the validation folder: bird"),
        "{err}"
    );
    std::fs::create_dir(root.join("train/emu")).unwrap();
    let err = ImageFolder::splits(root, &opts).unwrap_err().to_string();
    assert!(
        err.contains("emu") && err.contains("holds no images"),
        "{err}"
    );
    let err = ImageFolder::splits(&root.join("missing"), &opts).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("missing"),
        "{err}"
    );
}

#[test]
fn imagenet_recipe_batches_are_reproducible_and_cached_or_not_the_same() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (w, h)) in [(500, 375), (120, 300), (64, 64), (333, 200), (90, 91)]
        .iter()
        .enumerate()
    {
        write_jpeg(&dir.path().join(format!("c{}/{i}.jpg", i % 2)), *w, *h);
    }
    let opts = ImageFolderOptions {
        workers: 2,
        ..ImageFolderOptions::new(Recipe::ImageNet { size: 48 })
    };
    let plain: Arc<dyn Dataset> = Arc::new(ImageFolder::open(dir.path(), opts.clone()).unwrap());
    let cached: Arc<dyn Dataset> = Arc::new(
        ImageFolder::open(
            dir.path(),
            ImageFolderOptions {
                cache: true,
                workers: 1,
                ..opts
            },
        )
        .unwrap(),
    );
    let cfg = BatchConfig {
        batch_size: 2,
        seed: 3,
        normalization: resnext::data::IMAGENET_NORMALIZATION,
        ..BatchConfig::default()
    };
    let a = all_batches(&plain, &cfg, 1);
    let b = all_batches(&cached, &cfg, 1);
    let again = all_batches(&cached, &cfg, 1);
    assert_eq!(a.len(), 3);
    for ((x, y), z) in a.iter().zip(&b).zip(&again) {
        assert_eq!(x.0.size()[1..], [3, 48, 48]);
        assert!(x.0.equal(&y.0) && y.0.equal(&z.0) && x.1.equal(&y.1));
    }
    let other_epoch = all_batches(&plain, &cfg, 2);
    assert!(
        !a.iter().zip(&other_epoch).all(|(x, y)| x.0.equal(&y.0)),
        "epochs draw other crops"
    );
}

/// A PNG chunk: length, type, data, CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let len = (data.len() as u32).to_be_bytes();
    [&len[..], kind, data, &crc.sum().to_be_bytes()].concat()
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    let mut ihdr = Vec::new();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let png = [
        &b"\x89PNG\r\n\x1a\n"[..],
        &png_chunk(b"IHDR", &ihdr),
        &png_chunk(b"IDAT", &[]),
        &png_chunk(b"IEND", &[]),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, png).unwrap();
    let err = decode_rgb8(&path, resnext::data::MAX_PIXELS).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ImageTooLarge {
                width: 100_000,
                height: 100_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bomb.png"), "{err}");
}
