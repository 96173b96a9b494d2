//! Property: random appends, crashes that leave a torn final write at a
//! random byte position (or garbage), and reopens never lose a record that
//! was acknowledged (synced) and never return a corrupted one.

mod common;

use std::{fs, os::unix::fs::FileExt};

use common::*;
use mesh_log::{TopicConfig, record};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        sizes: Vec<usize>,
    },
    /// Crash with an in-flight batch of `records` records, of which only
    /// the first `cut` fraction of bytes reached the disk, optionally
    /// followed by garbage (a partly written page).
    Crash {
        records: usize,
        cut: f64,
        garbage: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(0usize..400, 1..12).prop_map(|sizes| Op::Append { sizes }),
        1 => (1usize..6, 0.0f64..1.0, prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(records, cut, garbage)| Op::Crash { records, cut, garbage }),
    ]
}

fn payload(offset: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{offset}:").into_bytes();
    p.extend((0..size).map(|i| (i as u64 * 31 + offset) as u8));
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_records_survive_torn_writes(ops in prop::collection::vec(op(), 1..14)) {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(create(dir.path(), small_cfg(), TopicConfig::default()));
        let mut expected: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                Op::Append { sizes } => {
                    let l = log.as_ref().unwrap();
                    let base = expected.len() as u64;
                    let recs: Vec<_> = sizes.iter().enumerate().map(|(i, &s)| payload(base + i as u64, s)).collect();
                    let acks = append(&rt, l, recs.iter().cloned().map(rec).collect());
                    for (i, a) in acks.iter().enumerate() {
                        prop_assert_eq!(a.offset, base + i as u64);
                    }
                    expected.extend(recs);
                }
                Op::Crash { records, cut, garbage } => {
                    drop(log.take());
                    let tail = segment_files(dir.path()).pop().unwrap();
                    let len = fs::metadata(&tail).unwrap().len();
                    let mut torn = Vec::new();
                    let mut torn_payloads = Vec::new();
                    for i in 0..records {
                        let off = expected.len() as u64 + i as u64;
                        let p = payload(off, 50 + i * 7);
                        record::encode(&mut torn, off, i64::MAX / 2, 0, &p);
                        torn_payloads.push(p);
                    }
                    torn.truncate((torn.len() as f64 * cut) as usize);
                    torn.extend(&garbage);
                    let f = fs::OpenOptions::new().write(true).open(&tail).unwrap();
                    f.write_all_at(&torn, len).unwrap();
                    drop(f);

                    let l = open(dir.path(), small_cfg()).unwrap();
                    let all = read_all(&l).unwrap();
                    prop_assert!(all.len() >= expected.len(), "lost acknowledged records: {} < {}", all.len(), expected.len());
                    for (i, r) in all.iter().enumerate() {
                        prop_assert_eq!(r.offset, i as u64);
                        if i < expected.len() {
                            prop_assert_eq!(&r.payload[..], &expected[i][..]);
                        } else {
                            // A complete record of the torn batch may survive;
                            // it must be exactly what was written.
                            prop_assert_eq!(&r.payload[..], &torn_payloads[i - expected.len()][..]);
                        }
                    }
                    for r in &all[expected.len()..] {
                        expected.push(r.payload.to_vec());
                    }
                    log = Some(l);
                }
            }
        }
        let l = log.take().unwrap();
        prop_assert_eq!(l.head(), expected.len() as u64);
        drop(l);
        let l = open(dir.path(), small_cfg()).unwrap();
        let all = read_all(&l).unwrap();
        prop_assert_eq!(all.len(), expected.len());
    }
}
