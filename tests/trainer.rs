//! The trainer on a small synthetic, learnable dataset: learning, schedules, exact resume
//! (after a stop request and after a simulated kill), run-directory files, bad checkpoints.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use resnext::data::{BatchConfig, Cifar10, DataSplits, CLASS_NAMES};
use resnext::inference::Tta;
use resnext::trainer::{
    files, read_checkpoint_state, BatchControl, EmaWeights, Outcome, ProgressMode, Schedule,
    TrainConfig, TrainError, Trainer,
};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::{nn, Device, Kind, Tensor};

mod common;
use common::variables;

/// Images whose class is written in their colours: class `c` has a bright square in a
/// class-dependent corner and channel, on noise. Learnable in a few epochs by a tiny ResNeXt.
fn synthetic(n: i64, seed: i64) -> (Tensor, Tensor) {
    let _seeded = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let labels = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    let images = Tensor::randint(96, [n, 3, 32, 32], (Kind::Int64, Device::Cpu));
    let labels_v = Vec::<i64>::try_from(&labels).unwrap();
    for (i, &c) in labels_v.iter().enumerate() {
        let channel = c % 3;
        let (y, x) = (((c / 3) % 2) * 16, ((c / 6) % 2) * 16);
        let size = if c == 9 { 32 } else { 12 };
        let _ = images
            .get(i as i64)
            .get(channel)
            .narrow(0, y, size.min(32 - y))
            .narrow(1, x, size.min(32 - x))
            .fill_(255);
    }
    (images.to_kind(Kind::Uint8), labels)
}

fn dataset(train: i64, test: i64) -> Cifar10 {
    let (xi, xl) = synthetic(train, 11);
    let (ti, tl) = synthetic(test, 12);
    let classes = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    Cifar10::from_tensors(xi, xl, ti, tl, classes).unwrap()
}

/// The training and test sets of `data` on the CPU, as the trainer takes them.
fn cpu(data: &Cifar10) -> DataSplits {
    data.splits(Device::Cpu).unwrap()
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        epochs,
        batch_size: 32,
        lr: 0.05,
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

use common::{seeded, SEEDED_INIT};

fn trainer(cfg: TrainConfig, dir: &Path) -> Trainer<ResNeXt> {
    let built = seeded(|| Trainer::resnext(cfg).unwrap());
    let mut t = built.with_run_dir(dir).unwrap();
    t.set_progress(ProgressMode::Silent);
    t
}

fn resume(dir: &Path) -> Trainer<ResNeXt> {
    // Building the model seeds and draws from the global generator, as in `trainer`.
    let resumed = seeded(|| Trainer::resume(dir, None));
    let mut t = resumed.unwrap();
    t.set_progress(ProgressMode::Silent);
    t
}

/// Bitwise equality of every variable, naming the first that differs.
fn assert_bitwise_equal(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in a {
        let y = &b[name];
        assert!(
            x.equal(y),
            "variable {name} differs: max |diff| {}",
            (x - y).abs().max()
        );
    }
}

#[test]
fn tiny_learns_the_synthetic_task() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(640, 200);
    let mut cfg = config(4);
    cfg.augment = false;
    let mut t = trainer(cfg, dir.path());
    let Outcome::Completed(summary) = t.fit(&cpu(&data)).unwrap() else {
        panic!("the run did not complete")
    };
    let m = &t.state().metrics;
    assert_eq!(m.len(), 4);
    assert!(
        m[3].train_loss < 0.6 * m[0].train_loss,
        "loss did not fall: {m:?}"
    );
    assert!(
        summary.final_test_acc > 60.0,
        "test accuracy {}",
        summary.final_test_acc
    );
    assert!(m[3].train_acc > 40.0 && m[3].train_acc > m[0].train_acc);
}

#[test]
fn schedules_follow_their_formulas() {
    let pi = std::f64::consts::PI;
    for (e, expected) in [
        (0, 0.1),
        (100, 0.05),
        (199, 0.05 * (1.0 + (pi * 199.0 / 200.0).cos())),
    ] {
        assert!(
            (Schedule::Cosine.lr(0.1, e, 200, 0) - expected).abs() < 1e-12,
            "cosine {e}"
        );
    }
    for (e, expected) in [
        (0, 0.1),
        (99, 0.1),
        (100, 0.01),
        (149, 0.01),
        (150, 0.001),
        (199, 0.001),
    ] {
        assert!(
            (Schedule::Step.lr(0.1, e, 200, 0) - expected).abs() < 1e-12,
            "step {e}"
        );
    }
    for e in [0, 100, 199] {
        assert_eq!(Schedule::Constant.lr(0.1, e, 200, 0), 0.1);
    }
    // Five warm-up epochs rise linearly, then the schedule runs over the remaining 195.
    for e in 0..5 {
        let lr = Schedule::Cosine.lr(0.1, e, 200, 5);
        assert!(
            (lr - 0.1 * (e + 1) as f64 / 6.0).abs() < 1e-12,
            "warm-up {e}: {lr}"
        );
    }
    assert!((Schedule::Cosine.lr(0.1, 5, 200, 5) - 0.1).abs() < 1e-12);
    let mid = Schedule::Cosine.lr(0.1, 5 + 195 / 2, 200, 5);
    assert!((mid - 0.05 * (1.0 + (pi * 97.0 / 195.0).cos())).abs() < 1e-12);
    assert!((Schedule::Step.lr(0.1, 5 + 98, 200, 5) - 0.01).abs() < 1e-12);
    // Step milestones are PyTorch's MultiStepLR([int(0.5 * T), int(0.75 * T)]) for every T,
    // odd ones included (T = 5: the rate drops at epochs 2 and 3).
    for total in [1usize, 2, 3, 5, 7, 10, 13, 200] {
        let (m1, m2) = (
            (0.5 * total as f64) as usize,
            (0.75 * total as f64) as usize,
        );
        for e in 0..total {
            let expected = 0.1 * 0.1f64.powi((e >= m1) as i32 + (e >= m2) as i32);
            let lr = Schedule::Step.lr(0.1, e, total, 0);
            assert!((lr - expected).abs() < 1e-12, "T={total} epoch {e}: {lr}");
        }
    }
}

/// Runs `epochs` epochs of the shared configuration in `dir`, uninterrupted.
fn full_run(dir: &Path, data: &Cifar10, epochs: usize) -> Trainer<ResNeXt> {
    let mut t = trainer(config(epochs), dir);
    assert!(matches!(t.fit(&cpu(data)).unwrap(), Outcome::Completed(_)));
    t
}

#[test]
fn resume_after_a_stop_request_is_bitwise_exact() {
    let data = dataset(200, 64);
    let a_dir = tempfile::tempdir().unwrap();
    let a = full_run(a_dir.path(), &data, 3);

    // Stop through the very flag the Ctrl-C handler sets, in the middle of epoch 2.
    let b_dir = tempfile::tempdir().unwrap();
    let mut b = trainer(config(3), b_dir.path());
    let flag = b.stop_flag();
    b.on_batch(move |epoch, batch| {
        if epoch == 2 && batch == 2 {
            flag.store(true, Ordering::SeqCst);
        }
        BatchControl::Continue
    });
    let out = b.fit(&cpu(&data)).unwrap();
    assert_eq!(
        out,
        Outcome::Stopped {
            epoch: 2,
            batch: 3,
            saved: true
        }
    );
    drop(b);
    let state = read_checkpoint_state(&b_dir.path().join(files::CHECKPOINT)).unwrap();
    assert_eq!((state.epoch, state.batch, state.metrics.len()), (1, 3, 1));

    let mut b = resume(b_dir.path());
    assert!(matches!(b.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_bitwise_equal(&variables(&a), &variables(&b));
    // The metrics of the interrupted epoch are those of the uninterrupted run.
    for (x, y) in a.state().metrics.iter().zip(&b.state().metrics) {
        assert_eq!((x.epoch, x.test_acc, x.lr), (y.epoch, y.test_acc, y.lr));
        assert!((x.train_loss - y.train_loss).abs() < 1e-9);
        assert_eq!(x.train_acc, y.train_acc);
    }
    // A completed run resumed says so and trains nothing.
    drop(b); // releases the run directory
    let mut again = resume(b_dir.path());
    assert_eq!(again.fit(&cpu(&data)).unwrap(), Outcome::AlreadyComplete);
}

/// Trains `cfg` in `dir` until a stop request after batch `batch` (0-based) of `epoch`
/// (1-based); returns the names of the tensors in the checkpoint it saved.
fn stop_at(
    cfg: TrainConfig,
    dir: &Path,
    data: &Cifar10,
    epoch: usize,
    batch: usize,
) -> Vec<String> {
    let mut t = trainer(cfg, dir);
    t.on_batch(move |e, b| match (e, b) == (epoch, batch) {
        true => BatchControl::Stop,
        false => BatchControl::Continue,
    });
    assert!(matches!(
        t.fit(&cpu(data)).unwrap(),
        Outcome::Stopped { saved: true, .. }
    ));
    drop(t);
    let checkpoint = dir.join(files::CHECKPOINT);
    resnext::io::read_safetensors(&checkpoint)
        .unwrap()
        .tensors
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// AdamW with no weight decay on BN parameters and biases, and clipping to a total norm of 1.
fn adamw_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        opt: "adamw".into(),
        lr: 2e-3,
        weight_decay: 0.05,
        norm_weight_decay: Some(0.0),
        bias_weight_decay: Some(0.0),
        clip_grad_norm: Some(1.0),
        ..config(epochs)
    }
}

#[test]
fn an_adamw_run_with_groups_and_clipping_resumes_bitwise_and_each_option_acts() {
    let data = dataset(200, 64);
    let run = |cfg: TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(cfg, dir.path());
        assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
        variables(&t)
    };
    let a = run(adamw_config(2));
    // Stopped in the middle of epoch 2 and resumed: the same weights, bit for bit, and the
    // checkpoint holds AdamW's state.
    let b_dir = tempfile::tempdir().unwrap();
    let names = stop_at(adamw_config(2), b_dir.path(), &data, 2, 2);
    assert!(
        names.iter().any(|n| n.starts_with("optimizer/exp_avg_sq/")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("optimizer/momentum/")));
    let mut b = resume(b_dir.path());
    assert_eq!(b.state().config.opt, "adamw");
    assert!(matches!(b.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_bitwise_equal(&a, &variables(&b));
    // Every option changes the weights: another optimiser, decay on BN and biases, no clipping.
    let differs =
        |other: &BTreeMap<String, Tensor>| a.iter().any(|(name, t)| !t.equal(&other[name]));
    assert!(differs(&run(config(2))), "sgd");
    let decayed = TrainConfig {
        norm_weight_decay: None,
        bias_weight_decay: None,
        ..adamw_config(2)
    };
    let decayed = run(decayed);
    assert!(differs(&decayed), "norm/bias weight decay");
    // BN parameters are in the decay-free group: the stem's BN bias moves otherwise.
    assert!(!a["bn1.bias"].equal(&decayed["bn1.bias"]));
    let unclipped = run(TrainConfig {
        clip_grad_norm: None,
        ..adamw_config(2)
    });
    assert!(differs(&unclipped), "clipping");
}

#[test]
fn an_ema_run_resumes_bitwise_and_reports_the_averages_accuracy() {
    let data = dataset(200, 64);
    let cfg = TrainConfig {
        model_ema: true,
        // Adjusted as torchvision does (x world 1 x batch 32 x every 2 / 3 epochs): 0.9787.
        model_ema_decay: 0.999,
        model_ema_steps: 2,
        warmup_epochs: 1,
        ..config(3)
    };
    let a_dir = tempfile::tempdir().unwrap();
    let mut a = trainer(cfg.clone(), a_dir.path());
    assert!(matches!(a.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    // Stopped in the middle of epoch 2, resumed: the same weights and the same EMA metrics.
    let b_dir = tempfile::tempdir().unwrap();
    let names = stop_at(cfg.clone(), b_dir.path(), &data, 2, 3);
    assert!(names.contains(&"ema/n_averaged".to_string()), "{names:?}");
    assert!(names.contains(&"ema/module.bn1.running_mean".to_string()));
    let mut b = resume(b_dir.path());
    assert!(matches!(b.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_bitwise_equal(&variables(&a), &variables(&b));
    for (x, y) in a.state().metrics.iter().zip(&b.state().metrics) {
        assert!(x.ema_test_acc.is_some() && x.ema_test_loss.is_some());
        assert_eq!(
            (x.ema_test_acc, x.ema_test_loss),
            (y.ema_test_acc, y.ema_test_loss),
            "epoch {}",
            x.epoch
        );
    }
    // After warm-up the average is not the weights: another test loss.
    let m = &a.state().metrics;
    assert_ne!(m[2].ema_test_loss, m[2].test_loss);
    let lines = std::fs::read_to_string(a_dir.path().join(files::METRICS)).unwrap();
    assert!(lines.contains("\"ema_test_acc\""), "{lines}");
    // The EMA changes nothing else: the same run without it has the same weights and raw
    // test results (the raw weights are back in place after each EMA evaluation).
    let p_dir = tempfile::tempdir().unwrap();
    let mut plain = trainer(
        TrainConfig {
            model_ema: false,
            ..cfg
        },
        p_dir.path(),
    );
    assert!(matches!(
        plain.fit(&cpu(&data)).unwrap(),
        Outcome::Completed(_)
    ));
    assert_bitwise_equal(&variables(&plain), &variables(&a));
    for (x, y) in plain.state().metrics.iter().zip(m) {
        assert_eq!((x.test_loss, x.test_acc), (y.test_loss, y.test_acc));
        assert_eq!(x.ema_test_acc, None);
    }
}

#[test]
fn test_time_augmentation_changes_the_evaluation_only() {
    let data = dataset(96, 64);
    let run = |tta: Tta| {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(TrainConfig { tta, ..config(1) }, dir.path());
        assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
        (variables(&t), t.state().metrics[0].test_loss.unwrap())
    };
    let (plain, plain_loss) = run(Tta::None);
    let (augmented, augmented_loss) = run(Tta::FlipTranslate);
    // The same training, bit for bit; another test loss (six views averaged).
    assert_bitwise_equal(&plain, &augmented);
    assert_ne!(plain_loss, augmented_loss);
    let cfg = TrainConfig::from_json(r#"{"tta": "flip_translate"}"#).unwrap();
    assert_eq!(cfg.tta, Tta::FlipTranslate);
}

#[test]
fn resume_after_a_kill_mid_epoch_is_bitwise_exact() {
    let data = dataset(200, 64);
    let a_dir = tempfile::tempdir().unwrap();
    let a = full_run(a_dir.path(), &data, 3);

    // A kill during epoch 2: nothing is saved beyond the checkpoint of epoch 1.
    let c_dir = tempfile::tempdir().unwrap();
    let mut c = trainer(config(3), c_dir.path());
    c.on_batch(|epoch, batch| {
        if epoch == 2 && batch == 4 {
            BatchControl::Abort
        } else {
            BatchControl::Continue
        }
    });
    let out = c.fit(&cpu(&data)).unwrap();
    assert!(matches!(out, Outcome::Stopped { saved: false, .. }));
    drop(c);
    let state = read_checkpoint_state(&c_dir.path().join(files::CHECKPOINT)).unwrap();
    assert_eq!((state.epoch, state.batch), (1, 0));

    let mut c = resume(c_dir.path());
    assert!(matches!(c.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_bitwise_equal(&variables(&a), &variables(&c));

    // A kill during epoch 1, before any checkpoint: the run starts again from config.json.
    let d_dir = tempfile::tempdir().unwrap();
    let mut d = trainer(config(3), d_dir.path());
    d.on_batch(|epoch, batch| match (epoch, batch) {
        (1, 2) => BatchControl::Abort,
        _ => BatchControl::Continue,
    });
    assert!(matches!(
        d.fit(&cpu(&data)).unwrap(),
        Outcome::Stopped { saved: false, .. }
    ));
    drop(d);
    assert!(!d_dir.path().join(files::CHECKPOINT).exists());
    let mut d = resume(d_dir.path());
    assert_eq!((d.state().epoch, d.state().batch), (0, 0));
    assert!(matches!(d.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_bitwise_equal(&variables(&a), &variables(&d));
    // A folder that never held a run is still refused.
    let err = Trainer::resume(tempfile::tempdir().unwrap().path(), None).unwrap_err();
    assert!(err.to_string().contains("not a run directory"), "{err}");
    // A run of 2 processes stopped before its first checkpoint needs 2 processes again.
    let e_dir = tempfile::tempdir().unwrap();
    let two = TrainConfig {
        world_size: 2,
        ..config(3)
    };
    std::fs::write(e_dir.path().join(files::CONFIG), two.to_json()).unwrap();
    let err = Trainer::resume(e_dir.path(), None).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::WorldSizeChanged {
                saved: 2,
                now: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn run_directory_files_parse_with_the_documented_fields() {
    let data = dataset(96, 40);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(2);
    cfg.eval_every = 2;
    let mut t = trainer(cfg.clone(), dir.path());
    assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();

    let back: TrainConfig = serde_json::from_str(&read(files::CONFIG)).unwrap();
    assert_eq!(back, cfg);

    let lines: Vec<serde_json::Value> = read(files::METRICS)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["epoch"], i + 1);
        for k in ["train_loss", "train_acc", "lr", "seconds"] {
            assert!(m[k].is_f64(), "{k} in {m}");
        }
        let acc = m["train_acc"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&acc));
    }
    // eval_every = 2: no evaluation after epoch 1, one after epoch 2.
    assert!(lines[0]["test_acc"].is_null() && lines[0]["test_loss"].is_null());
    assert!(lines[1]["test_acc"].is_f64() && lines[1]["test_loss"].is_f64());

    let s: serde_json::Value = serde_json::from_str(&read(files::SUMMARY)).unwrap();
    for k in [
        "best_test_acc",
        "final_test_acc",
        "total_seconds",
        "train_images_per_sec",
    ] {
        assert!(s[k].is_f64(), "{k} in {s}");
    }
    assert_eq!(s["per_class_acc"].as_array().unwrap().len(), 10);
    let confusion = s["confusion_matrix"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        total, 40,
        "the confusion matrix counts every test image once"
    );

    let svg = read(files::CURVES);
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg:.200}"
    );
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "no curve drawn"
    );
    assert_eq!(svg.matches('<').count(), svg.matches('>').count());

    for f in [files::LAST, files::BEST] {
        let w = Tensor::read_safetensors(dir.path().join(f)).unwrap();
        let names: Vec<&str> = w.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"layer1.0.conv2.weight") && names.contains(&"fc.bias"));
        assert!(names.contains(&"bn1.num_batches_tracked"));
    }
}

#[test]
fn bad_checkpoints_are_refused_and_left_alone() {
    let data = dataset(64, 20);
    let dir = tempfile::tempdir().unwrap();
    full_run(dir.path(), &data, 1);
    let ckpt = dir.path().join(files::CHECKPOINT);
    let good = std::fs::read(&ckpt).unwrap();

    // Another model: same trainer config, but a network with another classifier size.
    let vs = nn::VarStore::new(Device::Cpu);
    let other = seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(7)));
    let err = Trainer::new(config(1), vs, other)
        .unwrap()
        .resume_from(dir.path())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains("checkpoint.safetensors") && msg.contains("fc."),
        "{msg}"
    );
    assert!(
        msg.contains("[10") && msg.contains("[7"),
        "both shapes: {msg}"
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), good);

    // Truncated.
    std::fs::write(&ckpt, &good[..good.len() / 2]).unwrap();
    let msg = seeded(|| Trainer::resume(dir.path(), None))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("checkpoint.safetensors"), "{msg}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap().len(),
        good.len() / 2,
        "nothing overwritten"
    );

    // Garbage, and a weights file in place of a checkpoint.
    std::fs::write(&ckpt, b"definitely not safetensors").unwrap();
    let msg = seeded(|| Trainer::resume(dir.path(), None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("checkpoint.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );
    std::fs::copy(dir.path().join(files::LAST), &ckpt).unwrap();
    let msg = seeded(|| Trainer::resume(dir.path(), None))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a resnext training checkpoint"), "{msg}");

    // No checkpoint at all, and a fresh run into a directory that holds one.
    let empty = tempfile::tempdir().unwrap();
    let msg = Trainer::resume(empty.path(), None).unwrap_err().to_string();
    assert!(msg.contains("no checkpoint"), "{msg}");
    std::fs::write(&ckpt, &good).unwrap();
    let err = seeded(|| Trainer::resnext(config(1)))
        .unwrap()
        .with_run_dir(dir.path())
        .unwrap_err();
    assert!(matches!(err, TrainError::RunExists { .. }), "{err}");
}

#[test]
fn config_json_round_trips_and_bad_values_are_named() {
    let mut cfg = config(7);
    cfg.schedule = Schedule::Step;
    cfg.nesterov = true;
    cfg.limit_train = Some(1000);
    let back = TrainConfig::from_json(&cfg.to_json()).unwrap();
    assert_eq!(back, cfg);
    for (json, field) in [
        (r#"{"model": "resnet18"}"#, "model"),
        (r#"{"epochs": 0}"#, "epochs"),
        (r#"{"lr": -0.1}"#, "lr"),
        (r#"{"momentum": 1.5}"#, "momentum"),
        (r#"{"device": "tpu"}"#, "device"),
        (r#"{"label_smoothing": 1.0}"#, "label_smoothing"),
        (r#"{"warmup_epochs": 300}"#, "warmup_epochs"),
        (r#"{"opt": "adam"}"#, "opt"),
        (r#"{"tta": "mirror"}"#, "flip_translate"),
        (r#"{"model_ema_decay": 1.0}"#, "model_ema_decay"),
        (r#"{"model_ema_steps": 0}"#, "model_ema_steps"),
        (r#"{"opt": "adamw", "nesterov": true}"#, "nesterov"),
        (r#"{"clip_grad_norm": 0}"#, "clip_grad_norm"),
        (r#"{"norm_weight_decay": -1}"#, "norm_weight_decay"),
        (r#"{"bias_weight_decay": -0.5}"#, "bias_weight_decay"),
    ] {
        let msg = TrainConfig::from_json(json).unwrap_err().to_string();
        assert!(msg.contains(field), "{json}: {msg}");
    }
    let msg = TrainConfig::from_json(r#"{"model": "resnet18"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("resnext50_32x4d") && msg.contains("tiny"),
        "lists valid names: {msg}"
    );
    let msg = TrainConfig::from_json(r#"{"opt": "adam"}"#)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("sgd, adamw"), "lists valid optimisers: {msg}");
    let msg = TrainConfig::from_json(r#"{"epoch": 3}"#)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("unknown field"), "{msg}");
}

/// The example binary, built by `cargo test` next to the test binaries.

#[test]
fn cli_rejects_bad_values_with_exit_code_2() {
    let bin = common::example("train_cifar10");
    let out_dir = tempfile::tempdir().unwrap();
    // Inconsistent torchrun variables are usage errors too.
    fn rank(rank: &str) -> Vec<(&str, &str)> {
        vec![
            ("WORLD_SIZE", "2"),
            ("RANK", rank),
            ("MASTER_ADDR", "127.0.0.1"),
        ]
    }
    for (env, args, needle) in [
        (vec![], vec!["--model", "resnet18"], "resnext50_32x4d"),
        (vec![], vec!["--schedule", "linear"], "cosine"),
        (vec![], vec!["--epochs", "0"], "epochs"),
        (vec![], vec!["--lr", "-1"], "lr"),
        (vec![], vec!["--opt", "adam"], "adamw"),
        (vec![], vec!["--tta", "mirror"], "flip-translate"),
        (
            vec![],
            vec!["--model-ema", "--model-ema-decay", "1"],
            "model_ema_decay",
        ),
        (vec![], vec!["--clip-grad-norm", "-1"], "clip_grad_norm"),
        (
            vec![],
            vec!["--opt", "adamw", "--nesterov"],
            "only with opt = sgd",
        ),
        (vec![], vec!["--device", "tpu"], "cpu, cuda or cuda:N"),
        (vec![], vec!["--device", "cuda:7"], "not available"),
        (vec![], vec!["--batch-size", "many"], "batch-size"),
        (vec![], vec!["--nproc", "0"], "at least 1"),
        (rank("3"), vec![], "RANK=3 is not below WORLD_SIZE=2"),
        (rank("0"), vec![], "MASTER_PORT"),
        (rank("1"), vec!["--nproc", "2"], "inside a launched rank"),
    ] {
        let out = std::process::Command::new(&bin)
            .envs(env.iter().copied())
            .env_remove("MASTER_PORT")
            .args(&args)
            .arg("--out")
            .arg(out_dir.path().join("run"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {stderr}");
        assert!(stderr.contains(needle), "{env:?} {args:?}: {stderr}");
    }
    assert!(
        !out_dir.path().join("run").exists(),
        "nothing written for a bad command"
    );
}

#[test]
fn autocast_dtype_binding_reads_back_what_it_sets() {
    // The trainer sets CUDA autocast to bf16 through libtorch's C++ API; check the binding on
    // the CPU autocast state, which exists on every machine, and restore it.
    let before = resnext::trainer::autocast_dtype_code(false);
    resnext::trainer::set_autocast_dtype_code(false, 5); // Half
    assert_eq!(resnext::trainer::autocast_dtype_code(false), 5);
    resnext::trainer::set_autocast_dtype_code(false, 15); // BFloat16
    assert_eq!(resnext::trainer::autocast_dtype_code(false), 15);
    resnext::trainer::set_autocast_dtype_code(false, before);
    assert_eq!(resnext::trainer::autocast_dtype_code(false), before);
}

#[test]
fn channels_last_training_keeps_its_layout_and_learns() {
    let data = dataset(320, 100);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(2);
    cfg.channels_last = Some(true);
    cfg.augment = false;
    let mut t = trainer(cfg, dir.path());
    assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    let convs: Vec<(String, Tensor)> = variables(&t)
        .into_iter()
        .filter(|(_, v)| v.dim() == 4)
        .collect();
    assert!(!convs.is_empty());
    for (name, v) in &convs {
        assert!(
            resnext::layout::is_channels_last(v),
            "{name} {:?} has strides {:?}",
            v.size(),
            v.stride()
        );
    }
    let m = &t.state().metrics;
    assert!(m[1].train_loss < m[0].train_loss, "{m:?}");
    // Resuming a channels-last run loads NCHW-ordered data into channels-last variables.
    let before = variables(&t);
    drop(t); // releases the run directory
    let resumed = resume(dir.path());
    assert_bitwise_equal(&before, &variables(&resumed));
}

#[test]
fn test_set_is_evaluated_with_the_inference_form_with_the_plain_models_results() {
    let data = dataset(256, 160);
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(config(2), dir.path());
    assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    let last = t.state().metrics.last().unwrap().clone();
    // The trained module itself, in eval mode, on the same test set and batches.
    let test: std::sync::Arc<dyn resnext::data::Dataset> = cpu(&data).test;
    let plain = resnext::trainer::evaluate(
        t.model(),
        &test,
        &BatchConfig::eval(256),
        10,
        &resnext::trainer::Execution::plain(Device::Cpu),
    )
    .unwrap();
    let (loss, acc) = (last.test_loss.unwrap(), last.test_acc.unwrap());
    assert!(
        (loss - plain.loss).abs() <= 1e-4 * plain.loss.abs().max(1.0),
        "trainer test loss {loss} vs plain module {}",
        plain.loss
    );
    // An argmax may flip on a near tie under float rounding: at most one image of 160.
    assert!(
        (acc - plain.acc).abs() <= 100.0 / 160.0 + 1e-9,
        "{acc} vs {}",
        plain.acc
    );
}

#[test]
fn a_custom_eval_form_is_built_at_every_evaluation() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let data = dataset(128, 64);
    let mut cfg = config(3);
    cfg.eval_every = 1;
    let vs = nn::VarStore::new(Device::Cpu);
    let net = seeded(|| {
        tch::manual_seed(5);
        ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10))
    });
    let builds = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&builds);
    // A form that predicts class 0 for everything: the recorded accuracy is the share of 0s.
    #[derive(Debug)]
    struct Zero;
    impl nn::ModuleT for Zero {
        fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
            let n = xs.size()[0];
            let logits = Tensor::zeros([n, 10], (Kind::Float, xs.device()));
            let _ = logits.narrow(1, 0, 1).fill_(1.0);
            logits
        }
    }
    let mut t = Trainer::new(cfg, vs, net)
        .unwrap()
        .with_eval_form(Box::new(move |_: &ResNeXt| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Zero) as Box<dyn nn::ModuleT>)
        }));
    t.set_progress(ProgressMode::Silent);
    assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_eq!(builds.load(Ordering::SeqCst), 3);
    let zeros = data.test_labels.eq(0).sum(Kind::Int64).int64_value(&[]) as f64;
    for m in &t.state().metrics {
        assert_eq!(m.test_acc, Some(100.0 * zeros / 64.0), "{m:?}");
    }
}

/// A checkpoint written by the trainer before it was reshaped around `Dataset` and
/// `TrainStep` (checkpoint format 1): the run of `config(3)` on `dataset(200, 64)`, stopped
/// after batch 3 of epoch 2. Its numbers were computed on another machine, whose CPU may pick
/// other oneDNN/MKL kernels than this one: tests compare what this machine computes from it
/// with what this machine computes from it otherwise, never with numbers of this machine's own
/// uninterrupted run.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/checkpoint-v1-tiny-epoch2-batch3.safetensors"
);

#[test]
fn a_checkpoint_of_the_first_format_resumes_as_the_same_state_saved_by_this_version() {
    let data = dataset(200, 64);
    let recorded = read_checkpoint_state(Path::new(FIXTURE)).unwrap();
    assert_eq!(
        recorded.config,
        config(3),
        "the fixture is a run of config(3)"
    );

    // b: the fixture resumed and finished.
    let b_dir = tempfile::tempdir().unwrap();
    std::fs::copy(FIXTURE, b_dir.path().join(files::CHECKPOINT)).unwrap();
    let mut b = resume(b_dir.path());
    assert_eq!((b.state().epoch, b.state().batch), (1, 3));
    // What the old code recorded is carried as it was, bit for bit.
    assert_eq!(b.state().metrics, recorded.metrics);
    assert_eq!(b.state().progress, recorded.progress);
    assert!(matches!(b.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));

    // c: the fixture resumed, saved at once by this version (its own format), and that
    // checkpoint resumed and finished: the migrated state and the state this version writes of
    // it are the same run.
    let c_dir = tempfile::tempdir().unwrap();
    std::fs::copy(FIXTURE, c_dir.path().join(files::CHECKPOINT)).unwrap();
    let mut c = resume(c_dir.path());
    c.on_batch(|_, _| BatchControl::Stop);
    assert!(matches!(
        c.fit(&cpu(&data)).unwrap(),
        Outcome::Stopped { saved: true, .. }
    ));
    drop(c);
    let saved = read_checkpoint_state(&c_dir.path().join(files::CHECKPOINT)).unwrap();
    assert_eq!(saved.format, resnext::trainer::CHECKPOINT_FORMAT);
    assert_eq!(saved.metrics, recorded.metrics);
    let mut c = resume(c_dir.path());
    assert!(matches!(c.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));

    assert_bitwise_equal(&variables(&b), &variables(&c));
    assert_eq!(b.state().metrics.len(), 3);
    for (x, y) in b.state().metrics.iter().zip(&c.state().metrics) {
        assert_eq!(
            (x.epoch, x.train_acc, x.test_acc, x.train_loss.to_bits()),
            (y.epoch, y.train_acc, y.test_acc, y.train_loss.to_bits())
        );
    }
}

/// The fixture with its trainer state changed by `edit`, written to `dir`.
fn edited_fixture(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let file = resnext::io::read_safetensors(Path::new(FIXTURE)).unwrap();
    let key = "resnext.trainer_state";
    let mut state: serde_json::Value = serde_json::from_str(&file.metadata[key]).unwrap();
    edit(&mut state);
    let metadata = std::collections::HashMap::from([(key.to_string(), state.to_string())]);
    let path = dir.join(files::CHECKPOINT);
    resnext::io::write_safetensors(&path, &file.tensors, Some(metadata)).unwrap();
    path
}

#[test]
fn checkpoint_states_tolerate_unknown_and_missing_fields_but_not_newer_formats() {
    let dir = tempfile::tempdir().unwrap();
    let original = read_checkpoint_state(Path::new(FIXTURE)).unwrap();
    // Fields a later version might add, in the state and in its configuration.
    let path = edited_fixture(dir.path(), |s| {
        s["ema_decay"] = serde_json::json!(0.999);
        s["config"]["gradient_clip"] = serde_json::json!(1.0);
    });
    assert_eq!(read_checkpoint_state(&path).unwrap(), original);
    // Fields an earlier version did not write take their defaults.
    let path = edited_fixture(dir.path(), |s| {
        let state = s.as_object_mut().unwrap();
        state.remove("loss_scale");
        state["config"]
            .as_object_mut()
            .unwrap()
            .remove("label_smoothing");
    });
    let state = read_checkpoint_state(&path).unwrap();
    assert_eq!(
        (state.loss_scale, state.config.label_smoothing),
        (None, 0.0)
    );
    assert_eq!(state.metrics, original.metrics);
    // A format this version does not know yet is refused, naming the formats it reads.
    let path = edited_fixture(dir.path(), |s| s["format"] = serde_json::json!(99));
    let msg = read_checkpoint_state(&path).unwrap_err().to_string();
    assert!(msg.contains("format 99") && msg.contains("newer"), "{msg}");
    // Unknown fields are dropped, known ones are still checked.
    let path = edited_fixture(dir.path(), |s| s["config"]["epochs"] = serde_json::json!(0));
    let msg = read_checkpoint_state(&path).unwrap_err().to_string();
    assert!(msg.contains("epochs"), "{msg}");
}

#[test]
fn a_run_directory_is_held_by_one_trainer_at_a_time() {
    let data = dataset(64, 20);
    let dir = tempfile::tempdir().unwrap();
    let first = full_run(dir.path(), &data, 1);
    // The first trainer still lives: a second one, here or in another process, is refused.
    let err = seeded(|| Trainer::resume(dir.path(), None)).unwrap_err();
    let msg = err.to_string();
    let pid = std::process::id().to_string();
    assert!(
        msg.contains(&dir.path().display().to_string()) && msg.contains(&pid),
        "{msg}"
    );
    // `train_cifar10 --resume` in another process: refused; its standard error.
    let refused_elsewhere = || {
        let out = std::process::Command::new(common::example("train_cifar10"))
            .arg("--resume")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{stderr}");
        stderr
    };
    let stderr = refused_elsewhere();
    assert!(
        stderr.contains(&pid) && stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    // The lock is on the directory itself: deleting the file that records the holder's PID
    // lets nobody in (the holder is then "another process").
    std::fs::remove_file(dir.path().join(resnext::io::LOCK_FILE)).unwrap();
    assert!(matches!(
        resnext::io::lock_dir(dir.path()),
        Err(resnext::io::IoError::Locked { holder: None, .. })
    ));
    let msg = seeded(|| Trainer::resume(dir.path(), None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&dir.path().display().to_string()) && msg.contains("another process"),
        "{msg}"
    );
    let stderr = refused_elsewhere();
    assert!(
        stderr.contains("in use by another process")
            && stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(matches!(
        trainer(config(1), tempfile::tempdir().unwrap().path()).fit(&cpu(&data)),
        Ok(Outcome::Completed(_))
    ));
    drop(first);
    // Released with the trainer: the run resumes (and, being complete, says so).
    assert_eq!(
        resume(dir.path()).fit(&cpu(&data)).unwrap(),
        Outcome::AlreadyComplete
    );
}

#[test]
fn a_stale_lock_file_and_leftover_temporary_files_do_not_block_a_resume() {
    let data = dataset(64, 20);
    let dir = tempfile::tempdir().unwrap();
    drop(full_run(dir.path(), &data, 1));
    // What a killed process leaves: its lock file (no lock held any more) and the temporary
    // file of an interrupted write.
    std::fs::write(dir.path().join(resnext::io::LOCK_FILE), "4194304").unwrap();
    let leftover = dir.path().join(".tmp-AbCdEf.partial");
    std::fs::write(&leftover, vec![0u8; 4096]).unwrap();
    let unrelated = dir.path().join("notes.partial");
    std::fs::write(&unrelated, "mine").unwrap();
    let t = resume(dir.path());
    assert!(!leftover.exists(), "the leftover was not removed");
    assert!(unrelated.exists(), "a file that is not ours was removed");
    drop(t);
}

#[test]
fn non_finite_values_in_a_stored_state_round_trip() {
    let mut state = read_checkpoint_state(Path::new(FIXTURE)).unwrap();
    state.metrics[0].train_loss = f64::NAN;
    state.metrics[0].test_loss = Some(f64::INFINITY);
    state.progress.loss_sum = f64::NEG_INFINITY;
    if let Some(eval) = &mut state.last_eval {
        eval.loss = f64::NAN;
    }
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10)));
    let sgd = resnext::trainer::Sgd::new(&vs, resnext::trainer::SgdConfig::default());
    let path = dir.path().join(files::CHECKPOINT);
    let no_callbacks = resnext::trainer::Callbacks::default();
    resnext::trainer::save_checkpoint(&path, &vs, &sgd, &no_callbacks, &state).unwrap();
    let back = read_checkpoint_state(&path).unwrap();
    assert!(back.metrics[0].train_loss.is_nan());
    assert_eq!(back.metrics[0].test_loss, Some(f64::INFINITY));
    assert_eq!(back.progress.loss_sum, f64::NEG_INFINITY);
    assert!(back.last_eval.unwrap().loss.is_nan());
    assert_eq!(back.metrics[1..], state.metrics[1..]);
}

/// The tiny ResNeXt, whose logits turn NaN on the training forward pass number `bad`
/// (0-based) and only then.
struct NanAt {
    net: ResNeXt,
    calls: std::sync::atomic::AtomicUsize,
    bad: usize,
}

impl std::fmt::Debug for NanAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NanAt({})", self.bad)
    }
}

impl nn::ModuleT for NanAt {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let logits = self.net.forward_t(xs, train);
        if train && self.calls.fetch_add(1, Ordering::SeqCst) == self.bad {
            logits * f64::NAN
        } else {
            logits
        }
    }
}

#[test]
fn a_non_finite_loss_on_any_batch_is_divergence_naming_that_batch() {
    let data = dataset(128, 20);
    for bad in [1, 2] {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10)));
        let model = NanAt {
            net,
            calls: Default::default(),
            bad,
        };
        let mut t = Trainer::new(config(2), vs, model).unwrap();
        t.set_progress(ProgressMode::Silent);
        let err = t.fit(&cpu(&data)).unwrap_err();
        match err {
            TrainError::Diverged { epoch, batch, loss } => {
                assert_eq!((epoch, batch), (1, bad));
                assert!(loss.is_nan());
            }
            other => panic!("expected divergence, got {other}"),
        }
    }
}

/// Writes an all-zero CIFAR-10 (every file at its full size, labels 0) into `dir`.
fn write_zero_cifar10(dir: &Path) {
    use resnext::data::{RECORDS_PER_FILE, RECORD_BYTES, TEST_FILE, TRAIN_FILES};
    std::fs::create_dir_all(dir).unwrap();
    let zeros = vec![0u8; RECORDS_PER_FILE * RECORD_BYTES];
    for name in TRAIN_FILES.iter().chain([&TEST_FILE]) {
        std::fs::write(dir.join(name), &zeros).unwrap();
    }
}

/// `train_cifar10 ARGS --quiet` run in `cwd`: whether it succeeded, and stderr + stdout.
fn train_cifar10(cwd: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::example("train_cifar10"))
        .current_dir(cwd)
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

/// A one-epoch tiny CPU run on 64 training and 32 test images.
const QUICK_RUN: [&str; 12] = [
    "--model",
    "tiny",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--limit-train",
    "64",
    "--limit-test",
    "32",
    "--device",
    "cpu",
];

#[test]
fn train_cifar10_starts_from_another_runs_weights_with_the_backbone_frozen() {
    let root = tempfile::tempdir().unwrap();
    write_zero_cifar10(&root.path().join("data"));
    let cli = |args: &[&str]| {
        let args = [&QUICK_RUN[..], &["--data-dir", "data"], args].concat();
        let (ok, text) = train_cifar10(root.path(), &args);
        assert!(ok, "{args:?}: {text}");
    };
    cli(&["--out", "first"]);
    // A relative path, recorded absolute so that a resume from elsewhere finds it.
    let pretrained = "first/last.safetensors";
    cli(&[
        "--out",
        "second",
        "--pretrained",
        pretrained,
        "--freeze-backbone",
        "--seed",
        "2",
    ]);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.path().join("second/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["freeze_backbone"], true, "{config}");
    let recorded = std::path::PathBuf::from(config["pretrained"].as_str().unwrap());
    assert_eq!(recorded, root.path().join(pretrained), "{config}");
    let read = |run: &str| -> BTreeMap<String, Tensor> {
        Tensor::read_safetensors(root.path().join(run).join("last.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    };
    let (first, second) = (read("first"), read("second"));
    assert_eq!(first.len(), second.len());
    for (name, a) in &first {
        if name.ends_with("num_batches_tracked") {
            continue; // the steps of the run that wrote the file
        }
        // fc trains; BN running statistics move in training mode, as in PyTorch.
        let trained = name.starts_with("fc.") || name.contains("running_");
        assert_eq!(
            a.equal(&second[name]),
            !trained,
            "{name}: trained {trained}"
        );
    }
}

#[test]
fn a_resumed_run_finds_its_data_where_it_was_trained_from() {
    let root = tempfile::tempdir().unwrap();
    write_zero_cifar10(&root.path().join("data_a"));
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run_dir = root.path().join("run");
    let cli = train_cifar10;
    let run = run_dir.to_str().unwrap();
    // A relative --data-dir, resolved against the directory the run started in.
    let args = [&QUICK_RUN[..], &["--data-dir", "data_a", "--out", run]].concat();
    let (ok, text) = cli(root.path(), &args);
    assert!(ok, "{text}");
    // Resumed from another directory, with no data flag: the run's own data is used.
    let (ok, text) = cli(&elsewhere, &["--resume", run]);
    assert!(ok && text.contains("already complete"), "{text}");
    // The data moved: the error names where the run was trained from and how to point at it.
    std::fs::rename(root.path().join("data_a"), root.path().join("data_b")).unwrap();
    let (ok, text) = cli(&elsewhere, &["--resume", run]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("data_a") && text.contains("--data-dir"),
        "{text}"
    );
    let data_b = root.path().join("data_b");
    let (ok, text) = cli(
        &elsewhere,
        &["--resume", run, "--data-dir", data_b.to_str().unwrap()],
    );
    assert!(ok, "{text}");
}

#[test]
fn a_stop_during_evaluation_is_honoured_and_resumes_exactly() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    let data = dataset(200, 300);
    let a_dir = tempfile::tempdir().unwrap();
    let a = full_run(a_dir.path(), &data, 3);

    let b_dir = tempfile::tempdir().unwrap();
    let b = trainer(config(3), b_dir.path());
    let flag = b.stop_flag();
    let evaluations = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&evaluations);
    // Ask for a stop as the second evaluation starts (what a Ctrl-C then would do).
    let b = b.with_eval_form(Box::new(move |net: &ResNeXt| {
        if count.fetch_add(1, Ordering::SeqCst) == 1 {
            flag.store(true, Ordering::SeqCst);
        }
        Ok(Box::new(resnext::inference::InferenceModel::new(net)?) as Box<dyn nn::ModuleT>)
    }));
    let mut b = b;
    let out = b.fit(&cpu(&data)).unwrap();
    assert_eq!(
        out,
        Outcome::Stopped {
            epoch: 2,
            batch: 7,
            saved: true
        }
    );
    drop(b);
    let state = read_checkpoint_state(&b_dir.path().join(files::CHECKPOINT)).unwrap();
    assert_eq!((state.epoch, state.batch, state.metrics.len()), (1, 7, 1));
    let mut b = resume(b_dir.path());
    assert!(matches!(b.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    assert_bitwise_equal(&variables(&a), &variables(&b));
    for (x, y) in a.state().metrics.iter().zip(&b.state().metrics) {
        assert_eq!((x.train_acc, x.test_acc), (y.train_acc, y.test_acc));
    }
}

#[test]
fn evaluation_refuses_a_class_count_that_does_not_fit() {
    let data = dataset(32, 20);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10)));
    let exec = resnext::trainer::Execution::plain(Device::Cpu);
    for classes in [0, -3, 3] {
        let err = resnext::trainer::evaluate(
            &net,
            &cpu(&data).test,
            &BatchConfig::eval(16),
            classes,
            &exec,
        )
        .unwrap_err();
        assert!(err.to_string().contains("num_classes"), "{classes}: {err}");
    }
}

#[test]
fn resume_from_runs_with_the_saved_precision_and_layout_not_the_trainers() {
    let data = dataset(64, 20);
    let dir = tempfile::tempdir().unwrap();
    let mut saved = config(1);
    saved.channels_last = Some(true);
    saved.label_smoothing = 0.1;
    let mut t = trainer(saved, dir.path());
    assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    drop(t);
    // A trainer built for NCHW takes the run's channels-last layout when it resumes it.
    let mut nchw = config(1);
    nchw.channels_last = Some(false);
    let t = seeded(|| Trainer::resnext(nchw)).unwrap();
    let conv =
        |t: &Trainer<ResNeXt>| t.var_store().variables()["layer1.0.conv2.weight"].shallow_clone();
    assert!(!resnext::layout::is_channels_last(&conv(&t)));
    let t = t.resume_from(dir.path()).unwrap();
    assert_eq!(t.state().config.channels_last, Some(true));
    assert_eq!(t.state().config.label_smoothing, 0.1);
    assert!(resnext::layout::is_channels_last(&conv(&t)));
}

/// The tensors of the checkpoint in `dir` whose names start with `prefix`, prefix removed.
fn checkpoint_section(dir: &Path, prefix: &str) -> BTreeMap<String, Tensor> {
    resnext::io::read_safetensors(&dir.join(files::CHECKPOINT))
        .unwrap()
        .tensors
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n.to_string(), t)))
        .collect()
}

#[test]
fn a_format_2_checkpoint_is_made_of_listed_sections_and_loads_back_exactly() {
    let data = dataset(200, 64);
    let dir = tempfile::tempdir().unwrap();
    let names = stop_at(config(2), dir.path(), &data, 1, 3);
    let path = dir.path().join(files::CHECKPOINT);
    let file = resnext::io::read_safetensors(&path).unwrap();
    assert_eq!(
        file.metadata["resnext.sections"],
        r#"["model","optimizer"]"#
    );
    assert!(names
        .iter()
        .all(|n| n.starts_with("model/") || n.starts_with("optimizer/")));
    assert!(names.iter().any(|n| n.starts_with("optimizer/momentum/")));
    assert_eq!(read_checkpoint_state(&path).unwrap().format, 2);
    // Loaded into a fresh model and optimiser, and saved again: the same tensors.
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _net = seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10)));
    let mut opt = config(2).build_optimizer(&vs).unwrap();
    let mut callbacks = resnext::trainer::Callbacks::default();
    let state =
        resnext::trainer::load_checkpoint(&path, &mut vs, &mut opt, &mut callbacks).unwrap();
    let again = tempfile::tempdir().unwrap();
    let path2 = again.path().join(files::CHECKPOINT);
    resnext::trainer::save_checkpoint(&path2, &vs, opt.as_ref(), &callbacks, &state).unwrap();
    let back = resnext::io::read_safetensors(&path2).unwrap();
    assert_eq!(back.metadata, file.metadata);
    let sorted = |f: resnext::io::TensorFile| f.tensors.into_iter().collect::<BTreeMap<_, _>>();
    assert_bitwise_equal(&sorted(file), &sorted(back));
    // Without its list of sections, or with a tensor outside them, it is refused.
    let file = resnext::io::read_safetensors(&path).unwrap();
    let mut meta = file.metadata.clone();
    meta.remove("resnext.sections");
    resnext::io::write_safetensors(&path2, &file.tensors, Some(meta)).unwrap();
    let msg = Trainer::resume(again.path(), None).unwrap_err().to_string();
    assert!(msg.contains("resnext.sections"), "{msg}");
    let mut tensors = file.tensors;
    tensors.push(("stray/x".into(), Tensor::from(1.0f32)));
    resnext::io::write_safetensors(&path2, &tensors, Some(file.metadata)).unwrap();
    let msg = Trainer::resume(again.path(), None).unwrap_err().to_string();
    assert!(msg.contains("stray/x"), "{msg}");
}

/// A callback of the tests: counts the updates and the epochs, and sums the classifier's bias
/// after every update; its state is the section `bias_log`.
struct BiasLog {
    steps: i64,
    epochs: i64,
    sum: Tensor,
}

impl BiasLog {
    fn new() -> Self {
        BiasLog {
            steps: 0,
            epochs: 0,
            sum: Tensor::zeros([10], (Kind::Float, Device::Cpu)),
        }
    }
}

impl resnext::trainer::TrainCallback for BiasLog {
    fn section(&self) -> &str {
        "bias_log"
    }

    fn after_step(&mut self, ctx: &resnext::trainer::StepContext<'_>) -> Result<(), TrainError> {
        let bias = &ctx.vars.variables()["fc.bias"];
        self.sum = &self.sum + bias.detach();
        self.steps += 1;
        Ok(())
    }

    fn after_epoch(&mut self, ctx: &resnext::trainer::EpochContext<'_>) -> Result<(), TrainError> {
        assert_eq!(ctx.metrics.epoch as i64, self.epochs + 1);
        self.epochs += 1;
        Ok(())
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("steps".into(), Tensor::from(self.steps)),
            ("epochs".into(), Tensor::from(self.epochs)),
            ("sum".into(), self.sum.shallow_clone()),
        ]
    }

    fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), TrainError> {
        for (name, t) in tensors {
            match name.as_str() {
                "steps" => self.steps = t.int64_value(&[]),
                "epochs" => self.epochs = t.int64_value(&[]),
                _ => self.sum = t,
            }
        }
        Ok(())
    }
}

#[test]
fn a_callback_keeps_its_own_checkpoint_section_and_resumes_exactly() {
    let data = dataset(200, 64);
    let cfg = config(3);
    let a_dir = tempfile::tempdir().unwrap();
    let mut a = trainer(cfg.clone(), a_dir.path())
        .with_callback(BiasLog::new())
        .unwrap();
    assert!(matches!(a.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    let steps = a.state().steps;
    drop(a);
    let a_log = checkpoint_section(a_dir.path(), "bias_log/");
    assert_eq!(a_log["steps"].int64_value(&[]), steps as i64);
    assert_eq!(a_log["epochs"].int64_value(&[]), 3);

    // Stopped mid-epoch 2, resumed with the callback: the same section at the end.
    let b_dir = tempfile::tempdir().unwrap();
    let mut b = trainer(cfg.clone(), b_dir.path())
        .with_callback(BiasLog::new())
        .unwrap();
    b.on_batch(|e, i| match (e, i) == (2, 3) {
        true => BatchControl::Stop,
        false => BatchControl::Continue,
    });
    assert!(matches!(
        b.fit(&cpu(&data)).unwrap(),
        Outcome::Stopped { saved: true, .. }
    ));
    drop(b);
    // Resumed without it, the run is refused, naming the section.
    let msg = seeded(|| Trainer::resume(b_dir.path(), None))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bias_log"), "{msg}");
    let resumed = seeded(|| Trainer::resnext(cfg.clone())).unwrap();
    let mut b = resumed
        .with_callback(BiasLog::new())
        .unwrap()
        .resume_from(b_dir.path())
        .unwrap();
    b.set_progress(ProgressMode::Silent);
    assert!(matches!(b.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
    drop(b);
    assert_bitwise_equal(&a_log, &checkpoint_section(b_dir.path(), "bias_log/"));
    // Sections are named once: a second callback of the same section is refused.
    let twice = seeded(|| Trainer::resnext(cfg.clone()))
        .unwrap()
        .with_callback(BiasLog::new())
        .unwrap()
        .with_callback(BiasLog::new());
    assert!(matches!(twice, Err(TrainError::InvalidConfig { .. })));
}

#[test]
fn model_ema_weights_chooses_what_best_and_last_hold() {
    let data = dataset(200, 64);
    let cfg = TrainConfig {
        model_ema: true,
        model_ema_decay: 0.999,
        model_ema_steps: 2,
        ..config(2)
    };
    let weights_in = |dir: &Path, file: &str| -> BTreeMap<String, Tensor> {
        let read = resnext::io::read_safetensors(&dir.join(file)).unwrap();
        read.tensors.into_iter().collect()
    };
    for choice in [EmaWeights::Raw, EmaWeights::Ema] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(
            TrainConfig {
                model_ema_weights: choice,
                ..cfg.clone()
            },
            dir.path(),
        );
        assert!(matches!(t.fit(&cpu(&data)).unwrap(), Outcome::Completed(_)));
        drop(t);
        let expected = match choice {
            EmaWeights::Raw => checkpoint_section(dir.path(), "model/"),
            EmaWeights::Ema => checkpoint_section(dir.path(), "ema/module."),
        };
        let other = match choice {
            EmaWeights::Raw => checkpoint_section(dir.path(), "ema/module."),
            EmaWeights::Ema => checkpoint_section(dir.path(), "model/"),
        };
        let last = weights_in(dir.path(), files::LAST);
        let last: BTreeMap<String, Tensor> = expected
            .keys()
            .map(|n| (n.clone(), last[n].shallow_clone()))
            .collect();
        assert_bitwise_equal(&expected, &last);
        assert!(
            other.iter().any(|(n, t)| !t.equal(&last[n])),
            "{choice:?}: the other weights are the same"
        );
        assert!(dir.path().join(files::BEST).exists());
    }
    // `ema` needs an EMA.
    let no_ema = TrainConfig {
        model_ema: false,
        model_ema_weights: EmaWeights::Ema,
        ..config(2)
    };
    let err = no_ema.validate().unwrap_err().to_string();
    assert!(err.contains("model_ema_weights"), "{err}");
}
