//! What a node's HTTP monitor port says, read with a plain HTTP/1.0 GET (no
//! HTTP or NATS client crate): `/healthz` and the JetStream parts of `/jsz`
//! the harness waits on.

use std::time::Duration;

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One request's bound: the monitor answers from memory, so a node that
/// takes longer is treated as not ready this poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum MonitorError {
    #[error("GET {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("GET {path}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("GET {path}: not an HTTP response: {head:?}")]
    Malformed { path: String, head: String },
    #[error("GET {path}: body is not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// The status code and JSON body of `GET path` on `127.0.0.1:port`.
pub(crate) async fn get_json(port: u16, path: &str) -> Result<(u16, Value), MonitorError> {
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, get(port, path))
        .await
        .map_err(|_| MonitorError::Timeout { path: path.into() })?
        .map_err(|source| MonitorError::Io {
            path: path.into(),
            source,
        })?;
    let text = String::from_utf8_lossy(&raw);
    let malformed = || MonitorError::Malformed {
        path: path.into(),
        head: text.chars().take(80).collect(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    let json = serde_json::from_str(body).map_err(|source| MonitorError::Json {
        path: path.into(),
        source,
    })?;
    Ok((status, json))
}

/// HTTP/1.0, so the server closes the connection after its answer and the
/// body is everything up to EOF.
async fn get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    Ok(raw)
}

/// What one node's `/healthz` and `/jsz` say about the JetStream meta group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetaView {
    /// `/healthz` answered 200 `{"status":"ok"}`: JetStream is enabled, has
    /// a meta leader and has recovered its streams and consumers.
    pub healthy: bool,
    /// `/healthz`'s error when not healthy, for the panic message.
    pub health_error: String,
    /// The meta leader's server name as this node sees it; `None` for a
    /// standalone server (no `meta_cluster`) and while there is none.
    pub leader: Option<String>,
    /// `meta_cluster.cluster_size`: how many servers the meta group expects.
    pub cluster_size: Option<u64>,
    /// The other peers this node tracks as current. Only the leader tracks
    /// its followers, so this is meaningful on the leader alone.
    pub current_peers: Vec<String>,
}

/// Reads a node's view of the meta group; `Err` if the monitor does not
/// answer (not started yet, or killed).
pub(crate) async fn meta_view(port: u16) -> Result<MetaView, MonitorError> {
    let (status, health) = get_json(port, "/healthz").await?;
    let healthy = status == 200 && health["status"] == "ok";
    let health_error = health["error"].as_str().unwrap_or_default().to_string();
    let (_, jsz) = get_json(port, "/jsz").await?;
    let meta = &jsz["meta_cluster"];
    let leader = meta["leader"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(String::from);
    let current_peers = meta["replicas"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["current"] == true && r["offline"] != true)
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(MetaView {
        healthy,
        health_error,
        leader,
        cluster_size: meta["cluster_size"].as_u64(),
        current_peers,
    })
}

/// Whether this node says it leads stream `stream` (in any account). A
/// follower's idea of the leader can be stale right after the leader died,
/// so only a node's claim about itself counts.
pub(crate) async fn leads_stream(port: u16, me: &str, stream: &str) -> Result<bool, MonitorError> {
    let (_, jsz) = get_json(port, "/jsz?accounts=true&streams=true").await?;
    let accounts = jsz["account_details"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(accounts.iter().any(|a| {
        a["stream_detail"].as_array().is_some_and(|streams| {
            streams
                .iter()
                .any(|s| s["name"] == stream && s["cluster"]["leader"] == me)
        })
    }))
}
