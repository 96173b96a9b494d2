//! The broker's settings as read from a file: human durations and sizes,
//! the old `*_ms` spelling, and errors that name the key.

use std::time::Duration;

use mesh_broker::{
    BrokerConfig,
    config::{ConfigError, Fsync},
};

/// Loads `text` as the config file (the environment of this test process
/// sets no `BROKER__*` variable).
fn from_toml(text: &str) -> Result<BrokerConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, text).unwrap();
    BrokerConfig::load(Some(&path))
}

#[test]
fn the_commented_config_file_parses_and_matches_the_code_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker.toml");
    let file = BrokerConfig::load(Some(&path)).unwrap();
    let d = BrokerConfig::default();
    assert_eq!(format!("{file:?}"), format!("{d:?}"));
}

#[test]
fn durations_and_sizes_are_human_and_the_old_ms_keys_still_work() {
    let c = from_toml(
        "drain_deadline = \"3s\"\n[storage]\nfsync = \"interval\"\nfsync_interval = \"250ms\"\n\
         segment_bytes = \"1MiB\"\n[delivery]\nack_deadline = \"1m\"\n[limits]\n\
         max_buffered_bytes = \"512 MiB\"\n[[topics]]\nname = \"a\"\nretention = \"7days\"\n",
    )
    .unwrap();
    assert_eq!(c.drain_deadline, Duration::from_secs(3));
    assert_eq!(c.storage.fsync, Fsync::Interval);
    assert_eq!(c.storage.fsync_interval, Duration::from_millis(250));
    assert_eq!(c.storage.segment_bytes, 1 << 20);
    assert_eq!(c.delivery.ack_deadline, Duration::from_secs(60));
    assert_eq!(c.limits.max_buffered_bytes, 512 << 20);
    assert_eq!(c.topics[0].retention, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(c.topics[0].retention_bytes, None);
    // The spelling of before: `_ms` keys holding milliseconds.
    let c = from_toml(
        "drain_deadline_ms = 3000\n[storage]\nfsync_interval_ms = 250\n\
         [delivery]\nack_deadline_ms = 60000\n[topic_defaults]\nretention_ms = 1000\n",
    )
    .unwrap();
    assert_eq!(c.drain_deadline, Duration::from_secs(3));
    assert_eq!(c.storage.fsync_interval, Duration::from_millis(250));
    assert_eq!(c.delivery.ack_deadline, Duration::from_secs(60));
    assert_eq!(c.topic_config(None, None, None).retention_ms, Some(1000));
}

#[test]
fn values_that_do_not_parse_name_the_key() {
    for (text, key) in [
        ("[storage]\nfsync = \"sometimes\"\n", "storage.fsync"),
        ("log_format = \"xml\"\n", "log_format"),
        ("listen = \"nowhere\"\n", "listen"),
        ("metrics_listen = \"9090\"\n", "metrics_listen"),
        (
            "[delivery]\nack_deadline = \"soon\"\n",
            "delivery.ack_deadline",
        ),
        (
            "[limits]\nmax_event_bytes = \"big\"\n",
            "limits.max_event_bytes",
        ),
    ] {
        let e = from_toml(text).unwrap_err().to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
    let c = from_toml("metrics_listen = \"\"\n").unwrap();
    assert_eq!(c.metrics_listen, None);
}

#[test]
fn values_that_do_not_fit_together_name_the_key() {
    let mut c = BrokerConfig::default();
    c.delivery.ack_deadline = Duration::from_millis(0);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("delivery.ack_deadline"), "{e}");
    let mut c = BrokerConfig::default();
    c.delivery.idle_timeout = c.delivery.heartbeat_interval;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("delivery.idle_timeout"), "{e}");
    let mut c = BrokerConfig::default();
    c.storage.fsync_interval = Duration::ZERO;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("storage.fsync_interval"), "{e}");
}

#[test]
fn the_jetstream_backend_is_checked_at_load_and_names_the_key() {
    let c = from_toml(
        "[storage]\nbackend = \"jetstream\"\n[jetstream]\nservers = \"nats://a:4222,nats://b:4222\"\nreplicas = 3\nlease_ttl = \"5s\"\n",
    )
    .unwrap();
    assert_eq!(c.storage.backend, mesh_broker::config::Backend::Jetstream);
    assert_eq!(c.jetstream_options().replicas, 3);
    assert_eq!(c.jetstream.lease_ttl, Duration::from_secs(5));
    let js = "[storage]\nbackend = \"jetstream\"\n";
    for (text, key) in [
        (
            "[storage]\nbackend = \"kafka\"\n".to_string(),
            "storage.backend",
        ),
        (
            format!("{js}[jetstream]\nreplicas = 7\n"),
            "jetstream.replicas",
        ),
        (
            format!("{js}[jetstream]\nnamespace = \"a.b\"\n"),
            "jetstream.namespace",
        ),
        (
            format!("{js}[jetstream]\nservers = \"\"\n"),
            "jetstream.servers",
        ),
        (
            format!("{js}[jetstream]\nlease_ttl = \"10ms\"\n"),
            "jetstream.lease_ttl",
        ),
        (
            format!("{js}[jetstream.tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n"),
            "jetstream.tls.ca",
        ),
        // The log's key file would silently protect nothing on JetStream.
        (
            "[storage]\nbackend = \"jetstream\"\nencryption_key_file = \"/k\"\n".to_string(),
            "storage.encryption_key_file",
        ),
    ] {
        let e = from_toml(&text).unwrap_err().to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
}
