// Lets the binary find libtorch without LD_LIBRARY_PATH: an rpath to the libtorch that
// torch-sys linked (scripts/setup.sh caches it outside the clone, keyed by version).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh first");
        return;
    };
    let libtorch = PathBuf::from(libtorch);
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // torch-sys names torch_cuda, but --as-needed drops it because no symbol of ours refers
        // to it, and CUDA then reports "not available". --allow-shlib-undefined lets this link
        // where libtorch_cuda's own CUDA dependencies are not installed (they are where it runs).
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
