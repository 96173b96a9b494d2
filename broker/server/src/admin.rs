//! Topic, group and dead-letter administration.

use std::{sync::Arc, time::Duration};

use mesh_log::{CommitMode, LogError, TopicStats};
use mesh_proto::broker::v1 as pb;

use crate::{
    cluster::{self, Claim},
    convert, dlq,
    error::{BrokerError, Result},
    group::{Cmd, GroupHandle, GroupStore, LogStore, SeekOutcome, resolve_start},
    state::Shared,
    subscribe::parse_start,
};

fn topic_info(t: TopicStats, default_attempts: u32) -> pb::TopicInfo {
    pb::TopicInfo {
        name: t.name,
        partitions: 1,
        retention_ms: t.config.retention_ms.unwrap_or(0),
        retention_bytes: t.config.retention_bytes.unwrap_or(0),
        max_delivery_attempts: t.config.max_delivery_attempts.unwrap_or(default_attempts),
        earliest_offset: t.earliest,
        head_offset: t.head,
        bytes_on_disk: t.bytes,
        segments: t.segments as u32,
    }
}

fn name(field: &str, what: &'static str, v: &str) -> Result<()> {
    mesh_log::names::validate(what, v).map_err(|e| BrokerError::invalid(field, e.to_string()))
}

fn info(broker: &Shared, t: TopicStats) -> pb::TopicInfo {
    topic_info(t, broker.cfg.delivery.max_delivery_attempts)
}

pub async fn create_topic(broker: &Shared, r: pb::CreateTopicRequest) -> Result<pb::TopicInfo> {
    name("name", "topic", &r.name)?;
    if r.max_delivery_attempts == Some(0) {
        return Err(BrokerError::invalid(
            "max_delivery_attempts",
            "must be at least 1",
        ));
    }
    let tc = broker
        .cfg
        .topic_config(r.retention_ms, r.retention_bytes, r.max_delivery_attempts);
    let t = broker.storage.create_topic(&r.name, tc).await?;
    Ok(info(broker, t))
}

pub fn list_topics(broker: &Shared) -> pb::ListTopicsResponse {
    pb::ListTopicsResponse {
        topics: broker
            .storage
            .topics()
            .into_iter()
            .map(|t| info(broker, t))
            .collect(),
    }
}

pub fn describe_topic(broker: &Shared, r: pb::DescribeTopicRequest) -> Result<pb::TopicInfo> {
    name("name", "topic", &r.name)?;
    Ok(info(broker, broker.storage.topic(&r.name)?))
}

pub async fn delete_topic(broker: &Shared, r: pb::DeleteTopicRequest) -> Result<()> {
    name("name", "topic", &r.name)?;
    broker.storage.topic(&r.name)?;
    for h in broker.groups.take(Some(&r.name)) {
        h.stop().await;
    }
    Ok(broker.storage.delete_topic(&r.name).await?)
}

pub async fn describe_group(broker: &Shared, topic: &str, group: &str) -> Result<pb::GroupInfo> {
    name("topic", "topic", topic)?;
    name("group", "group", group)?;
    let t = broker.storage.topic(topic)?;
    let running = match broker.groups.get(topic, group) {
        Some(h) => Some(h.describe().await?),
        None => None,
    };
    let stored = broker
        .storage
        .groups(topic)?
        .into_iter()
        .find(|g| g.group == group);
    // A group exists once its first member has chosen where it starts,
    // which stores its position. A running dispatcher without a stored
    // position is one whose every join was refused (say, a start offset
    // beyond the head): reporting it would show a phantom group at
    // committed 0 that ListGroups does not list and a restart forgets.
    let (committed, position, missed) = match (&running, &stored) {
        (Some(s), Some(g)) => (s.committed, s.position, g.missed),
        (None, Some(g)) => (g.committed, g.committed, g.missed),
        (_, None) => {
            return Err(BrokerError::NotFound(format!(
                "group {group:?} of topic {topic:?} not found"
            )));
        }
    };
    let position = position.max(t.earliest);
    let oldest_us = match running.as_ref().and_then(|s| s.oldest_unacked_us) {
        Some(us) => Some(us),
        None if position < t.head => match broker.storage.read(topic, position, 1, 1).await {
            Ok(r) => r.first().map(|r| r.timestamp_us),
            // The group is at a damaged record: its age is unknown, and
            // describing the group is how an operator finds out why.
            Err(LogError::Corrupt { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let age = oldest_us.map_or(Duration::ZERO, |us| {
        Duration::from_micros((convert::now_us() - us).max(0) as u64)
    });
    let s = running.unwrap_or_default();
    let (blocked_at, blocked_reason) = match s.blocked {
        Some((offset, reason)) => (Some(offset), reason),
        None => (None, String::new()),
    };
    Ok(pb::GroupInfo {
        topic: topic.to_string(),
        group: group.to_string(),
        committed_offset: committed,
        lag_events: t.head.saturating_sub(position),
        oldest_unacked_age: Some(convert::duration(age)),
        missed_events: missed,
        in_flight: s.in_flight,
        redelivered: s.redelivered,
        dead_lettered: s.dead_lettered,
        members: s.members,
        dead_letters: dlq::count(&*broker.storage, topic, group)?,
        buffered: s.buffered,
        blocked_at,
        blocked_reason,
    })
}

pub async fn list_groups(broker: &Shared, topic: &str) -> Result<pb::ListGroupsResponse> {
    name("topic", "topic", topic)?;
    let mut groups = Vec::new();
    for g in broker.storage.groups(topic)? {
        groups.push(describe_group(broker, topic, &g.group).await?);
    }
    Ok(pb::ListGroupsResponse { groups })
}

/// The dispatcher a seek goes through, if the group has one. With several
/// brokers, an existing group's seek takes the group's lease here (the
/// service forwarded it if another broker holds it), so no other broker
/// can start dispatching from the old position while the seek is applied.
async fn running_for_seek(
    broker: &Arc<Shared>,
    topic: &str,
    group: &str,
) -> Result<Option<GroupHandle>> {
    if broker.cluster.is_none() || broker.storage.committed(topic, group)?.is_none() {
        return Ok(broker.groups.get(topic, group));
    }
    match cluster::claim(broker, topic, group, true).await? {
        Claim::Local(h) => Ok(Some(h)),
        Claim::Remote(_) => Err(BrokerError::Unavailable(format!(
            "group {group:?} of topic {topic:?} moved to another broker; retry"
        ))),
    }
}

pub async fn seek_group(
    broker: &Arc<Shared>,
    r: pb::SeekGroupRequest,
) -> Result<pb::SeekGroupResponse> {
    name("topic", "topic", &r.topic)?;
    name("group", "group", &r.group)?;
    if r.position
        .as_ref()
        .and_then(|p| p.position.as_ref())
        .is_none()
    {
        return Err(BrokerError::invalid(
            "position",
            "required: earliest, latest, offset or time",
        ));
    }
    let start = parse_start(r.position.as_ref(), "position")?;
    let store = LogStore::new(
        broker.storage.clone(),
        broker.cfg.clone(),
        &r.topic,
        &r.group,
    );
    let target = resolve_start(store.topic_store(), start)
        .await
        .map_err(|e| match e {
            BrokerError::InvalidArgument { reason, .. } => {
                BrokerError::invalid("position.offset", reason)
            }
            e => e,
        })?;
    let outcome = match running_for_seek(broker, &r.topic, &r.group).await? {
        Some(h) => {
            let (reply, rx) = tokio::sync::oneshot::channel();
            h.send(Cmd::Seek {
                target,
                dry_run: r.dry_run,
                reply,
            })
            .await?;
            rx.await.map_err(|_| BrokerError::ShuttingDown)??
        }
        None => {
            let previous = broker
                .storage
                .committed(&r.topic, &r.group)?
                .unwrap_or(target);
            if !r.dry_run {
                broker
                    .storage
                    .commit(&r.topic, &r.group, target, CommitMode::Reset)
                    .await?;
            }
            SeekOutcome {
                previous,
                target,
                to_redeliver: previous.saturating_sub(target),
                to_skip: target.saturating_sub(previous),
            }
        }
    };
    Ok(pb::SeekGroupResponse {
        previous_offset: outcome.previous,
        new_offset: outcome.target,
        events_to_redeliver: outcome.to_redeliver,
        events_to_skip: outcome.to_skip,
        applied: !r.dry_run,
    })
}

pub async fn delete_group(broker: &Shared, topic: &str, group: &str) -> Result<()> {
    name("topic", "topic", topic)?;
    name("group", "group", group)?;
    if let Some(h) = broker.groups.get(topic, group) {
        let members = h.describe().await?.members.len();
        if members > 0 {
            return Err(BrokerError::FailedPrecondition(format!(
                "group {group:?} has {members} connected member(s); disconnect them first"
            )));
        }
        if let Some(h) = broker.groups.take_one(topic, group) {
            h.stop().await;
        }
    }
    broker
        .storage
        .delete_group(topic, group)
        .await
        .map_err(|e| match e {
            LogError::GroupNotFound { .. } => BrokerError::NotFound(e.to_string()),
            e => e.into(),
        })
}

pub async fn list_dead_letters(
    broker: &Shared,
    r: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse> {
    name("topic", "topic", &r.topic)?;
    name("group", "group", &r.group)?;
    broker.storage.topic(&r.topic)?;
    let limit = match r.limit {
        0 => 100,
        n if n > 1000 => return Err(BrokerError::invalid("limit", "must be at most 1000")),
        n => n as usize,
    };
    Ok(pb::ListDeadLettersResponse {
        dead_letters: dlq::list(&*broker.storage, &r.topic, &r.group, limit).await?,
        dead_letter_topic: dlq::topic_name(&r.topic, &r.group),
    })
}

pub async fn redrive(broker: &Shared, r: pb::RedriveDeadLettersRequest) -> Result<u64> {
    name("topic", "topic", &r.topic)?;
    name("group", "group", &r.group)?;
    dlq::redrive(&*broker.storage, &r.topic, &r.group, r.limit as u64).await
}

pub async fn purge(broker: &Shared, r: pb::PurgeDeadLettersRequest) -> Result<u64> {
    name("topic", "topic", &r.topic)?;
    name("group", "group", &r.group)?;
    broker.storage.topic(&r.topic)?;
    dlq::purge(&*broker.storage, &r.topic, &r.group).await
}
