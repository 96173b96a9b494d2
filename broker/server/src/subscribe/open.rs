//! The `open` request of a Subscribe stream: checked and turned into what
//! a session needs, before anything is joined or read.

use mesh_proto::broker::v1::{self as pb, start_position::Position};

use crate::{
    convert, dlq,
    error::{BrokerError, Result},
    group::Start,
    state::Shared,
};

/// Credit of a subscriber that asks for none.
const DEFAULT_CREDIT: u32 = 100;

pub fn parse_start(p: Option<&pb::StartPosition>, field: &str) -> Result<Start> {
    Ok(match p.and_then(|p| p.position.as_ref()) {
        None | Some(Position::Earliest(_)) => Start::Earliest,
        Some(Position::Latest(_)) => Start::Latest,
        Some(Position::Offset(o)) => Start::Offset(*o),
        Some(Position::Time(t)) => {
            if t.nanos < 0 || t.nanos >= 1_000_000_000 {
                return Err(BrokerError::invalid(
                    format!("{field}.time"),
                    "nanos must be in 0..1e9",
                ));
            }
            Start::TimeUs(convert::micros(t))
        }
    })
}

pub(super) struct Opened {
    pub(super) topic: String,
    pub(super) group: String,
    pub(super) credit: u32,
    pub(super) auto_ack: bool,
    pub(super) start: Start,
    pub(super) name: String,
}

pub(super) fn validate_open(broker: &Shared, open: pb::Open) -> Result<Opened> {
    mesh_log::names::validate("topic", &open.topic)
        .map_err(|e| BrokerError::invalid("open.topic", e.to_string()))?;
    if open.group.is_empty() {
        if !open.auto_ack {
            return Err(BrokerError::invalid(
                "open.group",
                "required unless auto_ack is set",
            ));
        }
    } else {
        mesh_log::names::validate("group", &open.group)
            .map_err(|e| BrokerError::invalid("open.group", e.to_string()))?;
        if dlq::topic_name(&open.topic, &open.group).len() > mesh_log::names::MAX_NAME_LEN {
            return Err(BrokerError::invalid(
                "open.group",
                "topic and group names together are too long for the dead-letter topic name",
            ));
        }
    }
    let cap = broker.cfg.limits.max_credit;
    let credit = match open.max_in_flight {
        0 => DEFAULT_CREDIT.min(cap),
        n if n > cap => {
            return Err(BrokerError::invalid(
                "open.max_in_flight",
                format!("{n} exceeds limits.max_credit = {cap}"),
            ));
        }
        n => n,
    };
    Ok(Opened {
        start: parse_start(open.start.as_ref(), "open.start")?,
        topic: open.topic,
        group: open.group,
        credit,
        auto_ack: open.auto_ack,
        name: open.member_name,
    })
}
