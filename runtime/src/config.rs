//! Settings of the broker and of every service: code defaults, then a TOML
//! file, then environment overrides `<PREFIX>__<KEY>` (nested keys with
//! `__`, for example `BROKER__STORAGE__FSYNC=interval`); and the typed
//! values they are made of.
//!
//! Durations are written `"30s"`, `"100ms"`, `"1h 30m"` (humantime); a
//! bare number means milliseconds, so the old `*_ms` keys (kept as serde
//! aliases) and their environment variables mean what they meant. Sizes
//! are a number of bytes or `"64MiB"`, `"1 GB"` (bytesize).

use std::{fmt, net::SocketAddr, path::Path, str::FromStr, time::Duration};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeOwned, Visitor},
};

use crate::RuntimeError;

/// Loads `T` from code defaults (the type's own, under `defaults`' `(key,
/// value)` pairs), then `path` (required when given) or `default_file` (if
/// it exists), then `PREFIX__*` environment variables. Checking how the
/// fields relate is the caller's `validate`.
pub fn load<T: DeserializeOwned>(
    prefix: &str,
    path: Option<&Path>,
    default_file: &str,
    defaults: &[(&str, &str)],
) -> Result<T, RuntimeError> {
    let mut b = ::config::Config::builder();
    for (k, v) in defaults {
        b = b.set_default(*k, *v)?;
    }
    b = match path {
        Some(p) => b.add_source(::config::File::from(p).required(true)),
        None => b.add_source(::config::File::with_name(default_file).required(false)),
    };
    Ok(b.add_source(
        ::config::Environment::with_prefix(prefix)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    )
    .build()?
    .try_deserialize()?)
}

/// How a process writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The name `mesh_telemetry::init` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A duration: a humantime string (`"30s"`), or a number of milliseconds
/// (also as a string, which is how environment variables arrive).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// [`duration`] for an optional setting.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration like \"30s\" or \"100ms\", or a number of milliseconds")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_millis)
            .map_err(|_| E::custom(format!("{v} ms: a duration cannot be negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        let v = v.trim();
        if let Ok(ms) = v.parse::<u64>() {
            return Ok(Duration::from_millis(ms));
        }
        humantime_serde::re::humantime::parse_duration(v)
            .map_err(|e| E::custom(format!("{v:?} is not a duration like \"30s\": {e}")))
    }
}

/// A size in bytes: a number, or a string like `"64MiB"` or `"1 GB"`.
pub fn size<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    let bytes = d.deserialize_any(SizeVisitor)?;
    T::try_from(bytes).map_err(|_| de::Error::custom(format!("{bytes} bytes is too large")))
}

/// [`size`] for an optional setting.
pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a size like \"64MiB\", or a number of bytes")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} bytes: a size cannot be negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        bytesize::ByteSize::from_str(v.trim())
            .map(|b| b.as_u64())
            .map_err(|e| E::custom(format!("{v:?} is not a size like \"64MiB\": {e}")))
    }
}

/// An address to serve on, or `""` for none (the feature is off).
pub fn opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an address like 0.0.0.0:9090 (or \"\" to disable)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "duration", alias = "d_ms")]
        d: Duration,
        #[serde(deserialize_with = "size")]
        s: usize,
        #[serde(deserialize_with = "opt_addr")]
        a: Option<SocketAddr>,
    }

    fn parse(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn durations_are_humantime_or_milliseconds() {
        let t = parse(r#"{"d": "1m 30s", "s": 1, "a": ""}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(90));
        assert_eq!(
            parse(r#"{"d": "100ms", "s": 1, "a": ""}"#).unwrap().d,
            Duration::from_millis(100)
        );
        // The old key, with a number, and with a number as a string (env).
        assert_eq!(
            parse(r#"{"d_ms": 3000, "s": 1, "a": ""}"#).unwrap().d,
            Duration::from_secs(3)
        );
        assert_eq!(
            parse(r#"{"d_ms": "3000", "s": 1, "a": ""}"#).unwrap().d,
            Duration::from_secs(3)
        );
        assert!(parse(r#"{"d": "soon", "s": 1, "a": ""}"#).is_err());
        assert!(parse(r#"{"d": -1, "s": 1, "a": ""}"#).is_err());
    }

    #[test]
    fn sizes_are_bytes_or_units() {
        assert_eq!(
            parse(r#"{"d": 1, "s": "64MiB", "a": ""}"#).unwrap().s,
            64 << 20
        );
        assert_eq!(parse(r#"{"d": 1, "s": 4096, "a": ""}"#).unwrap().s, 4096);
        assert!(parse(r#"{"d": 1, "s": "lots", "a": ""}"#).is_err());
    }

    #[test]
    fn an_empty_address_is_none_and_a_bad_one_is_an_error() {
        assert_eq!(parse(r#"{"d": 1, "s": 1, "a": ""}"#).unwrap().a, None);
        let t = parse(r#"{"d": 1, "s": 1, "a": "127.0.0.1:9090"}"#).unwrap();
        assert_eq!(t.a, Some("127.0.0.1:9090".parse().unwrap()));
        assert!(parse(r#"{"d": 1, "s": 1, "a": "9090"}"#).is_err());
    }
}
