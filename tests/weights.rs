//! Weights between this crate and PyTorch: torchvision's ResNeXt-50 32x4d (ImageNet and CIFAR
//! stems) loaded here gives PyTorch's logits, our export loads into torchvision with
//! `strict=True` and gives ours, one SGD step matches `torch.optim.SGD`, and every bad file is
//! refused with a precise error and leaves the model untouched.
//!
//! The parity tests run `scripts/pytorch/parity.py` with torch 2.11.0 (the wheel that
//! `scripts/setup-libtorch.sh` installed, i.e. the very libtorch this crate links) and
//! torchvision 0.26.0; `scripts/setup-python-deps.sh` is run first and installs torchvision into
//! a cache when it is missing. If that fails the tests fail, saying what to run.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use resnext::io::{read_safetensors, write_safetensors, IoError};
use resnext::trainer::{Sgd, SgdConfig};
use resnext::weights::{
    config_from_weights, load_model, load_weights, load_weights_with, save_weights, LoadOptions,
    WeightsError,
};
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use tch::nn;
use tch::{Device, Kind, Tensor};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MODEL: &str = "resnext50_32x4d";
/// Largest relative difference of logits accepted (fp32, same libtorch on both sides).
const LOGIT_TOL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------
// The Python side.

/// The PYTHONPATH with torch 2.11.0, torchvision 0.26.0 and safetensors, from
/// scripts/setup-python-deps.sh (which installs them into a cache when missing).
fn python_path() -> &'static str {
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
                "the PyTorch parity tests need torch 2.11.0 + torchvision 0.26.0 + safetensors, and \
                 {} failed ({}):\n{stderr}\n{stdout}\nRun scripts/setup-libtorch.sh, then \
                 scripts/setup-python-deps.sh, and read their messages.",
                script.display(),
                out.status
            ),
        }
    })
}

/// Runs `scripts/pytorch/parity.py ARGS`, panicking with its output when it fails.
fn parity(args: &[&str]) {
    let script = Path::new(REPO).join("scripts/pytorch/parity.py");
    let start = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .env("PYTHONPATH", python_path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "python3 parity.py {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "[python {:.1} s] {}",
        start.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

fn stem_arg(stem: Stem) -> &'static str {
    match stem {
        Stem::Cifar => "cifar",
        Stem::ImageNet => "imagenet",
    }
}

/// A folder for this test's files under cargo's per-target temporary folder.
fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("weights")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// torchvision's model with random weights and BN statistics, made by PyTorch once per run:
/// `weights.safetensors` and `data.safetensors` (`input`, `labels`, eval `logits`).
fn pytorch_fixture(stem: Stem) -> &'static Path {
    static CIFAR: OnceLock<PathBuf> = OnceLock::new();
    static IMAGENET: OnceLock<PathBuf> = OnceLock::new();
    let cell = match stem {
        Stem::Cifar => &CIFAR,
        Stem::ImageNet => &IMAGENET,
    };
    cell.get_or_init(|| {
        let dir = work_dir(&format!("pytorch-{}", stem_arg(stem)));
        let out = dir.to_str().unwrap();
        parity(&[
            "make",
            "--stem",
            stem_arg(stem),
            "--out",
            out,
            "--batch",
            "2",
        ]);
        dir
    })
}

fn tensor(path: &Path, name: &str) -> Tensor {
    read_safetensors(path)
        .unwrap()
        .tensors
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{} has no `{name}`", path.display()))
        .1
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// `max |a - b| / max |b|`.
fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    let diff = (&a - &b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(f64::MIN_POSITIVE)
}

fn eval_logits(net: &ResNeXt, x: &Tensor) -> Tensor {
    tch::no_grad(|| net.try_forward_t(x, false).unwrap())
}

/// Deep copies of every variable, by name.
fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn assert_unchanged(vs: &nn::VarStore, before: &[(String, Tensor)], what: &str) {
    let now = snapshot(vs);
    assert_eq!(now.len(), before.len());
    for ((n, a), (_, b)) in now.iter().zip(before) {
        assert!(a.equal(b), "{what}: `{n}` was modified by a failed load");
    }
}

/// Random BN affine parameters and running statistics, so that an export that drops or mixes
/// them up gives different logits.
fn randomise_bn(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let n = t.size()[0];
            let opts = (Kind::Float, Device::Cpu);
            let value = if name.ends_with(".running_mean") {
                Tensor::randn([n], opts) * 0.1
            } else if name.ends_with(".running_var") {
                Tensor::rand([n], opts) + 0.5
            } else if name.contains("bn") || name.contains("downsample.1") {
                if name.ends_with(".weight") {
                    Tensor::rand([n], opts) + 0.5
                } else {
                    Tensor::randn([n], opts) * 0.1
                }
            } else {
                continue;
            };
            t.copy_(&value);
        }
    });
}

fn tiny_store(classes: i64) -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(classes));
    randomise_bn(&vs);
    vs
}

// ---------------------------------------------------------------------------------------------
// PyTorch -> us.

fn pytorch_weights_give_pytorch_logits(stem: Stem) {
    let start = Instant::now();
    let dir = pytorch_fixture(stem);
    let weights = dir.join("weights.safetensors");
    let data = dir.join("data.safetensors");

    let config = config_from_weights(MODEL, &weights).unwrap();
    assert_eq!(config.stem, stem);
    assert_eq!(
        config.num_classes,
        if stem == Stem::ImageNet { 1000 } else { 10 }
    );
    let loaded = load_model(&config, &weights, Device::Cpu, LoadOptions { strict: true }).unwrap();
    let report = &loaded.report;
    assert_eq!(report.loaded, loaded.vs.variables().len());
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert!(report.converted.is_empty());
    assert!(
        report.num_batches_tracked.is_some_and(|n| n > 0),
        "PyTorch's num_batches_tracked not seen"
    );

    let x = tensor(&data, "input");
    let expected = tensor(&data, "logits");
    let ours = eval_logits(&loaded.model, &x);
    assert_eq!(ours.size(), expected.size());
    let rel = max_rel(&ours, &expected);
    eprintln!(
        "PyTorch -> us, {stem:?} stem: max relative logit difference {rel:.3e} (max |logit| {:.3})",
        expected.abs().max().double_value(&[])
    );
    assert!(rel < LOGIT_TOL, "{stem:?}: relative difference {rel:e}");

    // The comparison is sensitive: forgetting one BN's running statistics shows.
    tch::no_grad(|| {
        let mut v = loaded.vs.variables()["layer3.2.bn2.running_var"].shallow_clone();
        let _ = v.fill_(1.0);
    });
    let rel_broken = max_rel(&eval_logits(&loaded.model, &x), &expected);
    assert!(
        rel_broken > 100.0 * LOGIT_TOL,
        "resetting one running_var changed the logits by only {rel_broken:e}"
    );
    eprintln!(
        "pytorch_to_us {stem:?}: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn pytorch_weights_give_pytorch_logits_imagenet_stem() {
    pytorch_weights_give_pytorch_logits(Stem::ImageNet);
}

#[test]
fn pytorch_weights_give_pytorch_logits_cifar_stem() {
    pytorch_weights_give_pytorch_logits(Stem::Cifar);
}

// ---------------------------------------------------------------------------------------------
// Us -> PyTorch.

fn our_export_loads_strictly_into_torchvision(stem: Stem, size: i64) {
    let start = Instant::now();
    tch::manual_seed(11);
    let classes = if stem == Stem::ImageNet { 1000 } else { 10 };
    let config = ResNeXtConfig::from_name(MODEL, classes)
        .unwrap()
        .with_stem(stem);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &config);
    randomise_bn(&vs);
    let dir = work_dir(&format!("export-{}", stem_arg(stem)));
    let weights = dir.join("ours.safetensors");
    save_weights(&vs, &weights, 123).unwrap();

    let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
    let input = dir.join("input.safetensors");
    write_safetensors(&input, &[("input".to_string(), x.shallow_clone())], None).unwrap();
    let out = dir.join("logits.safetensors");
    parity(&[
        "logits",
        "--stem",
        stem_arg(stem),
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let theirs = tensor(&out, "logits");
    let ours = eval_logits(&net, &x);
    let rel = max_rel(&theirs, &ours);
    eprintln!("us -> PyTorch, {stem:?} stem: max relative logit difference {rel:.3e}");
    assert!(rel < LOGIT_TOL, "{stem:?}: relative difference {rel:e}");
    eprintln!(
        "us_to_pytorch {stem:?}: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn our_export_loads_strictly_into_torchvision_imagenet_stem() {
    our_export_loads_strictly_into_torchvision(Stem::ImageNet, 224);
}

#[test]
fn our_export_loads_strictly_into_torchvision_cifar_stem() {
    our_export_loads_strictly_into_torchvision(Stem::Cifar, 32);
}

// ---------------------------------------------------------------------------------------------
// One training step.

#[test]
fn one_sgd_step_matches_torch_optim_sgd() {
    let start = Instant::now();
    let stem = Stem::Cifar;
    let weights = pytorch_fixture(stem).join("weights.safetensors");
    // A batch of 4 random 16x16 images (the CIFAR stem takes any size; 16x16 keeps the step
    // quick on a CPU while every BN still sees at least 16 values per channel).
    tch::manual_seed(5);
    let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [4], (Kind::Int64, Device::Cpu));
    let work = work_dir("sgd-step");
    let data = work.join("batch.safetensors");
    write_safetensors(
        &data,
        &[
            ("input".to_string(), x.shallow_clone()),
            ("labels".to_string(), y.shallow_clone()),
        ],
        None,
    )
    .unwrap();
    let theirs_path = work.join("after.safetensors");
    parity(&[
        "train-step",
        "--stem",
        stem_arg(stem),
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        theirs_path.to_str().unwrap(),
    ]);

    let config = config_from_weights(MODEL, &weights).unwrap();
    let loaded = load_model(&config, &weights, Device::Cpu, LoadOptions { strict: true }).unwrap();
    let before = snapshot(&loaded.vs);
    let mut sgd = Sgd::new(
        &loaded.vs,
        SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
        },
    );
    sgd.zero_grad();
    let loss = loaded
        .model
        .try_forward_t(&x, true)
        .unwrap()
        .cross_entropy_for_logits(&y);
    loss.backward();
    sgd.step(0.1);

    let theirs = read_safetensors(&theirs_path).unwrap();
    let their_loss: f64 = theirs.metadata["loss"].parse().unwrap();
    let our_loss = loss.double_value(&[]);
    eprintln!("SGD step: loss ours {our_loss:.7}, PyTorch {their_loss:.7}");
    assert!((our_loss - their_loss).abs() <= 1e-5 * their_loss.abs());

    let theirs: std::collections::HashMap<String, Tensor> = theirs.tensors.into_iter().collect();
    let after = snapshot(&loaded.vs);
    // For every tensor: the difference between the two results, relative to the size of the
    // change the step made (so an update that is wrong by more than a fraction of itself shows).
    let (mut worst_param, mut worst_stat) = (0f64, 0f64);
    let mut changed = 0;
    for ((name, ours), (_, old)) in after.iter().zip(&before) {
        let t = theirs
            .get(name)
            .unwrap_or_else(|| panic!("PyTorch's state_dict has no `{name}`"));
        let step = (t - old).abs().max().double_value(&[]);
        let diff = (ours - t).abs().max().double_value(&[]);
        let scale = old.abs().max().double_value(&[]);
        if step > 0.0 {
            changed += 1;
        }
        let rel = diff / step.max(1e-6 * scale).max(f64::MIN_POSITIVE);
        let is_stat = name.ends_with(".running_mean") || name.ends_with(".running_var");
        if is_stat {
            worst_stat = worst_stat.max(rel);
        } else {
            worst_param = worst_param.max(rel);
        }
        assert!(
            rel < 1e-3,
            "`{name}`: ours and PyTorch's differ by {diff:e} after a step of {step:e}"
        );
    }
    assert!(
        changed == after.len(),
        "only {changed} of {} tensors changed in the step",
        after.len()
    );
    eprintln!(
        "SGD step: max difference / step size: parameters {worst_param:.3e}, BN running stats {worst_stat:.3e}"
    );
    eprintln!("sgd_step: {:.1} s", start.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Our own files and bad files (no Python).

#[test]
fn save_then_load_restores_every_variable_bitwise() {
    let vs = tiny_store(10);
    let dir = work_dir("roundtrip");
    let path = dir.join("w.safetensors");
    save_weights(&vs, &path, 42).unwrap();
    let mut other = tiny_store(10);
    let report = load_weights_with(&mut other, &path, LoadOptions { strict: true }).unwrap();
    assert_eq!(report.loaded, vs.variables().len());
    assert_eq!(report.num_batches_tracked, Some(42));
    assert!(report.unexpected.is_empty() && report.converted.is_empty());
    assert_unchanged(&other, &snapshot(&vs), "roundtrip");
}

#[test]
fn num_batches_tracked_may_be_absent_and_other_float_kinds_are_converted() {
    let vs = tiny_store(10);
    let dir = work_dir("kinds");
    let kinds = [Kind::Half, Kind::BFloat16, Kind::Double];
    // No num_batches_tracked at all, and the tensors in turn f16, bf16, f64.
    let tensors: Vec<(String, Tensor)> = snapshot(&vs)
        .into_iter()
        .enumerate()
        .map(|(i, (n, t))| (n, t.to_kind(kinds[i % 3])))
        .collect();
    let path = dir.join("mixed.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    let mut other = tiny_store(10);
    let report = load_weights(&mut other, &path).unwrap();
    assert_eq!(report.num_batches_tracked, None);
    assert_eq!(report.converted.len(), tensors.len());
    let loaded: std::collections::HashMap<String, Tensor> = other.variables().into_iter().collect();
    for (name, t) in &tensors {
        let var = &loaded[name];
        assert_eq!(var.kind(), Kind::Float, "{name}");
        assert!(var.equal(&t.to_kind(Kind::Float)), "{name} not converted");
    }
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes_and_changes_nothing() {
    let dir = work_dir("shape");
    let path = dir.join("ten-classes.safetensors");
    save_weights(&tiny_store(10), &path, 0).unwrap();
    let mut vs = tiny_store(7);
    let before = snapshot(&vs);
    let err = load_weights(&mut vs, &path).unwrap_err();
    let msg = err.to_string();
    match &err {
        WeightsError::Incompatible {
            mismatched,
            missing,
            ..
        } => {
            let names: Vec<&str> = mismatched.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["fc.bias", "fc.weight"]);
            assert_eq!(mismatched[1].in_file, vec![10, 256]);
            assert_eq!(mismatched[1].in_model, vec![7, 256]);
            assert!(missing.is_empty(), "{missing:?}");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    for needle in [
        "fc.weight",
        "[10, 256]",
        "[7, 256]",
        "ten-classes.safetensors",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    assert_unchanged(&vs, &before, "shape mismatch");
}

#[test]
fn missing_tensors_are_all_listed_and_nothing_changes() {
    let dir = work_dir("missing");
    let dropped = ["conv1.weight", "layer2.0.bn2.running_var", "fc.bias"];
    let tensors: Vec<(String, Tensor)> = snapshot(&tiny_store(10))
        .into_iter()
        .filter(|(n, _)| !dropped.contains(&n.as_str()))
        .collect();
    let path = dir.join("partial.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    let mut vs = tiny_store(10);
    let before = snapshot(&vs);
    let err = load_weights(&mut vs, &path).unwrap_err();
    let msg = err.to_string();
    match &err {
        WeightsError::Incompatible { missing, .. } => {
            let mut want: Vec<String> = dropped.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(missing, &want);
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    for name in dropped {
        assert!(msg.contains(name), "`{name}` not in: {msg}");
    }
    assert_unchanged(&vs, &before, "missing");
}

#[test]
fn extra_tensors_are_reported_or_refused_when_strict() {
    let dir = work_dir("extra");
    let source = tiny_store(10);
    let mut tensors = snapshot(&source);
    tensors.push((
        "head.weight".into(),
        Tensor::ones([3], (Kind::Float, Device::Cpu)),
    ));
    // A counter for a BN the model does not have is an extra tensor too.
    tensors.push(("bn9.num_batches_tracked".into(), Tensor::from(5i64)));
    let path = dir.join("extra.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();

    let mut strict = tiny_store(10);
    let before = snapshot(&strict);
    let err = load_weights_with(&mut strict, &path, LoadOptions { strict: true }).unwrap_err();
    match &err {
        WeightsError::Incompatible { unexpected, .. } => {
            assert_eq!(unexpected, &["bn9.num_batches_tracked", "head.weight"])
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert!(err.to_string().contains("head.weight"), "{err}");
    assert_unchanged(&strict, &before, "strict");

    let mut lenient = tiny_store(10);
    let report = load_weights(&mut lenient, &path).unwrap();
    assert_eq!(
        report.unexpected,
        ["bn9.num_batches_tracked", "head.weight"]
    );
    assert_eq!(report.num_batches_tracked, None);
    assert_unchanged(&lenient, &snapshot(&source), "lenient");
}

#[test]
fn integer_tensor_for_a_float_variable_is_refused() {
    let dir = work_dir("int");
    let tensors: Vec<(String, Tensor)> = snapshot(&tiny_store(10))
        .into_iter()
        .map(|(n, t)| {
            if n == "bn1.running_mean" {
                (n, t.to_kind(Kind::Int64))
            } else {
                (n, t)
            }
        })
        .collect();
    let path = dir.join("int.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    let mut vs = tiny_store(10);
    let before = snapshot(&vs);
    let err = load_weights(&mut vs, &path).unwrap_err();
    match &err {
        WeightsError::Incompatible {
            wrong_kind,
            missing,
            ..
        } => {
            assert_eq!(wrong_kind.len(), 1);
            assert_eq!(wrong_kind[0].name, "bn1.running_mean");
            assert!(missing.is_empty());
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert!(err.to_string().contains("bn1.running_mean"), "{err}");
    assert_unchanged(&vs, &before, "int");
}

#[test]
fn corrupt_truncated_and_absent_files_are_refused_and_nothing_changes() {
    let dir = work_dir("corrupt");
    let good = dir.join("good.safetensors");
    save_weights(&tiny_store(10), &good, 0).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file at all").unwrap();
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let absent = dir.join("absent.safetensors");

    let mut vs = tiny_store(10);
    let before = snapshot(&vs);
    for path in [&truncated, &garbage, &empty] {
        let err = load_weights(&mut vs, path).unwrap_err();
        assert!(
            matches!(err, WeightsError::Io(IoError::Format { .. })),
            "{}: {err:?}",
            path.display()
        );
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
    let err = load_weights(&mut vs, &absent).unwrap_err();
    assert!(
        matches!(err, WeightsError::Io(IoError::Io { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
    assert_unchanged(&vs, &before, "corrupt");
    // And config_from_weights says why it cannot tell.
    let err = config_from_weights("tiny", &garbage).unwrap_err();
    assert!(matches!(err, WeightsError::Io(_)), "{err:?}");
}

#[test]
fn config_from_weights_reads_stem_and_classes() {
    let dir = work_dir("infer");
    for (stem, classes) in [(Stem::Cifar, 10), (Stem::ImageNet, 37)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(classes).with_stem(stem));
        let path = dir.join(format!("{stem:?}.safetensors"));
        save_weights(&vs, &path, 0).unwrap();
        let cfg = config_from_weights("tiny", &path).unwrap();
        assert_eq!((cfg.stem, cfg.num_classes), (stem, classes));
        // Loading into a model of the other stem fails on conv1's shape.
        let other = if stem == Stem::Cifar {
            Stem::ImageNet
        } else {
            Stem::Cifar
        };
        let err = load_model(
            &ResNeXtConfig::tiny(classes).with_stem(other),
            &path,
            Device::Cpu,
            LoadOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("conv1.weight"), "{err}");
    }
    let path = dir.join("no-fc.safetensors");
    let tensors: Vec<(String, Tensor)> = snapshot(&tiny_store(10))
        .into_iter()
        .filter(|(n, _)| n != "fc.weight")
        .collect();
    write_safetensors(&path, &tensors, None).unwrap();
    let err = config_from_weights("tiny", &path).unwrap_err();
    assert!(
        matches!(err, WeightsError::Infer { .. }) && err.to_string().contains("fc.weight"),
        "{err}"
    );
    let err = config_from_weights("resnext51", &dir.join("Cifar.safetensors")).unwrap_err();
    assert!(matches!(err, WeightsError::Model(_)), "{err:?}");
}
