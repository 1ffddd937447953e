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
