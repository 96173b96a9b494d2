//! The log's behaviour through its public API, on real files.

mod common;

use std::{fs, os::unix::fs::FileExt, time::Duration};

use common::*;
use mesh_log::{CommitMode, FsyncPolicy, LogConfig, LogError, TopicConfig};
use mesh_test_support::flip_byte;

#[test]
fn append_read_back_and_seek_by_offset_and_time() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), small_cfg(), TopicConfig::default());
    let mut acks = Vec::new();
    for i in 0..300u32 {
        acks.extend(append(
            &rt,
            &log,
            vec![rec(format!("event-{i}-{}", "x".repeat(i as usize % 50)))],
        ));
    }
    assert_eq!(
        acks.iter().map(|a| a.offset).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    assert!(
        acks.windows(2)
            .all(|w| w[0].timestamp_us <= w[1].timestamp_us)
    );
    assert!(
        segment_files(dir.path()).len() >= 3,
        "small segments must have rolled"
    );
    assert_eq!(log.head(), 300);

    let all = read_all(&log).unwrap();
    assert_eq!(all.len(), 300);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert!(r.payload.starts_with(format!("event-{i}-").as_bytes()));
        assert_eq!(r.timestamp_us, acks[i].timestamp_us);
    }

    // Seek to any offset, across segment boundaries, with small limits.
    for from in [0, 1, 57, 128, 299] {
        let got = log.read(from, 3, 1 << 20).unwrap();
        assert_eq!(got[0].offset, from);
        assert!(got.len() <= 3);
    }
    // A byte budget smaller than one record still yields that record.
    assert_eq!(log.read(10, 100, 1).unwrap().len(), 1);
    assert!(log.read(300, 10, 1 << 20).unwrap().is_empty());

    // Seek by time: the first record at or after a record's timestamp.
    for i in [0usize, 77, 150, 299] {
        let t = acks[i].timestamp_us;
        let first_at_t = acks.iter().position(|a| a.timestamp_us >= t).unwrap() as u64;
        assert_eq!(log.offset_for_time(t).unwrap(), first_at_t);
    }
    assert_eq!(log.offset_for_time(0).unwrap(), 0);
    assert_eq!(log.offset_for_time(i64::MAX).unwrap(), 300);
}

#[test]
fn batches_get_consecutive_offsets_and_survive_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), small_cfg(), TopicConfig::default());
    let acks = append(
        &rt,
        &log,
        (0..50).map(|i| rec(vec![i as u8; 200])).collect(),
    );
    assert_eq!(acks.last().unwrap().offset, 49);
    log.close();
    drop(log);

    let log = open(dir.path(), small_cfg()).unwrap();
    assert_eq!(log.head(), 50);
    let acks = append(&rt, &log, vec![rec("after reopen")]);
    assert_eq!(acks[0].offset, 50);
    let all = read_all(&log).unwrap();
    assert_eq!(all.len(), 51);
    assert_eq!(&all[50].payload[..], b"after reopen");
    assert!(
        all[..50]
            .iter()
            .enumerate()
            .all(|(i, r)| r.payload[..] == [i as u8; 200])
    );
}

/// A read whose byte budget ends inside a segment must stop there, not
/// carry on at the next segment: every budget reads the log back whole.
#[test]
fn reads_bounded_by_bytes_never_skip_the_rest_of_a_segment() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), small_cfg(), TopicConfig::default());
    append(
        &rt,
        &log,
        (0..300).map(|i| rec(vec![i as u8; 200])).collect(),
    );
    assert!(
        segment_files(dir.path()).len() > 3,
        "the test needs several segments"
    );
    for max_bytes in [1, 150, 200, 450, 1000, 3000, 8 << 10, 20 << 10] {
        let mut from = 0;
        while from < 300 {
            let batch = log.read(from, 1000, max_bytes).unwrap();
            assert!(
                !batch.is_empty(),
                "empty read at {from} (max_bytes {max_bytes})"
            );
            for r in batch {
                assert_eq!(
                    r.offset, from,
                    "max_bytes {max_bytes}: skipped to {}",
                    r.offset
                );
                assert_eq!(&r.payload[..], &[from as u8; 200][..]);
                from += 1;
            }
        }
    }
}

#[test]
fn sealed_segments_open_from_sidecars_and_rebuild_lost_ones() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    drop(log_of_100_byte_records(&rt, dir.path(), 200));
    let segs = segment_files(dir.path());
    for s in &segs[..segs.len() - 1] {
        assert!(
            s.with_extension("idx").exists(),
            "{s:?} has no index sidecar"
        );
    }
    // A crash while sealing can leave a sealed segment without its sidecar.
    fs::remove_file(segs[1].with_extension("idx")).unwrap();
    fs::write(segs[2].with_extension("idx"), b"garbage").unwrap();
    let log = open(dir.path(), small_cfg()).unwrap();
    let all = read_all(&log).unwrap();
    assert_eq!(all.len(), 200);
    assert!(
        segs[1].with_extension("idx").exists(),
        "rebuilt sidecar is written back"
    );
}

#[test]
fn torn_tail_is_cut_and_the_log_goes_on() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), LogConfig::default(), TopicConfig::default());
    append(&rt, &log, (0..10).map(|i| rec(format!("r{i}"))).collect());
    drop(log);
    let tail = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&tail).unwrap().len();
    // Half of a record that never finished writing.
    let f = fs::OpenOptions::new().write(true).open(&tail).unwrap();
    f.write_all_at(&[42, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7], len)
        .unwrap();
    drop(f);

    let log = open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(log.head(), 10);
    assert_eq!(
        fs::metadata(&tail).unwrap().len(),
        len,
        "torn bytes are cut off"
    );
    assert_eq!(append(&rt, &log, vec![rec("next")])[0].offset, 10);
    assert_eq!(read_all(&log).unwrap().len(), 11);
}

#[test]
fn damage_followed_by_valid_records_in_the_tail_refuses_to_open() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), LogConfig::default(), TopicConfig::default());
    append(
        &rt,
        &log,
        (0..10).map(|i| rec(format!("record number {i}"))).collect(),
    );
    drop(log);
    let tail = segment_files(dir.path()).pop().unwrap();
    flip_byte(&tail, 45); // inside the first record's payload
    assert_corrupt(open(dir.path(), LogConfig::default()), &tail, 0, 0);
}

#[test]
fn bit_flip_in_a_sealed_segment_is_detected_and_never_served() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    drop(log_of_100_byte_records(&rt, dir.path(), 200));
    let segs = segment_files(dir.path());
    let victim = &segs[1];
    let base = base_offset(victim);
    // Inside the payload of the segment's third record.
    let pos = 2 * RECORD_BYTES + 40 + 7;
    flip_byte(victim, pos);

    // Opening does not scan sealed segments (recovery time), so the
    // damage is found when read, and reported with file and position.
    let log = open(dir.path(), small_cfg()).unwrap();
    let good = log.read(base, 2, 1 << 20).unwrap();
    assert_eq!(good.len(), 2);
    // A read that reaches the damage returns the intact records before it
    // (from the previous segment on, too); the next read, starting at the
    // damaged offset, reports it.
    let upto = offsets(&log.read(0, 10_000, 1 << 20).unwrap());
    assert_eq!(upto, (0..base + 2).collect::<Vec<_>>());
    let damaged = log.read(base + 2, 10, 1 << 20);
    assert_corrupt(damaged, victim, 2 * RECORD_BYTES, base + 2);
    assert!(matches!(
        log.read(base + 2, 1, 1 << 20),
        Err(LogError::Corrupt { .. })
    ));
    // Everything after the damaged segment is still served.
    let next = base_offset(&segs[2]);
    assert_eq!(log.read(next, 1, 1 << 20).unwrap()[0].offset, next);
    // The intact records right after the damage, in the same index
    // interval, are still readable: a reader moved past the damage
    // resumes there.
    let after = offsets(&log.read(base + 3, 3, 1 << 20).unwrap());
    assert_eq!(after, vec![base + 3, base + 4, base + 5]);
    // Reading everything in order stops at the damage and reports it.
    assert!(matches!(read_all(&log), Err(LogError::Corrupt { offset, .. }) if offset == base + 2));
}

#[test]
fn records_after_a_damaged_length_field_stay_readable() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = log_of_100_byte_records(&rt, dir.path(), 30);
    // The active segment, damaged while open: reads go through the file,
    // so the damage is seen at once. The third record's length field now
    // claims far more than the segment holds.
    let seg = &segment_files(dir.path())[0];
    flip_byte(seg, 2 * RECORD_BYTES + 2);
    let before = offsets(&log.read(0, 100, 1 << 20).unwrap());
    assert_eq!(before, vec![0, 1]);
    assert_corrupt(log.read(2, 1, 1 << 20), seg, 2 * RECORD_BYTES, 2);
    let after = offsets(&log.read(3, 100, 1 << 20).unwrap());
    assert_eq!(after, (3..30).collect::<Vec<_>>());
}

#[test]
fn dedupe_returns_the_original_offset_within_the_window_and_after_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), small_cfg(), TopicConfig::default());
    let first = append(
        &rt,
        &log,
        vec![rec_id("order-1", "a"), rec_id("order-2", "b")],
    );
    // A retry of the whole batch plus one new event, and a repeat inside one batch.
    let again = append(
        &rt,
        &log,
        vec![
            rec_id("order-1", "a"),
            rec_id("order-2", "b"),
            rec_id("order-3", "c"),
            rec_id("order-3", "c"),
        ],
    );
    assert!(again[0].duplicate && again[1].duplicate && !again[2].duplicate && again[3].duplicate);
    assert_eq!(again[0].offset, first[0].offset);
    assert_eq!(again[0].timestamp_us, first[0].timestamp_us);
    assert_eq!(again[3].offset, again[2].offset);
    assert_eq!(log.head(), 3);
    // Fill a few segments so the ids live in sealed segments' sidecars.
    for i in 0..200u32 {
        append(&rt, &log, vec![rec_id(&format!("fill-{i}"), vec![0; 100])]);
    }
    drop(log);

    let log = open(dir.path(), small_cfg()).unwrap();
    let after = append(
        &rt,
        &log,
        vec![rec_id("order-2", "b"), rec_id("fill-199", "z")],
    );
    assert!(after.iter().all(|a| a.duplicate));
    assert_eq!(after[0].offset, 1);
    assert_eq!(after[1].offset, 202);
    assert_eq!(log.head(), 203);
}

#[test]
fn dedupe_window_expires() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        dedupe_window: SHORT,
        ..LogConfig::default()
    };
    let log = create(dir.path(), cfg, TopicConfig::default());
    append(&rt, &log, vec![rec_id("x", "1")]);
    std::thread::sleep(SHORT * 3);
    let again = append(&rt, &log, vec![rec_id("x", "1")]);
    assert!(!again[0].duplicate);
    assert_eq!(again[0].offset, 1);
}

#[test]
fn group_offsets_survive_reopen_and_never_move_back_by_accident() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = create(dir.path(), small_cfg(), TopicConfig::default());
    append(&rt, &log, (0..20).map(|i| rec(vec![i])).collect());
    assert!(log.commit("billing", 10, CommitMode::Forward).unwrap());
    log.commit("shipping", 20, CommitMode::Forward).unwrap();
    assert!(matches!(
        log.commit("billing", 5, CommitMode::Forward),
        Err(LogError::OffsetRegression { .. })
    ));
    assert!(matches!(
        log.commit("billing", 21, CommitMode::Forward),
        Err(LogError::OffsetBeyondHead { .. })
    ));
    assert!(matches!(
        log.commit("bad/name", 1, CommitMode::Forward),
        Err(LogError::InvalidName { .. })
    ));
    drop(log);

    let log = open(dir.path(), small_cfg()).unwrap();
    assert_eq!(log.committed("billing"), Some(10));
    let pos = log.group_position("billing").unwrap();
    assert_eq!((pos.committed, pos.lag, pos.missed), (10, 10, 0));
    // An explicit reset (a seek) may move it back.
    log.commit("billing", 3, CommitMode::Reset).unwrap();
    drop(log);
    let log = open(dir.path(), small_cfg()).unwrap();
    assert_eq!(log.committed("billing"), Some(3));
    assert_eq!(log.groups().len(), 2);
}

#[test]
fn retention_by_age_waits_for_groups_and_by_size_reports_the_gap() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let tc = TopicConfig {
        retention_ms: Some(1),
        retention_bytes: None,
        ..TopicConfig::default()
    };
    let log = create(dir.path(), small_cfg(), tc);
    for i in 0..200u32 {
        append(&rt, &log, vec![rec(format!("{i:0>100}"))]);
    }
    let nsegs = segment_files(dir.path()).len();
    log.commit("slow", 130, CommitMode::Forward).unwrap();
    std::thread::sleep(Duration::from_millis(5));

    // Everything is old enough, but "slow" still needs offset 130 onwards.
    let now = i64::MAX / 2;
    let r = log.enforce_retention(now).unwrap();
    assert!(r.segments_deleted >= 1);
    assert!(
        log.earliest() <= 130,
        "age retention deleted what a group needs"
    );
    assert!(r.groups_missed.is_empty());
    assert_eq!(read_all(&log).unwrap()[0].offset, log.earliest());
    assert!(matches!(
        log.read(0, 1, 1024),
        Err(LogError::OffsetTruncated { .. })
    ));

    // Once the group moves on, age retention takes all sealed segments;
    // the active one always stays.
    log.commit("slow", 200, CommitMode::Forward).unwrap();
    log.enforce_retention(now).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(nsegs > 1);
    drop(log);

    // Size cap: deletes even what a group still needs, and says so.
    let dir = tempfile::tempdir().unwrap();
    let tc = TopicConfig {
        retention_ms: None,
        retention_bytes: Some(20_000),
        ..TopicConfig::default()
    };
    let log = create(dir.path(), small_cfg(), tc);
    for i in 0..400u32 {
        append(&rt, &log, vec![rec(format!("{i:0>100}"))]);
    }
    log.commit("slow", 5, CommitMode::Forward).unwrap();
    let r = log.enforce_retention(0).unwrap();
    assert!(r.segments_deleted > 0);
    assert!(log.stats().bytes <= 20_000);
    let earliest = log.earliest();
    assert_eq!(r.groups_missed.get("slow"), Some(&(earliest - 5)));
    let pos = log.group_position("slow").unwrap();
    assert_eq!(pos.missed, earliest - 5);
    assert_eq!(pos.lag, 400 - earliest);
    // Reopen sees the same earliest offset.
    drop(log);
    assert_eq!(open(dir.path(), small_cfg()).unwrap().earliest(), earliest);
}

#[test]
fn interval_policy_appends_and_recovers() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
        ..small_cfg()
    };
    let log = create(dir.path(), cfg.clone(), TopicConfig::default());
    for i in 0..100u32 {
        append(&rt, &log, vec![rec(format!("{i}"))]);
    }
    assert_eq!(log.head(), 100);
    drop(log);
    assert_eq!(
        read_all(&open(dir.path(), cfg).unwrap()).unwrap().len(),
        100
    );
}

#[test]
fn oversized_records_and_empty_batches() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        max_record_bytes: 1000,
        max_batch_bytes: 4096,
        ..LogConfig::default()
    };
    let log = create(dir.path(), cfg, TopicConfig::default());
    let err = rt
        .block_on(log.append(vec![rec(vec![0; 1001])]))
        .unwrap_err();
    assert!(matches!(
        err,
        LogError::RecordTooLarge {
            size: 1001,
            limit: 1000
        }
    ));
    assert!(rt.block_on(log.append(vec![])).unwrap().is_empty());
    assert_eq!(log.head(), 0);
}

#[test]
fn concurrent_appenders_share_the_log_without_gaps() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(create(dir.path(), small_cfg(), TopicConfig::default()));
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let log = log.clone();
        tasks.push(rt.spawn(async move {
            let mut offs = Vec::new();
            for i in 0..20u32 {
                let a = log.append(vec![rec(format!("{t}:{i}"))]).await.unwrap();
                offs.push((a[0].offset, format!("{t}:{i}")));
            }
            offs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(rt.block_on(t).unwrap());
    }
    acked.sort();
    assert_eq!(
        acked.iter().map(|a| a.0).collect::<Vec<_>>(),
        (0..640).collect::<Vec<_>>()
    );
    let all = read_all(&log).unwrap();
    for (r, (off, p)) in all.iter().zip(&acked) {
        assert_eq!(r.offset, *off);
        assert_eq!(&r.payload[..], p.as_bytes());
    }
}

#[test]
fn head_watch_wakes_waiting_readers() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(create(
        dir.path(),
        LogConfig::default(),
        TopicConfig::default(),
    ));
    let mut w = log.watch_head();
    let l2 = log.clone();
    rt.block_on(async move {
        let waiter = tokio::spawn(async move {
            w.wait_for(|h| *h >= 1).await.unwrap();
        });
        l2.append(vec![rec("x")]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn second_process_cannot_open_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _a = mesh_log::LocalStorage::open(dir.path(), LogConfig::default()).unwrap();
    assert!(mesh_log::LocalStorage::open(dir.path(), LogConfig::default()).is_err());
}

#[test]
fn dedupe_cap_keeps_the_newest_ids_across_reopen() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        dedupe_max_ids: 50,
        ..small_cfg()
    };
    let log = create(dir.path(), cfg.clone(), TopicConfig::default());
    for i in 0..200u32 {
        append(&rt, &log, vec![rec_id(&format!("id-{i}"), vec![0; 100])]);
    }
    drop(log);
    assert!(segment_files(dir.path()).len() > 2);
    let log = open(dir.path(), cfg).unwrap();
    let a = append(
        &rt,
        &log,
        vec![
            rec_id("id-199", "x"),
            rec_id("id-150", "x"),
            rec_id("id-0", "x"),
        ],
    );
    assert!(
        a[0].duplicate && a[1].duplicate,
        "the newest ids stay in the window"
    );
    assert!(
        !a[2].duplicate,
        "the oldest id fell out of the capped window"
    );
}

#[test]
fn concurrent_creates_of_one_topic_keep_one_directory() {
    use mesh_log::Storage;
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let storage = std::sync::Arc::new(
        mesh_log::LocalStorage::open(dir.path(), LogConfig::default()).unwrap(),
    );
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let s = storage.clone();
            tasks.push(tokio::spawn(async move {
                s.create_topic("orders", TopicConfig::default()).await
            }));
        }
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => created += 1,
                Err(LogError::TopicExists(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(created, 1);
        storage.append("orders", vec![rec("kept")]).await.unwrap();
        storage.close().await;
    });
    drop(storage);
    // The data went to the directory that survives a restart.
    let storage = mesh_log::LocalStorage::open(dir.path(), LogConfig::default()).unwrap();
    assert_eq!(storage.topic("orders").unwrap().head, 1);
}
