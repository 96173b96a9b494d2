fn main() -> std::process::ExitCode {
    mesh_sdk::app::main("ORDERS", "orders.toml", orders::run)
}
