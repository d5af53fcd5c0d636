// The same rpath to libtorch as the crate's own binaries get.
include!("../build.rs");
