//! Test-only helpers shared by the test crates of the workspace: a real
//! grpcurl, real nats-server clusters, the sections and code blocks of the
//! docs whose commands the tests run, polling until a condition holds,
//! damaging a file on purpose, and scraping a Prometheus endpoint.

mod damage;
mod docs;
mod eventually;
mod grpcurl;
pub mod nats;
pub mod prometheus;
mod tools;

pub use damage::flip_byte;
pub use docs::{Doc, code_blocks, doc};
pub use eventually::{eventually, eventually_some};
pub use grpcurl::path_with_grpcurl;
pub use nats::NatsCluster;
