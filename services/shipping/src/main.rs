fn main() -> std::process::ExitCode {
    mesh_sdk::app::main("SHIPPING", "shipping.toml", shipping::run)
}
