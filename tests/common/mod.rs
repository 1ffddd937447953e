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

/// The PYTHONPATH with torch 2.11.0, torchvision 0.26.0, Pillow and safetensors, from
/// `scripts/setup-python-deps.sh` (which installs them into a cache when missing). Panics,
/// saying what to run, when it fails: tests that compare with PyTorch do not pass without it.
#[allow(dead_code)]
pub fn python_path() -> &'static str {
    use std::path::Path;
    use std::process::Command;
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let repo = env!("CARGO_MANIFEST_DIR");
        let script = Path::new(repo).join("scripts/setup-python-deps.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(repo)
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stdout.lines().last().unwrap_or("");
        match line.strip_prefix("export PYTHONPATH=") {
            Some(p) if out.status.success() => p.to_string(),
            _ => panic!(
                "this test needs torch 2.11.0 + torchvision 0.26.0 + Pillow + safetensors, and \
                 {} failed ({}):\n{stderr}\n{stdout}\nRun scripts/setup-libtorch.sh, then \
                 scripts/setup-python-deps.sh, and read their messages.",
                script.display(),
                out.status
            ),
        }
    })
}

/// Runs the Python program `code` with `args` and [`python_path`], panicking with its output
/// when it fails; returns its stdout.
#[allow(dead_code)]
pub fn python(code: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .env("PYTHONPATH", python_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        out.status.success(),
        "python3 failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
