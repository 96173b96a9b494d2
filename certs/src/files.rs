//! Writing the PKI's files: never replacing a key, private files created
//! unreadable to others from their first byte, and owners set for compose
//! (a root one-shot container writing into a host folder for services that
//! run as another uid).

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use crate::error::CertsError;

/// Mode of a private file owned by the caller.
pub const PRIVATE: u32 = 0o600;
/// Mode of a private file handed to a service uid: read-only.
pub const SERVICE_PRIVATE: u32 = 0o400;
/// Mode of a certificate or other public file.
pub const PUBLIC: u32 = 0o644;

/// A numeric `UID:GID` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl FromStr for Owner {
    type Err = CertsError;

    fn from_str(value: &str) -> Result<Owner, CertsError> {
        let invalid = || CertsError::InvalidOwner {
            value: value.to_owned(),
        };
        let (uid, gid) = value.split_once(':').ok_or_else(invalid)?;
        Ok(Owner {
            uid: uid.parse().map_err(|_| invalid())?,
            gid: gid.parse().map_err(|_| invalid())?,
        })
    }
}

impl Owner {
    /// The owner of an existing file or folder.
    pub fn of(path: &Path) -> Result<Owner, CertsError> {
        let meta = fs::metadata(path).map_err(|e| CertsError::io("reading", path, e))?;
        Ok(Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }
}

/// Who a written file goes to and with which mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    /// The owner to chown to; applied only when running as root (otherwise
    /// the caller owns the file, which is what a non-root caller wants).
    pub owner: Option<Owner>,
    pub mode: u32,
}

/// Whether this process may chown files to others.
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates `path` with `contents` unless it exists. Returns whether it
/// was created; an existing file is left byte for byte as it was.
pub(crate) fn create_new(
    path: &Path,
    contents: &[u8],
    placement: Placement,
) -> Result<bool, CertsError> {
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        // Private until placed: no one else can read a key while it is written.
        .mode(PRIVATE)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(CertsError::io("creating", path, e)),
    };
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| CertsError::io("writing", path, e))?;
    place(path, placement)?;
    Ok(true)
}

/// Writes `contents` to `path`, replacing any file there atomically (a
/// temporary file beside it, then a rename). Only for certificates: keys
/// are never replaced.
pub(crate) fn replace(
    path: &Path,
    contents: &[u8],
    placement: Placement,
) -> Result<(), CertsError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    // A leftover from an interrupted run holds nothing we need.
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(CertsError::io("removing", tmp, e)),
    }
    create_new(tmp, contents, placement)?;
    fs::rename(tmp, path).map_err(|e| CertsError::io("renaming into place", path, e))
}

/// Sets the owner (as root only) and then the exact mode (the umask
/// played on creation).
pub(crate) fn place(path: &Path, placement: Placement) -> Result<(), CertsError> {
    if let Some(owner) = placement.owner
        && running_as_root()
    {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .map_err(|e| CertsError::io("setting the owner of", path, e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(placement.mode))
        .map_err(|e| CertsError::io("setting the mode of", path, e))
}

/// The file's text, or None if it does not exist.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<String>, CertsError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CertsError::io("reading", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_as_numeric_uid_gid() {
        assert_eq!(
            "65532:65532".parse::<Owner>().unwrap(),
            Owner {
                uid: 65532,
                gid: 65532
            }
        );
        for bad in ["65532", "nobody:nogroup", ":1", "1:", "-1:0", "1:2:3"] {
            let error = bad.parse::<Owner>().unwrap_err();
            assert!(error.to_string().contains("UID:GID"), "{bad}: {error}");
        }
    }
}
