//! Model throughput in images/s (criterion `Throughput::Elements`):
//!
//! * `forward/...`: evaluation forward passes without autograd, ResNeXt-50 (32x4d, CIFAR stem)
//!   at batch 1, 16 and 64 and the tiny model at batch 128, as the plain [`ResNeXt`] (NCHW,
//!   `no_grad`) and as the [`InferenceModel`];
//! * `train_step/...`: one training step (forward, cross-entropy, backward, [`Sgd`] step) at
//!   batch 64 for ResNeXt-50 (channels-last) and batch 128 for the tiny model (NCHW and
//!   channels-last);
//! * on CUDA, when present, the same workloads at batch 128 and 512.
//!
//! Inputs are random 3x32x32 images; libtorch uses its default number of threads; freed memory
//! is kept in the process ([`resnext::memory::keep_freed_memory`], as the trainer does). Samples are
//! few (ResNeXt-50 at batch 64 takes seconds per iteration on a small CPU), so expect wide
//! intervals; `benches/compare_pytorch.sh` is the head-to-head comparison with PyTorch.
//!
//! Run with `cargo bench --bench model`, or a subset: `cargo bench --bench model -- tiny`.
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use resnext::inference::InferenceModel;
use resnext::layout::{channels_last, vars_to_channels_last};
use resnext::trainer::{Sgd, SgdConfig};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

fn build(cfg: &ResNeXtConfig, device: Device) -> (nn::VarStore, ResNeXt) {
    let vs = nn::VarStore::new(device);
    let net = ResNeXt::new(&vs.root(), cfg);
    (vs, net)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn forward(c: &mut Criterion, device: Device, cases: &[(ResNeXtConfig, i64)]) {
    let mut group = c.benchmark_group(format!("forward_{}", device_name(device)));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    for (cfg, batch) in cases {
        let (_vs, net) = build(cfg, device);
        let fast = InferenceModel::new(&net).expect("inference form");
        let xs = Tensor::randn([*batch, 3, 32, 32], (Kind::Float, device));
        group.throughput(Throughput::Elements(*batch as u64));
        let id = |form: &str| BenchmarkId::new(format!("{}/{form}", cfg.name), batch);
        group.bench_function(id("plain"), |b| {
            b.iter(|| {
                let y = tch::no_grad(|| net.forward_t(&xs, false));
                sync(device);
                y
            })
        });
        group.bench_function(id("inference"), |b| {
            b.iter(|| {
                let y = fast.forward(&xs);
                sync(device);
                y
            })
        });
    }
    group.finish();
}

fn train_step(c: &mut Criterion, device: Device, cases: &[(ResNeXtConfig, i64, bool)]) {
    let mut group = c.benchmark_group(format!("train_step_{}", device_name(device)));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    for (cfg, batch, cl) in cases {
        let (vs, net) = build(cfg, device);
        let mut xs = Tensor::randn([*batch, 3, 32, 32], (Kind::Float, device));
        if *cl {
            vars_to_channels_last(&vs).expect("channels-last");
            xs = channels_last(&xs).expect("channels-last");
        }
        let ys = Tensor::randint(10, [*batch], (Kind::Int64, device));
        let mut sgd = Sgd::new(&vs, SgdConfig::default());
        group.throughput(Throughput::Elements(*batch as u64));
        let format = if *cl { "channels_last" } else { "nchw" };
        group.bench_function(
            BenchmarkId::new(format!("{}/{format}", cfg.name), batch),
            |b| {
                b.iter(|| {
                    sgd.zero_grad();
                    let loss = net.forward_t(&xs, true).cross_entropy_for_logits(&ys);
                    loss.backward();
                    sgd.step(0.01);
                    sync(device);
                    loss
                })
            },
        );
    }
    group.finish();
}

fn device_name(device: Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

fn benches(c: &mut Criterion) {
    resnext::memory::keep_freed_memory();
    let r50 = ResNeXtConfig::resnext50_32x4d(10);
    let tiny = ResNeXtConfig::tiny(10);
    forward(
        c,
        Device::Cpu,
        &[
            (r50.clone(), 1),
            (r50.clone(), 16),
            (r50.clone(), 64),
            (tiny.clone(), 128),
        ],
    );
    train_step(
        c,
        Device::Cpu,
        &[
            (r50.clone(), 64, true),
            (tiny.clone(), 128, false),
            (tiny.clone(), 128, true),
        ],
    );
    if tch::Cuda::is_available() {
        let cuda = Device::Cuda(0);
        let mut eval = Vec::new();
        let mut train = Vec::new();
        for batch in [128, 512] {
            eval.push((r50.clone(), batch));
            eval.push((tiny.clone(), batch));
            train.push((r50.clone(), batch, true));
            train.push((tiny.clone(), batch, true));
        }
        forward(c, cuda, &eval);
        train_step(c, cuda, &train);
    }
}

criterion_group!(model, benches);
criterion_main!(model);
