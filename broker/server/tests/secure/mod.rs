//! Harness for the security tests: a development PKI made with
//! `mesh-certs` (real certificates), a broker in this process serving TLS
//! with those certificates, and clients that connect as a given principal.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use mesh_broker::{BrokerConfig, auth::AuthMode};
use mesh_proto::broker::v1::broker_client::BrokerClient;
use mesh_runtime::tls::TlsConfig;
use tonic::transport::Channel;

pub type Client = BrokerClient<Channel>;

/// The mesh's development PKI in a temporary directory: `ca.crt` and a
/// certificate per service and for `admin`, as `mesh-certs dev` writes it.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        mesh_certs::write_dev_pki(dir.path(), &mesh_certs::Options::default()).unwrap();
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The `[tls]` settings of principal `name` (its certificate and key,
    /// and the mesh CA).
    pub fn tls(&self, name: &str) -> TlsConfig {
        TlsConfig {
            ca: Some(self.path("ca.crt")),
            cert: Some(self.path(&format!("{name}.crt"))),
            key: Some(self.path(&format!("{name}.key"))),
            client_auth: None,
        }
    }

    /// Trusting the mesh CA, without a client certificate.
    pub fn ca_only(&self) -> TlsConfig {
        TlsConfig {
            ca: Some(self.path("ca.crt")),
            ..TlsConfig::default()
        }
    }

    /// Writes `pem` files for a leaf (`name.crt`, `name.key`) and returns
    /// `[tls]` settings that present it, trusting the mesh CA.
    pub fn with_leaf(&self, name: &str, leaf: &mesh_certs::Leaf) -> TlsConfig {
        std::fs::write(self.path(&format!("{name}.crt")), &leaf.cert_pem).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), &leaf.key_pem).unwrap();
        self.tls(name)
    }

    /// The broker's `[tls]` section with the mesh CA for client
    /// certificates.
    pub fn broker_tls(&self) -> TlsConfig {
        self.tls("broker")
    }
}

/// The demo's access-control list (the one compose runs with).
pub fn demo_acl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mesh/acl.toml")
}

/// A broker in this process, serving TLS.
pub struct SecureBroker {
    pub addr: SocketAddr,
    /// The running broker (`common`'s in-process harness).
    inner: crate::common::TestBroker,
    /// Dropped last: the broker must stop before its directory goes away.
    _data: tempfile::TempDir,
}

/// Test settings: mTLS with the PKI's broker certificate, the demo ACL,
/// the demo's topics; then `tweak`.
pub fn mtls_config(pki: &Pki, data: &Path) -> BrokerConfig {
    let mut c = BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        metrics_listen: None,
        data_dir: data.to_path_buf(),
        auth: Some(AuthMode::Mtls),
        tls: pki.broker_tls(),
        acl_file: Some(demo_acl()),
        ..BrokerConfig::default()
    };
    c.delivery.ack_deadline = Duration::from_secs(60);
    c.delivery.commit_interval = Duration::from_millis(20);
    c.topics = ["orders", "payments", "shipments"]
        .into_iter()
        .map(|t| mesh_broker::config::TopicSpec {
            name: t.into(),
            retention: None,
            retention_bytes: None,
            max_delivery_attempts: None,
        })
        .collect();
    c
}

impl SecureBroker {
    /// Starts a broker with `mtls_config` changed by `tweak`, and waits
    /// until its health check answers over TLS (as `admin`).
    pub async fn start(pki: &Pki, tweak: impl FnOnce(&mut BrokerConfig)) -> SecureBroker {
        let data = tempfile::tempdir().unwrap();
        let mut cfg = mtls_config(pki, data.path());
        tweak(&mut cfg);
        let inner = crate::common::TestBroker::spawn(cfg).await;
        let addr = inner.addr;
        let admin = pki.tls("admin");
        let up = mesh_test_support::eventually(Duration::from_secs(30), || {
            let admin = admin.clone();
            async move { mesh_runtime::grpc::healthcheck(&format!("https://{addr}"), &admin).await }
        })
        .await;
        assert!(
            up,
            "broker did not answer its health check over TLS within 30 s"
        );
        SecureBroker {
            addr,
            inner,
            _data: data,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A client presenting `tls` (connect errors are returned: a TLS
    /// failure may show there or at the first call).
    pub async fn connect(&self, tls: &TlsConfig) -> Result<Client, String> {
        let ep =
            mesh_runtime::tls::endpoint("broker", &self.url(), tls).map_err(|e| e.to_string())?;
        let ch = ep
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(BrokerClient::new(ch))
    }

    /// A client as principal `name` of the PKI.
    pub async fn client(&self, pki: &Pki, name: &str) -> Client {
        self.connect(&pki.tls(name)).await.unwrap()
    }

    pub async fn stop(self) {
        self.inner.stop().await;
    }
}
