fn main() -> std::process::ExitCode {
    // Before libtorch allocates anything: see the function's comment for why and what it costs.
    convnets::accel::keep_large_allocations_on_the_heap();
    if let Err(error) = convnets::accel::reuse_large_cpu_blocks() {
        eprintln!("warning: large CPU blocks will not be reused: {error:#}");
    }
    convnets::cli::main()
}
