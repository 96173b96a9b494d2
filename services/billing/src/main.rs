fn main() -> std::process::ExitCode {
    mesh_sdk::app::main("BILLING", "billing.toml", billing::run)
}
