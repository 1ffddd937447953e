//! The inference form (`resnext::inference`): same logits as the plain model in evaluation
//! mode, with randomised BN statistics and affine parameters so that folding is exercised, for
//! both stems, for every preset of the table and for a configuration outside it; errors
//! instead of panics for bad inputs; channels-last helpers. Every check runs both sets of
//! kernels: oneDNN fused (the default on x86-64 CPUs other than Intel's) and generic (the
//! default on Intel's).
use resnext::inference::{InferenceModel, Kernels};
use resnext::layout::{channels_last, vars_to_channels_last};
use resnext::resnext::{Layout, PRESETS};
use resnext::{ModelError, ResNeXt, ResNeXtConfig, Stem};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// Gives every BN layer random running statistics and affine parameters, and every
/// classifier/convolution its usual random initialisation (left as is).
fn randomise_bn(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let n = t.size();
            let u = |lo: f64, hi: f64| {
                Tensor::rand(n.as_slice(), (Kind::Float, Device::Cpu)) * (hi - lo) + lo
            };
            let is_bn =
                name.contains(".bn") || name.starts_with("bn") || name.contains("downsample.1");
            let value = if name.ends_with("running_mean") {
                u(-0.5, 0.5)
            } else if name.ends_with("running_var") {
                u(0.3, 2.0)
            } else if is_bn && name.ends_with("weight") {
                u(0.4, 1.6)
            } else if is_bn && name.ends_with("bias") {
                u(-0.5, 0.5)
            } else {
                continue;
            };
            t.copy_(&value);
        }
    });
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a - b)) / max_abs(b).max(1e-12)
}

/// Both sets of kernels: oneDNN fused (the torch 2.11 wheel registers its operators) and generic.
const KERNELS: [Kernels; 2] = [Kernels::OneDnnFused, Kernels::Generic];

/// The kernels `Kernels::Auto` must pick for a float32 network on this CPU: generic on Intel
/// CPUs, oneDNN fused on other x86-64 ones (the crate asks CPUID; this reads the vendor Linux
/// reports in /proc/cpuinfo, so a wrong CPUID decoding fails here).
fn expected_auto_on_cpu() -> Kernels {
    if !cfg!(target_arch = "x86_64") {
        return Kernels::Generic;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo")
        .expect("this test reads the CPU vendor from /proc/cpuinfo (Linux only)");
    let vendor = info
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|rest| rest.split(':').nth(1))
        .map(str::trim)
        .expect("/proc/cpuinfo has no vendor_id line");
    if vendor == "GenuineIntel" {
        Kernels::Generic
    } else {
        Kernels::OneDnnFused
    }
}

/// Builds `cfg` with random BN statistics and checks that its inference form on `kernels` gives
/// the eval-mode logits for a random batch of two `size x size` images, and that they depend on
/// the input. Returns the inference form, the batch and the reference logits.
fn check_logits(
    cfg: &ResNeXtConfig,
    size: i64,
    seed: i64,
    kernels: Kernels,
) -> (InferenceModel, Tensor, Tensor) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), cfg);
    randomise_bn(&vs);
    let fast = InferenceModel::with_kernels(&net, kernels).expect("inference form");
    assert_eq!(fast.kernels(), kernels);
    let xs = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
    let reference = tch::no_grad(|| net.forward_t(&xs, false));
    let logits = fast.try_forward(&xs).expect("forward");
    assert_eq!(logits.size(), vec![2, cfg.num_classes]);
    let err = rel_err(&logits, &reference);
    assert!(
        err <= 1e-4,
        "{} ({:?} stem, {kernels:?}): relative error {err:e}",
        cfg.name,
        cfg.stem
    );
    // The logits must depend on the input (a constant output would match trivially).
    assert!(max_abs(&(logits.get(0) - logits.get(1))) > 1e-6 * max_abs(&reference));
    (fast, xs, reference)
}

fn check_equivalence(cfg: &ResNeXtConfig, size: i64, seed: i64) {
    for kernels in KERNELS {
        check_equivalence_on(cfg, size, seed, kernels);
    }
}

fn check_equivalence_on(cfg: &ResNeXtConfig, size: i64, seed: i64, kernels: Kernels) {
    let (fast, xs, reference) = check_logits(cfg, size, seed, kernels);
    let logits = fast.forward(&xs);
    // A second call reuses the pooled buffers and must give the same values.
    let again = fast.forward(&xs);
    assert!(rel_err(&again, &logits) <= 1e-6);
    // `ModuleT` ignores the training flag.
    let as_module = fast.forward_t(&xs, true);
    assert!(rel_err(&as_module, &logits) <= 1e-6);
    // Another batch size after the first one, and an input that is already channels-last
    // (which the fused kernels read in place: it must be left as it was).
    let one = fast.forward(&xs.narrow(0, 1, 1));
    assert!(rel_err(&one, &reference.narrow(0, 1, 1)) <= 1e-4);
    let cl = channels_last(&xs).unwrap();
    let kept = cl.copy();
    assert!(rel_err(&fast.forward(&cl), &reference) <= 1e-4);
    assert!(cl.equal(&kept), "the input was changed");
}

/// The inference form reads the geometry from the same specs as the network: every line of
/// the preset table in torchvision's layout, with both stems, gets a matching inference form
/// (16x16 images for the CIFAR stem, to keep the large presets quick on CPU). The
/// time-to-accuracy layout is refused by name (tests/fast_model.rs).
#[test]
fn every_preset_inference_form_matches_eval_mode() {
    let standard = PRESETS.iter().filter(|p| p.layout == Layout::TORCHVISION);
    for (i, preset) in standard.enumerate() {
        let seed = 100 + i as i64;
        for kernels in KERNELS {
            let _ = check_logits(&preset.config(10), 16, seed, kernels);
            let imagenet = preset.config(10).with_stem(Stem::ImageNet);
            let _ = check_logits(&imagenet, 64, seed, kernels);
        }
    }
}

/// A configuration in no table (two stages, cardinality 4, a stride-1 projection and a
/// stage of two blocks, sizes that are not powers of two) gets a matching inference form.
#[test]
fn a_config_outside_the_table_gets_a_matching_inference_form() {
    let mut custom = ResNeXtConfig::tiny(6);
    custom.name = "custom".into();
    custom.stem_channels = 16;
    (custom.blocks, custom.planes) = (vec![1, 2], vec![8, 32]);
    (custom.cardinality, custom.base_width) = (4, 32);
    check_equivalence(&custom, 30, 7);
    check_equivalence(&custom.with_stem(Stem::ImageNet), 45, 8);
}

#[test]
fn tiny_inference_form_matches_eval_mode_cifar_stem() {
    check_equivalence(&ResNeXtConfig::tiny(10), 32, 1);
}

#[test]
fn tiny_inference_form_matches_eval_mode_imagenet_stem() {
    check_equivalence(&ResNeXtConfig::tiny(7).with_stem(Stem::ImageNet), 64, 2);
}

#[test]
fn resnext50_inference_form_matches_eval_mode_cifar_stem() {
    check_equivalence(&ResNeXtConfig::resnext50_32x4d(10), 32, 3);
}

#[test]
fn resnext50_inference_form_matches_eval_mode_imagenet_stem() {
    check_equivalence(
        &ResNeXtConfig::resnext50_32x4d(10).with_stem(Stem::ImageNet),
        64,
        4,
    );
}

#[test]
fn inference_form_is_a_snapshot_and_sees_the_bn_statistics() {
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    randomise_bn(&vs);
    let before = InferenceModel::new(&net).unwrap();
    assert_eq!(before.kernels(), expected_auto_on_cpu(), "the default");
    assert_eq!(Kernels::Auto.resolve(&net), before.kernels());
    for k in KERNELS {
        assert_eq!(k.resolve(&net), k, "only Auto is resolved");
    }
    let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let old = before.forward(&xs);
    // Shift one running mean: the plain model changes, the old inference form does not, a
    // new one follows the plain model.
    tch::no_grad(|| {
        let mut m = vs.variables()["layer2.0.bn2.running_mean"].shallow_clone();
        let _ = m.g_add_scalar_(0.7);
    });
    let reference = net.forward_t(&xs, false);
    assert!(
        rel_err(&old, &reference) > 1e-3,
        "the statistics must matter"
    );
    assert!(rel_err(&before.forward(&xs), &old) <= 1e-6);
    let after = InferenceModel::new(&net).unwrap();
    assert!(rel_err(&after.forward(&xs), &reference) <= 1e-4);
    after.release_buffers();
    assert!(rel_err(&after.forward(&xs), &reference) <= 1e-4);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    let f = (Kind::Float, Device::Cpu);
    for fast in KERNELS.map(|k| InferenceModel::with_kernels(&net, k).unwrap()) {
        for xs in [
            Tensor::zeros([3, 32, 32], f),
            Tensor::zeros([2, 1, 32, 32], f),
            Tensor::zeros([2, 4, 32, 32], f),
            Tensor::zeros([0, 3, 32, 32], f),
            Tensor::zeros([2, 3, 32, 32], (Kind::Int64, Device::Cpu)),
            Tensor::zeros([1, 2, 3, 32, 32], f),
        ] {
            match fast.try_forward(&xs) {
                Err(ModelError::InputShape { shape, .. }) => assert_eq!(shape, xs.size()),
                other => panic!("expected an input error for {:?}, got {other:?}", xs.size()),
            }
        }
        // An image too small for the strides is an error too, on both kernels.
        let tiny_image = Tensor::zeros([1, 3, 1, 1], f);
        assert!(matches!(
            fast.try_forward(&tiny_image),
            Err(ModelError::Torch(_)) | Ok(_)
        ));
    }
    // The fused kernels refuse a network they cannot run; the default runs it.
    let vs64 = nn::VarStore::new(Device::Cpu);
    let net64 = ResNeXt::new(&vs64.root(), &ResNeXtConfig::tiny(10));
    let mut vs64 = vs64;
    vs64.double();
    match InferenceModel::with_kernels(&net64, Kernels::OneDnnFused) {
        Err(ModelError::Unsupported { what }) => assert!(what.contains("Double"), "{what}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    let auto = InferenceModel::new(&net64).unwrap();
    assert_eq!(
        auto.kernels(),
        Kernels::Generic,
        "the default for float64, on every CPU"
    );
    let xs = Tensor::randn([2, 3, 32, 32], (Kind::Double, Device::Cpu));
    assert!(rel_err(&auto.forward(&xs), &net64.forward_t(&xs, false)) <= 1e-10);
}

#[test]
fn channels_last_helpers_keep_values() {
    tch::manual_seed(6);
    let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    let y = channels_last(&x).unwrap();
    assert_eq!(y.stride(), vec![60, 1, 15, 3]);
    assert_eq!(max_abs(&(&x - &y)), 0.0);
    let v = Tensor::randn([7], (Kind::Float, Device::Cpu));
    assert_eq!(channels_last(&v).unwrap().stride(), vec![1]);

    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    let xs = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let before = net.forward_t(&xs, false);
    let w = vs.variables()["layer1.0.conv2.weight"].shallow_clone();
    vars_to_channels_last(&vs).unwrap();
    // The same variable object now has channels-last strides and still requires a gradient.
    assert_eq!(w.stride()[1], 1);
    assert!(w.requires_grad());
    let after = net.forward_t(&channels_last(&xs).unwrap(), false);
    assert!(rel_err(&after, &before) <= 1e-5);
    // Training still produces gradients for every variable.
    let loss = net.forward_t(&xs, true).sum(Kind::Float);
    loss.backward();
    assert!(vs.trainable_variables().iter().all(|t| t.grad().defined()));
}

#[test]
fn buffers_of_the_largest_batch_are_kept_and_serve_smaller_ones() {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), &ResNeXtConfig::tiny(10));
    let fast = InferenceModel::with_kernels(&net, Kernels::Generic).unwrap();
    let input = |n: i64| Tensor::randn([n, 3, 16, 16], (Kind::Float, Device::Cpu));
    let check = |xs: &Tensor| {
        let err = rel_err(&fast.forward(xs), &net.forward_t(xs, false));
        assert!(err < 1e-4, "relative error {err}");
    };
    check(&input(8));
    let at_8 = fast.buffered_elements();
    assert!(at_8 > 0);
    // Smaller batches, of several sizes, use the same buffers: nothing more is kept.
    for n in [3, 5, 1, 8] {
        check(&input(n));
        assert_eq!(fast.buffered_elements(), at_8, "after a batch of {n}");
    }
    // A larger batch replaces them with buffers twice the size, not added to them.
    check(&input(16));
    assert_eq!(fast.buffered_elements(), 2 * at_8);
    check(&input(8));
    assert_eq!(fast.buffered_elements(), 2 * at_8);
    fast.release_buffers();
    assert_eq!(fast.buffered_elements(), 0);
}
