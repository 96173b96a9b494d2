//! Development PKI for the mesh.
//!
//! A library, so tests make real certificates at test time:
//!
//! ```
//! use mesh_certs::{Ca, LeafSpec};
//! let ca = Ca::new("test CA")?;
//! let billing = ca.issue(&LeafSpec::new("billing"))?;
//! let expired = ca.issue(&LeafSpec::new("billing").expired())?;
//! assert!(billing.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! # let _ = expired;
//! # Ok::<(), mesh_certs::CertsError>(())
//! ```
//!
//! and the `mesh-certs` binary, which writes a whole folder for compose
//! ([`write_dev_pki`]) and bearer tokens ([`write_token`]).

mod ca;
mod dev;
mod error;
mod files;
mod log_key;
mod token;

pub use ca::{Ca, DEFAULT_LEAF_DAYS, Leaf, LeafSpec, self_signed_leaf};
pub use dev::{
    Action, DEFAULT_CA_NAME, DEFAULT_NAMES, DEFAULT_OPERATORS, MAX_DAYS, Options, Report,
    check_name, write_dev_pki,
};
pub use error::CertsError;
pub use files::Owner;
pub use log_key::{LOG_KEY_FILE, new_log_key_text};
pub use token::{TOKENS_FILE, Token, TokenReport, token_hash, write_token};
