//! TLS towards NATS (`[jetstream.tls]`): a real nats-server that requires
//! TLS and verifies client certificates (`verify: true`), with real
//! certificates from `mesh-certs`. A broker with the CA and its client
//! certificate serves events through it; one without its certificate, one
//! trusting another CA, and one in plaintext do not start, and say why.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use mesh_broker::BrokerConfig;

const WAIT: Duration = Duration::from_secs(20);

/// A standalone JetStream nats-server on 127.0.0.1 that only speaks TLS
/// and wants a client certificate signed by the PKI's CA.
struct TlsNats {
    child: Child,
    port: u16,
}

impl TlsNats {
    async fn start(pki: &Path, dir: &Path) -> TlsNats {
        let port = unused_port();
        let store = dir.join("store");
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 tls {{\n  cert_file: \"{pki}/nats.crt\"\n  key_file: \"{pki}/nats.key\"\n  ca_file: \"{pki}/ca.crt\"\n  verify: true\n  timeout: 2\n}}\n",
                store = store.display(),
                pki = pki.display(),
            ),
        )
        .unwrap();
        let child = Command::new(mesh_test_support::nats::nats_server())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        // Listening: a TCP connection is accepted (the TLS handshake is
        // the broker's to do).
        let up = mesh_test_support::eventually(WAIT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "nats-server did not listen on {port}");
        TlsNats { child, port }
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dev PKI with a certificate for the NATS server (`nats`, also valid
/// for localhost and 127.0.0.1) and the broker's client certificate.
fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = mesh_certs::Options {
        names: vec!["nats".into(), "broker".into()],
        ..Default::default()
    };
    mesh_certs::write_dev_pki(dir.path(), &o).unwrap();
    dir
}

/// A broker config on `nats` with TLS set by `tls`, a short start timeout.
fn on_nats(c: &mut BrokerConfig, nats: &TlsNats, tls: impl FnOnce(&mut BrokerConfig)) {
    jetstream_on(c, &nats.url(), 1);
    c.jetstream.connect_timeout = Duration::from_secs(3);
    tls(c);
}

/// Runs a broker with `cfg` and returns how its start failed.
async fn start_error(cfg: BrokerConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        mesh_broker::run(cfg, listener, std::future::pending::<()>()),
    )
    .await
    .expect("the start ends within its connect timeout");
    r.expect_err("the broker started").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_speaks_mutual_tls_to_nats_and_refuses_to_start_without_it() {
    let pki = pki();
    let p = pki.path();
    let nats_dir = tempfile::tempdir().unwrap();
    let nats = TlsNats::start(p, nats_dir.path()).await;

    // With the CA and the broker's certificate: events go through.
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), |c| {
        on_nats(c, &nats, |c| {
            c.jetstream.tls.ca = Some(p.join("ca.crt"));
            c.jetstream.tls.cert = Some(p.join("broker.crt"));
            c.jetstream.tls.key = Some(p.join("broker.key"));
        })
    })
    .await;
    let mut c = b.client().await;
    create_topic(&mut c, "orders").await;
    let events = (0..3)
        .map(|i| event(&format!("o{i}"), &format!("order-{i}"), "x"))
        .collect();
    publish(&mut c, "orders", events).await;
    let mut sub = Sub::open(&mut c, "orders", "billing", 10).await;
    let got = sub.take(3, WAIT).await;
    assert_eq!(got.iter().map(offset).collect::<Vec<_>>(), [0, 1, 2]);
    sub.ack(vec![0, 1, 2]).await;
    wait_committed(&c, "orders", "billing", 3).await;
    drop(sub);
    b.stop().await;

    // Without a client certificate the server ends the handshake.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    on_nats(&mut cfg, &nats, |c| {
        c.jetstream.tls.ca = Some(p.join("ca.crt"))
    });
    let e = start_error(cfg).await;
    assert!(
        e.contains("cannot reach NATS at tls://127.0.0.1") && e.contains("CertificateRequired"),
        "{e}"
    );

    // Trusting another CA, the broker does not accept the server.
    let other = mesh_certs::Ca::new("another CA").unwrap();
    std::fs::write(p.join("other-ca.crt"), other.cert_pem()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    on_nats(&mut cfg, &nats, |c| {
        c.jetstream.tls.ca = Some(p.join("other-ca.crt"));
        c.jetstream.tls.cert = Some(p.join("broker.crt"));
        c.jetstream.tls.key = Some(p.join("broker.key"));
    });
    let e = start_error(cfg).await;
    assert!(
        e.contains("cannot reach NATS") && e.contains("UnknownIssuer"),
        "{e}"
    );

    // In plaintext (no `[jetstream.tls]`) it does not start either: the
    // server says it requires TLS, and the client's handshake, with no CA
    // of the mesh, rejects the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    on_nats(&mut cfg, &nats, |_| {});
    cfg.jetstream.servers = format!("nats://127.0.0.1:{}", nats.port);
    let e = start_error(cfg).await;
    assert!(e.contains("cannot reach NATS"), "{e}");
}
