//! bf16 autocast on the CPU (`precision: "bf16"` on a CPU device): the forward pass, loss and
//! gradients of a training step against PyTorch's `torch.autocast("cpu", torch.bfloat16)` on the
//! same network, weights and batch (the same libtorch); the autocast state restored after a
//! region, also one that panics; a bf16 run that learns and resumes bit for bit.

use resnext::trainer::{
    cpu_autocast_enabled, Execution, Outcome, Precision, ProgressMode, TrainConfig, Trainer,
};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Reduction, Tensor};

mod common;
use common::variables;
#[path = "common/python.rs"]
mod python;
use common::seeded;
use common::tensors::{max_rel_diff, randomize_batch_norms, read_f32, write_f32};
use python::run_python;

/// Both sides run the same oneDNN bf16 kernels of one libtorch on the same inputs, so they
/// agree far more closely than bf16's own rounding (2^-8 = 3.9e-3 relative); the tolerance
/// leaves room for a different order of a few fp32 sums (BN statistics, the loss).
const TOL: f64 = 1e-3;

/// `argv`: weights, input, labels, output folder, the configuration JSON, fast_net's folder.
/// One train-mode forward and loss (label smoothing 0.1) under CPU bf16 autocast, backward
/// outside it, as a training step does; writes the logits (as fp32), the loss and two
/// gradients.
const PYTORCH_STEP: &str = r#"
import sys, json, numpy, torch, torch.nn.functional as F
sys.path.insert(0, sys.argv[6])
from fast_net import Net
from safetensors.torch import load_file
weights, x_path, y_path, out, cfg = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
net = Net(cfg)
net.load_state_dict(load_file(weights), strict=True)
net.train()
x = torch.from_numpy(numpy.fromfile(x_path, dtype="<f4")).view(8, 3, 32, 32)
y = torch.from_numpy(numpy.fromfile(y_path, dtype="<f4")).long()
with torch.autocast("cpu", dtype=torch.bfloat16):
    logits = net(x)
    loss = F.cross_entropy(logits, y, label_smoothing=0.1)
assert logits.dtype == torch.bfloat16, logits.dtype
loss.backward()
logits.float().detach().numpy().astype("<f4").tofile(out + "/logits.bin")
loss.detach().float().reshape(1).numpy().astype("<f4").tofile(out + "/loss.bin")
net.layer2[0].conv2.weight.grad.numpy().astype("<f4").tofile(out + "/grad_conv2.bin")
net.fc.weight.grad.numpy().astype("<f4").tofile(out + "/grad_fc.bin")
"#;

fn exec(precision: Precision) -> Execution {
    Execution {
        device: Device::Cpu,
        precision,
        channels_last: false,
    }
}

/// Our step's forward and loss under `exec`, backward outside it: logits (fp32), loss, and
/// the gradients of `layer2.0.conv2.weight` and `fc.weight`.
fn step(vs: &nn::VarStore, net: &ResNeXt, x: &Tensor, y: &Tensor, e: &Execution) -> [Tensor; 4] {
    vs.variables().values().for_each(|v| {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    });
    let (logits, loss) = e.run(|| {
        let logits = net.forward_t(x, true);
        let loss = logits.cross_entropy_loss::<Tensor>(y, None, Reduction::Mean, -100, 0.1);
        (logits, loss)
    });
    loss.backward();
    let grad = |name: &str| vs.variables()[name].grad().copy();
    [
        logits.to_kind(Kind::Float).detach(),
        loss.to_kind(Kind::Float).detach().reshape([1]),
        grad("layer2.0.conv2.weight"),
        grad("fc.weight"),
    ]
}

#[test]
fn a_bf16_cpu_step_matches_pytorch_cpu_autocast() {
    let cfg = ResNeXtConfig::from_name("resnext_fast", 10).unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let (net, x, y) = seeded(|| {
        tch::manual_seed(11);
        let net = ResNeXt::new(&vs.root(), &cfg);
        randomize_batch_norms(&vs);
        let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        (net, x, Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)))
    });
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    vs.save(path("w.safetensors")).unwrap();
    write_f32(&dir.path().join("x.bin"), &x);
    write_f32(&dir.path().join("y.bin"), &y.to_kind(Kind::Float));
    // The BN running statistics move in each train-mode pass: PyTorch starts from the saved ones.
    let ours = step(&vs, &net, &x, &y, &exec(Precision::Bf16));
    run_python(
        PYTORCH_STEP,
        &[
            &path("w.safetensors"),
            &path("x.bin"),
            &path("y.bin"),
            dir.path().to_str().unwrap(),
            &serde_json::to_string(&cfg).unwrap(),
            &format!("{}/scripts/pytorch", env!("CARGO_MANIFEST_DIR")),
        ],
    );
    let names = ["logits", "loss", "grad_conv2", "grad_fc"];
    for (name, got) in names.iter().zip(&ours) {
        let want = read_f32(&dir.path().join(format!("{name}.bin")), &got.size());
        let d = max_rel_diff(got, &want);
        assert!(d < TOL, "{name}: {d} against PyTorch's CPU autocast");
    }
    // And bf16 did run: fp32 on the same weights differs by about bf16's rounding.
    let fp32 = step(&vs, &net, &x, &y, &exec(Precision::Fp32));
    let d = max_rel_diff(&ours[0], &fp32[0]);
    assert!(
        d > 1e-4,
        "bf16 logits equal fp32 ones to {d}: autocast did not act"
    );
    assert!(d < 0.1, "bf16 logits {d} away from fp32 ones");
}

#[test]
fn cpu_autocast_is_on_inside_the_region_only_and_off_after_a_panic() {
    assert!(!cpu_autocast_enabled());
    let e = exec(Precision::Bf16);
    let conv = nn::conv2d(
        nn::VarStore::new(Device::Cpu).root(),
        3,
        4,
        3,
        Default::default(),
    );
    let x = Tensor::ones([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let (inside, kind) = e.run(|| (cpu_autocast_enabled(), x.apply(&conv).kind()));
    assert!(inside);
    assert_eq!(kind, Kind::BFloat16);
    assert!(!cpu_autocast_enabled(), "off again after the region");
    assert_eq!(x.apply(&conv).kind(), Kind::Float);
    let panicked = std::panic::catch_unwind(|| e.run(|| panic!("inside autocast")));
    assert!(panicked.is_err());
    assert!(!cpu_autocast_enabled(), "off again after a panic inside");
    // fp32 and `auto` never turn it on on the CPU; fp16 runs fp32 there.
    for p in [Precision::Fp32, Precision::Auto, Precision::Fp16] {
        let resolved = p.resolve(Device::Cpu);
        assert_eq!(resolved, Precision::Fp32, "{p:?}");
        assert!(!exec(resolved).run(cpu_autocast_enabled), "{p:?}");
    }
    assert_eq!(Precision::Bf16.resolve(Device::Cpu), Precision::Bf16);
}

fn bf16_config() -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        epochs: 3,
        batch_size: 16,
        lr: 0.05,
        device: "cpu".into(),
        precision: Precision::Bf16,
        augment: false,
        ..TrainConfig::default()
    }
}

/// A bf16 run on the CPU (the tiny preset, 64 images) lowers its training loss, keeps fp32 weights, and a run stopped in its
/// first epoch and resumed ends with the weights of an uninterrupted one, bit for bit.
#[test]
fn a_bf16_cpu_run_learns_and_resumes_bit_for_bit() {
    let data = common::random_cifar(29, 64, 32);
    let whole = tempfile::tempdir().unwrap();
    let mut t = seeded(|| Trainer::resnext(bf16_config()).unwrap())
        .with_run_dir(whole.path())
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    assert_eq!(t.state().config.precision, Precision::Bf16);
    assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
    let losses: Vec<f64> = t.state().metrics.iter().map(|e| e.train_loss).collect();
    assert!(losses[2] < losses[0], "training loss {losses:?}");
    let end = variables(&t);
    assert!(end.values().all(|v| v.kind() == Kind::Float));
    let dir = tempfile::tempdir().unwrap();
    let resumed = common::stopped_and_resumed(bf16_config(), dir.path(), &data, (1, 1));
    let again = variables(&resumed);
    for (name, v) in &end {
        assert!(v.equal(&again[name]), "{name} differs after resume");
    }
}
