//! The NATS harness against real nats-server 2.15.1 processes: a 3-node
//! JetStream cluster forms, a killed node comes back healthy with its data,
//! and a single node works. Streams are made over the plain NATS text
//! protocol (a JetStream API request), so no client crate is needed.

use std::{cell::RefCell, time::Duration};

use mesh_test_support::{NatsCluster, eventually, eventually_some, nats::nats_server};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// Bound on every wait of these tests: elections take seconds, more under
/// load.
const WAIT: Duration = Duration::from_secs(30);

/// One JetStream API request `$JS.API.STREAM.CREATE.<name>` over the text
/// protocol on `url`'s port; the JSON answer, or why there was none.
async fn create_stream_once(url: &str, name: &str, replicas: u32) -> Result<Value, String> {
    let addr = url.trim_start_matches("nats://");
    let conn = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await.map_err(|e| e.to_string())?; // INFO
    let config = serde_json::json!({
        "name": name,
        "subjects": [format!("{name}.>")],
        "num_replicas": replicas,
        "storage": "file",
    })
    .to_string();
    let request = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.create 1\r\n\
         PUB $JS.API.STREAM.CREATE.{name} _INBOX.create {}\r\n{config}\r\n",
        config.len()
    );
    write
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if read.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed".into());
        }
        if line.starts_with("PING") {
            write
                .write_all(b"PONG\r\n")
                .await
                .map_err(|e| e.to_string())?;
        } else if line.starts_with("-ERR") {
            return Err(line.trim().to_string());
        } else if line.starts_with("MSG ") {
            let len: usize = line
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad MSG line {line:?}"))?;
            let mut body = vec![0; len + 2];
            read.read_exact(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            return serde_json::from_slice(&body[..len]).map_err(|e| e.to_string());
        }
    }
}

/// Creates stream `name`, retrying while the JetStream API answers with an
/// error (it can for a moment after an election).
async fn create_stream(cluster: &NatsCluster, name: &str, replicas: u32) {
    let last = RefCell::new(String::new());
    let created = eventually(WAIT, || {
        let last = &last;
        async move {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                create_stream_once(&cluster.client_url(0), name, replicas),
            )
            .await;
            match attempt {
                Ok(Ok(v)) if v["error"].is_null() => true,
                other => {
                    *last.borrow_mut() = format!("{other:?}");
                    false
                }
            }
        }
    })
    .await;
    assert!(created, "stream {name} not created: {}", last.borrow());
}

#[test]
fn the_binary_is_the_pinned_version() {
    let out = std::process::Command::new(nats_server())
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nats-server: v2.15.1"
    );
}

#[tokio::test]
async fn three_nodes_form_a_cluster_and_elect_stream_leaders() {
    let cluster = NatsCluster::start(3).await;

    let urls = cluster.urls();
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    assert!(
        urls.split(',').all(|u| u.starts_with("nats://127.0.0.1:")),
        "{urls}"
    );
    assert!(
        cluster.meta_leader().await.is_some(),
        "start returned before a meta leader"
    );

    create_stream(&cluster, "EVENTS", 3).await;
    let leader = eventually_some(WAIT, || cluster.stream_leader("EVENTS")).await;
    assert!(leader.is_some(), "EVENTS has no leader");
    assert_eq!(cluster.stream_leader("NO_SUCH_STREAM").await, None);
}

#[tokio::test]
async fn a_killed_node_comes_back_healthy() {
    let mut cluster = NatsCluster::start(3).await;
    create_stream(&cluster, "EVENTS", 3).await;
    let old = eventually_some(WAIT, || cluster.stream_leader("EVENTS"))
        .await
        .expect("EVENTS has a leader");

    cluster.kill(old);
    assert!(!cluster.is_running(old));
    // The two survivors keep quorum and elect a new stream leader.
    let new = eventually_some(WAIT, || async {
        cluster.stream_leader("EVENTS").await.filter(|&l| l != old)
    })
    .await;
    assert!(
        new.is_some(),
        "no new EVENTS leader after killing {}",
        cluster.name(old)
    );

    cluster.restart(old).await;
    assert!(cluster.is_running(old));
    // restart waited until the meta leader sees the node as current again.
    assert!(cluster.meta_leader().await.is_some());
    let log = cluster.log_tail(old, 10_000);
    assert_eq!(
        log.matches("Starting nats-server").count(),
        2,
        "the log keeps both runs"
    );
}

#[tokio::test]
async fn a_single_node_works_and_keeps_its_streams_across_a_restart() {
    let mut cluster = NatsCluster::start(1).await;
    assert_eq!(cluster.urls(), cluster.client_url(0));
    assert_eq!(cluster.name(0), "n1");

    create_stream(&cluster, "ORDERS", 1).await;
    assert_eq!(
        eventually_some(WAIT, || cluster.stream_leader("ORDERS")).await,
        Some(0)
    );

    cluster.kill(0);
    cluster.restart(0).await;
    // The stream was on disk (sync_interval: always) and is recovered.
    assert_eq!(
        eventually_some(WAIT, || cluster.stream_leader("ORDERS")).await,
        Some(0)
    );
}
