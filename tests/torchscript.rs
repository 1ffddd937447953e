//! TorchScript export checked in PyTorch: the traced module that `export_torchscript` writes is
//! loaded by `torch.jit.load` (torch 2.11, the wheel whose libtorch the crate links) and gives
//! the crate's own eval-mode logits on the same random images, through other batch sizes and
//! image sizes than the one traced, within [`MAX_REL_DIFF`]; its extra files hold the metadata.
//! The module also loads back in Rust (`tch::CModule`). Bad inputs give typed errors and leave
//! no file.
mod common;
#[path = "common/python.rs"]
mod python;

use std::path::Path;

use common::tensors::{max_rel_diff, randomize_batch_norms, read_f32, write_f32};
use resnext::data::Normalization;
use resnext::export::torchscript::{
    export_torchscript, export_torchscript_from_weights, torchscript_bytes,
};
use resnext::export::ExportError;
use resnext::weights::{save_weights_with, WeightsMetadata};
use resnext::{ResNeXt, ResNeXtConfig, Stem};
use serde_json::Value;
use tch::nn::{self, ModuleT};
use tch::{CModule, Device, Kind, Tensor};

/// Largest accepted `max |PyTorch − crate| / max |crate|`. The traced graph runs the same ATen
/// operators in the same order as the crate's forward pass, on the same libtorch, so the logits
/// agree to the last bit or within a few ulps (should libtorch pick another kernel for another
/// thread count); a wrong layer or a size baked into the graph moves them by 1e-1 or more, or
/// fails outright.
const MAX_REL_DIFF: f64 = 1e-5;

/// Loads every `(model, images, shape, logits)` case in one Python process: `torch.jit.load`
/// with the extra files, the forward pass on the images, the logits written beside; prints one
/// JSON line per case with the extra files read back.
const LOAD_AND_RUN: &str = r#"
import json, sys, torch
torch.set_num_threads(2)
keys = ["resnext.model", "resnext.classes", "resnext.image_size", "resnext.normalization"]
for case in json.loads(sys.argv[1]):
    extra = {k: "" for k in keys}
    module = torch.jit.load(case["model"], map_location="cpu", _extra_files=extra)
    module.eval()
    n, h, w = case["shape"]
    data = open(case["images"], "rb").read()
    images = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(n, 3, h, w)
    with torch.no_grad():
        logits = module(images)
    open(case["logits"], "wb").write(logits.contiguous().numpy().tobytes())
    extra = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    print(json.dumps({"shape": list(logits.shape), "extra": extra}))
"#;

/// One image batch to run through an exported module.
struct Run {
    images: Tensor,
    want: Tensor,
}

fn network(config: &ResNeXtConfig) -> (nn::VarStore, ResNeXt) {
    let vs = nn::VarStore::new(Device::Cpu);
    let net = ResNeXt::new(&vs.root(), config);
    randomize_batch_norms(&vs);
    (vs, net)
}

/// Random images of `n` x `side` x `side` and the crate's logits for them.
fn run_of(net: &ResNeXt, n: i64, side: i64) -> Run {
    let images = Tensor::randn([n, 3, side, side], (Kind::Float, Device::Cpu));
    let want = tch::no_grad(|| net.forward_t(&images, false));
    Run { images, want }
}

/// Runs every run of every model in PyTorch; returns the JSON reports and each logits tensor,
/// in order.
fn in_pytorch(dir: &Path, cases: &[(&Path, &[Run])]) -> Vec<(Value, Tensor)> {
    let mut list = Vec::new();
    let mut shapes = Vec::new();
    for (model, runs) in cases {
        for run in *runs {
            let i = list.len();
            let size = run.images.size();
            let images = dir.join(format!("images-{i}.f32"));
            write_f32(&images, &run.images);
            list.push(serde_json::json!({
                "model": model, "images": images, "shape": [size[0], size[2], size[3]],
                "logits": dir.join(format!("logits-{i}.f32")),
            }));
            shapes.push(run.want.size());
        }
    }
    let arg = Value::Array(list.clone()).to_string();
    let out = python::run_python(LOAD_AND_RUN, &[&arg]);
    let reports: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), list.len(), "{out}");
    reports
        .into_iter()
        .zip(list.iter().zip(&shapes))
        .map(|(report, (case, shape))| {
            let path = case["logits"].as_str().unwrap();
            (report, read_f32(Path::new(path), shape))
        })
        .collect()
}

fn metadata(config: &ResNeXtConfig, image_size: i64) -> WeightsMetadata {
    WeightsMetadata {
        model: config.clone(),
        classes: (0..config.num_classes)
            .map(|i| format!("class {i}"))
            .collect(),
        image_size,
        normalization: Normalization {
            mean: [0.4, 0.5, 0.6],
            std: [0.2, 0.25, 0.3],
        },
    }
}

#[test]
fn torchscript_export_runs_in_pytorch_with_the_crates_logits() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(7);
    // The tiny preset with both stems, from memory with metadata and from a weights file, and
    // ResNeXt-50 32x4d with the CIFAR stem; each traced on a batch of 2 at the usual size, run
    // on batches of 3 and 1 and on another image size.
    let cifar = ResNeXtConfig::tiny(5);
    let imagenet = ResNeXtConfig::tiny(3).with_stem(Stem::ImageNet);
    let rx50 = ResNeXtConfig::resnext50_32x4d(10);
    let (_vs1, net1) = network(&cifar);
    let (vs2, net2) = network(&imagenet);
    let (_vs3, net3) = network(&rx50);
    let paths: Vec<_> = ["tiny.pt", "tiny-imagenet.pt", "rx50.pt"]
        .iter()
        .map(|f| dir.path().join(f))
        .collect();
    let meta1 = metadata(&cifar, 32);
    export_torchscript(&net1, Some(&meta1), &paths[0]).unwrap();
    let weights = dir.path().join("imagenet.safetensors");
    let meta2 = metadata(&imagenet, 64);
    save_weights_with(&vs2, &weights, 0, Some(&meta2)).unwrap();
    let report = export_torchscript_from_weights(&weights, None, &paths[1]).unwrap();
    assert_eq!(report.config, imagenet);
    assert_eq!(
        report.bytes as u64,
        std::fs::metadata(&paths[1]).unwrap().len()
    );
    export_torchscript(&net3, None, &paths[2]).unwrap();
    let runs1 = [run_of(&net1, 3, 32), run_of(&net1, 1, 40)];
    let runs2 = [run_of(&net2, 3, 64), run_of(&net2, 1, 96)];
    let runs3 = [run_of(&net3, 2, 32)];
    let cases: [(&Path, &[Run]); 3] = [
        (&paths[0], &runs1),
        (&paths[1], &runs2),
        (&paths[2], &runs3),
    ];
    let results = in_pytorch(dir.path(), &cases);
    let wants = runs1.iter().chain(&runs2).chain(&runs3);
    for (i, ((report, got), run)) in results.iter().zip(wants).enumerate() {
        let diff = max_rel_diff(got, &run.want);
        eprintln!("case {i}: {:?} max rel diff {diff:.2e}", run.images.size());
        assert!(diff <= MAX_REL_DIFF, "case {i}: {diff:e}: {report}");
    }
    // Extra files: the configuration always, the rest of the metadata when given.
    let extra = |i: usize, key: &str| results[i].0["extra"][key].as_str().unwrap().to_string();
    for (i, meta) in [(0, &meta1), (2, &meta2)] {
        let map = meta.to_map();
        for (key, value) in &map {
            assert_eq!(&extra(i, key), value, "case {i} {key}");
        }
    }
    let model: ResNeXtConfig = serde_json::from_str(&extra(4, "resnext.model")).unwrap();
    assert_eq!(model, rx50);
    assert_eq!(
        extra(4, "resnext.classes"),
        "",
        "no metadata, no class names"
    );
}

/// airbench's `infer` (tta_level 1 and 2), written in PyTorch on the exported module: writes
/// the logits of both levels for the images.
const AIRBENCH_TTA: &str = r#"
import sys, torch
import torch.nn.functional as F
torch.set_num_threads(2)
model_path, images_path, n, h, w, out1, out2 = sys.argv[1:]
n, h, w = int(n), int(h), int(w)
net = torch.jit.load(model_path, map_location="cpu").eval()
data = open(images_path, "rb").read()
inputs = torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(n, 3, h, w)
def infer_mirror(inputs, net):
    return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))
def infer_mirror_translate(inputs, net):
    logits = infer_mirror(inputs, net)
    pad = 1
    padded_inputs = F.pad(inputs, (pad,) * 4, "reflect")
    inputs_translate_list = [padded_inputs[:, :, 0:h, 0:w], padded_inputs[:, :, 2:h + 2, 2:w + 2]]
    logits_translate_list = [infer_mirror(x, net) for x in inputs_translate_list]
    logits_translate = torch.stack(logits_translate_list).mean(0)
    return 0.5 * logits + 0.5 * logits_translate
with torch.no_grad():
    for out, f in [(out1, infer_mirror), (out2, infer_mirror_translate)]:
        open(out, "wb").write(f(inputs, net).contiguous().numpy().tobytes())
print("ok")
"#;

#[test]
fn tta_logits_equal_airbenchs_average_computed_in_pytorch() {
    use resnext::inference::Tta;
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(11);
    let config = ResNeXtConfig::tiny(10);
    let (_vs, net) = network(&config);
    let model = dir.path().join("m.pt");
    export_torchscript(&net, None, &model).unwrap();
    let (n, h, w) = (3, 32, 28);
    let images = Tensor::randn([n, 3, h, w], (Kind::Float, Device::Cpu));
    let input = dir.path().join("images.f32");
    write_f32(&input, &images);
    let outs = [
        dir.path().join("flip.f32"),
        dir.path().join("translate.f32"),
    ];
    let dims = [n, h, w].map(|d| d.to_string());
    let mut args: Vec<&str> = vec![model.to_str().unwrap(), input.to_str().unwrap()];
    args.extend(dims.iter().map(String::as_str));
    args.extend(outs.iter().map(|p| p.to_str().unwrap()));
    python::run_python(AIRBENCH_TTA, &args);
    let plain = tch::no_grad(|| Tta::None.apply(&net, &images)).unwrap();
    for (level, out) in [Tta::Flip, Tta::FlipTranslate].into_iter().zip(&outs) {
        let want = read_f32(out, &[n, config.num_classes]);
        let got = tch::no_grad(|| level.apply(&net, &images)).unwrap();
        let diff = max_rel_diff(&got, &want);
        eprintln!("{level:?}: max rel diff {diff:.2e}");
        // The same operators on the same libtorch; only the order of the averaging's additions
        // may differ (0.5a + 0.5b against (a + b) * 0.5), a few ulps.
        assert!(diff <= MAX_REL_DIFF, "{level:?}: {diff:e}");
        assert!(
            max_rel_diff(&plain, &want) > 1e-4,
            "{level:?} must change the logits"
        );
    }
    assert_eq!(Tta::FlipTranslate.passes(), 6);
    assert_eq!("2".parse::<Tta>(), Ok(Tta::FlipTranslate));
    let err = "mirror".parse::<Tta>().unwrap_err();
    assert!(err.contains("none, flip, flip-translate"), "{err}");
}

#[test]
fn torchscript_export_loads_back_in_rust_and_leaves_the_network_untouched() {
    tch::manual_seed(3);
    let config = ResNeXtConfig::tiny(4);
    let (vs, net) = network(&config);
    let before: Vec<_> = vs.variables().into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pt");
    export_torchscript(&net, None, &path).unwrap();
    // The network's own variables still require gradients and hold the same values.
    for (name, t) in &before {
        let now = &vs.variables()[name];
        assert_eq!(now.requires_grad(), t.requires_grad(), "{name}");
        assert!(now.equal(t), "{name}");
    }
    let module = CModule::load(&path).unwrap();
    let run = run_of(&net, 2, 32);
    let got = tch::no_grad(|| module.forward_ts(&[&run.images])).unwrap();
    let diff = max_rel_diff(&got, &run.want);
    assert!(diff <= MAX_REL_DIFF, "{diff:e}");
    // The archive is what a file gets: bytes and file agree.
    let bytes = torchscript_bytes(&net, None).unwrap();
    assert_eq!(&bytes[..2], b"PK");
}

#[test]
fn torchscript_export_errors_are_typed_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = ResNeXtConfig::tiny(4);
    let (vs, net) = network(&config);
    // An output path that cannot be written.
    let out = dir.path().join("missing-folder").join("m.pt");
    let err = export_torchscript(&net, None, &out).unwrap_err();
    assert!(matches!(err, ExportError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("missing-folder"), "{err}");
    // Metadata of another network.
    let other = metadata(&ResNeXtConfig::tiny(7), 32);
    let out = dir.path().join("m.pt");
    let err = export_torchscript(&net, Some(&other), &out).unwrap_err();
    assert!(matches!(err, ExportError::Metadata { .. }), "{err:?}");
    // Weights that do not fit their metadata.
    let weights = dir.path().join("w.safetensors");
    save_weights_with(&vs, &weights, 0, Some(&other)).unwrap();
    let err = export_torchscript_from_weights(&weights, None, &out).unwrap_err();
    assert!(err.to_string().contains("w.safetensors"), "{err}");
    // A file in no known format.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a weights file").unwrap();
    let err = export_torchscript_from_weights(&junk, None, &out).unwrap_err();
    assert!(matches!(err, ExportError::Weights(_)), "{err:?}");
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(
        left.len(),
        2,
        "only the weights and the junk file: {left:?}"
    );
}
