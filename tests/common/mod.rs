//! Helpers shared by the integration tests.
use std::io::Write;

/// Reports that `test` did not check what it is for, and why, on the process's stderr itself
/// (not through `eprintln!`, which the test harness captures and hides for passing tests), so
/// the skip shows in every `cargo test` log, passing or not.
pub fn skip(test: &str, reason: &str) {
    let banner = "!".repeat(10);
    let text = format!("\n{banner} SKIPPED {test}: {reason} {banner}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
