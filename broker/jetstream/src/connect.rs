//! Connecting to the NATS cluster, and refusing servers too old for what
//! the backend relies on.

use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, ServerAddr};

use crate::Options;
use mesh_log::{LogError, Result};

/// The oldest nats-server the backend works with: 2.14 added
/// `CONSUMER.RESET`, with which a group's new dispatcher takes its
/// consumer back to the group's position; 2.11 added batched direct gets
/// (`batch`, `max_bytes`) and direct gets by start time, which every read
/// and every seek by time uses. (Debian's 2.9.10 would answer them with a
/// single message and so silently read one event at a time.)
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 14, 0);

/// Connects, retrying until `connect_timeout`, and checks the server's
/// version and that JetStream is enabled for this account.
pub async fn connect(opts: &Options) -> Result<(Client, async_nats::jetstream::Context)> {
    let servers = server_addrs(&opts.servers)?;
    let deadline = Instant::now() + opts.connect_timeout;
    let client = loop {
        match options(opts)?.connect(servers.as_slice()).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(servers = %opts.servers, error = %e, "NATS not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(LogError::Backend {
                    op: "connect",
                    reason: format!(
                        "cannot reach NATS at {} within {:?}: {e}",
                        opts.servers, opts.connect_timeout
                    ),
                });
            }
        }
    };
    let version = client.server_info().version;
    check_version(&version)?;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(opts.request_timeout);
    // A cluster that is still electing its meta leader answers 503 for a
    // moment: wait for it within the same deadline.
    loop {
        match js.query_account().await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "JetStream not ready yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(LogError::Backend {
                    op: "connect",
                    reason: format!(
                        "JetStream does not answer on {} (nats-server {version}) within {:?}: {e}; is it enabled (-js, or a jetstream {{}} block) and has the cluster a meta leader?",
                        opts.servers, opts.connect_timeout
                    ),
                });
            }
        }
    }
    tracing::info!(servers = %opts.servers, server_version = %version, "connected to NATS JetStream");
    Ok((client, js))
}

/// `servers` (comma separated) as addresses; a malformed one is a
/// configuration error, not worth retrying.
fn server_addrs(servers: &str) -> Result<Vec<ServerAddr>> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| LogError::Config(format!("NATS server URL {s:?}: {e}")))
        })
        .collect()
}

fn options(opts: &Options) -> Result<ConnectOptions> {
    let mut o = ConnectOptions::new()
        .name(&opts.client_name)
        .request_timeout(Some(opts.request_timeout))
        .connection_timeout(opts.request_timeout);
    if let Some(tls) = &opts.tls {
        o = o.require_tls(true).add_root_certificates(tls.ca.clone());
        if let Some((cert, key)) = &tls.client {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
    }
    // Not retry_on_initial_connect, which would wait forever for the
    // first connection: the deadline loop in `connect` bounds it instead.
    // After that the client reconnects (to any of `servers`) on its own.
    Ok(o)
}

/// Refuses a server older than [`MIN_SERVER_VERSION`], naming both.
pub fn check_version(version: &str) -> Result<()> {
    let parsed = parse_version(version);
    let (a, b, c) = MIN_SERVER_VERSION;
    match parsed {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(LogError::Backend {
            op: "connect",
            reason: format!(
                "nats-server {version} is too old: the JetStream backend needs {a}.{b}.{c} or newer (batched direct gets); upgrade the NATS servers"
            ),
        }),
    }
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Runs `op` until it succeeds or `within` has passed: a cluster that has
/// just formed (or is electing leaders after a node loss) times out or
/// answers 503 for some seconds, which at start is worth waiting out.
pub async fn retrying<T, E: std::fmt::Display, F, Fut>(
    what: &'static str,
    within: Duration,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "{what}: not yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(LogError::Backend {
                    op: what,
                    reason: format!("{e} (for {within:?})"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused_with_both_versions_named() {
        check_version("2.15.1").unwrap();
        check_version("2.14.0").unwrap();
        check_version("v2.14.1-beta.1").unwrap();
        assert!(check_version("2.13.9").is_err());
        let e = check_version("2.9.10").unwrap_err().to_string();
        assert!(e.contains("2.9.10") && e.contains("2.14.0"), "{e}");
        assert!(check_version("garbage").is_err());
    }

    #[test]
    fn server_lists_split_on_commas_and_bad_urls_are_config_errors() {
        assert_eq!(server_addrs("nats://a:1, nats://b:2,").unwrap().len(), 2);
        assert!(matches!(
            server_addrs("nats://a:x"),
            Err(LogError::Config(_))
        ));
    }
}
