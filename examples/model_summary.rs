//! Prints a ResNeXt's stage specs, per-stage output shapes, its parameter count and forward
//! GFLOPs per image.
//!
//! ```text
//! cargo run --example model_summary -- resnext50_32x4d
//! cargo run --example model_summary -- resnext50_32x4d --imagenet --classes 1000
//! cargo run --example model_summary -- resnext_fast --json
//! cargo run --example model_summary -- resnext_fast --blocks 2,2,2 --cardinality 16
//! ```
use anyhow::{Context, Result};
use clap::Parser;
use resnext::resnext::MODEL_NAMES;
use resnext::trainer::TrainConfig;
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use tch::{nn, Device, Kind, Tensor};

#[derive(Parser, Debug)]
#[command(about = "Per-stage shapes, parameters and GFLOPs of a ResNeXt configuration")]
struct Args {
    /// Configuration name (one of the preset table's).
    #[arg(default_value = "resnext50_32x4d",
          value_parser = clap::builder::PossibleValuesParser::new(MODEL_NAMES))]
    model: String,
    /// Use the ImageNet stem (7x7 conv stride 2 + max-pool) instead of the CIFAR stem.
    #[arg(long)]
    imagenet: bool,
    /// Number of classes of the classifier.
    #[arg(long, default_value_t = 10)]
    classes: i64,
    /// Input size (square); defaults to 32 for the CIFAR stem and 224 for the ImageNet stem.
    #[arg(long)]
    size: Option<i64>,
    /// The stages' numbers of blocks instead of the preset's (as train_cifar10's --blocks).
    #[arg(long, value_name = "N,N,..", value_delimiter = ',')]
    blocks: Option<Vec<usize>>,
    /// The stages' planes instead of the preset's.
    #[arg(long, value_name = "P,P,..", value_delimiter = ',')]
    planes: Option<Vec<i64>>,
    /// The number of groups (C) instead of the preset's.
    #[arg(long, value_name = "C")]
    cardinality: Option<i64>,
    /// The group width at 64 planes (d) instead of the preset's.
    #[arg(long, value_name = "D")]
    base_width: Option<i64>,
    /// Print the configuration as JSON (as `resnext.model` in a weights file) and exit.
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The training configuration's reading of a preset and its size overrides, so that the
    // summary is of the network train_cifar10 builds from the same flags.
    let train = TrainConfig {
        model: args.model.clone(),
        num_classes: args.classes,
        blocks: args.blocks.clone(),
        planes: args.planes.clone(),
        cardinality: args.cardinality,
        base_width: args.base_width,
        ..TrainConfig::default()
    };
    let mut config: ResNeXtConfig = train.model_config()?;
    if args.imagenet {
        config.stem = Stem::ImageNet;
    }
    if args.json {
        println!("{}", serde_json::to_string(&config)?);
        return Ok(());
    }
    let size = args.size.unwrap_or(match config.stem {
        Stem::Cifar | Stem::Whitening => 32,
        Stem::ImageNet => 224,
    });
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::try_new(&vs.root(), &config)?;
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum();

    println!(
        "{} ({:?} stem, {} classes), input 3x{size}x{size}",
        config.name, config.stem, config.num_classes
    );
    println!(
        "{:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "stage", "blocks", "in", "width", "groups", "out", "stride"
    );
    for stage in config.stages() {
        println!(
            "{:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            stage.name,
            stage.blocks,
            stage.in_channels,
            stage.width,
            stage.groups,
            stage.out_channels,
            stage.stride
        );
    }
    println!("{:<8} {:>18} {:>10}", "part", "output [C, H, W]", "GFLOPs");
    let parts = config.stage_shapes(size, size);
    for part in &parts {
        println!(
            "{:<8} {:>18} {:>10.3}",
            part.name,
            format!("{:?}", part.shape),
            part.flops as f64 / 1e9
        );
    }
    println!("parameters: {params}");
    println!(
        "forward GFLOPs per image: {:.2} ({:.1} MFLOPs; multiply-add = 2 FLOPs)",
        config.forward_flops(size, size) as f64 / 1e9,
        config.forward_flops(size, size) as f64 / 1e6
    );

    // Check the analytic shapes against a real forward pass.
    let x = Tensor::zeros([1, 3, size, size], (Kind::Float, Device::Cpu));
    let features = tch::no_grad(|| net.try_forward_features_t(&x, false))
        .context("forward pass of the summary model")?;
    for (part, feature) in parts.iter().zip(&features) {
        let got = &feature.size()[1..];
        anyhow::ensure!(
            got == part.shape,
            "{}: forward pass gives {got:?}, analytic shape {:?}",
            part.name,
            part.shape
        );
    }
    Ok(())
}
