//! Damaging files on purpose, for the tests that check what the log and the
//! broker do with a corrupt segment.

use std::{fs::OpenOptions, os::unix::fs::FileExt, path::Path};

/// Flips the lowest bit of the byte at `pos` of `path`, in place. Panics if
/// the file cannot be opened, read or written there.
pub fn flip_byte(path: &Path, pos: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos)
        .unwrap_or_else(|e| panic!("read {} at {pos}: {e}", path.display()));
    b[0] ^= 0x01;
    f.write_all_at(&b, pos)
        .unwrap_or_else(|e| panic!("write {} at {pos}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_one_bit_of_one_byte() {
        let path = std::env::temp_dir().join(format!("flip-byte-{}", std::process::id()));
        std::fs::write(&path, [0u8, 0x10, 0xff]).unwrap();
        flip_byte(&path, 1);
        assert_eq!(std::fs::read(&path).unwrap(), [0u8, 0x11, 0xff]);
        std::fs::remove_file(&path).unwrap();
    }
}
