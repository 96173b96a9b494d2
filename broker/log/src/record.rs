//! On-disk framing of one record.
//!
//! ```text
//! 0   u32 LE  body length (bytes after the 8-byte frame header); bit 31
//!             set = sealed (encrypted) record (format 2)
//! 4   u32 LE  CRC-32C of the body
//! 8   u64 LE  offset
//! 16  i64 LE  publish timestamp, microseconds since the Unix epoch
//! 24  [u8;16] 128-bit hash of the producer's dedupe id, all zero if none
//! 40  ...     payload (the encoded event envelope)
//! ```
//!
//! A sealed record (encryption at rest, see [`crate::keyring`]) has, after
//! the id hash:
//!
//! ```text
//! 40  u32 LE  key id
//! 44  [u8;12] random nonce
//! 56  ...     AES-256-GCM-SIV ciphertext of the payload
//! end [u8;16] authentication tag
//! ```
//!
//! Its associated data is bytes 8..44 (offset, timestamp, id hash, key
//! id): a sealed record moved to another offset, or relabelled with
//! another key id or time, fails authentication. The CRC-32C still covers
//! the whole stored body (and, for a sealed record, the length field with
//! its flag): it is what recovery uses to tell a torn write or a flipped
//! bit, without a key; the tag is checked when a record is read.
//!
//! The offset is inside the checksummed body so that a record copied to the
//! wrong place, or a stale block, is caught as well as a flipped bit. The
//! dedupe hash is in the header so that the dedupe window can be rebuilt
//! without decoding payloads.

use bytes::{Bytes, BytesMut};

use crate::keyring::{KeyError, Keyring, NONCE_LEN, TAG_LEN};

pub const FRAME_HEADER: usize = 8;
pub const BODY_FIXED: usize = 32;
/// Bytes a record costs on disk beyond its payload.
pub const OVERHEAD: usize = FRAME_HEADER + BODY_FIXED;
/// The length field's flag for a sealed record. Lengths stay far below it
/// (records are at most 64 MiB).
pub const SEALED_FLAG: u32 = 1 << 31;
/// Bytes a sealed body has besides the ciphertext: the fixed fields, key
/// id, nonce and tag.
pub const SEALED_FIXED: usize = BODY_FIXED + 4 + NONCE_LEN + TAG_LEN;
/// Bytes a sealed record costs on disk beyond its payload.
pub const SEALED_OVERHEAD: usize = FRAME_HEADER + SEALED_FIXED;
/// Bytes of the associated data of a sealed record (body bytes 0..36).
const AAD_LEN: usize = BODY_FIXED + 4;

/// One record as read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_us: i64,
    /// Hash of the dedupe id, 0 when the record had none.
    pub id_hash: u128,
    pub payload: Bytes,
}

/// A record as stored: the header fields and the payload as it is on
/// disk (plaintext, or for a sealed record nonce, ciphertext and tag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub offset: u64,
    pub timestamp_us: i64,
    pub id_hash: u128,
    /// The key a sealed record was encrypted with; `None` for plaintext.
    pub key_id: Option<u32>,
    /// The stored payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// The record it holds: a plaintext frame as it is, a sealed one
    /// decrypted and authenticated with `keys`. `Err` says why not: a sealed
    /// record without keys, a missing key id, a failed tag, or a plaintext
    /// record in an encrypted log (which only an intruder writes).
    pub fn open(self, keys: Option<&Keyring>) -> Result<Record, String> {
        let Frame {
            offset,
            timestamp_us,
            id_hash,
            key_id,
            payload,
        } = self;
        let payload = match (key_id, keys) {
            (None, None) => payload,
            (None, Some(_)) => {
                return Err("unencrypted record in an encrypted log".into());
            }
            (Some(id), None) => {
                return Err(format!(
                    "encrypted with key id {id}, but no encryption key is configured (storage.encryption_key_file)"
                ));
            }
            (Some(id), Some(keys)) => {
                let aad = aad(offset, timestamp_us, id_hash, id);
                let (nonce, rest) = payload.split_at(NONCE_LEN);
                let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
                let nonce: &[u8; NONCE_LEN] = nonce.try_into().expect("nonce length");
                let tag: &[u8; TAG_LEN] = tag.try_into().expect("tag length");
                let mut buf = BytesMut::from(ct);
                keys.open(id, nonce, &aad, &mut buf, tag)?;
                buf.freeze()
            }
        };
        Ok(Record {
            offset,
            timestamp_us,
            id_hash,
            payload,
        })
    }
}

/// The checksum of a sealed record also covers its length field: the
/// sealed flag lives there, and a flipped flag must not turn a record into
/// the other kind with its checksum still holding.
fn sealed_crc(len_field: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_field), body)
}

fn aad(offset: u64, timestamp_us: i64, id_hash: u128, key_id: u32) -> [u8; AAD_LEN] {
    let mut a = [0u8; AAD_LEN];
    a[0..8].copy_from_slice(&offset.to_le_bytes());
    a[8..16].copy_from_slice(&timestamp_us.to_le_bytes());
    a[16..32].copy_from_slice(&id_hash.to_le_bytes());
    a[32..36].copy_from_slice(&key_id.to_le_bytes());
    a
}

pub fn encoded_len(payload_len: usize) -> usize {
    OVERHEAD + payload_len
}

pub fn sealed_len(payload_len: usize) -> usize {
    SEALED_OVERHEAD + payload_len
}

/// Appends a sealed record: `payload` encrypted with the active key of
/// `keys` under a fresh random nonce. On an error nothing is appended.
pub fn encode_sealed(
    buf: &mut Vec<u8>,
    offset: u64,
    timestamp_us: i64,
    id_hash: u128,
    payload: &[u8],
    keys: &Keyring,
) -> Result<(), KeyError> {
    let key_id = keys.active_id();
    let body_len = (SEALED_FIXED + payload.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&(body_len | SEALED_FLAG).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&aad(offset, timestamp_us, id_hash, key_id));
    let nonce_at = buf.len();
    buf.extend_from_slice(&[0; NONCE_LEN]);
    buf.extend_from_slice(payload);
    let (head, text) = buf[start + FRAME_HEADER..].split_at_mut(AAD_LEN + NONCE_LEN);
    match keys.seal(&head[..AAD_LEN], text) {
        Ok((nonce, tag)) => {
            buf[nonce_at..nonce_at + NONCE_LEN].copy_from_slice(&nonce);
            buf.extend_from_slice(&tag);
        }
        Err(e) => {
            buf.truncate(start);
            return Err(e);
        }
    }
    let crc = sealed_crc(&buf[start..start + 4], &buf[start + FRAME_HEADER..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
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
    /// A valid record (its checksum holds; a sealed one is not yet
    /// authenticated) and the number of bytes it takes.
    Record(Frame, usize),
    /// The buffer ends inside the record; `need` is its full size when the
    /// header was readable.
    Incomplete { need: Option<usize> },
    /// The bytes cannot be a valid record.
    Invalid(&'static str),
}

/// The body length and whether the record is sealed, from a length
/// field; `None` when it cannot be a record's (zero, or out of range).
pub fn body_len(field: u32, max_body: usize) -> Option<(usize, bool)> {
    let sealed = field & SEALED_FLAG != 0;
    let len = (field & !SEALED_FLAG) as usize;
    let min = if sealed { SEALED_FIXED } else { BODY_FIXED };
    (min..=max_body).contains(&len).then_some((len, sealed))
}

/// Decodes the record at the start of `buf`, verifying its checksum.
/// `max_body` bounds the length field so that garbage cannot make the
/// reader allocate or skip gigabytes.
pub fn decode(buf: &Bytes, max_body: usize) -> Decoded {
    if buf.len() < FRAME_HEADER {
        return Decoded::Incomplete { need: None };
    }
    let field = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if field == 0 {
        // Zeroes are what a file extended but never written looks like.
        return Decoded::Invalid("zero length");
    }
    let Some((body_len, sealed)) = body_len(field, max_body) else {
        return Decoded::Invalid("length field out of range");
    };
    let total = FRAME_HEADER + body_len;
    if buf.len() < total {
        return Decoded::Incomplete { need: Some(total) };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[FRAME_HEADER..total];
    let want = if sealed {
        sealed_crc(&buf[0..4], body)
    } else {
        crc32c::crc32c(body)
    };
    if want != crc {
        return Decoded::Invalid("checksum mismatch");
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let timestamp_us = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let id_hash = u128::from_le_bytes(body[16..32].try_into().expect("16 bytes"));
    let (key_id, payload) = if sealed {
        let id = u32::from_le_bytes(body[32..36].try_into().expect("4 bytes"));
        (Some(id), buf.slice(FRAME_HEADER + AAD_LEN..total))
    } else {
        (None, buf.slice(FRAME_HEADER + BODY_FIXED..total))
    };
    Decoded::Record(
        Frame {
            offset,
            timestamp_us,
            id_hash,
            key_id,
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
                assert_eq!(r.key_id, None);
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

    fn keys(text: &str) -> Keyring {
        Keyring::parse(std::path::Path::new("keys"), text).unwrap()
    }

    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

    #[test]
    fn sealed_round_trip_hides_the_payload_and_binds_the_offset() {
        let k = keys(K1);
        let mut buf = Vec::new();
        encode_sealed(&mut buf, 42, 7, id_hash("a"), b"hello sealed", &k).unwrap();
        assert_eq!(buf.len(), sealed_len(12));
        assert!(!buf.windows(12).any(|w| w == b"hello sealed"));
        let Decoded::Record(f, n) = decode(&Bytes::from(buf.clone()), 1 << 20) else {
            panic!("not a record")
        };
        assert_eq!((n, f.offset, f.key_id), (buf.len(), 42, Some(1)));
        let r = f.clone().open(Some(&k)).unwrap();
        assert_eq!(&r.payload[..], b"hello sealed");
        assert!(f.clone().open(None).unwrap_err().contains("key id 1"));
        // Moved to another offset (checksum fixed up): the tag fails.
        let moved = Frame { offset: 43, ..f };
        assert!(
            moved
                .open(Some(&k))
                .unwrap_err()
                .contains("authentication failed")
        );
        // Every single bit flip is still caught by the checksum.
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            let r = decode(&Bytes::from(b), 1 << 20);
            assert!(
                !matches!(r, Decoded::Record(..)),
                "flip of bit {i} not caught"
            );
        }
        // A plaintext record is refused when the log is encrypted.
        let mut plain = Vec::new();
        encode(&mut plain, 1, 1, 0, b"p");
        let Decoded::Record(f, _) = decode(&Bytes::from(plain), 1 << 20) else {
            panic!()
        };
        assert!(f.open(Some(&k)).unwrap_err().contains("unencrypted"));
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
