//! Service configuration: defaults in code, then a TOML file, then
//! environment overrides `<PREFIX>__<KEY>` (for example
//! `BILLING__BROKER=http://broker:50051`), loaded by
//! `mesh_runtime::config`, then validation with errors that name the key.
//! Addresses and the log format are typed, so a value that does not parse
//! is refused while loading.

use std::{net::SocketAddr, path::Path};

use mesh_runtime::config::{self as rc, LogFormat};
use serde::de::DeserializeOwned;

use crate::error::{SdkError, config_err};

/// Checks how loaded settings relate (parsing is done); errors name the
/// key.
pub trait Validate {
    fn validate(&self) -> Result<(), SdkError>;
}

/// What the bootstrap ([`crate::app::main`]) needs from a service's config.
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn listen(&self) -> SocketAddr;
    fn log_format(&self) -> LogFormat;
    /// Where to serve Prometheus metrics; `None` disables them.
    fn metrics_listen(&self) -> Option<SocketAddr>;
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
/// the broker is, how to log, where to serve metrics. Env overrides:
/// `PREFIX__LISTEN`, `PREFIX__BROKER`, `PREFIX__LOG_FORMAT`,
/// `PREFIX__METRICS_LISTEN`.
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
}

impl Default for BasicConfig {
    fn default() -> Self {
        BasicConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50060)),
            broker: "http://127.0.0.1:50051".into(),
            log_format: LogFormat::Text,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9095))),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(prefix: &str, defaults: &[(&str, &str)]) -> Result<BasicConfig, SdkError> {
        load_with(prefix, None, "no-such-file", defaults)
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
}
