//! Recipes: named training configurations shipped with the crate (`--recipe NAME`, the
//! `recipe` field of a [`TrainConfig`]), each a list of settings over the defaults with the
//! reason beside every number, as airbench's `hyp` does. A configuration file or a flag still
//! overrides any of them: a recipe is where a run starts, not a lock.
//!
//! * `cifar`: the defaults ([`TrainConfig::default`]), the widely used PyTorch CIFAR-10 recipe;
//! * `tutorial`: the tutorial this crate started from, literally;
//! * `fast`: airbench94's hyper-parameters on the `resnext_fast` network, for time to
//!   accuracy (see [`recipe_fast`](super::recipe_fast));
//! * `torchvision-v2`: torchvision's "How to train state-of-the-art models using TorchVision's
//!   latest primitives" recipe (the one that took ResNet-50 from 76.1% to 80.9% on ImageNet),
//!   adapted to CIFAR-10 where its numbers are ImageNet's, each adaptation said.
use serde_json::Value;

use super::recipe_fast::{FAST, FAST_MODEL};
use super::{TrainConfig, TrainError};

/// One setting of a recipe: a [`TrainConfig`] field, its value as JSON, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The field of [`TrainConfig`] (its JSON name).
    pub field: &'static str,
    /// The value, as JSON.
    pub value: &'static str,
    /// Why this value.
    pub reason: &'static str,
}

/// A named recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// Its name (`--recipe NAME`).
    pub name: &'static str,
    /// What it is, in one sentence.
    pub about: &'static str,
    /// The settings over [`TrainConfig::default`], in order.
    pub settings: &'static [Setting],
}

pub(super) const fn set(field: &'static str, value: &'static str, reason: &'static str) -> Setting {
    Setting {
        field,
        value,
        reason,
    }
}

/// The recipe of the defaults.
pub const DEFAULT_RECIPE: &str = "cifar";

/// Every recipe, `cifar` (the defaults) first.
pub const RECIPES: [Recipe; 4] = [
    Recipe {
        name: "cifar",
        about: "the defaults: SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine over 200 \
                epochs, batch 128, crop + flip (the widely used PyTorch CIFAR-10 recipe)",
        settings: &[],
    },
    Recipe {
        name: "tutorial",
        about: "the tutorial this crate started from, literally (its architecture bugs are not \
                reproduced, only its training settings)",
        settings: &[
            set("schedule", "\"constant\"", "the tutorial never changes its lr of 0.1"),
            set("lr", "0.1", "the tutorial's"),
            set("batch_size", "128", "the tutorial's"),
            set("epochs", "200", "the tutorial's"),
            set(
                "normalization",
                r#"{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#,
                "the tutorial's Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), not CIFAR's statistics",
            ),
        ],
    },
    Recipe {
        name: "torchvision-v2",
        about: "torchvision's state-of-the-art recipe (ResNet-50 76.1% -> 80.9% on ImageNet), \
                adapted to CIFAR-10 where its numbers are ImageNet's",
        settings: TORCHVISION_V2,
    },
    Recipe {
        name: "fast",
        about: "time to accuracy on CIFAR-10: airbench94's hyper-parameters on the resnext_fast \
                network, its batch and epochs fitted to 2 CPU cores (Nesterov SGD, triangle lr, \
                lookahead, label smoothing 0.2, alternating flip, reflect translation, TTA)",
        settings: FAST,
    },
];

/// A warning for a configuration that uses a recipe outside what it was designed for (`fast`
/// with another model than `resnext_fast` or images that are not 32x32), once per run; `None`
/// otherwise.
pub fn recipe_warning(cfg: &TrainConfig) -> Option<String> {
    if cfg.recipe != "fast" {
        return None;
    }
    let mut off = Vec::new();
    if cfg.model != FAST_MODEL {
        off.push(format!(
            "model {} (it was designed for {FAST_MODEL})",
            cfg.model
        ));
    }
    if cfg.image_size != 32 {
        off.push(format!(
            "{0}x{0} images (it was designed for 32x32)",
            cfg.image_size
        ));
    }
    (!off.is_empty()).then(|| {
        format!(
            "warning: the fast recipe runs with {}; its settings were tuned for {FAST_MODEL} \
             on 32x32 images",
            off.join(" and ")
        )
    })
}

/// torchvision's blog recipe: `--lr 0.5 --lr-scheduler cosineannealinglr --lr-warmup-epochs 5
/// --auto-augment ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002
/// --norm-weight-decay 0.0 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0
/// --model-ema` on 8 GPUs of batch 128. Left out, with the reason: `--train-crop-size 176` and
/// `--val-resize-size 232` (ImageNet resolutions; CIFAR keeps 32 with the pad-and-crop),
/// `--ra-sampler --ra-reps 4` (repeated augmentation is not implemented), the warm-up's start
/// at 1% of the lr (ours rises linearly from lr / 6 over 5 epochs).
const TORCHVISION_V2: &[Setting] = &[
    set(
        "lr",
        "0.0625",
        "the blog's 0.5 for 8 x 128 images per step, scaled linearly to one process of 128 \
         (adapted: the blog trains on 8 GPUs)",
    ),
    set("schedule", "\"cosine\"", "the blog's cosineannealinglr"),
    set(
        "warmup_epochs",
        "5",
        "the blog's --lr-warmup-epochs 5 (linear)",
    ),
    set(
        "epochs",
        "600",
        "the blog's: the long schedule the extra regularisation needs",
    ),
    set(
        "weight_decay",
        "2e-5",
        "the blog's, tuned together with the EMA and the mixing",
    ),
    set(
        "norm_weight_decay",
        "0.0",
        "the blog's: no decay on BatchNorm parameters",
    ),
    set("label_smoothing", "0.1", "the blog's"),
    set(
        "auto_augment",
        "\"ta_wide\"",
        "the blog's TrivialAugmentWide",
    ),
    set("random_erase", "0.1", "the blog's"),
    set("mixup_alpha", "0.2", "the blog's"),
    set(
        "cutmix_alpha",
        "1.0",
        "the blog's (one of the two per batch, probability 1/2)",
    ),
    set("model_ema", "true", "the blog's --model-ema"),
    set(
        "model_ema_steps",
        "32",
        "the blog's (torchvision's default)",
    ),
    set(
        "model_ema_decay",
        "0.99998",
        "the blog's (torchvision's default)",
    ),
];

/// The names of [`RECIPES`].
pub fn recipe_names() -> Vec<&'static str> {
    RECIPES.iter().map(|r| r.name).collect()
}

/// The recipe called `name`.
///
/// # Errors
/// [`TrainError::InvalidConfig`] listing the recipes for an unknown name.
pub fn find_recipe(name: &str) -> Result<&'static Recipe, TrainError> {
    RECIPES
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| TrainError::InvalidConfig {
            field: "recipe",
            value: name.to_string(),
            expected: format!("one of {}", recipe_names().join(", ")),
        })
}

/// The configuration of recipe `name` as a JSON object: the defaults, its settings, and
/// `"recipe": name`.
///
/// # Errors
/// As [`find_recipe`].
pub fn recipe_json(name: &str) -> Result<serde_json::Map<String, Value>, TrainError> {
    let recipe = find_recipe(name)?;
    let Value::Object(mut object) =
        serde_json::to_value(TrainConfig::default()).map_err(|e| json_error(e.to_string()))?
    else {
        return Err(json_error("the defaults are not a JSON object".into()));
    };
    for s in recipe.settings {
        let value: Value = serde_json::from_str(s.value)
            .map_err(|e| json_error(format!("recipe {name}, {}: {e}", s.field)))?;
        object.insert(s.field.to_string(), value);
    }
    object.insert("recipe".into(), Value::String(name.to_string()));
    Ok(object)
}

/// The configuration of recipe `name`, not yet validated.
///
/// # Errors
/// As [`find_recipe`].
pub fn recipe_config(name: &str) -> Result<TrainConfig, TrainError> {
    serde_json::from_value(Value::Object(recipe_json(name)?))
        .map_err(|e| json_error(format!("recipe {name}: {e}")))
}

fn json_error(message: String) -> TrainError {
    TrainError::ConfigJson {
        path: None,
        message,
    }
}

/// Checks that a run trained with `saved`'s recipe may continue under recipe `name`.
///
/// # Errors
/// [`TrainError::InvalidConfig`] naming the recipe of the run and the fields that differ
/// between the two recipes, when `name` is another recipe.
pub fn check_same_recipe(saved: &TrainConfig, name: &str) -> Result<(), TrainError> {
    if saved.recipe == name {
        return Ok(());
    }
    let (a, b) = (recipe_json(&saved.recipe)?, recipe_json(name)?);
    let changed: Vec<String> = b
        .iter()
        .filter(|(k, v)| k.as_str() != "recipe" && a.get(k.as_str()) != Some(v))
        .map(|(k, v)| format!("{k} {} -> {v}", a.get(k.as_str()).unwrap_or(&Value::Null)))
        .collect();
    Err(TrainError::InvalidConfig {
        field: "recipe",
        value: name.to_string(),
        expected: format!(
            "the run's own recipe {:?} when resuming ({name} would change {})",
            saved.recipe,
            if changed.is_empty() {
                "nothing but its name".to_string()
            } else {
                changed.join(", ")
            }
        ),
    })
}
