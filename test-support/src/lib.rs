//! Test-only helpers shared by the test crates of the workspace: a real
//! grpcurl, the sections and code blocks of the docs whose commands the
//! tests run, and polling until a condition holds.

mod docs;
mod eventually;
mod grpcurl;

pub use docs::{Doc, code_blocks, doc};
pub use eventually::{eventually, eventually_some};
pub use grpcurl::path_with_grpcurl;
