//! Generated code for every contract of the mesh.
//!
//! - [`events::v1`]: the event envelope (`mesh.events.v1`), aligned with
//!   the CloudEvents protobuf format.
//! - [`broker::v1`]: the broker's gRPC API (`mesh.broker.v1`).
//! - [`FILE_DESCRIPTOR_SET`]: all of the above, encoded, for gRPC reflection.

pub mod events {
    pub mod v1 {
        tonic::include_proto!("mesh.events.v1");
    }
}

pub mod broker {
    pub mod v1 {
        tonic::include_proto!("mesh.broker.v1");
    }
}

/// Encoded `FileDescriptorSet` of every .proto in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mesh_descriptor");
