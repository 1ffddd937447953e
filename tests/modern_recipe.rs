//! The modern recipe in the trainer: every new stage on at once (auto-augmentation, random
//! erasing, MixUp + CutMix, gradient accumulation, AdamW with parameter groups, clipping, EMA,
//! label smoothing) resumes bit for bit after a stop mid-epoch, each stage changes the run, and
//! the named recipes (`cifar`, `tutorial`, `torchvision-v2`) are configurations that flags and
//! files override, refused on resume when they change the run.
use std::collections::BTreeMap;
use std::path::Path;

use resnext::data::DataSplits;
use resnext::trainer::{
    check_same_recipe, recipe_config, recipe_names, Outcome, ProgressMode, Schedule, TrainConfig,
    Trainer, RECIPES,
};
use resnext::ResNeXt;
use tch::{Device, Tensor};

mod common;
use common::seeded;
use common::variables;

fn data() -> DataSplits {
    common::random_cifar(21, 96, 32)
}

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

/// Every new option on.
fn everything() -> TrainConfig {
    TrainConfig {
        opt: "adamw".into(),
        lr: 2e-3,
        weight_decay: 0.05,
        norm_weight_decay: Some(0.0),
        clip_grad_norm: Some(1.0),
        label_smoothing: 0.1,
        auto_augment: Some("ta_wide".into()),
        random_erase: 0.25,
        mixup_alpha: 0.2,
        cutmix_alpha: 1.0,
        grad_accum_steps: 2,
        model_ema: true,
        model_ema_steps: 2,
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

/// Turns one option of [`everything`] off.
type TurnOff = fn(&mut TrainConfig);

#[test]
fn a_run_with_every_new_stage_resumes_bitwise_and_each_stage_acts() {
    let data = data();
    let whole = run(everything(), &data);
    let dir = tempfile::tempdir().unwrap();
    let resumed = common::stopped_and_resumed(everything(), dir.path(), &data, (2, 2));
    let again = variables(&resumed);
    for (name, x) in &whole {
        assert!(x.equal(&again[name]), "{name} differs after resume");
    }
    // Each stage, turned off alone, changes the weights.
    let off: [(&str, TurnOff); 5] = [
        ("auto_augment", |c| c.auto_augment = None),
        ("random_erase", |c| c.random_erase = 0.0),
        ("mixup_alpha", |c| c.mixup_alpha = 0.0),
        ("cutmix_alpha", |c| c.cutmix_alpha = 0.0),
        ("grad_accum_steps", |c| c.grad_accum_steps = 1),
    ];
    for (field, turn_off) in off {
        let mut cfg = everything();
        turn_off(&mut cfg);
        let other = run(cfg, &data);
        assert!(
            whole.iter().any(|(n, x)| !x.equal(&other[n])),
            "{field} changes nothing"
        );
    }
}

#[test]
fn recipes_are_configurations_with_a_reason_for_every_setting() {
    assert_eq!(
        recipe_names(),
        ["cifar", "tutorial", "torchvision-v2", "fast"]
    );
    // `cifar` is the defaults.
    assert_eq!(recipe_config("cifar").unwrap(), TrainConfig::default());
    for recipe in RECIPES {
        let cfg = recipe_config(recipe.name).unwrap();
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", recipe.name));
        assert_eq!(cfg.recipe, recipe.name);
        for s in recipe.settings {
            assert!(
                s.reason.len() > 5,
                "{}: {} has no reason",
                recipe.name,
                s.field
            );
            // Every setting lands in its field.
            let json: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap();
            let want: serde_json::Value = serde_json::from_str(s.value).unwrap();
            assert_eq!(json[s.field], want, "{}: {}", recipe.name, s.field);
        }
    }
    let tutorial = recipe_config("tutorial").unwrap();
    assert_eq!(tutorial.schedule, Schedule::Constant);
    assert_eq!(tutorial.normalization.mean, [0.5; 3]);
    let v2 = recipe_config("torchvision-v2").unwrap();
    assert_eq!(v2.auto_augment.as_deref(), Some("ta_wide"));
    assert_eq!(
        (v2.mixup_alpha, v2.cutmix_alpha, v2.random_erase),
        (0.2, 1.0, 0.1)
    );
    assert!(v2.model_ema && v2.norm_weight_decay == Some(0.0));
}

#[test]
fn a_config_file_names_its_recipe_and_overrides_it() {
    let cfg = TrainConfig::from_json(r#"{ "recipe": "torchvision-v2", "epochs": 8 }"#).unwrap();
    assert_eq!((cfg.epochs, cfg.lr, cfg.warmup_epochs), (8, 0.0625, 5));
    // The recipe's 5 warm-up epochs do not fit in 5 epochs: refused, naming the field.
    let e = TrainConfig::from_json(r#"{ "recipe": "torchvision-v2", "epochs": 5 }"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("warmup_epochs"), "{e}");
    let e = TrainConfig::from_json(r#"{ "recipe": "airbench" }"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("airbench") && e.contains("cifar, tutorial, torchvision-v2"),
        "{e}"
    );
    // A file read over a recipe given apart (`--recipe` with `--config`): the file's fields
    // over that recipe, whatever recipe the file names.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.json");
    std::fs::write(&path, r#"{ "recipe": "torchvision-v2", "epochs": 7 }"#).unwrap();
    let over = TrainConfig::read_file(&path, Some("tutorial")).unwrap();
    assert_eq!((over.recipe.as_str(), over.epochs), ("tutorial", 7));
    assert_eq!(over.schedule, Schedule::Constant);
    assert_eq!(TrainConfig::read_file(&path, None).unwrap().lr, 0.0625);
    // Without a recipe, a file means what it always meant.
    let old = TrainConfig::from_json(r#"{ "model": "tiny" }"#).unwrap();
    assert_eq!(old.recipe, "cifar");
    assert_eq!(old.lr, TrainConfig::default().lr);
}

#[test]
fn resuming_under_another_recipe_names_what_it_would_change() {
    let saved = recipe_config("cifar").unwrap();
    check_same_recipe(&saved, "cifar").unwrap();
    let e = check_same_recipe(&saved, "tutorial")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"cifar\""), "{e}");
    assert!(e.contains("schedule \"cosine\" -> \"constant\""), "{e}");
    assert!(e.contains("normalization"), "{e}");
}

#[test]
fn the_lr_multiplier_of_batch_norm_biases_reaches_their_group_only() {
    let cfg = TrainConfig {
        norm_bias_lr_multiplier: Some(64.0),
        norm_weight_decay: Some(0.0),
        ..plain()
    };
    let vs = tch::nn::VarStore::new(Device::Cpu);
    // Under the lock of the global generator: the other tests seed it around their builds.
    let _net = seeded(|| ResNeXt::new(&vs.root(), &cfg.model_config().unwrap()));
    let opt = cfg.build_optimizer(&vs).unwrap();
    let settings: BTreeMap<String, (f64, f64)> = opt
        .parameters()
        .iter()
        .zip(opt.settings())
        .map(|((n, _), s)| (n.clone(), (s.lr_multiplier, s.weight_decay)))
        .collect();
    // A BN bias: 64x, and the norm parameters' decay (no bias decay of its own is set).
    assert_eq!(settings["bn1.bias"], (64.0, 0.0));
    assert_eq!(settings["layer1.0.downsample.1.bias"], (64.0, 0.0));
    // A BN weight keeps the step's rate; a convolution its decay too; the classifier's bias is
    // not a BN bias.
    assert_eq!(settings["bn1.weight"], (1.0, 0.0));
    assert_eq!(settings["conv1.weight"], (1.0, 5e-4));
    assert_eq!(settings["fc.bias"], (1.0, 5e-4));
    for bad in [0.0, -1.0, f64::INFINITY] {
        let e = TrainConfig {
            norm_bias_lr_multiplier: Some(bad),
            ..plain()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("norm_bias_lr_multiplier"), "{e}");
    }
}

#[test]
fn bad_values_of_the_new_fields_are_named() {
    let bad = |cfg: TrainConfig| cfg.validate().unwrap_err().to_string();
    let e = bad(TrainConfig {
        grad_accum_steps: 3,
        ..plain()
    });
    assert!(
        e.contains("grad_accum_steps") && e.contains("divisor of batch_size 16"),
        "{e}"
    );
    let e = bad(TrainConfig {
        grad_accum_steps: 0,
        ..plain()
    });
    assert!(e.contains("grad_accum_steps"), "{e}");
    let e = bad(TrainConfig {
        auto_augment: Some("autoaug".into()),
        ..plain()
    });
    assert!(e.contains("auto_augment") && e.contains("ta_wide"), "{e}");
    let e = bad(TrainConfig {
        auto_augment: Some("ra".into()),
        ra_magnitude: 40,
        ..plain()
    });
    assert!(e.contains("ra_magnitude") && e.contains("40"), "{e}");
    let e = bad(TrainConfig {
        random_erase: -0.1,
        ..plain()
    });
    assert!(e.contains("random_erase"), "{e}");
    let e = bad(TrainConfig {
        mixup_alpha: 0.2,
        batch_size: 1,
        ..plain()
    });
    assert!(e.contains("batch_size") && e.contains("mixup"), "{e}");
    let e = bad(TrainConfig {
        cutmix_alpha: f64::NAN,
        ..plain()
    });
    assert!(e.contains("cutmix_alpha"), "{e}");
}
