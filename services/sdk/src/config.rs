//! Service configuration: defaults in code, then a TOML file, then
//! environment overrides `<PREFIX>__<KEY>` (for example
//! `BILLING__BROKER=http://broker:50051`), loaded by
//! `mesh_runtime::config`, then validation with errors that name the key.
//! Addresses and the log format are typed, so a value that does not parse
//! is refused while loading.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use mesh_runtime::{
    config::{self as rc, LogFormat},
    tls::TlsConfig,
};
use serde::de::DeserializeOwned;

use crate::{
    error::{SdkError, config_err},
    link::Broker,
};

/// Checks how loaded settings relate (parsing is done); errors name the
/// key.
pub trait Validate {
    fn validate(&self) -> Result<(), SdkError>;
}

/// What the bootstrap ([`crate::app::main`]) needs from a service's config.
/// A service's config type holds `broker`, `tls` and `token_file` fields
/// and returns them here; the SDK does the rest ([`ServiceConfig::broker`],
/// [`check_link`], TLS of the service's own server).
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn listen(&self) -> SocketAddr;
    fn log_format(&self) -> LogFormat;
    /// Where to serve Prometheus metrics; `None` disables them.
    fn metrics_listen(&self) -> Option<SocketAddr>;
    /// The broker's URL (key `broker`).
    fn broker_url(&self) -> &str;
    /// The `[tls]` section: for the broker link and the service's own
    /// server.
    fn tls(&self) -> &TlsConfig;
    /// The file holding this service's bearer token (key `token_file`).
    fn token_file(&self) -> Option<&Path>;

    /// The link to the broker every producer, consumer and reader of the
    /// service takes: TLS when `broker` is https://, the token when
    /// `token_file` is set. Reads those files now.
    fn broker(&self) -> Result<Broker, SdkError> {
        Broker::new(self.broker_url(), self.tls(), self.token_file())
    }
}

/// Checks (without reading any file) that the broker link's settings fit
/// together: the `[tls]` section itself, `broker`'s scheme against it
/// (https:// needs `tls.ca`, http:// is refused when TLS is on), and that a
/// token only travels over https://.
pub fn check_link(
    broker: &str,
    tls: &TlsConfig,
    token_file: Option<&Path>,
) -> Result<(), SdkError> {
    check_broker("broker", broker)?;
    tls.validate("tls.")?;
    let https = broker.starts_with("https://");
    if https && tls.ca.is_none() {
        return Err(config_err(
            "broker",
            format!("{broker:?} is https:// but `tls.ca` is not set to verify the broker"),
        ));
    }
    if !https && tls.enabled() {
        return Err(config_err(
            "broker",
            format!("{broker:?} is not https:// but TLS is configured ([tls]): use https://"),
        ));
    }
    if !https && token_file.is_some() {
        return Err(config_err(
            "token_file",
            format!("a token is sent only over TLS, but `broker` ({broker:?}) is not https://"),
        ));
    }
    Ok(())
}

/// [`load_with`] for a service's config, plus [`check_link`].
pub fn load_service<T: ServiceConfig>(
    prefix: &str,
    path: Option<&Path>,
    default_file: &str,
    defaults: &[(&str, &str)],
) -> Result<T, SdkError> {
    let cfg: T = load_with(prefix, path, default_file, defaults)?;
    check_link(cfg.broker_url(), cfg.tls(), cfg.token_file())?;
    Ok(cfg)
}

/// Loads `T` from code defaults, with per-service ones (`key`, `value`)
/// replacing the type's own (several services share [`BasicConfig`] but
/// not ports), then `path` (required when given) or `default_file` (if it
/// exists), then `PREFIX__*` environment variables, and validates it.
pub fn load_with<T: DeserializeOwned + Validate>(
    prefix: &str,
    path: Option<&Path>,
    default_file: &str,
    defaults: &[(&str, &str)],
) -> Result<T, SdkError> {
    let cfg: T = rc::load(prefix, path, default_file, defaults)?;
    cfg.validate()?;
    Ok(cfg)
}

/// The broker's address must be a URL a channel can be built from.
pub fn check_broker(key: &str, v: &str) -> Result<(), SdkError> {
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(config_err(
            key,
            format!("{v:?} must be a URL like http://127.0.0.1:50051"),
        ));
    }
    tonic::transport::Endpoint::from_shared(v.to_string())
        .map(|_| ())
        .map_err(|e| config_err(key, e.to_string()))
}

/// The settings most consumers need and no more: where to listen, where
/// the broker is and how to reach it, how to log, where to serve metrics.
/// Env overrides: `PREFIX__LISTEN`, `PREFIX__BROKER`, `PREFIX__LOG_FORMAT`,
/// `PREFIX__METRICS_LISTEN`, `PREFIX__TLS__CA`, `PREFIX__TLS__CERT`,
/// `PREFIX__TLS__KEY`, `PREFIX__TLS__CLIENT_AUTH`, `PREFIX__TOKEN_FILE`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicConfig {
    /// This service's gRPC address.
    pub listen: SocketAddr,
    /// The broker's URL, the only other address the service knows.
    pub broker: String,
    /// Lines for people (`text`) or for log pipelines (`json`).
    pub log_format: LogFormat,
    /// Prometheus metrics over HTTP; `""` disables them.
    #[serde(deserialize_with = "rc::opt_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS to the broker (with `broker` https://) and of this service's
    /// own server (when `cert` is set).
    pub tls: TlsConfig,
    /// This service's bearer token, for a broker with auth = "token".
    #[serde(deserialize_with = "rc::opt_path")]
    pub token_file: Option<PathBuf>,
}

impl Default for BasicConfig {
    fn default() -> Self {
        BasicConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50060)),
            broker: "http://127.0.0.1:50051".into(),
            log_format: LogFormat::Text,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9095))),
            tls: TlsConfig::default(),
            token_file: None,
        }
    }
}

impl Validate for BasicConfig {
    fn validate(&self) -> Result<(), SdkError> {
        check_broker("broker", &self.broker)
    }
}

impl ServiceConfig for BasicConfig {
    fn listen(&self) -> SocketAddr {
        self.listen
    }
    fn log_format(&self) -> LogFormat {
        self.log_format
    }
    fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics_listen
    }
    fn broker_url(&self) -> &str {
        &self.broker
    }
    fn tls(&self) -> &TlsConfig {
        &self.tls
    }
    fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(prefix: &str, defaults: &[(&str, &str)]) -> Result<BasicConfig, SdkError> {
        load_service(prefix, None, "no-such-file", defaults)
    }

    #[test]
    fn per_service_defaults_replace_the_types_own_and_env_still_wins() {
        let c = with("MESH_SDK_TEST_A", &[("listen", "127.0.0.1:50099")]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50099");
        assert_eq!(c.broker, BasicConfig::default().broker);
        // SAFETY: this test alone uses the MESH_SDK_TEST_B prefix.
        unsafe { std::env::set_var("MESH_SDK_TEST_B__LISTEN", "127.0.0.1:50100") };
        let c = with("MESH_SDK_TEST_B", &[("listen", "127.0.0.1:50099")]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50100");
        let e = with("MESH_SDK_TEST_C", &[("listen", "nowhere")]).unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
    }

    #[test]
    fn values_are_typed_and_errors_name_the_key() {
        let c = with("MESH_SDK_TEST_D", &[("metrics_listen", "")]).unwrap();
        assert_eq!(c.metrics_listen, None);
        let c = with("MESH_SDK_TEST_D", &[("log_format", "json")]).unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        for (key, bad) in [
            ("metrics_listen", "9095"),
            ("log_format", "xml"),
            ("broker", "127.0.0.1:50051"),
        ] {
            let e = with("MESH_SDK_TEST_D", &[(key, bad)]).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn tls_and_token_come_from_env_and_must_fit_the_broker_url() {
        // SAFETY: this test alone uses the MESH_SDK_TEST_E..H prefixes.
        unsafe {
            std::env::set_var("MESH_SDK_TEST_E__TLS__CA", "/pki/ca.crt");
            std::env::set_var("MESH_SDK_TEST_E__TLS__CERT", "/pki/billing.crt");
            std::env::set_var("MESH_SDK_TEST_E__TLS__KEY", "/pki/billing.key");
            std::env::set_var("MESH_SDK_TEST_E__TOKEN_FILE", "/pki/billing.token");
            std::env::set_var("MESH_SDK_TEST_E__BROKER", "https://broker:50051");
        }
        let c = with("MESH_SDK_TEST_E", &[]).unwrap();
        assert_eq!(c.tls.ca.as_deref(), Some(Path::new("/pki/ca.crt")));
        assert_eq!(c.tls.key.as_deref(), Some(Path::new("/pki/billing.key")));
        assert_eq!(c.token_file(), Some(Path::new("/pki/billing.token")));
        // TLS on, broker plaintext: refused, naming `broker`.
        unsafe { std::env::set_var("MESH_SDK_TEST_F__TLS__CA", "/pki/ca.crt") };
        let e = with("MESH_SDK_TEST_F", &[]).unwrap_err();
        assert!(e.to_string().contains("`broker`"), "{e}");
        // https:// without a CA: refused, naming `broker`.
        let e = with("MESH_SDK_TEST_G", &[("broker", "https://b:1")]).unwrap_err();
        assert!(e.to_string().contains("`broker`"), "{e}");
        // A token over plaintext: refused, naming `token_file`.
        let e = with("MESH_SDK_TEST_H", &[("token_file", "/t")]).unwrap_err();
        assert!(e.to_string().contains("`token_file`"), "{e}");
        // The section's own rules: a cert without its key.
        let e = with(
            "MESH_SDK_TEST_H",
            &[
                ("broker", "https://b:1"),
                ("tls.ca", "a"),
                ("tls.cert", "c"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`tls.key`"), "{e}");
    }
}
