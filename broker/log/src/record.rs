//! On-disk framing of one record.
//!
//! ```text
//! 0   u32 LE  body length (bytes after the 8-byte frame header)
//! 4   u32 LE  CRC-32C of the body
//! 8   u64 LE  offset
//! 16  i64 LE  publish timestamp, microseconds since the Unix epoch
//! 24  [u8;16] 128-bit hash of the producer's dedupe id, all zero if none
//! 40  ...     payload (the encoded event envelope)
//! ```
//!
//! The offset is inside the checksummed body so that a record copied to the
//! wrong place, or a stale block, is caught as well as a flipped bit. The
//! dedupe hash is in the header so that the dedupe window can be rebuilt
//! without decoding payloads.

use bytes::Bytes;

pub const FRAME_HEADER: usize = 8;
pub const BODY_FIXED: usize = 32;
/// Bytes a record costs on disk beyond its payload.
pub const OVERHEAD: usize = FRAME_HEADER + BODY_FIXED;

/// One record as read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_us: i64,
    /// Hash of the dedupe id, 0 when the record had none.
    pub id_hash: u128,
    pub payload: Bytes,
}

pub fn encoded_len(payload_len: usize) -> usize {
    OVERHEAD + payload_len
}

pub fn encode(buf: &mut Vec<u8>, offset: u64, timestamp_us: i64, id_hash: u128, payload: &[u8]) {
    let body_len = (BODY_FIXED + payload.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&timestamp_us.to_le_bytes());
    buf.extend_from_slice(&id_hash.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + FRAME_HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug)]
pub enum Decoded {
    /// A valid record and the number of bytes it takes.
    Record(Record, usize),
    /// The buffer ends inside the record; `need` is its full size when the
    /// header was readable.
    Incomplete { need: Option<usize> },
    /// The bytes cannot be a valid record.
    Invalid(&'static str),
}

/// Decodes the record at the start of `buf`, verifying its checksum.
/// `max_body` bounds the length field so that garbage cannot make the
/// reader allocate or skip gigabytes.
pub fn decode(buf: &Bytes, max_body: usize) -> Decoded {
    if buf.len() < FRAME_HEADER {
        return Decoded::Incomplete { need: None };
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if body_len == 0 {
        // Zeroes are what a file extended but never written looks like.
        return Decoded::Invalid("zero length");
    }
    if !(BODY_FIXED..=max_body).contains(&body_len) {
        return Decoded::Invalid("length field out of range");
    }
    let total = FRAME_HEADER + body_len;
    if buf.len() < total {
        return Decoded::Incomplete { need: Some(total) };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[FRAME_HEADER..total];
    if crc32c::crc32c(body) != crc {
        return Decoded::Invalid("checksum mismatch");
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let timestamp_us = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let id_hash = u128::from_le_bytes(body[16..32].try_into().expect("16 bytes"));
    let payload = buf.slice(FRAME_HEADER + BODY_FIXED..total);
    Decoded::Record(
        Record {
            offset,
            timestamp_us,
            id_hash,
            payload,
        },
        total,
    )
}

/// The dedupe hash of a producer id; never 0, which means "no id".
pub fn id_hash(id: &str) -> u128 {
    match xxhash_rust::xxh3::xxh3_128(id.as_bytes()) {
        0 => 1,
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_single_bit_flip_is_caught() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 1_700_000_000_000_000, id_hash("a"), b"hello");
        let bytes = Bytes::from(buf.clone());
        match decode(&bytes, 1 << 20) {
            Decoded::Record(r, n) => {
                assert_eq!(n, buf.len());
                assert_eq!(r.offset, 42);
                assert_eq!(&r.payload[..], b"hello");
            }
            other => panic!("{other:?}"),
        }
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            let r = decode(&Bytes::from(b), 1 << 20);
            assert!(
                !matches!(r, Decoded::Record(..)),
                "flip of bit {i} not caught"
            );
        }
    }

    #[test]
    fn truncated_record_is_incomplete() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 1, 0, &[7; 100]);
        let b = Bytes::from(buf[..50].to_vec());
        assert!(matches!(
            decode(&b, 1 << 20),
            Decoded::Incomplete { need: Some(140) }
        ));
    }
}
