//! Helpers shared by the integration tests.
use std::io::Write;

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
