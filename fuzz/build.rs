// The same rpath to libtorch as the crate's own binaries get (convnets' own build script
// compiles its C++ shim and links it into whatever uses the crate).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let libtorch = std::path::PathBuf::from(libtorch);
        let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libtorch.join("lib").display());
    }
}
