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

mod common;
#[path = "common/python.rs"]
mod python;
use python::{python_path, run_python};

use resnext::data::{Cifar10, Normalization};
use resnext::io::{read_safetensors, write_safetensors, IoError};
use resnext::trainer::{files, Outcome, ProgressMode, Sgd, SgdConfig, TrainConfig, Trainer};
use resnext::weights::{
    config_from_weights, load_model, load_weights, load_weights_with, preset_for_weights,
    read_weights_metadata, save_weights, save_weights_with, FileFit, LoadOptions, WeightsError,
    WeightsMetadata, CLASSES_KEY, IMAGE_SIZE_KEY, MODEL_KEY,
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
        Stem::Whitening => panic!("torchvision has no whitening stem"),
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
        Stem::Whitening => panic!("torchvision has no whitening stem"),
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
    // With the crate's metadata, which torchvision's strict load must not mind.
    let meta = WeightsMetadata {
        model: config.clone(),
        classes: (0..classes).map(|c| format!("class {c}")).collect(),
        image_size: size,
        normalization: Normalization::default(),
    };
    save_weights_with(&vs, &weights, 123, Some(&meta)).unwrap();
    assert_eq!(read_weights_metadata(&weights).unwrap(), Some(meta));

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
    // And config_from_weights (which also reads PyTorch's files) says why it cannot tell.
    let err = config_from_weights("tiny", &garbage).unwrap_err();
    assert!(matches!(err, WeightsError::Pytorch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("garbage.safetensors: not a safetensors file nor a PyTorch"),
        "{err}"
    );
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

// ---------------------------------------------------------------------------------------------
// Metadata, files that do not fit, and the predict example.

/// Class names of the tiny run: none of them is a CIFAR-10 name, so output that shows them
/// came from the file.
const FRUITS: [&str; 10] = [
    "apple",
    "banana",
    "cherry",
    "date",
    "elderberry",
    "fig",
    "grape",
    "honeydew",
    "kiwi",
    "lime",
];

/// A one-epoch `tiny` run on random images with [`FRUITS`] as class names: its run directory,
/// made once per process.
fn tiny_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = work_dir("tiny-run");
        let images = |n: i64| {
            Tensor::randint(256, [n, 3, 32, 32], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8)
        };
        let labels = |n: i64| Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        let classes = FRUITS.iter().map(|s| s.to_string()).collect();
        let data =
            Cifar10::from_tensors(images(64), labels(64), images(32), labels(32), classes).unwrap();
        let config = TrainConfig {
            model: "tiny".into(),
            epochs: 1,
            batch_size: 32,
            device: "cpu".into(),
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::resnext(config)
            .unwrap()
            .with_run_dir(&dir)
            .unwrap();
        trainer.set_progress(ProgressMode::Silent);
        let outcome = trainer.fit(&data.splits(Device::Cpu).unwrap()).unwrap();
        assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
        dir
    })
}

fn fruits() -> Vec<String> {
    FRUITS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_runs_weights_carry_their_metadata_and_pytorch_reads_them() {
    let run = tiny_run();
    let expected = WeightsMetadata {
        model: ResNeXtConfig::tiny(10),
        classes: fruits(),
        image_size: 32,
        normalization: Normalization::default(),
    };
    for file in [files::BEST, files::LAST] {
        let meta = read_weights_metadata(&run.join(file)).unwrap();
        assert_eq!(meta.as_ref(), Some(&expected), "{file}");
    }
    // PyTorch reads the tensors (metadata aside) and sees the metadata as plain strings.
    let best = run.join(files::BEST);
    let copy = work_dir("pytorch-reads-metadata").join("copy.safetensors");
    let out = run_python(
        r#"
import json, sys
from safetensors import safe_open
from safetensors.torch import load_file, save_file
state_dict = load_file(sys.argv[1])
with safe_open(sys.argv[1], "pt") as f:
    meta = f.metadata()
save_file(state_dict, sys.argv[2])
print(json.dumps({"classes": json.loads(meta["resnext.classes"]),
                  "model": json.loads(meta["resnext.model"])["name"],
                  "image_size": int(meta["resnext.image_size"])}))
"#,
        &[best.to_str().unwrap(), copy.to_str().unwrap()],
    );
    let seen: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(seen["classes"], serde_json::json!(FRUITS));
    assert_eq!(
        (seen["model"].as_str(), seen["image_size"].as_i64()),
        (Some("tiny"), Some(32))
    );
    let ours = read_safetensors(&best).unwrap();
    let theirs: std::collections::HashMap<String, Tensor> = read_safetensors(&copy)
        .unwrap()
        .tensors
        .into_iter()
        .collect();
    assert_eq!(ours.tensors.len(), theirs.len());
    for (name, t) in &ours.tensors {
        assert!(
            t.equal(&theirs[name]),
            "`{name}` differs after PyTorch read it"
        );
    }
}

#[test]
fn metadata_round_trips_and_bad_metadata_names_the_file_and_the_key() {
    let dir = work_dir("metadata");
    let config = ResNeXtConfig::tiny(3).with_stem(Stem::ImageNet);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &config);
    let plain = dir.join("plain.safetensors");
    save_weights(&vs, &plain, 0).unwrap();
    assert_eq!(read_weights_metadata(&plain).unwrap(), None);
    let meta = WeightsMetadata {
        model: config,
        classes: vec!["a".into(), "b".into(), "c".into()],
        image_size: 48,
        normalization: Normalization {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        },
    };
    let with = dir.join("with.safetensors");
    save_weights_with(&vs, &with, 0, Some(&meta)).unwrap();
    assert_eq!(read_weights_metadata(&with).unwrap(), Some(meta.clone()));

    let tensors = snapshot(&vs);
    let cases: [(&str, Option<&str>, &str); 5] = [
        (CLASSES_KEY, None, "missing"),
        (MODEL_KEY, Some("{\"name\": "), "does not parse"),
        (CLASSES_KEY, Some("[\"a\", \"b\"]"), "2 class names"),
        (IMAGE_SIZE_KEY, Some("0"), "expected 1 to 8192"),
        (IMAGE_SIZE_KEY, Some("100000"), "expected 1 to 8192"),
    ];
    for (i, (key, value, needle)) in cases.into_iter().enumerate() {
        let mut map = meta.to_map();
        match value {
            Some(v) => map.insert(key.to_string(), v.to_string()),
            None => map.remove(key),
        };
        let path = dir.join(format!("bad{i}.safetensors"));
        write_safetensors(&path, &tensors, Some(map)).unwrap();
        let err = read_weights_metadata(&path).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, WeightsError::Metadata { key: k, .. } if *k == key),
            "{err:?}"
        );
        for part in [&format!("bad{i}.safetensors"), key, needle] {
            assert!(msg.contains(part), "`{part}` not in: {msg}");
        }
    }
}

#[test]
fn a_file_that_does_not_fit_says_so_in_a_few_lines() {
    let dir = work_dir("does-not-fit");
    let path = dir.join("tiny.safetensors");
    save_weights(&tiny_store(10), &path, 0).unwrap();
    assert_eq!(
        preset_for_weights(&path).unwrap(),
        Some(ResNeXtConfig::tiny(10))
    );
    let wrong = ResNeXtConfig::resnext29_2x64d(10);
    let err = load_model(&wrong, &path, Device::Cpu, LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    let WeightsError::Incompatible {
        missing,
        mismatched,
        fit,
        ..
    } = &err
    else {
        panic!("expected Incompatible, got {err:?}");
    };
    assert_eq!(fit, &FileFit::Preset(Box::new(ResNeXtConfig::tiny(10))));
    let lines: Vec<&str> = msg.lines().collect();
    let problems = mismatched.len() + missing.len();
    assert!(problems > 5, "{problems} problems");
    // Counts, five problems, how many more, the preset.
    assert_eq!(lines.len(), 8, "{msg}");
    for needle in [
        format!("{} tensor(s) of another shape", mismatched.len()),
        format!(
            "{} tensor(s) of the model missing from the file",
            missing.len()
        ),
        format!("… and {} more", problems - 5),
        "the file fits the preset `tiny` (Cifar stem, 10 classes)".to_string(),
        "tiny.safetensors".to_string(),
    ] {
        assert!(msg.contains(&needle), "`{needle}` not in:\n{msg}");
    }
    assert!(lines[1].contains(&mismatched[0].name), "{msg}");

    // A file no preset has.
    let odd = dir.join("odd.safetensors");
    let tensors: Vec<(String, Tensor)> = snapshot(&tiny_store(10))
        .into_iter()
        .filter(|(n, _)| n != "layer1.0.bn1.bias")
        .collect();
    write_safetensors(&odd, &tensors, None).unwrap();
    assert_eq!(preset_for_weights(&odd).unwrap(), None);
    let err = load_weights(&mut tiny_store(10), &odd).unwrap_err();
    assert!(err.to_string().contains("no preset fits"), "{err}");
    assert!(
        err.to_string().contains("`layer1.0.bn1.bias` is missing"),
        "{err}"
    );
}

/// Runs `predict --device cpu --weights WEIGHTS [ARGS] IMAGE`: exit code, stdout, stderr.
fn predict(weights: &Path, args: &[&str], image: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(common::example("predict"))
        .args(["--device", "cpu", "--weights"])
        .arg(weights)
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
}

#[test]
fn predict_needs_only_the_weights() {
    let dir = work_dir("predict");
    let image = dir.join("photo.png");
    image::RgbImage::from_fn(45, 30, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 8) as u8, 90])
    })
    .save(&image)
    .unwrap();

    // A run's weights: everything from the metadata, the class names included.
    let best = tiny_run().join(files::BEST);
    let (code, out, err) = predict(&best, &[], &image);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_contains(
        &err,
        &["tiny (Cifar stem, 10 classes, 32x32 images) from the file's metadata"],
    );
    assert_contains(&out, &["photo.png:", "  1. "]);
    let shown = FRUITS.iter().filter(|f| out.contains(*f)).count();
    assert_eq!(
        shown, 5,
        "the top 5 classes by their names from the file:\n{out}"
    );

    // ImageNet stem, 3 classes, 40x40 images, as the metadata says.
    let config = ResNeXtConfig::tiny(3).with_stem(Stem::ImageNet);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &config);
    let meta = WeightsMetadata {
        model: config,
        classes: vec!["north".into(), "south".into(), "west".into()],
        image_size: 40,
        normalization: Normalization::default(),
    };
    let imagenet = dir.join("imagenet.safetensors");
    save_weights_with(&vs, &imagenet, 0, Some(&meta)).unwrap();
    let (code, out, err) = predict(&imagenet, &["--top", "3"], &image);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_contains(&err, &["(ImageNet stem, 3 classes, 40x40 images)"]);
    assert_contains(&out, &["north", "south", "west"]);

    // No metadata (as PyTorch writes): the preset that fits the shapes.
    let plain = dir.join("plain.safetensors");
    save_weights(&tiny_store(10), &plain, 0).unwrap();
    let (code, out, err) = predict(&plain, &[], &image);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_contains(
        &err,
        &["tiny (Cifar stem, 10 classes, 32x32 images) matched by the tensors' shapes"],
    );

    // A model named that the file does not fit: a few lines saying which preset it fits.
    let (code, out, err) = predict(&best, &["--model", "resnext29_2x64d"], &image);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(err.lines().count() <= 10, "too long:\n{err}");
    assert_contains(
        &err,
        &[
            "do not fit the model",
            "the file fits the preset `tiny` (Cifar stem, 10 classes)",
        ],
    );
}
