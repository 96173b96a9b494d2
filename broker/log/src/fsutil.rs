//! The two file-system steps every durable file in the log is built from:
//! syncing a directory (so a created, renamed or removed entry survives a
//! crash) and replacing a file atomically.

use std::{ffi::OsString, fs, io::Write, path::Path};

use crate::error::{Result, io_err};

/// fsyncs a directory, making the entries created, renamed or removed in
/// it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Replaces `path` with `data` atomically: writes `<name>.tmp` next to it,
/// fsyncs it and renames it over `path`. A crash leaves either the old
/// file or the new one, never a mix (a leftover `.tmp` is removed when the
/// topic is next opened).
///
/// The rename itself is durable only once the directory is synced: callers
/// that need that call [`sync_dir`] on the parent (sealing a segment does
/// not: its sidecars are rebuilt if lost).
pub(crate) fn replace_file(path: &Path, data: &[u8]) -> Result<()> {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_file_swaps_contents_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        replace_file(&path, b"one").unwrap();
        replace_file(&path, b"two").unwrap();
        sync_dir(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.json"]);
    }
}
