fn main() -> std::process::ExitCode {
    convnets::cli::main()
}
