//! Training on image folders: a run stopped mid-epoch and resumed equals an uninterrupted one
//! (ImageNet recipe, worker threads), `freeze_backbone` trains the classifier only, and the
//! `train_images` program trains a folder, holds out a fraction, lists bad files, and refuses
//! folders it cannot train on with a clear message.
use std::path::Path;
use std::process::Command;

use resnext::data::{
    DataSplits, FolderSplit, ImageFolder, ImageFolderOptions, Recipe, IMAGENET_NORMALIZATION,
};
use resnext::trainer::{BatchControl, Outcome, ProgressMode, TrainConfig, Trainer};
use resnext::Stem;
use tch::Tensor;

mod common;
#[path = "common/python.rs"]
mod python;

/// `root/<split>/<class>/<i>.jpg`: pictures of assorted sizes whose colour tells the class.
fn write_folder(root: &Path, splits: &[(&str, usize)]) {
    for &(split, per_class) in splits {
        for (c, colour) in [[200u8, 40, 40], [40, 200, 40], [40, 40, 200]]
            .iter()
            .enumerate()
        {
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let (w, h) = (40 + 13 * i as u32 % 90, 50 + 7 * i as u32 % 80);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let v = ((x * 3 + y * 5 + i as u32) % 40) as u8;
                    image::Rgb(colour.map(|ch| ch.saturating_add(v)))
                });
                img.save(dir.join(format!("{i:03}.jpg"))).unwrap();
            }
        }
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        num_classes: 3,
        stem: Some(Stem::ImageNet),
        image_size: 64,
        normalization: IMAGENET_NORMALIZATION,
        epochs,
        batch_size: 8,
        lr: 0.05,
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

fn folders(root: &Path) -> DataSplits {
    let opts = ImageFolderOptions {
        workers: 2,
        ..ImageFolderOptions::new(Recipe::ImageNet { size: 64 })
    };
    let (train, val) = ImageFolder::open_splits(root, &opts, &FolderSplit::default()).unwrap();
    DataSplits::new(train, val)
}

fn weights(t: &Trainer<resnext::ResNeXt>) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = t.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_stopped_and_resumed_folder_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path(), &[("train", 12), ("val", 4)]);
    let data = folders(tmp.path());
    let whole_dir = tmp.path().join("whole");
    let mut whole = common::seeded(|| Trainer::resnext(config(2)).unwrap())
        .with_run_dir(&whole_dir)
        .unwrap();
    whole.set_progress(ProgressMode::Silent);
    assert!(matches!(whole.fit(&data).unwrap(), Outcome::Completed(_)));

    let cut_dir = tmp.path().join("cut");
    let mut first = common::seeded(|| Trainer::resnext(config(2)).unwrap())
        .with_run_dir(&cut_dir)
        .unwrap();
    first.set_progress(ProgressMode::Silent);
    // Stop in the second epoch, after its second batch.
    first.on_batch(|epoch, batch| match (epoch, batch) {
        (1, 1) => BatchControl::Stop,
        _ => BatchControl::Continue,
    });
    assert!(matches!(
        first.fit(&data).unwrap(),
        Outcome::Stopped { saved: true, .. }
    ));
    drop(first);
    let mut resumed = common::seeded(|| Trainer::resume(&cut_dir, None)).unwrap();
    resumed.set_progress(ProgressMode::Silent);
    assert!(matches!(resumed.fit(&data).unwrap(), Outcome::Completed(_)));
    // Everything but the timings.
    let figures = |t: &Trainer<resnext::ResNeXt>| {
        let m = &t.state().metrics;
        m.iter()
            .map(|e| {
                (
                    e.epoch,
                    e.train_loss,
                    e.train_acc,
                    e.test_loss,
                    e.test_acc,
                    e.lr,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&resumed), figures(&whole));
    for ((name, a), (_, b)) in weights(&resumed).iter().zip(weights(&whole)) {
        assert!(a.equal(&b), "{name} differs after resume");
    }
}

#[test]
fn freeze_backbone_trains_the_classifier_only() {
    let tmp = tempfile::tempdir().unwrap();
    write_folder(tmp.path(), &[("train", 6), ("val", 2)]);
    let data = folders(tmp.path());
    let cfg = TrainConfig {
        freeze_backbone: true,
        ..config(1)
    };
    let mut t = common::seeded(|| Trainer::resnext(cfg)).unwrap();
    t.set_progress(ProgressMode::Silent);
    let before: Vec<(String, Tensor)> = weights(&t)
        .into_iter()
        .map(|(n, w)| (n, w.copy()))
        .collect();
    assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
    let mut changed = Vec::new();
    for ((name, old), (_, new)) in before.iter().zip(weights(&t)) {
        let is_param = !name.contains("running_");
        if is_param && !old.equal(&new) {
            changed.push(name.clone());
        }
    }
    assert_eq!(changed, ["fc.bias", "fc.weight"]);
}

/// Runs `train_images` with `args` and quick settings; returns (exit code, stdout + stderr).
fn train_images(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::example("train_images"))
        .args(args)
        .args([
            "--model",
            "tiny",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--quiet",
            "--workers",
            "2",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn the_cli_trains_a_folder_and_lists_or_refuses_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, &[("train", 4), ("val", 2)]);
    let good = std::fs::read(data.join("train/class0/000.jpg")).unwrap();
    std::fs::write(
        data.join("train/class1/broken.jpg"),
        &good[..good.len() / 4],
    )
    .unwrap();
    // Cut in its scan data: decodable in part, but truncated (Pillow refuses it).
    let picture = std::fs::read(data.join("train/class2/003.jpg")).unwrap();
    std::fs::write(
        data.join("train/class2/cut.jpg"),
        &picture[..picture.len() * 95 / 100],
    )
    .unwrap();
    let d = data.to_str().unwrap();

    let run = tmp.path().join("run-strict");
    let (code, text) = train_images(&[
        "--data-dir",
        d,
        "--image-size",
        "96",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("broken.jpg") || text.contains("cut.jpg"),
        "{text}"
    );

    let run = tmp.path().join("run-skip");
    let (code, text) = train_images(&[
        "--data-dir",
        d,
        "--image-size",
        "96",
        "--skip-bad-images",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("2 images do not decode"), "{text}");
    let list = std::fs::read_to_string(run.join("bad_images.txt")).unwrap();
    assert!(
        list.contains("broken.jpg") && list.contains("cut.jpg") && list.lines().count() == 2,
        "{list}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (
            cfg["num_classes"].as_i64(),
            cfg["stem"].as_str(),
            cfg["image_size"].as_i64()
        ),
        (Some(3), Some("imagenet"), Some(96))
    );
}

#[test]
fn the_cli_holds_out_a_fraction_and_refuses_what_it_cannot_train() {
    let tmp = tempfile::tempdir().unwrap();
    let flat = tmp.path().join("flat");
    write_folder(tmp.path(), &[("flat", 10)]);
    let run = tmp.path().join("run");
    let f = flat.to_str().unwrap();
    let (code, text) = train_images(&["--data-dir", f, "--out", run.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("has no train/ folder") && text.contains("--val-fraction"),
        "{text}"
    );
    let (code, text) = train_images(&[
        "--data-dir",
        f,
        "--val-fraction",
        "0.2",
        "--image-size",
        "32",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("images: 24 training, 6 validation, 3 classes"),
        "{text}"
    );

    let mismatched = tmp.path().join("mismatched");
    write_folder(&mismatched, &[("train", 2), ("val", 2)]);
    std::fs::rename(mismatched.join("val/class2"), mismatched.join("val/class9")).unwrap();
    let (code, text) = train_images(&[
        "--data-dir",
        mismatched.to_str().unwrap(),
        "--out",
        tmp.path().join("r2").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("only in the training folder: class2") && text.contains("class9"),
        "{text}"
    );
    let (code, text) = train_images(&["--data-dir", tmp.path().join("nowhere").to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("nowhere"), "{text}");
}

/// `torch.save` of the safetensors state dict `argv[1]` as the OrderedDict
/// `model.state_dict()` returns, into `argv[2]`.
const TO_PTH: &str = r#"
import collections, sys, torch
from safetensors.torch import load_file
torch.save(collections.OrderedDict(load_file(sys.argv[1])), sys.argv[2])
"#;

#[test]
fn the_cli_fine_tunes_a_pytorch_pth_and_predict_needs_only_the_run_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, &[("train", 4), ("val", 2)]);
    // Random tiny weights with the ImageNet stem and 10 classes, written by PyTorch as .pth.
    let ours = tmp.path().join("start.safetensors");
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let config = resnext::ResNeXtConfig::tiny(10).with_stem(Stem::ImageNet);
    let _net = common::seeded(|| resnext::ResNeXt::new(&vs.root(), &config));
    resnext::weights::save_weights(&vs, &ours, 0).unwrap();
    let pth = tmp.path().join("start.pth");
    python::run_python(TO_PTH, &[ours.to_str().unwrap(), pth.to_str().unwrap()]);

    let run = tmp.path().join("run");
    let (code, text) = train_images(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--image-size",
        "32",
        "--pretrained",
        pth.to_str().unwrap(),
        "--freeze-backbone",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("classifier replaced: file has 10 classes, model 3"),
        "{text}"
    );
    let cfg = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(
        cfg.contains(r#""stem": "imagenet""#),
        "the stem comes from the file: {cfg}"
    );

    let predict = |weights: &Path| {
        let out = Command::new(common::example("predict"))
            .args(["--device", "cpu", "--weights"])
            .arg(weights)
            .arg(data.join("val/class1/000.jpg"))
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        (stdout, stderr)
    };
    let (text, _) = predict(&run.join("best.safetensors"));
    for class in ["class0", "class1", "class2"] {
        assert!(
            text.contains(class),
            "predict names the folder classes: {text}"
        );
    }
    // PyTorch's .pth classifies as the same weights in safetensors do.
    let (from_pth, how) = predict(&pth);
    assert!(how.contains("matched by the tensors' shapes"), "{how}");
    assert!(from_pth.contains("  1. "), "{from_pth}");
    assert_eq!(
        from_pth.replace("start.pth", "W"),
        predict(&ours).0.replace("start.safetensors", "W")
    );
}

#[test]
fn the_cli_launches_two_processes_and_stops_both_when_one_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_folder(&data, &[("train", 6), ("val", 3)]);
    let d = data.to_str().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let (code, text) = train_images(&[
        "--data-dir",
        d,
        "--image-size",
        "32",
        "--nproc",
        "2",
        "--out",
        r,
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("x 2 processes"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["world_size"], 2);
    // One process cannot resume it exactly: a usage error that says what to do.
    let out = Command::new(common::example("train_images"))
        .args(["--resume", r, "--quiet"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--nproc 2"), "{text}");

    // A rank killed mid-run: the launcher stops the other and fails at once.
    let (mut launcher, ranks) = long_run(d, &tmp.path().join("long"));
    let killed = std::time::Instant::now();
    let _ = Command::new("kill")
        .args(["-9", &ranks[1].to_string()])
        .status();
    let status = launcher.wait().unwrap();
    let took = killed.elapsed();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut launcher.stderr.take().unwrap(), &mut text).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("rank 1 failed"), "{text}");
    assert!(
        took.as_secs() < 15,
        "the launcher took {took:?} to stop: {text}"
    );
    assert!(children(launcher.id()).is_empty(), "ranks left running");

    // The launcher killed: its ranks end too.
    let (mut launcher, ranks) = long_run(d, &tmp.path().join("orphans"));
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let killed = std::time::Instant::now();
    while ranks.iter().any(|&pid| running(pid)) {
        assert!(
            killed.elapsed().as_secs() < 15,
            "ranks {ranks:?} outlive their launcher"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Ctrl-C to the launcher: passed on, both ranks save at the same batch and stop; the
    // launcher exits with 130 and says how to continue.
    let (launcher, ranks) = long_run(d, &tmp.path().join("interrupted"));
    let _ = Command::new("kill")
        .args(["-INT", &launcher.id().to_string()])
        .status();
    let out = launcher.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(text.contains("passed on to every rank"), "{text}");
    assert!(text.contains("--nproc 2"), "{text}");
    assert!(ranks.iter().all(|&pid| !running(pid)), "{text}");
    assert!(tmp
        .path()
        .join("interrupted/checkpoint.safetensors")
        .exists());
}

/// A 1000-epoch `--nproc 2` run of the folder `data` into `out`, once its first epoch is done:
/// the launcher and its two ranks.
fn long_run(data: &str, out: &Path) -> (std::process::Child, Vec<u32>) {
    let launcher = Command::new(common::example("train_images"))
        .args([
            "--data-dir",
            data,
            "--image-size",
            "32",
            "--nproc",
            "2",
            "--model",
            "tiny",
        ])
        .args([
            "--epochs",
            "1000",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--quiet",
        ])
        .args(["--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !out.join("metrics.jsonl").exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "no epoch done in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ranks = children(launcher.id());
    assert_eq!(ranks.len(), 2, "the launcher's children: {ranks:?}");
    (launcher, ranks)
}

/// Whether process `pid` exists and is not a zombie (ended, not yet reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

/// The PIDs of `pid`'s children, oldest first.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}
