fn main() -> std::process::ExitCode {
    mesh_sdk::app::main_with("ORDERS", "orders.toml", orders::DEFAULTS, orders::run)
}
