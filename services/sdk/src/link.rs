//! The link to the broker every producer, consumer and reader of a service
//! shares: the broker's URL as a tonic endpoint (TLS when it is
//! `https://`, with the service's `[tls]` section) and the service's bearer
//! token, sent on every call. Built once from the config
//! ([`crate::config::ServiceConfig::broker`]), so a service has no TLS or
//! token code of its own.

use std::{path::Path, sync::Arc, time::Duration};

use mesh_proto::broker::v1::broker_client;
use mesh_runtime::tls::{self, TlsConfig};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::error::{SdkError, config_err};

/// A client of the broker's API that carries the service's token.
pub type BrokerClient = broker_client::BrokerClient<InterceptedService<Channel, Credentials>>;

/// Adds `authorization: Bearer <token>` to every request when the service
/// has a token; passes requests through unchanged otherwise.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The whole header value, marked sensitive so that tonic and hyper
    /// never print it; `None` without `token_file`.
    header: Option<Arc<MetadataValue<Ascii>>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut()
                .insert("authorization", h.as_ref().clone());
        }
        Ok(req)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whether there is a token, never the token.
        let token = if self.header.is_some() {
            "Some(..)"
        } else {
            "None"
        };
        write!(f, "Credentials {{ token: {token} }}")
    }
}

/// Where the broker is and how to reach it. Cheap to clone; connects
/// lazily, once per [`Broker::connect`].
#[derive(Clone, Debug)]
pub struct Broker {
    /// The URL as configured (key `broker`), for log lines.
    url: Arc<str>,
    /// With TLS, timeouts and keepalive already applied.
    endpoint: Endpoint,
    /// The bearer token, if the service has one.
    credentials: Credentials,
}

/// The broker's URL key in every service's config.
const KEY: &str = "broker";

/// The settings every connection to the broker uses.
fn tuned(ep: Endpoint) -> Endpoint {
    ep.connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // Notice a dead connection (a network cut, a broker whose IP
        // changed) in seconds rather than at TCP's timeout.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
}

/// Every cause of `e`, joined: tonic's transport error alone says only
/// "transport error", the handshake's reason is in its sources.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

impl Broker {
    /// The broker at `url` (`http://` or `https://`, which must match
    /// whether `tls` is on), with the token in `token_file` if given.
    /// Reads the TLS files and the token now, so a bad file fails the
    /// service at start with its key named.
    pub fn new(url: &str, tls: &TlsConfig, token_file: Option<&Path>) -> Result<Self, SdkError> {
        let endpoint = tuned(tls::endpoint(KEY, url, tls)?);
        let header = match token_file {
            None => None,
            Some(_) if !url.starts_with("https://") => {
                return Err(config_err(
                    "token_file",
                    format!(
                        "a token is sent only over TLS, but `broker` ({url:?}) is not https://"
                    ),
                ));
            }
            Some(path) => {
                let token = tls::read_token("token_file", path)?;
                let mut v = MetadataValue::try_from(format!("Bearer {}", token.expose())).map_err(
                    |_| {
                        config_err(
                            "token_file",
                            format!("{} holds characters a header cannot carry", path.display()),
                        )
                    },
                )?;
                v.set_sensitive(true);
                Some(Arc::new(v))
            }
        };
        Ok(Broker {
            url: url.into(),
            endpoint,
            credentials: Credentials { header },
        })
    }

    /// A broker without TLS or token (`http://`), as in local runs and
    /// tests.
    pub fn plaintext(url: &str) -> Result<Self, SdkError> {
        Broker::new(url, &TlsConfig::default(), None)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether calls carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.credentials.header.is_some()
    }

    /// Opens a connection (the TLS handshake included) and returns a
    /// client on it.
    pub async fn connect(&self) -> Result<BrokerClient, SdkError> {
        let ch = self
            .endpoint
            .connect()
            .await
            .map_err(|e| SdkError::Connect {
                url: self.url.to_string(),
                reason: chain(&e),
            })?;
        Ok(self.client(ch))
    }

    /// A client on an open channel, with this service's token.
    pub fn client(&self, ch: Channel) -> BrokerClient {
        broker_client::BrokerClient::with_interceptor(ch, self.credentials.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_must_match_tls_and_a_token_needs_https() {
        let e = Broker::plaintext("https://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("`broker`"), "{e}");
        let tls = TlsConfig {
            ca: Some("ca.crt".into()),
            ..Default::default()
        };
        let e = Broker::new("http://127.0.0.1:1", &tls, None).unwrap_err();
        assert!(e.to_string().contains("`broker`"), "{e}");
        let e = Broker::new(
            "http://127.0.0.1:1",
            &TlsConfig::default(),
            Some(Path::new("t")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`token_file`"), "{e}");
        let b = Broker::plaintext("http://127.0.0.1:1").unwrap();
        assert!(!b.has_token());
        assert_eq!(b.url(), "http://127.0.0.1:1");
    }

    #[test]
    fn the_token_is_sent_sensitive_and_never_printed() {
        let mut c = Credentials {
            header: Some(Arc::new({
                let mut v = MetadataValue::try_from("Bearer s3cr3t").unwrap();
                v.set_sensitive(true);
                v
            })),
        };
        let req = c.call(Request::new(())).unwrap();
        let h = req.metadata().get("authorization").unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer s3cr3t");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!format!("{h:?}").contains("s3cr3t"));
    }
}
