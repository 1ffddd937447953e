//! ONNX export checked where users deploy: the exported file passes `onnx.checker` (full
//! check), and ONNX Runtime (CPU) and OpenVINO (CPU, f32) compute the crate's own eval-mode
//! logits on the same random input, through the dynamic batch axis (batches of 3 and 1), within
//! a max relative difference of [`MAX_REL_DIFF`]; the metadata reads back. Bad inputs give
//! typed errors and leave no file.
//!
//! Python: scripts/setup-onnx-deps.sh installs onnx 1.23.2, onnxruntime 1.31.1 (required) and
//! openvino 2026.4.1 (optional: a SKIPPED line when it is missing) into a cache.
mod common;

use common::tensors::{max_rel_diff, randomize_batch_norms, read_f32, write_f32};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use resnext::data::Normalization;
use resnext::export::onnx::{export_onnx, export_onnx_from_weights, OnnxOptions};
use resnext::export::{ExportError, ExportFormat};
use resnext::weights::{save_weights_with, WeightsError, WeightsMetadata};
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use serde_json::Value;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Largest accepted `max |engine − crate| / max |crate|` over all logits. The engines compute
/// in fp32 like the crate, but sum in another order (their own convolution kernels, and with
/// BN folded the scale is applied to the weights before the sum instead of after it), so the
/// logits differ by a few ulps of accumulated rounding: about 1e-6 relative, far below 1e-4.
/// A wrong layer (a missed stride, pad, group or BN) moves them by 1e-1 or more.
const MAX_REL_DIFF: f64 = 1e-4;

/// The PYTHONPATH of scripts/setup-onnx-deps.sh (installed into a cache when missing).
fn onnx_python_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = Path::new(REPO).join("scripts/setup-onnx-deps.sh");
        let out = Command::new("bash").arg(&script).current_dir(REPO).output();
        let out = out.unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("export PYTHONPATH="))
        {
            Some(p) if out.status.success() => p.to_string(),
            _ => panic!(
                "the ONNX tests need onnx 1.23.2 + onnxruntime 1.31.1, and {} failed ({}):\n{}\n\
                 {stdout}\nRun scripts/setup-libtorch.sh, then scripts/setup-onnx-deps.sh.",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    })
}

/// One export to check: the network, the image side, BN kept or folded, from a weights file
/// (through its metadata) or from the network in memory.
struct Case {
    config: ResNeXtConfig,
    image: i64,
    keep_batchnorm: bool,
    from_file: bool,
}

/// Runs scripts/onnx/check.py on `model` with `images` [N, 3, H, W] (written into `dir`);
/// returns its JSON report and the directory of the engines' logits.
fn run_check(model: &Path, images: &Tensor, dir: &Path) -> Value {
    let input = dir.join("images.f32");
    write_f32(&input, images);
    let size = images.size();
    let dims: Vec<String> = [size[0], size[2], size[3]]
        .iter()
        .map(i64::to_string)
        .collect();
    let start = Instant::now();
    let out = Command::new("python3")
        .arg(Path::new(REPO).join("scripts/onnx/check.py"))
        .args([model, &input])
        .args(&dims)
        .arg(dir)
        .env("PYTHONPATH", onnx_python_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    if let Some(line) = stderr.lines().find(|l| l.starts_with("SKIPPED")) {
        common::skip("OpenVINO comparison", line);
    }
    eprintln!("[check.py {:.1} s]", start.elapsed().as_secs_f64());
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("check.py's JSON report")
}

/// Exports `case`, runs it in every engine and compares with the crate; returns the largest
/// relative difference per engine.
fn check_case(case: &Case) -> Vec<(String, f64)> {
    let cfg = &case.config;
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, images) = common::seeded(|| {
        tch::manual_seed(7);
        let net = ResNeXt::new(&vs.root(), cfg);
        randomize_batch_norms(&vs);
        let images = Tensor::randn([3, 3, case.image, case.image], (Kind::Float, Device::Cpu));
        (net, images)
    });
    let meta = WeightsMetadata {
        model: cfg.clone(),
        classes: (0..cfg.num_classes)
            .map(|i| format!("class {i} \"é\""))
            .collect(),
        image_size: case.image,
        normalization: Normalization {
            mean: [0.5, 0.4, 0.3],
            std: [0.2, 0.25, 0.3],
        },
    };
    let model = dir.path().join("model.onnx");
    let options = OnnxOptions {
        keep_batchnorm: case.keep_batchnorm,
    };
    if case.from_file {
        let weights = dir.path().join("weights.safetensors");
        save_weights_with(&vs, &weights, 0, Some(&meta)).unwrap();
        export_onnx_from_weights(&weights, None, &model, options).unwrap();
    } else {
        export_onnx(&net, Some(&meta), &model, options).unwrap();
    }
    let report = run_check(&model, &images, dir.path());
    check_report(&report, &meta, case.keep_batchnorm);
    let want3 = tch::no_grad(|| net.forward_t(&images, false));
    let want1 = tch::no_grad(|| net.forward_t(&images.narrow(0, 0, 1), false));
    let mut diffs = Vec::new();
    for engine in report["engines"].as_array().unwrap() {
        let engine = engine.as_str().unwrap();
        let k = cfg.num_classes;
        let got3 = read_f32(&dir.path().join(format!("{engine}.f32")), &[3, k]);
        let got1 = read_f32(&dir.path().join(format!("{engine}-1.f32")), &[1, k]);
        let diff = max_rel_diff(&got3, &want3).max(max_rel_diff(&got1, &want1));
        assert!(
            diff <= MAX_REL_DIFF,
            "{engine}: max relative difference {diff:e} > {MAX_REL_DIFF:e}"
        );
        // The comparison tells logits apart: the same logits in another image order fail it.
        let control = max_rel_diff(&got3, &want3.flip([0]));
        assert!(
            control > MAX_REL_DIFF,
            "{engine}: images not told apart ({control:e})"
        );
        diffs.push((engine.to_string(), diff));
    }
    eprintln!(
        "[onnx] {} {:?} image {} keep_bn={}: {diffs:?}",
        cfg.name, cfg.stem, case.image, case.keep_batchnorm
    );
    diffs
}

/// The report's graph signature, opset, operators and metadata are those documented.
fn check_report(report: &Value, meta: &WeightsMetadata, keep_bn: bool) {
    let k = meta.model.num_classes;
    assert_eq!(report["opset"], serde_json::json!([["", 17]]));
    assert_eq!(
        report["inputs"],
        serde_json::json!([["images", ["N", 3, "H", "W"]]])
    );
    assert_eq!(report["outputs"], serde_json::json!([["logits", ["N", k]]]));
    let ops: Vec<&str> = report["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        ops.contains(&"BatchNormalization"),
        keep_bn,
        "operators {ops:?}"
    );
    let props = &report["metadata"];
    let classes: Vec<String> =
        serde_json::from_str(props["resnext.classes"].as_str().unwrap()).unwrap();
    assert_eq!(classes, meta.classes);
    let norm: Normalization =
        serde_json::from_str(props["resnext.normalization"].as_str().unwrap()).unwrap();
    assert_eq!(norm, meta.normalization);
    let model: ResNeXtConfig =
        serde_json::from_str(props["resnext.model"].as_str().unwrap()).unwrap();
    assert_eq!(model, meta.model);
    assert_eq!(props["resnext.image_size"], meta.image_size.to_string());
    assert_eq!(
        props["resnext.batchnorm"],
        if keep_bn { "kept" } else { "folded" }
    );
}

#[test]
fn tiny_cifar_stem_runs_in_onnxruntime_and_openvino() {
    for (keep_batchnorm, from_file) in [(false, true), (true, false)] {
        let config = ResNeXtConfig::tiny(10);
        check_case(&Case {
            config,
            image: 32,
            keep_batchnorm,
            from_file,
        });
    }
}

#[test]
fn tiny_imagenet_stem_runs_in_onnxruntime_and_openvino() {
    for (keep_batchnorm, from_file) in [(false, false), (true, true)] {
        let config = ResNeXtConfig::tiny(7).with_stem(Stem::ImageNet);
        check_case(&Case {
            config,
            image: 64,
            keep_batchnorm,
            from_file,
        });
    }
}

/// The full-size network (about 92 MB of parameters), once: BN folded, from memory.
#[test]
fn resnext50_32x4d_cifar_stem_runs_in_onnxruntime_and_openvino() {
    let config = ResNeXtConfig::resnext50_32x4d(10);
    check_case(&Case {
        config,
        image: 32,
        keep_batchnorm: false,
        from_file: false,
    });
}

/// A path to write into a folder that does not exist.
fn unwritable(dir: &Path) -> PathBuf {
    dir.join("missing-folder").join("model.onnx")
}

#[test]
fn onnx_export_errors_are_typed_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = common::seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(4)));
    let options = OnnxOptions::default();
    // An output that cannot be written: the error names it, nothing is left.
    let out = unwritable(dir.path());
    let err = export_onnx(&net, None, &out, options).unwrap_err();
    assert!(matches!(err, ExportError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
    // Metadata of another model.
    let meta = WeightsMetadata {
        model: ResNeXtConfig::tiny(3),
        classes: vec!["a".into(), "b".into(), "c".into()],
        image_size: 32,
        normalization: Normalization::default(),
    };
    let out = dir.path().join("model.onnx");
    let err = export_onnx(&net, Some(&meta), &out, options).unwrap_err();
    assert!(matches!(err, ExportError::Metadata { .. }), "{err:?}");
    // A weights file whose tensors do not fit its metadata (4 classes stored, 3 claimed).
    let weights = dir.path().join("w.safetensors");
    save_weights_with(&vs, &weights, 0, Some(&meta)).unwrap();
    let err = export_onnx_from_weights(&weights, None, &out, options).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Weights(WeightsError::Metadata { .. } | WeightsError::Incompatible { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("w.safetensors"), "{err}");
    // A file in no known format.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a weights file at all").unwrap();
    let err = export_onnx_from_weights(&junk, None, &out, options).unwrap_err();
    assert!(matches!(err, ExportError::Weights(_)), "{err:?}");
    assert!(err.to_string().contains("junk.bin"), "{err}");
    assert!(!out.exists() && std::fs::read_dir(dir.path()).unwrap().count() == 2);
    // Formats.
    let err = "tflite".parse::<ExportFormat>().unwrap_err();
    assert!(err.to_string().contains("tflite"), "{err}");
    assert!(err.to_string().contains("onnx, torchscript"), "{err}");
    assert_eq!(
        "TorchScript".parse::<ExportFormat>().unwrap(),
        ExportFormat::TorchScript
    );
}

#[test]
fn onnx_export_of_unknown_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let mut config = ResNeXtConfig::tiny(4);
    config.stem_channels += 8;
    common::seeded(|| ResNeXt::new(&vs.root(), &config));
    let weights = dir.path().join("custom.safetensors");
    save_weights_with(&vs, &weights, 0, None).unwrap();
    let out = dir.path().join("model.onnx");
    let err = export_onnx_from_weights(&weights, None, &out, OnnxOptions::default()).unwrap_err();
    assert!(
        matches!(err, ExportError::UnknownArchitecture { .. }),
        "{err:?}"
    );
    // Named explicitly, it exports.
    export_onnx_from_weights(&weights, Some(&config), &out, OnnxOptions::default()).unwrap();
    assert!(out.is_file());
}

#[test]
fn export_example_writes_onnx_and_torchscript() {
    let Some(example) = example_or_skip("export", "export_example_writes_onnx_and_torchscript")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    common::seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10)));
    let weights = dir.path().join("w.safetensors");
    save_weights_with(&vs, &weights, 0, None).unwrap();
    let out = dir.path().join("m.onnx");
    let run = |format: &str| {
        Command::new(&example)
            .arg("--weights")
            .arg(&weights)
            .args(["--format", format, "--keep-batchnorm", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let ok = run("onnx");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("tiny (Cifar stem, 10 classes)"));
    assert!(out.is_file());
    std::fs::remove_file(&out).unwrap();
    let ts = run("torchscript");
    assert!(
        ts.status.success(),
        "{}",
        String::from_utf8_lossy(&ts.stderr)
    );
    assert!(String::from_utf8_lossy(&ts.stdout).contains("TorchScript"));
    // A TorchScript archive (a zip), not an ONNX protobuf.
    assert_eq!(&std::fs::read(&out).unwrap()[..2], b"PK");
    std::fs::remove_file(&out).unwrap();
    let refused = run("tflite");
    assert!(!refused.status.success() && !out.exists());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("valid formats are: onnx, torchscript"),
        "{stderr}"
    );
}

/// The example binary `name`, or `None` (with a SKIPPED line for `test`) when `cargo test
/// --test onnx` did not build it (plain `cargo test` builds the examples).
fn example_or_skip(name: &str, test: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .and_then(Path::parent)?
        .join("examples")
        .join(name);
    if !example.is_file() {
        common::skip(
            test,
            &format!("the {name} example is not built (plain `cargo test` builds it; `cargo test --test onnx` does not)"),
        );
        return None;
    }
    Some(example)
}

/// Tiny weights (10 classes, with metadata) saved as `name` in `dir`, exported to `name.onnx`.
fn tiny_weights_and_onnx(dir: &Path, name: &str, seed: i64) -> (PathBuf, PathBuf) {
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ResNeXtConfig::tiny(10);
    common::seeded(|| {
        tch::manual_seed(seed);
        ResNeXt::new(&vs.root(), &config);
        randomize_batch_norms(&vs);
    });
    let meta = WeightsMetadata {
        model: config,
        classes: (0..10).map(|i| format!("c{i}")).collect(),
        image_size: 32,
        normalization: Normalization::default(),
    };
    let weights = dir.join(format!("{name}.safetensors"));
    save_weights_with(&vs, &weights, 0, Some(&meta)).unwrap();
    let model = dir.join(format!("{name}.onnx"));
    export_onnx_from_weights(&weights, None, &model, OnnxOptions::default()).unwrap();
    (weights, model)
}

#[test]
fn predict_compare_onnx_agrees_with_its_export_and_not_with_another() {
    let test = "predict_compare_onnx_agrees_with_its_export_and_not_with_another";
    let Some(predict) = example_or_skip("predict", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (weights, model) = tiny_weights_and_onnx(dir.path(), "a", 1);
    let (_, other) = tiny_weights_and_onnx(dir.path(), "b", 2);
    let images: Vec<PathBuf> = (0..2u8)
        .map(|k| {
            let path = dir.path().join(format!("img{k}.png"));
            let img = image::RgbImage::from_fn(40, 36, |x, y| {
                image::Rgb([(x * 6) as u8, (y * 7) as u8 ^ (k * 90), (x * y) as u8])
            });
            img.save(&path).unwrap();
            path
        })
        .collect();
    let run = |onnx: &Path| {
        let out = Command::new(&predict)
            .arg("--weights")
            .arg(&weights)
            .args(["--device", "cpu", "--compare-onnx"])
            .arg(onnx)
            .args(&images)
            .env("PYTHONPATH", onnx_python_path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stderr) = run(&model);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("onnxruntime on 2 image(s)") && stderr.contains("ok, within 1e-4"),
        "{stderr}"
    );
    let (ok, stderr) = run(&other);
    assert!(!ok && stderr.contains("ABOVE 1e-4"), "{stderr}");
}

/// torchvision's own ResNeXt-50 32x4d (ImageNet stem, 10 classes, random BN statistics), saved
/// by `torch.save(state_dict)` as a `.pth`, exported from that file (architecture matched by
/// its tensors), runs in the engines as it runs in PyTorch.
#[test]
fn torchvision_pth_exports_and_matches_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let (pth, input, want) = (
        dir.path().join("m.pth"),
        dir.path().join("x.f32"),
        dir.path().join("y.f32"),
    );
    let code = r#"
import sys, torch, torchvision
torch.manual_seed(3)
m = torchvision.models.resnext50_32x4d(num_classes=10)
with torch.no_grad():
    for b in m.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.running_mean.normal_(0, 0.2); b.running_var.uniform_(0.5, 1.5)
            b.weight.uniform_(0.5, 1.5); b.bias.normal_(0, 0.2)
m.eval()
torch.save(m.state_dict(), sys.argv[1])
x = torch.randn(3, 3, 64, 64)
x.numpy().astype("<f4").tofile(sys.argv[2])
with torch.no_grad():
    m(x).numpy().astype("<f4").tofile(sys.argv[3])
"#;
    let out = Command::new("python3")
        .args(["-c", code])
        .args([&pth, &input, &want])
        .env("PYTHONPATH", onnx_python_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = dir.path().join("m.onnx");
    let report = export_onnx_from_weights(&pth, None, &model, OnnxOptions::default()).unwrap();
    assert_eq!(
        (report.config.name.as_str(), report.config.stem),
        ("resnext50_32x4d", Stem::ImageNet)
    );
    let images = read_f32(&input, &[3, 3, 64, 64]);
    let want = read_f32(&want, &[3, 10]);
    let checked = run_check(&model, &images, dir.path());
    for engine in checked["engines"].as_array().unwrap() {
        let engine = engine.as_str().unwrap();
        let got = read_f32(&dir.path().join(format!("{engine}.f32")), &[3, 10]);
        let diff = max_rel_diff(&got, &want);
        assert!(diff <= MAX_REL_DIFF, "{engine} vs PyTorch: {diff:e}");
        eprintln!("[onnx] torchvision resnext50_32x4d .pth, {engine} vs PyTorch: {diff:e}");
    }
}
