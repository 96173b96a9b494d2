//! End-to-end tests of the mesh live in `tests/`; this crate has no code of
//! its own. `tests/common` starts the real binaries (built by `cargo build
//! --workspace --bins` on first use, so they are never stale) as processes
//! on ephemeral ports.
