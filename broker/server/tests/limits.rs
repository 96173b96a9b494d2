//! Limits against abuse (docs/security.md "Limits"): each, when exceeded,
//! gets its documented status naming the limit, and the broker goes on
//! serving everyone else.

mod common;
mod secure;

use std::time::Duration;

use mesh_proto::broker::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use common::{Sub, event, open_req};

async fn try_sub(c: &mut common::Client, topic: &str, group: &str) -> Result<Sub, tonic::Status> {
    Sub::try_open_with(c, open_req(topic, group, 10)).await
}

#[tokio::test]
async fn streams_per_connection_are_limited_and_a_new_connection_still_works() {
    let e = common::env(|c| {
        c.auto_create_topics = true;
        c.limits.max_streams_per_connection = 2;
        c.limits.max_concurrent_requests_per_connection = 16;
    })
    .await;
    let mut c = e.c.clone();
    let s1 = try_sub(&mut c, "orders", "g1").await.unwrap();
    let _s2 = try_sub(&mut c, "orders", "g2").await.unwrap();
    let refused = try_sub(&mut c, "orders", "g3")
        .await
        .err()
        .expect("a third stream on one connection");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("limits.max_streams_per_connection = 2"),
        "{refused:?}"
    );
    // A Publish stream counts too.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let p = c
        .publish(ReceiverStream::new(rx))
        .await
        .expect_err("a publish stream past the limit");
    assert_eq!(p.code(), Code::ResourceExhausted, "{p:?}");
    drop(tx);
    // Unary calls on the same connection still go through, and so does a
    // stream on another connection.
    c.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    let mut other = e.b.client().await;
    let _s3 = try_sub(&mut other, "orders", "g3").await.unwrap();
    // The slot comes back when a stream ends.
    drop(s1);
    let reopened = common::eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            try_sub(&mut c, "orders", "g1")
                .await
                .map(std::mem::forget)
                .is_ok()
        }
    })
    .await;
    assert!(reopened, "the connection's slot did not come back");
    e.b.stop().await;
}

#[tokio::test]
async fn members_per_group_are_limited_and_the_members_keep_receiving() {
    let e = common::env(|c| {
        c.auto_create_topics = true;
        c.limits.max_group_members = 2;
        common::no_deadlines(c);
    })
    .await;
    let mut c = e.c.clone();
    let mut m1 = try_sub(&mut c, "orders", "billing").await.unwrap();
    let mut m2 = try_sub(&mut c, "orders", "billing").await.unwrap();
    let mut c3 = e.b.client().await;
    let refused = try_sub(&mut c3, "orders", "billing")
        .await
        .err()
        .expect("a third member");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("limits.max_group_members = 2"),
        "{refused:?}"
    );
    // Another group is not affected, and the members still get events.
    let _other = try_sub(&mut c3, "orders", "shipping").await.unwrap();
    common::publish(
        &mut c,
        "orders",
        (0..4)
            .map(|i| event(&format!("e{i}"), &format!("k{i}"), "x"))
            .collect(),
    )
    .await;
    let (mut got, deadline) = (0, tokio::time::Instant::now() + Duration::from_secs(20));
    while got < 4 && tokio::time::Instant::now() < deadline {
        for m in [&mut m1, &mut m2] {
            let d = m.take(4, Duration::from_millis(200)).await;
            got += d.len();
            m.ack(d.iter().map(common::offset).collect()).await;
        }
    }
    assert_eq!(got, 4, "the two members shared all four events");
    e.b.stop().await;
}

#[tokio::test]
async fn the_publish_rate_is_per_principal_and_a_refused_request_writes_nothing() {
    let pki = secure::Pki::new();
    let b = secure::SecureBroker::start(&pki, |c| {
        c.limits.publish_rate_per_principal = 1;
        c.limits.publish_burst = 5;
    })
    .await;
    let mut billing = b.client(&pki, "billing").await;
    let req = |n: usize, tag: &str| pb::PublishRequest {
        sequence: 0,
        topic: "payments".into(),
        events: (0..n)
            .map(|i| event(&format!("{tag}-{i}"), "k", "x"))
            .collect(),
    };
    common::publish(&mut billing, "payments", req(5, "a").events).await;
    // The burst is spent: the next request is refused, and none of it is
    // written. (The rate refills 1 per second, so 5 more fit only 5 s
    // later; this call follows at once.)
    let e = billing.publish_unary(req(5, "b")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains("limits.publish_rate_per_principal = 1")
            && e.message().contains("\"billing\""),
        "{e:?}"
    );
    let mut admin = b.client(&pki, "admin").await;
    let head = |c: &mut secure::Client| {
        let mut c = c.clone();
        async move {
            c.describe_topic(pb::DescribeTopicRequest {
                name: "payments".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .head_offset
        }
    };
    let h = head(&mut admin).await;
    assert_eq!(h, 5, "a refused request was written");
    // Another principal has its own allowance.
    common::publish(&mut admin, "payments", req(5, "c").events).await;
    // A request larger than the burst can never pass, and says so.
    let e = billing.publish_unary(req(6, "d")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("limits.publish_burst"), "{e:?}");
    b.stop().await;
}

#[tokio::test]
async fn oversized_metadata_and_messages_are_refused_and_the_broker_goes_on() {
    let e = common::env(|c| {
        c.auto_create_topics = true;
        c.limits.max_header_bytes = 4096;
        c.limits.max_event_bytes = 1024;
        c.limits.max_message_bytes = 8192;
    })
    .await;
    let mut c = e.c.clone();
    let mut big = tonic::Request::new(pb::ListTopicsRequest {});
    big.metadata_mut()
        .insert("x-padding", "p".repeat(8000).parse().unwrap());
    let r = c.list_topics(big).await;
    assert!(
        r.is_err(),
        "metadata past limits.max_header_bytes was accepted"
    );
    let msg = pb::PublishRequest {
        sequence: 1,
        topic: "orders".into(),
        events: (0..10)
            .map(|i| event(&format!("e{i}"), "k", &"x".repeat(900)))
            .collect(),
    };
    let s = c.publish_unary(msg).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("limits.max_message_bytes"), "{s:?}");
    // Other clients, and this one, are still served.
    let mut other = e.b.client().await;
    common::publish(&mut other, "orders", vec![event("ok", "k", "x")]).await;
    common::publish(&mut c, "orders", vec![event("ok-2", "k", "x")]).await;
    e.b.stop().await;
}

/// Reads from `s` until the peer closes the connection (EOF or a reset),
/// within `bound`; whatever it sends is discarded. True if it closed.
async fn closed_within(s: &mut tokio::net::TcpStream, bound: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_tls_handshake_is_dropped() {
    let pki = secure::Pki::new();
    let b = secure::SecureBroker::start(&pki, |c| {
        c.limits.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a connection that never spoke TLS was kept past limits.tls_handshake_timeout"
    );
    // Everyone else is served.
    let mut admin = b.client(&pki, "admin").await;
    admin.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    b.stop().await;
}

#[tokio::test]
async fn a_connection_that_does_not_answer_keepalive_pings_is_closed() {
    use tokio::io::AsyncWriteExt;
    let e = common::env(|c| {
        c.delivery.heartbeat_interval = Duration::from_millis(200);
        c.delivery.idle_timeout = Duration::from_secs(60);
        c.limits.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    // A client that speaks HTTP/2 (preface, empty SETTINGS, and the ack of
    // the server's SETTINGS) and then never answers a PING.
    let mut mute = tokio::net::TcpStream::connect(e.b.addr).await.unwrap();
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    mute.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    mute.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
    assert!(
        closed_within(&mut mute, Duration::from_secs(20)).await,
        "a connection that ignores keepalive pings was kept past limits.keepalive_timeout"
    );
    let mut c = e.c.clone();
    c.list_topics(pb::ListTopicsRequest {}).await.unwrap();
    e.b.stop().await;
}
