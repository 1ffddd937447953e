//! What the training programs (`train_cifar10`, `train_images`) share: the training flags and
//! the configuration they make, the trainer they open (new or resumed), the Ctrl-C handler,
//! the command-line hints added to library errors, the exit codes, and data-parallel runs
//! ([`launch`]).
pub mod launch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use resnext::data::ops::Policy;
use resnext::data::{DataSplits, FlipMode, PaddingMode};
use resnext::device::DeviceSpec;
use resnext::distributed::{DistEnv, EnvError, ProcessGroup};
use resnext::inference::Tta;
use resnext::resnext::MODEL_NAMES;
use resnext::trainer::{
    check_same_recipe, recipe_config, recipe_names, EmaWeights, Outcome, ProgressMode, TrainConfig,
    TrainError, Trainer, OPTIMIZER_NAMES, PRECISION_NAMES, SCHEDULE_NAMES,
};
use resnext::ResNeXt;

/// The flags of every training program.
#[derive(clap::Args, Debug)]
pub struct TrainFlags {
    /// Model configuration.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES), help_heading = "Model")]
    pub model: Option<String>,
    /// The stages' numbers of blocks instead of the preset's, e.g. 2,2,2 (for ablations).
    #[arg(
        long,
        value_name = "N,N,..",
        value_delimiter = ',',
        help_heading = "Model"
    )]
    pub blocks: Option<Vec<usize>>,
    /// The stages' planes instead of the preset's, e.g. 16,64,64.
    #[arg(
        long,
        value_name = "P,P,..",
        value_delimiter = ',',
        help_heading = "Model"
    )]
    pub planes: Option<Vec<i64>>,
    /// The number of groups (C) instead of the preset's.
    #[arg(long, value_name = "C", help_heading = "Model")]
    pub cardinality: Option<i64>,
    /// The group width at 64 planes (d) instead of the preset's.
    #[arg(long, value_name = "D", help_heading = "Model")]
    pub base_width: Option<i64>,
    /// The factor on the logits instead of the preset's (airbench's scaling_factor).
    #[arg(long, value_name = "S", help_heading = "Model")]
    pub logit_scale: Option<f64>,
    /// Keep the BatchNorm weights at 1, untrained (airbench's BatchNorm); their biases train.
    #[arg(long, help_heading = "Model")]
    pub freeze_norm_weights: bool,
    /// Train the stem's bias (the whitening stem's) for N epochs only, frozen from then on
    /// (airbench's whiten_bias_epochs).
    #[arg(long, value_name = "N", help_heading = "Model")]
    pub stem_bias_epochs: Option<usize>,
    /// Number of epochs [default: 200].
    #[arg(long, help_heading = "Optimisation")]
    pub epochs: Option<usize>,
    /// Training batch size [default: 128].
    #[arg(long, help_heading = "Optimisation")]
    pub batch_size: Option<usize>,
    /// Base learning rate [default: 0.1].
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub lr: Option<f64>,
    /// Optimiser: sgd or adamw (torch.optim.AdamW, betas 0.9/0.999, eps 1e-8) [default: sgd].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(OPTIMIZER_NAMES), help_heading = "Optimisation")]
    pub opt: Option<String>,
    /// SGD momentum [default: 0.9].
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub momentum: Option<f64>,
    /// Weight decay (SGD: L2 on the gradient; AdamW: decoupled) [default: 5e-4].
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub weight_decay: Option<f64>,
    /// Weight decay of BatchNorm parameters instead of --weight-decay (torchvision's recipe: 0).
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub norm_weight_decay: Option<f64>,
    /// Weight decay of biases instead of --weight-decay (before --norm-weight-decay).
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub bias_weight_decay: Option<f64>,
    /// Learning-rate multiplier of BatchNorm biases (airbench's 64) [default: 1].
    #[arg(
        long,
        value_name = "M",
        allow_negative_numbers = true,
        help_heading = "Optimisation"
    )]
    pub norm_bias_lr_multiplier: Option<f64>,
    /// Clip the gradients to this total 2-norm before each update [default: no clipping].
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub clip_grad_norm: Option<f64>,
    /// Nesterov momentum.
    #[arg(long, help_heading = "Optimisation")]
    pub nesterov: bool,
    /// Learning-rate schedule [default: cosine].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(SCHEDULE_NAMES), help_heading = "Schedule")]
    pub schedule: Option<String>,
    /// With --schedule triangle: the lr factor at the first step (airbench's 0.2) [default: 0.2].
    #[arg(long, allow_negative_numbers = true, help_heading = "Schedule")]
    pub lr_start_factor: Option<f64>,
    /// With --schedule triangle: the share of the steps where the factor peaks at 1, in
    /// (0, 1) (airbench's 0.23) [default: 0.23].
    #[arg(long, allow_negative_numbers = true, help_heading = "Schedule")]
    pub lr_peak_fraction: Option<f64>,
    /// With --schedule triangle: the lr factor at the end of the run (airbench's 0.07)
    /// [default: 0.07].
    #[arg(long, allow_negative_numbers = true, help_heading = "Schedule")]
    pub lr_end_factor: Option<f64>,
    /// Epochs of linear warm-up [default: 0].
    #[arg(long, help_heading = "Schedule")]
    pub warmup_epochs: Option<usize>,
    /// Label smoothing of the loss, in [0, 1) [default: 0].
    #[arg(long, allow_negative_numbers = true, help_heading = "Optimisation")]
    pub label_smoothing: Option<f64>,
    /// Seed of initialisation, shuffling and augmentation [default: 1].
    #[arg(long, help_heading = "Recipe and configuration")]
    pub seed: Option<u64>,
    /// auto, cpu, cuda or cuda:N [default: auto = CUDA when available].
    #[arg(long, help_heading = "Precision and device")]
    pub device: Option<String>,
    /// Forward/backward precision: auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 (autocast on CUDA and CPU), fp16 (CUDA).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PRECISION_NAMES), help_heading = "Precision and device")]
    pub precision: Option<String>,
    /// Channels-last weights and inputs: auto (on), on, off.
    #[arg(long, value_parser = ["auto", "on", "off"], help_heading = "Precision and device")]
    pub channels_last: Option<String>,
    /// Run directory [default: runs/<model>-seed<seed>].
    #[arg(long, help_heading = "Run directory")]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory with the configuration saved there.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = [
        "model", "epochs", "batch_size", "lr", "opt", "momentum", "weight_decay", "nesterov",
        "norm_weight_decay", "bias_weight_decay", "norm_bias_lr_multiplier", "clip_grad_norm",
        "schedule", "lr_start_factor", "lr_peak_fraction", "lr_end_factor", "warmup_epochs", "label_smoothing", "seed", "out", "limit_train",
        "limit_test", "eval_every", "config", "precision", "channels_last", "tta", "tta_last_only", "model_ema",
        "model_ema_decay", "model_ema_steps", "model_ema_weights", "lookahead",
        "lookahead_steps", "lookahead_decay", "auto_augment",
        "ra_magnitude", "random_erase", "mixup_alpha", "cutmix_alpha", "grad_accum_steps",
        "crop_padding", "crop_padding_mode", "flip", "blocks", "planes", "cardinality",
        "base_width", "logit_scale", "freeze_norm_weights", "stem_bias_epochs",
    ],
        help_heading = "Run directory"
    )]
    pub resume: Option<PathBuf>,
    /// Train on N training images only.
    #[arg(long, value_name = "N", help_heading = "Evaluation and data limits")]
    pub limit_train: Option<usize>,
    /// Evaluate on N test images only.
    #[arg(long, value_name = "N", help_heading = "Evaluation and data limits")]
    pub limit_test: Option<usize>,
    /// Evaluate every N epochs (and after the last) [default: 1].
    #[arg(long, value_name = "N", help_heading = "Evaluation and data limits")]
    pub eval_every: Option<usize>,
    /// Keep an EMA of the weights and buffers (torchvision's --model-ema), evaluated beside
    /// them; best/last hold the weights --model-ema-weights chooses.
    #[arg(long, help_heading = "Weight averaging (EMA)")]
    pub model_ema: bool,
    /// The EMA's decay before torchvision's adjustment for batch size, steps and epochs
    /// [default: 0.99998].
    #[arg(
        long,
        allow_negative_numbers = true,
        help_heading = "Weight averaging (EMA)"
    )]
    pub model_ema_decay: Option<f64>,
    /// Update the EMA every N batches [default: 32].
    #[arg(long, value_name = "N", help_heading = "Weight averaging (EMA)")]
    pub model_ema_steps: Option<usize>,
    /// Which weights best/last hold with --model-ema: raw (the trained weights) or ema (the
    /// EMA's averages); best is the epoch of the best raw test accuracy [default: raw].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(EmaWeights::NAMES), help_heading = "Weight averaging (EMA)")]
    pub model_ema_weights: Option<String>,
    /// airbench's lookahead: a slow copy of the weights and BN statistics, pulled towards
    /// them every --lookahead-steps updates, the weights then set to it (and to it at the end).
    #[arg(long, help_heading = "Weight averaging (EMA)")]
    pub lookahead: bool,
    /// Updates between lookahead steps [default: 5].
    #[arg(long, value_name = "K", help_heading = "Weight averaging (EMA)")]
    pub lookahead_steps: Option<usize>,
    /// The lookahead's per-step decay base, in [0, 1]: the slow copy keeps
    /// decay^K * (t/T)^3 after update t of T [default: 0.95].
    #[arg(
        long,
        allow_negative_numbers = true,
        help_heading = "Weight averaging (EMA)"
    )]
    pub lookahead_decay: Option<f64>,
    /// Test-time augmentation of the evaluation: none, flip (the mirror too), flip-translate
    /// (also one-pixel shifts; airbench's levels) [default: none].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Tta::NAMES), help_heading = "Evaluation and data limits")]
    pub tta: Option<String>,
    /// Apply --tta at the last evaluation only (the others run one pass: cheaper curves,
    /// airbench's practice).
    #[arg(long, help_heading = "Evaluation and data limits")]
    pub tta_last_only: bool,
    /// Start from this named recipe (cifar = the defaults, tutorial, torchvision-v2; each
    /// setting with its reason in docs/training.md); a --config file and flags override it
    /// [default: cifar].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(recipe_names()), help_heading = "Recipe and configuration")]
    pub recipe: Option<String>,
    /// Pixels of padding on each side before the random crop, 0..=16 (airbench94: 2 with
    /// --crop-padding-mode reflect) [default: 4].
    #[arg(long, value_name = "P", help_heading = "Augmentation and mixing")]
    pub crop_padding: Option<u8>,
    /// What the crop pads with: zeros (torchvision's RandomCrop(padding=4)) or reflect
    /// (padding_mode='reflect', airbench94's translation) [default: zeros].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(PaddingMode::NAMES), help_heading = "Augmentation and mixing")]
    pub crop_padding_mode: Option<String>,
    /// Horizontal flip: random (a fresh coin per image and epoch), alternate (airbench's
    /// altflip: one coin per image, then mirrored in exactly every other epoch) or none
    /// [default: random].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(FlipMode::NAMES), help_heading = "Augmentation and mixing")]
    pub flip: Option<String>,
    /// Auto-augmentation policy after crop and flip: ta_wide (TrivialAugmentWide), ra
    /// (RandAugment, 2 ops), cifar10 / imagenet / svhn (AutoAugment) [default: none].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Policy::NAMES), help_heading = "Augmentation and mixing")]
    pub auto_augment: Option<String>,
    /// RandAugment's magnitude, a bin of 31 (with --auto-augment ra) [default: 9].
    #[arg(long, value_name = "M", help_heading = "Augmentation and mixing")]
    pub ra_magnitude: Option<usize>,
    /// Random erasing probability per image, after normalisation [default: 0, off].
    #[arg(
        long,
        value_name = "P",
        allow_negative_numbers = true,
        help_heading = "Augmentation and mixing"
    )]
    pub random_erase: Option<f64>,
    /// MixUp's alpha per batch, the loss on soft targets [default: 0, off].
    #[arg(
        long,
        value_name = "ALPHA",
        allow_negative_numbers = true,
        help_heading = "Augmentation and mixing"
    )]
    pub mixup_alpha: Option<f64>,
    /// CutMix's alpha per batch; with --mixup-alpha, one of the two per batch [default: 0, off].
    #[arg(
        long,
        value_name = "ALPHA",
        allow_negative_numbers = true,
        help_heading = "Augmentation and mixing"
    )]
    pub cutmix_alpha: Option<f64>,
    /// Split each batch into N micro-batches, one update (bounds memory; --batch-size stays
    /// the update's batch and N must divide it) [default: 1].
    #[arg(long, value_name = "N", help_heading = "Optimisation")]
    pub grad_accum_steps: Option<usize>,
    /// JSON configuration file (a TrainConfig; flags override it).
    #[arg(long, value_name = "FILE", help_heading = "Recipe and configuration")]
    pub config: Option<PathBuf>,
    /// Print the configuration these settings give, as JSON (what --config reads), and exit.
    #[arg(long, help_heading = "Recipe and configuration")]
    pub print_config: bool,
    /// No progress bar, only one line per epoch.
    #[arg(long, help_heading = "Run directory")]
    pub quiet: bool,
    /// Train with N processes on this machine (data-parallel, Gloo on CPU, NCCL on GPUs;
    /// --batch-size is per process). Runs started by torchrun need no flag.
    #[arg(long, value_name = "N", help_heading = "Several processes")]
    pub nproc: Option<usize>,
    /// Seconds a data-parallel collective may wait for the other processes.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 300,
        help_heading = "Several processes"
    )]
    pub dist_timeout: u64,
    /// Start from these weights, with torchvision's names: safetensors (e.g. another run's
    /// last.safetensors) or a PyTorch .pth (a state dict, a training checkpoint or a whole
    /// model); the file fixes the stem, and the classifier is replaced when its class count
    /// differs.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "resume",
        help_heading = "Model"
    )]
    pub pretrained: Option<PathBuf>,
    /// Train the classifier only (with --pretrained, the usual quick fine-tune).
    #[arg(long, conflicts_with = "resume", help_heading = "Model")]
    pub freeze_backbone: bool,
}

/// How a training program goes on after [`start`].
pub enum Start {
    /// `--nproc N` launched N ranks of this program, which are done: exit with this code.
    Launched(ExitCode),
    /// Train in this process: alone, or as a rank of a data-parallel run.
    Train(Option<Rank>),
}

/// This process as a rank of a data-parallel run.
pub struct Rank {
    /// Its process group.
    pub group: ProcessGroup,
    /// Its rank on this machine (its GPU).
    pub local_rank: usize,
}

/// Launches the ranks (`--nproc N` > 1), or joins the data-parallel run this process is a
/// rank of (`WORLD_SIZE` > 1, from torchrun or `--nproc`), or neither.
pub fn start(flags: &TrainFlags) -> Result<Start> {
    let nproc = flags.nproc.unwrap_or(1);
    launch::check_nproc(nproc)?;
    if nproc > 1 {
        return Ok(Start::Launched(launch::launch_local(nproc)?));
    }
    let timeout = Duration::from_secs(flags.dist_timeout.max(1));
    let Some(group) = launch::join_group(timeout)? else {
        return Ok(Start::Train(None));
    };
    let local_rank = DistEnv::from_env()?.map_or(0, |e| e.local_rank);
    Ok(Start::Train(Some(Rank { group, local_rank })))
}

/// `value` of the flag of `field` parsed, or an error naming both and what is accepted.
fn parse_flag<T: std::str::FromStr<Err = String>>(
    field: &'static str,
    value: &str,
) -> Result<T, TrainError> {
    value.parse().map_err(|expected| TrainError::InvalidConfig {
        field,
        value: value.to_string(),
        expected,
    })
}

impl TrainFlags {
    /// `--crop-padding`, `--crop-padding-mode` and `--flip`, when given, into `cfg`.
    fn set_crop_flip(&self, cfg: &mut TrainConfig) -> Result<(), TrainError> {
        if let Some(p) = self.crop_padding {
            cfg.crop_padding = p;
        }
        if let Some(m) = &self.crop_padding_mode {
            cfg.crop_padding_mode = parse_flag("crop_padding_mode", m)?;
        }
        if let Some(f) = &self.flip {
            cfg.flip = parse_flag("flip", f)?;
        }
        Ok(())
    }

    /// `base` (or the `--recipe` named), then the config file (over the recipe it or
    /// `--recipe` names), then the flags given; not yet validated.
    pub fn config(&self, base: TrainConfig) -> Result<TrainConfig, TrainError> {
        let mut cfg = match (&self.config, &self.recipe) {
            (Some(path), None) => TrainConfig::from_file(path)?,
            (Some(path), Some(name)) => TrainConfig::read_file(path, Some(name))?,
            (None, Some(name)) => recipe_config(name)?,
            (None, None) => base,
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { cfg.$field = v.clone(); } )* };
        }
        // Optional in the configuration too: a flag given replaces the file's value.
        macro_rules! set_optional {
            ($($field:ident),*) => { $( if self.$field.is_some() { cfg.$field = self.$field; } )* };
        }
        set!(model, epochs, batch_size, lr, opt, momentum, weight_decay);
        if self.blocks.is_some() {
            cfg.blocks = self.blocks.clone();
        }
        if self.planes.is_some() {
            cfg.planes = self.planes.clone();
        }
        set_optional!(cardinality, base_width, logit_scale, stem_bias_epochs);
        set_optional!(
            norm_weight_decay,
            bias_weight_decay,
            norm_bias_lr_multiplier,
            clip_grad_norm
        );
        set!(warmup_epochs, label_smoothing, seed, device, eval_every);
        set!(lr_start_factor, lr_peak_fraction, lr_end_factor);
        set!(
            model_ema_decay,
            model_ema_steps,
            lookahead_steps,
            lookahead_decay
        );
        set!(
            ra_magnitude,
            random_erase,
            mixup_alpha,
            cutmix_alpha,
            grad_accum_steps
        );
        if self.auto_augment.is_some() {
            cfg.auto_augment = self.auto_augment.clone();
        }
        self.set_crop_flip(&mut cfg)?;
        cfg.model_ema |= self.model_ema;
        cfg.tta_last_only |= self.tta_last_only;
        cfg.lookahead |= self.lookahead;
        if let Some(s) = &self.schedule {
            cfg.schedule = s.parse()?;
        }
        if let Some(w) = &self.model_ema_weights {
            cfg.model_ema_weights = parse_flag("model_ema_weights", w)?;
        }
        if let Some(t) = &self.tta {
            cfg.tta = t.parse().map_err(|expected| TrainError::InvalidConfig {
                field: "tta",
                value: t.clone(),
                expected,
            })?;
        }
        if let Some(p) = &self.precision {
            cfg.precision = p.parse().map_err(|expected| TrainError::InvalidConfig {
                field: "precision",
                value: p.clone(),
                expected,
            })?;
        }
        if let Some(c) = &self.channels_last {
            cfg.channels_last = match c.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            };
        }
        cfg.nesterov |= self.nesterov;
        cfg.freeze_backbone |= self.freeze_backbone;
        cfg.freeze_norm_weights |= self.freeze_norm_weights;
        if let Some(path) = &self.pretrained {
            cfg.pretrained = Some(std::path::absolute(path).unwrap_or_else(|_| path.clone()));
        }
        cfg.limit_train = self.limit_train.or(cfg.limit_train);
        cfg.limit_test = self.limit_test.or(cfg.limit_test);
        Ok(cfg)
    }
}

/// A trainer could not be made: a usage error (exit code 2) or another failure.
pub enum OpenError {
    /// A bad value or a run directory in the way: the user fixes the command.
    Usage(TrainError),
    /// Anything else.
    Other(TrainError),
}

impl From<TrainError> for OpenError {
    fn from(e: TrainError) -> Self {
        match e {
            e @ (TrainError::InvalidConfig { .. }
            | TrainError::ConfigJson { .. }
            | TrainError::DeviceUnavailable { .. }
            | TrainError::RunExists { .. }
            | TrainError::WorldSizeChanged { .. }
            | TrainError::RanksDisagree { .. }) => OpenError::Usage(e),
            e => OpenError::Other(e),
        }
    }
}

/// `--print-config`: the configuration as JSON on stdout (what `--config` reads back), once it
/// has passed the checks a run makes before it starts; or the error that building or checking
/// it gave, so that what is printed is a configuration that trains.
pub fn print_config(config: Result<TrainConfig, TrainError>) -> anyhow::Result<ExitCode> {
    let cfg = config.context("building the configuration (--print-config)")?;
    cfg.validate()
        .context("checking the configuration (--print-config)")?;
    println!("{}", cfg.to_json());
    Ok(ExitCode::SUCCESS)
}

/// The trainer of `flags`: the run in `--resume` (on `--device` when given), or a new one
/// from `config` in `--out` (default `runs/<model>-seed<seed>`); one rank of a data-parallel
/// run with `rank`, on its own GPU when CUDA is used.
pub fn open_trainer(
    flags: &TrainFlags,
    config: impl FnOnce() -> Result<TrainConfig, TrainError>,
    rank: Option<Rank>,
) -> Result<Trainer<ResNeXt>, OpenError> {
    let device = rank_device(flags.device.as_deref(), rank.as_ref());
    if let Some(dir) = &flags.resume {
        let trainer = match rank {
            Some(r) => Trainer::resume_data_parallel(dir, device.as_deref(), r.group)?,
            None => Trainer::resume(dir, device.as_deref())?,
        };
        if let Some(name) = &flags.recipe {
            check_same_recipe(&trainer.state().config, name)?;
        }
        return Ok(trainer);
    }
    let mut cfg = config()?;
    if let Some(d) = device {
        cfg.device = d;
    }
    // Trainer::resnext validates the configuration and checks the device (usage errors).
    let out = flags
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{}-seed{}", cfg.model, cfg.seed)));
    let trainer = Trainer::resnext(cfg)?;
    let trainer = match rank {
        Some(r) => trainer.data_parallel(r.group)?,
        None => trainer,
    };
    Ok(trainer.with_run_dir(&out)?)
}

/// The device of a rank: its own GPU (`cuda:LOCAL_RANK`) when `--device` asks for CUDA or
/// for the default and CUDA is there; otherwise what `--device` says.
fn rank_device(requested: Option<&str>, rank: Option<&Rank>) -> Option<String> {
    let wants_cuda = requested.is_none_or(|d| d.parse().is_ok_and(DeviceSpec::wants_any_gpu));
    match rank {
        Some(r) if wants_cuda && tch::Cuda::is_available() => {
            Some(format!("cuda:{}", r.local_rank))
        }
        _ => requested.map(str::to_string),
    }
}

/// What to do about `e` with these programs' options, if it is a fix the user makes here.
fn cli_hint(e: &TrainError) -> Option<String> {
    match e {
        TrainError::DeviceUnavailable { .. } => Some("use --device cpu".into()),
        TrainError::RunExists { path } => Some(format!(
            "resume it with --resume {}, or choose another --out",
            path.display()
        )),
        TrainError::Diverged { .. } => Some("try a lower --lr or some --warmup-epochs".into()),
        TrainError::OutOfMemory { .. } => Some("try a smaller --batch-size".into()),
        TrainError::WorldSizeChanged { path, saved, .. } => Some(format!(
            "resume it with --nproc {saved} (or torchrun with {saved} processes), or start a new \
             run with --pretrained {}",
            path.with_file_name("last.safetensors").display()
        )),
        TrainError::TensorFile(resnext::io::IoError::Locked { .. }) => {
            Some("let that run finish, or stop it (Ctrl-C), before resuming here".into())
        }
        _ => None,
    }
}

/// `e` as one line, with the command-line hint when there is one.
pub fn describe(e: &TrainError) -> String {
    let report = resnext::error_report(e);
    match cli_hint(e) {
        Some(hint) => format!("{report}; {hint}"),
        None => report,
    }
}

/// Prints `e` and returns its exit code.
pub fn exit_with(e: OpenError) -> ExitCode {
    match e {
        OpenError::Usage(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
        OpenError::Other(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Trains `trainer` on `data` with the Ctrl-C handler (first: checkpoint at the next batch and
/// exit 130; second: exit at once) and reports the outcome.
pub fn train(mut trainer: Trainer<ResNeXt>, data: &DataSplits, quiet: bool) -> Result<ExitCode> {
    let dir = trainer.run_dir().map(PathBuf::from).unwrap_or_default();
    trainer.set_progress(if quiet {
        ProgressMode::Lines
    } else {
        ProgressMode::Auto
    });
    let stop = trainer.stop_flag();
    // In a data-parallel run rank 0 speaks for all (the launcher passes Ctrl-C to every rank).
    let speak = trainer.rank() == 0;
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            if speak {
                eprintln!("\nsecond Ctrl-C: exiting now, without a checkpoint of this epoch");
            }
            std::process::exit(130);
        }
        if speak {
            eprintln!(
                "\nCtrl-C: saving a checkpoint at the next batch (Ctrl-C again to quit at once)"
            );
        }
    })
    .context("installing the Ctrl-C handler")?;
    let outcome = match trainer.fit(data) {
        Ok(outcome) => outcome,
        Err(e) => {
            let rank = match trainer.world_size() {
                1 => String::new(),
                _ => format!("rank {}: ", trainer.rank()),
            };
            eprintln!("error: {rank}{}", describe(&e));
            return Ok(ExitCode::FAILURE);
        }
    };
    if trainer.rank() != 0 {
        // Rank 0 reports the run; the others only say how they ended.
        return Ok(match outcome {
            Outcome::Stopped { .. } => ExitCode::from(130),
            _ => ExitCode::SUCCESS,
        });
    }
    Ok(match outcome {
        Outcome::Completed(_) => {
            println!("outputs in {}", dir.display());
            ExitCode::SUCCESS
        }
        Outcome::AlreadyComplete => {
            println!(
                "the run in {} is already complete ({} epochs); its files are up to date, see its summary.json",
                dir.display(),
                trainer.state().config.epochs
            );
            ExitCode::SUCCESS
        }
        Outcome::Stopped { saved, .. } => {
            match (saved, trainer.world_size()) {
                (false, _) => {}
                (true, 1) => println!("continue with --resume {}", dir.display()),
                (true, n) => println!(
                    "continue with --resume {} --nproc {n} (or torchrun with {n} processes)",
                    dir.display()
                ),
            }
            ExitCode::from(130)
        }
    })
}

/// A mistake in how the program was started (its flags or the torchrun variables): exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Runs `main`, printing an error chain and exiting 2 for a usage mistake ([`Usage`], or
/// inconsistent torchrun variables), 1 for any other failure.
pub fn exit_code(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", resnext::error_report(e.as_ref()));
            let usage = e.chain().any(|c| c.is::<Usage>() || c.is::<EnvError>());
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
