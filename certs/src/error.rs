//! What can go wrong making the development PKI. Every variant names the
//! file, the option or the limit involved, so a message alone says what to
//! fix.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing: "reading", "creating", "setting the owner of"...
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("making the certificate or key for {subject:?}: {source}")]
    Rcgen {
        /// The CA name or leaf name being made.
        subject: String,
        #[source]
        source: rcgen::Error,
    },

    #[error("{what} is not a usable PEM {expected}: {detail}")]
    Parse {
        /// A file path, or a description such as "the CA certificate PEM".
        what: String,
        /// "certificate" or "ECDSA P-256 private key".
        expected: &'static str,
        detail: String,
    },

    #[error("{key} does not hold the private key of {cert}; keep the pair together or remove both")]
    KeyMismatch { cert: String, key: String },

    #[error(
        "{present} exists but {missing} does not; restore {missing}, or remove {present} to make a new one"
    )]
    Orphan { present: PathBuf, missing: PathBuf },

    #[error(
        "name {name:?} is not allowed: names are 1 to 64 characters of a-z, 0-9, '-' and '_' (they become file names), and not \"ca\" or \"log\""
    )]
    InvalidName { name: String },

    #[error(
        "--service-owner / --owner {value:?}: expected UID:GID with numeric ids, e.g. 65532:65532"
    )]
    InvalidOwner { value: String },

    #[error("--days {days}: must be between 1 and {max}")]
    InvalidDays { days: u32, max: u32 },

    #[error("reading the operating system's random number generator: {0}")]
    Random(getrandom::Error),
}

impl CertsError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CertsError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn rcgen(subject: &str, source: rcgen::Error) -> Self {
        CertsError::Rcgen {
            subject: subject.to_owned(),
            source,
        }
    }
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), CertsError> {
    getrandom::fill(buf).map_err(CertsError::Random)
}

/// Lowercase hex, for keys, tokens and digests.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
