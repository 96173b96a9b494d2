//! What the certificates say, read back with x509-parser.

use std::net::{IpAddr, Ipv4Addr};

use mesh_certs::{Ca, CertsError, LeafSpec, self_signed_leaf};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::{ASN1Time, X509Certificate};

fn with_cert<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
    assert_eq!(pem.label, "CERTIFICATE");
    let cert = pem.parse_x509().expect("X.509");
    f(&cert)
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("a common name")
        .to_owned()
}

fn sans(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let ext = cert
        .subject_alternative_name()
        .expect("SAN extension parses")
        .expect("SAN extension present");
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => {
                let octets: [u8; 4] = (*b).try_into().expect("IPv4 address");
                ips.push(IpAddr::from(octets));
            }
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    (dns, ips)
}

#[test]
fn a_leaf_names_its_principal_and_default_sans_and_serves_both_ends() {
    let ca = Ca::new("test CA").unwrap();
    let leaf = ca.issue(&LeafSpec::new("billing")).unwrap();
    with_cert(&leaf.cert_pem, |cert| {
        assert_eq!(common_name(cert), "billing");
        let (dns, ips) = sans(cert);
        assert_eq!(dns, ["billing", "localhost"]);
        assert_eq!(ips, [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let eku = cert
            .extended_key_usage()
            .unwrap()
            .expect("EKU present")
            .value;
        assert!(eku.server_auth && eku.client_auth);
        let bc = cert
            .basic_constraints()
            .unwrap()
            .expect("basic constraints");
        assert!(!bc.value.ca);
        assert!(cert.validity().is_valid());
        assert_eq!(common_name_of_issuer(cert), "test CA");
    });
    assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
}

fn common_name_of_issuer(cert: &X509Certificate<'_>) -> String {
    cert.issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn extra_sans_are_added_to_the_defaults() {
    let ca = Ca::new("test CA").unwrap();
    let spec = LeafSpec::new("broker")
        .dns("broker.mesh.internal")
        .ip("10.0.0.7".parse().unwrap());
    let leaf = ca.issue(&spec).unwrap();
    with_cert(&leaf.cert_pem, |cert| {
        let (dns, ips) = sans(cert);
        assert_eq!(dns, ["broker", "localhost", "broker.mesh.internal"]);
        assert_eq!(ips.len(), 2);
    });
}

#[test]
fn an_expired_leaf_ended_before_now() {
    let ca = Ca::new("test CA").unwrap();
    let leaf = ca.issue(&LeafSpec::new("billing").expired()).unwrap();
    with_cert(&leaf.cert_pem, |cert| {
        assert!(!cert.validity().is_valid());
        assert!(cert.validity().not_after < ASN1Time::now());
    });
}

#[test]
fn the_leaf_is_signed_by_the_ca_and_the_ca_is_a_ca() {
    let ca = Ca::new("test CA").unwrap();
    let leaf = ca.issue(&LeafSpec::new("orders")).unwrap();
    with_cert(ca.cert_pem(), |ca_cert| {
        assert_eq!(common_name(ca_cert), "test CA");
        let bc = ca_cert
            .basic_constraints()
            .unwrap()
            .expect("basic constraints");
        assert!(bc.value.ca);
        let ku = ca_cert.key_usage().unwrap().expect("key usage").value;
        assert!(ku.key_cert_sign());
        with_cert(&leaf.cert_pem, |leaf_cert| {
            leaf_cert
                .verify_signature(Some(ca_cert.public_key()))
                .expect("leaf signed by the CA");
        });
    });
}

#[test]
fn a_self_signed_leaf_is_not_signed_by_any_ca() {
    let ca = Ca::new("test CA").unwrap();
    let leaf = self_signed_leaf("billing").unwrap();
    with_cert(&leaf.cert_pem, |cert| {
        assert_eq!(common_name(cert), "billing");
        assert_eq!(common_name_of_issuer(cert), "billing");
        cert.verify_signature(None).expect("signed by its own key");
        with_cert(ca.cert_pem(), |ca_cert| {
            assert!(cert.verify_signature(Some(ca_cert.public_key())).is_err());
        });
    });
}

#[test]
fn a_ca_does_not_load_with_another_cas_key() {
    let a = Ca::new("a").unwrap();
    let b = Ca::new("b").unwrap();
    let error = Ca::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
    assert!(matches!(error, CertsError::KeyMismatch { .. }), "{error}");
    let error = Ca::from_pem("not a pem", a.key_pem()).unwrap_err();
    assert!(matches!(error, CertsError::Parse { .. }), "{error}");
}

#[test]
fn serials_differ_between_certificates() {
    let ca = Ca::new("test CA").unwrap();
    let one = ca.issue(&LeafSpec::new("billing")).unwrap();
    let two = ca.issue(&LeafSpec::new("billing")).unwrap();
    let serial = |pem: &str| with_cert(pem, |c| c.raw_serial().to_vec());
    assert_ne!(serial(&one.cert_pem), serial(&two.cert_pem));
}
