//! The certificates do what matters: a real mutual-TLS handshake over
//! 127.0.0.1 with rustls (ring, as tonic uses) succeeds with issued
//! certificates and fails for expired, self-signed, foreign-CA and
//! wrong-name ones.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use mesh_certs::{Ca, Leaf, LeafSpec, self_signed_leaf};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bounds each side of a handshake so a broken test fails instead of hanging.
const BOUND: Duration = Duration::from_secs(20);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM")
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM")
}

fn roots(ca_pem: &str) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in chain(ca_pem) {
        roots.add(cert).expect("CA certificate accepted as a root");
    }
    Arc::new(roots)
}

/// What each side saw.
struct Outcome {
    /// The server: Ok(common name of the client certificate) or the error.
    server: Result<String, std::io::Error>,
    /// The client: Ok after reading the server's reply, or the error.
    client: Result<(), std::io::Error>,
}

/// One mutual-TLS exchange: the server trusts `server_trust` for clients,
/// the client trusts `client_trust` for the server and dials `name`.
async fn exchange(
    server_trust: &str,
    server: &Leaf,
    client_trust: &str,
    client: &Leaf,
    name: ServerName<'static>,
) -> Outcome {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(server_trust), provider())
        .build()
        .expect("client verifier");
    let server_config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(&server.cert_pem), key(&server.key_pem))
        .expect("server certificate and key");
    let client_config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots(client_trust))
        .with_client_auth_cert(chain(&client.cert_pem), key(&client.key_pem))
        .expect("client certificate and key");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| common_name(c.as_ref()))
            .unwrap_or_default();
        tls.write_all(b"ok").await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(peer)
    });
    let connector = TlsConnector::from(Arc::new(client_config));
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        // TLS 1.3 clients finish before the server has judged their
        // certificate: reading the reply is what proves it was accepted.
        let mut reply = [0u8; 2];
        tls.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"ok");
        Ok::<_, std::io::Error>(())
    };
    let client = tokio::time::timeout(BOUND, client_side)
        .await
        .expect("client side finished within the bound");
    let server = tokio::time::timeout(BOUND, server_side)
        .await
        .expect("server side finished within the bound")
        .expect("server task did not panic");
    Outcome { server, client }
}

fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("peer certificate parses");
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The certificate error inside an I/O error from tokio-rustls, if any.
fn cert_error(result: &Result<impl Sized, std::io::Error>) -> Option<CertificateError> {
    let error = result.as_ref().err()?;
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(e) => Some(e.clone()),
        _ => None,
    }
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("server name")
}

#[tokio::test]
async fn issued_certificates_complete_mutual_tls_and_the_server_sees_the_principal() {
    let ca = Ca::new("test CA").unwrap();
    let broker = ca.issue(&LeafSpec::new("broker")).unwrap();
    let billing = ca.issue(&LeafSpec::new("billing")).unwrap();
    for name in [
        localhost(),
        ServerName::try_from("broker").unwrap(),
        ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    ] {
        let seen = name.to_str().into_owned();
        let out = exchange(ca.cert_pem(), &broker, ca.cert_pem(), &billing, name).await;
        assert_eq!(out.server.unwrap(), "billing", "dialling {seen}");
        out.client.unwrap();
    }
}

#[tokio::test]
async fn an_expired_client_certificate_is_rejected_by_the_server() {
    let ca = Ca::new("test CA").unwrap();
    let broker = ca.issue(&LeafSpec::new("broker")).unwrap();
    let expired = ca.issue(&LeafSpec::new("billing").expired()).unwrap();
    let out = exchange(ca.cert_pem(), &broker, ca.cert_pem(), &expired, localhost()).await;
    let error = cert_error(&out.server);
    assert!(
        matches!(
            error,
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. })
        ),
        "server saw {:?}",
        out.server.err()
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn an_expired_server_certificate_is_rejected_by_the_client() {
    let ca = Ca::new("test CA").unwrap();
    let expired = ca.issue(&LeafSpec::new("broker").expired()).unwrap();
    let billing = ca.issue(&LeafSpec::new("billing")).unwrap();
    let out = exchange(
        ca.cert_pem(),
        &expired,
        ca.cert_pem(),
        &billing,
        localhost(),
    )
    .await;
    assert!(
        matches!(
            cert_error(&out.client),
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. })
        ),
        "client saw {:?}",
        out.client.err()
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn a_self_signed_client_certificate_is_rejected_by_the_server() {
    let ca = Ca::new("test CA").unwrap();
    let broker = ca.issue(&LeafSpec::new("broker")).unwrap();
    let intruder = self_signed_leaf("billing").unwrap();
    let out = exchange(
        ca.cert_pem(),
        &broker,
        ca.cert_pem(),
        &intruder,
        localhost(),
    )
    .await;
    assert_eq!(
        cert_error(&out.server),
        Some(CertificateError::UnknownIssuer),
        "server saw {:?}",
        out.server.err()
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_rejected_by_the_server() {
    let ca = Ca::new("test CA").unwrap();
    let other = Ca::new("test CA").unwrap();
    let broker = ca.issue(&LeafSpec::new("broker")).unwrap();
    let foreign = other.issue(&LeafSpec::new("billing")).unwrap();
    let out = exchange(ca.cert_pem(), &broker, ca.cert_pem(), &foreign, localhost()).await;
    assert!(
        matches!(
            cert_error(&out.server),
            Some(CertificateError::UnknownIssuer | CertificateError::BadSignature)
        ),
        "server saw {:?}",
        out.server.err()
    );
}

#[tokio::test]
async fn a_server_certificate_for_another_name_is_rejected_by_the_client() {
    let ca = Ca::new("test CA").unwrap();
    let broker = ca.issue(&LeafSpec::new("broker")).unwrap();
    let billing = ca.issue(&LeafSpec::new("billing")).unwrap();
    let orders = ServerName::try_from("orders").unwrap();
    let out = exchange(ca.cert_pem(), &broker, ca.cert_pem(), &billing, orders).await;
    assert!(
        matches!(
            cert_error(&out.client),
            Some(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "client saw {:?}",
        out.client.err()
    );
}

#[tokio::test]
async fn a_ca_reloaded_from_pem_issues_certificates_that_chain_to_the_original() {
    let original = Ca::new("test CA").unwrap();
    let reloaded = Ca::from_pem(original.cert_pem(), original.key_pem()).unwrap();
    let broker = original.issue(&LeafSpec::new("broker")).unwrap();
    let billing = reloaded.issue(&LeafSpec::new("billing")).unwrap();
    let out = exchange(
        original.cert_pem(),
        &broker,
        reloaded.cert_pem(),
        &billing,
        localhost(),
    )
    .await;
    assert_eq!(out.server.unwrap(), "billing");
    out.client.unwrap();
}

#[tokio::test]
async fn a_leaf_renewed_for_its_key_still_completes_mutual_tls() {
    let ca = Ca::new("test CA").unwrap();
    let broker = ca.issue(&LeafSpec::new("broker")).unwrap();
    let first = ca.issue(&LeafSpec::new("billing")).unwrap();
    let renewed = ca
        .issue_for_key(&LeafSpec::new("billing").valid_for_days(1), &first.key_pem)
        .unwrap();
    assert_eq!(renewed.key_pem, first.key_pem);
    assert_ne!(renewed.cert_pem, first.cert_pem);
    let out = exchange(ca.cert_pem(), &broker, ca.cert_pem(), &renewed, localhost()).await;
    assert_eq!(out.server.unwrap(), "billing");
}
