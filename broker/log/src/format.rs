//! The format version of a data directory, stamped in `<data_dir>/FORMAT`.
//!
//! The file holds the version number as decimal text and a newline
//! (`1\n`). A broker opens a directory of its own format or an older one
//! it can read; it refuses a directory stamped by a newer format, naming
//! the directory and both versions, instead of misreading it.
//!
//! Format 1 is the layout written before the stamp existed: a directory
//! without `FORMAT` (or a new, empty one) is format 1.
//!
//! Format 2 adds encryption at rest: records may be sealed (the length
//! field's top bit, see [`crate::record`]) and the directory may hold the
//! key verifiers (`ENCRYPTION`, see `keycheck`). A format 1 broker would
//! take a sealed record's length for damage and cut the log there, hence
//! the new number. Every format 1 record is a valid format 2 record, so a
//! format 1 directory is opened as it is and stamped 2 once it opened.
//!
//! Raise [`FORMAT_VERSION`] with any change that an older broker would
//! misread (record framing, sidecars, offsets file, topic metadata), and
//! keep reading every older version, or upgrade it here at open, before
//! stamping the new number.

use std::{fs, io, path::Path};

use crate::{
    error::{LogError, Result, io_err},
    fsutil::{replace_file, sync_dir},
};

/// The format this build writes.
pub const FORMAT_VERSION: u32 = 2;

/// Name of the stamp file inside the data directory.
pub const FORMAT_FILE: &str = "FORMAT";

/// The directory's stamped version; `None` when it has no stamp yet (a
/// new directory, or one written before the stamp: format 1). Fails on a
/// newer version than this build reads, or an unreadable stamp.
pub(crate) fn check(data_dir: &Path) -> Result<Option<u32>> {
    let path = data_dir.join(FORMAT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let found: u32 = text
        .trim()
        .parse()
        .map_err(|_| LogError::FormatUnreadable {
            path: path.clone(),
            content: text.chars().take(40).collect(),
        })?;
    if found > FORMAT_VERSION {
        return Err(LogError::FormatTooNew {
            dir: data_dir.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(Some(found))
}

/// Stamps the directory with [`FORMAT_VERSION`], atomically and durably.
pub(crate) fn stamp(data_dir: &Path) -> Result<()> {
    replace_file(
        &data_dir.join(FORMAT_FILE),
        format!("{FORMAT_VERSION}\n").as_bytes(),
    )?;
    sync_dir(data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unstamped_directory_is_format_1_and_gets_stamped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path()).unwrap(), None);
        stamp(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap(),
            "2\n"
        );
        assert_eq!(check(dir.path()).unwrap(), Some(FORMAT_VERSION));
    }

    #[test]
    fn a_newer_format_is_refused_naming_the_directory_and_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "7\n").unwrap();
        let err = check(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                LogError::FormatTooNew {
                    found: 7,
                    supported: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(
            msg.contains("format 7") && msg.contains("format 2"),
            "{msg}"
        );
    }

    #[test]
    fn local_storage_stamps_an_empty_directory_and_refuses_a_newer_one_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        drop(crate::LocalStorage::open(&new, crate::LogConfig::default()).unwrap());
        assert_eq!(fs::read_to_string(new.join(FORMAT_FILE)).unwrap(), "2\n");
        drop(crate::LocalStorage::open(&new, crate::LogConfig::default()).unwrap());

        // A directory stamped format 1 (records unchanged in format 2) is
        // upgraded by the stamp alone.
        let old = dir.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::write(old.join(FORMAT_FILE), "1\n").unwrap();
        drop(crate::LocalStorage::open(&old, crate::LogConfig::default()).unwrap());
        assert_eq!(fs::read_to_string(old.join(FORMAT_FILE)).unwrap(), "2\n");

        let newer = dir.path().join("newer");
        fs::create_dir(&newer).unwrap();
        fs::write(newer.join(FORMAT_FILE), "3\n").unwrap();
        let err = crate::LocalStorage::open(&newer, crate::LogConfig::default()).unwrap_err();
        assert!(
            matches!(err, LogError::FormatTooNew { found: 3, .. }),
            "{err:?}"
        );
        assert!(!newer.join("topics").exists(), "nothing written");
        assert_eq!(fs::read_to_string(newer.join(FORMAT_FILE)).unwrap(), "3\n");
    }

    #[test]
    fn an_unreadable_stamp_is_an_error_not_format_1() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "garbage").unwrap();
        let err = check(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::FormatUnreadable { .. }), "{err:?}");
    }
}
