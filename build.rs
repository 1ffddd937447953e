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
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!("cargo:warning=torch-sys did not report its libtorch folder: no rpath set");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
