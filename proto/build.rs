//! Compiles every .proto under this crate with protox, so that building the
//! workspace needs no `protoc` binary on the machine.
//!
//! The generated clients and servers use `crate::codec::MeshCodec` instead
//! of tonic's prost codec, so that a request that is not valid protobuf is
//! answered INVALID_ARGUMENT (tonic's codec says INTERNAL). The codec tells
//! requests from responses by the list of RPC input types written here.

use std::{collections::BTreeSet, env, fmt::Write as _, fs, path::PathBuf};

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
    fs::write(out.join("rpc_inputs.rs"), rpc_inputs(&fds))?;
    let mut config = prost_build::Config::new();
    // `prost::Name` on every message: the codec names the type it could
    // not decode.
    config.enable_type_names();
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::MeshCodec")
        .compile_fds_with_config(fds, config)?;
    Ok(())
}

/// The full names of every message that is some RPC's input, as a Rust
/// constant: a server decodes these, a client only the others.
fn rpc_inputs(fds: &prost_types::FileDescriptorSet) -> String {
    let names: BTreeSet<&str> = fds
        .file
        .iter()
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .map(|m| m.input_type().trim_start_matches('.'))
        .collect();
    let mut s = String::from(
        "/// Full names of the messages that are some RPC's input.\npub(crate) const RPC_INPUTS: &[&str] = &[\n",
    );
    for n in names {
        let _ = writeln!(s, "    {n:?},");
    }
    s.push_str("];\n");
    s
}
