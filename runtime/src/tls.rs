//! TLS for every gRPC server and client of the mesh (tonic with rustls),
//! from one `[tls]` section of file paths, and the identity a peer proves
//! with its certificate.
//!
//! Every mesh process is both a server (its own API) and a client (of the
//! broker), and holds one certificate for both roles, signed by the
//! mesh's CA:
//!
//! ```toml
//! [tls]
//! ca = "certs/ca.crt"        # trusted roots: for servers called and clients accepted
//! cert = "certs/billing.crt" # this process's certificate chain (PEM)
//! key = "certs/billing.key"  # its private key (PEM)
//! client_auth = "required"   # own server: demand a client certificate signed by `ca`
//! ```
//!
//! With no `ca`, `cert` and `key`, TLS is off (plaintext). A bearer token
//! is read from a file named in config ([`read_token`]); no secret ever
//! comes from a command line.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Whether a server asks its clients for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ClientAuth {
    /// A client without a certificate signed by `ca` fails the handshake
    /// (mutual TLS).
    Required,
    /// A client may present a certificate (then it must be valid) or none
    /// (then it authenticates otherwise, for example with a token).
    Optional,
    /// The server does not ask for client certificates.
    None,
}

impl TryFrom<String> for ClientAuth {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "required" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            "none" => Ok(ClientAuth::None),
            _ => Err(format!(
                "{s:?} is not \"required\", \"optional\" or \"none\""
            )),
        }
    }
}

/// The `[tls]` section: PEM files, never inline secrets.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) trusted for the servers this process calls and,
    /// with `client_auth`, for the clients that call it. `""` or absent:
    /// TLS off.
    #[serde(deserialize_with = "crate::config::opt_path")]
    pub ca: Option<PathBuf>,
    /// This process's certificate chain, presented as a server and as a
    /// client.
    #[serde(deserialize_with = "crate::config::opt_path")]
    pub cert: Option<PathBuf>,
    /// The private key of `cert`.
    #[serde(deserialize_with = "crate::config::opt_path")]
    pub key: Option<PathBuf>,
    /// Whether this process's own server demands client certificates;
    /// unset, the server's own default (`required` for services,
    /// `optional` for the broker, which answers a call without one with
    /// UNAUTHENTICATED and keeps health checks open).
    pub client_auth: Option<ClientAuth>,
}

/// A TLS file that cannot be used; names the key and the file, never the
/// contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("configuration key `{key}`: cannot read {path}: {source}")]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("TLS setup: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(prefix: &str, key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: format!("{prefix}{key}"),
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(prefix: &str, key: &str, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        key: format!("{prefix}{key}"),
        reason: reason.into(),
    }
}

/// Checks that `pem` holds at least one PEM block of `label` (for
/// example "CERTIFICATE"), so that a key given for a cert, or an empty
/// file, is refused at start with the key named rather than failing every
/// handshake later.
fn expect_pem(
    prefix: &str,
    key: &str,
    path: &Path,
    pem: &[u8],
    labels: &[&str],
) -> Result<(), TlsError> {
    let found = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .any(|p| labels.iter().any(|l| p.label == *l));
    if found {
        Ok(())
    } else {
        Err(invalid(
            prefix,
            key,
            format!(
                "{} holds no PEM {} block",
                path.display(),
                labels.join(" or ")
            ),
        ))
    }
}

impl TlsConfig {
    /// Whether TLS is configured at all.
    pub fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Checks how the fields relate: `cert` and `key` go together, and a
    /// client needs `ca` to verify servers. `prefix` is the section's key
    /// path (`"tls."`).
    pub fn validate(&self, prefix: &str) -> Result<(), TlsError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(invalid(prefix, "key", "must be set with `cert`")),
            (None, Some(_)) => return Err(invalid(prefix, "cert", "must be set with `key`")),
            _ => {}
        }
        if self.enabled() && self.ca.is_none() {
            return Err(invalid(
                prefix,
                "ca",
                "must be set when TLS is on: it verifies the peers' certificates",
            ));
        }
        Ok(())
    }

    fn identity(&self, prefix: &str) -> Result<Option<Identity>, TlsError> {
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Ok(None);
        };
        let c = read(prefix, "cert", cert)?;
        expect_pem(prefix, "cert", cert, &c, &["CERTIFICATE"])?;
        let k = read(prefix, "key", key)?;
        expect_pem(
            prefix,
            "key",
            key,
            &k,
            &["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"],
        )?;
        Ok(Some(Identity::from_pem(c, k)))
    }

    fn ca_cert(&self, prefix: &str) -> Result<Option<Certificate>, TlsError> {
        let Some(ca) = &self.ca else { return Ok(None) };
        let pem = read(prefix, "ca", ca)?;
        expect_pem(prefix, "ca", ca, &pem, &["CERTIFICATE"])?;
        Ok(Some(Certificate::from_pem(pem)))
    }

    /// How this process's server treats client certificates: the
    /// configured `client_auth`, else `default`.
    pub fn client_auth_or(&self, default: ClientAuth) -> ClientAuth {
        self.client_auth.unwrap_or(default)
    }

    /// The server side: `None` when TLS is off. Fails when TLS is
    /// configured but this process has no certificate to serve with.
    /// `default_auth` applies when `client_auth` is unset.
    pub fn server(
        &self,
        prefix: &str,
        default_auth: ClientAuth,
    ) -> Result<Option<ServerTlsConfig>, TlsError> {
        self.validate(prefix)?;
        if !self.enabled() {
            return Ok(None);
        }
        let identity = self
            .identity(prefix)?
            .ok_or_else(|| invalid(prefix, "cert", "must be set to serve TLS"))?;
        let mut cfg = ServerTlsConfig::new().identity(identity);
        let auth = self.client_auth_or(default_auth);
        if auth != ClientAuth::None
            && let Some(ca) = self.ca_cert(prefix)?
        {
            cfg = cfg
                .client_ca_root(ca)
                .client_auth_optional(auth == ClientAuth::Optional);
        }
        Ok(Some(cfg))
    }

    /// The client side for a server named `domain` (the host of its URL):
    /// `None` when TLS is off. Presents `cert` when set (mutual TLS).
    pub fn client(&self, prefix: &str, domain: &str) -> Result<Option<ClientTlsConfig>, TlsError> {
        self.validate(prefix)?;
        let Some(ca) = self.ca_cert(prefix)? else {
            return Ok(None);
        };
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name(domain);
        if let Some(id) = self.identity(prefix)? {
            cfg = cfg.identity(id);
        }
        Ok(Some(cfg))
    }
}

/// An endpoint for the server at `url` (`http://` or `https://`), with
/// this process's TLS settings when the URL is `https://`. A URL whose
/// scheme does not match the settings is refused: `https://` without
/// `tls.ca`, or `http://` when TLS is on (which would send everything, a
/// token too, in plaintext). `key` names the URL's configuration key.
pub fn endpoint(key: &str, url: &str, tls: &TlsConfig) -> Result<Endpoint, TlsError> {
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| invalid("", key, format!("{url:?}: {e}")))?;
    let https = url.starts_with("https://");
    match (https, tls.ca.is_some()) {
        (true, false) => Err(invalid(
            "",
            key,
            format!("{url:?} is https:// but `tls.ca` is not set to verify the server"),
        )),
        (false, true) => Err(invalid(
            "",
            key,
            format!("{url:?} is not https:// but TLS is configured (`tls.ca`): use https://"),
        )),
        (false, false) => Ok(ep),
        (true, true) => {
            let host = ep
                .uri()
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let cfg = tls.client("tls.", &host)?.expect("ca is set");
            Ok(ep.tls_config(cfg)?)
        }
    }
}

/// The principal a client certificate names: its subject's common name,
/// or else its first DNS subject alternative name. `None` for a
/// certificate without either (or one that does not parse; the handshake
/// has verified it already, so that does not happen for a valid chain).
pub fn cert_principal(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    })
}

/// A secret read from a file: surrounding whitespace trimmed, never shown
/// by `Debug` or `Display`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Reads a bearer token from `path` (configuration key `key`); an empty
/// file is an error.
pub fn read_token(key: &str, path: &Path) -> Result<Secret, TlsError> {
    let bytes = read("", key, path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid("", key, format!("{} is not UTF-8 text", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("", key, format!("{} is empty", path.display())));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "",
            key,
            format!("{} holds characters a header cannot carry", path.display()),
        ));
    }
    Ok(Secret(token.to_string()))
}

/// The SHA-256 of a token, as the broker's token file stores it.
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Whether two digests are equal, in time independent of where they
/// differ.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_go_together_and_tls_needs_a_ca() {
        let c = TlsConfig {
            cert: Some("a".into()),
            ..Default::default()
        };
        assert!(
            c.validate("tls.")
                .unwrap_err()
                .to_string()
                .contains("`tls.key`")
        );
        let c = TlsConfig {
            cert: Some("a".into()),
            key: Some("b".into()),
            ..Default::default()
        };
        assert!(
            c.validate("tls.")
                .unwrap_err()
                .to_string()
                .contains("`tls.ca`")
        );
        assert!(
            TlsConfig::default()
                .server("tls.", ClientAuth::Required)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unreadable_or_wrong_files_name_the_key_and_file_not_the_contents() {
        let dir = std::env::temp_dir().join(format!("mesh-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bogus = dir.join("bogus.pem");
        std::fs::write(&bogus, "not a certificate at all: s3cr3t").unwrap();
        let c = TlsConfig {
            ca: Some(bogus.clone()),
            ..Default::default()
        };
        let e = c.client("tls.", "x").unwrap_err().to_string();
        assert!(e.contains("`tls.ca`") && e.contains("bogus.pem"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let c = TlsConfig {
            ca: Some(dir.join("missing.pem")),
            ..Default::default()
        };
        let e = c.client("tls.", "x").unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tokens_are_trimmed_secret_and_compared_by_digest() {
        let dir = std::env::temp_dir().join(format!("mesh-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, "abc123\n").unwrap();
        let t = read_token("token_file", &f).unwrap();
        assert_eq!(t.expose(), "abc123");
        assert_eq!(format!("{t:?}"), "Secret(..)");
        assert!(digest_eq(
            &token_digest("abc123"),
            &token_digest(t.expose())
        ));
        assert!(!digest_eq(
            &token_digest("abc124"),
            &token_digest(t.expose())
        ));
        std::fs::write(&f, "  \n").unwrap();
        assert!(read_token("token_file", &f).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
