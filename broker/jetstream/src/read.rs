//! Reads straight from a stream, without a consumer: JetStream's batched
//! direct get (`$JS.API.DIRECT.GET.<stream>` with `seq`, `batch` and
//! `max_bytes`, nats-server 2.11+), answered by any replica. A read needs
//! no server-side state, so any broker can serve any reader, and a reader
//! that stalls holds nothing on the servers.
//!
//! The answer is a run of messages ending with a `204 EOB` status message
//! (or `404` when nothing is there).

use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, StatusCode};
use futures_util::StreamExt;
use mesh_log::{LogError, Record, Result};
use serde_json::json;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::error::backend;

/// One stored message, as the log's [`Record`]s are.
pub fn record(msg: &Message) -> Result<Record> {
    let h = msg.headers.as_ref().ok_or_else(|| bad("no headers"))?;
    let seq: u64 = header(h, "Nats-Sequence")?
        .parse()
        .map_err(|_| bad("Nats-Sequence is not a number"))?;
    let ts = header(h, "Nats-Time-Stamp")?;
    let t = OffsetDateTime::parse(ts, &Rfc3339)
        .map_err(|e| bad(&format!("Nats-Time-Stamp {ts:?}: {e}")))?;
    let timestamp_us = (t.unix_timestamp_nanos() / 1000) as i64;
    Ok(Record {
        offset: seq.saturating_sub(1),
        timestamp_us,
        id_hash: id_hash(h),
        payload: msg.payload.clone(),
    })
}

/// The hash of a message's producer id (`Nats-Msg-Id`), as the log keeps
/// for its records; 0 without one.
pub fn id_hash(h: &HeaderMap) -> u128 {
    h.get("Nats-Msg-Id")
        .map_or(0, |id| xxhash_rust::xxh3::xxh3_128(id.as_str().as_bytes()))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str> {
    h.get(name)
        .map(|v| v.as_str())
        .ok_or_else(|| bad(&format!("no {name} header")))
}

fn bad(reason: &str) -> LogError {
    LogError::Backend {
        op: "read",
        reason: format!("unexpected direct get answer: {reason}"),
    }
}

/// Up to `max` messages of `stream` from sequence `seq` on, and about
/// `max_bytes` of them (the server always sends at least one).
pub async fn batch(
    client: &Client,
    stream: &str,
    seq: u64,
    max: usize,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(backend("read"))?;
    let req = json!({ "seq": seq, "batch": max.max(1), "max_bytes": max_bytes.max(1) });
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            req.to_string().into(),
        )
        .await
        .map_err(backend("read"))?;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(bad("subscription closed")),
            Err(_) => {
                return Err(LogError::Backend {
                    op: "read",
                    reason: format!("stream {stream} did not answer within {timeout:?}"),
                });
            }
        };
        match msg.status {
            None => out.push(record(&msg)?),
            // End of batch; or nothing at or after `seq`.
            Some(s) if s.as_u16() == 204 || s == StatusCode::NOT_FOUND => break,
            Some(s) if s == StatusCode::NO_RESPONDERS => {
                return Err(LogError::Backend {
                    op: "read",
                    reason: format!(
                        "no server answers for stream {stream} (its replicas are down or electing a leader)"
                    ),
                });
            }
            Some(s) => {
                return Err(LogError::Backend {
                    op: "read",
                    reason: format!(
                        "stream {stream} answered {s}: {}",
                        msg.description.as_deref().unwrap_or("")
                    ),
                });
            }
        }
        if out.len() >= max {
            break;
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

/// The sequence of the first message of `stream` stored at or after
/// `timestamp_us`, if there is one.
pub async fn first_at_or_after(
    client: &Client,
    stream: &str,
    timestamp_us: i64,
) -> Result<Option<u64>> {
    let t =
        OffsetDateTime::from_unix_timestamp_nanos(timestamp_us as i128 * 1000).map_err(|e| {
            LogError::Backend {
                op: "seek by time",
                reason: format!("timestamp {timestamp_us} µs is out of range: {e}"),
            }
        })?;
    let start = t.format(&Rfc3339).map_err(backend("seek by time"))?;
    let msg = client
        .request(
            format!("$JS.API.DIRECT.GET.{stream}"),
            json!({ "start_time": start }).to_string().into(),
        )
        .await
        .map_err(backend("seek by time"))?;
    match msg.status {
        None => Ok(Some(record(&msg)?.offset + 1)),
        Some(s) if s == StatusCode::NOT_FOUND => Ok(None),
        Some(s) => Err(LogError::Backend {
            op: "seek by time",
            reason: format!(
                "stream {stream} answered {s}: {}",
                msg.description.as_deref().unwrap_or("")
            ),
        }),
    }
}
