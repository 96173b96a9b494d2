//! Encryption at rest, end to end: the `broker` binary as a child process
//! with `storage.encryption_key_file` set (through the environment, as an
//! operator would), real gRPC clients on 127.0.0.1, real files.
//!
//! - nothing of a published event (data, subject, headers), nor of its
//!   dead letter, appears in any file under the data directory; the same
//!   run without a key finds every one of them (the scan sees them);
//! - a wrong key, or no key, fails the start with a clear error and leaves
//!   every file as it was; the right key then serves the events;
//! - a rotated key (a line appended, restart) still reads what the old key
//!   wrote, and new records carry the new key id.

mod common;

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use common::{BrokerProcess, Client, Sub, connect, dead_letters, eventually, offset, publish};
use mesh_log::record::{self, Decoded};
use mesh_proto::{
    broker::v1::{self as pb, start_position::Position},
    events::v1::Event,
};

/// Upper bound for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(20);
const KEY_ENV: &str = "BROKER__STORAGE__ENCRYPTION_KEY_FILE";

/// A distinctive random marker: nothing else in a data directory can hold
/// it by chance.
fn secret(what: &str) -> String {
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ (u64::from(std::process::id()) << 32)
        ^ what.len() as u64
        | 1;
    let mut out = format!("{what}-");
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

/// A key file `<id> <hex>` per line, mode 600, outside any data directory.
fn write_keys(path: &Path, keys: &[(u32, u8)]) {
    let text: String = keys
        .iter()
        .map(|(id, b)| format!("{id} {}\n", format!("{b:02x}").repeat(32)))
        .collect();
    fs::write(path, format!("# test keys\n{text}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every file under `dir` with its bytes, without `LOCK`.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree(&p));
        } else if p.file_name().is_some_and(|n| n != "LOCK") {
            let bytes = fs::read(&p).unwrap();
            out.push((p, bytes));
        }
    }
    out.sort();
    out
}

/// The files under `dir` that contain `needle`.
fn files_with(dir: &Path, needle: &str) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(p, _)| p)
        .collect()
}

/// The key ids of the records of a topic, in log order.
fn key_ids(data: &Path, topic: &str) -> Vec<Option<u32>> {
    let mut segs: Vec<PathBuf> = fs::read_dir(data.join("topics").join(topic))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let mut out = Vec::new();
    for s in segs {
        let bytes = Bytes::from(fs::read(&s).unwrap());
        let mut pos = 0;
        while pos < bytes.len() {
            match record::decode(&bytes.slice(pos..), 1 << 24) {
                Decoded::Record(f, n) => {
                    out.push(f.key_id);
                    pos += n;
                }
                other => panic!("{} at byte {pos}: {other:?}", s.display()),
            }
        }
    }
    out
}

fn spawn(data: &Path, key_file: Option<&Path>) -> BrokerProcess {
    let key = key_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let env = [
        (KEY_ENV, key.as_str()),
        // Nothing redelivered behind the test's back on a loaded machine.
        ("BROKER__DELIVERY__ACK_DEADLINE_MS", "60000"),
    ];
    BrokerProcess::spawn(data, &env)
}

/// Runs the broker binary expecting it to refuse to start: its stderr.
fn refused_start(data: &Path, key_file: Option<&Path>) -> String {
    let key = key_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .env("BROKER__LISTEN", "127.0.0.1:0")
        .env("BROKER__AUTH", "none")
        .env("BROKER__METRICS_LISTEN", "")
        .env("BROKER__DATA_DIR", data)
        .env(KEY_ENV, key)
        .env("RUST_LOG", "warn")
        .current_dir(data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the broker started: {stderr}");
    stderr
}

async fn stop(b: BrokerProcess, c: Client) {
    drop(c);
    let status = tokio::task::spawn_blocking(move || b.sigterm())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Every event of `topic` from the start, read by an ephemeral tail.
async fn tail_all(c: &mut Client, topic: &str, n: usize) -> Vec<Event> {
    let open = common::open_from(topic, "", 100, true, Some(Position::Earliest(pb::Empty {})));
    let mut sub = Sub::open_with(c, open).await;
    sub.take(n, WAIT)
        .await
        .into_iter()
        .map(|d| d.event.unwrap().event.unwrap())
        .collect()
}

fn ev(id: &str, subject: &str, data: &str, header: Option<&str>) -> Event {
    Event {
        id: id.into(),
        source: "/tests/encryption".into(),
        r#type: "test.Secret".into(),
        subject: subject.into(),
        data: Bytes::from(data.to_string()),
        attributes: header
            .map(|h| HashMap::from([("x-secret".to_string(), h.to_string())]))
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Publishes two events, dead-letters one and acks the other, stops the
/// broker, and returns the secrets with the files holding each.
async fn publish_dead_letter_and_scan(
    key_file: Option<&Path>,
    data: &Path,
) -> Vec<(String, Vec<PathBuf>)> {
    let secrets = [
        secret("data-one"),
        secret("subject"),
        secret("header"),
        secret("data-two"),
        secret("nack-reason"),
    ];
    let b = spawn(data, key_file);
    let mut c = connect(b.addr).await.unwrap();
    c.create_topic(pb::CreateTopicRequest {
        name: "jobs".into(),
        max_delivery_attempts: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut workers = Sub::open(&mut c, "jobs", "workers", 10).await;
    publish(
        &mut c,
        "jobs",
        vec![
            ev("job-1", &secrets[1], &secrets[0], Some(&secrets[2])),
            ev("job-2", "", &secrets[3], None),
        ],
    )
    .await;
    let got = workers.take(2, WAIT).await;
    assert_eq!(got.iter().map(offset).collect::<Vec<_>>(), [0, 1]);
    workers.nack(vec![0], Duration::ZERO, &secrets[4]).await;
    workers.ack(vec![1]).await;
    let cc = c.clone();
    assert!(
        eventually(WAIT, || {
            let mut c = cc.clone();
            async move {
                dead_letters(&mut c, "jobs", "workers")
                    .await
                    .dead_letters
                    .len()
                    == 1
            }
        })
        .await,
        "job-1 was dead-lettered"
    );
    // The dead letter reads back whole (decrypted when encrypted).
    let list = dead_letters(&mut c, "jobs", "workers").await;
    let dl = &list.dead_letters[0];
    assert_eq!(dl.last_reason, secrets[4]);
    let e = dl.event.as_ref().unwrap().event.as_ref().unwrap();
    assert_eq!(
        (e.data.as_ref(), e.subject.as_str()),
        (secrets[0].as_bytes(), secrets[1].as_str())
    );
    drop(workers);
    stop(b, c).await;
    assert!(data.join("topics").join(&list.dead_letter_topic).is_dir());
    secrets
        .into_iter()
        .map(|s| {
            let hits = files_with(data, &s);
            (s, hits)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_published_or_dead_lettered_byte_reaches_the_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("broker.keys");
    write_keys(&keys, &[(1, 0x42)]);
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    for (s, hits) in publish_dead_letter_and_scan(Some(&keys), &data).await {
        assert!(hits.is_empty(), "{s} found in {hits:?}");
    }
    assert!(data.join(mesh_log::ENCRYPTION_FILE).exists());
    assert!(
        files_with(&data, &"42".repeat(32)).is_empty(),
        "no key bytes"
    );

    // The control: without a key the same scan finds every secret, the
    // dead letter's in the dead-letter topic too.
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    for (s, hits) in publish_dead_letter_and_scan(None, &plain).await {
        assert!(
            !hits.is_empty(),
            "{s} not found in plaintext: the scan is blind"
        );
        if s.starts_with("nack-reason") {
            assert!(
                hits.iter()
                    .any(|p| p.to_string_lossy().contains("jobs.workers.dlq")),
                "{hits:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_no_key_fails_to_start_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("broker.keys");
    write_keys(&keys, &[(1, 0x42)]);
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    let b = spawn(&data, Some(&keys));
    let mut c = connect(b.addr).await.unwrap();
    common::create_topic(&mut c, "t").await;
    let sent: Vec<Event> = (0..3)
        .map(|i| ev(&format!("e{i}"), "", &format!("event {i}"), None))
        .collect();
    publish(&mut c, "t", sent.clone()).await;
    stop(b, c).await;
    let before = tree(&data);

    let wrong = tmp.path().join("wrong.keys");
    write_keys(&wrong, &[(1, 0x43)]);
    let err = refused_start(&data, Some(&wrong));
    for part in [
        "key id 1 on line 2 of the encryption key file".to_string(),
        wrong.display().to_string(),
        "is not the key that encrypted data directory".to_string(),
        data.display().to_string(),
    ] {
        assert!(err.contains(&part), "{part:?} missing in {err}");
    }
    assert!(!err.contains(&"43".repeat(8)), "no key bytes: {err}");

    let err = refused_start(&data, None);
    assert!(
        err.contains("is encrypted at rest") && err.contains("storage.encryption_key_file"),
        "{err}"
    );
    assert!(
        tree(&data) == before,
        "a refused start wrote or cut nothing"
    );

    let b = spawn(&data, Some(&keys));
    let mut c = connect(b.addr).await.unwrap();
    let got = tail_all(&mut c, "t", 3).await;
    assert_eq!(
        got.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        sent.iter().map(|e| e.data.clone()).collect::<Vec<_>>()
    );
    stop(b, c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_reads_old_records_and_new_ones_use_the_new_key_id() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("broker.keys");
    write_keys(&keys, &[(1, 0x42)]);
    let data = tmp.path().join("data");
    fs::create_dir(&data).unwrap();
    let b = spawn(&data, Some(&keys));
    let mut c = connect(b.addr).await.unwrap();
    common::create_topic(&mut c, "t").await;
    publish(&mut c, "t", vec![ev("a", "", "before the rotation", None)]).await;
    stop(b, c).await;

    // The rotation procedure: append a line, restart.
    write_keys(&keys, &[(1, 0x42), (2, 0x77)]);
    let b = spawn(&data, Some(&keys));
    let mut c = connect(b.addr).await.unwrap();
    publish(&mut c, "t", vec![ev("b", "", "after the rotation", None)]).await;
    let got = tail_all(&mut c, "t", 2).await;
    assert_eq!(got[0].data.as_ref(), b"before the rotation");
    assert_eq!(got[1].data.as_ref(), b"after the rotation");
    stop(b, c).await;
    assert_eq!(key_ids(&data, "t"), [Some(1), Some(2)]);
}

#[test]
fn a_key_file_others_can_read_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, key, log) = (
        tmp.path().join("data"),
        tmp.path().join("keys"),
        tmp.path().join("broker.log"),
    );
    fs::create_dir(&data).unwrap();
    write_keys(&key, &[(1, 0x11)]);
    let warning = "encryption key file is readable by group or others";
    for (mode, warned) in [(0o600, false), (0o644, true)] {
        fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
        let _ = fs::remove_file(&log);
        let key_s = key.display().to_string();
        let b = BrokerProcess::spawn_logging_to(&data, &[(KEY_ENV, key_s.as_str())], &log);
        // The check runs when the log opens, which the broker does before
        // serving, even when SIGTERM comes first.
        assert!(b.sigterm().success());
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(text.contains(warning), warned, "mode {mode:o}: {text}");
    }
}
