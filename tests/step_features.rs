//! The training step's soft targets (MixUp / CutMix) and gradient accumulation, against
//! PyTorch 2.11 (`torch.nn.functional.cross_entropy` on probabilities with label smoothing,
//! the micro-batch loop of timm's `--grad-accum-steps`, `clip_grad_norm_`, `torch.optim.SGD`)
//! on the same model and batches, and BatchNorm seeing the micro-batches.
use std::path::Path;

use resnext::io::{read_safetensors, write_safetensors};
use resnext::trainer::{Execution, Sgd, SgdConfig, StepBatch, TrainStep};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

mod common;
#[path = "common/python.rs"]
mod python;

/// A linear classifier of flattened `[B, 3, 4, 4]` images: no BatchNorm, so a batch's
/// gradients do not depend on how it is split.
#[derive(Debug)]
struct Flat(nn::Linear);

impl ModuleT for Flat {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor {
        xs.flatten(1, -1).apply(&self.0)
    }
}

fn linear(seed: i64) -> (nn::VarStore, Flat) {
    let vs = nn::VarStore::new(Device::Cpu);
    let lin = common::seeded(|| {
        tch::manual_seed(seed);
        nn::linear(vs.root(), 48, 10, Default::default())
    });
    (vs, Flat(lin))
}

const STEPS: i64 = 3;
const BATCH: i64 = 8;

/// Batch `k`: images and soft targets (a random mix of two one-hots, as MixUp makes).
fn batch(k: i64) -> (Tensor, Tensor, Tensor) {
    let (x, labels) = common::seeded(|| {
        tch::manual_seed(100 + k);
        let x = Tensor::randn([BATCH, 3, 4, 4], (Kind::Float, Device::Cpu));
        (x, Tensor::randint(10, [BATCH], (Kind::Int64, Device::Cpu)))
    });
    let lam = 0.7;
    let one = labels.one_hot(10).to_kind(Kind::Float);
    let targets = one.roll([1], [0]) * (1.0 - lam) + &one * lam;
    (x, labels, targets)
}

const TORCH_STEPS: &str = r#"
import json, sys, torch
from safetensors.torch import load_file, save_file
d = sys.argv[1]
t = load_file(d + "/in.safetensors")
spec = json.load(open(d + "/spec.json"))
lin = torch.nn.Linear(48, 10)
with torch.no_grad():
    lin.weight.copy_(t["weight"]); lin.bias.copy_(t["bias"])
opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
losses = []
for k in range(spec["steps"]):
    x, y = t[f"x{k}"], t[f"t{k}"]
    opt.zero_grad()
    total = 0.0
    for xs, ys in zip(x.chunk(spec["parts"]), y.chunk(spec["parts"])):
        loss = torch.nn.functional.cross_entropy(lin(xs.flatten(1)), ys, label_smoothing=0.1)
        (loss * xs.shape[0] / x.shape[0]).backward()
        total += loss.item() * xs.shape[0] / x.shape[0]
    torch.nn.utils.clip_grad_norm_(lin.parameters(), 0.5)
    opt.step()
    losses.append(total)
save_file({"weight": lin.weight.detach(), "bias": lin.bias.detach()}, d + "/out.safetensors",
          metadata={"losses": json.dumps(losses)})
print(f"torch: {spec['steps']} steps of {spec['parts']} micro-batches, losses {losses}")
"#;

/// Our step: `STEPS` updates of SGD with soft targets, label smoothing 0.1, clipping to 0.5
/// and `parts` micro-batches; the weights and losses.
fn ours(parts: usize) -> (Vec<(String, Tensor)>, Vec<f64>) {
    let (vs, net) = linear(1);
    let mut sgd = Sgd::new(&vs, SgdConfig::default());
    let mut step = TrainStep::new(Execution::plain(Device::Cpu), 0.1)
        .with_clip_grad_norm(Some(0.5))
        .with_grad_accum_steps(parts);
    let mut losses = Vec::new();
    for k in 0..STEPS {
        let (x, labels, targets) = batch(k);
        let b = StepBatch {
            images: &x,
            labels: &labels,
            targets: Some(&targets),
        };
        let out = step.run_batch(&net, &mut sgd, &mut None, &b, 0.1).unwrap();
        losses.push(out.loss.double_value(&[]));
    }
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (vars, losses)
}

fn torch_steps(dir: &Path, parts: usize) -> (Vec<(String, Tensor)>, Vec<f64>) {
    let (vs, _) = linear(1);
    let mut inputs: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    for k in 0..STEPS {
        let (x, _, targets) = batch(k);
        inputs.push((format!("x{k}"), x));
        inputs.push((format!("t{k}"), targets));
    }
    write_safetensors(&dir.join("in.safetensors"), &inputs, None).unwrap();
    let spec = serde_json::json!({ "steps": STEPS, "parts": parts });
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    python::run_python(TORCH_STEPS, &[dir.to_str().unwrap()]);
    let file = read_safetensors(&dir.join("out.safetensors")).unwrap();
    let losses = serde_json::from_str(&file.metadata["losses"]).unwrap();
    let mut vars: Vec<(String, Tensor)> = file.tensors.into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    (vars, losses)
}

fn max_relative(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

#[test]
fn soft_targets_and_accumulation_match_torch_sgd_step_for_step() {
    for parts in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let (mine, my_losses) = ours(parts);
        let (theirs, their_losses) = torch_steps(dir.path(), parts);
        for ((name, a), (tname, b)) in mine.iter().zip(&theirs) {
            assert_eq!(name, tname);
            // fp32 with sums in other orders (libtorch's kernels vs ours across micro-batches):
            // a few ulps per step, far below 1e-5.
            let d = max_relative(a, b);
            assert!(d < 1e-5, "{parts} parts, {name}: relative difference {d}");
        }
        for (x, y) in my_losses.iter().zip(&their_losses) {
            assert!(
                (x - y).abs() < 1e-5 * y.abs(),
                "{parts} parts: loss {x} vs {y}"
            );
        }
    }
    // Without BatchNorm, splitting changes nothing but rounding.
    let (one, _) = ours(1);
    let (four, _) = ours(4);
    for ((name, a), (_, b)) in one.iter().zip(&four) {
        assert!(max_relative(a, b) < 1e-5, "{name}");
    }
}

#[test]
fn batch_norm_sees_the_micro_batches() {
    let cfg = ResNeXtConfig::tiny(10);
    let build = || {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = common::seeded(|| {
            tch::manual_seed(3);
            ResNeXt::new(&vs.root(), &cfg)
        });
        (vs, net)
    };
    let (x, labels) = common::seeded(|| {
        tch::manual_seed(9);
        let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        (x, Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)))
    });
    let running_mean = |parts: usize| {
        let (vs, net) = build();
        let mut sgd = Sgd::new(&vs, SgdConfig::default());
        let mut step = TrainStep::new(Execution::plain(Device::Cpu), 0.0);
        step.set_grad_accum_steps(parts);
        step.run(&net, &mut sgd, &mut None, &x, &labels, 0.0)
            .unwrap();
        vs.variables()["bn1.running_mean"].copy()
    };
    // By hand: two training-mode forward passes on the halves.
    let (twin_vs, twin) = build();
    tch::no_grad(|| {
        let _ = twin.forward_t(&x.narrow(0, 0, 4), true);
        let _ = twin.forward_t(&x.narrow(0, 4, 4), true);
    });
    let by_hand = twin_vs.variables()["bn1.running_mean"].copy();
    let split = running_mean(2);
    assert!(max_relative(&split, &by_hand) < 1e-6);
    assert!(!split.allclose(&running_mean(1), 1e-6, 1e-7, false));
}
