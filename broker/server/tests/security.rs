//! TLS, authentication and the access-control list, end to end: a real
//! broker serving TLS with real certificates (made by `mesh-certs`),
//! clients connecting as the demo's principals over real gRPC.

mod common;
mod secure;

use std::time::Duration;

use mesh_broker::auth::AuthMode;
use mesh_proto::broker::v1::{self as pb, subscribe_request::Request as SubReq};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use common::{event, offset};
use secure::{Client, Pki, SecureBroker};

/// Whether a call as `tls` fails, at connect or at the first call; and
/// not with OK.
async fn refused(b: &SecureBroker, tls: &mesh_runtime::tls::TlsConfig) -> bool {
    match b.connect(tls).await {
        Err(_) => true,
        Ok(mut c) => c.list_topics(pb::ListTopicsRequest {}).await.is_err(),
    }
}

#[tokio::test]
async fn tls_refuses_plaintext_a_wrong_ca_and_bad_client_certificates() {
    let pki = Pki::new();
    let b = SecureBroker::start(&pki, |_| {}).await;

    // A plaintext client gets no answer from a TLS server.
    let mut plain = common::connect(b.addr).await.expect("TCP connects");
    let e = plain
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);

    // A client that trusts another CA does not accept the broker.
    let other = mesh_certs::Ca::new("another CA").unwrap();
    std::fs::write(pki.path("other-ca.crt"), other.cert_pem()).unwrap();
    let mut wrong_ca = pki.tls("admin");
    wrong_ca.ca = Some(pki.path("other-ca.crt"));
    assert!(
        refused(&b, &wrong_ca).await,
        "a client trusting another CA connected"
    );

    // Client certificates the broker must not accept: signed by an
    // unknown CA, expired, self-signed.
    let unknown = pki.with_leaf(
        "unknown",
        &other.issue(&mesh_certs::LeafSpec::new("admin")).unwrap(),
    );
    assert!(
        refused(&b, &unknown).await,
        "a certificate from an unknown CA was accepted"
    );
    let ca = mesh_certs::Ca::from_pem(
        &std::fs::read_to_string(pki.path("ca.crt")).unwrap(),
        &std::fs::read_to_string(pki.path("ca.key")).unwrap(),
    )
    .unwrap();
    let expired = pki.with_leaf(
        "expired",
        &ca.issue(&mesh_certs::LeafSpec::new("admin").expired())
            .unwrap(),
    );
    assert!(
        refused(&b, &expired).await,
        "an expired certificate was accepted"
    );
    let selfsigned = pki.with_leaf(
        "selfsigned",
        &mesh_certs::self_signed_leaf("admin").unwrap(),
    );
    assert!(
        refused(&b, &selfsigned).await,
        "a self-signed certificate was accepted"
    );

    // TLS without a client certificate: UNAUTHENTICATED, while health
    // checks stay open.
    let mut anon = b.connect(&pki.ca_only()).await.unwrap();
    let e = anon
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("certificate"), "{e:?}");
    assert!(mesh_runtime::grpc::healthcheck(&b.url(), &pki.ca_only()).await);

    // And the broker still serves the right certificate afterwards.
    let mut admin = b.client(&pki, "admin").await;
    let topics = admin
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topics.topics.len(), 3);
    b.stop().await;
}

/// A snapshot of what the log holds, as the admin sees it: every topic's
/// head and every group's committed position.
async fn snapshot(admin: &mut Client) -> Vec<(String, u64, Vec<(String, u64)>)> {
    let mut out = Vec::new();
    for t in admin
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
    {
        let groups = admin
            .list_groups(pb::ListGroupsRequest {
                topic: t.name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .groups
            .into_iter()
            .map(|g| (g.group, g.committed_offset))
            .collect();
        out.push((t.name, t.head_offset, groups));
    }
    out.sort();
    out
}

fn denied(r: Result<impl std::fmt::Debug, tonic::Status>, what: &str) -> tonic::Status {
    let e = r.expect_err(what);
    assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    assert!(e.message().contains("\"billing\""), "{what}: {e:?}");
    e
}

/// A tail (no group) of `topic`.
fn tail_req(topic: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        request: Some(SubReq::Open(pb::Open {
            topic: topic.into(),
            auto_ack: true,
            ..Default::default()
        })),
    }
}

async fn open(
    c: &mut Client,
    topic: &str,
    group: &str,
) -> Result<tonic::Streaming<pb::SubscribeResponse>, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let req = if group.is_empty() {
        tail_req(topic)
    } else {
        common::open_req(topic, group, 10)
    };
    tx.send(req).await.unwrap();
    // The sender stays alive with the stream (dropping it would end it).
    let r = c
        .subscribe(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    std::mem::forget(tx);
    r
}

#[tokio::test]
async fn billing_may_do_what_the_demo_policy_grants_and_nothing_else() {
    let pki = Pki::new();
    let b = SecureBroker::start(&pki, |_| {}).await;
    let mut admin = b.client(&pki, "admin").await;
    common::publish(&mut admin, "orders", vec![event("o-1", "k", "order")]).await;
    common::publish(
        &mut admin,
        "payments",
        vec![event("p-1", "k", "paid"), event("p-2", "k", "paid")],
    )
    .await;
    // Shipping's group on payments, with a committed position to protect.
    let mut shipping = b.client(&pki, "shipping").await;
    let mut s = common::Sub::open(&mut shipping, "payments", "shipping", 10).await;
    let d = s.take(2, Duration::from_secs(10)).await;
    s.ack(vec![offset(&d[0])]).await;
    common::wait_committed(&admin, "payments", "shipping", 1).await;
    let before = snapshot(&mut admin).await;

    let mut billing = b.client(&pki, "billing").await;
    let e = denied(
        billing
            .publish_unary(pb::PublishRequest {
                sequence: 1,
                topic: "orders".into(),
                events: vec![event("forged", "k", "PaymentAuthorized")],
            })
            .await,
        "publish to orders",
    );
    assert!(
        e.message().contains("publish") && e.message().contains("\"orders\""),
        "{e:?}"
    );
    // On the stream the denial is the request's answer, and the stream
    // goes on.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::PublishRequest {
        sequence: 7,
        topic: "orders".into(),
        events: vec![event("forged-2", "k", "x")],
    })
    .await
    .unwrap();
    let mut answers = billing
        .publish(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let a = answers.message().await.unwrap().unwrap();
    let err = a.error.expect("an in-stream error");
    assert_eq!(err.code, pb::Code::PermissionDenied as i32, "{err:?}");
    assert_eq!(a.sequence, 7);
    drop(tx);

    let e = denied(
        open(&mut billing, "orders", "shipping").await,
        "subscribe as shipping",
    );
    assert!(e.message().contains("as group \"shipping\""), "{e:?}");
    denied(
        open(&mut billing, "orders", "").await,
        "read orders without a group",
    );
    let seek = pb::SeekGroupRequest {
        topic: "payments".into(),
        group: "shipping".into(),
        position: Some(pb::StartPosition {
            position: Some(pb::start_position::Position::Earliest(pb::Empty {})),
        }),
        dry_run: false,
    };
    denied(
        billing.seek_group(seek.clone()).await,
        "seek shipping's group",
    );
    denied(
        billing
            .seek_group(pb::SeekGroupRequest {
                dry_run: true,
                ..seek
            })
            .await,
        "dry-run seek",
    );
    denied(
        billing
            .delete_group(pb::DeleteGroupRequest {
                topic: "payments".into(),
                group: "shipping".into(),
            })
            .await,
        "delete shipping's group",
    );
    denied(
        billing
            .purge_dead_letters(pb::PurgeDeadLettersRequest {
                topic: "payments".into(),
                group: "shipping".into(),
            })
            .await,
        "purge another group's DLQ",
    );
    denied(
        billing
            .redrive_dead_letters(pb::RedriveDeadLettersRequest {
                topic: "orders".into(),
                group: "billing".into(),
                limit: 0,
            })
            .await,
        "redrive its own DLQ (not granted either)",
    );
    denied(
        billing
            .create_topic(pb::CreateTopicRequest {
                name: "mine".into(),
                ..Default::default()
            })
            .await,
        "create a topic",
    );
    denied(
        billing
            .delete_topic(pb::DeleteTopicRequest {
                name: "orders".into(),
            })
            .await,
        "delete a topic",
    );
    denied(
        billing
            .describe_group(pb::DescribeGroupRequest {
                topic: "payments".into(),
                group: "shipping".into(),
            })
            .await,
        "describe shipping's group",
    );
    // It sees only the topics it holds grants on.
    let mut seen: Vec<_> = billing
        .list_topics(pb::ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    seen.sort();
    assert_eq!(seen, ["orders", "payments"]);

    // Nothing was written, moved or removed.
    assert_eq!(snapshot(&mut admin).await, before);

    // What it is granted works: consume orders as billing, read payments
    // from the start without a group, publish a payment.
    let mut own = common::Sub::open(&mut billing, "orders", "billing", 10).await;
    assert_eq!(
        common::id(&own.take(1, Duration::from_secs(10)).await[0]),
        "o-1"
    );
    let mut tail = common::Sub::open_with(&mut billing, tail_req("payments")).await;
    assert_eq!(tail.take(2, Duration::from_secs(10)).await.len(), 2);
    common::publish(&mut billing, "payments", vec![event("p-3", "k", "paid")]).await;
    b.stop().await;
}

#[tokio::test]
async fn tokens_from_files_authenticate_and_bad_ones_get_unauthenticated() {
    let pki = Pki::new();
    let token = mesh_certs::Token::generate().unwrap();
    std::fs::write(pki.path("tokens"), format!("{}\n", token.line("billing"))).unwrap();
    std::fs::write(pki.path("billing.token"), token.as_str()).unwrap();
    let b = SecureBroker::start(&pki, |c| {
        c.auth = Some(AuthMode::Token);
        c.token_file = Some(pki.path("tokens"));
    })
    .await;
    let mut c = b.connect(&pki.ca_only()).await.unwrap();
    let call = |t: Option<&str>| {
        let mut r = tonic::Request::new(pb::PublishRequest {
            sequence: 1,
            topic: "payments".into(),
            events: vec![event("t-1", "k", "paid")],
        });
        if let Some(t) = t {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    let e = c.publish_unary(call(None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let wrong = "0123456789abcdef-not-the-token";
    let e = c.publish_unary(call(Some(wrong))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        !e.message().contains(wrong),
        "the status repeats the token: {e:?}"
    );
    let secret = mesh_runtime::tls::read_token("token_file", &pki.path("billing.token")).unwrap();
    let ok = c
        .publish_unary(call(Some(secret.expose())))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.error.is_none(), "{ok:?}");
    // The token's principal is billing, with billing's grants.
    let mut r = call(Some(secret.expose()));
    r.get_mut().topic = "orders".into();
    let e = c.publish_unary(r).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(!e.message().contains(secret.expose()), "{e:?}");
    b.stop().await;
}

#[tokio::test]
async fn reflection_can_be_turned_off_and_health_stays_open() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let pki = Pki::new();
    for on in [true, false] {
        let b = SecureBroker::start(&pki, |c| c.reflection = on).await;
        let ch = mesh_runtime::tls::endpoint("broker", &b.url(), &pki.ca_only())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let r = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::once(req))
            .await;
        match r {
            Ok(mut s) if on => assert!(s.get_mut().message().await.unwrap().is_some()),
            Err(e) if !on => assert_eq!(e.code(), Code::Unimplemented, "{e:?}"),
            other => panic!("reflection = {on}: {:?}", other.map(|_| ())),
        }
        assert!(mesh_runtime::grpc::healthcheck(&b.url(), &pki.ca_only()).await);
        b.stop().await;
    }
}

#[tokio::test]
async fn the_broker_refuses_to_start_without_authentication_or_with_tokens_in_plaintext() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    for (tweak, want) in [
        (
            Box::new(|c: &mut mesh_broker::BrokerConfig| c.auth = None) as Box<dyn Fn(&mut _)>,
            "no authentication is configured",
        ),
        (
            Box::new(|c: &mut mesh_broker::BrokerConfig| {
                c.auth = Some(AuthMode::Token);
                c.tls = Default::default();
                c.token_file = Some("tokens".into());
            }),
            "plaintext",
        ),
        (
            Box::new(|c: &mut mesh_broker::BrokerConfig| c.tls = Default::default()),
            "\"mtls\" needs [tls]",
        ),
    ] {
        let mut cfg = secure::mtls_config(&pki, data.path());
        tweak(&mut cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = mesh_broker::run(cfg, listener, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`auth`") && e.contains(want), "{e}");
    }
}

#[tokio::test]
async fn no_token_key_or_payload_reaches_the_log_even_at_debug_level() {
    let pki = Pki::new();
    let token = mesh_certs::Token::generate().unwrap();
    std::fs::write(pki.path("tokens"), format!("{}\n", token.line("billing"))).unwrap();
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("broker.log");
    let p = |f: &str| pki.path(f).display().to_string();
    let (ca, cert, key, tokens, acl) = (
        p("ca.crt"),
        p("broker.crt"),
        p("broker.key"),
        p("tokens"),
        secure::demo_acl().display().to_string(),
    );
    std::fs::create_dir(data.path().join("data")).unwrap();
    let maddr = std::net::SocketAddr::from(([127, 0, 0, 1], common::unused_port()));
    let metrics = maddr.to_string();
    let b = common::BrokerProcess::spawn_logging_to(
        &data.path().join("data"),
        &[
            ("BROKER__AUTH", "token"),
            ("BROKER__TLS__CA", &ca),
            ("BROKER__TLS__CERT", &cert),
            ("BROKER__TLS__KEY", &key),
            ("BROKER__TLS__CLIENT_AUTH", "none"),
            ("BROKER__TOKEN_FILE", &tokens),
            ("BROKER__ACL_FILE", &acl),
            ("BROKER__AUTO_CREATE_TOPICS", "true"),
            ("BROKER__METRICS_LISTEN", &metrics),
            ("RUST_LOG", "debug"),
        ],
        &log,
    );
    let ch = mesh_runtime::tls::endpoint("broker", &format!("https://{}", b.addr), &pki.ca_only())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = pb::broker_client::BrokerClient::new(ch);
    let wrong = mesh_certs::Token::generate().unwrap();
    // A payload the log must not show either.
    let payload = format!("card-{}", mesh_certs::Token::generate().unwrap().as_str());
    for t in [token.as_str(), wrong.as_str()] {
        for topic in ["payments", "orders"] {
            let mut r = tonic::Request::new(pb::PublishRequest {
                sequence: 1,
                topic: topic.into(),
                events: vec![event("secret-test", "k", &payload)],
            });
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
            let _ = c.publish_unary(r).await;
        }
    }
    // The valid token's publish to orders was denied and counted; the
    // wrong token's calls never got that far.
    let samples = mesh_test_support::prometheus::scrape(maddr).unwrap();
    let denied = mesh_test_support::prometheus::value(
        &samples,
        "mesh_broker_requests_denied_total",
        &[("verb", "publish")],
    );
    assert_eq!(denied, 1.0);
    b.sigterm();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&payload), "an event payload reached the log");
    assert!(
        text.contains("DEBUG") || text.contains("debug"),
        "the log is at debug level: {text}"
    );
    for secret in [token.as_str(), wrong.as_str()] {
        assert!(!text.contains(secret), "a token reached the log");
    }
    let key_pem = std::fs::read_to_string(pki.path("broker.key")).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "the private key reached the log");
}
