//! Settings of the broker and of every service: code defaults, then a TOML
//! file, then environment overrides `<PREFIX>__<KEY>` (nested keys with
//! `__`, for example `BROKER__STORAGE__FSYNC=interval`); and the typed
//! values they are made of.
//!
//! Optional paths (`opt_path`) take `""` for unset, as an environment
//! variable can only say it.
//!
//! Durations are written `"30s"`, `"100ms"`, `"1h 30m"` (humantime); a
//! bare number means milliseconds, so the old `*_ms` keys and their
//! environment variables mean what they meant: every key ending in `_ms`
//! is read as the key without it, in the file and in the environment alike. Sizes
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
        Some(p) => b.add_source(OldKeys(::config::File::from(p).required(true))),
        None => b.add_source(OldKeys(
            ::config::File::with_name(default_file).required(false),
        )),
    };
    Ok(b.add_source(OldKeys(
        ::config::Environment::with_prefix(prefix)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true),
    ))
    .build()?
    .try_deserialize()?)
}

/// A source whose old `*_ms` keys are renamed to the key without the
/// suffix (`ack_deadline_ms = 3000` is `ack_deadline = 3000`, a bare number
/// being milliseconds) before the sources are merged. Renaming per source
/// keeps the precedence: an old key in the environment still overrides the
/// new one in the file, and the other way round, instead of the two
/// reaching serde as a duplicate field.
#[derive(Clone, Debug)]
struct OldKeys<S>(S);

impl<S: ::config::Source + Clone + Send + Sync + 'static> ::config::Source for OldKeys<S> {
    fn clone_into_box(&self) -> Box<dyn ::config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<::config::Map<String, ::config::Value>, ::config::ConfigError> {
        rename_old_keys(self.0.collect()?)
    }
}

fn rename_old_keys(
    table: ::config::Map<String, ::config::Value>,
) -> Result<::config::Map<String, ::config::Value>, ::config::ConfigError> {
    let mut out = ::config::Map::new();
    for (key, value) in table {
        let new = match key.strip_suffix("_ms") {
            Some(base) if !base.is_empty() && !base.ends_with('.') => base.to_string(),
            _ => key.clone(),
        };
        let value = rename_in(value)?;
        if out.insert(new.clone(), value).is_some() {
            return Err(::config::ConfigError::Message(format!(
                "`{new}` is set twice (also as its old name `{new}_ms`); keep one"
            )));
        }
    }
    Ok(out)
}

fn rename_in(value: ::config::Value) -> Result<::config::Value, ::config::ConfigError> {
    use ::config::ValueKind;
    let origin = value.origin().map(str::to_string);
    let kind = match value.kind {
        ValueKind::Table(t) => ValueKind::Table(rename_old_keys(t)?),
        ValueKind::Array(a) => {
            ValueKind::Array(a.into_iter().map(rename_in).collect::<Result<_, _>>()?)
        }
        other => other,
    };
    Ok(::config::Value::new(origin.as_ref(), kind))
}

/// How a process writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not \"text\" or \"json\"")),
        }
    }
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

/// An optional path: `""` (as an environment variable can only say)
/// means unset.
pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::path::PathBuf>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.contains('\0') => Err(de::Error::custom("a path cannot hold NUL")),
        Some(s) => Ok(Some(std::path::PathBuf::from(s))),
    }
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
