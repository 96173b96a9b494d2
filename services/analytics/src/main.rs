fn main() -> std::process::ExitCode {
    mesh_sdk::app::main("ANALYTICS", "analytics.toml", analytics::run)
}
