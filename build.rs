// Lets the binary find libtorch without LD_LIBRARY_PATH: an rpath to the libtorch that
// torch-sys linked (scripts/setup.sh caches it outside the clone, keyed by version). Compiles
// csrc/accel.cpp, csrc/cpu_blocks.cpp and csrc/fused.cpp, the few libtorch calls tch does not
// expose, a CPU allocator that reuses large blocks and evaluation's fused convolutions (see
// src/ffi.rs, src/accel/ and src/nn/), and csrc/dist.cpp and
// csrc/grad_buckets.cpp, libtorch's c10d for data-parallel training (see src/distributed/).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=csrc");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        println!("cargo:warning=LIBTORCH is not set: run scripts/setup.sh first");
        return;
    };
    let libtorch = PathBuf::from(libtorch);
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let lib = libtorch.join("lib");
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    let mut shim = cc::Build::new();
    shim.cpp(true)
        .file("csrc/accel.cpp")
        .file("csrc/cpu_blocks.cpp")
        .file("csrc/fused.cpp")
        .file("csrc/avg_pool.cpp")
        .file("csrc/max_pool.cpp")
        .file("csrc/batch_norm.cpp")
        .file("csrc/norm_relu.cpp")
        .file("csrc/one_channel_conv.cpp")
        .file("csrc/conv_weight_grad.cpp")
        .file("csrc/winograd.cpp")
        .file("csrc/dist.cpp")
        .file("csrc/grad_buckets.cpp")
        .include(libtorch.join("include"))
        // torch/types.h and the autograd Function of SyncBatchNorm live with the C++ frontend.
        .include(libtorch.join("include/torch/csrc/api/include"))
        // ProcessGroupGloo.hpp compiles to nothing without USE_C10D_GLOO; the wheel has no gloo
        // headers, so csrc/gloo declares the few names it uses.
        .define("USE_C10D_GLOO", None)
        .include("csrc/gloo")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false);
    // libtorch's `at::parallel_for` is a header template that shares the work among its OpenMP
    // threads only where the code calling it is compiled with OpenMP; without it, the shim's
    // kernels ran on one thread. The shim links the OpenMP runtime libtorch ships and loads (one
    // thread pool, the one `set_num_threads` sizes). Where libtorch has no such runtime, only the
    // `#pragma omp simd` loops (reductions in vector lanes) are compiled, and the kernels run on
    // one thread.
    let openmp = lib.join("libgomp.so.1");
    if openmp.exists() {
        shim.flag("-fopenmp");
        println!("cargo:rustc-link-arg={}", openmp.display());
    } else {
        shim.flag("-fopenmp-simd");
    }
    if cuda {
        // The CUDA runtime headers come with the nvidia-cuda-runtime wheel that setup.sh
        // installs beside torch, their crt/ part with nvidia-cuda-crt.
        shim.define("CONVNETS_CUDA", None)
            .include(libtorch.join("../nvidia/cu13/include"))
            .include(libtorch.join("../crt/nvidia/cu13/include"));
    }
    shim.compile("convnets_accel");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if cuda {
        // torch-sys names torch_cuda, but --as-needed drops it because no symbol of ours refers
        // to it, and CUDA then reports "not available". --allow-shlib-undefined lets this link
        // where libtorch_cuda's own CUDA dependencies are not installed (they are where it runs).
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-lc10_cuda,--as-needed");
        // The shim's CUDA events and streams call the CUDA runtime directly.
        println!("cargo:rustc-link-search=native={}", libtorch.join("../nvidia/cu13/lib").display());
        println!("cargo:rustc-link-arg=-l:libcudart.so.13");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libtorch.join("../nvidia/cu13/lib").display());
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
