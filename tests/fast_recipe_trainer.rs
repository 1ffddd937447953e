//! Pieces of airbench94's CIFAR-10 speed recipe in the trainer, against airbench 0.1.8 itself:
//! the per-step `triangle` schedule (airbench's own `triangle`, taken from the source of
//! `airbench.utils.train`, under its `LambdaLR`) and the lookahead
//! (`airbench.utils.LookaheadState` with the schedule of `airbench.utils.train`); a run with
//! both, stopped mid-epoch and resumed, bit for bit; their bad values refused.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use resnext::data::DataSplits;
use resnext::io::{read_safetensors, write_safetensors};
use resnext::trainer::{
    LookaheadCallback, Outcome, ProgressMode, Schedule, StepContext, TrainCallback, TrainConfig,
    TrainError, Trainer,
};
use resnext::ResNeXt;
use tch::{nn, Device, Tensor};

mod common;
use common::variables;
#[path = "common/python.rs"]
mod python;
use common::seeded;

/// Runs airbench's `triangle` (extracted from `airbench.utils.train` by `inspect`, executed in
/// float64, then as airbench runs it in float32) under `LambdaLR` on SGD for every case
/// `[T, base, start, peak, end]` of argv[1] (JSON), and `OneCycleLR` with the matching
/// parameters; writes to argv[2], per case, the lr of every update (read before
/// `optimizer.step()`).
const TRIANGLE: &str = r#"
import inspect, json, sys, textwrap, torch
import airbench.utils as u
lines = inspect.getsource(u.train).splitlines()
i = next(k for k, l in enumerate(lines) if l.strip().startswith('def triangle'))
j = next(k for k in range(i + 1, len(lines)) if not lines[k].startswith(' ' * 8))
ns = {'torch': torch}
exec(textwrap.dedent('\n'.join(lines[i:j])), ns)
triangle = ns['triangle']

def lambda_lrs(T, base, schedule):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: float(schedule[i]))
    out = []
    for _ in range(T):
        out.append(float(opt.param_groups[0]['lr']))
        opt.step()
        sched.step()
    return out

def one_cycle(T, base, start, peak, end):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=base, total_steps=T,
        pct_start=peak, anneal_strategy='linear', div_factor=1 / start,
        final_div_factor=start / end, three_phase=False, cycle_momentum=False)
    out = []
    for _ in range(T):
        out.append(float(opt.param_groups[0]['lr']))
        opt.step()
        sched.step()
    return out

cases = json.loads(sys.argv[1])
f32 = [lambda_lrs(T, b, triangle(T, start=s, end=e, peak=p)) for T, b, s, p, e in cases]
torch.set_default_dtype(torch.float64)
f64 = [lambda_lrs(T, b, triangle(T, start=s, end=e, peak=p)) for T, b, s, p, e in cases]
# OneCycleLR cannot start or end at 0 (div_factor 1/start, final_div_factor start/end).
oc = [one_cycle(T, b, s, p, e) if s > 0 and e > 0 else None for T, b, s, p, e in cases]
with open(sys.argv[2], 'w') as f:
    json.dump({'f64': f64, 'f32': f32, 'one_cycle': oc}, f)
print('airbench triangle of', len(cases), 'cases')
"#;

/// `(epochs, batches per epoch, lr, start, peak, end)`.
type Case = (usize, usize, f64, f64, f64, f64);

const CASES: [Case; 5] = [
    (10, 97, 2.0, 0.2, 0.23, 0.07),
    (2, 6, 0.05, 0.2, 0.23, 0.07),
    (3, 7, 0.1, 0.5, 0.5, 0.1),
    (1, 3, 1.0, 0.3, 0.2, 0.0), // int(0.2 * 3) = 0: no rise, step 0 at the peak
    (5, 200, 0.4, 0.0, 0.9, 1.5),
];

/// airbench's lr of every update of every case: float64, float32 (as airbench runs) and
/// PyTorch's OneCycleLR.
fn reference_lrs(cases: &[Case]) -> serde_json::Value {
    let args: Vec<_> = cases
        .iter()
        .map(|&(e, b, lr, s, p, end)| serde_json::json!([e * b, lr, s, p, end]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lrs.json");
    let cases = serde_json::to_string(&args).unwrap();
    python::run_python(TRIANGLE, &[&cases, path.to_str().unwrap()]);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn triangle_config(case: Case) -> TrainConfig {
    let (epochs, _, lr, start, peak, end) = case;
    TrainConfig {
        schedule: Schedule::Triangle,
        epochs,
        lr,
        lr_start_factor: start,
        lr_peak_fraction: peak,
        lr_end_factor: end,
        ..TrainConfig::default()
    }
}

fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let rel = |(g, w): (&f64, &f64)| (g - w).abs() / w.abs().max(1e-300);
    got.iter().zip(want).map(rel).fold(0.0, f64::max)
}

fn as_f64s(v: &serde_json::Value) -> Vec<f64> {
    let list = v.as_array().unwrap();
    list.iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn triangle_gives_airbench_lr_at_every_step() {
    let reference = reference_lrs(&CASES);
    for (k, &case) in CASES.iter().enumerate() {
        let cfg = triangle_config(case);
        cfg.validate().unwrap();
        let per_epoch = case.1;
        let ours: Vec<f64> = (0..cfg.epochs * per_epoch)
            .map(|s| cfg.lr_at_step(s / per_epoch, s % per_epoch, per_epoch))
            .collect();
        let f64_diff = max_rel(&ours, &as_f64s(&reference["f64"][k]));
        let f32_diff = max_rel(&ours, &as_f64s(&reference["f32"][k]));
        let one_cycle = &reference["one_cycle"][k];
        let oc_diff = match one_cycle.is_null() {
            true => f64::NAN,
            false => max_rel(&ours, &as_f64s(one_cycle)),
        };
        eprintln!(
            "case {case:?}: max relative difference {f64_diff:.2e} to airbench's triangle in \
             float64, {f32_diff:.2e} to it in float32 (as airbench runs), {oc_diff:.2e} to OneCycleLR"
        );
        assert!(f64_diff <= 1e-12, "case {case:?}: {f64_diff}");
        // airbench's float32 `m * x + b` rounds to about 1e-6 of the larger terms.
        assert!(f32_diff <= 1e-5, "case {case:?}: {f32_diff}");
    }
}

/// Records the lr of every update.
struct LrLog(Rc<RefCell<Vec<f64>>>);

impl TrainCallback for LrLog {
    fn section(&self) -> &str {
        "lr_log"
    }
    fn after_step(&mut self, ctx: &StepContext<'_>) -> Result<(), TrainError> {
        self.0.borrow_mut().push(ctx.lr);
        Ok(())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn load_state(&mut self, _: Vec<(String, Tensor)>) -> Result<(), TrainError> {
        Ok(())
    }
}

fn data() -> DataSplits {
    common::random_cifar(21, 96, 32)
}

/// Two epochs of 6 batches of 16 on a tiny model.
fn plain() -> TrainConfig {
    TrainConfig {
        model: "tiny".into(),
        epochs: 2,
        batch_size: 16,
        lr: 0.05,
        device: "cpu".into(),
        ..TrainConfig::default()
    }
}

/// airbench's two pieces on [`plain`]: the triangle schedule and a lookahead every 2 steps.
fn fast() -> TrainConfig {
    TrainConfig {
        schedule: Schedule::Triangle,
        lookahead: true,
        lookahead_steps: 2,
        ..plain()
    }
}

fn trainer(cfg: TrainConfig, dir: &Path) -> Trainer<ResNeXt> {
    let mut t = seeded(|| Trainer::resnext(cfg).unwrap())
        .with_run_dir(dir)
        .unwrap();
    t.set_progress(ProgressMode::Silent);
    t
}

fn run(cfg: TrainConfig, data: &DataSplits) -> BTreeMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(cfg, dir.path());
    assert!(matches!(t.fit(data).unwrap(), Outcome::Completed(_)));
    variables(&t)
}

#[test]
fn the_trainer_steps_with_lr_at_step() {
    let data = data();
    let reference = reference_lrs(&[CASES[1]]);
    for cfg in [triangle_config(CASES[1]), plain()] {
        let cfg = TrainConfig {
            model: "tiny".into(),
            batch_size: 16,
            device: "cpu".into(),
            limit_test: Some(16),
            ..cfg
        };
        let log = Rc::new(RefCell::new(Vec::new()));
        let dir = tempfile::tempdir().unwrap();
        let mut t = trainer(cfg.clone(), dir.path())
            .with_callback(LrLog(Rc::clone(&log)))
            .unwrap();
        assert!(matches!(t.fit(&data).unwrap(), Outcome::Completed(_)));
        let lrs = log.borrow().clone();
        assert_eq!(lrs.len(), 12);
        let per_epoch: Vec<f64> = (0..12).map(|s| cfg.lr_at_step(s / 6, s % 6, 6)).collect();
        assert_eq!(lrs, per_epoch);
        let metrics: Vec<f64> = t.state().metrics.iter().map(|m| m.lr).collect();
        assert_eq!(
            metrics,
            vec![lrs[0], lrs[6]],
            "an epoch's lr is its first step's"
        );
        match cfg.schedule {
            Schedule::Triangle => {
                let diff = max_rel(&lrs, &as_f64s(&reference["f64"][0]));
                assert!(diff <= 1e-12, "{diff}");
            }
            // The epoch schedules: one lr per epoch, `lr_at`'s, as before.
            _ => assert!(lrs
                .iter()
                .enumerate()
                .all(|(s, &lr)| lr == cfg.lr_at(s / 6))),
        }
    }
}

/// Applies the fake updates of `deltas` (step `t`: `{t}.{name}`) to the variables in turn,
/// airbench's lookahead schedule over them (`airbench.utils.train`'s three lines, with
/// `LookaheadState` imported from airbench), and saves the net and the slow copies.
const LOOKAHEAD: &str = r#"
import sys, torch
from airbench.utils import LookaheadState
from safetensors.torch import load_file, save_file
d, T, k, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
missing, unexpected = net.load_state_dict(load_file(d + '/init.safetensors'), strict=False)
assert not unexpected and all(k.endswith('num_batches_tracked') for k in missing), (missing, unexpected)
deltas = load_file(d + '/deltas.safetensors')
lookahead_state = LookaheadState(net)
alpha_schedule = base**k * (torch.arange(T + 1) / T)**3
with torch.no_grad():
    for t in range(1, T + 1):
        for name, v in net.state_dict().items():
            if v.dtype == torch.float:
                v.add_(deltas[f'{t}.{name}'])
        if t % k == 0:
            lookahead_state.update(net, decay=alpha_schedule[t].item())
        if t >= T:
            lookahead_state.update(net, decay=1.0)
out = {'net.' + n: v.contiguous() for n, v in net.state_dict().items() if v.dtype == torch.float}
out.update({'slow.' + n: v for n, v in lookahead_state.net_ema.items() if v.dtype == torch.float})
save_file(out, d + '/out.safetensors')
print('airbench lookahead over', T, 'steps, k =', k)
"#;

/// A linear layer and a BatchNorm with random weights and statistics, torch's names.
fn small_net() -> nn::VarStore {
    let vs = nn::VarStore::new(Device::Cpu);
    seeded(|| {
        tch::manual_seed(5);
        let _ = nn::linear(vs.root() / "0", 6, 4, Default::default());
        let _ = nn::batch_norm1d(vs.root() / "1", 4, Default::default());
        common::tensors::randomize_batch_norms(&vs);
    });
    vs
}

fn lookahead_against_airbench(total: usize, steps: usize, decay: f64) {
    let dir = tempfile::tempdir().unwrap();
    let vs = small_net();
    let init: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    write_safetensors(&dir.path().join("init.safetensors"), &init, None).unwrap();
    let deltas: Vec<(String, Tensor)> = seeded(|| {
        tch::manual_seed(9);
        (1..=total)
            .flat_map(|t| init.iter().map(move |(n, v)| (t, n, v.size())))
            .map(|(t, n, size)| {
                (
                    format!("{t}.{n}"),
                    Tensor::randn(size, tch::kind::FLOAT_CPU) * 0.1,
                )
            })
            .collect()
    });
    write_safetensors(&dir.path().join("deltas.safetensors"), &deltas, None).unwrap();
    let d = dir.path().to_str().unwrap();
    let (t, k, base) = (total.to_string(), steps.to_string(), decay.to_string());
    python::run_python(LOOKAHEAD, &[d, &t, &k, &base]);
    let mut la = LookaheadCallback::new(&vs, steps, decay).unwrap();
    let delta: BTreeMap<String, Tensor> = deltas.into_iter().collect();
    for t in 1..=total {
        tch::no_grad(|| {
            for (name, mut v) in vs.variables() {
                let _ = v.f_add_(&delta[&format!("{t}.{name}")]).unwrap();
            }
        });
        let ctx = StepContext {
            vars: &vs,
            epoch: 0,
            batch: t - 1,
            skipped: false,
            lr: 0.1,
            step: t,
            total_steps: total,
        };
        la.after_step(&ctx).unwrap();
    }
    let want: BTreeMap<String, Tensor> = read_safetensors(&dir.path().join("out.safetensors"))
        .unwrap()
        .tensors
        .into_iter()
        .collect();
    let ours = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (format!("net.{n}"), t));
    let slow = la
        .slow()
        .iter()
        .map(|(n, t)| (format!("slow.{n}"), t.shallow_clone()));
    let ours: BTreeMap<String, Tensor> = ours.chain(slow).collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut worst = 0.0f64;
    for (name, got) in &ours {
        let diff = common::tensors::max_rel_diff(got, &want[name]);
        assert!(diff <= 1e-6, "{name}: {diff}");
        worst = worst.max(diff);
    }
    eprintln!("lookahead T={total} k={steps} decay={decay}: max relative difference {worst:.2e}");
}

#[test]
fn lookahead_matches_airbench() {
    lookahead_against_airbench(23, 5, 0.95);
    lookahead_against_airbench(20, 5, 0.95);
    lookahead_against_airbench(17, 3, 0.9);
}

#[test]
fn a_run_with_triangle_and_lookahead_resumes_bitwise() {
    let data = data();
    let whole = run(fast(), &data);
    let dir = tempfile::tempdir().unwrap();
    let resumed = common::stopped_and_resumed(fast(), dir.path(), &data, (2, 2));
    let again = variables(&resumed);
    for (name, x) in &whole {
        assert!(x.equal(&again[name]), "{name} differs after resume");
    }
    // The lookahead acts: without it the weights differ.
    let without = run(
        TrainConfig {
            lookahead: false,
            ..fast()
        },
        &data,
    );
    assert!(whole.iter().any(|(n, x)| !x.equal(&without[n])));
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    type Set = fn(&mut TrainConfig);
    let bad: [(&str, Set); 12] = [
        ("lookahead_steps", |c| c.lookahead_steps = 0),
        ("lookahead_decay", |c| c.lookahead_decay = 1.5),
        ("lookahead_decay", |c| c.lookahead_decay = -0.1),
        ("lookahead_decay", |c| c.lookahead_decay = f64::NAN),
        ("lr_start_factor", |c| c.lr_start_factor = -0.1),
        ("lr_start_factor", |c| c.lr_start_factor = f64::INFINITY),
        ("lr_end_factor", |c| c.lr_end_factor = f64::NAN),
        ("lr_peak_fraction", |c| c.lr_peak_fraction = 0.0),
        ("lr_peak_fraction", |c| c.lr_peak_fraction = 1.0),
        ("lr_peak_fraction", |c| c.lr_peak_fraction = f64::NAN),
        ("warmup_epochs", |c| c.warmup_epochs = 1),
        ("schedule", |_| {}),
    ];
    for (field, set) in bad {
        let mut cfg = fast();
        set(&mut cfg);
        let err = match field {
            "schedule" => "linear".parse::<Schedule>().map(|_| ()),
            _ => cfg.validate(),
        };
        match err {
            Err(TrainError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
    // The callback refuses them too, and a trainer is not built.
    let vs = small_net();
    assert!(LookaheadCallback::new(&vs, 0, 0.9).is_err());
    assert!(LookaheadCallback::new(&vs, 5, f64::NAN).is_err());
    let refused = Trainer::resnext(TrainConfig {
        lookahead_steps: 0,
        ..fast()
    });
    assert!(matches!(
        refused,
        Err(TrainError::InvalidConfig {
            field: "lookahead_steps",
            ..
        })
    ));
}

#[test]
fn old_configurations_load_with_the_defaults() {
    let cfg = TrainConfig::from_json(r#"{ "model": "tiny", "epochs": 3 }"#).unwrap();
    assert_eq!(cfg.schedule, Schedule::Cosine);
    assert!(!cfg.lookahead);
    assert_eq!((cfg.lookahead_steps, cfg.lookahead_decay), (5, 0.95));
    let shape = (cfg.lr_start_factor, cfg.lr_peak_fraction, cfg.lr_end_factor);
    assert_eq!(shape, (0.2, 0.23, 0.07));
    let json = r#"{ "schedule": "triangle", "lr_peak_fraction": 0.3, "lookahead": true }"#;
    let cfg = TrainConfig::from_json(json).unwrap();
    assert_eq!(
        (cfg.schedule, cfg.lr_peak_fraction),
        (Schedule::Triangle, 0.3)
    );
    assert!(cfg.lookahead);
    let back = TrainConfig::from_json(&cfg.to_json()).unwrap();
    assert_eq!(back, cfg);
}

/// The BatchNorm weights of `vars` (torchvision's names: `bn*.weight`, `downsample.1.weight`).
fn norm_weights(vars: &BTreeMap<String, Tensor>) -> Vec<(&String, &Tensor)> {
    vars.iter()
        .filter(|(n, _)| {
            n.ends_with(".weight")
                && (n.contains(".bn") || n.starts_with("bn") || n.contains("downsample.1"))
        })
        .collect()
}

#[test]
fn frozen_norm_weights_stay_at_one_while_everything_else_trains() {
    let data = data();
    let start = {
        let t = trainer(plain(), tempfile::tempdir().unwrap().path());
        variables(&t)
    };
    // Weight decay is on: a frozen weight that reached the optimiser would shrink.
    let cfg = |freeze| TrainConfig {
        freeze_norm_weights: freeze,
        weight_decay: 5e-2,
        limit_test: Some(16),
        ..plain()
    };
    let frozen = run(cfg(true), &data);
    let trained = run(cfg(false), &data);
    let bn = norm_weights(&frozen);
    assert_eq!(
        bn.len(),
        13,
        "tiny: the stem's BN, 3 stages of 3 BN and a projection's: {:?}",
        bn.iter().map(|b| b.0).collect::<Vec<_>>()
    );
    for (name, w) in bn {
        assert!(w.equal(&start[name]), "{name} changed although frozen");
        assert_eq!(w.min().double_value(&[]), 1.0, "{name}");
        assert!(
            !trained[name].equal(&start[name]),
            "{name}: unfrozen, it trains"
        );
    }
    for (name, x) in &frozen {
        let is_norm_weight = norm_weights(&frozen).iter().any(|(n, _)| *n == name);
        let is_buffer = name.ends_with("running_mean") || name.ends_with("running_var");
        if !is_norm_weight && !is_buffer {
            assert!(!x.equal(&start[name]), "{name} did not train");
        }
    }
}

#[test]
fn architecture_sizes_override_the_preset() {
    let cfg = TrainConfig {
        blocks: Some(vec![2, 1, 1]),
        cardinality: Some(4),
        base_width: Some(16),
        logit_scale: Some(0.5),
        limit_test: Some(16),
        ..plain()
    };
    let model = cfg.model_config().unwrap();
    assert_eq!(
        model.name,
        "tiny (blocks 2,1,1, cardinality 4, base width 16, logit scale 0.5)"
    );
    let tiny = resnext::ResNeXtConfig::tiny(10);
    assert_eq!(
        (model.blocks.clone(), model.cardinality, model.base_width),
        (vec![2, 1, 1], 4, 16)
    );
    assert_eq!((model.logit_scale, tiny.logit_scale), (0.5, 1.0));
    assert_eq!(
        (&model.planes, model.stem_channels, model.stem),
        (&tiny.planes, tiny.stem_channels, tiny.stem)
    );
    // The trainer builds that network and records it with the weights.
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(
        TrainConfig {
            epochs: 1,
            ..cfg.clone()
        },
        dir.path(),
    );
    let vars = variables(&t);
    // layer1: planes 16, width floor(16 * 16 / 64) * 4 = 16 in 4 groups of 4 channels.
    assert_eq!(vars["layer1.1.conv2.weight"].size(), [16, 4, 3, 3]);
    assert!(!vars.contains_key("layer2.1.conv1.weight"));
    assert!(matches!(t.fit(&data()).unwrap(), Outcome::Completed(_)));
    let meta = resnext::weights::read_weights_metadata(&dir.path().join("last.safetensors"))
        .unwrap()
        .expect("the trainer writes metadata");
    assert_eq!(meta.model, model);
    // JSON names them as the flags do, and a config without them keeps the preset's.
    let back = TrainConfig::from_json(&cfg.to_json()).unwrap();
    assert_eq!(back.model_config().unwrap(), model);
    let plain_model = TrainConfig::from_json(r#"{ "model": "tiny" }"#)
        .unwrap()
        .model_config()
        .unwrap();
    assert_eq!(plain_model, tiny);
    // Sizes that make no network are refused by name, before anything is built.
    type Set = fn(&mut TrainConfig);
    let bad: [(&str, Set); 6] = [
        ("blocks/planes", |c| c.blocks = Some(vec![1, 1])),
        ("blocks", |c| c.blocks = Some(vec![1, 0, 1])),
        ("cardinality", |c| c.cardinality = Some(0)),
        ("base_width", |c| c.base_width = Some(-4)),
        ("logit_scale", |c| c.logit_scale = Some(0.0)),
        ("logit_scale", |c| c.logit_scale = Some(f64::NAN)),
    ];
    for (field, set) in bad {
        let mut c = plain();
        set(&mut c);
        match (c.validate(), Trainer::resnext(c)) {
            (
                Err(TrainError::InvalidConfig { field: f, .. }),
                Err(TrainError::InvalidConfig { field: g, .. }),
            ) => {
                assert_eq!((f, g), (field, field))
            }
            (a, b) => panic!(
                "{field}: expected InvalidConfig, got {a:?} / {:?}",
                b.map(|_| ())
            ),
        }
    }
}

/// `train_cifar10 --print-config` with `args`: (exit code, stdout, stderr).
fn print_config(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(common::example("train_cifar10"))
        .args(["--recipe", "fast", "--print-config"])
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn print_config_prints_only_what_would_train() {
    // A valid override prints the JSON that `--config` reads back.
    let (code, stdout, stderr) = print_config(&["--blocks", "2,2,2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let back = TrainConfig::from_json(&stdout).unwrap();
    assert_eq!(back.blocks, Some(vec![2, 2, 2]));
    assert_eq!(back.model, "resnext_fast");
    // Sizes that make no network (two stages on a three-stage preset) are refused, by field,
    // and nothing is printed on stdout.
    let (code, stdout, stderr) = print_config(&["--blocks", "2,2"]);
    assert_ne!(code, Some(0));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("blocks"), "{stderr}");
}
