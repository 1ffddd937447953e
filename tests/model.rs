//! The ResNeXt model family: shapes, exact parameter counts, gradients, the shortcut, BN
//! statistics, variable names and input errors, all through the public API; the preset table
//! and the stage specs, with FLOPs checked against the convolutions of the built network.
use std::collections::BTreeMap;

use resnext::resnext::{Layout, MODEL_NAMES, PRESETS};
use resnext::{ModelError, ResNeXt, ResNeXtBlock, ResNeXtConfig, Stem};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

fn trainable_params(cfg: &ResNeXtConfig) -> i64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), cfg);
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum()
}

#[test]
fn parameter_counts_match_torchvision_and_the_paper() {
    let imagenet = |mut c: ResNeXtConfig| {
        c.stem = Stem::ImageNet;
        c
    };
    let cases = [
        (imagenet(ResNeXtConfig::resnext50_32x4d(1000)), 25_028_904),
        (imagenet(ResNeXtConfig::resnext101_32x8d(1000)), 88_791_336),
        (imagenet(ResNeXtConfig::resnext101_64x4d(1000)), 83_455_272),
        (ResNeXtConfig::resnext50_32x4d(10), 22_992_714),
        (ResNeXtConfig::resnext29_8x64d(10), 34_426_698),
        (ResNeXtConfig::resnext29_16x64d(10), 68_155_210),
        (ResNeXtConfig::resnext29_32x4d(10), 4_775_754),
        (ResNeXtConfig::resnext29_2x64d(10), 9_130_314),
    ];
    for (cfg, expected) in cases {
        assert_eq!(
            trainable_params(&cfg),
            expected,
            "{} ({:?} stem)",
            cfg.name,
            cfg.stem
        );
    }
}

#[test]
fn resnext50_defaults_to_the_cifar_stem() {
    assert_eq!(ResNeXtConfig::resnext50_32x4d(10).stem, Stem::Cifar);
    let cfg = ResNeXtConfig::resnext29_8x64d(10);
    assert_eq!(
        (cfg.stem, cfg.blocks.clone(), cfg.planes.clone()),
        (Stem::Cifar, vec![3, 3, 3], vec![64, 128, 256])
    );
}

/// Side of the stem convolution's output for a `size x size` image, from torchvision's
/// stems (written out here, not read from the crate): the CIFAR 3x3 convolution keeps the
/// size, the ImageNet 7x7 one (stride 2, padding 3) gives `ceil(size / 2)`.
fn stem_conv_side(stem: Stem, size: i64) -> i64 {
    match stem {
        Stem::Cifar => size,
        Stem::ImageNet => (size + 1) / 2,
        Stem::Whitening => size - 1,
    }
}

/// FLOPs of every part (`stem`, `layer1`, …, `fc`) for a `size x size` image, counted from the
/// built network alone: the shapes of the convolution and classifier weights in the VarStore,
/// and the sizes of the feature maps `feats` of a real forward pass (`[stem, layer1, …]`). A
/// convolution weight `[C_out, C_in / groups, k, k]` costs
/// `2 · C_out · (C_in / groups) · k² · H_out · W_out`.
fn measured_flops(
    vs: &nn::VarStore,
    feats: &[Tensor],
    stem: Stem,
    size: i64,
) -> BTreeMap<String, u64> {
    let pixels = |i: usize| {
        let s = feats[i].size();
        s[2] * s[3]
    };
    let mut parts = BTreeMap::new();
    for (name, w) in vs.variables() {
        let dims = w.size();
        let (part, flops) = if name == "fc.weight" {
            ("fc".to_string(), 2 * dims[0] * dims[1])
        } else if dims.len() != 4 {
            continue;
        } else if name == "conv1.weight" {
            let side = stem_conv_side(stem, size);
            (
                "stem".to_string(),
                2 * dims.iter().product::<i64>() * side * side,
            )
        } else {
            // `layerS.B.<conv>.weight`: every convolution of a stage produces the stage's output
            // size, and reads it too except the first 1x1 of the first block, which reads
            // the previous stage's output; 1x1 convolutions keep the size they read.
            let fields: Vec<&str> = name.split('.').collect();
            let stage: usize = fields[0].trim_start_matches("layer").parse().unwrap();
            let first_reduce = fields[1] == "0" && fields[2] == "conv1";
            let source = if first_reduce { stage - 1 } else { stage };
            (
                fields[0].to_string(),
                2 * dims.iter().product::<i64>() * pixels(source),
            )
        };
        *parts.entry(part).or_insert(0) += flops as u64;
    }
    parts
}
/// Builds `cfg`, checks the logits' shape in both modes, and checks the analytic stage shapes,
/// FLOPs and feature info against the network's real feature maps and weights for one
/// `size x size` image.
fn check_specs_against_network(cfg: &ResNeXtConfig, size: i64) {
    let label = format!("{} ({:?} stem, {size}x{size})", cfg.name, cfg.stem);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), cfg);
    let train = net.forward_t(
        &Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu)),
        true,
    );
    assert_eq!(train.size(), vec![2, cfg.num_classes], "{label} train");
    let x = Tensor::randn([1, 3, size, size], (Kind::Float, Device::Cpu));
    let eval = tch::no_grad(|| net.forward_t(&x, false));
    assert_eq!(eval.size(), vec![1, cfg.num_classes], "{label} eval");
    let feats = tch::no_grad(|| net.try_forward_features_t(&x, false).unwrap());
    let shapes = cfg.stage_shapes(size, size);
    assert_eq!(
        shapes.len(),
        feats.len() + 1,
        "{label}: stem, stages and fc"
    );
    for (f, s) in feats.iter().zip(&shapes) {
        assert_eq!(f.size()[1..], s.shape[..], "{label} {}", s.name);
    }
    let info = cfg.feature_info();
    assert_eq!(info.len(), feats.len(), "{label}");
    for (f, i) in feats.iter().zip(&info) {
        let side = (size + i.reduction - 1) / i.reduction;
        assert_eq!(
            f.size()[1..],
            [i.channels, side, side],
            "{label} {}",
            i.name
        );
    }
    let analytic: BTreeMap<String, u64> =
        shapes.iter().map(|s| (s.name.clone(), s.flops)).collect();
    assert_eq!(
        measured_flops(&vs, &feats, cfg.stem, size),
        analytic,
        "{label}"
    );
    let total: u64 = analytic.values().sum();
    assert_eq!(cfg.forward_flops(size, size), total, "{label}");
}

/// For every preset of the table in torchvision's layout and both stems: the output shapes,
/// and the FLOPs and stage shapes computed from the specs are those of the network built from
/// the same table line. (The time-to-accuracy preset, whose stages pool, is checked against
/// PyTorch's FLOP counter in tests/fast_model.rs.)
#[test]
fn shapes_and_flops_of_every_preset_follow_the_built_network() {
    for preset in PRESETS.iter().filter(|p| p.layout == Layout::TORCHVISION) {
        for (stem, size) in [(Stem::Cifar, 32), (Stem::ImageNet, 64)] {
            check_specs_against_network(&preset.config(7).with_stem(stem), size);
        }
    }
}

/// A configuration that is in no table (two stages, cardinality 4, odd channel counts, sizes
/// that are not powers of two) gets its FLOPs, shapes and stage specs from the same code.
#[test]
fn a_config_outside_the_table_gets_matching_flops_and_specs() {
    let custom = ResNeXtConfig {
        name: "custom".into(),
        stem: Stem::Cifar,
        stem_channels: 24,
        blocks: vec![2, 1],
        planes: vec![16, 48],
        cardinality: 4,
        base_width: 16,
        num_classes: 5,
        zero_init_residual: false,
        ..ResNeXtConfig::tiny(5)
    };
    let stages = custom.stages();
    let summary: Vec<_> = stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.in_channels,
                s.width,
                s.groups,
                s.out_channels,
                s.stride,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("layer1", 24, 16, 4, 64, 1), ("layer2", 64, 48, 4, 192, 2)]
    );
    let blocks: Vec<_> = stages
        .iter()
        .flat_map(|s| s.block_specs())
        .map(|b| (b.in_channels, b.stride, b.has_projection()))
        .collect();
    assert_eq!(blocks, [(24, 1, true), (64, 1, false), (64, 2, true)]);
    check_specs_against_network(&custom, 36);
    check_specs_against_network(&custom.clone().with_stem(Stem::ImageNet), 70);
}

/// The preset table is the only list: the names, `from_name` and the named constructors all
/// read it.
#[test]
fn the_preset_table_drives_names_and_from_name() {
    let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
    assert_eq!(names, MODEL_NAMES);
    for preset in PRESETS {
        let cfg = ResNeXtConfig::from_name(preset.name, 3).unwrap();
        assert_eq!(cfg, preset.config(3));
        assert_eq!(
            (cfg.blocks.as_slice(), cfg.planes.as_slice()),
            (preset.blocks, preset.planes)
        );
        assert_eq!(
            (cfg.cardinality, cfg.base_width),
            (preset.cardinality, preset.base_width)
        );
        assert_eq!((cfg.stem, cfg.num_classes), (preset.layout.stem, 3));
    }
    assert_eq!(
        ResNeXtConfig::from_name("resnext29_8x64d", 10).unwrap(),
        ResNeXtConfig::resnext29_8x64d(10)
    );
}

#[test]
fn from_name_rejects_unknown_names_listing_valid_ones() {
    let err = ResNeXtConfig::from_name("resnext51", 10).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnknownModel { .. }));
    for name in MODEL_NAMES {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn every_parameter_receives_a_gradient() {
    for cfg in [
        ResNeXtConfig::tiny(10),
        ResNeXtConfig::tiny(10).with_stem(Stem::ImageNet),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = ResNeXt::new(&vs.root(), &cfg);
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        net.forward_t(&x, true)
            .cross_entropy_for_logits(&y)
            .backward();
        for (name, var) in vs.variables() {
            if !var.requires_grad() {
                continue;
            }
            let g = var.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert!(
                g.abs().sum(Kind::Double).double_value(&[]) > 0.0,
                "{name} has an all-zero gradient"
            );
        }
    }
}

/// With every weight of the residual branch zeroed (the last BN's weight and bias at 0), a
/// block without projection outputs ReLU(x): the shortcut carries the block's *input*. The
/// tutorial's bug (shortcut of the transformed tensor) would output zeros here.
#[test]
fn identity_shortcut_adds_the_block_input() {
    let vs = nn::VarStore::new(Device::Cpu);
    let block = ResNeXtBlock::new(vs.root() / "b", 256, 64, 1, 32, 4, true);
    assert!(!block.has_downsample());
    let x = Tensor::randn([2, 256, 8, 8], (Kind::Float, Device::Cpu));
    let y = block.forward_t(&x, false);
    assert!(y.allclose(&x.relu(), 1e-6, 1e-6, false));
    assert!(x.relu().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// With a projection, the shortcut is downsample(x) on the block's input: compare with the
/// projection applied by hand through the variables of `downsample.0` and `downsample.1`.
#[test]
fn projection_shortcut_reads_the_block_input() {
    let vs = nn::VarStore::new(Device::Cpu);
    let block = ResNeXtBlock::new(vs.root() / "b", 64, 64, 2, 32, 4, true);
    assert!(block.has_downsample());
    let vars = vs.variables();
    let x = Tensor::randn([2, 64, 8, 8], (Kind::Float, Device::Cpu));
    let proj = x.conv2d(
        &vars["b.downsample.0.weight"],
        None::<Tensor>,
        [2, 2],
        [0, 0],
        [1, 1],
        1,
    );
    let proj = proj.batch_norm(
        Some(&vars["b.downsample.1.weight"]),
        Some(&vars["b.downsample.1.bias"]),
        Some(&vars["b.downsample.1.running_mean"]),
        Some(&vars["b.downsample.1.running_var"]),
        false,
        0.1,
        1e-5,
        false,
    );
    let y = block.forward_t(&x, false);
    assert_eq!(y.size(), vec![2, 256, 4, 4]);
    assert!(y.allclose(&proj.relu(), 1e-5, 1e-5, false));
}

#[test]
fn bn_running_statistics_move_in_train_mode_only() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    let mean = || vs.variables()["layer1.0.bn1.running_mean"].copy();
    let before = mean();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
    let _ = tch::no_grad(|| net.forward_t(&x, false));
    assert!(mean().equal(&before), "eval mode changed running_mean");
    let _ = tch::no_grad(|| net.forward_t(&x, true));
    assert!(
        !mean().equal(&before),
        "train mode did not update running_mean"
    );
}

#[test]
fn variable_names_follow_torchvision() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::resnext50_32x4d(10));
    let vars = vs.variables();
    let mut expected = vec![
        "conv1.weight".to_string(),
        "fc.weight".into(),
        "fc.bias".into(),
    ];
    for bn in [
        "bn1",
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.0.bn3",
        "layer1.0.downsample.1",
        "layer4.2.bn3",
    ] {
        for suffix in ["weight", "bias", "running_mean", "running_var"] {
            expected.push(format!("{bn}.{suffix}"));
        }
    }
    for conv in [
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.0.conv3",
        "layer1.0.downsample.0",
        "layer2.0.downsample.0",
        "layer3.5.conv2",
        "layer4.2.conv3",
    ] {
        expected.push(format!("{conv}.weight"));
    }
    for name in &expected {
        assert!(vars.contains_key(name), "missing {name}");
    }
    // Nothing outside torchvision's layout: every name is conv1/bn1/fc or layerS.B.<part>.
    for name in vars.keys() {
        let ok =
            name.starts_with("conv1.") || name.starts_with("bn1.") || name.starts_with("fc.") || {
                let parts: Vec<&str> = name.split('.').collect();
                parts[0].starts_with("layer")
                    && parts[1].parse::<usize>().is_ok()
                    && ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"]
                        .contains(&parts[2])
            };
        assert!(ok, "unexpected variable name {name}");
    }
    assert!(!vars.contains_key("layer1.1.downsample.0.weight"));
    assert_eq!(vars["layer1.0.conv2.weight"].size(), vec![128, 4, 3, 3]);
    assert_eq!(vars["fc.weight"].size(), vec![10, 2048]);
}

#[test]
fn bad_input_shapes_give_a_clear_error() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    for shape in [
        vec![3i64, 32, 32],
        vec![2, 1, 32, 32],
        vec![2, 32, 32, 3],
        vec![0, 3, 32, 32],
    ] {
        let x = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
        let err = net.try_forward_t(&x, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("[N, 3, H, W]") && msg.contains(&format!("{shape:?}")),
            "{msg}"
        );
    }
    let bytes = Tensor::zeros([1, 3, 32, 32], (Kind::Uint8, Device::Cpu));
    assert!(matches!(
        net.try_forward_t(&bytes, false),
        Err(ModelError::InputShape { .. })
    ));
    // The ModuleT path panics with the same message instead of a libtorch abort.
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        net.forward_t(
            &Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu)),
            false,
        )
    }))
    .unwrap_err();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("[N, 3, H, W]"), "{text}");
}

#[test]
fn zero_init_residual_zeroes_the_last_bn_of_every_block() {
    let mut cfg = ResNeXtConfig::resnext29_32x4d(10);
    cfg.zero_init_residual = true;
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &cfg);
    let vars = vs.variables();
    for (name, t) in &vars {
        let w = t.abs().sum(Kind::Double).double_value(&[]);
        if name.ends_with("bn3.weight") {
            assert_eq!(w, 0.0, "{name}");
        } else if name.ends_with("bn1.weight") || name.ends_with("bn2.weight") {
            assert_eq!(w, t.numel() as f64, "{name} should be all ones");
        } else if name.ends_with(".bias") && name.contains("bn") {
            assert_eq!(w, 0.0, "{name}");
        }
    }
}

/// Kaiming-normal with fan-out: std = sqrt(2 / (out_channels * k * k)).
#[test]
fn conv_init_is_kaiming_normal_fan_out() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = ResNeXt::new(&vs.root(), &ResNeXtConfig::resnext29_32x4d(10));
    let w = &vs.variables()["layer3.0.conv3.weight"]; // [1024, 512, 1, 1]
    let expected = (2.0f64 / 1024.0).sqrt();
    let std = w.std(true).double_value(&[]);
    assert!(
        (std / expected - 1.0).abs() < 0.02,
        "std {std} vs {expected}"
    );
}

#[test]
fn flops_match_published_counts() {
    let cifar = ResNeXtConfig::resnext50_32x4d(10).forward_flops(32, 32) as f64 / 1e9;
    assert!((cifar - 2.69).abs() < 0.005, "{cifar}");
    let imagenet = ResNeXtConfig::resnext50_32x4d(1000)
        .with_stem(Stem::ImageNet)
        .forward_flops(224, 224) as f64
        / 1e9;
    assert!((imagenet - 8.46).abs() < 0.005, "{imagenet}");
}

#[test]
fn invalid_configs_are_errors_not_panics() {
    let mut cfg = ResNeXtConfig::tiny(10);
    cfg.blocks = vec![1, 0, 1];
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(matches!(
        ResNeXt::try_new(&vs.root(), &cfg),
        Err(ModelError::InvalidConfig {
            field: "blocks",
            ..
        })
    ));
    let cfg = ResNeXtConfig::tiny(0);
    assert!(matches!(
        ResNeXt::try_new(&vs.root(), &cfg),
        Err(ModelError::InvalidConfig {
            field: "num_classes",
            ..
        })
    ));
}

#[test]
fn configurations_beyond_the_limits_are_refused_before_any_arithmetic_overflows() {
    use resnext::resnext::CONFIG_LIMITS as L;
    type Edit = fn(&mut ResNeXtConfig);
    let edits: [(&str, Edit); 9] = [
        ("planes", |c| c.planes[0] = 1 << 40),
        ("planes", |c| c.planes[0] = i64::MAX),
        ("planes", |c| c.planes[2] = L.channels + 1),
        ("stem_channels", |c| c.stem_channels = 1 << 62),
        ("cardinality", |c| c.cardinality = i64::MAX),
        ("base_width", |c| c.base_width = L.channels + 1),
        ("num_classes", |c| c.num_classes = L.classes + 1),
        ("blocks", |c| c.blocks[1] = L.blocks + 1),
        ("blocks/planes", |c| {
            c.blocks = vec![1; L.stages + 1];
            c.planes = vec![64; L.stages + 1];
        }),
    ];
    for (field, edit) in edits {
        let mut cfg = ResNeXtConfig::tiny(10);
        edit(&mut cfg);
        match cfg.validate() {
            Err(ModelError::InvalidConfig { field: f, .. }) if f == field => {}
            other => panic!("{field}: expected InvalidConfig, got {other:?} for {cfg:?}"),
        }
    }
    // The widest width within the limits still fits, and one beyond is refused by name.
    let mut cfg = ResNeXtConfig::tiny(10);
    (cfg.cardinality, cfg.base_width, cfg.planes) = (L.channels, 64, vec![16, 16, 16]);
    assert_eq!(cfg.group_width(16), 16 * L.channels);
    assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
    cfg.planes = vec![16, 16, 17];
    assert!(cfg.validate().is_err());
    for preset in resnext::resnext::PRESETS {
        assert!(preset.config(1000).validate().is_ok(), "{}", preset.name);
    }
}

#[test]
fn an_input_of_another_kind_or_device_is_an_error_not_a_panic() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    let xs = Tensor::zeros([2, 3, 32, 32], (Kind::Double, Device::Cpu));
    match net.try_forward_t(&xs, false) {
        Err(e @ resnext::ModelError::InputPlacement { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("Double") && msg.contains("Float"), "{msg}");
        }
        other => panic!("expected an input placement error, got {other:?}"),
    }
    assert!(net.try_forward_features_t(&xs, false).is_err());
    let ok = Tensor::zeros([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    assert_eq!(net.try_forward_t(&ok, false).unwrap().size(), [2, 10]);
}
