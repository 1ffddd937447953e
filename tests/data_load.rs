//! The CIFAR-10 loader on synthetic files written here: values, channel and label order, both
//! path forms, class names, every malformed input, and `from_tensors`.
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use resnext::data::{
    Cifar10, DataError, BATCHES_DIR, CLASS_NAMES, RECORDS_PER_FILE, RECORD_BYTES, TEST_FILE,
    TRAIN_FILES,
};
use tch::{Kind, Tensor};

mod common;

const ALL_FILES: [&str; 6] = [
    TRAIN_FILES[0],
    TRAIN_FILES[1],
    TRAIN_FILES[2],
    TRAIN_FILES[3],
    TRAIN_FILES[4],
    TEST_FILE,
];

/// Pixel of record `r` of file `f` at channel `c`, row `y`, column `x`.
fn pixel(f: usize, r: usize, c: usize, y: usize, x: usize) -> u8 {
    ((r * 13 + f * 31 + c * 85 + y * 3 + x * 7) % 256) as u8
}

fn label(f: usize, r: usize) -> u8 {
    ((r * 7 + f * 3) % 10) as u8
}

/// One batch file with the patterned records of file `f`.
fn patterned_file(f: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORDS_PER_FILE * RECORD_BYTES);
    for r in 0..RECORDS_PER_FILE {
        out.push(label(f, r));
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(pixel(f, r, c, y, x));
                }
            }
        }
    }
    out
}

/// Writes a valid all-zero dataset (labels 0) into `dir`.
fn write_zero_dataset(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let zeros = vec![0u8; RECORDS_PER_FILE * RECORD_BYTES];
    for name in ALL_FILES {
        fs::write(dir.join(name), &zeros).unwrap();
    }
}

fn batches_dir(root: &Path) -> PathBuf {
    root.join(BATCHES_DIR)
}

#[test]
fn loads_exact_bytes_labels_and_channel_order_from_both_path_forms() {
    let root = tempfile::tempdir().unwrap();
    let dir = batches_dir(root.path());
    fs::create_dir_all(&dir).unwrap();
    let files: Vec<Vec<u8>> = (0..6).map(patterned_file).collect();
    for (name, bytes) in ALL_FILES.iter().zip(&files) {
        fs::write(dir.join(name), bytes).unwrap();
    }
    for path in [root.path(), dir.as_path()] {
        let data = Cifar10::load(path).unwrap();
        assert_eq!(data.train_images.size(), [50_000, 3, 32, 32]);
        assert_eq!(data.train_images.kind(), Kind::Uint8);
        assert_eq!(data.train_labels.size(), [50_000]);
        assert_eq!(data.train_labels.kind(), Kind::Int64);
        assert_eq!(data.test_images.size(), [10_000, 3, 32, 32]);
        assert_eq!(data.test_labels.size(), [10_000]);
        assert_eq!((data.train_len(), data.test_len()), (50_000, 10_000));

        // Every byte: the tensor is the files without their label bytes, in file order.
        let expected_train: Vec<u8> = files[..5]
            .iter()
            .flat_map(|f| f.chunks_exact(RECORD_BYTES).flat_map(|r| r[1..].to_vec()))
            .collect();
        let train = Vec::<u8>::try_from(data.train_images.flatten(0, -1)).unwrap();
        assert!(
            train == expected_train,
            "train pixels differ from the file bytes"
        );
        let test = Vec::<u8>::try_from(data.test_images.flatten(0, -1)).unwrap();
        let expected_test: Vec<u8> = files[5]
            .chunks_exact(RECORD_BYTES)
            .flat_map(|r| r[1..].to_vec())
            .collect();
        assert!(
            test == expected_test,
            "test pixels differ from the file bytes"
        );

        // Labels in order, and channel/row/column placement checked on single pixels.
        let train_labels = Vec::<i64>::try_from(&data.train_labels).unwrap();
        let test_labels = Vec::<i64>::try_from(&data.test_labels).unwrap();
        for (n, &l) in train_labels.iter().enumerate() {
            assert_eq!(
                l,
                i64::from(label(n / 10_000, n % 10_000)),
                "train label {n}"
            );
        }
        for (n, &l) in test_labels.iter().enumerate() {
            assert_eq!(l, i64::from(label(5, n)), "test label {n}");
        }
        for (n, c, y, x) in [(0, 0, 0, 0), (12_345, 1, 5, 30), (49_999, 2, 31, 1)] {
            let v = data.train_images.int64_value(&[n, c, y, x]);
            let (n, c, y, x) = (n as usize, c as usize, y as usize, x as usize);
            assert_eq!(v, i64::from(pixel(n / 10_000, n % 10_000, c, y, x)));
        }
        assert_eq!(data.classes, CLASS_NAMES);
    }
}

#[test]
fn class_names_come_from_the_meta_file_with_blank_lines_ignored() {
    let root = tempfile::tempdir().unwrap();
    write_zero_dataset(root.path());
    let names = [
        "plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "boat", "lorry",
    ];
    let text = format!("{}\n\n\n", names.join("\n"));
    fs::write(root.path().join("batches.meta.txt"), text).unwrap();
    let data = Cifar10::load(root.path()).unwrap();
    assert_eq!(data.classes, names);

    // A meta file with the wrong number of names is an error, not a silent fallback.
    fs::write(root.path().join("batches.meta.txt"), "a\nb\n\nc\n").unwrap();
    match Cifar10::load(root.path()) {
        Err(DataError::BadMeta { path, found }) => {
            assert_eq!(found, 3);
            assert!(path.ends_with("batches.meta.txt"));
        }
        other => panic!("expected BadMeta, got {other:?}"),
    }

    fs::remove_file(root.path().join("batches.meta.txt")).unwrap();
    assert_eq!(Cifar10::load(root.path()).unwrap().classes, CLASS_NAMES);
}

#[test]
fn missing_folder_and_missing_file_say_how_to_get_the_data() {
    let root = tempfile::tempdir().unwrap();
    let nowhere = root.path().join("nowhere");
    let err = Cifar10::load(&nowhere).unwrap_err();
    assert!(
        matches!(&err, DataError::MissingDir { path } if *path == nowhere),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("nowhere"), "{msg}");
    assert!(msg.contains("ensure_cifar10"), "{msg}");
    assert!(msg.contains("ensure_cifar10"), "{msg}");
    assert!(
        msg.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
        "{msg}"
    );
    assert!(!Cifar10::is_present(&nowhere));

    // A plain file given as the folder.
    let file = root.path().join("a_file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Cifar10::load(&file),
        Err(DataError::MissingDir { .. })
    ));

    let dir = batches_dir(root.path());
    write_zero_dataset(&dir);
    assert!(Cifar10::is_present(root.path()));
    assert_eq!(Cifar10::locate(root.path()).unwrap(), dir);
    fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
    assert!(!Cifar10::is_present(root.path()));
    let err = Cifar10::load(root.path()).unwrap_err();
    match &err {
        DataError::MissingFile { path } => assert_eq!(*path, dir.join("data_batch_3.bin")),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("data_batch_3.bin") && msg.contains("ensure_cifar10"),
        "{msg}"
    );
}

#[test]
fn wrong_size_reports_actual_and_expected_bytes() {
    let root = tempfile::tempdir().unwrap();
    write_zero_dataset(root.path());
    let path = root.path().join(TEST_FILE);
    fs::write(&path, vec![0u8; RECORDS_PER_FILE * RECORD_BYTES - 1]).unwrap();
    let err = Cifar10::load(root.path()).unwrap_err();
    match &err {
        DataError::BadSize {
            path: p,
            actual,
            expected,
            records,
        } => {
            assert_eq!(*p, path);
            assert_eq!(*actual, 30_729_999);
            assert_eq!(*expected, 30_730_000);
            assert_eq!(*records, 10_000);
        }
        other => panic!("expected BadSize, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("30729999") && msg.contains("30730000") && msg.contains("3073"));
    assert!(msg.contains("test_batch.bin"), "{msg}");
    // One record too many is wrong as well.
    fs::write(&path, vec![0u8; (RECORDS_PER_FILE + 1) * RECORD_BYTES]).unwrap();
    assert!(matches!(
        Cifar10::load(root.path()),
        Err(DataError::BadSize {
            actual: 30_733_073,
            ..
        })
    ));
}

#[test]
fn label_above_nine_names_the_record() {
    let root = tempfile::tempdir().unwrap();
    write_zero_dataset(root.path());
    let path = root.path().join("data_batch_2.bin");
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start((1234 * RECORD_BYTES) as u64))
        .unwrap();
    f.write_all(&[10]).unwrap();
    drop(f);
    let err = Cifar10::load(root.path()).unwrap_err();
    match &err {
        DataError::BadLabel {
            path: p,
            record,
            label,
        } => {
            assert_eq!(*p, path);
            assert_eq!((*record, *label), (1234, 10));
        }
        other => panic!("expected BadLabel, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("record 1234") && msg.contains("0..=9"),
        "{msg}"
    );
}

#[test]
fn directory_in_place_of_a_file() {
    let root = tempfile::tempdir().unwrap();
    write_zero_dataset(root.path());
    let path = root.path().join("data_batch_4.bin");
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    match Cifar10::load(root.path()) {
        Err(DataError::NotAFile { path: p }) => assert_eq!(p, path),
        other => panic!("expected NotAFile, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn unreadable_file_is_an_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    write_zero_dataset(root.path());
    let path = root.path().join("data_batch_5.bin");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::File::open(&path).is_ok() {
        common::skip(
            "unreadable_file_is_an_io_error",
            "permissions do not stop this user (probably root) from reading a mode-000 file",
        );
        return;
    }
    match Cifar10::load(root.path()) {
        Err(DataError::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Io, got {other:?}"),
    }
}

fn images(n: i64) -> Tensor {
    Tensor::zeros([n, 3, 32, 32], (Kind::Uint8, tch::Device::Cpu))
}

fn labels(values: &[i64]) -> Tensor {
    Tensor::from_slice(values)
}

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

#[test]
fn from_tensors_validates_kinds_shapes_and_label_range() {
    let ok = Cifar10::from_tensors(
        images(4),
        labels(&[0, 1, 2, 1]),
        images(2),
        labels(&[2, 0]),
        classes(3),
    )
    .unwrap();
    assert_eq!((ok.train_len(), ok.test_len()), (4, 2));
    assert_eq!(ok.classes.len(), 3);

    let check = |r: Result<Cifar10, DataError>, what: &str| match r {
        Err(DataError::InvalidTensor { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected InvalidTensor for {what}, got {other:?}"),
    };
    check(
        Cifar10::from_tensors(
            images(4).to_kind(Kind::Float),
            labels(&[0, 1, 2, 1]),
            images(2),
            labels(&[2, 0]),
            classes(3),
        ),
        "train_images",
    );
    check(
        Cifar10::from_tensors(
            images(4),
            labels(&[0, 1, 2, 1]),
            Tensor::zeros([2, 3, 28, 28], (Kind::Uint8, tch::Device::Cpu)),
            labels(&[2, 0]),
            classes(3),
        ),
        "test_images",
    );
    check(
        Cifar10::from_tensors(
            images(4),
            labels(&[0, 1, 2]),
            images(2),
            labels(&[2, 0]),
            classes(3),
        ),
        "train_labels",
    );
    check(
        Cifar10::from_tensors(
            images(4),
            labels(&[0, 1, 2, 1]).to_kind(Kind::Int),
            images(2),
            labels(&[2, 0]),
            classes(3),
        ),
        "train_labels",
    );
    check(
        Cifar10::from_tensors(
            images(4),
            labels(&[0, 1, 2, 1]),
            images(2),
            labels(&[3, 0]),
            classes(3),
        ),
        "test_labels",
    );
    check(
        Cifar10::from_tensors(
            images(4),
            labels(&[0, -1, 2, 1]),
            images(2),
            labels(&[2, 0]),
            classes(3),
        ),
        "train_labels",
    );
    assert!(matches!(
        Cifar10::from_tensors(images(1), labels(&[0]), images(1), labels(&[0]), vec![]),
        Err(DataError::InvalidConfig {
            field: "classes",
            ..
        })
    ));
}
