//! Data-parallel training through the trainer, on CPU with two Gloo processes of this test
//! binary (re-executed with `RESNEXT_DIST_ROLE`, see tests/common/ranks.rs), on synthetic
//! images:
//!
//! * a 2-rank run stopped by one rank's request mid-epoch and resumed ends with the same
//!   `last.safetensors` (bitwise), `best.safetensors` and metrics as an uninterrupted 2-rank
//!   run; both ranks stop at the same batch;
//! * every epoch's training images are split between the ranks, each seen once;
//! * the test set split between the ranks gives the figures of a single-process evaluation;
//! * `world_size` is recorded; a single process refuses to resume the run but starts from its
//!   weights;
//! * a rank that dies makes the other fail with a typed error within seconds; ranks started
//!   with different configurations are refused.
//!
//! A plain `main` (harness = false): `cargo test --test distributed_trainer -- NAME` runs the
//! scenarios whose name contains NAME.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resnext::data::{BatchRequest, DataError, DataSplits, Dataset, DeviceDataset};
use resnext::distributed::{DistError, ProcessGroup};
use resnext::inference::InferenceModel;
use resnext::trainer::{
    evaluate, BatchControl, Execution, Outcome, ProgressMode, TrainConfig, TrainError, Trainer,
};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::{nn, Device, Kind, Tensor};

#[path = "common/ranks.rs"]
mod ranks;
use ranks::{child_timeout, spawn_ranks_with, wait_within};

type Res = Result<(), Box<dyn std::error::Error>>;

const TRAIN_IMAGES: i64 = 64;
const TEST_IMAGES: i64 = 23;

fn main() {
    let tests: &[(&str, fn())] = &[
        (
            "two_ranks_stop_and_resume_exactly",
            two_ranks_stop_and_resume_exactly,
        ),
        (
            "a_rank_that_dies_fails_the_other_quickly",
            a_rank_that_dies_fails_the_other_quickly,
        ),
        (
            "ranks_with_different_configurations_are_refused",
            ranks_with_different_configurations_are_refused,
        ),
    ];
    ranks::main("distributed_trainer", tests, child);
}

// ---------------------------------------------------------------------------------------------
// What every rank trains

fn config() -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        epochs: 2,
        batch_size: 8,
        lr: 0.05,
        seed: 3,
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// Seeded random CIFAR-shaped images and labels: the same on every rank.
fn synthetic(n: i64, seed: i64) -> DeviceDataset {
    tch::manual_seed(seed);
    let images = Tensor::randint(256, [n, 3, 32, 32], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
    DeviceDataset::new(&images, &labels, Device::Cpu).unwrap()
}

/// A training set that records the `(epoch, index)` of every training image it is asked for.
struct Recording {
    inner: DeviceDataset,
    seen: Mutex<Vec<(u64, usize)>>,
}

impl Dataset for Recording {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn classes(&self) -> &[String] {
        Dataset::classes(&self.inner)
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError> {
        if request.config.shuffle {
            let mut seen = self.seen.lock().unwrap();
            seen.extend(request.indices.iter().map(|&i| (request.epoch, i)));
        }
        self.inner.make_batch(request)
    }
}

// ---------------------------------------------------------------------------------------------
// Children

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `rank:epoch:batch` of an environment variable, if set.
fn point(name: &str) -> Option<(usize, usize, usize)> {
    let v = env(name)?;
    let p: Vec<usize> = v.split(':').map(|x| x.parse().unwrap()).collect();
    Some((p[0], p[1], p[2]))
}

fn child(role: &str) -> Res {
    match role {
        "train" => child_train(child_timeout()),
        other => Err(format!("unknown role {other}").into()),
    }
}

/// One rank of a run in `RUN_DIR` (resumed when `RESUME` is set), stopping or dying at
/// `STOP_AT` / `DIE_AT`, checking that the outcome is `EXPECT`.
fn child_train(timeout: Duration) -> Res {
    let group = ProcessGroup::from_env(timeout)?;
    let rank = group.rank();
    let dir = PathBuf::from(env("RUN_DIR").ok_or("RUN_DIR")?);
    let expect = env("EXPECT").ok_or("EXPECT")?;
    let mut cfg = config();
    if let (1, Some(lr)) = (rank, env("RANK1_LR")) {
        cfg.lr = lr.parse()?;
    }
    let opened = match env("RESUME") {
        Some(_) => Trainer::resume_data_parallel(&dir, None, group),
        None => Trainer::resnext(cfg).and_then(|t| t.data_parallel(group)?.with_run_dir(&dir)),
    };
    if expect == "disagree" {
        return match opened {
            Err(TrainError::RanksDisagree { world_size: 2, .. }) => Ok(()),
            other => Err(format!("expected RanksDisagree, got {:?}", other.map(|_| ())).into()),
        };
    }
    let mut trainer = opened?;
    trainer.set_progress(ProgressMode::Silent);
    let (stop_at, die_at) = (point("STOP_AT"), point("DIE_AT"));
    trainer.on_batch(move |epoch, batch| {
        if die_at == Some((rank, epoch, batch)) {
            std::process::exit(3);
        }
        match stop_at == Some((rank, epoch, batch)) {
            true => BatchControl::Stop,
            false => BatchControl::Continue,
        }
    });
    let train = Arc::new(Recording {
        inner: synthetic(TRAIN_IMAGES, 11),
        seen: Mutex::new(Vec::new()),
    });
    let data = DataSplits {
        train: Arc::clone(&train) as Arc<dyn Dataset>,
        test: Arc::new(synthetic(TEST_IMAGES, 12)),
    };
    let started = Instant::now();
    let result = trainer.fit(&data);
    if let Some(log) = env("LOG_DIR") {
        let lines: Vec<String> = (train.seen.lock().unwrap().iter())
            .map(|(e, i)| format!("{e} {i}"))
            .collect();
        std::fs::write(
            Path::new(&log).join(format!("rank{rank}.txt")),
            lines.join("\n"),
        )?;
        let params = parameter_sums(trainer.var_store());
        std::fs::write(
            Path::new(&log).join(format!("rank{rank}-params.txt")),
            params,
        )?;
    }
    check_outcome(&expect, result, started.elapsed(), timeout)
}

/// The sum and the sum of squares of every trained parameter, as exact text.
fn parameter_sums(vs: &nn::VarStore) -> String {
    let mut vars: Vec<_> = vs.trainable_variables();
    vars.sort_by_key(|t| t.numel());
    let flat: Vec<Tensor> = vars.iter().map(|t| t.flatten(0, -1)).collect();
    let all = Tensor::cat(&flat, 0).to_kind(Kind::Double);
    let (sum, squares) = (all.sum(Kind::Double), (&all * &all).sum(Kind::Double));
    format!(
        "{:?} {:?}",
        sum.double_value(&[]),
        squares.double_value(&[])
    )
}

fn check_outcome(
    expect: &str,
    result: Result<Outcome, TrainError>,
    took: Duration,
    timeout: Duration,
) -> Res {
    let parts: Vec<&str> = expect.split(':').collect();
    match (&parts[..], result) {
        (["completed"], Ok(Outcome::Completed(summary))) if summary.world_size == 2 => Ok(()),
        (["stopped", e, b], Ok(Outcome::Stopped { epoch, batch, .. }))
            if (epoch.to_string(), batch.to_string()) == (e.to_string(), b.to_string()) =>
        {
            Ok(())
        }
        (["peer_gone"], Err(TrainError::Distributed(e)))
            if matches!(e, DistError::PeerGone { .. } | DistError::Timeout { .. }) =>
        {
            match took < timeout {
                true => Ok(()),
                false => Err(format!("the error came after {took:?}: {e}").into()),
            }
        }
        (_, result) => Err(format!("expected {expect}, got {result:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Runs one 2-rank launch with `env`; both ranks must exit with `codes` within two minutes.
fn launch(env: &[(&str, String)], codes: [i32; 2]) -> Duration {
    let start = Instant::now();
    let mut ranks = spawn_ranks_with("train", 2, Duration::from_secs(60), env);
    for (r, c) in ranks.iter_mut().enumerate() {
        let status = wait_within(c, Duration::from_secs(180), &format!("rank {r}"));
        assert_eq!(
            status.code(),
            Some(codes[r]),
            "rank {r} ({env:?}): {status}"
        );
    }
    start.elapsed()
}

fn var(k: &'static str, v: impl ToString) -> (&'static str, String) {
    (k, v.to_string())
}

fn two_ranks_stop_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, logs) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path());
    let took = launch(
        &[
            var("RUN_DIR", a.display()),
            var("EXPECT", "completed"),
            var("LOG_DIR", logs.display()),
        ],
        [0, 0],
    );
    eprintln!("  uninterrupted 2-rank run: {:.1} s", took.as_secs_f64());
    // Rank 1 alone asks to stop after batch 1 of epoch 1: both ranks stop there.
    let stop = [var("RUN_DIR", b.display()), var("STOP_AT", "1:1:1")];
    launch(
        &[
            stop[0].clone(),
            stop[1].clone(),
            var("EXPECT", "stopped:1:2"),
        ],
        [0, 0],
    );
    launch(
        &[
            var("RUN_DIR", b.display()),
            var("RESUME", 1),
            var("EXPECT", "completed"),
        ],
        [0, 0],
    );
    for file in ["last.safetensors", "best.safetensors"] {
        let (x, y) = (read(&a.join(file)), read(&b.join(file)));
        assert!(
            x == y,
            "{file}: the resumed 2-rank run differs from the uninterrupted one"
        );
    }
    assert_eq!(metrics_without_timing(&a), metrics_without_timing(&b));
    for file in ["config.json", "summary.json"] {
        let json: serde_json::Value = serde_json::from_slice(&read(&a.join(file))).unwrap();
        assert_eq!(json["world_size"], 2, "{file}");
    }
    each_image_once_per_epoch(logs);
    // Averaged gradients keep the ranks' parameters equal (only buffers are broadcast).
    let params = |r: usize| read(&logs.join(format!("rank{r}-params.txt")));
    assert_eq!(
        params(0),
        params(1),
        "rank 1's trained parameters differ from rank 0's"
    );
    evaluation_matches_one_process(&a);
    one_process_and_a_two_rank_run(&a);
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `metrics.jsonl` without the fields that measure time.
fn metrics_without_timing(dir: &Path) -> Vec<serde_json::Value> {
    let text = String::from_utf8(read(&dir.join("metrics.jsonl"))).unwrap();
    text.lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields = v.as_object_mut().unwrap();
            fields.retain(|k, _| !k.contains("seconds") && !k.contains("per_sec"));
            v
        })
        .collect()
}

/// The ranks' logs: in every epoch, each training image went to exactly one rank, once.
fn each_image_once_per_epoch(logs: &Path) {
    let mut count: BTreeMap<(u64, usize), Vec<usize>> = BTreeMap::new();
    for rank in 0..2 {
        let text = String::from_utf8(read(&logs.join(format!("rank{rank}.txt")))).unwrap();
        for line in text.lines() {
            let (e, i) = line.split_once(' ').unwrap();
            let key = (e.parse().unwrap(), i.parse().unwrap());
            count.entry(key).or_default().push(rank);
        }
    }
    let epochs = config().epochs as u64;
    assert_eq!(
        count.len() as u64,
        epochs * TRAIN_IMAGES as u64,
        "images per epoch"
    );
    for ((epoch, image), ranks) in &count {
        assert_eq!(
            ranks.len(),
            1,
            "epoch {epoch}, image {image} went to ranks {ranks:?}"
        );
    }
    for rank in 0..2 {
        let mine = count.values().filter(|r| r[0] == rank).count() as i64;
        assert_eq!(mine, TRAIN_IMAGES, "rank {rank}: half of every epoch");
    }
}

/// The test figures the two ranks computed together are those of one process evaluating the
/// final weights on the whole test set.
fn evaluation_matches_one_process(run: &Path) {
    let summary: serde_json::Value =
        serde_json::from_slice(&read(&run.join("summary.json"))).unwrap();
    let vs_net = tiny_from(&run.join("last.safetensors"));
    let (_vs, net) = &vs_net;
    let fast = InferenceModel::new(net).unwrap();
    let test: Arc<dyn Dataset> = Arc::new(synthetic(TEST_IMAGES, 12));
    let batches = resnext::data::BatchConfig::eval(256);
    let eval = evaluate(&fast, &test, &batches, 10, &Execution::plain(Device::Cpu)).unwrap();
    assert_eq!(eval.images, TEST_IMAGES as usize);
    let acc = summary["final_test_acc"].as_f64().unwrap();
    assert!(
        (acc - eval.acc).abs() < 1e-9,
        "2 ranks: {acc}%, one process: {}%",
        eval.acc
    );
    let loss = summary["final_test_loss"].as_f64().unwrap();
    assert!(
        (loss - eval.loss).abs() < 1e-4,
        "2 ranks: {loss}, one process: {}",
        eval.loss
    );
}

fn tiny_from(weights: &Path) -> (nn::VarStore, ResNeXt) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    tch::no_grad(|| vs.read_safetensors(weights)).unwrap();
    (vs, net)
}

/// A single process refuses to resume a 2-rank run, and starts from its weights.
fn one_process_and_a_two_rank_run(run: &Path) {
    match Trainer::resume(run, None) {
        Err(TrainError::WorldSizeChanged {
            saved: 2, now: 1, ..
        }) => {}
        other => panic!("expected WorldSizeChanged, got {:?}", other.map(|_| ())),
    }
    let weights = run.join("last.safetensors");
    let cfg = TrainConfig {
        pretrained: Some(weights.clone()),
        ..config()
    };
    let trainer = Trainer::resnext(cfg).unwrap();
    let (saved, _) = tiny_from(&weights);
    let saved = saved.variables();
    for (name, t) in trainer.var_store().variables() {
        let diff = (&t - &saved[&name]).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0, "{name}");
    }
}

fn a_rank_that_dies_fails_the_other_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let took = launch(
        &[
            var("RUN_DIR", tmp.path().display()),
            var("DIE_AT", "1:1:2"),
            var("EXPECT", "peer_gone"),
        ],
        [0, 3],
    );
    eprintln!(
        "  both ranks gone {:.1} s after the start",
        took.as_secs_f64()
    );
}

fn ranks_with_different_configurations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    launch(
        &[
            var("RUN_DIR", tmp.path().display()),
            var("RANK1_LR", 0.2),
            var("EXPECT", "disagree"),
        ],
        [0, 0],
    );
}
