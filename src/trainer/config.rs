//! The training configuration, as data (serde, to and from JSON).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use super::{
    ema_decay_for, AdamWConfig, Ema, EmaSchedule, EmaWeights, GroupOverride, Optimizer,
    OptimizerConfig, ParamGroups, Precision, Schedule, SgdConfig, TrainError, TriangleShape,
    OPTIMIZER_NAMES,
};
use crate::data::{Augmentation, CropFlip, FlipMode, Normalization, PaddingMode};
use crate::device::{DeviceError, DeviceSpec, DEVICE_FORMS};
use crate::inference::Tta;
use crate::resnext::{ModelError, ResNeXtConfig, Stem, MODEL_NAMES};

/// Everything that defines a training run. Saved as `config.json` in the run directory and
/// inside every checkpoint, so a resumed run continues with exactly this.
///
/// Missing fields in JSON take their defaults, so a config file may name only what it changes:
///
/// ```
/// use resnext::trainer::{Schedule, TrainConfig};
/// let cfg = TrainConfig::from_json(r#"{ "model": "tiny", "epochs": 5 }"#).unwrap();
/// assert_eq!((cfg.epochs, cfg.batch_size, cfg.lr, cfg.schedule), (5, 128, 0.1, Schedule::Cosine));
/// assert!(TrainConfig::from_json(r#"{ "model": "resnet" }"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The recipe this configuration starts from (see [`recipe`](super::recipe)): in JSON,
    /// the fields a file names override the recipe's; `cifar`, the defaults, when absent.
    pub recipe: String,
    /// Model configuration name (see [`ResNeXtConfig::from_name`]).
    pub model: String,
    /// Number of classes of the classifier (10 for CIFAR-10; the number of class folders of
    /// an image-folder dataset). The trainer refuses data with another number of classes.
    pub num_classes: i64,
    /// The stem, overriding the preset's ([`Stem::Cifar`]); `null` keeps the preset's.
    pub stem: Option<Stem>,
    /// The stages' numbers of blocks instead of the preset's, for ablations (`--blocks`);
    /// `null` keeps the preset's. With [`planes`](Self::planes),
    /// [`cardinality`](Self::cardinality) and [`base_width`](Self::base_width) the network is
    /// the preset's layout (stem, downsampling, activation, BN momentum) with these sizes,
    /// named after the preset and what changed ([`TrainConfig::model_config`]).
    pub blocks: Option<Vec<usize>>,
    /// The stages' planes instead of the preset's (`--planes`); `null` keeps the preset's.
    pub planes: Option<Vec<i64>>,
    /// The number of groups (C) instead of the preset's (`--cardinality`); `null` keeps it.
    pub cardinality: Option<i64>,
    /// The group width at 64 planes (d) instead of the preset's (`--base-width`); `null`
    /// keeps it.
    pub base_width: Option<i64>,
    /// The factor on the logits instead of the preset's (`--logit-scale`; airbench's
    /// `scaling_factor`), a finite number above 0; `null` keeps it.
    pub logit_scale: Option<f64>,
    /// Side of the square images the network is trained on (32 for CIFAR-10). The trainer
    /// records it with the weights; the data pipeline makes images of this size.
    pub image_size: i64,
    /// Per-channel normalisation of the images (CIFAR-10's statistics by default; ImageNet's
    /// for image folders and pretrained weights), used for training and evaluation batches and
    /// recorded with the weights.
    pub normalization: Normalization,
    /// Initial weights (safetensors or PyTorch `.pth` state dict with torchvision's names)
    /// instead of a random initialisation; `null` for none. The classifier is replaced when
    /// its number of classes differs. Read when the run starts, not when it resumes.
    pub pretrained: Option<PathBuf>,
    /// Train the classifier (`fc`) only: every other parameter keeps its value. BatchNorm
    /// layers still update their running statistics in training mode, as in PyTorch with
    /// `requires_grad_(False)` on the backbone.
    pub freeze_backbone: bool,
    /// The BatchNorm weights (scales) keep their initial value, 1, and are not trained; the
    /// BatchNorm biases train (airbench's `BatchNorm(weight=False)`). Their running statistics
    /// update as always.
    pub freeze_norm_weights: bool,
    /// Train the stem's bias (`conv1.bias`, the whitening stem's) for this many epochs only,
    /// frozen from then on (airbench94's `whiten_bias_epochs`, 3; [`StemBiasFreeze`](super::StemBiasFreeze));
    /// `null`: it trains throughout. A model whose stem has no bias (every stem but the
    /// whitening one) has nothing to freeze: the setting does nothing there (the `fast` recipe
    /// sets it, and runs with other models).
    pub stem_bias_epochs: Option<usize>,
    /// Number of epochs.
    pub epochs: usize,
    /// Images per training batch.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// The optimiser, by torchvision's `--opt` name: `sgd` (`torch.optim.SGD` with `momentum`,
    /// `weight_decay`, `nesterov`) or `adamw` (`torch.optim.AdamW` with its default betas
    /// (0.9, 0.999) and eps 1e-8, and `weight_decay` as its decoupled decay).
    pub opt: String,
    /// SGD momentum (not read by AdamW).
    pub momentum: f64,
    /// Weight decay: SGD's L2 penalty added to the gradient, AdamW's decoupled decay; on every
    /// parameter unless `norm_weight_decay` / `bias_weight_decay` say otherwise.
    pub weight_decay: f64,
    /// Weight decay of the normalisation layers' parameters instead of `weight_decay`
    /// (torchvision's `--norm-weight-decay`; its recipe uses 0); `null`: `weight_decay`.
    pub norm_weight_decay: Option<f64>,
    /// Weight decay of every bias instead of `weight_decay`, before `norm_weight_decay`
    /// (torchvision's `--bias-weight-decay`); `null`: as the other parameters.
    pub bias_weight_decay: Option<f64>,
    /// The learning rate of BatchNorm biases is the step's times this (airbench's larger rate
    /// for them, 64 there); their weight decay stays that of a bias (`bias_weight_decay`, else
    /// `norm_weight_decay`, else `weight_decay`). `null`: the step's rate.
    pub norm_bias_lr_multiplier: Option<f64>,
    /// Nesterov momentum (SGD only).
    pub nesterov: bool,
    /// Clips the gradients to this total 2-norm before every update
    /// (`torch.nn.utils.clip_grad_norm_`; after unscaling under fp16 and after the ranks'
    /// average); `null`: no clipping.
    pub clip_grad_norm: Option<f64>,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// With `schedule` `triangle`: the lr factor at the first step (airbench's `start`, 0.2),
    /// `>= 0` ([`TriangleShape::start`]).
    pub lr_start_factor: f64,
    /// With `schedule` `triangle`: the share of the run's steps where the factor peaks at 1,
    /// in `(0, 1)` (airbench's `peak`, 0.23; [`TriangleShape::peak`]).
    pub lr_peak_fraction: f64,
    /// With `schedule` `triangle`: the lr factor at the end of the run (airbench's `end`,
    /// 0.07), `>= 0` ([`TriangleShape::end`]).
    pub lr_end_factor: f64,
    /// Epochs of linear warm-up before the schedule (0 for none).
    pub warmup_epochs: usize,
    /// Label smoothing of the cross-entropy loss, in `[0, 1)`.
    pub label_smoothing: f64,
    /// Seed of the model initialisation, the shuffling and the augmentation.
    pub seed: u64,
    /// `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Train on the first N training images only.
    pub limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    pub limit_test: Option<usize>,
    /// Evaluate on the test set every N epochs (and always after the last one).
    pub eval_every: usize,
    /// Keep an exponential moving average of the weights and buffers (torchvision's
    /// `--model-ema`, [`Ema`](super::Ema)), evaluated beside the raw weights after every
    /// evaluation (`ema_test_acc` in the metrics). `best` and `last` hold the weights
    /// `model_ema_weights` chooses.
    pub model_ema: bool,
    /// The EMA's decay per update before torchvision's adjustment for the world size, batch
    /// size, `model_ema_steps` and epochs ([`ema_decay_for`](super::ema_decay_for)): in (0, 1).
    pub model_ema_decay: f64,
    /// Update the EMA after every this many batches (`--model-ema-steps`); during the
    /// `warmup_epochs` it is reset to the weights after each update, as torchvision does.
    pub model_ema_steps: usize,
    /// Which weights `best.safetensors` and `last.safetensors` hold in a run with
    /// `model_ema` (`--model-ema-weights`): `raw`, the trained weights (the default), or
    /// `ema`, the EMA's averages. Either way `best` is the epoch of the best test accuracy of
    /// the trained weights (`best_test_acc`). `ema` needs `model_ema`.
    pub model_ema_weights: EmaWeights,
    /// airbench's lookahead ([`LookaheadCallback`](super::LookaheadCallback)): a slow copy of
    /// the weights and BatchNorm statistics, pulled towards the trained ones every
    /// `lookahead_steps` updates, which are then set to it; the weights end as the slow copy.
    pub lookahead: bool,
    /// Updates between two lookahead steps (airbench's 5), at least 1.
    pub lookahead_steps: usize,
    /// The lookahead's per-step decay base, in `[0, 1]` (airbench's 0.95): after update `t` of
    /// `T` the slow copy keeps the share `lookahead_decay^lookahead_steps * (t / T)^3`.
    pub lookahead_decay: f64,
    /// Test-time augmentation of the evaluation (`none`, `flip`, `flip_translate`: see
    /// [`Tta`]); the test loss and accuracy, and so `best`, are those of the averaged logits.
    pub tta: Tta,
    /// Apply [`tta`](Self::tta) at the last evaluation only; the earlier ones run one pass
    /// (airbench's practice: cheap per-epoch curves, the augmented figure at the end).
    pub tta_last_only: bool,
    /// Random crop + flip augmentation of training images.
    pub augment: bool,
    /// Pixels of padding on each side before the random crop of the CIFAR-style pipelines
    /// (`--crop-padding`): 0..=16, and below `image_size` with `reflect` (airbench94: 2). The
    /// ImageNet transforms take only the default, 4.
    pub crop_padding: u8,
    /// What the crop pads with (`--crop-padding-mode`): `zeros` (torchvision's
    /// `RandomCrop(padding=4)`, the default) or `reflect` (`padding_mode='reflect'`, airbench's
    /// translation).
    pub crop_padding_mode: PaddingMode,
    /// How the horizontal flip is chosen (`--flip`): `random` (a fresh coin per image and
    /// epoch, the default), `alternate` (airbench's `altflip`: one coin per image for the
    /// run, the image mirrored in exactly every other epoch) or `none`.
    pub flip: FlipMode,
    /// Auto-augmentation policy after crop and flip: `ta_wide`, `ra`, `cifar10`, `imagenet`,
    /// `svhn` (torchvision's `--auto-augment`); `null` for none.
    pub auto_augment: Option<String>,
    /// RandAugment's magnitude bin of 31 with `auto_augment = "ra"` (`--ra-magnitude`).
    pub ra_magnitude: usize,
    /// Probability of random erasing per training image, after normalisation
    /// (`--random-erase`); 0 for none.
    pub random_erase: f64,
    /// MixUp's α per training batch, soft targets (`--mixup-alpha`); 0 for none.
    pub mixup_alpha: f64,
    /// CutMix's α per training batch (`--cutmix-alpha`); with `mixup_alpha` too, each batch
    /// gets one of the two with probability 1/2. 0 for none.
    pub cutmix_alpha: f64,
    /// Micro-batches per update (timm's `--grad-accum-steps`): each batch of `batch_size`
    /// images is split into this many parts, each forward and backward on its own (BatchNorm
    /// sees the part), the gradients summed, one update. It bounds memory, not the recipe:
    /// `batch_size` stays the batch of an update. Must divide `batch_size`.
    pub grad_accum_steps: usize,
    /// Precision of forward and backward: `auto` (bf16 autocast on CUDA, fp32 on the CPU),
    /// `fp32`, `bf16` or `fp16` (with loss scaling). The CPU always runs fp32.
    pub precision: Precision,
    /// Channels-last weights and inputs; `null` (auto) = on. Measured on a 2-core x86 CPU
    /// (oneDNN), it makes a tiny ResNeXt's training step 2.3x faster; cuDNN prefers it too.
    pub channels_last: Option<bool>,
    /// Where the run's data came from, kept with the run so that a resumed run finds it
    /// again. The trainer itself takes its data from the caller and does not read this.
    pub data: DataLocation,
    /// Processes training together (data-parallel; 1 for one process). Set by
    /// [`Trainer::data_parallel`](super::Trainer::data_parallel), recorded so that a run is
    /// resumed with as many processes as it was trained with. `batch_size` is per process:
    /// every step trains on `world_size * batch_size` images.
    pub world_size: usize,
}

/// Where a run's data came from (see [`TrainConfig::data`]): all `null` when not recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataLocation {
    /// The data folder, absolute.
    pub dir: Option<PathBuf>,
    /// The URL or path the data was downloaded from, if it was.
    pub url: Option<String>,
    /// The expected MD5 of that download, if one was given.
    pub md5: Option<String>,
    /// An image folder without `train/` and `val/`: the fraction of each class held out for
    /// validation (drawn with the run's seed).
    pub val_fraction: Option<f64>,
    /// Image files that do not decode are left out (and listed) instead of stopping the run.
    pub skip_bad_images: bool,
}

impl Default for TrainConfig {
    /// resnext50_32x4d (CIFAR stem), 200 epochs, batch 128, SGD lr 0.1, momentum 0.9,
    /// weight decay 5e-4, cosine schedule, seed 1, CUDA when available.
    fn default() -> Self {
        TrainConfig {
            recipe: super::recipe::DEFAULT_RECIPE.into(),
            model: "resnext50_32x4d".into(),
            num_classes: 10,
            stem: None,
            blocks: None,
            planes: None,
            cardinality: None,
            base_width: None,
            logit_scale: None,
            image_size: 32,
            normalization: Normalization::default(),
            pretrained: None,
            freeze_backbone: false,
            freeze_norm_weights: false,
            stem_bias_epochs: None,
            epochs: 200,
            batch_size: 128,
            lr: 0.1,
            opt: "sgd".into(),
            momentum: 0.9,
            weight_decay: 5e-4,
            norm_weight_decay: None,
            bias_weight_decay: None,
            norm_bias_lr_multiplier: None,
            nesterov: false,
            clip_grad_norm: None,
            schedule: Schedule::Cosine,
            lr_start_factor: TriangleShape::AIRBENCH.start,
            lr_peak_fraction: TriangleShape::AIRBENCH.peak,
            lr_end_factor: TriangleShape::AIRBENCH.end,
            warmup_epochs: 0,
            label_smoothing: 0.0,
            seed: 1,
            device: "auto".into(),
            limit_train: None,
            limit_test: None,
            eval_every: 1,
            tta: Tta::None,
            tta_last_only: false,
            model_ema: false,
            model_ema_decay: 0.99998,
            model_ema_steps: 32,
            model_ema_weights: EmaWeights::Raw,
            lookahead: false,
            lookahead_steps: 5,
            lookahead_decay: 0.95,
            augment: true,
            crop_padding: crate::data::PADDING,
            crop_padding_mode: PaddingMode::Zeros,
            flip: FlipMode::Random,
            auto_augment: None,
            ra_magnitude: 9,
            random_erase: 0.0,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            grad_accum_steps: 1,
            precision: Precision::Auto,
            channels_last: None,
            data: DataLocation::default(),
            world_size: 1,
        }
    }
}

fn invalid(field: &'static str, value: impl ToString, expected: impl Into<String>) -> TrainError {
    TrainError::InvalidConfig {
        field,
        value: value.to_string(),
        expected: expected.into(),
    }
}

impl TrainConfig {
    /// Parses a JSON configuration (missing fields take their defaults) and validates it.
    ///
    /// # Errors
    /// [`TrainError::ConfigJson`] for bad JSON or an unknown field, [`TrainError::InvalidConfig`]
    /// for a bad value.
    pub fn from_json(text: &str) -> Result<Self, TrainError> {
        let cfg = Self::from_json_unchecked(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a JSON configuration over the recipe it names (its `recipe` field, `cifar` when
    /// absent: the fields the text names replace the recipe's), without validating it.
    ///
    /// # Errors
    /// [`TrainError::ConfigJson`] for bad JSON, a value that is not an object, or an unknown
    /// field; [`TrainError::InvalidConfig`] for an unknown recipe.
    pub fn from_json_unchecked(text: &str) -> Result<Self, TrainError> {
        Self::parse_over(text, None)
    }

    /// [`TrainConfig::from_json_unchecked`] over `recipe` when given, else over the text's own.
    fn parse_over(text: &str, recipe: Option<&str>) -> Result<Self, TrainError> {
        let json_error = |message: String| TrainError::ConfigJson {
            path: None,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| json_error(e.to_string()))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(json_error(format!(
                "expected a JSON object of configuration fields, found {value}"
            )));
        };
        if let Some(name) = recipe {
            fields.insert("recipe".into(), name.into());
        }
        let recipe = match fields.get("recipe") {
            None => super::recipe::DEFAULT_RECIPE,
            Some(serde_json::Value::String(name)) => name.as_str(),
            Some(other) => {
                return Err(json_error(format!(
                    "recipe: expected a name, found {other}"
                )))
            }
        };
        let mut merged = super::recipe::recipe_json(recipe)?;
        merged.extend(fields);
        serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| json_error(e.to_string()))
    }

    /// Reads and validates a JSON configuration file.
    ///
    /// # Errors
    /// As [`TrainConfig::from_json`], naming the file; [`TrainError::Io`] when it cannot be read.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let cfg = Self::read_file(path, None)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a JSON configuration file over `recipe` when given (it replaces the file's own
    /// `recipe` field), else over the recipe the file names, without validating it (flags may
    /// still change it).
    ///
    /// # Errors
    /// As [`TrainConfig::from_json_unchecked`], naming the file; [`TrainError::Io`] when it
    /// cannot be read.
    pub fn read_file(path: &Path, recipe: Option<&str>) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_over(&text, recipe).map_err(|e| match e {
            TrainError::ConfigJson { message, .. } => TrainError::ConfigJson {
                path: Some(path.to_path_buf()),
                message,
            },
            e => e,
        })
    }

    /// The learning rate of (0-based) `epoch`, from [`Schedule::lr`] with this
    /// configuration's `lr`, `epochs` and `warmup_epochs`. For the per-step `triangle`, the
    /// rate as if every epoch were one step ([`Self::lr_at_step`]`(epoch, 0, 1)`, with this
    /// configuration's shape); a run reads [`Self::lr_at_step`].
    pub fn lr_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Triangle => self.lr_at_step(epoch, 0, 1),
            s => s.lr(self.lr, epoch, self.epochs, self.warmup_epochs),
        }
    }

    /// The learning rate of the update of (0-based) `batch` of (0-based) `epoch`, with
    /// `batches_per_epoch` updates an epoch: the one place a run computes it. For the epoch
    /// schedules it is [`Self::lr_at`]`(epoch)`, exactly; for `triangle` it is
    /// `lr * factor(s, T)` ([`TriangleShape::factor`]) at the global step
    /// `s = epoch * batches_per_epoch + batch` of `T = epochs * batches_per_epoch`.
    ///
    /// ```
    /// use resnext::trainer::{Schedule, TrainConfig};
    /// let cfg = TrainConfig { schedule: Schedule::Triangle, epochs: 2, lr: 1.0, ..TrainConfig::default() };
    /// // 50 steps an epoch, 100 in all: 0.2 at the first, 1 at step int(0.23 * 100) = 23.
    /// assert!((cfg.lr_at_step(0, 0, 50) - 0.2).abs() < 1e-12);
    /// assert!((cfg.lr_at_step(0, 23, 50) - 1.0).abs() < 1e-12);
    /// assert!(cfg.lr_at_step(1, 49, 50) > 0.07);
    /// let cosine = TrainConfig::default();
    /// assert_eq!(cosine.lr_at_step(3, 17, 50), cosine.lr_at(3));
    /// ```
    pub fn lr_at_step(&self, epoch: usize, batch: usize, batches_per_epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Triangle => {
                let step = epoch * batches_per_epoch + batch;
                let total = self.epochs * batches_per_epoch;
                self.lr * self.triangle_shape().factor(step, total)
            }
            _ => self.lr_at(epoch),
        }
    }

    /// The triangle schedule's shape: `lr_start_factor`, `lr_peak_fraction`, `lr_end_factor`.
    pub fn triangle_shape(&self) -> TriangleShape {
        TriangleShape {
            start: self.lr_start_factor,
            peak: self.lr_peak_fraction,
            end: self.lr_end_factor,
        }
    }

    /// The configuration as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of plain fields always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The model architecture: the preset `model` with `num_classes` classes, `stem` when set,
    /// and the sizes `blocks`, `planes`, `cardinality`, `base_width` and the `logit_scale`
    /// override (then named after the preset and the changes, e.g. `resnext_fast (blocks
    /// 2,2,2)`).
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] listing the valid names for an unknown model, or naming
    /// the size that makes no valid network.
    pub fn model_config(&self) -> Result<ResNeXtConfig, TrainError> {
        let config =
            ResNeXtConfig::from_name(&self.model, self.num_classes.max(1)).map_err(|_| {
                invalid(
                    "model",
                    &self.model,
                    format!("one of {}", MODEL_NAMES.join(", ")),
                )
            })?;
        let config = match self.stem {
            Some(stem) => config.with_stem(stem),
            None => config,
        };
        self.with_sizes(config)
    }

    /// `config` with the sizes (and the logit scale) this configuration overrides, named after
    /// them, checked.
    fn with_sizes(&self, mut config: ResNeXtConfig) -> Result<ResNeXtConfig, TrainError> {
        let list = |v: &[String]| v.join(",");
        let mut changes = Vec::new();
        if let Some(blocks) = &self.blocks {
            config.blocks = blocks.clone();
            let text: Vec<_> = blocks.iter().map(|b| b.to_string()).collect();
            changes.push(format!("blocks {}", list(&text)));
        }
        if let Some(planes) = &self.planes {
            config.planes = planes.clone();
            let text: Vec<_> = planes.iter().map(|p| p.to_string()).collect();
            changes.push(format!("planes {}", list(&text)));
        }
        if let Some(c) = self.cardinality {
            config.cardinality = c;
            changes.push(format!("cardinality {c}"));
        }
        if let Some(d) = self.base_width {
            config.base_width = d;
            changes.push(format!("base width {d}"));
        }
        if let Some(scale) = self.logit_scale {
            config.logit_scale = scale;
            changes.push(format!("logit scale {scale}"));
        }
        if changes.is_empty() {
            return Ok(config);
        }
        config.name = format!("{} ({})", config.name, changes.join(", "));
        config.validate().map_err(|e| match e {
            ModelError::InvalidConfig {
                field,
                value,
                expected,
            } => invalid(field, value, expected),
            other => invalid("model", &self.model, other.to_string()),
        })?;
        Ok(config)
    }

    /// The device to train on: `auto` is CUDA when available, else the CPU.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for an unknown device, [`TrainError::DeviceUnavailable`] for
    /// CUDA on a machine without it or a GPU index beyond the GPUs present.
    pub fn resolve_device(&self) -> Result<Device, TrainError> {
        self.device_spec()?.resolve().map_err(|e| match e {
            DeviceError::Unavailable { available, .. } => TrainError::DeviceUnavailable {
                device: self.device.clone(),
                available,
            },
            DeviceError::Unknown { value } => invalid("device", value, DEVICE_FORMS),
        })
    }

    /// `device` as named, not yet checked against this machine.
    fn device_spec(&self) -> Result<DeviceSpec, TrainError> {
        self.device
            .parse()
            .map_err(|_| invalid("device", &self.device, DEVICE_FORMS))
    }

    /// Whether training on `device` uses channels-last tensors (`channels_last`, on by
    /// default on every device).
    pub fn resolve_channels_last(&self, _device: Device) -> bool {
        self.channels_last.unwrap_or(true)
    }

    /// Checks every value; the error names the field, its value and what is expected.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`].
    pub fn validate(&self) -> Result<(), TrainError> {
        self.validate_model_and_data()?;
        self.validate_optimiser()?;
        self.validate_augmentation()?;
        self.validate_run()
    }

    /// The augmentation stages and gradient accumulation.
    fn validate_augmentation(&self) -> Result<(), TrainError> {
        self.validate_crop()?;
        self.augmentation()
            .validate(self.batch_size)
            .map_err(|e| match e {
                crate::data::DataError::InvalidConfig {
                    field,
                    value,
                    expected,
                } => {
                    // The data library's names of the fields, as this configuration's.
                    let field = match field {
                        "random erasing p" => "random_erase",
                        "RandAugment magnitude" => "ra_magnitude",
                        f => f,
                    };
                    invalid(field, value, expected)
                }
                e => invalid("augmentation", e, "valid augmentation stages"),
            })?;
        let steps = self.grad_accum_steps;
        if steps == 0 || steps > self.batch_size || !self.batch_size.is_multiple_of(steps) {
            return Err(invalid(
                "grad_accum_steps",
                steps,
                format!(
                    "a divisor of batch_size {} (micro-batches of equal size)",
                    self.batch_size
                ),
            ));
        }
        Ok(())
    }

    /// The crop padding: at most [`MAX_PADDING`](crate::data::MAX_PADDING), and below
    /// `image_size` with reflection.
    fn validate_crop(&self) -> Result<(), TrainError> {
        let side = usize::try_from(self.image_size).unwrap_or(0);
        self.crop_flip().validate(side).map_err(|_| {
            invalid(
                "crop_padding",
                self.crop_padding,
                match self.crop_padding_mode {
                    PaddingMode::Zeros => format!("0..={}", crate::data::MAX_PADDING),
                    PaddingMode::Reflect => format!(
                        "0..={} and below image_size {} with crop_padding_mode reflect",
                        crate::data::MAX_PADDING,
                        self.image_size
                    ),
                },
            )
        })?;
        Ok(())
    }

    /// The data pipeline's crop and flip settings, from `crop_padding`, `crop_padding_mode`
    /// and `flip`.
    pub fn crop_flip(&self) -> CropFlip {
        CropFlip {
            padding: self.crop_padding,
            padding_mode: self.crop_padding_mode,
            flip: self.flip,
        }
    }

    /// The data pipeline's crop and flip settings ([`crop_flip`](Self::crop_flip)) and its
    /// stages after crop and flip, from `auto_augment`, `ra_magnitude`, `random_erase`,
    /// `mixup_alpha` and `cutmix_alpha`.
    pub fn augmentation(&self) -> Augmentation {
        Augmentation {
            crop_flip: self.crop_flip(),
            auto_augment: self.auto_augment.clone(),
            ra_magnitude: self.ra_magnitude,
            random_erase: self.random_erase,
            mixup_alpha: self.mixup_alpha,
            cutmix_alpha: self.cutmix_alpha,
        }
    }

    /// The model, the classes and the pictures fed to it.
    fn validate_model_and_data(&self) -> Result<(), TrainError> {
        self.model_config()?;
        if self.num_classes < 1 {
            return Err(invalid("num_classes", self.num_classes, "at least 1"));
        }
        if self.image_size < 1 {
            return Err(invalid("image_size", self.image_size, "at least 1"));
        }
        self.normalization.validate().map_err(|_| {
            invalid(
                "normalization",
                format!("{:?}", self.normalization),
                "finite means and finite stds above 0",
            )
        })?;
        if self.limit_train == Some(0) {
            return Err(invalid("limit_train", 0, "at least 1"));
        }
        if self.limit_test == Some(0) {
            return Err(invalid("limit_test", 0, "at least 1"));
        }
        Ok(())
    }

    /// The optimiser, its groups, clipping and the loss.
    fn validate_optimiser(&self) -> Result<(), TrainError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid("lr", self.lr, "a finite number above 0"));
        }
        let opt = self.optimizer_config()?;
        if self.nesterov && !matches!(opt, OptimizerConfig::Sgd(_)) {
            return Err(invalid("nesterov", true, "only with opt = sgd"));
        }
        for (field, value) in [
            ("norm_weight_decay", self.norm_weight_decay),
            ("bias_weight_decay", self.bias_weight_decay),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(invalid(
                    field,
                    value.unwrap_or_default(),
                    "a finite number >= 0",
                ));
            }
        }
        if !(self.model_ema_decay > 0.0 && self.model_ema_decay < 1.0) {
            return Err(invalid(
                "model_ema_decay",
                self.model_ema_decay,
                "in (0, 1)",
            ));
        }
        if self.model_ema_steps == 0 {
            return Err(invalid("model_ema_steps", 0, "at least 1"));
        }
        if self.model_ema_weights == EmaWeights::Ema && !self.model_ema {
            return Err(invalid("model_ema_weights", "ema", "raw without model_ema"));
        }
        if let Some(m) = self.norm_bias_lr_multiplier {
            if !(m.is_finite() && m > 0.0) {
                return Err(invalid(
                    "norm_bias_lr_multiplier",
                    m,
                    "a finite number above 0",
                ));
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid("clip_grad_norm", c, "a finite number above 0"));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid("momentum", self.momentum, "in [0, 1)"));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(invalid("momentum", self.momentum, "above 0 with nesterov"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid(
                "weight_decay",
                self.weight_decay,
                "a finite number >= 0",
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(invalid(
                "label_smoothing",
                self.label_smoothing,
                "in [0, 1)",
            ));
        }
        Ok(())
    }

    /// The triangle schedule's shape and the lookahead (checked whether used or not, as every
    /// other value).
    fn validate_schedule(&self) -> Result<(), TrainError> {
        for (field, value) in [
            ("lr_start_factor", self.lr_start_factor),
            ("lr_end_factor", self.lr_end_factor),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(field, value, "a finite number >= 0"));
            }
        }
        let peak = self.lr_peak_fraction;
        if !(peak > 0.0 && peak < 1.0) {
            return Err(invalid("lr_peak_fraction", peak, "in (0, 1)"));
        }
        super::lookahead::check_values(self.lookahead_steps, self.lookahead_decay)?;
        if self.schedule == Schedule::Triangle && self.warmup_epochs > 0 {
            return Err(invalid(
                "warmup_epochs",
                self.warmup_epochs,
                "0 with schedule triangle (its rise from lr_start_factor is the warm-up)",
            ));
        }
        Ok(())
    }

    /// Epochs, batches, evaluation, processes and device.
    fn validate_run(&self) -> Result<(), TrainError> {
        self.validate_schedule()?;
        if self.epochs == 0 {
            return Err(invalid("epochs", self.epochs, "at least 1"));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size", self.batch_size, "at least 1"));
        }
        if self.warmup_epochs >= self.epochs {
            return Err(invalid(
                "warmup_epochs",
                self.warmup_epochs,
                format!("fewer than the {} epochs", self.epochs),
            ));
        }
        if self.eval_every == 0 {
            return Err(invalid("eval_every", 0, "at least 1"));
        }
        if self.world_size == 0 {
            return Err(invalid("world_size", 0, "at least 1"));
        }
        self.device_spec()?;
        Ok(())
    }
}

impl TrainConfig {
    /// The optimiser's configuration: `opt` with this configuration's hyper-parameters.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for an `opt` that names no optimiser (listing the valid
    /// names).
    pub fn optimizer_config(&self) -> Result<OptimizerConfig, TrainError> {
        let named: OptimizerConfig = self.opt.parse().map_err(|_| TrainError::InvalidConfig {
            field: "opt",
            value: self.opt.clone(),
            expected: format!("one of {}", OPTIMIZER_NAMES.join(", ")),
        })?;
        Ok(match named {
            OptimizerConfig::Sgd(_) => OptimizerConfig::Sgd(SgdConfig {
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                nesterov: self.nesterov,
            }),
            OptimizerConfig::AdamW(adamw) => OptimizerConfig::AdamW(AdamWConfig {
                weight_decay: self.weight_decay,
                ..adamw
            }),
        })
    }

    /// The parameter groups of `norm_weight_decay` and `bias_weight_decay`.
    pub fn param_groups(&self) -> ParamGroups {
        let decay = |wd: Option<f64>| {
            wd.map(|w| GroupOverride {
                weight_decay: Some(w),
                lr_multiplier: 1.0,
            })
        };
        ParamGroups {
            norm: decay(self.norm_weight_decay),
            bias: decay(self.bias_weight_decay),
            norm_bias: self.norm_bias_lr_multiplier.map(|m| GroupOverride {
                weight_decay: self.bias_weight_decay.or(self.norm_weight_decay),
                lr_multiplier: m,
            }),
        }
    }

    /// The optimiser of this configuration over the trainable variables of `vs`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for an unknown `opt`, [`TrainError::Optim`] for
    /// hyper-parameters the optimiser refuses.
    pub fn build_optimizer(&self, vs: &nn::VarStore) -> Result<Box<dyn Optimizer>, TrainError> {
        Ok(self.optimizer_config()?.build(vs, &self.param_groups())?)
    }
}

impl TrainConfig {
    /// The EMA of this configuration over `vs` (`None` without `model_ema`), its decay
    /// adjusted as torchvision's reference script does for `world_size` processes.
    ///
    /// # Errors
    /// [`TrainError::Ema`] for a decay or count the EMA refuses.
    pub fn build_ema(
        &self,
        vs: &nn::VarStore,
        world_size: usize,
    ) -> Result<Option<(Ema, EmaSchedule)>, TrainError> {
        if !self.model_ema {
            return Ok(None);
        }
        let decay = ema_decay_for(
            self.model_ema_decay,
            world_size,
            self.batch_size,
            self.model_ema_steps,
            self.epochs,
        )?;
        let schedule = EmaSchedule {
            every: self.model_ema_steps,
            warmup_epochs: self.warmup_epochs,
        };
        Ok(Some((Ema::new(vs, decay)?, schedule)))
    }
}
