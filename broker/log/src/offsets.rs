//! Committed positions of consumer groups, one file per topic.
//!
//! `groups.offsets` is append-only: each commit appends a small checksummed
//! record (group name and offset) and fdatasyncs it, and the last record of
//! a group wins. When dead records dominate, the file is rewritten
//! atomically (write, fsync, rename, fsync the directory). The broker
//! coalesces acks before committing, so this is not on the per-event path.
//!
//! A committed offset is the next offset the group will consume. It moves
//! backwards only through an explicit [`CommitMode::Reset`] (a seek), never
//! by a late or duplicated commit.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::{
    error::{LogError, Result, io_err},
    fsutil::{replace_file, sync_dir},
};

const TOMBSTONE: u64 = u64::MAX;
const COMPACT_MIN_BYTES: u64 = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Refuse to move the position backwards.
    Forward,
    /// Set the position wherever asked (seek or reset).
    Reset,
}

#[derive(Debug)]
struct State {
    file: File,
    len: u64,
    groups: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct GroupOffsets {
    topic: String,
    dir: PathBuf,
    path: PathBuf,
    state: Mutex<State>,
}

fn encode(group: &str, offset: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + group.len());
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(group.as_bytes());
    let mut rec = Vec::with_capacity(8 + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// Parses records until the end or the first bad one; returns the groups
/// and the length of the valid prefix.
fn parse(data: &[u8]) -> (BTreeMap<String, u64>, usize) {
    let mut groups = BTreeMap::new();
    let mut i = 0;
    while data.len() - i >= 8 {
        let len = u32::from_le_bytes(data[i..i + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[i + 4..i + 8].try_into().expect("4 bytes"));
        if len < 8 || data.len() - i - 8 < len {
            break;
        }
        let body = &data[i + 8..i + 8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let offset = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let Ok(group) = std::str::from_utf8(&body[8..]) else {
            break;
        };
        if offset == TOMBSTONE {
            groups.remove(group);
        } else {
            groups.insert(group.to_string(), offset);
        }
        i += 8 + len;
    }
    (groups, i)
}

impl GroupOffsets {
    pub fn open(topic: &str, dir: &Path) -> Result<Self> {
        let path = dir.join("groups.offsets");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let data = fs::read(&path).map_err(io_err(&path))?;
        let (groups, valid) = parse(&data);
        if valid < data.len() {
            // Each commit is fsynced before it returns, so only the last,
            // unreturned commit can be torn.
            tracing::warn!(file = %path.display(), position = valid, dropped = data.len() - valid, "dropping a torn group-offset record");
            file.set_len(valid as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        Ok(GroupOffsets {
            topic: topic.to_string(),
            dir: dir.to_path_buf(),
            path,
            state: Mutex::new(State {
                file,
                len: valid as u64,
                groups,
            }),
        })
    }

    pub fn get(&self, group: &str) -> Option<u64> {
        self.state
            .lock()
            .expect("offsets lock")
            .groups
            .get(group)
            .copied()
    }

    pub fn all(&self) -> BTreeMap<String, u64> {
        self.state.lock().expect("offsets lock").groups.clone()
    }

    /// The lowest committed offset of any group: what retention by age
    /// must keep.
    pub fn floor(&self) -> Option<u64> {
        self.state
            .lock()
            .expect("offsets lock")
            .groups
            .values()
            .copied()
            .min()
    }

    /// Durably records `offset` as the group's position. Returns whether
    /// anything changed.
    pub fn commit(&self, group: &str, offset: u64, mode: CommitMode) -> Result<bool> {
        let mut st = self.state.lock().expect("offsets lock");
        match st.groups.get(group) {
            Some(&cur) if cur == offset => return Ok(false),
            Some(&cur) if cur > offset && mode == CommitMode::Forward => {
                return Err(LogError::OffsetRegression {
                    topic: self.topic.clone(),
                    group: group.to_string(),
                    current: cur,
                    requested: offset,
                });
            }
            _ => {}
        }
        self.append(&mut st, group, offset)?;
        st.groups.insert(group.to_string(), offset);
        Ok(true)
    }

    pub fn delete(&self, group: &str) -> Result<bool> {
        let mut st = self.state.lock().expect("offsets lock");
        if !st.groups.contains_key(group) {
            return Ok(false);
        }
        self.append(&mut st, group, TOMBSTONE)?;
        st.groups.remove(group);
        Ok(true)
    }

    fn append(&self, st: &mut State, group: &str, offset: u64) -> Result<()> {
        let rec = encode(group, offset);
        st.file
            .write_all_at(&rec, st.len)
            .map_err(io_err(&self.path))?;
        st.file.sync_data().map_err(io_err(&self.path))?;
        st.len += rec.len() as u64;
        let live: u64 = st.groups.keys().map(|g| 16 + g.len() as u64).sum();
        if st.len > COMPACT_MIN_BYTES && st.len > 8 * live.max(1) {
            self.compact(st)?;
        }
        Ok(())
    }

    fn compact(&self, st: &mut State) -> Result<()> {
        let mut data = Vec::new();
        for (g, &o) in &st.groups {
            data.extend_from_slice(&encode(g, o));
        }
        replace_file(&self.path, &data)?;
        sync_dir(&self.dir)?;
        st.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        st.len = data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_refuses_regression_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let o = GroupOffsets::open("t", dir.path()).unwrap();
        assert!(o.commit("billing", 5, CommitMode::Forward).unwrap());
        assert!(!o.commit("billing", 5, CommitMode::Forward).unwrap());
        assert!(matches!(
            o.commit("billing", 3, CommitMode::Forward),
            Err(LogError::OffsetRegression {
                current: 5,
                requested: 3,
                ..
            })
        ));
        o.commit("shipping", 1, CommitMode::Forward).unwrap();
        o.commit("billing", 2, CommitMode::Reset).unwrap();
        for i in 0..10_000 {
            o.commit("shipping", 2 + i, CommitMode::Forward).unwrap();
        }
        assert!(o.state.lock().unwrap().len < COMPACT_MIN_BYTES + 64);
        o.commit("gone", 9, CommitMode::Forward).unwrap();
        o.delete("gone").unwrap();
        drop(o);
        let o = GroupOffsets::open("t", dir.path()).unwrap();
        assert_eq!(o.get("billing"), Some(2));
        assert_eq!(o.get("shipping"), Some(10_001));
        assert_eq!(o.get("gone"), None);
        assert_eq!(o.floor(), Some(2));
    }

    #[test]
    fn torn_last_commit_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let o = GroupOffsets::open("t", dir.path()).unwrap();
        o.commit("g", 7, CommitMode::Forward).unwrap();
        o.commit("g", 8, CommitMode::Forward).unwrap();
        drop(o);
        let p = dir.path().join("groups.offsets");
        let len = fs::metadata(&p).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let o = GroupOffsets::open("t", dir.path()).unwrap();
        assert_eq!(o.get("g"), Some(7));
        o.commit("g", 9, CommitMode::Forward).unwrap();
        drop(o);
        assert_eq!(
            GroupOffsets::open("t", dir.path()).unwrap().get("g"),
            Some(9)
        );
    }
}
