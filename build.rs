//! Links this crate's own binaries (examples, tests, benches) so that they run without
//! `LD_LIBRARY_PATH` and keep CUDA:
//!
//! * an rpath to libtorch's `lib/` folder;
//! * `libtorch_cuda.so` as a needed library when libtorch has CUDA. The linker's `--as-needed`
//!   drops it otherwise (nothing references its symbols directly: it registers the CUDA
//!   backend from static initialisers), and CUDA then is silently unavailable.
//!
//! The libtorch folder comes from `torch-sys` (`DEP_TCH_LIBTORCH_LIB`), so it is the very one
//! that `tch` was built against, whether from `LIBTORCH` or `LIBTORCH_USE_PYTORCH`.
//!
//! It also compiles `csrc/c10d_shim.cpp`, the C ABI over libtorch's c10d that
//! `src/distributed` calls, against that libtorch's headers and gloo's headers (which the torch
//! wheel lacks: `scripts/setup-gloo-headers.sh` installs them into a cache and reports the folder,
//! found here through `RESNEXT_GLOO_INCLUDE` or that cache). With the `nccl` feature it compiles
//! `csrc/c10d_shim_nccl.cpp` as well, against NCCL's and CUDA's headers from the wheel's
//! `nvidia/` packages (or `RESNEXT_CUDA_INCLUDE`). Into the same library goes
//! `csrc/inference_shim.cpp`, the C ABI over libtorch's fused oneDNN convolutions that
//! `src/inference` calls (found through the dispatcher at run time).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        panic!(
            "torch-sys did not report its libtorch folder (DEP_TCH_LIBTORCH_LIB): cannot build \
             the c10d shim. Run scripts/setup-libtorch.sh."
        );
    };
    build_c10d_shim(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// The folder holding `gloo/` headers: `RESNEXT_GLOO_INCLUDE`, else the cache folder that
/// `scripts/setup-gloo-headers.sh` fills. Fails the build with what to run when neither has them.
fn gloo_include() -> PathBuf {
    println!("cargo:rerun-if-env-changed=RESNEXT_GLOO_INCLUDE");
    let has_gloo =
        |dir: &Path| dir.join("gloo/algorithm.h").is_file() && dir.join("gloo/config.h").is_file();
    let from_env = std::env::var_os("RESNEXT_GLOO_INCLUDE").filter(|v| !v.is_empty());
    if let Some(dir) = from_env.map(PathBuf::from) {
        if has_gloo(&dir) {
            return dir;
        }
        panic!(
            "RESNEXT_GLOO_INCLUDE={} has no gloo/algorithm.h and gloo/config.h. Unset it and run \
             scripts/setup-gloo-headers.sh (or scripts/setup-libtorch.sh, which runs it), or point \
             it at the folder that holds gloo's headers (gloo/).",
            dir.display()
        );
    }
    let dir = cache_dir().map(|c| c.join("gloo-headers-20220518/include"));
    match dir {
        Some(dir) if has_gloo(&dir) => dir,
        dir => panic!(
            "gloo's C++ headers are missing (looked in RESNEXT_GLOO_INCLUDE and {}); \
             resnext::distributed compiles a shim over libtorch's ProcessGroupGloo, which \
             includes them, and the torch wheel does not ship them. Run \
             scripts/setup-gloo-headers.sh (scripts/setup-libtorch.sh and scripts/test.sh run it \
             too): it downloads Debian's libgloo-dev (49 kB) into that cache.",
            dir.map_or("<no cache folder: HOME unset>".into(), |d| d
                .display()
                .to_string())
        ),
    }
}

/// The cache folder of the set-up scripts: `RESNEXT_CACHE`, else `$XDG_CACHE_HOME/resnext`,
/// else `~/.cache/resnext`.
fn cache_dir() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=RESNEXT_CACHE");
    println!("cargo:rerun-if-env-changed=XDG_CACHE_HOME");
    std::env::var_os("RESNEXT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("resnext")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/resnext")))
}

/// Compiles `csrc/c10d_shim.cpp` and `csrc/inference_shim.cpp` (and `csrc/c10d_shim_nccl.cpp`
/// with the `nccl` feature) into a
/// static library linked into this crate. `cc` runs once per change of these inputs (cargo reruns
/// this script only then); the shim takes about 30 s to compile.
fn build_c10d_shim(lib: &Path) {
    for file in [
        "csrc/c10d_shim.cpp",
        "csrc/c10d_shim.h",
        "csrc/c10d_shim_impl.hpp",
        "csrc/c10d_shim_nccl.cpp",
        "csrc/inference_shim.cpp",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    let root = lib.parent().expect("libtorch lib folder has a parent");
    let include = root.join("include");
    let gloo = gloo_include();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .include("csrc")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .file("csrc/c10d_shim.cpp")
        .file("csrc/inference_shim.cpp");
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        println!("cargo:rerun-if-env-changed=RESNEXT_CUDA_INCLUDE");
        if !lib.join("libtorch_cuda.so").exists() {
            panic!(
                "the `nccl` feature needs a libtorch with CUDA ({} has no libtorch_cuda.so)",
                lib.display()
            );
        }
        // The wheel's site-packages: torch/lib -> torch -> site-packages.
        let site = root.parent().map(Path::to_path_buf).unwrap_or_default();
        let nccl = site.join("nvidia/nccl/include");
        // CUDA's headers: the wheel's nvidia/cu13/include lacks crt/ and cccl/, which the PyPI
        // packages nvidia-cuda-crt and nvidia-cuda-cccl add (scripts/setup-cuda-headers.sh
        // installs them into the cache), or RESNEXT_CUDA_INCLUDE lists the folders.
        let cuda: Vec<PathBuf> = match std::env::var_os("RESNEXT_CUDA_INCLUDE") {
            Some(list) if !list.is_empty() => std::env::split_paths(&list).collect(),
            _ => {
                let cu = site.join("nvidia/cu13/include");
                let mut dirs = vec![cu.join("cccl"), cu];
                if let Some(cache) = cache_dir() {
                    let extra = cache.join("cuda-headers-13.0/nvidia/cu13/include");
                    dirs.extend([extra.join("cccl"), extra]);
                }
                dirs
            }
        };
        if !nccl.join("nccl.h").is_file() {
            panic!(
                "the `nccl` feature needs NCCL's header: no nccl.h in {} (the torch wheel's \
                 nvidia-nccl package)",
                nccl.display()
            );
        }
        for file in ["cuda_runtime_api.h", "crt/host_config.h"] {
            if !cuda.iter().any(|d| d.join(file).is_file()) {
                panic!(
                    "the `nccl` feature needs CUDA's headers: no {file} in {cuda:?}. Run \
                     scripts/setup-cuda-headers.sh (it installs the nvidia-cuda-crt and \
                     nvidia-cuda-cccl wheels into the cache), or set RESNEXT_CUDA_INCLUDE to the \
                     folders (':'-separated) that hold CUDA's headers"
                );
            }
        }
        build
            .include(&nccl)
            .includes(&cuda)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .file("csrc/c10d_shim_nccl.cpp");
    }
    build.compile("resnext_c10d_shim");
}
