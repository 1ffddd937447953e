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
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}"
    );
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
fn run_steps(
    opt: &mut dyn Optimizer,
    from: usize,
    steps: usize,
    max_norm: Option<f64>,
) -> Vec<f64> {
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
    for class in [
        ParamClass::Other,
        ParamClass::Norm,
        ParamClass::Bias,
        ParamClass::NormBias,
    ] {
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
    eprintln!(
        "{}: largest difference from torch.optim {max:e} (norms {:?})",
        config.name(),
        run.norms
    );
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

/// Which group torchvision's `set_weight_decay` (references/classification/utils.py, 0.26)
/// puts each parameter of torchvision's `resnext50_32x4d` in: by module type (its norm
/// classes) and by the custom key `bias`, which comes first. Prints `{name: group}` as JSON for
/// argv[1] in {norm, bias, both}.
const TORCHVISION_GROUPS: &str = r#"
import json, sys
import torch, torchvision
mode = sys.argv[1]
norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm,
              torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)
model = torchvision.models.resnext50_32x4d(weights=None)
groups = {}
for module_name, module in model.named_modules():
    for name, p in module.named_parameters(recurse=False):
        full = f"{module_name}.{name}" if module_name else name
        if mode in ("bias", "both") and name == "bias":
            groups[full] = "bias"
        elif mode in ("norm", "both") and isinstance(module, norm_types):
            groups[full] = "norm"
        else:
            groups[full] = "other"
print(json.dumps(groups))
"#;

#[test]
fn groups_are_those_of_torchvisions_set_weight_decay_on_resnext50() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::resnext50_32x4d(1000));
    let no_decay = Some(GroupOverride::no_decay());
    let modes = [
        (
            "norm",
            ParamGroups {
                norm: no_decay,
                ..ParamGroups::default()
            },
        ),
        (
            "bias",
            ParamGroups {
                bias: no_decay,
                ..ParamGroups::default()
            },
        ),
        (
            "both",
            ParamGroups {
                norm: no_decay,
                bias: no_decay,
                ..ParamGroups::default()
            },
        ),
    ];
    for (mode, groups) in modes {
        let out = run_python(TORCHVISION_GROUPS, &[mode]);
        let theirs: BTreeMap<String, String> = serde_json::from_str(out.trim()).unwrap();
        let sgd = Sgd::with_groups(&vs, SgdConfig::default(), &groups).unwrap();
        let ours: BTreeMap<String, String> = Optimizer::parameters(&sgd)
            .iter()
            .zip(Optimizer::settings(&sgd))
            .map(|((n, _), s)| {
                let g = match s.class {
                    ParamClass::Other => "other",
                    ParamClass::Norm => "norm",
                    ParamClass::Bias | ParamClass::NormBias => "bias",
                };
                (n.clone(), g.to_string())
            })
            .collect();
        assert_eq!(ours, theirs, "{mode}");
        let decay_free = ours.values().filter(|g| *g != "other").count();
        // 53 BN layers (106 parameters) and fc.bias.
        let expected = match mode {
            "norm" => 106,
            "bias" => 54,
            _ => 107,
        };
        assert_eq!(decay_free, expected, "{mode}");
    }
}

/// torchvision's `ExponentialMovingAverage` (an `AveragedModel` with `use_buffers=True` and
/// `decay * avg + (1 - decay) * param`) driven as its `train.py` drives it, over the model
/// states of DIR/states.safetensors (`<k>/<name>`); writes `ema.state_dict()` to
/// DIR/torch_ema.safetensors. The model is a flat module with the same parameters (trainable
/// ones) and buffers (the others).
const TORCHVISION_EMA: &str = r#"
import json, sys
import torch
from safetensors.torch import load_file, save_file
d = sys.argv[1]
spec = json.load(open(d + "/ema_spec.json"))
states = load_file(d + "/states.safetensors")

class Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for n in spec["params"]:
            self.register_parameter(n.replace(".", "__"), torch.nn.Parameter(states["0/" + n].clone()))
        for n in spec["buffers"]:
            self.register_buffer(n.replace(".", "__"), states["0/" + n].clone())

class ExponentialMovingAverage(torch.optim.swa_utils.AveragedModel):
    def __init__(self, model, decay, device="cpu"):
        def ema_avg(avg_model_param, model_param, num_averaged):
            return decay * avg_model_param + (1 - decay) * model_param
        super().__init__(model, device, ema_avg, use_buffers=True)

adjust = 1 * spec["batch_size"] * spec["every"] / spec["epochs"]
alpha = min(1.0, (1.0 - spec["decay"]) * adjust)
assert 1.0 - alpha == spec["adjusted"], (1.0 - alpha, spec["adjusted"])
model = Flat()
ema = ExponentialMovingAverage(model, device="cpu", decay=1.0 - alpha)
k = 0
for epoch, batches in enumerate(spec["batches"]):
    for i in range(batches):
        with torch.no_grad():
            for n, t in list(model.named_parameters()) + list(model.named_buffers()):
                t.copy_(states[f"{k}/{n.replace('__', '.')}"])
        k += 1
        if i % spec["every"] == 0:
            ema.update_parameters(model)
            if epoch < spec["warmup_epochs"]:
                ema.n_averaged.fill_(0)
out = {}
for n, t in ema.state_dict().items():
    out[n.replace("__", ".")] = t.clone()
save_file(out, d + "/torch_ema.safetensors")
print(f"n_averaged {int(ema.n_averaged)}, {len(out)} tensors")
"#;

/// Perturbs every variable of `vs` (state `k` of a training run): floats by noise, the integer
/// counter by one.
fn perturb(vs: &nn::VarStore, k: i64) {
    seeded(|| {
        tch::manual_seed(9000 + k);
        tch::no_grad(|| {
            let mut vars: Vec<_> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, mut t) in vars {
                if t.kind() == Kind::Int64 {
                    let _ = t.g_add_scalar_(1);
                } else {
                    let _ = t.g_add_(&(t.randn_like() * 0.1));
                }
            }
        })
    })
}

#[test]
fn ema_matches_torchvisions_exponential_moving_average() {
    let (vs, _net) = tiny(5);
    // An integer buffer as BatchNorm's num_batches_tracked in PyTorch (tch has none).
    let _ = vs
        .root()
        .add("num_batches_tracked", Tensor::from(0i64), false);
    let (decay, batch_size, every, epochs) = (0.99, 16, 2, 3);
    let adjusted = ema_decay_for(decay, 1, batch_size, every, epochs).unwrap();
    let schedule = EmaSchedule {
        every,
        warmup_epochs: 1,
    };
    let batches = [3usize, 5, 4];
    let mut ema = Ema::new(&vs, adjusted).unwrap();
    let mut states = Vec::new();
    let mut k = 0;
    for (epoch, &n) in batches.iter().enumerate() {
        for i in 0..n {
            perturb(&vs, k);
            states.extend(
                vs.variables()
                    .into_iter()
                    .map(|(n, t)| (format!("{k}/{n}"), t.copy())),
            );
            schedule.after_step(&mut ema, &vs, epoch, i).unwrap();
            k += 1;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(&dir.path().join("states.safetensors"), &states, None).unwrap();
    let mut params: Vec<String> = Vec::new();
    let mut buffers: Vec<String> = Vec::new();
    for (n, t) in vs.variables() {
        match t.requires_grad() {
            true => params.push(n),
            false => buffers.push(n),
        }
    }
    let spec = serde_json::json!({
        "params": params, "buffers": buffers, "decay": decay, "adjusted": adjusted,
        "batch_size": batch_size, "every": every, "epochs": epochs,
        "warmup_epochs": schedule.warmup_epochs, "batches": batches,
    });
    std::fs::write(dir.path().join("ema_spec.json"), spec.to_string()).unwrap();
    run_python(TORCHVISION_EMA, &[dir.path().to_str().unwrap()]);
    let theirs = read_safetensors(&dir.path().join("torch_ema.safetensors")).unwrap();
    // Updates at batches 0, 2, 4 of epochs 1 and 2 (epoch 0's were reset by warm-up).
    assert_eq!(ema.n_averaged(), 5);
    let ours = ema.state_tensors();
    assert_states_equal(&ours, &theirs.tensors, "EMA vs torchvision");
    // The averages are averages: neither the first state nor the last.
    let last = vs.variables();
    let avg = &ema.averages()[0];
    assert!(!avg.1.equal(&last[&avg.0]));
}

#[test]
fn ema_state_round_trips_and_copies_into_a_second_model() {
    let (vs, net) = tiny(6);
    let mut ema = Ema::new(&vs, 0.9).unwrap();
    let (vs2, _) = twin(&vs);
    let mut ema2 = Ema::new(&vs2, 0.9).unwrap();
    for k in 0..3 {
        perturb(&vs, k);
        ema.update(&vs).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ema.safetensors");
    write_safetensors(&path, &ema.state_tensors(), None).unwrap();
    ema2.load_state(read_safetensors(&path).unwrap().tensors)
        .unwrap();
    for k in 3..5 {
        perturb(&vs, k);
        ema.update(&vs).unwrap();
        ema2.update(&vs).unwrap();
    }
    assert_states_equal(&ema.state_tensors(), &ema2.state_tensors(), "EMA resumed");
    // Evaluate with the averages: a second model gets them.
    let (eval_vs, eval_net) = tiny(99);
    ema.copy_into(&eval_vs).unwrap();
    for (name, avg) in ema.averages() {
        assert!(avg.equal(&eval_vs.variables()[name]), "{name}");
    }
    let (images, _) = batch(0);
    let a = eval_net.forward_t(&images, false);
    let b = net.forward_t(&images, false);
    assert!(!a.equal(&b), "the averaged model is another model");
    // Another architecture does not fit.
    let other = nn::VarStore::new(Device::Cpu);
    let _m = ResNeXt::new(&other.root(), &ResNeXtConfig::tiny(7));
    let err = ema.copy_into(&other).unwrap_err().to_string();
    assert!(err.contains("fc.") && err.contains("shape"), "{err}");
}

/// Runs `config` for `STEPS` steps at once, and as 3 steps, a state saved to a file and loaded
/// into a fresh model and optimiser, then 3 more: the same weights and state, bitwise.
fn assert_resumes_exactly(config: OptimizerConfig) {
    let groups = recipe_groups();
    let (vs_a, _a) = tiny(21);
    let mut a = config.build(&vs_a, &groups).unwrap();
    run_steps(a.as_mut(), 0, STEPS, Some(MAX_NORM));

    let (vs_b, _b) = tiny(21);
    let mut b = config.build(&vs_b, &groups).unwrap();
    run_steps(b.as_mut(), 0, 3, Some(MAX_NORM));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let mut saved: Vec<(String, Tensor)> = vs_b
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("model/{n}"), t))
        .collect();
    saved.extend(b.state_tensors());
    write_safetensors(&path, &saved, None).unwrap();
    drop(b);

    let (vs_c, _c) = tiny(77);
    let mut c = config.build(&vs_c, &groups).unwrap();
    let (mut model, mut state) = (HashMap::new(), Vec::new());
    for (n, t) in read_safetensors(&path).unwrap().tensors {
        match n.strip_prefix("model/") {
            Some(v) => drop(model.insert(v.to_string(), t)),
            None => state.push((n, t)),
        }
    }
    tch::no_grad(|| {
        for (n, mut v) in vs_c.variables() {
            v.copy_(&model[&n]);
        }
    });
    c.load_state(state).unwrap();
    run_steps(c.as_mut(), 3, STEPS - 3, Some(MAX_NORM));
    assert_vars_equal(&vs_a, &vs_c, config.name());
    assert_states_equal(&a.state_tensors(), &c.state_tensors(), config.name());
}

#[test]
fn sgd_and_adamw_state_round_trips_bitwise() {
    assert_resumes_exactly(OptimizerConfig::Sgd(SgdConfig::default()));
    assert_resumes_exactly(OptimizerConfig::AdamW(AdamWConfig::default()));
}

#[test]
fn bad_names_and_hyper_parameters_are_typed_errors() {
    // Names.
    let err = "adam".parse::<OptimizerConfig>().unwrap_err();
    assert!(matches!(&err, OptimError::UnknownOptimizer { name, .. } if name == "adam"));
    assert!(err.to_string().contains("sgd, adamw"), "{err}");
    let json = serde_json::from_str::<OptimizerConfig>(r#"{"name": "lamb"}"#).unwrap_err();
    assert!(
        json.to_string().contains("sgd") && json.to_string().contains("adamw"),
        "{json}"
    );
    let parsed: OptimizerConfig =
        serde_json::from_str(r#"{"name": "adamw", "eps": 1e-6}"#).unwrap();
    assert_eq!(
        parsed,
        OptimizerConfig::AdamW(AdamWConfig {
            eps: 1e-6,
            ..AdamWConfig::default()
        })
    );
    assert!(serde_json::from_str::<OptimizerConfig>(r#"{"name": "sgd", "beta": 1}"#).is_err());
    // Hyper-parameters.
    let vs = nn::VarStore::new(Device::Cpu);
    let _w = (vs.root() / "layer").var("weight", &[3], nn::Init::Const(1.0));
    let adamw = |betas, eps| {
        OptimizerConfig::AdamW(AdamWConfig {
            betas,
            eps,
            weight_decay: 0.0,
        })
    };
    let bad = [
        (adamw((1.0, 0.999), 1e-8), "betas[0]"),
        (adamw((0.9, -0.1), 1e-8), "betas[1]"),
        (adamw((0.9, 0.999), -1e-8), "eps"),
        (adamw((0.9, 0.999), f64::NAN), "eps"),
        (
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 1.0,
                ..SgdConfig::default()
            }),
            "momentum",
        ),
        (
            OptimizerConfig::Sgd(SgdConfig {
                weight_decay: -1.0,
                ..SgdConfig::default()
            }),
            "weight_decay",
        ),
    ];
    for (config, field) in bad {
        let err = config.build(&vs, &ParamGroups::default()).err().unwrap();
        assert!(
            matches!(&err, OptimError::InvalidHyperParameter { field: f, .. } if *f == field),
            "{err}"
        );
    }
    let groups = ParamGroups {
        bias: Some(GroupOverride {
            weight_decay: None,
            lr_multiplier: 0.0,
        }),
        ..ParamGroups::default()
    };
    assert!(OptimizerConfig::default().build(&vs, &groups).is_err());
    let mut sgd = OptimizerConfig::default()
        .build(&vs, &ParamGroups::default())
        .unwrap();
    assert!(matches!(
        sgd.step(-0.1),
        Err(OptimError::InvalidHyperParameter { field: "lr", .. })
    ));
    assert!(matches!(
        sgd.step(f64::INFINITY),
        Err(OptimError::InvalidHyperParameter { field: "lr", .. })
    ));
    assert!(clip_grad_norm(sgd.parameters(), 0.0).is_err());
    assert!(clip_grad_norm(sgd.parameters(), f64::NAN).is_err());
}

#[test]
fn bad_decays_and_states_are_typed_errors() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _w = (vs.root() / "layer").var("weight", &[3], nn::Init::Const(1.0));
    let adamw = |betas, eps| {
        OptimizerConfig::AdamW(AdamWConfig {
            betas,
            eps,
            weight_decay: 0.0,
        })
    };
    let mut sgd = OptimizerConfig::default()
        .build(&vs, &ParamGroups::default())
        .unwrap();
    // EMA decays.
    for decay in [1.0, 1.5, -0.1, f64::NAN] {
        assert!(
            matches!(
                Ema::new(&vs, decay),
                Err(resnext::trainer::EmaError::InvalidDecay { .. })
            ),
            "{decay}"
        );
        assert!(ema_decay_for(decay, 1, 128, 32, 10).is_err(), "{decay}");
    }
    assert!(ema_decay_for(0.0, 1, 128, 32, 10).is_err());
    assert!(ema_decay_for(0.9, 1, 128, 32, 0).is_err());
    // States.
    let mut adam = adamw((0.9, 0.999), 1e-8)
        .build(&vs, &ParamGroups::default())
        .unwrap();
    let w = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    let unknown = vec![("momentum/other.weight".to_string(), w.copy())];
    assert!(matches!(
        sgd.load_state(unknown),
        Err(OptimError::UnknownState { .. })
    ));
    let wrong_key = vec![("velocity/layer.weight".to_string(), w.copy())];
    assert!(matches!(
        sgd.load_state(wrong_key),
        Err(OptimError::UnknownState { .. })
    ));
    let shape = vec![(
        "momentum/layer.weight".to_string(),
        Tensor::zeros([4], (Kind::Float, Device::Cpu)),
    )];
    let err = sgd.load_state(shape).unwrap_err();
    assert!(
        matches!(&err, OptimError::StateShape { shape, expected, .. } if shape == &[4] && expected == &[3]),
        "{err}"
    );
    let sgd_state = vec![("momentum/layer.weight".to_string(), w.copy())];
    assert!(matches!(
        adam.load_state(sgd_state),
        Err(OptimError::UnknownState {
            optimizer: "adamw",
            ..
        })
    ));
    let partial = vec![
        ("step/layer.weight".to_string(), Tensor::from(2i64)),
        ("exp_avg/layer.weight".to_string(), w.copy()),
    ];
    assert!(matches!(
        adam.load_state(partial),
        Err(OptimError::IncompleteState { .. })
    ));
    let zero_step = vec![
        ("step/layer.weight".to_string(), Tensor::from(0i64)),
        ("exp_avg/layer.weight".to_string(), w.copy()),
        ("exp_avg_sq/layer.weight".to_string(), w.copy()),
    ];
    assert!(matches!(
        adam.load_state(zero_step),
        Err(OptimError::InvalidState { .. })
    ));
    let mut ema = Ema::new(&vs, 0.5).unwrap();
    let no_count = vec![("module.layer.weight".to_string(), w.copy())];
    assert!(ema.load_state(no_count).is_err());
    let extra = vec![
        ("n_averaged".to_string(), Tensor::from(1i64)),
        ("module.layer.weight".to_string(), w.copy()),
        ("module.layer.bias".to_string(), w.copy()),
    ];
    let err = ema.load_state(extra).unwrap_err().to_string();
    assert!(err.contains("layer.bias"), "{err}");
}
