//! Service configuration: defaults in code, then a TOML file, then
//! environment overrides `<PREFIX>__<KEY>` (for example
//! `BILLING__BROKER=http://broker:50051`), then validation with errors that
//! name the key.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{SdkError, config_err};

/// Checks loaded settings; errors name the key.
pub trait Validate {
    fn validate(&self) -> Result<(), SdkError>;
}

/// Loads `T` from `path` (required when given) or `default_file` (if it
/// exists), then `PREFIX__*` environment variables, and validates it.
pub fn load<T: DeserializeOwned + Validate>(
    prefix: &str,
    path: Option<&Path>,
    default_file: &str,
) -> Result<T, SdkError> {
    load_with(prefix, path, default_file, &[])
}

/// Like [`load`], with per-service defaults (`key`, `value`) that replace
/// the type's own: several services share [`BasicConfig`] but not ports.
pub fn load_with<T: DeserializeOwned + Validate>(
    prefix: &str,
    path: Option<&Path>,
    default_file: &str,
    defaults: &[(&str, &str)],
) -> Result<T, SdkError> {
    let mut b = config::Config::builder();
    for (k, v) in defaults {
        b = b.set_default(*k, *v)?;
    }
    b = match path {
        Some(p) => b.add_source(config::File::from(p).required(true)),
        None => b.add_source(config::File::with_name(default_file).required(false)),
    };
    let cfg: T = b
        .add_source(
            config::Environment::with_prefix(prefix)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()?;
    cfg.validate()?;
    Ok(cfg)
}

/// Parses `--config FILE` from the command line.
pub fn config_path_from_args() -> Result<Option<std::path::PathBuf>, SdkError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, path] if flag == "--config" => Ok(Some(path.into())),
        _ => Err(config_err("command line", "usage: [--config FILE]")),
    }
}

pub fn check_listen(key: &str, v: &str) -> Result<(), SdkError> {
    v.parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| config_err(key, format!("{v:?} is not an address like 0.0.0.0:50052")))
}

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

/// An address for the metrics endpoint, or empty to disable it.
pub fn check_metrics_listen(key: &str, v: &str) -> Result<(), SdkError> {
    if v.is_empty() {
        return Ok(());
    }
    v.parse::<std::net::SocketAddr>().map(|_| ()).map_err(|_| {
        config_err(
            key,
            format!("{v:?} is not an address like 0.0.0.0:9091 (or \"\" to disable metrics)"),
        )
    })
}

pub fn check_log_format(key: &str, v: &str) -> Result<(), SdkError> {
    match v {
        "text" | "json" => Ok(()),
        _ => Err(config_err(key, "must be \"text\" or \"json\"")),
    }
}

/// The settings most consumers need and no more: where to listen, where
/// the broker is, how to log, where to serve metrics. Env overrides:
/// `PREFIX__LISTEN`, `PREFIX__BROKER`, `PREFIX__LOG_FORMAT`,
/// `PREFIX__METRICS_LISTEN`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicConfig {
    pub listen: String,
    pub broker: String,
    pub log_format: String,
    /// Prometheus metrics over HTTP; empty disables them.
    pub metrics_listen: String,
}

impl Default for BasicConfig {
    fn default() -> Self {
        BasicConfig {
            listen: "127.0.0.1:50060".into(),
            broker: "http://127.0.0.1:50051".into(),
            log_format: "text".into(),
            metrics_listen: "127.0.0.1:9095".into(),
        }
    }
}

impl Validate for BasicConfig {
    fn validate(&self) -> Result<(), SdkError> {
        check_listen("listen", &self.listen)?;
        check_broker("broker", &self.broker)?;
        check_log_format("log_format", &self.log_format)?;
        check_metrics_listen("metrics_listen", &self.metrics_listen)
    }
}

impl crate::app::ServiceConfig for BasicConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_service_defaults_replace_the_types_own_and_env_still_wins() {
        let c: BasicConfig = load_with(
            "MESH_SDK_TEST_A",
            None,
            "no-such-file",
            &[("listen", "127.0.0.1:50099")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:50099");
        assert_eq!(c.broker, BasicConfig::default().broker);
        // SAFETY: this test alone uses the MESH_SDK_TEST_B prefix.
        unsafe { std::env::set_var("MESH_SDK_TEST_B__LISTEN", "127.0.0.1:50100") };
        let c: BasicConfig = load_with(
            "MESH_SDK_TEST_B",
            None,
            "no-such-file",
            &[("listen", "127.0.0.1:50099")],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:50100");
        let e = load_with::<BasicConfig>(
            "MESH_SDK_TEST_C",
            None,
            "no-such-file",
            &[("listen", "nowhere")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`listen`"), "{e}");
    }
}
