//! The run directory after a failure at every single write of a run (a kill or a full disk at
//! that instant, injected through `resnext::io::fault`), then a resume: it must end exactly as
//! the directory of an uninterrupted run, with no temporary file left. One test in its own
//! binary, because the fault switch is process-wide.
use std::path::Path;

use resnext::data::{Cifar10, DataSplits, CLASS_NAMES};
use resnext::io::fault;
use resnext::trainer::{files, Outcome, ProgressMode, TrainConfig, Trainer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

/// Random images whose class is written as a bright square (as in tests/trainer.rs).
fn synthetic(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let labels = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let images = Tensor::randint(96, [n, 3, 32, 32], (Kind::Int64, Device::Cpu));
    for (i, c) in Vec::<i64>::try_from(&labels)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let (y, x) = (((c / 3) % 2) * 16, ((c / 6) % 2) * 16);
        let _ = images
            .get(i as i64)
            .get(c % 3)
            .narrow(0, y, 12)
            .narrow(1, x, 12)
            .fill_(255);
    }
    (images.to_kind(Kind::Uint8), labels)
}

fn data() -> DataSplits {
    let (xi, xl) = synthetic(96, 21);
    let (ti, tl) = synthetic(48, 22);
    let classes = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let cifar = Cifar10::from_tensors(xi, xl, ti, tl, classes).unwrap();
    cifar.splits(Device::Cpu).unwrap()
}

fn config() -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// Starts the run in `dir`, or resumes it as `--resume` does once it has begun (its
/// `config.json` written: a failure before that is an error at start, and the user starts
/// again), and trains to the end. A run stopped before its first checkpoint resumes too.
fn run(dir: &Path, data: &DataSplits) -> Result<Outcome, resnext::trainer::TrainError> {
    let mut t = if dir.join(files::CONFIG).exists() {
        Trainer::resume(dir, None)?
    } else {
        Trainer::resnext(config())?.with_run_dir(dir)?
    };
    t.set_progress(ProgressMode::Silent);
    t.fit(data)
}

/// A JSON value without its timing fields (seconds and images per second vary run to run).
fn untimed(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["seconds", "train_images_per_sec", "total_seconds"] {
            o.remove(k);
        }
    }
    v
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join(files::METRICS))
        .unwrap()
        .lines()
        .map(|l| untimed(serde_json::from_str(l).unwrap()))
        .collect()
}

fn summary(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join(files::SUMMARY)).unwrap();
    untimed(serde_json::from_str(&text).unwrap())
}

/// The directory's files other than the lock file, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != resnext::io::LOCK_FILE)
        .collect();
    names.sort();
    names
}

/// `dir` ended as the uninterrupted run in `reference` did; `what` names the case.
fn assert_same_run(dir: &Path, reference: &Path, what: &str) {
    assert_eq!(listing(dir), listing(reference), "{what}: files");
    let m = metrics(dir);
    assert_eq!(m, metrics(reference), "{what}: metrics.jsonl");
    let epochs: Vec<u64> = m.iter().map(|l| l["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [1, 2, 3], "{what}: one line per epoch, in order");
    let s = summary(dir);
    assert_eq!(s, summary(reference), "{what}: summary.json");
    // best_epoch is the first epoch of the highest test accuracy in metrics.jsonl.
    let accs: Vec<f64> = m.iter().map(|l| l["test_acc"].as_f64().unwrap()).collect();
    let top = accs.iter().cloned().fold(f64::MIN, f64::max);
    let argmax = accs.iter().position(|&a| a == top).unwrap() + 1;
    assert_eq!(s["best_epoch"].as_u64().unwrap() as usize, argmax, "{what}");
    for f in [files::LAST, files::BEST] {
        let a = std::fs::read(dir.join(f)).unwrap();
        let b = std::fs::read(reference.join(f)).unwrap();
        assert!(a == b, "{what}: {f} differs from the uninterrupted run's");
    }
}

#[test]
fn a_failure_at_any_write_then_a_resume_ends_as_an_uninterrupted_run() {
    let data = data();
    let reference = tempfile::tempdir().unwrap();
    assert!(matches!(
        run(reference.path(), &data).unwrap(),
        Outcome::Completed(_)
    ));
    // Count the writes of a whole run by failing ever later ones until a run completes.
    let mut n = 1;
    loop {
        let dir = tempfile::tempdir().unwrap();
        fault::fail_nth_write(n);
        let first = run(dir.path(), &data);
        let reached = !fault::disarm();
        if !reached {
            assert!(first.is_ok(), "write {n}: {first:?}");
            assert!(n > 12, "a 3-epoch run writes more than {n} files");
            break;
        }
        let err = first.expect_err("an injected failure must surface as an error");
        assert!(
            err.to_string().contains("injected fault"),
            "write {n}: {err}"
        );
        // Resume (a second resume of a complete run must change nothing either).
        for _ in 0..2 {
            let out = run(dir.path(), &data).unwrap();
            assert!(
                matches!(out, Outcome::Completed(_) | Outcome::AlreadyComplete),
                "write {n}: {out:?}"
            );
        }
        assert_same_run(
            dir.path(),
            reference.path(),
            &format!("failure at write {n}"),
        );
        n += 1;
    }
}
