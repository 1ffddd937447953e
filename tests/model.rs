//! The ResNeXt model family: shapes, exact parameter counts, gradients, the shortcut, BN
//! statistics, variable names and input errors, all through the public API.
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

#[test]
fn output_shapes_for_every_config_and_both_stems() {
    for name in resnext::resnext::MODEL_NAMES {
        for (stem, size) in [(Stem::Cifar, 32), (Stem::ImageNet, 64)] {
            let cfg = ResNeXtConfig::from_name(name, 7).unwrap().with_stem(stem);
            let vs = nn::VarStore::new(Device::Cpu);
            let net = ResNeXt::new(&vs.root(), &cfg);
            let train = net.forward_t(
                &Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu)),
                true,
            );
            assert_eq!(train.size(), vec![2, 7], "{name} {stem:?} train");
            let eval = tch::no_grad(|| {
                net.forward_t(
                    &Tensor::randn([1, 3, size, size], (Kind::Float, Device::Cpu)),
                    false,
                )
            });
            assert_eq!(eval.size(), vec![1, 7], "{name} {stem:?} eval");
            // The analytic stage shapes agree with the real ones.
            let feats = tch::no_grad(|| {
                net.try_forward_features_t(
                    &Tensor::zeros([1, 3, size, size], (Kind::Float, Device::Cpu)),
                    false,
                )
                .unwrap()
            });
            let shapes = cfg.stage_shapes(size, size);
            for (f, s) in feats.iter().zip(&shapes) {
                assert_eq!(f.size()[1..], s.shape[..], "{name} {stem:?} {}", s.name);
            }
        }
    }
}

#[test]
fn from_name_rejects_unknown_names_listing_valid_ones() {
    let err = ResNeXtConfig::from_name("resnext51", 10).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnknownModel { .. }));
    for name in resnext::resnext::MODEL_NAMES {
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
