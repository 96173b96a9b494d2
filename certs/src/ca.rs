//! The certificate authority and the leaf certificates it issues.
//!
//! Every key is ECDSA P-256 and every signature is made with `ring`, the
//! provider tonic's `tls-ring` verifies with. Every leaf carries both the
//! serverAuth and clientAuth extended key usages, because every mesh process
//! is a gRPC server and a gRPC client at once.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::{CertsError, random_bytes};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// How far back `not_before` is set, so a peer whose clock runs a little
/// behind ours still accepts a certificate made a moment ago.
const CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// The CA's lifetime: long enough that a development CA never needs
/// rotating during a project's life; leaves are the ones that expire.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The default leaf lifetime in days (the longest that browsers and Apple
/// platforms accept for a TLS server certificate).
pub const DEFAULT_LEAF_DAYS: u32 = 825;

/// A self-signed certificate authority that signs the mesh's certificates.
pub struct Ca {
    /// The CA certificate, what every process trusts (`ca.crt`).
    cert_pem: String,
    /// The CA's PKCS#8 private key (`ca.key`), kept to reissue leaves.
    key_pem: String,
    /// rcgen's view of the CA (subject name, key identifier, signing key).
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA with common name `name` and a fresh P-256 key.
    pub fn new(name: &str) -> Result<Ca, CertsError> {
        let key = new_key(name)?;
        Ca::self_signed_with_key(name, key)
    }

    /// A new self-signed CA certificate for an existing PEM private key (used
    /// when `ca.key` survived but `ca.crt` was removed).
    pub fn from_key_pem(name: &str, key_pem: &str) -> Result<Ca, CertsError> {
        let key = parse_key("the CA private key PEM", key_pem)?;
        Ca::self_signed_with_key(name, key)
    }

    fn self_signed_with_key(name: &str, key: KeyPair) -> Result<Ca, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = OffsetDateTime::from(now + CA_VALIDITY);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertsError::rcgen(name, e))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its certificate and private key, both PEM (the
    /// contents of `ca.crt` and `ca.key`). Fails if the key is not the
    /// certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertsError> {
        let key = parse_key("the CA private key PEM", key_pem)?;
        let der = cert_der("the CA certificate PEM", cert_pem)?;
        let x509 = parse_cert("the CA certificate PEM", &der)?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CertsError::KeyMismatch {
                cert: "the CA certificate".into(),
                key: "the CA private key".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .map_err(|e| CertsError::rcgen("the CA", e))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM: what servers and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a leaf certificate for `spec` with a fresh P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, CertsError> {
        let key = new_key(&spec.name)?;
        self.sign(spec, key)
    }

    /// Issues a leaf certificate for `spec` for an existing PEM private key
    /// (renewing a certificate without changing its key).
    pub fn issue_for_key(&self, spec: &LeafSpec, key_pem: &str) -> Result<Leaf, CertsError> {
        let key = parse_key(&format!("the private key of {:?}", spec.name), key_pem)?;
        self.sign(spec, key)
    }

    fn sign(&self, spec: &LeafSpec, key: KeyPair) -> Result<Leaf, CertsError> {
        let params = spec.params()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertsError::rcgen(&spec.name, e))?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What a leaf certificate says: who it is, where it may be reached, and
/// when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// The principal name, put in the subject common name (e.g. "billing");
    /// what the broker's authorization rules match.
    pub name: String,
    /// DNS subject alternative names; hostname verification checks these.
    pub dns_names: Vec<String>,
    /// IP subject alternative names, for clients that dial an address.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity; in the past makes an expired certificate.
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// `name` as common name and DNS names `name` and `localhost`, IP
    /// 127.0.0.1, valid from an hour ago for [`DEFAULT_LEAF_DAYS`].
    pub fn new(name: &str) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            name: name.to_owned(),
            dns_names: vec![name.to_owned(), "localhost".to_owned()],
            ip_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            not_before: now - CLOCK_SKEW,
            not_after: now + DAY * DEFAULT_LEAF_DAYS,
        }
    }

    /// Valid from an hour ago for `days` days.
    pub fn valid_for_days(mut self, days: u32) -> LeafSpec {
        let now = SystemTime::now();
        self.not_before = now - CLOCK_SKEW;
        self.not_after = now + DAY * days;
        self
    }

    /// Valid for one day that ended yesterday: every verifier rejects it
    /// as expired.
    pub fn expired(mut self) -> LeafSpec {
        let now = SystemTime::now();
        self.not_before = now - DAY * 2;
        self.not_after = now - DAY;
        self
    }

    /// Adds a DNS subject alternative name.
    pub fn dns(mut self, name: &str) -> LeafSpec {
        self.dns_names.push(name.to_owned());
        self
    }

    /// Adds an IP subject alternative name.
    pub fn ip(mut self, addr: IpAddr) -> LeafSpec {
        self.ip_addresses.push(addr);
        self
    }

    fn params(&self) -> Result<CertificateParams, CertsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&self.name);
        for dns in &self.dns_names {
            let dns = dns
                .as_str()
                .try_into()
                .map_err(|e| CertsError::rcgen(&self.name, e))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        for ip in &self.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = OffsetDateTime::from(self.not_before);
        params.not_after = OffsetDateTime::from(self.not_after);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// A leaf certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The certificate (`<name>.crt`).
    pub cert_pem: String,
    /// The PKCS#8 private key (`<name>.key`).
    pub key_pem: String,
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A leaf for `name` (same names and usages as [`LeafSpec::new`]) that
/// signs itself instead of being issued by a CA: what a peer that only
/// trusts the mesh CA must reject.
pub fn self_signed_leaf(name: &str) -> Result<Leaf, CertsError> {
    let spec = LeafSpec::new(name);
    let mut params = spec.params()?;
    params.use_authority_key_identifier_extension = false;
    let key = new_key(name)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CertsError::rcgen(name, e))?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn new_key(subject: &str) -> Result<KeyPair, CertsError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CertsError::rcgen(subject, e))
}

pub(crate) fn parse_key(what: &str, pem: &str) -> Result<KeyPair, CertsError> {
    KeyPair::from_pem(pem).map_err(|e| CertsError::Parse {
        what: what.to_owned(),
        expected: "ECDSA P-256 private key",
        detail: e.to_string(),
    })
}

/// The DER bytes of the first certificate in `pem`.
pub(crate) fn cert_der(what: &str, pem: &str) -> Result<Vec<u8>, CertsError> {
    let parse_error = |detail: String| CertsError::Parse {
        what: what.to_owned(),
        expected: "certificate",
        detail,
    };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| parse_error(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(parse_error(format!("found a {:?} block", pem.label)));
    }
    Ok(pem.contents)
}

pub(crate) fn parse_cert<'a>(
    what: &str,
    der: &'a [u8],
) -> Result<x509_parser::certificate::X509Certificate<'a>, CertsError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CertsError::Parse {
            what: what.to_owned(),
            expected: "certificate",
            detail: e.to_string(),
        })
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// 16 random bytes with the top bit clear and the first byte non-zero: a
/// positive, minimally encoded serial number that is unique per
/// certificate, as RFC 5280 asks.
fn random_serial() -> Result<SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    random_bytes(&mut bytes)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}
