//! Connecting to the NATS cluster, and refusing servers too old for what
//! the backend relies on.

use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions};

use crate::Options;
use mesh_log::{LogError, Result};

/// The oldest nats-server the backend works with: 2.11 added batched
/// direct gets (`batch`, `max_bytes`) and direct gets by start time, which
/// every read and every seek by time uses. (Debian's 2.9.10 would answer
/// them with a single message and so silently read one event at a time.)
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// Connects, retrying until `connect_timeout`, and checks the server's
/// version and that JetStream is enabled for this account.
pub async fn connect(opts: &Options) -> Result<(Client, async_nats::jetstream::Context)> {
    let deadline = Instant::now() + opts.connect_timeout;
    let client = loop {
        match options(opts)?.connect(opts.servers.as_str()).await {
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
    js.query_account().await.map_err(|e| LogError::Backend {
        op: "connect",
        reason: format!(
            "JetStream is not enabled on {} (nats-server {version}): {e}; start nats-server with -js or a jetstream {{}} block",
            opts.servers
        ),
    })?;
    tracing::info!(servers = %opts.servers, server_version = %version, "connected to NATS JetStream");
    Ok((client, js))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused_with_both_versions_named() {
        check_version("2.15.1").unwrap();
        check_version("2.11.0").unwrap();
        check_version("v2.12.0-beta.1").unwrap();
        let e = check_version("2.9.10").unwrap_err().to_string();
        assert!(e.contains("2.9.10") && e.contains("2.11.0"), "{e}");
        assert!(check_version("garbage").is_err());
    }
}
