//! Starting from pretrained weights that PyTorch wrote in the test (never downloaded): random
//! `tiny` weights that PyTorch perturbs and saves as `torch.save(state_dict)` in the zip and the
//! legacy formats and as safetensors; loaded strictly into a model with another classifier
//! (which stays freshly initialised), refused by another architecture in a few lines, and
//! used by the trainer, which takes the stem from the file and does not read it again on
//! resume. Python: see `tests/common/python.rs`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "common/python.rs"]
mod python;
use python::run_python;

use resnext::data::Cifar10;
use resnext::io::read_safetensors;
use resnext::trainer::{BatchControl, Outcome, ProgressMode, TrainConfig, Trainer};
use resnext::weights::{
    load_pretrained, pretrained_architecture, save_weights, FileFit, WeightsError,
};
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use tch::{nn, Device, Kind, Tensor};

/// Perturbs every floating-point tensor of each safetensors file given and writes, beside it,
/// `.zip.pth` (`torch.save` of the OrderedDict, as `model.state_dict()` returns),
/// `.legacy.pth` (`_use_new_zipfile_serialization=False`), `.pt.safetensors`, `.ddp.pth`
/// (the names a model wrapped in `DistributedDataParallel` saves, under `module.`), and what
/// training scripts save: `.checkpoint.pth` (`{"model": .., "optimizer": ..}`), `.ema.pth`
/// (`{"state_dict": DDP names, "state_dict_ema": other values}`), `.wrapped.safetensors`
/// (names under `model.`) and `.whole.pth` (`torch.save(model)`).
const CONVERT: &str = r#"
import collections, sys, torch
from safetensors.torch import load_file, save_file
gen = torch.Generator().manual_seed(0)

def as_module(state_dict):
    """A torch.nn.Module with these parameters and buffers, as torch.save(model) pickles it."""
    root = torch.nn.Module()
    for name, t in state_dict.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, torch.nn.Module())
            m = m._modules[part]
        if t.is_floating_point() and not leaf.startswith("running_"):
            m.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
        else:
            m.register_buffer(leaf, t)
    return root

for src in sys.argv[1:]:
    base = src[: -len(".safetensors")]
    state_dict = collections.OrderedDict()
    for name, t in load_file(src).items():
        if t.is_floating_point():
            t = t + 0.01 * torch.randn(t.shape, generator=gen)
        state_dict[name] = t
    torch.save(state_dict, base + ".zip.pth")
    torch.save(state_dict, base + ".legacy.pth", _use_new_zipfile_serialization=False)
    save_file(state_dict, base + ".pt.safetensors")
    # DistributedDataParallel(model).state_dict(): every name under `module.`.
    ddp = collections.OrderedDict(("module." + k, v) for k, v in state_dict.items())
    torch.save(ddp, base + ".ddp.pth")
    # What training scripts save: checkpoint dictionaries (the model beside an optimizer's
    # state, or beside an EMA copy of itself, which is not the one to load), a whole model.
    sgd = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}
    torch.save({"epoch": 3, "model": state_dict, "optimizer": sgd}, base + ".checkpoint.pth")
    ema = collections.OrderedDict((k, v + 1 if v.is_floating_point() else v)
                                  for k, v in state_dict.items())
    torch.save({"state_dict": ddp, "state_dict_ema": ema}, base + ".ema.pth")
    save_file({"model." + k: v for k, v in state_dict.items()}, base + ".wrapped.safetensors")
    torch.save(as_module(state_dict), base + ".whole.pth")
print("wrote", len(sys.argv) - 1, "state dicts in 8 formats")
"#;

/// Random weights of `config`, saved by us.
fn save_random(config: &ResNeXtConfig, path: &Path) {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), config);
    save_weights(&vs, path, 17).unwrap();
}

/// The PyTorch-written files, made once per process: `cifar10` (tiny, CIFAR stem, 10 classes)
/// and `imagenet5` (tiny, ImageNet stem, 5 classes), each in the formats of [`CONVERT`].
/// `.pt.safetensors`.
fn pytorch_files() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pretrained");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cifar = dir.join("cifar10.safetensors");
        let imagenet = dir.join("imagenet5.safetensors");
        save_random(&ResNeXtConfig::tiny(10), &cifar);
        save_random(&ResNeXtConfig::tiny(5).with_stem(Stem::ImageNet), &imagenet);
        run_python(
            CONVERT,
            &[cifar.to_str().unwrap(), imagenet.to_str().unwrap()],
        );
        dir
    })
}

/// The tensors PyTorch wrote, by name.
fn reference(name: &str) -> BTreeMap<String, Tensor> {
    let path = pytorch_files().join(format!("{name}.pt.safetensors"));
    read_safetensors(&path)
        .unwrap()
        .tensors
        .into_iter()
        .collect()
}

fn variables(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    (vs.variables().into_iter())
        .map(|(n, t)| (n, t.detach().copy()))
        .collect()
}

/// A tiny model of `classes` classes and `stem`, seeded, with its initial variables.
fn seeded_model(config: &ResNeXtConfig) -> (nn::VarStore, BTreeMap<String, Tensor>) {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), config);
    let initial = variables(&vs);
    (vs, initial)
}

fn is_classifier(name: &str) -> bool {
    name.starts_with("fc.")
}

#[test]
fn pth_zip_legacy_and_safetensors_load_strictly_with_a_fresh_classifier() {
    let expected = reference("cifar10");
    for format in [
        "zip.pth",
        "legacy.pth",
        "pt.safetensors",
        "ddp.pth",
        "checkpoint.pth",
        "ema.pth",
        "wrapped.safetensors",
        "whole.pth",
    ] {
        let path = pytorch_files().join(format!("cifar10.{format}"));
        let config = ResNeXtConfig::tiny(3);
        let (mut vs, initial) = seeded_model(&config);
        let report = load_pretrained(&mut vs, &path, &config).unwrap();
        assert_eq!(report.replaced_classifier, Some((10, 3)), "{format}");
        assert_eq!(report.load.loaded, initial.len(), "{format}");
        assert_eq!(report.load.num_batches_tracked, Some(17), "{format}");
        let found_under = match format {
            "ddp.pth" => Some("module."),
            "checkpoint.pth" | "wrapped.safetensors" => Some("model."),
            "ema.pth" => Some("state_dict.module."),
            _ => None,
        };
        assert_eq!(report.found_under.as_deref(), found_under, "{format}");
        if let Some(prefix) = found_under {
            assert!(
                report.to_string().contains(&format!("`{prefix}*`")),
                "{report}"
            );
        }
        assert!(
            report.to_string().contains(
                "classifier replaced: file has 10 classes, model 3 (freshly initialised)"
            ),
            "{report}"
        );
        let loaded = variables(&vs);
        for (name, value) in &loaded {
            if is_classifier(name) {
                assert!(
                    value.equal(&initial[name]),
                    "{format}: `{name}` is not the fresh one"
                );
            } else {
                assert!(
                    value.equal(&expected[name]),
                    "{format}: `{name}` is not the file's"
                );
                assert!(
                    !value.equal(&initial[name]),
                    "{format}: `{name}` was not loaded"
                );
            }
        }
    }
}

#[test]
fn the_same_number_of_classes_loads_the_classifier_too() {
    let expected = reference("cifar10");
    let path = pytorch_files().join("cifar10.zip.pth");
    let config = ResNeXtConfig::tiny(10);
    let (mut vs, _) = seeded_model(&config);
    let report = load_pretrained(&mut vs, &path, &config).unwrap();
    assert_eq!(report.replaced_classifier, None);
    for (name, value) in variables(&vs) {
        assert!(value.equal(&expected[&name]), "`{name}` is not the file's");
    }
}

#[test]
fn another_architecture_is_refused_in_a_few_lines_and_nothing_changes() {
    let path = pytorch_files().join("cifar10.legacy.pth");
    let config = ResNeXtConfig::resnext29_2x64d(3);
    let (mut vs, initial) = seeded_model(&config);
    let err = load_pretrained(&mut vs, &path, &config).unwrap_err();
    let msg = err.to_string();
    let WeightsError::Incompatible { fit, .. } = &err else {
        panic!("expected Incompatible, got {err:?}");
    };
    assert_eq!(fit, &FileFit::Preset(Box::new(ResNeXtConfig::tiny(10))));
    assert!(msg.lines().count() <= 8, "too long:\n{msg}");
    assert!(msg.contains("cifar10.legacy.pth"), "{msg}");
    assert!(msg.contains("has shape"), "{msg}");
    for (name, value) in variables(&vs) {
        assert!(
            value.equal(&initial[&name]),
            "`{name}` changed by a failed load"
        );
    }
    // Neither a PyTorch nor a safetensors file, and an absent one: errors naming the file.
    let garbage = pytorch_files().join("garbage.pth");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    let absent = pytorch_files().join("absent.pth");
    for path in [&garbage, &absent] {
        let err = load_pretrained(&mut vs, path, &config).unwrap_err();
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
}

#[test]
fn the_architecture_comes_from_the_file() {
    for (name, expected) in [
        ("cifar10", (Stem::Cifar, 10)),
        ("imagenet5", (Stem::ImageNet, 5)),
    ] {
        for format in ["zip.pth", "legacy.pth", "pt.safetensors"] {
            let path = pytorch_files().join(format!("{name}.{format}"));
            assert_eq!(
                pretrained_architecture(&path).unwrap(),
                expected,
                "{name}.{format}"
            );
        }
    }
}

/// Three classes of random 32x32 images.
fn three_classes() -> Cifar10 {
    let images = |n: i64| {
        Tensor::randint(256, [n, 3, 32, 32], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8)
    };
    let labels = |n: i64| Tensor::randint(3, [n], (Kind::Int64, Device::Cpu));
    let classes = ["a", "b", "c"].map(String::from).to_vec();
    Cifar10::from_tensors(images(48), labels(48), images(16), labels(16), classes).unwrap()
}

#[test]
fn the_trainer_starts_from_pretrained_weights_and_resume_does_not_read_them_again() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pretrained-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A copy, removed before the resume.
    let pretrained = dir.join("imagenet5.pth");
    std::fs::copy(pytorch_files().join("imagenet5.zip.pth"), &pretrained).unwrap();
    let config = TrainConfig {
        model: "tiny".into(),
        num_classes: 3,
        pretrained: Some(pretrained.clone()),
        epochs: 2,
        batch_size: 16,
        device: "cpu".into(),
        ..TrainConfig::default()
    };
    let missing = TrainConfig {
        pretrained: Some(dir.join("nowhere.pth")),
        ..config.clone()
    };
    let err = Trainer::resnext(missing).unwrap_err();
    assert!(err.to_string().contains("nowhere.pth"), "{err}");

    let run = dir.join("run");
    let mut trainer = Trainer::resnext(config)
        .unwrap()
        .with_run_dir(&run)
        .unwrap();
    trainer.set_progress(ProgressMode::Silent);
    let report = trainer.pretrained_report().expect("a pretrained report");
    assert_eq!(report.replaced_classifier, Some((5, 3)));
    assert_eq!(trainer.state().config.stem, Some(Stem::ImageNet));
    let expected = reference("imagenet5");
    for (name, value) in variables(trainer.var_store()) {
        if !is_classifier(&name) {
            assert!(value.equal(&expected[&name]), "`{name}` is not the file's");
        }
    }
    trainer.on_batch(|epoch, _| match epoch {
        2 => BatchControl::Stop,
        _ => BatchControl::Continue,
    });
    let data = three_classes().splits(Device::Cpu).unwrap();
    let outcome = trainer.fit(&data).unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Stopped {
                epoch: 2,
                saved: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    drop(trainer);

    std::fs::remove_file(&pretrained).unwrap();
    let mut resumed = Trainer::resume(&run, None).unwrap();
    resumed.set_progress(ProgressMode::Silent);
    assert!(resumed.pretrained_report().is_none());
    assert_eq!(resumed.state().config.stem, Some(Stem::ImageNet));
    let outcome = resumed.fit(&data).unwrap();
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
}
