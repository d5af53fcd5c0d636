fn main() -> std::process::ExitCode {
    // Before libtorch allocates anything: see the function's comment for why and what it costs.
    convnets::accel::keep_large_allocations_on_the_heap();
    convnets::cli::main()
}
