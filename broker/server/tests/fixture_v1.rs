//! Data written today still opens tomorrow: a data directory written by the
//! broker before the data-directory format stamp existed (format 1) is kept
//! in `tests/fixtures/data-v1/`, and every later broker must serve it
//! unchanged.
//!
//! # Regenerating the fixture
//!
//! Only when format 1 itself must be re-captured (never to "fix" a failing
//! replay test: a failing replay means the broker no longer reads old data):
//!
//! ```text
//! cargo test -p mesh-broker --test fixture_v1 -- --ignored generate_fixture_v1
//! ```
//!
//! It drives the real `broker` binary over gRPC into a temporary directory,
//! stops it with SIGTERM and copies the result (without `LOCK` and without
//! the `FORMAT` stamp, so the fixture stays an unstamped format-1
//! directory) over `tests/fixtures/data-v1/`. It was generated with the
//! code of main at 8b427cb, the last commit before the stamp.
//!
//! # What the fixture holds
//!
//! Topic `orders` (broker-default topic settings), head 4:
//!
//! | offset | id (producer id) | subject (key) | data          | attributes                          |
//! |--------|------------------|---------------|---------------|-------------------------------------|
//! | 0      | `ord-1`          | `cust-1`      | `order one`   | `traceparent=00-4bf9…-00f0…-01`     |
//! | 1      | `ord-2`          | `cust-2`      | `order two`   | —                                   |
//! | 2      | `ord-3`          | `cust-1`      | `order three` | `region=eu`, `priority=high`        |
//! | 3      | `ord-4`          | (none)        | `order four`  | —                                   |
//!
//! A second publish of `ord-1` was answered as a duplicate of offset 0 and
//! stored nothing. Group `billing` consumed and acked offsets 0 and 1: its
//! committed position is 2, so a member resumes at `ord-3`.
//!
//! Topic `jobs` (`max_delivery_attempts` 2), head 2:
//!
//! | offset | id      | subject | data     |
//! |--------|---------|---------|----------|
//! | 0      | `job-1` | (none)  | `poison` |
//! | 1      | `job-2` | (none)  | `fine`   |
//!
//! Group `workers` nacked `job-1` twice (reasons `poison-1`, `poison-2`),
//! so it was dead-lettered, then acked `job-2`: committed position 2.
//!
//! Topic `jobs.workers.dlq`, head 1: the dead letter of `job-1` (original
//! offset 0, 2 delivery attempts, last reason `poison-2`): the event
//! `job-1` unchanged plus the attributes `mesh.dlq.topic=jobs`,
//! `mesh.dlq.group=workers`, `mesh.dlq.offset=0`, `mesh.dlq.attempts=2`,
//! `mesh.dlq.reason=poison-2` and `mesh.dlq.first_delivered_us`. The
//! group `dlq-cursor` is at 0 (nothing redriven or purged).
//!
//! The dedupe window holds the producer ids `ord-1`..`ord-4`, `job-1`,
//! `job-2` (and the dead letter's id in the dlq topic). They were written
//! in the past, so the replay test opens the broker with a dedupe window
//! long enough to still cover them.
mod common;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use mesh_proto::{
    broker::v1::{self as pb, start_position::Position},
    events::v1::Event,
};

const WAIT: Duration = Duration::from_secs(20);

/// Dedupe window for the replay: about 30 years, so the fixture's ids
/// (written in 2026) are still inside it whenever the test runs.
const LONG_DEDUPE_MS: &str = "946080000000";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data-v1")
}

fn ev(id: &str, subject: &str, data: &str, attrs: &[(&str, &str)]) -> Event {
    let mut e = event(id, subject, data);
    e.attributes = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    e
}

fn orders_events() -> Vec<Event> {
    vec![
        ev(
            "ord-1",
            "cust-1",
            "order one",
            &[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
        ),
        ev("ord-2", "cust-2", "order two", &[]),
        ev(
            "ord-3",
            "cust-1",
            "order three",
            &[("region", "eu"), ("priority", "high")],
        ),
        ev("ord-4", "", "order four", &[]),
    ]
}

fn jobs_events() -> Vec<Event> {
    vec![ev("job-1", "", "poison", &[]), ev("job-2", "", "fine", &[])]
}

/// Copies a directory tree, leaving out the files named in `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target, skip);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn same_content(got: &Event, want: &Event) {
    assert_eq!(got.id, want.id);
    assert_eq!(got.source, want.source);
    assert_eq!(got.r#type, want.r#type);
    assert_eq!(got.subject, want.subject, "key of {}", want.id);
    assert_eq!(got.data, want.data, "data of {}", want.id);
    assert_eq!(got.attributes, want.attributes, "attributes of {}", want.id);
}

/// Writes the fixture with the broker binary of this build. See the top of
/// the file; run only to re-capture format 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "regenerates tests/fixtures/data-v1; run by hand"]
async fn generate_fixture_v1() {
    let tmp = tempfile::tempdir().unwrap();
    let b = BrokerProcess::spawn(tmp.path(), &[]);
    let mut c = connect(b.addr).await.unwrap();

    // orders: four events, one duplicate publish, group billing at 2.
    create_topic(&mut c, "orders").await;
    let r = publish(&mut c, "orders", orders_events()[..2].to_vec()).await;
    assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1]);
    let r = publish(&mut c, "orders", orders_events()[2..].to_vec()).await;
    assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), [2, 3]);
    let dup = publish(&mut c, "orders", vec![orders_events()[0].clone()]).await;
    assert_eq!((dup[0].offset, dup[0].duplicate), (0, true));
    let mut billing = Sub::open(&mut c, "orders", "billing", 2).await;
    let d = billing.take(2, WAIT).await;
    assert_eq!(d.iter().map(offset).collect::<Vec<_>>(), [0, 1]);
    billing.ack(vec![0, 1]).await;
    wait_committed(&c, "orders", "billing", 2).await;
    drop(billing);

    // jobs: job-1 fails twice and is dead-lettered, job-2 is acked.
    c.create_topic(pb::CreateTopicRequest {
        name: "jobs".into(),
        max_delivery_attempts: Some(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut workers = Sub::open(&mut c, "jobs", "workers", 10).await;
    publish(&mut c, "jobs", vec![jobs_events()[0].clone()]).await;
    for attempt in 1..=2 {
        let d = workers.take(1, WAIT).await;
        assert_eq!(d.len(), 1);
        assert_eq!((offset(&d[0]), d[0].delivery_attempt), (0, attempt));
        workers
            .nack(vec![0], Duration::ZERO, &format!("poison-{attempt}"))
            .await;
    }
    wait_committed(&c, "jobs", "workers", 1).await;
    publish(&mut c, "jobs", vec![jobs_events()[1].clone()]).await;
    let d = workers.take(1, WAIT).await;
    assert_eq!(d.iter().map(offset).collect::<Vec<_>>(), [1]);
    workers.ack(vec![1]).await;
    wait_committed(&c, "jobs", "workers", 2).await;
    assert_eq!(describe(&mut c, "jobs", "workers").await.dead_letters, 1);
    drop(workers);

    assert!(b.sigterm().success());
    let out = fixture_dir();
    if out.exists() {
        fs::remove_dir_all(&out).unwrap();
    }
    copy_tree(tmp.path(), &out, &["LOCK", "FORMAT"]);
}

/// The fixture, copied to a temporary directory, is served unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_data_directory_is_served_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir(), tmp.path(), &[]);
    assert!(!tmp.path().join("FORMAT").exists(), "fixture is unstamped");
    let b = BrokerProcess::spawn(
        tmp.path(),
        &[("BROKER__STORAGE__DEDUPE_WINDOW_MS", LONG_DEDUPE_MS)],
    );
    let mut c = connect(b.addr).await.unwrap();

    // Topics and offsets.
    let topics: HashMap<String, pb::TopicInfo> = c
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut names: Vec<_> = topics.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["jobs", "jobs.workers.dlq", "orders"]);
    let span = |t: &str| (topics[t].earliest_offset, topics[t].head_offset);
    assert_eq!(span("orders"), (0, 4));
    assert_eq!(span("jobs"), (0, 2));
    assert_eq!(span("jobs.workers.dlq"), (0, 1));
    assert_eq!(topics["jobs"].max_delivery_attempts, 2);

    // Event contents, read from the start by an ephemeral tail.
    let mut tail = Sub::open_with(
        &mut c,
        open_from(
            "orders",
            "",
            10,
            true,
            Some(Position::Earliest(pb::Empty {})),
        ),
    )
    .await;
    let d = tail.take(4, WAIT).await;
    assert_eq!(d.iter().map(offset).collect::<Vec<_>>(), [0, 1, 2, 3]);
    for (got, want) in d.iter().zip(orders_events()) {
        let stored = got.event.as_ref().unwrap();
        assert_eq!(stored.topic, "orders");
        same_content(stored.event.as_ref().unwrap(), &want);
    }
    drop(tail);

    // The group's committed position: a member resumes at ord-3.
    assert_eq!(
        describe(&mut c, "orders", "billing").await.committed_offset,
        2
    );
    assert_eq!(
        describe(&mut c, "jobs", "workers").await.committed_offset,
        2
    );
    let mut billing = Sub::open(&mut c, "orders", "billing", 1).await;
    let d = billing.take(1, WAIT).await;
    assert_eq!(d.iter().map(offset).collect::<Vec<_>>(), [2]);
    assert_eq!(id(&d[0]), "ord-3");
    drop(billing);

    // The dead letter.
    let list = dead_letters(&mut c, "jobs", "workers").await;
    assert_eq!(list.dead_letter_topic, "jobs.workers.dlq");
    assert_eq!(list.dead_letters.len(), 1, "{list:?}");
    let dl = &list.dead_letters[0];
    assert_eq!(
        (
            dl.dead_letter_offset,
            dl.original_offset,
            dl.delivery_attempts
        ),
        (0, 0, 2)
    );
    assert_eq!(dl.last_reason, "poison-2");
    let stored = dl.event.as_ref().unwrap();
    assert_eq!((stored.topic.as_str(), stored.offset), ("jobs", 0));
    let mut dead = stored.event.clone().unwrap();
    let dlq_attrs: HashMap<String, String> = dead
        .attributes
        .iter()
        .filter(|(k, _)| k.starts_with("mesh.dlq."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    dead.attributes.retain(|k, _| !k.starts_with("mesh.dlq."));
    same_content(&dead, &jobs_events()[0]);
    let attr = |k: &str| dlq_attrs.get(k).map(String::as_str);
    assert_eq!(attr("mesh.dlq.topic"), Some("jobs"));
    assert_eq!(attr("mesh.dlq.group"), Some("workers"));
    assert_eq!(attr("mesh.dlq.offset"), Some("0"));
    assert_eq!(attr("mesh.dlq.attempts"), Some("2"));
    assert_eq!(attr("mesh.dlq.reason"), Some("poison-2"));

    // The remembered producer ids: a re-publish is a duplicate.
    let again = publish(&mut c, "orders", vec![orders_events()[1].clone()]).await;
    assert_eq!((again[0].offset, again[0].duplicate), (1, true));
    let again = publish(&mut c, "jobs", vec![jobs_events()[1].clone()]).await;
    assert_eq!((again[0].offset, again[0].duplicate), (1, true));
    let info = c
        .describe_topic(pb::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.head_offset, 4, "the duplicate stored nothing");

    // Opened as format 1, it is now stamped so.
    assert_eq!(
        fs::read_to_string(tmp.path().join("FORMAT")).unwrap(),
        format!("{}\n", mesh_log::FORMAT_VERSION)
    );
    assert!(b.sigterm().success());
}

/// A directory stamped by a newer format is refused: the broker exits
/// non-zero, naming the directory and both versions, and leaves it as it
/// was.
#[test]
fn a_data_directory_of_a_newer_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir(), tmp.path(), &[]);
    let newer = mesh_log::FORMAT_VERSION + 1;
    fs::write(tmp.path().join("FORMAT"), format!("{newer}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .env("BROKER__LISTEN", "127.0.0.1:0")
        .env("BROKER__AUTH", "none")
        .env("BROKER__METRICS_LISTEN", "")
        .env("BROKER__DATA_DIR", tmp.path())
        .env("RUST_LOG", "warn")
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "broker started: {stderr}");
    let dir = tmp.path().display().to_string();
    assert!(stderr.contains(&dir), "names the directory: {stderr}");
    assert!(
        stderr.contains(&format!("format {newer}"))
            && stderr.contains(&format!("format {}", mesh_log::FORMAT_VERSION)),
        "names both versions: {stderr}"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("FORMAT")).unwrap(),
        format!("{newer}\n"),
        "the stamp is left alone"
    );
}
