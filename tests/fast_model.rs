//! The time-to-accuracy network (`resnext_fast`: the whitening stem, max-pool downsampling,
//! GELU, BN momentum 0.4) against references: the same network written in PyTorch from its
//! description (parameters, FLOPs by `torch.utils.flop_counter`, logits and BN statistics in
//! both modes), the stem's whitening against airbench's own `init_whitening_conv`, and in a
//! training run (whitened from the first training images, its weight never trained, what the
//! inference form and the exporters do not cover refused by name).
use std::collections::BTreeMap;
use std::path::Path;

use resnext::data::DataSplits;
use resnext::export::onnx::{onnx_bytes, OnnxOptions};
use resnext::inference::InferenceModel;
use resnext::resnext::{whiten_stem, Activation, Downsample, WHITENING_IMAGES};
use resnext::trainer::{Outcome, ProgressMode, TrainConfig, Trainer};
use resnext::{ModelError, ResNeXt, ResNeXtConfig, Stem};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

mod common;
use common::variables;
#[path = "common/python.rs"]
mod python;
use common::seeded;
use common::tensors::{max_rel_diff, randomize_batch_norms, read_f32, write_f32};
use python::run_python;

const FAST: &str = "resnext_fast";
/// fp32 on both sides with the same libtorch; the orders of a few sums differ (BN folding is
/// not involved: both run the plain layers), so a few ulps of the logits.
const LOGIT_TOL: f64 = 1e-4;

/// The network of the configuration JSON `argv[4]` in PyTorch (scripts/pytorch/fast_net.py,
/// written from the descriptions of the stem, downsampling and activation), loaded with
/// `strict=True` from our safetensors; prints its parameter counts and FLOPs
/// (`torch.utils.flop_counter`) and writes its logits (eval, then train mode) and one BN's
/// running mean after the train-mode pass.
const PYTORCH_FAST: &str = r#"
import sys, json, numpy, torch
sys.path.insert(0, sys.argv[5])
from fast_net import Net
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode
weights, x_path, out_dir, cfg = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
net = Net(cfg)
net.load_state_dict(load_file(weights), strict=True)
x = torch.from_numpy(numpy.fromfile(x_path, dtype="<f4")).view(2, 3, 32, 32)
net.eval()
with FlopCounterMode(display=False) as counter, torch.no_grad():
    net(x[:1])
with torch.no_grad():
    net(x).numpy().astype("<f4").tofile(out_dir + "/eval.bin")
    net.train()
    net(x).numpy().astype("<f4").tofile(out_dir + "/train.bin")
net.layer2[0].bn2.running_mean.numpy().astype("<f4").tofile(out_dir + "/running_mean.bin")
print(json.dumps({
    "params": sum(p.numel() for p in net.parameters()),
    "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
    "flops": counter.get_total_flops(),
}))
"#;

fn fast(classes: i64) -> ResNeXtConfig {
    ResNeXtConfig::from_name(FAST, classes).unwrap()
}

fn count(vs: &nn::VarStore, trainable_only: bool) -> i64 {
    vs.variables()
        .into_iter()
        .filter(|(name, _)| !name.contains("running_") && !name.contains("num_batches"))
        .filter(|(_, t)| !trainable_only || t.requires_grad())
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

/// Parameters, FLOPs, shapes, eval and train-mode logits and the BN momentum of
/// `resnext_fast` equal those of the PyTorch network written from its description.
#[test]
fn the_fast_preset_is_the_network_its_description_gives_in_pytorch() {
    let cfg = fast(10);
    assert_eq!(
        (
            cfg.stem,
            cfg.downsample,
            cfg.activation,
            cfg.bn_momentum,
            cfg.logit_scale
        ),
        (
            Stem::Whitening,
            Downsample::MaxPool,
            Activation::Gelu,
            0.4,
            1.0 / 9.0
        )
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, x) = seeded(|| {
        tch::manual_seed(5);
        let net = ResNeXt::new(&vs.root(), &cfg);
        randomize_batch_norms(&vs);
        (
            net,
            Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("fast.safetensors");
    vs.save(&weights).unwrap();
    let x_path = dir.path().join("x.bin");
    write_f32(&x_path, &x);
    let before = tch::no_grad(|| net.forward_t(&x, false));
    let out = run_python(
        PYTORCH_FAST,
        &[
            weights.to_str().unwrap(),
            x_path.to_str().unwrap(),
            dir.path().to_str().unwrap(),
            &serde_json::to_string(&cfg).unwrap(),
            &format!("{}/scripts/pytorch", env!("CARGO_MANIFEST_DIR")),
        ],
    );
    let theirs: serde_json::Value =
        serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(
        theirs["params"].as_i64(),
        Some(count(&vs, false)),
        "parameters"
    );
    assert_eq!(
        theirs["trainable"].as_i64(),
        Some(count(&vs, true)),
        "trained parameters (the stem's weight is not)"
    );
    assert_eq!(
        theirs["flops"].as_u64(),
        Some(cfg.forward_flops(32, 32)),
        "FLOPs of one 32x32 image"
    );
    let eval = read_f32(&dir.path().join("eval.bin"), &[2, 10]);
    assert!(
        max_rel_diff(&before, &eval) < LOGIT_TOL,
        "eval logits: {}",
        max_rel_diff(&before, &eval)
    );
    let train = tch::no_grad(|| net.forward_t(&x, true));
    let theirs_train = read_f32(&dir.path().join("train.bin"), &[2, 10]);
    assert!(
        max_rel_diff(&train, &theirs_train) < LOGIT_TOL,
        "train-mode logits"
    );
    let ours_mean = variable(&vs, "layer2.0.bn2.running_mean");
    let theirs_mean = read_f32(&dir.path().join("running_mean.bin"), &[ours_mean.size()[0]]);
    assert!(
        max_rel_diff(&ours_mean, &theirs_mean) < 1e-5,
        "BN momentum 0.4: running mean after one step"
    );
    let shapes: Vec<[i64; 3]> = cfg.stage_shapes(32, 32).iter().map(|s| s.shape).collect();
    assert_eq!(
        shapes,
        [
            [24, 31, 31],
            [64, 15, 15],
            [256, 7, 7],
            [256, 3, 3],
            [10, 1, 1]
        ]
    );
}

fn variable(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()
        .remove(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

/// Images with correlated pixels and channels (a smoothed, mixed random field), so that the
/// patch covariance has distinct eigenvalues and the eigenvectors are well defined.
fn correlated_images(n: i64) -> Tensor {
    let noise = Tensor::randn([n, 3, 34, 34], (Kind::Float, Device::Cpu));
    let smooth = noise.avg_pool2d([3, 3], [1, 1], [0, 0], false, true, None::<i64>);
    let mix = Tensor::from_slice(&[1.0f32, 0.6, 0.2, 0.3, 1.0, 0.5, 0.1, 0.4, 1.0]).view([3, 3]);
    let mixed = mix.matmul(&smooth.permute([1, 0, 2, 3]).reshape([3, -1]));
    let images = mixed
        .view([3, n, 32, 32])
        .permute([1, 0, 2, 3])
        .contiguous();
    images + Tensor::from_slice(&[0.1f32, -0.2, 0.3]).view([1, 3, 1, 1])
}

/// Our whitening of the stem equals airbench's `init_whitening_conv` (imported from the
/// airbench 0.1.8 package) on the same images, filter for filter up to the sign of each
/// eigenvector (eigh may return `-v`; the filters are `v` and `-v`, so a flip swaps filter `i`
/// with `i + 12`). Tolerance 1e-4 relative: the same float32 operations on both sides, only
/// the covariance's sums may be ordered differently.
#[test]
fn whitening_matches_airbench_init_whitening_conv() {
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, images) = seeded(|| {
        tch::manual_seed(9);
        (ResNeXt::new(&vs.root(), &fast(10)), correlated_images(64))
    });
    whiten_stem(&net, &images).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let x_path = dir.path().join("images.bin");
    write_f32(&x_path, &images);
    let out_path = dir.path().join("weight.bin");
    run_python(
        r#"
import sys, numpy, torch
from airbench.utils import init_whitening_conv
x = torch.from_numpy(numpy.fromfile(sys.argv[1], dtype="<f4")).view(64, 3, 32, 32)
layer = torch.nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
init_whitening_conv(layer, x)
layer.weight.detach().numpy().astype("<f4").tofile(sys.argv[2])
"#,
        &[x_path.to_str().unwrap(), out_path.to_str().unwrap()],
    );
    let theirs = read_f32(&out_path, &[24, 3, 2, 2]);
    let ours = variable(&vs, "conv1.weight");
    for i in 0..12 {
        let (o, t) = (ours.get(i), theirs.get(i));
        let same = max_rel_diff(&o, &t).min(max_rel_diff(&o, &(-&t)));
        assert!(same < 1e-4, "filter {i}: relative difference {same}");
        assert!(
            max_rel_diff(&ours.get(i + 12), &(-&o)) == 0.0,
            "filter {} is -filter {i}",
            i + 12
        );
    }
}

/// Whitening refuses a network without the whitening stem and images it cannot read.
#[test]
fn whitening_refuses_other_stems_and_bad_images() {
    let vs = nn::VarStore::new(Device::Cpu);
    let tiny = seeded(|| ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10)));
    let images = Tensor::zeros([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert!(matches!(
        whiten_stem(&tiny, &images),
        Err(ModelError::Unsupported { .. })
    ));
    let vs = nn::VarStore::new(Device::Cpu);
    let net = seeded(|| ResNeXt::new(&vs.root(), &fast(10)));
    for bad in [
        Tensor::zeros([4, 1, 32, 32], (Kind::Float, Device::Cpu)),
        Tensor::zeros([4, 3, 1, 32], (Kind::Float, Device::Cpu)),
        Tensor::zeros([4, 3, 32, 32], (Kind::Int64, Device::Cpu)),
    ] {
        assert!(
            matches!(whiten_stem(&net, &bad), Err(ModelError::InputShape { .. })),
            "{bad:?}"
        );
    }
    // Images the pools shrink to nothing are an error, not a panic.
    let tiny_image = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
    let err = net.try_forward_t(&tiny_image, false).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputTooSmall {
                height: 4,
                width: 4
            }
        ),
        "{err}"
    );
    assert!(net
        .try_forward_t(
            &Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu)),
            false
        )
        .is_ok());
    let mut wrong = fast(10);
    wrong.stem_channels = 32;
    let err = ResNeXt::try_new(&nn::VarStore::new(Device::Cpu).root(), &wrong).unwrap_err();
    assert!(
        err.to_string().contains("stem_channels") && err.to_string().contains("24"),
        "{err}"
    );
}

/// The inference form and the exporters cover torchvision's layout and say what they do not
/// cover, instead of producing something else.
#[test]
fn the_inference_form_and_the_exporters_name_what_they_do_not_cover() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = seeded(|| ResNeXt::new(&vs.root(), &fast(10)));
    let err = InferenceModel::new(&net).unwrap_err().to_string();
    assert!(
        err.contains("whitening stem") && err.contains("GELU") || err.contains("Gelu"),
        "{err}"
    );
    let err = onnx_bytes(&net, None, OnnxOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("whitening stem"), "{err}");
}

fn data(train: i64) -> DataSplits {
    common::random_cifar(23, train, 32)
}

fn fast_config() -> TrainConfig {
    TrainConfig {
        model: FAST.into(),
        epochs: 2,
        batch_size: 16,
        lr: 0.05,
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// A fresh run whitens its stem from the first training images, unaugmented and normalised,
/// before its first step (the weight then equals `whiten_stem` on those images), never trains
/// that weight, trains the stem's bias, and evaluates without the inference form.
#[test]
fn a_fresh_run_whitens_its_stem_and_never_trains_its_weight() {
    let data = data(80);
    let dir = tempfile::tempdir().unwrap();
    let mut t = seeded(|| Trainer::resnext(fast_config()).unwrap())
        .with_run_dir(dir.path())
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    let initial: BTreeMap<String, Tensor> = variables(&t)
        .into_iter()
        .map(|(n, v)| (n, v.copy()))
        .collect();
    assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
    let trained = variables(&t);
    // The reference: whiten_stem on the same images, as the run's pipeline gives them.
    let vs = nn::VarStore::new(Device::Cpu);
    let net = seeded(|| ResNeXt::new(&vs.root(), &fast(10)));
    let images = first_images(&data, 80.min(WHITENING_IMAGES as i64));
    whiten_stem(&net, &images).unwrap();
    let want = variable(&vs, "conv1.weight");
    assert!(
        !trained["conv1.weight"].equal(&initial["conv1.weight"]),
        "the stem was whitened"
    );
    assert!(
        trained["conv1.weight"].equal(&want),
        "whitened from the first training images, then never trained"
    );
    assert!(
        !trained["conv1.bias"].equal(&initial["conv1.bias"]),
        "the stem's bias is trained"
    );
}

/// The first `n` training images of `data`, normalised as training normalises them, without
/// augmentation.
fn first_images(data: &DataSplits, n: i64) -> Tensor {
    use resnext::data::{epoch_batches, BatchConfig};
    let config = BatchConfig {
        augment: false,
        shuffle: false,
        batch_size: n as usize,
        ..BatchConfig::default()
    };
    let mut batches = epoch_batches(std::sync::Arc::clone(&data.train), &config, 0, 0).unwrap();
    batches.next().unwrap().images
}

/// A fast run stopped in its first epoch (before any checkpoint of a finished epoch: the
/// resumed run must not whiten again over the trained weights) and resumed ends with the
/// weights of an uninterrupted run, bit for bit.
#[test]
fn a_resumed_fast_run_equals_an_uninterrupted_one() {
    let data = data(48);
    let whole = tempfile::tempdir().unwrap();
    let end = run_in(whole.path(), &data);
    let dir = tempfile::tempdir().unwrap();
    let resumed = common::stopped_and_resumed(fast_config(), dir.path(), &data, (1, 1));
    let again = variables(&resumed);
    for (name, t) in &end {
        assert!(t.equal(&again[name]), "{name} differs after resume");
    }
}

/// Trains `fast_config` in `dir` to its end.
fn run_in(dir: &Path, data: &DataSplits) -> BTreeMap<String, Tensor> {
    let mut t = seeded(|| Trainer::resnext(fast_config()).unwrap())
        .with_run_dir(dir)
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    assert!(matches!(t.fit(data).unwrap(), Outcome::Completed(_)));
    variables(&t)
}

/// The `fast` recipe is the preset's: it validates, picks `resnext_fast`, and a run of it with
/// another model or image size gets one warning naming what differs (and runs).
#[test]
fn the_fast_recipe_warns_outside_its_preset_and_image_size() {
    use resnext::trainer::{recipe_config, recipe_warning};
    let fast = recipe_config("fast").unwrap();
    fast.validate().unwrap();
    assert_eq!(fast.model, FAST);
    assert_eq!(recipe_warning(&fast), None);
    let other = TrainConfig {
        model: "tiny".into(),
        ..fast.clone()
    };
    let w = recipe_warning(&other).expect("a warning for another model");
    assert!(w.contains("model tiny") && w.contains(FAST), "{w}");
    let bigger = TrainConfig {
        image_size: 64,
        ..fast.clone()
    };
    let w = recipe_warning(&bigger).expect("a warning for another image size");
    assert!(w.contains("64x64") && !w.contains("model"), "{w}");
    assert_eq!(
        recipe_warning(&TrainConfig {
            model: "tiny".into(),
            ..TrainConfig::default()
        }),
        None
    );
}

/// Records `conv1.bias` after every update.
struct BiasLog(std::rc::Rc<std::cell::RefCell<Vec<Tensor>>>);

impl resnext::trainer::TrainCallback for BiasLog {
    fn section(&self) -> &str {
        "bias_log"
    }
    fn after_step(
        &mut self,
        ctx: &resnext::trainer::StepContext<'_>,
    ) -> Result<(), resnext::trainer::TrainError> {
        self.0
            .borrow_mut()
            .push(variable(ctx.vars, "conv1.bias").copy());
        Ok(())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn load_state(&mut self, _: Vec<(String, Tensor)>) -> Result<(), resnext::trainer::TrainError> {
        Ok(())
    }
}

/// Three epochs of 3 updates with momentum and weight decay, the stem's bias trained in the
/// first only.
fn frozen_bias_config() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        stem_bias_epochs: Some(1),
        weight_decay: 5e-2,
        ..fast_config()
    }
}

/// airbench's `whiten_bias_epochs`: the stem's bias moves with every update of the first epoch
/// and not once after it (momentum and weight decay would move it if the optimiser still took
/// it, as PyTorch's SGD skips a parameter whose gradient is `None`); a run stopped after the
/// freeze and resumed keeps it frozen and ends bit for bit as the uninterrupted one; a model
/// without a stem bias trains as without the setting.
#[test]
fn the_stem_bias_trains_for_its_epochs_only_and_stays_frozen_on_resume() {
    let data = data(48);
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let whole = tempfile::tempdir().unwrap();
    let mut t = seeded(|| Trainer::resnext(frozen_bias_config()).unwrap())
        .with_run_dir(whole.path())
        .unwrap()
        .with_callback(BiasLog(std::rc::Rc::clone(&log)))
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
    let end = variables(&t);
    let biases = log.borrow();
    assert_eq!(biases.len(), 9, "3 epochs of 3 updates");
    for s in 1..3 {
        assert!(
            !biases[s].equal(&biases[s - 1]),
            "epoch 1, update {s}: it trains"
        );
    }
    for (s, b) in biases.iter().enumerate().skip(3) {
        assert!(b.equal(&biases[2]), "update {s}: frozen after epoch 1");
    }
    // Stopped in epoch 3, resumed: the checkpoint says frozen.
    let dir = tempfile::tempdir().unwrap();
    let resumed = common::stopped_and_resumed(frozen_bias_config(), dir.path(), &data, (2, 1));
    assert!(!variable(resumed.var_store(), "conv1.bias").requires_grad());
    let again = variables(&resumed);
    for (name, t) in &end {
        assert!(t.equal(&again[name]), "{name} differs after resume");
    }
    // A stem without a bias has nothing to freeze: the run is the run without the setting.
    let tiny = |stem_bias_epochs| TrainConfig {
        model: "tiny".into(),
        stem_bias_epochs,
        ..frozen_bias_config()
    };
    let [with, without] = [Some(1), None].map(|s| {
        let dir = tempfile::tempdir().unwrap();
        let mut t = seeded(|| Trainer::resnext(tiny(s)).unwrap())
            .with_run_dir(dir.path())
            .unwrap();
        t.set_progress(ProgressMode::Silent);
        assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
        variables(&t)
    });
    for (name, x) in &with {
        assert!(x.equal(&without[name]), "{name}");
    }
}
