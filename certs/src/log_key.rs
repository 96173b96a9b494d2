//! The broker's at-rest encryption key file, `log.key`.
//!
//! Format: comment lines starting with `#`, then one `<id> <64 lowercase
//! hex chars>` line per key (a 256-bit key). mesh-certs writes one key with
//! id 1, drawn from the operating system's CSPRNG.

use crate::error::{CertsError, hex, random_bytes};

/// The file name under the output folder.
pub const LOG_KEY_FILE: &str = "log.key";

/// The text of a fresh `log.key`: a comment line and key 1.
pub fn new_log_key_text() -> Result<String, CertsError> {
    let mut key = [0u8; 32];
    random_bytes(&mut key)?;
    Ok(format!(
        "# mesh-broker at-rest encryption key, made by mesh-certs: `<id> <64 hex chars>`. Secret; losing it loses the log.\n1 {}\n",
        hex(&key)
    ))
}
