//! Compiles every .proto under this crate with protox, so that building the
//! workspace needs no `protoc` binary on the machine.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "mesh/events/v1/event.proto",
    "mesh/broker/v1/broker.proto",
    "mesh/orders/v1/orders.proto",
    "mesh/billing/v1/billing.proto",
    "mesh/shipping/v1/shipping.proto",
    "mesh/analytics/v1/analytics.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Served by gRPC reflection so that grpcurl needs no local .proto files.
    fs::write(out.join("mesh_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
