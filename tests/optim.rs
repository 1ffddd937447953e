//! The optimisers, parameter groups, gradient clipping and the EMA of the weights against
//! PyTorch (torch 2.11.0, torchvision 0.26.0; see `tests/common/python.rs`), and the SGD
//! against the crate's previous SGD, bitwise.
//!
//! The PyTorch comparisons feed both sides the same initial weights (a tiny ResNeXt's, written
//! as safetensors) and the same gradients (drawn here, written beside them), so only the
//! update rules are compared, not two forward passes.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use resnext::io::{read_safetensors, write_safetensors};
use resnext::trainer::{
    clip_grad_norm, ema_decay_for, AdamWConfig, Ema, EmaSchedule, GroupOverride, OptimError,
    Optimizer, OptimizerConfig, ParamClass, ParamGroups, Sgd, SgdConfig,
};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Reduction, Tensor};

mod common;
use common::seeded;
#[path = "common/python.rs"]
mod python;
use python::run_python;

/// The SGD of the crate before the [`Optimizer`] trait, verbatim (its `step`), as the
/// reference the new one must reproduce bit for bit.
struct LegacySgd {
    config: SgdConfig,
    params: Vec<(String, Tensor)>,
    momentum: Vec<Option<Tensor>>,
}

impl LegacySgd {
    fn new(vs: &nn::VarStore, config: SgdConfig) -> Self {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let momentum = params.iter().map(|_| None).collect();
        LegacySgd {
            config,
            params,
            momentum,
        }
    }

    fn step(&mut self, lr: f64) {
        let SgdConfig {
            momentum,
            weight_decay,
            nesterov,
        } = self.config;
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter_mut().zip(&mut self.momentum) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let mut d = if weight_decay != 0.0 {
                    grad + &*p * weight_decay
                } else {
                    grad.shallow_clone()
                };
                if momentum != 0.0 {
                    let b = match buf {
                        Some(b) => {
                            let _ = b.g_mul_scalar_(momentum).g_add_(&d);
                            b
                        }
                        None => buf.insert(d.detach().copy()),
                    };
                    d = if nesterov {
                        d + &*b * momentum
                    } else {
                        b.shallow_clone()
                    };
                }
                let _ = p.g_sub_(&(d * lr));
            }
        })
    }
}

/// A tiny ResNeXt with the weights of seed `seed`.
fn tiny(seed: i64) -> (nn::VarStore, ResNeXt) {
    seeded(|| {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
        (vs, net)
    })
}

/// A second tiny ResNeXt with the very weights of `vs`.
fn twin(vs: &nn::VarStore) -> (nn::VarStore, ResNeXt) {
    let (mut other, net) = tiny(0);
    other.copy(vs).unwrap();
    (other, net)
}

/// Batch `k`: 8 random images and labels, the same on every call.
fn batch(k: i64) -> (Tensor, Tensor) {
    seeded(|| {
        tch::manual_seed(1000 + k);
        let images = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let labels = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
        (images, labels)
    })
}

/// Forward and backward of batch `k` (train mode, mean cross-entropy).
fn backward(net: &ResNeXt, k: i64) {
    let (images, labels) = batch(k);
    let loss = net.forward_t(&images, true).cross_entropy_loss::<Tensor>(
        &labels,
        None,
        Reduction::Mean,
        -100,
        0.0,
    );
    loss.backward();
}

/// Whether every variable of `a` equals (bitwise) the one of the same name in `b`.
fn assert_vars_equal(a: &nn::VarStore, b: &nn::VarStore, what: &str) {
    let (a, b) = (a.variables(), b.variables());
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{what}: `{name}` differs");
    }
}

fn assert_states_equal(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        a.iter().map(|(n, t)| (n.clone(), t)).collect(),
        b.iter().map(|(n, t)| (n.clone(), t)).collect(),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}");
    for (name, t) in &a {
        assert!(t.equal(b[name]), "{what}: state `{name}` differs");
    }
}

#[test]
fn sgd_is_bitwise_the_previous_sgd() {
    let configs = [
        SgdConfig::default(),
        SgdConfig {
            momentum: 0.9,
            weight_decay: 1e-3,
            nesterov: true,
        },
        SgdConfig {
            momentum: 0.0,
            weight_decay: 5e-4,
            nesterov: false,
        },
    ];
    for config in configs {
        let (vs_old, net_old) = tiny(3);
        let (vs_new, net_new) = twin(&vs_old);
        let (vs_dyn, net_dyn) = twin(&vs_old);
        let mut old = LegacySgd::new(&vs_old, config);
        let mut new = Sgd::new(&vs_new, config);
        let mut boxed = OptimizerConfig::Sgd(config)
            .build(&vs_dyn, &ParamGroups::default())
            .unwrap();
        for k in 0..5 {
            let lr = 0.1 / (k + 1) as f64;
            for p in old.params.iter_mut() {
                p.1.zero_grad();
            }
            new.zero_grad();
            boxed.zero_grad();
            backward(&net_old, k);
            backward(&net_new, k);
            backward(&net_dyn, k);
            old.step(lr);
            new.step(lr);
            boxed.step(lr).unwrap();
        }
        let what = format!("{config:?}");
        assert_vars_equal(&vs_old, &vs_new, &what);
        assert_vars_equal(&vs_old, &vs_dyn, &what);
        let old_state: Vec<_> = old
            .params
            .iter()
            .zip(&old.momentum)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (format!("momentum/{n}"), b.copy())))
            .collect();
        assert_states_equal(&old_state, &new.state_tensors(), &what);
        assert_states_equal(&old_state, &boxed.state_tensors(), &what);
        assert_eq!(old_state.is_empty(), config.momentum == 0.0);
    }
}

/// Gradient `k` of every parameter: random, with a scale that changes from step to step
/// (so that clipping at norm 5 clips some steps and not others).
fn gradients(params: &[(String, Tensor)], k: usize) -> Vec<Tensor> {
    const SCALES: [f64; 6] = [1.0, 0.01, 3.0, 0.1, 1.0, 0.3];
    seeded(|| {
        tch::manual_seed(7000 + k as i64);
        params
            .iter()
            .map(|(_, p)| p.randn_like() * (0.1 * SCALES[k % SCALES.len()]))
            .collect()
    })
}

/// Makes `grads` the gradients of `params` (exactly: `d/dp sum(p * g) = g`).
fn set_grads(params: &[(String, Tensor)], grads: &[Tensor]) {
    for ((_, p), g) in params.iter().zip(grads) {
        let mut current = p.grad();
        if current.defined() {
            tch::no_grad(|| current.copy_(g));
        } else {
            (p * g).sum(Kind::Float).backward();
        }
    }
}

/// What a run of K steps did: the total gradient norms (when clipping) and the optimiser.
struct Run {
    norms: Vec<f64>,
    opt: Box<dyn Optimizer>,
}

/// `steps` steps `from..from + steps` of `opt` with the gradients of [`gradients`] and the
/// learning rates of [`lr_at`].
fn run_steps(opt: &mut dyn Optimizer, from: usize, steps: usize, max_norm: Option<f64>) -> Vec<f64> {
    let params: Vec<(String, Tensor)> = opt
        .parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let mut norms = Vec::new();
    for k in from..from + steps {
        set_grads(&params, &gradients(&params, k));
        if let Some(max) = max_norm {
            norms.push(clip_grad_norm(&params, max).unwrap().double_value(&[]));
        }
        opt.step(lr_at(k)).unwrap();
    }
    norms
}

fn lr_at(k: usize) -> f64 {
    [0.1, 0.05, 0.08, 0.02, 0.01, 0.04][k % 6]
}

const STEPS: usize = 6;
const MAX_NORM: f64 = 5.0;

/// torch.optim with the same parameters, groups, gradients and learning rates: reads
/// DIR/spec.json, DIR/init.safetensors, DIR/grads.safetensors; writes DIR/torch.safetensors
/// (`param/<name>` and `<state key>/<name>`, the norms in the metadata).
const TORCH_OPTIM: &str = r#"
import json, sys
import torch
from safetensors.torch import load_file, save_file
d = sys.argv[1]
spec = json.load(open(d + "/spec.json"))
init, grads = load_file(d + "/init.safetensors"), load_file(d + "/grads.safetensors")
names = spec["names"]
params = [torch.nn.Parameter(init[n].clone()) for n in names]
groups = {}
for n, p in zip(names, params):
    wd, mult = spec["settings"][n]
    groups.setdefault((wd, mult), []).append(p)
pg = [{"params": ps, "weight_decay": wd, "lr_multiplier": m} for (wd, m), ps in groups.items()]
o = spec["optimizer"]
if o["name"] == "sgd":
    opt = torch.optim.SGD(pg, lr=0.1, momentum=o["momentum"], nesterov=o["nesterov"])
else:
    opt = torch.optim.AdamW(pg, lr=0.1, betas=tuple(o["betas"]), eps=o["eps"])
norms = []
for k, lr in enumerate(spec["lrs"]):
    for n, p in zip(names, params):
        p.grad = grads[f"{k}/{n}"].clone()
    if spec["max_norm"] is not None:
        norms.append(torch.nn.utils.clip_grad_norm_(params, spec["max_norm"]).item())
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_multiplier"]
    opt.step()
out = {f"param/{n}": p.detach() for n, p in zip(names, params)}
rename = {"momentum_buffer": "momentum"}
for n, p in zip(names, params):
    for key, v in opt.state[p].items():
        out[f"{rename.get(key, key)}/{n}"] = v.detach().clone()
save_file(out, d + "/torch.safetensors", metadata={"norms": json.dumps(norms)})
print(f"{o['name']}: {len(pg)} groups, {len(spec['lrs'])} steps, norms {[round(x, 3) for x in norms]}")
"#;

/// Runs [`TORCH_OPTIM`] for `config` and `groups`; torch's tensors and norms.
fn torch_optim(
    dir: &Path,
    config: &OptimizerConfig,
    opt: &dyn Optimizer,
    max_norm: Option<f64>,
) -> (HashMap<String, Tensor>, Vec<f64>) {
    let params = opt.parameters();
    let settings: BTreeMap<&str, (f64, f64)> = params
        .iter()
        .zip(opt.settings())
        .map(|((n, _), s)| (n.as_str(), (s.weight_decay, s.lr_multiplier)))
        .collect();
    let spec = serde_json::json!({
        "names": params.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "settings": settings,
        "optimizer": config,
        "lrs": (0..STEPS).map(lr_at).collect::<Vec<_>>(),
        "max_norm": max_norm,
    });
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let init: Vec<(String, Tensor)> = params.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
    write_safetensors(&dir.join("init.safetensors"), &init, None).unwrap();
    let mut grads = Vec::new();
    for k in 0..STEPS {
        for ((n, _), g) in params.iter().zip(gradients(params, k)) {
            grads.push((format!("{k}/{n}"), g));
        }
    }
    write_safetensors(&dir.join("grads.safetensors"), &grads, None).unwrap();
    run_python(TORCH_OPTIM, &[dir.to_str().unwrap()]);
    let file = read_safetensors(&dir.join("torch.safetensors")).unwrap();
    let norms = serde_json::from_str(&file.metadata["norms"]).unwrap();
    (file.tensors.into_iter().collect(), norms)
}

/// The largest absolute difference between our tensors and torch's, over the parameters and
/// the state.
fn max_difference(run: &Run, torch: &HashMap<String, Tensor>) -> f64 {
    let mut ours: Vec<(String, Tensor)> = run
        .opt
        .parameters()
        .iter()
        .map(|(n, t)| (format!("param/{n}"), t.shallow_clone()))
        .collect();
    ours.extend(run.opt.state_tensors());
    assert_eq!(ours.len(), torch.len(), "tensors: ours vs torch's");
    let mut max: f64 = 0.0;
    for (name, t) in &ours {
        let theirs = torch
            .get(name)
            .unwrap_or_else(|| panic!("torch has no `{name}`"));
        let d = (t.to_kind(Kind::Double) - theirs.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        max = max.max(d);
    }
    max
}

/// The groups of the comparisons: no decay for norm parameters, fc's bias and the BN biases
/// (the latter at 4 times the learning rate), as torchvision's and airbench's recipes.
fn recipe_groups() -> ParamGroups {
    ParamGroups {
        norm: Some(GroupOverride::no_decay()),
        bias: Some(GroupOverride {
            weight_decay: Some(0.0),
            lr_multiplier: 1.0,
        }),
        norm_bias: Some(GroupOverride {
            weight_decay: Some(0.0),
            lr_multiplier: 4.0,
        }),
    }
}

fn compare_with_torch(config: OptimizerConfig) -> f64 {
    let (vs, _net) = tiny(11);
    let groups = recipe_groups();
    let mut opt = config.build(&vs, &groups).unwrap();
    let classes: Vec<ParamClass> = opt.settings().iter().map(|s| s.class).collect();
    for class in [ParamClass::Other, ParamClass::Norm, ParamClass::Bias, ParamClass::NormBias] {
        assert!(classes.contains(&class), "no parameter of class {class:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (torch, torch_norms) = torch_optim(dir.path(), &config, opt.as_ref(), Some(MAX_NORM));
    let norms = run_steps(opt.as_mut(), 0, STEPS, Some(MAX_NORM));
    assert!(norms.iter().any(|&n| n > MAX_NORM) && norms.iter().any(|&n| n < MAX_NORM));
    for (ours, theirs) in norms.iter().zip(&torch_norms) {
        assert!(
            (ours - theirs).abs() <= 1e-6 * theirs,
            "total norm {ours} vs torch's {theirs}"
        );
    }
    let run = Run { norms, opt };
    let max = max_difference(&run, &torch);
    eprintln!("{}: largest difference from torch.optim {max:e} (norms {:?})", config.name(), run.norms);
    max
}

/// SGD against `torch.optim.SGD` with parameter groups and clipping. Not bitwise: our SGD keeps
/// the operation order of its first version (`g + wd * p` as a product then a sum, `p -= lr *
/// d`), where torch fuses `add(p, alpha=wd)` and `add_(d, alpha=-lr)` (one rounding fewer
/// each). The difference is a few float32 ulps per step: 1e-6 absolute bounds it for weights
/// of order 1 over 6 steps.
#[test]
fn sgd_with_groups_and_clipping_matches_torch_optim_sgd() {
    let config = OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-3,
        nesterov: true,
    });
    let max = compare_with_torch(config);
    assert!(max <= 1e-6, "largest difference {max:e}");
}

/// AdamW against `torch.optim.AdamW` (its single-tensor path, which the CPU takes) with
/// parameter groups and clipping: the same libtorch kernels in the same order, bitwise.
#[test]
fn adamw_with_groups_and_clipping_matches_torch_optim_adamw() {
    let config = OptimizerConfig::AdamW(AdamWConfig {
        betas: (0.8, 0.99),
        eps: 1e-6,
        weight_decay: 0.05,
    });
    let max = compare_with_torch(config);
    assert_eq!(max, 0.0, "largest difference {max:e}");
}
