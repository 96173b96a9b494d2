//! The data directory's key verifiers, `<data_dir>/ENCRYPTION`, and the
//! rules for opening a directory with or without encryption.
//!
//! The file says "this directory is encrypted" and, for every key that has
//! encrypted it, a verifier: a fixed constant sealed with that key (see
//! [`Keyring::verifier`]). No key material. It is checked before any topic
//! is opened, so a wrong key stops the start with an error naming the key
//! id and the key file line, instead of every record failing
//! authentication later (and recovery never decrypts, so nothing is cut).
//!
//! ```text
//! # mesh-log: keys that encrypted this directory (verifiers, no key material)
//! 1 <hex: 12-byte nonce, sealed constant, 16-byte tag>
//! 2 <hex>
//! ```
//!
//! The rules, decided at open:
//! - no key file, no `ENCRYPTION`: plaintext, as before;
//! - no key file, `ENCRYPTION` present: refused (the records could not be
//!   read, and new ones would be written in plaintext next to them);
//! - a key file, no `ENCRYPTION`: allowed only while no topic holds a
//!   record, then the file is written. Turning encryption on for a
//!   directory with plaintext records is refused: an encrypted log never
//!   holds a plaintext record, so one there can only be forged, and is
//!   reported instead of served;
//! - a key file and `ENCRYPTION`: every key id in both must verify; at
//!   least one key id must be in both (otherwise it is another key file);
//!   new key ids (a rotation) get a verifier; a key id missing from the key
//!   file is a warning (its records fail to read, naming the id, until
//!   retention removes them).

use std::{fs, io, path::Path};

use crate::{
    error::{LogError, Result, io_err},
    fsutil::{replace_file, sync_dir},
    keyring::Keyring,
};

/// Name of the verifier file inside the data directory.
pub const ENCRYPTION_FILE: &str = "ENCRYPTION";

const HEADER: &str =
    "# mesh-log: keys that encrypted this directory (verifiers, no key material)\n";

/// Applies the rules above to `data_dir` before its topics are opened.
pub(crate) fn check(data_dir: &Path, keys: Option<&Keyring>) -> Result<()> {
    let path = data_dir.join(ENCRYPTION_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(&path)(e)),
    };
    match (keys, text) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(LogError::Config(format!(
            "data directory {} is encrypted at rest ({} exists) but storage.encryption_key_file is not set; set it to the directory's key file",
            data_dir.display(),
            path.display()
        ))),
        (Some(keys), None) => {
            if let Some(topic) = topic_with_records(&data_dir.join("topics"))? {
                return Err(LogError::Config(format!(
                    "storage.encryption_key_file is set, but topic {topic:?} in data directory {} already holds unencrypted records; encryption can only be turned on for a data directory without records (start a new one and move the topics' events over). (If the directory was encrypted and its {ENCRYPTION_FILE} file was lost, restore that file from a backup.)",
                    data_dir.display()
                )));
            }
            write(&path, keys, &[])?;
            sync_dir(data_dir)
        }
        (Some(keys), Some(text)) => {
            let known = parse(&path, &text)?;
            for (id, verifier) in &known {
                if keys.contains(*id) && !keys.verifies(*id, verifier) {
                    return Err(LogError::Config(format!(
                        "key id {id} on line {} of the encryption key file {} is not the key that encrypted data directory {} (its verifier in {} does not match); refusing to start with a wrong key",
                        keys.line_of(*id).unwrap_or(0),
                        keys.path().display(),
                        data_dir.display(),
                        path.display()
                    )));
                }
            }
            let ids: Vec<String> = known.iter().map(|(id, _)| id.to_string()).collect();
            if !known.iter().any(|(id, _)| keys.contains(*id)) {
                return Err(LogError::Config(format!(
                    "the encryption key file {} has none of the key ids that encrypted data directory {} (key ids {}); is it the wrong key file?",
                    keys.path().display(),
                    data_dir.display(),
                    ids.join(", ")
                )));
            }
            for (id, _) in known.iter().filter(|(id, _)| !keys.contains(*id)) {
                tracing::warn!(key_id = id, key_file = %keys.path().display(), "a key that encrypted this data directory is no longer in the key file; records encrypted with it fail to read until retention removes them");
            }
            if keys.ids().any(|id| !known.iter().any(|(k, _)| *k == id)) {
                write(&path, keys, &known)?;
            }
            Ok(())
        }
    }
}

/// The `(key id, verifier)` lines of the verifier file.
fn parse(path: &Path, text: &str) -> Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut parts = t.split_whitespace();
        match (
            parts.next().and_then(|id| id.parse::<u32>().ok()),
            parts.next(),
        ) {
            (Some(id), Some(v)) => out.push((id, v.to_string())),
            _ => {
                return Err(LogError::Config(format!(
                    "key verifier file {}, line {}: expected `<key-id> <hex>`",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

/// Writes the verifiers of `known` (kept as they are) and of every key of
/// `keys` not among them, atomically.
fn write(path: &Path, keys: &Keyring, known: &[(u32, String)]) -> Result<()> {
    let mut text = HEADER.to_string();
    let mut all: Vec<(u32, String)> = known.to_vec();
    for id in keys.ids() {
        if !known.iter().any(|(k, _)| *k == id) {
            all.push((id, keys.verifier(id)?));
        }
    }
    all.sort_by_key(|(id, _)| *id);
    for (id, v) in all {
        text.push_str(&format!("{id} {v}\n"));
    }
    replace_file(path, text.as_bytes())
}

/// The first topic (by directory) with a non-empty segment file.
fn topic_with_records(root: &Path) -> Result<Option<String>> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(root))?;
        let Ok(files) = fs::read_dir(entry.path()) else {
            continue; // a stray file
        };
        for f in files {
            let f = f.map_err(io_err(entry.path()))?;
            let is_log = crate::segfile::parse_base(&f.file_name().to_string_lossy()).is_some();
            if is_log && f.metadata().map_err(io_err(f.path()))?.len() > 0 {
                return Ok(Some(entry.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    Ok(None)
}
