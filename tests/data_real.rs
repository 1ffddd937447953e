//! The real CIFAR-10 copy of the workspace (`../shared/data/cifar-10-binary.tar.gz`), used as
//! a local mirror with its own checksum: extraction, file checksums, record and class counts,
//! channel statistics after normalisation, and a few augmented batches. Skipped, loudly, when
//! the archive is absent (`RESNEXT_CIFAR10_ARCHIVE` names it when it is elsewhere).
use std::fs;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use resnext::data::{
    batches, ensure_cifar10, BatchConfig, Cifar10, DownloadOptions, Normalization, CLASS_NAMES,
};
use tch::{Device, Kind, Tensor};

mod common;

const MIRROR_MD5: &str = "324a4b0b915a15a5b99beeb78016aa48";
const FILE_MD5: [(&str, &str); 6] = [
    ("data_batch_1.bin", "752e000630cf27a4f812c13bc744a161"),
    ("data_batch_2.bin", "d1f8f515cdd84dad8e657115c716f853"),
    ("data_batch_3.bin", "eb4c9f89456e06f46fbd90b868c19034"),
    ("data_batch_4.bin", "ca762627d67b0454e3cb8d55c4920156"),
    ("data_batch_5.bin", "72721eb939398dc539bef22a9b0c29aa"),
    ("test_batch.bin", "78e587ba3db901cd80dac811bd592c6d"),
];

/// Names the archive when it is elsewhere than `../shared/data/` beside the checkout.
const ARCHIVE_ENV: &str = "RESNEXT_CIFAR10_ARCHIVE";

fn archive_path() -> PathBuf {
    match std::env::var_os(ARCHIVE_ENV) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar-10-binary.tar.gz"),
    }
}

fn class_counts(labels: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(labels.bincount::<Tensor>(None, 10)).unwrap()
}

#[test]
fn real_cifar10_extracts_loads_and_batches() {
    let archive = archive_path();
    if !archive.is_file() {
        common::skip(
            "real_cifar10_extracts_loads_and_batches",
            &format!(
                "the real CIFAR-10 archive {} is absent (set {ARCHIVE_ENV} to its path), so the \
                 loader was NOT checked against real data",
                archive.display()
            ),
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        url: Some(archive.to_string_lossy().into_owned()),
        md5: Some(MIRROR_MD5.into()),
        quiet: true,
    };
    let dir = ensure_cifar10(root.path(), &opts).unwrap();
    for (name, want) in FILE_MD5 {
        let got: String = Md5::digest(fs::read(dir.join(name)).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, want, "{name}");
    }

    let data = Cifar10::load(root.path()).unwrap();
    assert_eq!(data.train_images.size(), [50_000, 3, 32, 32]);
    assert_eq!(data.test_images.size(), [10_000, 3, 32, 32]);
    assert_eq!(class_counts(&data.train_labels), vec![5_000; 10]);
    assert_eq!(class_counts(&data.test_labels), vec![1_000; 10]);
    assert_eq!(data.classes, CLASS_NAMES);

    // Normalised with the CIFAR-10 statistics, every channel has mean ~0 and std ~1 (this
    // copy is JPEG-compressed, so not exactly); swapped channels would be far off.
    let norm = Normalization::default();
    let x = data.train_images.to_kind(Kind::Float) / 255.0;
    for c in 0..3 {
        let ch = x.select(1, c);
        let mean = (ch.mean(Kind::Float).double_value(&[]) - f64::from(norm.mean[c as usize]))
            / f64::from(norm.std[c as usize]);
        let std = ch.std(true).double_value(&[]) / f64::from(norm.std[c as usize]);
        eprintln!("channel {c}: normalised mean {mean:.4}, std {std:.4}");
        assert!(mean.abs() < 0.03, "channel {c}: normalised mean {mean}");
        assert!(
            (0.93..1.05).contains(&std),
            "channel {c}: normalised std {std}"
        );
    }

    let cfg = BatchConfig {
        batch_size: 256,
        limit: Some(1024),
        seed: 1,
        ..BatchConfig::default()
    };
    let all: Vec<_> = batches(
        &data.train_images,
        &data.train_labels,
        &cfg,
        0,
        0,
        Device::Cpu,
    )
    .unwrap()
    .collect();
    assert_eq!(all.len(), 4);
    for b in &all {
        assert_eq!(b.images.size(), [256, 3, 32, 32]);
        assert!(b.indices.iter().all(|&i| i < 1024));
        let m = b.images.mean(Kind::Float).double_value(&[]);
        assert!(m.abs() < 0.3, "batch {} mean {m}", b.index);
    }
}
