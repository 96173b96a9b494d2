//! What tests/fuzz.rs sends: every Broker RPC by path, a codec that sends
//! and receives raw message bytes (raw.rs), and proptest strategies for
//! random bytes and random well-formed requests.

use std::collections::HashMap;

use bytes::Bytes;
use mesh_proto::{
    broker::v1::{self as pb, start_position::Position, subscribe_request::Request},
    events::v1::Event,
};
use proptest::prelude::*;
use prost::Message;

mod raw;
pub use raw::RawCodec;

/// The topic most random requests name, so that they reach past name
/// validation into the log and the groups.
pub const TOPIC: &str = "fuzz";

/// How an RPC is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    /// Bidirectional: Publish and Subscribe.
    Stream,
}

/// One Broker RPC.
#[derive(Debug)]
pub struct Rpc {
    /// The HTTP/2 path, `/mesh.broker.v1.Broker/<Method>`.
    pub path: &'static str,
    pub kind: Kind,
    /// Full name of the input message, which the codec's error names.
    pub input: &'static str,
    /// Whether bytes decode as the input message: the oracle for what the
    /// broker must answer.
    pub decodes: fn(&[u8]) -> bool,
}

macro_rules! rpc {
    ($method:literal, $kind:ident, $input:ident) => {
        Rpc {
            path: concat!("/mesh.broker.v1.Broker/", $method),
            kind: Kind::$kind,
            input: concat!("mesh.broker.v1.", stringify!($input)),
            decodes: |b| pb::$input::decode(b).is_ok(),
        }
    };
}

/// Every RPC of proto/mesh/broker/v1/broker.proto.
pub const RPCS: &[Rpc] = &[
    rpc!("Publish", Stream, PublishRequest),
    rpc!("PublishUnary", Unary, PublishRequest),
    rpc!("Subscribe", Stream, SubscribeRequest),
    rpc!("CreateTopic", Unary, CreateTopicRequest),
    rpc!("ListTopics", Unary, ListTopicsRequest),
    rpc!("DescribeTopic", Unary, DescribeTopicRequest),
    rpc!("DeleteTopic", Unary, DeleteTopicRequest),
    rpc!("ListGroups", Unary, ListGroupsRequest),
    rpc!("DescribeGroup", Unary, DescribeGroupRequest),
    rpc!("SeekGroup", Unary, SeekGroupRequest),
    rpc!("DeleteGroup", Unary, DeleteGroupRequest),
    rpc!("ListDeadLetters", Unary, ListDeadLettersRequest),
    rpc!("RedriveDeadLetters", Unary, RedriveDeadLettersRequest),
    rpc!("PurgeDeadLetters", Unary, PurgeDeadLettersRequest),
];

pub fn rpc(method: &str) -> usize {
    RPCS.iter()
        .position(|r| r.path.rsplit('/').next() == Some(method))
        .unwrap_or_else(|| panic!("no RPC {method}"))
}

/// One call: an RPC (index into `RPCS`) and the message frames sent on
/// it, each as raw bytes (exactly one for a unary RPC).
#[derive(Debug, Clone)]
pub struct Call {
    pub rpc: usize,
    pub frames: Vec<Vec<u8>>,
}

impl Call {
    /// Index of the first frame that is not a valid input message.
    pub fn first_malformed(&self) -> Option<usize> {
        let decodes = RPCS[self.rpc].decodes;
        self.frames.iter().position(|f| !decodes(f))
    }
}

// ------------------------------------------------------------ strategies

/// Names a real client would not send, and some it would.
fn name() -> BoxedStrategy<String> {
    prop_oneof![
        8 => Just(TOPIC.to_string()),
        4 => plain(),
        1 => Just(String::new()),
        1 => prop::sample::select(vec![
            ".", "..", "/", "a/b", "../up", "\\", "nul\0byte", " ", "\t\n", "fuzz.g.dlq",
            "é✓🦀", "CON", "-", "_", "a.b", "%2e%2e",
        ])
        .prop_map(String::from),
        1 => (1usize..600).prop_map(|n| "x".repeat(n)),
        2 => "\\PC{0,24}",
        1 => "[\\x00-\\x1f\\x7f]{1,4}",
    ]
    .boxed()
}

/// A group name: mostly one of a few, so that later calls find groups
/// that earlier subscriptions made.
fn group() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(vec!["g", "h"]).prop_map(String::from),
        1 => plain(),
        1 => name(),
    ]
    .boxed()
}

/// A name the broker accepts.
fn plain() -> BoxedStrategy<String> {
    "[a-z][a-z0-9._-]{0,8}".boxed()
}

/// Mostly names the broker accepts, sometimes any `name()`.
fn mostly_plain() -> BoxedStrategy<String> {
    prop_oneof![4 => plain(), 1 => name()].boxed()
}

fn u64_edge() -> BoxedStrategy<u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(1 << 63),
        0u64..1000,
        any::<u64>(),
    ]
    .boxed()
}

fn u32_edge() -> BoxedStrategy<u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), 0u32..1000, any::<u32>()].boxed()
}

/// Seconds and nanos anywhere, negative and out of range included.
fn seconds_nanos() -> BoxedStrategy<(i64, i32)> {
    (
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
            any::<i64>()
        ],
        prop_oneof![Just(0i32), Just(-1), Just(1_000_000_000), any::<i32>()],
    )
        .boxed()
}

fn timestamp() -> BoxedStrategy<prost_types::Timestamp> {
    seconds_nanos()
        .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
        .boxed()
}

fn duration() -> BoxedStrategy<prost_types::Duration> {
    seconds_nanos()
        .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })
        .boxed()
}

fn data() -> BoxedStrategy<Bytes> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (0usize..64 << 10).prop_map(|n| vec![0x5a; n]),
    ]
    .prop_map(Bytes::from)
    .boxed()
}

fn event() -> BoxedStrategy<Event> {
    let attribute_key = prop_oneof![
        1 => Just("traceparent".to_string()),
        1 => Just("tracestate".to_string()),
        2 => mostly_plain(),
    ];
    (
        (
            mostly_plain(),
            mostly_plain(),
            name(),
            mostly_plain(),
            name(),
        ),
        prop::option::of(timestamp()),
        data(),
        prop::collection::hash_map(attribute_key, name(), 0..3),
    )
        .prop_map(
            |((id, source, spec_version, r#type, subject), time, data, attributes)| Event {
                id,
                source,
                spec_version,
                r#type,
                subject,
                time,
                datacontenttype: String::new(),
                data,
                attributes: attributes.into_iter().collect::<HashMap<_, _>>(),
            },
        )
        .boxed()
}

fn publish_request() -> BoxedStrategy<pb::PublishRequest> {
    let events = prop_oneof![
        1 => Just(vec![]),
        8 => prop::collection::vec(event(), 1..4),
    ];
    (u64_edge(), name(), events)
        .prop_map(|(sequence, topic, events)| pb::PublishRequest {
            sequence,
            topic,
            events,
        })
        .boxed()
}

fn position() -> BoxedStrategy<Option<pb::StartPosition>> {
    prop::option::of(
        prop_oneof![
            Just(Position::Earliest(pb::Empty {})),
            Just(Position::Latest(pb::Empty {})),
            u64_edge().prop_map(Position::Offset),
            timestamp().prop_map(Position::Time),
        ]
        .prop_map(|p| pb::StartPosition { position: Some(p) }),
    )
    .boxed()
}

/// A Subscribe stream's requests: mostly an `open` first, as a client
/// would, then anything.
fn subscribe_frames() -> BoxedStrategy<Vec<Vec<u8>>> {
    let first = prop_oneof![9 => open_request(), 1 => subscribe_request()];
    (first, prop::collection::vec(subscribe_request(), 0..2))
        .prop_map(|(first, rest)| std::iter::once(first).chain(rest).map(bytes_of).collect())
        .boxed()
}

fn open_request() -> BoxedStrategy<pb::SubscribeRequest> {
    subscribe_request()
        .prop_filter("an open", |r| matches!(r.request, Some(Request::Open(_))))
        .boxed()
}

fn subscribe_request() -> BoxedStrategy<pb::SubscribeRequest> {
    let credit = prop_oneof![4 => 0u32..200, 1 => u32_edge()];
    let open = (
        name(),
        group(),
        position(),
        credit,
        any::<bool>(),
        mostly_plain(),
    )
        .prop_map(
            |(topic, group, start, max_in_flight, auto_ack, member_name)| {
                Request::Open(pb::Open {
                    topic,
                    group,
                    start,
                    max_in_flight,
                    auto_ack,
                    member_name,
                })
            },
        );
    let offsets = || prop::collection::vec(u64_edge(), 0..8);
    let request = prop_oneof![
        4 => open,
        1 => offsets().prop_map(|offsets| Request::Ack(pb::Ack { offsets })),
        1 => (offsets(), prop::option::of(duration()), name())
            .prop_map(|(offsets, delay, reason)| Request::Nack(pb::Nack { offsets, delay, reason })),
        1 => u32_edge().prop_map(|add| Request::Credit(pb::Credit { add })),
        1 => Just(Request::Heartbeat(pb::Heartbeat {})),
    ];
    prop::option::weighted(0.95, request)
        .prop_map(|request| pb::SubscribeRequest { request })
        .boxed()
}

fn bytes_of<M: Message>(m: M) -> Vec<u8> {
    m.encode_to_vec()
}

/// A random well-formed request for a random RPC.
fn well_formed() -> BoxedStrategy<Call> {
    let topic_group = || (name(), group());
    let unary = |method: &str, s: BoxedStrategy<Vec<u8>>| {
        let rpc = rpc(method);
        s.prop_map(move |b| Call {
            rpc,
            frames: vec![b],
        })
    };
    prop_oneof![
        (prop::collection::vec(publish_request(), 1..4)).prop_map(|rs| Call {
            rpc: rpc("Publish"),
            frames: rs.into_iter().map(bytes_of).collect(),
        }),
        unary("PublishUnary", publish_request().prop_map(bytes_of).boxed()),
        subscribe_frames().prop_map(|frames| Call {
            rpc: rpc("Subscribe"),
            frames,
        }),
        unary(
            "CreateTopic",
            (
                name(),
                prop::option::of(u64_edge()),
                prop::option::of(u64_edge()),
                prop::option::of(u32_edge())
            )
                .prop_map(
                    |(name, retention_ms, retention_bytes, max_delivery_attempts)| {
                        bytes_of(pb::CreateTopicRequest {
                            name,
                            retention_ms,
                            retention_bytes,
                            max_delivery_attempts,
                        })
                    }
                )
                .boxed()
        ),
        unary(
            "ListTopics",
            Just(bytes_of(pb::ListTopicsRequest {})).boxed()
        ),
        unary(
            "DescribeTopic",
            name()
                .prop_map(|name| bytes_of(pb::DescribeTopicRequest { name }))
                .boxed()
        ),
        unary(
            "DeleteTopic",
            name()
                .prop_map(|name| bytes_of(pb::DeleteTopicRequest { name }))
                .boxed()
        ),
        unary(
            "ListGroups",
            name()
                .prop_map(|topic| bytes_of(pb::ListGroupsRequest { topic }))
                .boxed()
        ),
        unary(
            "DescribeGroup",
            topic_group()
                .prop_map(|(topic, group)| bytes_of(pb::DescribeGroupRequest { topic, group }))
                .boxed()
        ),
        unary(
            "SeekGroup",
            (topic_group(), position(), any::<bool>())
                .prop_map(|((topic, group), position, dry_run)| {
                    bytes_of(pb::SeekGroupRequest {
                        topic,
                        group,
                        position,
                        dry_run,
                    })
                })
                .boxed()
        ),
        unary(
            "DeleteGroup",
            topic_group()
                .prop_map(|(topic, group)| bytes_of(pb::DeleteGroupRequest { topic, group }))
                .boxed()
        ),
        unary(
            "ListDeadLetters",
            (topic_group(), u32_edge())
                .prop_map(|((topic, group), limit)| {
                    bytes_of(pb::ListDeadLettersRequest {
                        topic,
                        group,
                        limit,
                    })
                })
                .boxed()
        ),
        unary(
            "RedriveDeadLetters",
            (topic_group(), u32_edge())
                .prop_map(|((topic, group), limit)| {
                    bytes_of(pb::RedriveDeadLettersRequest {
                        topic,
                        group,
                        limit,
                    })
                })
                .boxed()
        ),
        unary(
            "PurgeDeadLetters",
            topic_group()
                .prop_map(|(topic, group)| bytes_of(pb::PurgeDeadLettersRequest { topic, group }))
                .boxed()
        ),
    ]
    .boxed()
}

/// Bytes that are mostly not protobuf: random, a well-formed message with
/// random bytes after it, or one cut short.
fn garbage(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let cut = valid.clone();
    let extended = valid.clone();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..256),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(move |tail| {
            let mut b = extended.clone();
            b.extend(tail);
            b
        }),
        (0..cut.len().max(1)).prop_map(move |n| cut[..n.min(cut.len())].to_vec()),
    ]
}

/// Any call: well-formed, all garbage, or well-formed frames followed by
/// garbage on a stream (a bad message mid-stream).
pub fn call() -> BoxedStrategy<Call> {
    prop_oneof![
        3 => well_formed(),
        2 => (well_formed(), any::<prop::sample::Index>()).prop_flat_map(|(c, i)| {
            // Replace one frame with garbage derived from it.
            let at = i.index(c.frames.len());
            let valid = c.frames[at].clone();
            garbage(valid).prop_map(move |g| {
                let mut c = c.clone();
                c.frames[at] = g;
                c.frames.truncate(at + 1);
                c
            })
        }),
        1 => (0..RPCS.len(), prop::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(rpc, b)| Call { rpc, frames: vec![b] }),
    ]
    .boxed()
}
