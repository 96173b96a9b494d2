//! Dead letters: events a group failed `max_delivery_attempts` times.
//!
//! Each group's dead letters go to an ordinary topic named
//! `<topic>.<group>.dlq`, so they are durable, replayable and visible with
//! the topic tools. The original event is stored unchanged except for
//! `mesh.dlq.*` attributes that record where it came from and why it
//! failed. A cursor (the group `dlq-cursor` on the dead-letter topic) marks
//! what has been redriven or purged; what lies after it is listed.
//!
//! Redrive appends the event to its original topic again with the
//! attribute `mesh.redrive.group` set, and only that group delivers it:
//! the others skip it. So a redrive never reaches groups that had already
//! handled the event.

use std::collections::HashMap;

use bytes::Bytes;
use mesh_log::{AppendRecord, CommitMode, LogError, Storage};
use mesh_proto::{
    broker::v1 as pb,
    events::v1::{Event, StoredEvent},
};
use prost::Message;

use crate::{
    config::BrokerConfig,
    convert,
    error::{BrokerError, Result},
};

/// Attribute that marks a redriven copy of a dead letter: only this group
/// receives it.
pub const REDRIVE_GROUP_ATTR: &str = "mesh.redrive.group";

pub const CURSOR: &str = "dlq-cursor";
const PAGE: usize = 1000;

const A_TOPIC: &str = "mesh.dlq.topic";
const A_GROUP: &str = "mesh.dlq.group";
const A_OFFSET: &str = "mesh.dlq.offset";
const A_ATTEMPTS: &str = "mesh.dlq.attempts";
const A_REASON: &str = "mesh.dlq.reason";
const A_FIRST: &str = "mesh.dlq.first_delivered_us";

pub fn topic_name(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.dlq")
}

#[derive(Debug)]
pub struct Letter {
    pub event: StoredEvent,
    pub attempts: u32,
    pub reason: String,
    pub first_delivered_us: i64,
}

async fn ensure_topic(storage: &dyn Storage, cfg: &BrokerConfig, name: &str) -> Result<()> {
    match storage
        .create_topic(name, cfg.topic_config(None, None, None))
        .await
    {
        Ok(_) | Err(LogError::TopicExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Durably appends the event to the group's dead-letter topic.
pub async fn dead_letter(
    storage: &dyn Storage,
    cfg: &BrokerConfig,
    topic: &str,
    group: &str,
    letter: Letter,
) -> Result<()> {
    let name = topic_name(topic, group);
    ensure_topic(storage, cfg, &name).await?;
    if storage.committed(&name, CURSOR)?.is_none() {
        // The cursor group also keeps age retention from deleting dead
        // letters nobody has looked at.
        let earliest = storage.topic(&name)?.earliest;
        storage
            .commit(&name, CURSOR, earliest, CommitMode::Forward)
            .await?;
    }
    let offset = letter.event.offset;
    let mut ev = letter.event.event.unwrap_or_default();
    let a = &mut ev.attributes;
    a.insert(A_TOPIC.into(), topic.into());
    a.insert(A_GROUP.into(), group.into());
    a.insert(A_OFFSET.into(), offset.to_string());
    a.insert(A_ATTEMPTS.into(), letter.attempts.to_string());
    a.insert(A_REASON.into(), letter.reason);
    a.insert(A_FIRST.into(), letter.first_delivered_us.to_string());
    let payload = Bytes::from(ev.encode_to_vec());
    let appended = storage
        .append(
            &name,
            vec![AppendRecord {
                // Dead-lettering the same offset twice (after a crash) keeps
                // one copy.
                id: Some(format!("dlq:{offset}")),
                payload: payload.clone(),
            }],
        )
        .await?;
    // But a duplicate of a copy that was already redriven or purged (it
    // lies before the cursor) is a new failure, for example after a seek
    // replayed the event: deduping it would make the event vanish, counted
    // as dead-lettered yet listed nowhere. It gets a copy of its own, keyed
    // by this delivery cycle so a retried append still keeps one.
    let cursor = storage.committed(&name, CURSOR)?.unwrap_or(0);
    if appended.iter().any(|a| a.duplicate && a.offset < cursor) {
        storage
            .append(
                &name,
                vec![AppendRecord {
                    id: Some(format!("dlq:{offset}:{}", letter.first_delivered_us)),
                    payload,
                }],
            )
            .await?;
    }
    Ok(())
}

fn attr<T: std::str::FromStr + Default>(a: &HashMap<String, String>, k: &str) -> T {
    a.get(k).and_then(|v| v.parse().ok()).unwrap_or_default()
}

/// Where listing starts, and the head: `None` if the group has none.
fn bounds(storage: &dyn Storage, name: &str) -> Result<Option<(u64, u64)>> {
    let t = match storage.topic(name) {
        Ok(t) => t,
        Err(LogError::TopicNotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let cursor = storage
        .committed(name, CURSOR)?
        .unwrap_or(0)
        .max(t.earliest);
    Ok(Some((cursor, t.head)))
}

pub fn count(storage: &dyn Storage, topic: &str, group: &str) -> Result<u64> {
    Ok(bounds(storage, &topic_name(topic, group))?.map_or(0, |(c, h)| h.saturating_sub(c)))
}

pub async fn list(
    storage: &dyn Storage,
    topic: &str,
    group: &str,
    limit: usize,
) -> Result<Vec<pb::DeadLetter>> {
    let name = topic_name(topic, group);
    let Some((cursor, head)) = bounds(storage, &name)? else {
        return Ok(Vec::new());
    };
    if cursor >= head {
        return Ok(Vec::new());
    }
    let records = storage.read(&name, cursor, limit, 16 << 20).await?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let mut stored = convert::stored_event(&name, &r.clone().into())?;
        let ev = stored.event.get_or_insert_with(Event::default);
        let a = &ev.attributes;
        let dl = pb::DeadLetter {
            dead_letter_offset: r.offset,
            original_offset: attr(a, A_OFFSET),
            delivery_attempts: attr(a, A_ATTEMPTS),
            last_reason: a.get(A_REASON).cloned().unwrap_or_default(),
            first_delivered_at: Some(convert::timestamp(attr(a, A_FIRST))),
            dead_lettered_at: Some(convert::timestamp(r.timestamp_us)),
            event: None,
        };
        stored.topic = topic.to_string();
        stored.offset = dl.original_offset;
        out.push(pb::DeadLetter {
            event: Some(stored),
            ..dl
        });
    }
    Ok(out)
}

/// Sends up to `limit` dead letters (0 = all) back to the group.
pub async fn redrive(storage: &dyn Storage, topic: &str, group: &str, limit: u64) -> Result<u64> {
    storage.topic(topic)?;
    let name = topic_name(topic, group);
    let Some((mut cursor, head)) = bounds(storage, &name)? else {
        return Ok(0);
    };
    let end = if limit == 0 {
        head
    } else {
        head.min(cursor.saturating_add(limit))
    };
    let mut done = 0;
    while cursor < end {
        let n = ((end - cursor) as usize).min(PAGE);
        let records = storage.read(&name, cursor, n, 16 << 20).await?;
        let Some(last) = records.last().map(|r| r.offset) else {
            break;
        };
        let mut batch = Vec::with_capacity(records.len());
        for r in &records {
            let mut ev = Event::decode(r.payload.clone()).map_err(|e| {
                BrokerError::FailedPrecondition(format!(
                    "dead letter {} of {name:?} is not an event: {e}",
                    r.offset
                ))
            })?;
            ev.attributes.retain(|k, _| !k.starts_with("mesh.dlq."));
            ev.attributes
                .insert(REDRIVE_GROUP_ATTR.into(), group.into());
            batch.push(AppendRecord {
                // Not the event id: that one is still in the dedupe window
                // and would make the broker drop the redriven copy.
                id: Some(format!("redrive:{group}:{}", r.offset)),
                payload: Bytes::from(ev.encode_to_vec()),
            });
        }
        done += batch.len() as u64;
        storage.append(topic, batch).await?;
        cursor = last + 1;
        storage
            .commit(&name, CURSOR, cursor, CommitMode::Forward)
            .await?;
    }
    Ok(done)
}

pub async fn purge(storage: &dyn Storage, topic: &str, group: &str) -> Result<u64> {
    let name = topic_name(topic, group);
    let Some((cursor, head)) = bounds(storage, &name)? else {
        return Ok(0);
    };
    if head > cursor {
        storage
            .commit(&name, CURSOR, head, CommitMode::Forward)
            .await?;
    }
    Ok(head.saturating_sub(cursor))
}
