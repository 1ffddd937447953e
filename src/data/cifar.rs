//! The CIFAR-10 "binary version" loader.
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::DataError;

/// Name of the folder the official archive extracts to.
pub const BATCHES_DIR: &str = "cifar-10-batches-bin";
/// The five training batch files, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class-name file (one name per line).
pub const META_FILE: &str = "batches.meta.txt";
/// Bytes of one image: 3 planes (red, green, blue) of 32x32 bytes, row-major.
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes of one record: 1 label byte followed by the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Records in every batch file.
pub const RECORDS_PER_FILE: usize = 10_000;
/// The official class names, in label order, used when `batches.meta.txt` is absent.
pub const CLASS_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-10, fully in memory as tensors on the CPU.
///
/// Images are `uint8` tensors of shape `[N, 3, 32, 32]` (channels red, green, blue; pixel
/// values 0..=255, not normalised), labels are `int64` tensors of shape `[N]` holding class
/// indices into [`classes`](Self::classes).
#[derive(Debug)]
pub struct Cifar10 {
    /// Training images, `uint8 [50000, 3, 32, 32]` for the real dataset.
    pub train_images: Tensor,
    /// Training labels, `int64 [50000]`.
    pub train_labels: Tensor,
    /// Test images, `uint8 [10000, 3, 32, 32]` for the real dataset.
    pub test_images: Tensor,
    /// Test labels, `int64 [10000]`.
    pub test_labels: Tensor,
    /// Class names, in label order.
    pub classes: Vec<String>,
}

impl Cifar10 {
    /// Loads the dataset from `path`, which is either the folder holding the `.bin` files or a
    /// root holding `cifar-10-batches-bin/` (like torchvision's `root`).
    ///
    /// Every file is checked (presence, size of exactly 10,000 records of 3073 bytes, label
    /// bytes 0..=9) and the first problem is returned as a [`DataError`] naming the file; no
    /// partly loaded dataset is ever returned. Class names come from `batches.meta.txt` when it
    /// exists, else from [`CLASS_NAMES`].
    pub fn load(path: impl AsRef<Path>) -> Result<Cifar10, DataError> {
        let dir = Self::locate(path)?;
        let (train_images, train_labels) = read_batches(&dir, &TRAIN_FILES)?;
        let (test_images, test_labels) = read_batches(&dir, &[TEST_FILE])?;
        let classes = read_classes(&dir)?;
        Ok(Cifar10 {
            train_images,
            train_labels,
            test_images,
            test_labels,
            classes,
        })
    }

    /// Finds the batches folder under `path` (as [`load`](Self::load) does) and checks that
    /// every batch file is there with the right size, without reading it. Returns the folder.
    pub fn locate(path: impl AsRef<Path>) -> Result<PathBuf, DataError> {
        let dir = batches_dir(path.as_ref())?;
        for name in TRAIN_FILES.iter().chain(&[TEST_FILE]) {
            check_file(&dir.join(name), RECORDS_PER_FILE)?;
        }
        Ok(dir)
    }

    /// Whether a complete dataset (every batch file with the right size) is at `path`.
    pub fn is_present(path: impl AsRef<Path>) -> bool {
        Self::locate(path).is_ok()
    }

    /// Builds a dataset from tensors, for example a small synthetic one.
    ///
    /// Images must be `uint8 [N, 3, 32, 32]`, labels `int64 [N]` with the same `N` and values
    /// in `0..classes.len()`; `classes` must not be empty. The tensors are kept as given.
    pub fn from_tensors(
        train_images: Tensor,
        train_labels: Tensor,
        test_images: Tensor,
        test_labels: Tensor,
        classes: Vec<String>,
    ) -> Result<Cifar10, DataError> {
        if classes.is_empty() {
            return Err(DataError::InvalidConfig {
                field: "classes",
                value: "[]".into(),
                expected: "at least one class name".into(),
            });
        }
        let n = classes.len() as i64;
        check_pair(
            ("train_images", &train_images),
            ("train_labels", &train_labels),
            n,
        )?;
        check_pair(
            ("test_images", &test_images),
            ("test_labels", &test_labels),
            n,
        )?;
        Ok(Cifar10 {
            train_images,
            train_labels,
            test_images,
            test_labels,
            classes,
        })
    }

    /// Number of training images.
    pub fn train_len(&self) -> usize {
        self.train_labels
            .size()
            .first()
            .copied()
            .unwrap_or(0)
            .max(0) as usize
    }

    /// Number of test images.
    pub fn test_len(&self) -> usize {
        self.test_labels.size().first().copied().unwrap_or(0).max(0) as usize
    }
}

/// The folder holding the batch files: `path/cifar-10-batches-bin` when it exists, else `path`.
fn batches_dir(path: &Path) -> Result<PathBuf, DataError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(DataError::MissingDir { path: path.into() }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(DataError::MissingDir { path: path.into() })
        }
        Err(e) => return Err(DataError::io("read", path, e)),
    }
    let sub = path.join(BATCHES_DIR);
    Ok(if sub.is_dir() {
        sub
    } else {
        path.to_path_buf()
    })
}

/// Checks that `path` is a regular file of exactly `records` records.
pub(crate) fn check_file(path: &Path, records: usize) -> Result<(), DataError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(DataError::MissingFile { path: path.into() })
        }
        Err(e) => return Err(DataError::io("read", path, e)),
    };
    if !meta.is_file() {
        return Err(DataError::NotAFile { path: path.into() });
    }
    let expected = (records * RECORD_BYTES) as u64;
    if meta.len() != expected {
        return Err(DataError::BadSize {
            path: path.into(),
            actual: meta.len(),
            expected,
            records,
        });
    }
    Ok(())
}

/// Reads the given batch files of `dir` into one image and one label tensor.
fn read_batches(dir: &Path, names: &[&str]) -> Result<(Tensor, Tensor), DataError> {
    let total = names.len() * RECORDS_PER_FILE;
    let mut pixels = Vec::with_capacity(total * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(total);
    for name in names {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => DataError::MissingFile { path: path.clone() },
            _ => DataError::io("read", &path, e),
        })?;
        // The size was checked by `locate`, but the file may have changed since.
        let expected = (RECORDS_PER_FILE * RECORD_BYTES) as u64;
        if bytes.len() as u64 != expected {
            return Err(DataError::BadSize {
                path,
                actual: bytes.len() as u64,
                expected,
                records: RECORDS_PER_FILE,
            });
        }
        for (record, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            let label = chunk[0];
            if label > 9 {
                return Err(DataError::BadLabel {
                    path,
                    record,
                    label,
                });
            }
            labels.push(i64::from(label));
            pixels.extend_from_slice(&chunk[1..]);
        }
    }
    let images = Tensor::f_from_data_size(&pixels, &[total as i64, 3, 32, 32], Kind::Uint8)?;
    let labels = Tensor::f_from_slice(&labels)?;
    Ok((images, labels))
}

/// Class names from `batches.meta.txt`, or the official list when the file is absent.
fn read_classes(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(META_FILE);
    match fs::metadata(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(CLASS_NAMES.iter().map(|s| s.to_string()).collect())
        }
        Err(e) => return Err(DataError::io("read", &path, e)),
        Ok(m) if !m.is_file() => return Err(DataError::NotAFile { path }),
        Ok(_) => {}
    }
    let text = fs::read_to_string(&path).map_err(|e| DataError::io("read", &path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != CLASS_NAMES.len() {
        return Err(DataError::BadMeta {
            path,
            found: names.len(),
        });
    }
    Ok(names)
}

/// Checks an (images, labels) pair for [`Cifar10::from_tensors`].
fn check_pair(
    (img_name, images): (&'static str, &Tensor),
    (lbl_name, labels): (&'static str, &Tensor),
    num_classes: i64,
) -> Result<(), DataError> {
    let n = check_images(img_name, images)?;
    check_labels(lbl_name, labels, n)?;
    if n > 0 {
        let min = labels.f_min()?.f_int64_value(&[])?;
        let max = labels.f_max()?.f_int64_value(&[])?;
        if min < 0 || max >= num_classes {
            return Err(DataError::InvalidTensor {
                what: lbl_name,
                expected: format!("class indices in 0..{num_classes}"),
                actual: format!("values in {min}..={max}"),
            });
        }
    }
    Ok(())
}

/// Checks that `images` is `uint8 [N, 3, 32, 32]` and returns `N`.
pub(crate) fn check_images(what: &'static str, images: &Tensor) -> Result<i64, DataError> {
    let size = images.size();
    let kind = images.f_kind()?;
    match size.as_slice() {
        [n, 3, 32, 32] if kind == Kind::Uint8 => Ok(*n),
        _ => Err(DataError::InvalidTensor {
            what,
            expected: "a uint8 tensor of shape [N, 3, 32, 32]".into(),
            actual: format!("{kind:?} of shape {size:?}"),
        }),
    }
}

/// Checks that `labels` is `int64 [n]`.
pub(crate) fn check_labels(what: &'static str, labels: &Tensor, n: i64) -> Result<(), DataError> {
    let size = labels.size();
    let kind = labels.f_kind()?;
    if kind == Kind::Int64 && size == [n] {
        Ok(())
    } else {
        Err(DataError::InvalidTensor {
            what,
            expected: format!("an int64 tensor of shape [{n}] (one label per image)"),
            actual: format!("{kind:?} of shape {size:?}"),
        })
    }
}
