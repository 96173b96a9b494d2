//! Settings: `orders.toml`, then `ORDERS__*` environment overrides.

use mesh_sdk::{
    SdkError,
    app::ServiceConfig,
    config::{Validate, check_broker, check_listen, check_log_format, check_metrics_listen},
};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This service's gRPC address.
    pub listen: String,
    /// The broker, the only other address this service knows.
    pub broker: String,
    pub log_format: String,
    /// Prometheus metrics over HTTP; empty disables them.
    pub metrics_listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:50052".into(),
            broker: "http://127.0.0.1:50051".into(),
            log_format: "text".into(),
            metrics_listen: "127.0.0.1:9091".into(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), SdkError> {
        check_listen("listen", &self.listen)?;
        check_broker("broker", &self.broker)?;
        check_log_format("log_format", &self.log_format)?;
        check_metrics_listen("metrics_listen", &self.metrics_listen)
    }
}

impl ServiceConfig for Config {
    fn listen(&self) -> &str {
        &self.listen
    }
    fn log_format(&self) -> &str {
        &self.log_format
    }
    fn metrics_listen(&self) -> &str {
        &self.metrics_listen
    }
}
