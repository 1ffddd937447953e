//! The trainer on a dataset implemented here, outside the crate, as a user with their own data
//! would: it learns, it resumes bit for bit, and the gradient hook sits between backward and
//! the update. Also: shards of an epoch cover it in equal parts.
mod common;
use common::variables;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use resnext::data::{
    augmentation_rng, epoch_batches, epoch_order, BatchConfig, BatchRequest, DataError, DataSplits,
    Dataset, Shard,
};
use resnext::trainer::{BatchControl, Outcome, ProgressMode, TrainConfig, TrainError, Trainer};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::{nn, Device, Kind, Tensor};

/// 16x16 images of four classes kept as host bytes: a bright bar, horizontal or vertical, in
/// the red or the green channel, on noise made from the index. Augmentation shifts the bar by
/// one pixel, drawn from `(seed, epoch, batch)` as the `Dataset` contract asks.
struct Bars {
    images: Vec<[u8; 3 * 16 * 16]>,
    labels: Vec<i64>,
    classes: Vec<String>,
}

impl Bars {
    fn new(n: usize, salt: u64) -> Self {
        let mut images = Vec::with_capacity(n);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = (i * 7 + salt as usize) % 4;
            let mut img = [0u8; 3 * 16 * 16];
            for (k, px) in img.iter_mut().enumerate() {
                *px = ((k * 31 + i * 17 + salt as usize * 5) % 64) as u8;
            }
            let channel = class / 2;
            for a in 0..16 {
                for b in 6..10 {
                    let (y, x) = if class.is_multiple_of(2) {
                        (b, a)
                    } else {
                        (a, b)
                    };
                    img[channel * 256 + y * 16 + x] = 255;
                }
            }
            images.push(img);
            labels.push(class as i64);
        }
        let classes = ["red-", "red|", "green-", "green|"]
            .map(String::from)
            .to_vec();
        Bars {
            images,
            labels,
            classes,
        }
    }
}

impl Dataset for Bars {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn make_batch(&self, request: &BatchRequest<'_>) -> Result<(Tensor, Tensor), DataError> {
        let cfg = request.config;
        let mut rng = augmentation_rng(cfg.seed, request.epoch, request.augmentation_stream());
        let mut pixels = Vec::with_capacity(request.indices.len() * 768);
        let mut labels = Vec::with_capacity(request.indices.len());
        for &i in request.indices {
            let shift: usize = if cfg.augment { rng.gen_range(0..2) } else { 0 };
            let img = &self.images[i];
            pixels.extend((0..768).map(|k| f32::from(img[(k + shift) % 768]) / 255.0 - 0.5));
            labels.push(self.labels[i]);
        }
        let n = request.indices.len() as i64;
        let images = Tensor::f_from_slice(&pixels)?.f_view([n, 3, 16, 16])?;
        Ok((images, Tensor::f_from_slice(&labels)?))
    }
}

fn splits() -> DataSplits {
    DataSplits::new(Bars::new(384, 0), Bars::new(64, 1))
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

/// Held while a test seeds libtorch's global generator and draws initial weights from it, so
/// that tests running in parallel do not interleave their draws.
static SEEDED_INIT: Mutex<()> = Mutex::new(());

/// A tiny ResNeXt with a 4-way head, seeded, on the CPU.
fn trainer(cfg: TrainConfig) -> Trainer<ResNeXt> {
    let _init = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::try_new(&vs.root(), &ResNeXtConfig::tiny(4)).unwrap();
    let mut t = Trainer::new(cfg, vs, net).unwrap();
    t.set_progress(ProgressMode::Silent);
    t
}

#[test]
fn a_dataset_implemented_outside_the_crate_trains_and_is_evaluated() {
    let data = splits();
    let mut t = trainer(config(4));
    let Outcome::Completed(summary) = t.fit(&data).unwrap() else {
        panic!("the run did not complete");
    };
    let m = &t.state().metrics;
    assert!(m[3].train_loss < 0.7 * m[0].train_loss, "{m:?}");
    assert!(summary.final_test_acc > 60.0, "{summary:?}"); // chance: 25%
    assert_eq!(summary.classes, data.train.classes());
    assert_eq!(summary.confusion_matrix.len(), 4);
    assert_eq!(summary.per_class_acc.len(), 4);
}

#[test]
fn a_user_dataset_resumes_bit_for_bit() {
    let data = splits();
    let dir_a = tempfile::tempdir().unwrap();
    let mut a = trainer(config(2)).with_run_dir(dir_a.path()).unwrap();
    assert!(matches!(a.fit(&data).unwrap(), Outcome::Completed(_)));

    let dir_b = tempfile::tempdir().unwrap();
    let mut b = trainer(config(2)).with_run_dir(dir_b.path()).unwrap();
    b.on_batch(|epoch, batch| {
        if epoch == 2 && batch == 1 {
            BatchControl::Stop
        } else {
            BatchControl::Continue
        }
    });
    assert!(matches!(
        b.fit(&data).unwrap(),
        Outcome::Stopped { saved: true, .. }
    ));
    drop(b);
    let mut b = trainer(config(2)).resume_from(dir_b.path()).unwrap();
    assert!(matches!(b.fit(&data).unwrap(), Outcome::Completed(_)));
    let (va, vb) = (variables(&a), variables(&b));
    for (name, x) in &va {
        assert!(x.equal(&vb[name]), "{name} differs after resume");
    }
}

#[test]
fn the_gradient_hook_runs_between_backward_and_the_update() {
    let data = splits();
    let mut cfg = config(1);
    cfg.weight_decay = 0.0;
    let mut t = trainer(cfg);
    let before = variables(&t);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let saw_gradients = Arc::new(AtomicBool::new(true));
    let saw = Arc::clone(&saw_gradients);
    // Zero every gradient: the update then leaves the parameters where they were.
    t.on_gradients(move |params| {
        counter.fetch_add(1, Ordering::SeqCst);
        tch::no_grad(|| {
            for (_, p) in params {
                let mut g = p.grad();
                if !g.defined() || g.abs().sum(Kind::Float).double_value(&[]) == 0.0 {
                    saw.store(false, Ordering::SeqCst);
                }
                let _ = g.zero_();
            }
        });
        Ok(())
    });
    assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        12,
        "one call per step (384 / 32)"
    );
    assert!(
        saw_gradients.load(Ordering::SeqCst),
        "the hook saw no gradient"
    );
    assert_parameters_unchanged(&before, &variables(&t));
}

/// Every trainable variable of `after` equals its value in `before` (BN statistics may move).
fn assert_parameters_unchanged(
    before: &BTreeMap<String, Tensor>,
    after: &BTreeMap<String, Tensor>,
) {
    let trainable: Vec<&String> = after
        .iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(n, _)| n)
        .collect();
    assert!(trainable.len() > 10, "{trainable:?}");
    for name in trainable {
        assert!(before[name].equal(&after[name]), "{name} moved");
    }
}

#[test]
fn an_error_from_the_gradient_hook_stops_training_before_the_update() {
    let data = splits();
    let mut t = trainer(config(1));
    let before = variables(&t);
    t.on_gradients(|_| {
        Err(TrainError::InvalidConfig {
            field: "hook",
            value: "refused".into(),
            expected: "nothing".into(),
        })
    });
    let err = t.fit(&data).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_parameters_unchanged(&before, &variables(&t));
}

#[test]
fn shards_cover_the_epoch_in_equal_parts() {
    let whole = BatchConfig {
        batch_size: 8,
        seed: 4,
        ..BatchConfig::default()
    };
    for (len, count) in [(100usize, 3usize), (96, 4), (5, 2), (7, 7)] {
        let order = epoch_order(len, &whole, 2);
        let parts: Vec<Vec<usize>> = (0..count)
            .map(|index| {
                let cfg = BatchConfig {
                    shard: Shard { index, count },
                    ..whole.clone()
                };
                epoch_order(len, &cfg, 2)
            })
            .collect();
        let per = len.div_ceil(count);
        assert!(parts.iter().all(|p| p.len() == per), "{len}/{count}");
        // Interleaved back, the parts are the epoch's order padded with its first indices.
        let interleaved: Vec<usize> = (0..per)
            .flat_map(|k| parts.iter().map(move |p| p[k]))
            .collect();
        assert_eq!(interleaved[..len], order[..], "{len}/{count}");
        assert_eq!(
            interleaved[len..],
            order[..per * count - len],
            "{len}/{count}"
        );
        let cfg = BatchConfig {
            shard: Shard {
                index: count - 1,
                count,
            },
            ..whole.clone()
        };
        assert_eq!(cfg.num_batches(len), per.div_ceil(8));
    }
}

#[test]
fn a_shard_is_batched_and_a_bad_shard_is_refused() {
    let data: Arc<dyn Dataset> = Arc::new(Bars::new(50, 0));
    let cfg = BatchConfig {
        batch_size: 10,
        shard: Shard { index: 1, count: 2 },
        ..BatchConfig::default()
    };
    let indices: Vec<usize> = epoch_batches(Arc::clone(&data), &cfg, 0, 0)
        .unwrap()
        .flat_map(|b| b.indices)
        .collect();
    assert_eq!(indices, epoch_order(50, &cfg, 0));
    assert_eq!(indices.len(), 25);
    for shard in [Shard { index: 2, count: 2 }, Shard { index: 0, count: 0 }] {
        let bad = BatchConfig {
            shard,
            ..cfg.clone()
        };
        let err = epoch_batches(Arc::clone(&data), &bad, 0, 0).unwrap_err();
        assert!(err.to_string().contains("shard"), "{err}");
    }
}

#[test]
fn a_dataset_whose_classes_the_model_does_not_fit_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = {
        let _init = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        ResNeXt::try_new(&vs.root(), &ResNeXtConfig::tiny(10)).unwrap()
    };
    let mut t = Trainer::new(config(1), vs, net)
        .unwrap()
        .with_run_dir(dir.path())
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    match t.fit(&splits()) {
        Err(TrainError::ClassCount {
            outputs, classes, ..
        }) => assert_eq!((outputs, classes), (10, 4)),
        other => panic!("expected a class-count error, got {other:?}"),
    }
    assert_eq!(t.state().steps, 0);
    assert!(!dir
        .path()
        .join(resnext::trainer::files::CHECKPOINT)
        .exists());
}

/// A model whose training forward pass asks for more memory than any machine has.
#[derive(Debug)]
struct Greedy(ResNeXt);

impl nn::ModuleT for Greedy {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            let _huge = Tensor::empty([1i64 << 46], (Kind::Float, Device::Cpu));
        }
        self.0.forward_t(xs, train)
    }
}

#[test]
fn running_out_of_memory_is_an_error_naming_the_batch_size() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = {
        let _init = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        ResNeXt::try_new(&vs.root(), &ResNeXtConfig::tiny(4)).unwrap()
    };
    let mut t = Trainer::new(config(1), vs, Greedy(net)).unwrap();
    t.set_progress(ProgressMode::Silent);
    match t.fit(&splits()) {
        Err(e @ TrainError::OutOfMemory { batch: 32, .. }) => {
            assert!(e.to_string().contains("smaller batch size"), "{e}");
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
}
