fn main() -> std::process::ExitCode {
    mesh_sdk::app::main_with(
        "SHIPPING",
        "shipping.toml",
        shipping::DEFAULTS,
        shipping::run,
    )
}
