fn main() -> std::process::ExitCode {
    mesh_sdk::app::main_with(
        "ANALYTICS",
        "analytics.toml",
        analytics::DEFAULTS,
        analytics::run,
    )
}
