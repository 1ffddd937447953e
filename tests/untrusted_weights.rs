//! Weights files nobody should trust, made in the test: PyTorch (torch 2.11 from the test
//! cache) and Python's own `pickle`, `zipfile` and `tarfile` write `.pth` files that are tiny
//! but claim gigabytes (stride-0 views, shared storages, compressed or endless pickles, tensors
//! of rank 100,000, storages shorter than their tensors, strides that overflow), a TAR file
//! with a sparse entry, and safetensors files whose `resnext.model` metadata describes
//! networks of absurd or overflowing sizes.
//!
//! Each file is handed to the `predict` example in a child process held to an address-space
//! limit ([`MEMORY_BUDGET`] above what `predict` needs for a valid file of the same model) and
//! a time limit ([`TIME_BUDGET`]): the child must end with an error naming the problem, not a
//! signal, a panic or a timeout, so a regression fails this test instead of the machine.
//! Python: see `tests/common/python.rs`.
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;
#[path = "common/python.rs"]
mod python;
use python::run_python;

use resnext::data::{Normalization, CLASS_NAMES};
use resnext::io::{read_safetensors, write_safetensors};
use resnext::weights::{save_weights_with, WeightsMetadata, MODEL_KEY};
use resnext::{ResNeXt, ResNeXtConfig};
use tch::{nn, Device};

/// Address space a child may take beyond what `predict` took for a valid file of the same
/// model (libtorch's CUDA build maps a few GB of libraries; the tiny model itself is 1.3 MB).
const MEMORY_BUDGET: u64 = 768 << 20;
/// Wall time a child may take (a debug build; a valid file takes about 2 s here).
const TIME_BUDGET: Duration = Duration::from_secs(60);

const CRAFT: &str = r#"
import collections, io, os, pickle, sys, tarfile, zipfile, torch
from safetensors.torch import load_file

out, tiny = sys.argv[1], sys.argv[2]
sd = collections.OrderedDict(load_file(tiny))
path = lambda name: os.path.join(out, name)

# torch.save itself: views are saved as their storage plus sizes and strides.
torch.save(sd, path("valid.pth"))
torch.save(sd, path("valid_p4.pth"), pickle_protocol=4)  # FRAME, MEMOIZE, STACK_GLOBAL, ...
torch.save(sd, path("valid_p5.pth"), pickle_protocol=5)
torch.save({"x": torch.zeros(1).expand(10 * 2**30 // 4)}, path("expanded.pth"))  # 10 GiB view
junk = collections.OrderedDict(sd)
for i in range(4):
    junk[f"junk{i}"] = torch.zeros(1).expand(2**30)  # 4 GiB each, not the model's
torch.save(junk, path("junk_views.pth"))
shared = torch.zeros(16 * 2**20)  # one 64 MiB storage, 256 views of all of it: 16 GiB
views = collections.OrderedDict(sd)
views.update((f"v{i}", shared[:]) for i in range(256))
torch.save(views, path("shared_views.pth"))
big = collections.OrderedDict(sd)
big["conv1.weight"] = torch.zeros(1).expand(2**28, 3, 3, 3)  # the model's name, 27 GiB
torch.save(big, path("huge_conv1.pth"))

# Pickles written by hand: what torch.load would rebuild, with claims of our choosing.
class Storage:
    def __init__(self, key, ty, numel):
        self.key, self.ty, self.numel = key, ty, numel

class Tensor:
    def __init__(self, storage, size, stride, offset=0):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)

class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.ty, obj.key, "cpu", obj.numel)
        return None

def save_zip(name, obj, storages, method=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path(name), "w", method) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", "3\n")

TYPES = {torch.float32: torch.FloatStorage, torch.int64: torch.LongStorage}

def model(edit):
    """The tiny model as hand-written pickle and storages, with `edit(name, t)` giving
    (size, stride, offset, storage bytes) for each tensor."""
    obj, storages = collections.OrderedDict(), {}
    for i, (name, t) in enumerate(sd.items()):
        size, stride, offset, data = edit(name, t)
        storage = Storage(str(i), TYPES[t.dtype], len(data) // t.element_size())
        obj[name] = Tensor(storage, size, stride, offset)
        storages[str(i)] = data
    return obj, storages

def plain(name, t):
    return list(t.shape), list(t.stride()), 0, t.contiguous().numpy().tobytes()

save_zip("handmade_valid.pth", *model(plain))
def short(name, t):
    size, stride, offset, data = plain(name, t)
    return (size, stride, offset, data[:4]) if name == "conv1.weight" else (size, stride, offset, data)
save_zip("short_storage.pth", *model(short))
def overflow(name, t):
    size, stride, offset, data = plain(name, t)
    return (size, [2**62] * len(size), offset, data) if name == "conv1.weight" else (size, stride, offset, data)
save_zip("stride_overflow.pth", *model(overflow))
def far(name, t):
    size, stride, offset, data = plain(name, t)
    return (size, stride, 2**62, data) if name == "conv1.weight" else (size, stride, offset, data)
save_zip("offset_overflow.pth", *model(far))
def spread(name, t):
    size, stride, offset, data = plain(name, t)
    if name != "conv1.weight":
        return size, stride, offset, data
    return size, [s * 10 for s in stride], offset, data * 10  # spans 10x its size
save_zip("spread_view.pth", *model(spread))
rank = Tensor(Storage("0", torch.FloatStorage, 1), [1] * 100_000, [1] * 100_000)
save_zip("rank.pth", {"conv1.weight": rank, "fc.weight": rank}, {"0": b"\0" * 4})

# A parameter inside a parameter, 200,000 deep (a recursive reader runs out of stack), a dict
# of dicts sharing their values 30 levels down (2^30 paths to one tensor), a 600-byte name.
n = 200_000
chain = (b"\x80\x02}(X\x0c\x00\x00\x00conv1.weightctorch._utils\n_rebuild_parameter\nq\x00("
         + b"h\x00(" * (n - 1) + b"N" + b"\x89)tR" * n + b"u.")
with zipfile.ZipFile(path("wrapped.pth"), "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", chain)
shared_dicts = {"a": torch.zeros(1), "b": torch.zeros(1)}
for _ in range(30):
    shared_dicts = {"a": shared_dicts, "b": shared_dicts}
torch.save(shared_dicts, path("shared_dicts.pth"))
torch.save({"x" * 600: sd}, path("long_name.pth"))

# data.pkl: 100 MiB of one opcode, deflated into a small file; and 17 MiB of it stored.
endless = b"\x80\x02" + b"]" * (100 * 2**20)
with zipfile.ZipFile(path("bomb.pth"), "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("archive/data.pkl", endless)
with zipfile.ZipFile(path("long_pickle.pth"), "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", endless[: 17 * 2**20])

# The legacy format: torch's three header pickles, then a pickle that never stops.
with open(path("legacy_endless.pth"), "wb") as f:
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(obj, f, protocol=2)
    f.write(endless[: 20 * 2**20])

# A TAR file (PyTorch <= 0.3's format) whose entry is marked sparse.
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
    info = tarfile.TarInfo("storages")
    info.size = 512
    t.addfile(info, io.BytesIO(b"\0" * 512))
raw = bytearray(buf.getvalue())
raw[156:157] = b"S"
raw[148:156] = b" " * 8
raw[148:156] = b"%06o\0 " % sum(raw[:512])
open(path("sparse_tar.pth"), "wb").write(raw)
print("crafted", len(os.listdir(out)), "files")
"#;

/// The crafted files' folder, made once per process; holds `tiny.safetensors` (ours, with
/// metadata), `cat.png` and the files of [`CRAFT`].
fn crafted() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("untrusted");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tiny = dir.join("tiny.safetensors");
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ResNeXtConfig::tiny(10);
        let _net = ResNeXt::new(&vs.root(), &config);
        let meta = WeightsMetadata {
            model: config,
            classes: CLASS_NAMES.iter().map(|c| c.to_string()).collect(),
            image_size: 32,
            normalization: Normalization::default(),
        };
        save_weights_with(&vs, &tiny, 0, Some(&meta)).unwrap();
        image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 90]))
            .save(dir.join("cat.png"))
            .unwrap();
        run_python(CRAFT, &[dir.to_str().unwrap(), tiny.to_str().unwrap()]);
        dir
    })
}

/// How a child ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    seconds: f64,
    peak_kb: u64,
}

/// Runs `predict --weights FILE cat.png` in a child with an address-space limit of `limit`
/// bytes (none when 0), killed after [`TIME_BUDGET`].
fn predict(file: &Path, limit: u64) -> Ended {
    predict_with(file, &[], limit)
}

/// [`predict`] with more arguments.
fn predict_with(file: &Path, args: &[&str], limit: u64) -> Ended {
    let mut cmd = Command::new(common::example("predict"));
    cmd.arg("--weights").arg(file).args(args);
    cmd.arg(crafted().join("cat.png"));
    run_limited(cmd, limit)
}

/// Runs `cmd` with an address-space limit of `limit` bytes (none when 0), killed after
/// [`TIME_BUDGET`]; its standard error is kept.
fn run_limited(mut cmd: Command, limit: u64) -> Ended {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    if limit > 0 {
        // SAFETY: setrlimit is async-signal-safe and touches only the child after fork.
        unsafe {
            cmd.pre_exec(move || {
                let rlim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &rlim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let mut peak_kb = 0;
    let status = loop {
        peak_kb = peak_kb.max(vm_peak_kb(pid));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIME_BUDGET {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?}: still running after {TIME_BUDGET:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ended {
        code: status.code(),
        signal: status.signal(),
        stderr: reader.join().unwrap(),
        seconds: start.elapsed().as_secs_f64(),
        peak_kb,
    }
}

/// The child's peak virtual size so far (0 once it has exited).
fn vm_peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The address-space limit for the crafted files: a valid file's peak plus [`MEMORY_BUDGET`].
fn limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let valid = predict(&crafted().join("valid.pth"), 0);
        assert_eq!(valid.code, Some(0), "a valid .pth must classify: {valid:?}");
        assert!(valid.peak_kb > 0, "no VmPeak read for the child: {valid:?}");
        let limit = valid.peak_kb * 1024 + MEMORY_BUDGET;
        eprintln!(
            "valid .pth: {:.1} s, VmPeak {} MB; limit for crafted files {} MB",
            valid.seconds,
            valid.peak_kb / 1024,
            limit >> 20
        );
        limit
    })
}

/// `file` is refused by `predict`: exit code 1 or 2 (an error, not a signal or a panic) and
/// `phrase` in the message, within the memory and time budgets.
fn assert_refused(file: &Path, phrase: &str) {
    assert_ended_with_error(file, predict(file, limit()), phrase);
}

fn assert_ended_with_error(file: &Path, ended: Ended, phrase: &str) {
    eprintln!(
        "{}: {:?} in {:.2} s, VmPeak {} MB: {}",
        file.display(),
        ended.code,
        ended.seconds,
        ended.peak_kb / 1024,
        ended.stderr.lines().next().unwrap_or("")
    );
    assert_eq!(ended.signal, None, "killed by a signal: {ended:?}");
    assert!(
        matches!(ended.code, Some(1 | 2)) && !ended.stderr.contains("panicked"),
        "{}: expected an error, got {ended:?}",
        file.display()
    );
    assert!(
        ended.stderr.contains(phrase),
        "{}: expected `{phrase}` in: {}",
        file.display(),
        ended.stderr
    );
}

#[test]
fn views_that_claim_gigabytes_are_refused_or_not_read() {
    let dir = crafted();
    // Nothing of the model in it: refused by its names and shapes, nothing read.
    assert_refused(&dir.join("expanded.pth"), "no preset fits");
    assert_refused(&dir.join("shared_views.pth"), "no preset fits");
    // The model's own name with another shape: refused by the shape, nothing read.
    let huge = dir.join("huge_conv1.pth");
    assert_refused(&huge, "no preset fits");
    let as_tiny = predict_with(&huge, &["--model", "tiny"], limit());
    assert_ended_with_error(
        &huge,
        as_tiny,
        "`conv1.weight` has shape [268435456, 3, 3, 3]",
    );
    // The model beside 16 GiB of junk views: the model loads, the junk is never read.
    let junk = predict_with(&dir.join("junk_views.pth"), &["--model", "tiny"], limit());
    assert_eq!(junk.code, Some(0), "{junk:?}");
    assert!(
        junk.stderr.contains("junk0"),
        "the junk is reported: {junk:?}"
    );
}

#[test]
fn hand_written_pickles_are_checked_against_their_storages() {
    let dir = crafted();
    for name in ["valid_p4.pth", "valid_p5.pth"] {
        let ended = predict(&dir.join(name), limit());
        assert_eq!(
            ended.code,
            Some(0),
            "pickle protocols 4 and 5 read: {ended:?}"
        );
    }
    let valid = predict(&dir.join("handmade_valid.pth"), limit());
    assert_eq!(
        valid.code,
        Some(0),
        "the hand-written pickle reads: {valid:?}"
    );
    assert_refused(
        &dir.join("short_storage.pth"),
        "needs elements 0..864 of storage",
    );
    assert_refused(&dir.join("stride_overflow.pth"), "bad strides");
    assert_refused(
        &dir.join("offset_overflow.pth"),
        "needs elements 4611686018427387904..4611686018427388768",
    );
    assert_refused(&dir.join("spread_view.pth"), "spans");
    assert_refused(&dir.join("rank.pth"), "rank 100000");
    assert_refused(&dir.join("wrapped.pth"), "wrapped more than 4 times");
    assert_refused(&dir.join("shared_dicts.pth"), "too many shared references");
    assert_refused(&dir.join("long_name.pth"), "a name longer than 512 bytes");
}

#[test]
fn oversized_compressed_and_endless_pickles_are_refused() {
    let dir = crafted();
    assert_refused(&dir.join("bomb.pth"), "is compressed");
    assert_refused(&dir.join("long_pickle.pth"), "expected at most 16777216");
    assert_refused(&dir.join("legacy_endless.pth"), "the pickle exceeds");
    assert_refused(&dir.join("sparse_tar.pth"), "TAR-format");
}

/// `tiny.safetensors` with its `resnext.model` metadata edited by `edit`.
fn with_model_metadata(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = crafted();
    let file = read_safetensors(&dir.join("tiny.safetensors")).unwrap();
    let mut model: serde_json::Value = serde_json::from_str(&file.metadata[MODEL_KEY]).unwrap();
    edit(&mut model);
    let mut metadata = file.metadata.clone();
    metadata.insert(MODEL_KEY.to_string(), model.to_string());
    let path = dir.join(name);
    write_safetensors(&path, &file.tensors, Some(metadata)).unwrap();
    path
}

#[test]
fn model_metadata_is_checked_before_any_network_is_built() {
    use serde_json::json;
    let overflow = with_model_metadata("planes-2^40.safetensors", |m| {
        m["planes"] = json!([1u64 << 40, 64, 128])
    });
    assert_refused(&overflow, "planes = 1099511627776");
    let stem = with_model_metadata("stem-2^62.safetensors", |m| {
        m["stem_channels"] = json!(1u64 << 62)
    });
    assert_refused(&stem, "stem_channels = 4611686018427387904");
    // Within the bounds, but not the file's tensors: refused before 14 GB are allocated.
    let wide = with_model_metadata("planes-20000.safetensors", |m| {
        m["planes"] = json!([20000, 20000, 20000])
    });
    assert_refused(&wide, "whose tensors are not the file's");
    let deep = with_model_metadata("blocks-10^6.safetensors", |m| {
        m["blocks"] = json!([1_000_000, 1, 1])
    });
    assert_refused(&deep, "blocks = 1000000");
    let stages = with_model_metadata("stages.safetensors", |m| {
        m["blocks"] = json!(vec![1; 40]);
        m["planes"] = json!(vec![64; 40]);
    });
    assert_refused(&stages, "at most 16 stages");
    // The file itself is fine.
    let ok = predict(&crafted().join("tiny.safetensors"), limit());
    assert_eq!(ok.code, Some(0), "{ok:?}");
}

/// The environment variable naming the file [`child_reads_a_state_dict`] reads.
const CHILD_FILE: &str = "RESNEXT_TEST_CRAFTED_FILE";

/// The child half of [`read_state_dict_holds_to_its_budget`], which runs it in a child process
/// with an address-space limit: reads the file named by [`CHILD_FILE`] whole, exits 1 with the
/// error or 0.
#[test]
#[ignore = "run by read_state_dict_holds_to_its_budget in a child process"]
fn child_reads_a_state_dict() {
    let path = PathBuf::from(std::env::var(CHILD_FILE).expect(CHILD_FILE));
    match resnext::weights::read_state_dict(&path) {
        Ok(file) => {
            eprintln!("read {} tensors", file.tensors.len());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}

#[test]
fn read_state_dict_holds_to_its_budget() {
    let run = |name: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child_reads_a_state_dict",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_FILE, crafted().join(name));
        run_limited(cmd, limit())
    };
    let valid = run("valid.pth");
    assert_eq!(valid.code, Some(0), "{valid:?}");
    // Without a model to compare with, every tensor counts, junk included.
    for name in ["shared_views.pth", "expanded.pth", "junk_views.pth"] {
        let file = crafted().join(name);
        assert_ended_with_error(&file, run(name), "over twice the file's size");
    }
}
