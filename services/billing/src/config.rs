//! Settings: `billing.toml`, then `BILLING__*` environment overrides
//! (`BILLING__TLS__CA`, `BILLING__TOKEN_FILE`, ...).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use mesh_sdk::{
    SdkError,
    config::{ServiceConfig, Validate, check_broker},
    mesh_runtime::{
        config::{LogFormat, opt_addr, opt_path},
        tls::TlsConfig,
    },
};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This service's gRPC address.
    pub listen: SocketAddr,
    /// The broker, the only other address this service knows.
    pub broker: String,
    /// Lines for people (`text`) or for log pipelines (`json`).
    pub log_format: LogFormat,
    /// Prometheus metrics over HTTP; `""` disables them.
    #[serde(deserialize_with = "opt_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Payments for orders whose total (in minor units) exceeds this are
    /// declined: the simulated, deterministic payment rule.
    pub decline_over_minor: i64,
    /// TLS to the broker and of this service's own server (`[tls]`).
    pub tls: TlsConfig,
    /// This service's bearer token, for a broker with auth = "token".
    #[serde(deserialize_with = "opt_path")]
    pub token_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            broker: "http://127.0.0.1:50051".into(),
            log_format: LogFormat::Text,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9092))),
            decline_over_minor: 100_000,
            tls: TlsConfig::default(),
            token_file: None,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), SdkError> {
        check_broker("broker", &self.broker)?;
        if self.decline_over_minor < 0 {
            return Err(mesh_sdk::error::config_err(
                "decline_over_minor",
                "must not be negative",
            ));
        }
        Ok(())
    }
}

impl ServiceConfig for Config {
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
    use mesh_sdk::config::load_service;

    use super::*;

    #[test]
    fn tls_and_token_file_load_and_must_fit_the_broker_url() {
        let c: Config = load_service(
            "BILLING_TEST_A",
            None,
            "no-such-file",
            &[
                ("broker", "https://broker:50051"),
                ("tls.ca", "/pki/ca.crt"),
                ("tls.cert", "/pki/billing.crt"),
                ("tls.key", "/pki/billing.key"),
                ("token_file", "/pki/billing.token"),
            ],
        )
        .unwrap();
        assert_eq!(c.tls().cert.as_deref(), Some(Path::new("/pki/billing.crt")));
        assert_eq!(c.token_file(), Some(Path::new("/pki/billing.token")));
        let e = load_service::<Config>(
            "BILLING_TEST_B",
            None,
            "no-such-file",
            &[("tls.ca", "/pki/ca.crt")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`broker`"), "{e}");
    }
}
