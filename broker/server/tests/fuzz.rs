//! Random input on every Broker RPC of a real `broker` process.
//!
//! - `malformed_requests_get_invalid_argument`: bytes that are not
//!   protobuf, on every RPC path (and after a good message on the two
//!   streams), are answered INVALID_ARGUMENT naming the message type.
//! - `random_requests_never_break_the_broker`: a proptest (128 cases by
//!   default; PROPTEST_CASES overrides) sends random bytes and random
//!   well-formed requests (odd names, huge and negative numbers, empty
//!   fields) as raw gRPC frames to random RPCs. Every call must be answered
//!   (within a per-call bound); bytes that do not decode as the RPC's input
//!   must get INVALID_ARGUMENT; nothing may get a status that means the
//!   broker failed; the process stays up and SERVING, and its log shows no
//!   panic. Afterwards known events published to a new topic read back,
//!   every topic reads to its head, and the broker restarts on the same
//!   data directory with all of it intact.
//!
//! The run prints how each RPC was answered (code and count); set
//! FUZZ_VERBOSE=1 to print every status as well.
//!
//! Every loop is bounded in count and in time.

mod common;
mod fuzz_input;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use fuzz_input::{Call, Kind, RPCS, RawCodec, rpc};
use mesh_proto::broker::v1::{self as pb, start_position::Position, subscribe_response::Response};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::{Code, codegen::http::uri::PathAndQuery, transport::Channel};

/// Upper bound for one call to be answered: generous, for a loaded
/// 2-core machine; a call that takes this long is taken to hang.
const CALL: Duration = Duration::from_secs(10);
/// Most response messages read from one stream.
const MAX_MESSAGES: usize = 1_000;
/// Default number of proptest cases.
const CASES: u32 = 128;

/// Statuses that mean the broker failed rather than refused the request.
const FAILURES: &[Code] = &[
    Code::Unknown,
    Code::Internal,
    Code::DataLoss,
    Code::Unavailable,
    Code::Cancelled,
];

/// How a call ended: the response messages (raw), then the status (OK
/// when the stream ended cleanly or the unary call succeeded).
#[derive(Debug)]
struct Outcome {
    messages: Vec<Bytes>,
    status: tonic::Status,
}

async fn channel(addr: SocketAddr) -> Channel {
    tokio::time::timeout(
        CALL,
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connected in time")
    .expect("connected")
}

/// Sends `call`'s frames and reads what comes back. On a stream, reads to
/// the end, except that a Subscribe stream with no malformed frame never
/// ends by itself: its first answer is enough.
async fn send(ch: &Channel, call: &Call) -> Result<Outcome, String> {
    let spec = &RPCS[call.rpc];
    let mut grpc = tonic::client::Grpc::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let path = PathAndQuery::from_static(spec.path);
    let frames: Vec<Bytes> = call.frames.iter().cloned().map(Bytes::from).collect();
    let run = async {
        grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
        if spec.kind == Kind::Unary {
            let r = grpc
                .unary(tonic::Request::new(frames[0].clone()), path, RawCodec)
                .await;
            return Ok(match r {
                Ok(m) => Outcome {
                    messages: vec![m.into_inner()],
                    status: tonic::Status::ok(""),
                },
                Err(status) => Outcome {
                    messages: vec![],
                    status,
                },
            });
        }
        let stream = tokio_stream::iter(frames);
        let mut rx = match grpc
            .streaming(tonic::Request::new(stream), path, RawCodec)
            .await
        {
            Ok(r) => r.into_inner(),
            Err(status) => {
                return Ok(Outcome {
                    messages: vec![],
                    status,
                });
            }
        };
        let open_ended = call.rpc == rpc("Subscribe") && call.first_malformed().is_none();
        let mut messages = Vec::new();
        for _ in 0..MAX_MESSAGES {
            match rx.message().await {
                Ok(Some(m)) => {
                    messages.push(m);
                    if open_ended {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    return Ok(Outcome { messages, status });
                }
            }
        }
        Ok(Outcome {
            messages,
            status: tonic::Status::ok(""),
        })
    };
    tokio::time::timeout(CALL, run)
        .await
        .map_err(|_| format!("no answer within {CALL:?}"))?
}

/// What the broker must have answered to `call`.
fn check(call: &Call, out: &Outcome) -> Result<(), String> {
    let spec = &RPCS[call.rpc];
    let code = out.status.code();
    let says_malformed = code == Code::InvalidArgument
        && out
            .status
            .message()
            .starts_with(&format!("request is not a valid {}: ", spec.input));
    match call.first_malformed() {
        // The first frame is garbage: nothing ran, the codec answered.
        Some(0) if !says_malformed => {
            return Err(format!("malformed request got {:?}", out.status));
        }
        // Garbage after a good message: a Publish stream answers what came
        // before and then ends with the codec's status; a Subscribe stream
        // does the same once it opened (it may refuse the open first).
        Some(_) => {
            let opened =
                first_subscribe_response(out).is_some_and(|r| matches!(r, Response::Opened(_)));
            let must = call.rpc == rpc("Publish") || opened;
            if must && !says_malformed {
                return Err(format!("malformed request mid-stream got {:?}", out.status));
            }
        }
        None => {}
    }
    if FAILURES.contains(&code) {
        return Err(format!("the broker failed: {:?}", out.status));
    }
    // Every answer is a well-formed response.
    let decodes = |b: &Bytes| match spec.path.rsplit('/').next() {
        Some("Publish" | "PublishUnary") => {
            <pb::PublishResponse as prost::Message>::decode(b.clone()).is_ok()
        }
        Some("Subscribe") => <pb::SubscribeResponse as prost::Message>::decode(b.clone()).is_ok(),
        _ => true,
    };
    if let Some(bad) = out.messages.iter().find(|m| !decodes(m)) {
        return Err(format!("malformed response {bad:?}"));
    }
    Ok(())
}

fn first_subscribe_response(out: &Outcome) -> Option<Response> {
    let m = out.messages.first()?;
    <pb::SubscribeResponse as prost::Message>::decode(m.clone())
        .ok()?
        .response
}

/// The broker as a child process, logging to `log`; the guard kills it if
/// the test fails.
struct Proc(BrokerProcess);

impl Proc {
    fn spawn(dir: &Path, log: &Path) -> Proc {
        Proc(BrokerProcess::spawn_logging_to(dir, &[], log))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and a bounded wait for a clean exit.
    fn stop(mut self) {
        let pid = self.0.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        for _ in 0..3_000 {
            if let Some(status) = self.0.child.try_wait().unwrap() {
                assert!(status.success(), "broker exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the broker did not exit within 30 s of SIGTERM");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn assert_no_panic(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "the broker panicked:\n{text}");
}

#[test]
fn malformed_requests_get_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut p = Proc::spawn(&data, &log);
    let rt = runtime();
    rt.block_on(async {
        let mut c = connect(p.addr()).await.unwrap();
        create_topic(&mut c, fuzz_input::TOPIC).await;
        let ch = channel(p.addr()).await;
        // A field header with wire type 7, which does not exist.
        let garbage = vec![0x0f];
        for (i, r) in RPCS.iter().enumerate() {
            let call = Call {
                rpc: i,
                frames: vec![garbage.clone()],
            };
            let out = send(&ch, &call).await.unwrap();
            check(&call, &out).unwrap_or_else(|e| panic!("{}: {e}", r.path));
            assert_eq!(out.status.code(), Code::InvalidArgument, "{}", r.path);
        }
        // Mid-stream: a good publish is answered, then the stream ends.
        let good = prost::Message::encode_to_vec(&pb::PublishRequest {
            sequence: 7,
            topic: fuzz_input::TOPIC.into(),
            events: vec![event("mid", "k", "1")],
        });
        let call = Call {
            rpc: rpc("Publish"),
            frames: vec![good, garbage.clone()],
        };
        let out = send(&ch, &call).await.unwrap();
        check(&call, &out).unwrap();
        let first: pb::PublishResponse = prost::Message::decode(out.messages[0].clone()).unwrap();
        assert_eq!((first.sequence, first.error), (7, None));
        // Mid-stream on an open subscription, a group member and a tail.
        for group in ["g", ""] {
            let open = open_from(fuzz_input::TOPIC, group, 10, group.is_empty(), None);
            let call = Call {
                rpc: rpc("Subscribe"),
                frames: vec![prost::Message::encode_to_vec(&open), garbage.clone()],
            };
            let out = send(&ch, &call).await.unwrap();
            assert!(
                matches!(first_subscribe_response(&out), Some(Response::Opened(_))),
                "{out:?}"
            );
            check(&call, &out).unwrap_or_else(|e| panic!("group {group:?}: {e}"));
        }
    });
    assert!(p.alive());
    p.stop();
    assert_no_panic(&log);
}

#[test]
fn random_requests_never_break_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("broker.log");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let p = Mutex::new(Proc::spawn(&data, &log));
    let addr = p.lock().unwrap().addr();
    let rt = runtime();
    let ch = rt.block_on(async {
        let mut c = connect(addr).await.unwrap();
        create_topic(&mut c, fuzz_input::TOPIC).await;
        channel(addr).await
    });

    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        config.max_shrink_iters = 64;
    }
    println!("{} cases", config.cases);
    let started = Instant::now();
    // How each RPC was answered, printed so a run shows what it reached.
    let seen: Mutex<BTreeMap<(&str, String), u32>> = Mutex::default();
    let verbose = std::env::var_os("FUZZ_VERBOSE").is_some();
    let mut runner = TestRunner::new(config);
    let result = runner.run(&fuzz_input::call(), |call| {
        rt.block_on(async {
            // Random DeleteTopic calls delete it now and then.
            ensure_topic(&ch, fuzz_input::TOPIC).await;
            let out = send(&ch, &call).await.map_err(TestCaseError::fail)?;
            let method = RPCS[call.rpc].path.rsplit('/').next().unwrap_or_default();
            let code = format!("{:?}", out.status.code());
            *seen.lock().unwrap().entry((method, code)).or_default() += 1;
            if verbose {
                println!("{method} {:?}", out.status);
            }
            check(&call, &out).map_err(TestCaseError::fail)?;
            if !p.lock().unwrap().alive() {
                return Err(TestCaseError::fail("the broker process exited"));
            }
            if !mesh_runtime::grpc::healthcheck(&addr.to_string(), &Default::default()).await {
                return Err(TestCaseError::fail("the broker is not SERVING"));
            }
            Ok(())
        })
    });
    println!("ran in {:?}", started.elapsed());
    for ((method, code), n) in seen.into_inner().unwrap() {
        println!("{method:>20} {code:<18} {n}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_no_panic(&log);

    // The log still works: known events publish and read back, and every
    // topic reads to its head.
    let known: Vec<_> = (0..5)
        .map(|i| event(&format!("known-{i}"), "k", &format!("{i}")))
        .collect();
    let ids: Vec<String> = known.iter().map(|e| e.id.clone()).collect();
    let before = rt.block_on(async {
        let mut c = connect(addr).await.unwrap();
        create_topic(&mut c, "after").await;
        publish(&mut c, "after", known).await;
        assert_eq!(read_ids(&mut c, "after").await, ids);
        read_every_topic(&mut c).await
    });

    // And it all survives a clean restart on the same data directory.
    p.into_inner().unwrap().stop();
    assert_no_panic(&log);
    let mut p = Proc::spawn(&data, &log);
    let after = rt.block_on(async {
        let mut c = connect(p.addr()).await.unwrap();
        assert_eq!(read_ids(&mut c, "after").await, ids);
        read_every_topic(&mut c).await
    });
    assert_eq!(
        before, after,
        "topics (name, events read) before and after the restart"
    );
    assert!(p.alive());
    p.stop();
    assert_no_panic(&log);
}

/// Creates `topic` unless it exists.
async fn ensure_topic(ch: &Channel, topic: &str) {
    let mut c = pb::broker_client::BrokerClient::new(ch.clone());
    let r = tokio::time::timeout(
        CALL,
        c.create_topic(pb::CreateTopicRequest {
            name: topic.into(),
            ..Default::default()
        }),
    )
    .await
    .expect("CreateTopic answered in time");
    match r {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {}
        Err(s) => panic!("CreateTopic {topic:?}: {s:?}"),
    }
}

/// Ids of every event of `topic`, read from the earliest offset to the head.
async fn read_ids(c: &mut Client, topic: &str) -> Vec<String> {
    read_all(c, topic)
        .await
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.clone())
        .collect()
}

/// Every event of `topic`, read by an ephemeral tail until it is caught up.
async fn read_all(c: &mut Client, topic: &str) -> Vec<mesh_proto::events::v1::StoredEvent> {
    let start = Some(Position::Earliest(pb::Empty {}));
    let mut s = Sub::open_with(c, open_from(topic, "", 256, true, start)).await;
    let mut out = Vec::new();
    for _ in 0..MAX_MESSAGES {
        match s.next(CALL).await {
            Some(Response::Deliveries(d)) => {
                out.extend(d.deliveries.into_iter().filter_map(|d| d.event));
            }
            Some(Response::CaughtUp(_)) => return out,
            other => panic!("{topic}: reading back got {other:?}"),
        }
    }
    panic!("{topic}: not caught up after {MAX_MESSAGES} messages");
}

/// Each topic's name, how many events it holds from earliest to head, and
/// that exactly those read back at consecutive offsets.
async fn read_every_topic(c: &mut Client) -> Vec<(String, u64)> {
    let topics = c
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics;
    let mut out = Vec::new();
    for t in topics {
        let events = read_all(c, &t.name).await;
        let offsets: Vec<u64> = events.iter().map(|e| e.offset).collect();
        let expected: Vec<u64> = (t.earliest_offset..t.head_offset).collect();
        assert_eq!(offsets, expected, "offsets of topic {:?}", t.name);
        out.push((t.name, t.head_offset - t.earliest_offset));
    }
    out.sort();
    out
}
