//! The Python side of the tests that exchange files with PyTorch: torch 2.11.0 (the wheel that
//! `scripts/setup-libtorch.sh` installed, i.e. the very libtorch this crate links), torchvision
//! 0.26.0 and safetensors, from `scripts/setup-python-deps.sh`, which installs them into a
//! cache when missing. If that fails the tests fail, saying what to run.
//!
//! Included with `#[path = "common/python.rs"] mod python;`.
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The PYTHONPATH with torch 2.11.0, torchvision 0.26.0 and safetensors, from
/// scripts/setup-python-deps.sh (which installs them into a cache when missing).
pub fn python_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = Path::new(REPO).join("scripts/setup-python-deps.sh");
        let out = Command::new("bash")
            .arg(&script)
            .current_dir(REPO)
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stdout.lines().last().unwrap_or("");
        match line.strip_prefix("export PYTHONPATH=") {
            Some(p) if out.status.success() => p.to_string(),
            _ => panic!(
                "the PyTorch tests need torch 2.11.0 + torchvision 0.26.0 + safetensors, and \
                 {} failed ({}):\n{stderr}\n{stdout}\nRun scripts/setup-libtorch.sh, then \
                 scripts/setup-python-deps.sh, and read their messages.",
                script.display(),
                out.status
            ),
        }
    })
}

/// Runs the Python program `code` with `args` (as `sys.argv[1:]`), panicking with its output
/// when it fails; returns its standard output.
#[allow(dead_code)]
pub fn run_python(code: &str, args: &[&str]) -> String {
    let start = Instant::now();
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .env("PYTHONPATH", python_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python3 failed ({}):\n{stdout}\n{}\nprogram:\n{code}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "[python {:.1} s] {}",
        start.elapsed().as_secs_f64(),
        stdout.trim()
    );
    stdout
}
