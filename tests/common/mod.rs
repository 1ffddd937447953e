//! Helpers shared by the integration tests.
use std::io::Write;

pub mod tensors;

/// Reports that `test` did not check what it is for, and why, on the process's stderr itself
/// (not through `eprintln!`, which the test harness captures and hides for passing tests), so
/// the skip shows in every `cargo test` log, passing or not.
#[allow(dead_code)]
pub fn skip(test: &str, reason: &str) {
    let banner = "!".repeat(10);
    let text = format!("\n{banner} SKIPPED {test}: {reason} {banner}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The path of the example binary `name`, built by `cargo test` beside the test binaries.
#[allow(dead_code)]
pub fn example(name: &str) -> std::path::PathBuf {
    use std::path::Path;
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "example binary {} is missing: run the tests with plain `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Held while a test seeds libtorch's global generator and draws initial weights from it
/// (`Trainer::resnext`, `ResNeXt::new`), so that tests running in parallel threads of one test
/// binary do not interleave their draws.
#[allow(dead_code)]
pub static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f`, which seeds or draws from libtorch's global generator, holding [`SEEDED_INIT`].
#[allow(dead_code)]
pub fn seeded<T>(f: impl FnOnce() -> T) -> T {
    let _init = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

/// CIFAR-10-shaped random data for training tests: `train` and `test` uint8 32x32 images with
/// labels in 0..10, drawn from libtorch's generator seeded with `seed` (under [`SEEDED_INIT`]).
#[allow(dead_code)]
pub fn random_cifar(seed: i64, train: i64, test: i64) -> resnext::data::DataSplits {
    use resnext::data::{Cifar10, CLASS_NAMES};
    use tch::{Device, Kind, Tensor};
    let (tr, te) = seeded(|| {
        tch::manual_seed(seed);
        let images = |n| Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, Device::Cpu));
        let labels = |n| Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        ((images(train), labels(train)), (images(test), labels(test)))
    });
    let classes = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let cifar = Cifar10::from_tensors(tr.0, tr.1, te.0, te.1, classes).unwrap();
    cifar.splits(Device::Cpu).unwrap()
}

/// Trains `config` in `dir` until just before batch `batch` of epoch `epoch` (0-based), where
/// the run stops and saves, then resumes it from `dir` and trains to the end: the resumed
/// trainer, done.
#[allow(dead_code)]
pub fn stopped_and_resumed(
    config: resnext::trainer::TrainConfig,
    dir: &std::path::Path,
    data: &resnext::data::DataSplits,
    (epoch, batch): (usize, usize),
) -> resnext::trainer::Trainer<resnext::ResNeXt> {
    use resnext::trainer::{BatchControl, Outcome, ProgressMode, Trainer};
    let mut t = seeded(|| Trainer::resnext(config).unwrap())
        .with_run_dir(dir)
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    t.on_batch(move |e, b| match (e, b) == (epoch, batch) {
        true => BatchControl::Stop,
        false => BatchControl::Continue,
    });
    let stopped = t.fit(data).unwrap();
    assert!(
        matches!(stopped, Outcome::Stopped { saved: true, .. }),
        "{stopped:?}"
    );
    drop(t);
    let mut resumed = seeded(|| Trainer::resume(dir, None)).unwrap();
    resumed.set_progress(ProgressMode::Silent);
    let done = resumed.fit(data).unwrap();
    assert!(matches!(done, Outcome::Completed(_)), "{done:?}");
    resumed
}

/// Every variable of `t`'s model by name (parameters and BatchNorm statistics): what two runs
/// are compared by, bit for bit.
#[allow(dead_code)]
pub fn variables(
    t: &resnext::trainer::Trainer<resnext::ResNeXt>,
) -> std::collections::BTreeMap<String, tch::Tensor> {
    t.var_store().variables().into_iter().collect()
}
