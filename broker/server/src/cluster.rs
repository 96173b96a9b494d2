//! Several brokers on one JetStream cluster (`storage.backend =
//! "jetstream"`): each (topic, group) has one dispatcher at a time, on the
//! broker holding the group's lease ([`mesh_jetstream::lease`]).
//!
//! - A member that connects to the holder joins its dispatcher as usual.
//! - A member that connects to any other broker is forwarded: that broker
//!   opens the same Subscribe stream on the holder and relays both ways
//!   (`subscribe::forward`), so per-key order and credit stay decided in
//!   one place.
//! - Seeks and DescribeGroup go to the holder the same way.
//! - The holder renews the lease every `lease_ttl / 6`. It gives the group
//!   back when its last member has been gone for `lease_ttl`, at shutdown,
//!   or when it cannot renew for `lease_ttl / 2` (then its members are
//!   disconnected and reconnect, reaching the new holder). A broker that
//!   dies holds its groups until their leases expire: the takeover time
//!   is at most `lease_ttl` plus the clients' reconnect backoff.
//!
//! A forwarded call carries [`FORWARDED`], and a broker never forwards a
//! forwarded call again, so a lease moving mid-call cannot make a loop.

use std::sync::Arc;

use mesh_jetstream::lease::{Acquire, Lease};
use tokio::time::Instant;

use crate::{
    error::{BrokerError, Result},
    group::{self, GroupHandle, consumer::ConsumerStore},
    state::Shared,
};

pub use crate::peers::Cluster;

/// Metadata key marking a call one broker forwards to another.
pub const FORWARDED: &str = "mesh-forwarded-by";

/// Where a group's dispatcher runs.
pub enum Claim {
    /// Here.
    Local(GroupHandle),
    /// On the broker at this URL.
    Remote(String),
}

/// Finds or takes the group's dispatcher: here if this broker runs it or
/// can take its lease, else the holder's URL. `forwarded` calls never
/// point elsewhere (the holder they were sent to lost the lease since).
pub async fn claim(
    broker: &Arc<Shared>,
    topic: &str,
    group: &str,
    forwarded: bool,
) -> Result<Claim> {
    let Some(cluster) = &broker.cluster else {
        let spawn = || group::spawn(topic, group, broker.storage.clone(), broker.cfg.clone());
        let h = broker.groups.get_or_spawn(topic, group, spawn)?;
        return Ok(Claim::Local(h));
    };
    if let Some(h) = broker.groups.get(topic, group) {
        return Ok(Claim::Local(h));
    }
    let _one = cluster.claiming.lock().await;
    if let Some(h) = broker.groups.get(topic, group) {
        return Ok(Claim::Local(h));
    }
    match cluster.leases.acquire(topic, group, &cluster.me).await? {
        Acquire::Held(lease) => {
            // On JetStream the group reads and settles through its
            // durable consumer.
            let spawn = || {
                let store = ConsumerStore::new(&cluster.js, broker.cfg.clone(), topic, group);
                group::spawn_on(Arc::new(store), topic, group, broker.cfg.clone())
            };
            let h = broker.groups.get_or_spawn(topic, group, spawn)?;
            let keeper = tokio::spawn(keep(
                broker.clone(),
                topic.to_string(),
                group.to_string(),
                lease,
                h.clone(),
            ));
            cluster.keepers.lock().expect("keepers lock").push(keeper);
            tracing::info!(%topic, %group, "took the group's lease: its dispatcher runs here");
            Ok(Claim::Local(h))
        }
        Acquire::Taken(holder) if holder.id == cluster.me.id => Err(BrokerError::Unavailable(
            format!("group {group:?} of topic {topic:?} is being handed over here; retry"),
        )),
        Acquire::Taken(_) if forwarded => Err(BrokerError::Unavailable(format!(
            "group {group:?} of topic {topic:?} moved to another broker; retry"
        ))),
        Acquire::Taken(holder) => Ok(Claim::Remote(holder.url)),
    }
}

/// The URL of the broker running the group's dispatcher, if that is not
/// this one (for seeks and DescribeGroup); `None` if it runs here or
/// nowhere.
pub async fn holder_elsewhere(broker: &Shared, topic: &str, group: &str) -> Result<Option<String>> {
    let Some(cluster) = &broker.cluster else {
        return Ok(None);
    };
    if broker.groups.get(topic, group).is_some() {
        return Ok(None);
    }
    Ok(cluster
        .leases
        .holder(topic, group)
        .await?
        .filter(|h| h.id != cluster.me.id)
        .map(|h| h.url))
}

/// Keeps a held lease while the group's dispatcher runs; stops the
/// dispatcher when the lease is lost, and gives the lease back when the
/// group has had no member for a whole `lease_ttl` or the dispatcher
/// stopped.
async fn keep(broker: Arc<Shared>, topic: String, group: String, mut lease: Lease, h: GroupHandle) {
    let Some(cluster) = &broker.cluster else {
        return;
    };
    let ttl = cluster.leases.ttl();
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(lease.renew_every()) => {}
            _ = h.tx.closed() => break,
        }
        match cluster.leases.renew(&mut lease, &cluster.me).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%topic, %group, "another broker took the group's lease; stopping its dispatcher here");
                stop(&broker, &topic, &group, &h).await;
                return;
            }
            Err(e) if lease.expired() => {
                tracing::warn!(%topic, %group, error = %e, "cannot renew the group's lease in time; stopping its dispatcher here");
                stop(&broker, &topic, &group, &h).await;
                return;
            }
            Err(e) => tracing::debug!(%topic, %group, error = %e, "lease renewal failed; retrying"),
        }
        let members = match h.describe().await {
            Ok(s) => s.members.len(),
            Err(_) => break,
        };
        if members > 0 {
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= ttl {
            tracing::info!(%topic, %group, "no member for lease_ttl; giving the group's lease back");
            stop(&broker, &topic, &group, &h).await;
            break;
        }
    }
    cluster.leases.release(lease).await;
}

/// Stops the dispatcher (its position is committed) and forgets it here.
async fn stop(broker: &Shared, topic: &str, group: &str, h: &GroupHandle) {
    if let Some(mine) = broker.groups.take_one(topic, group)
        && !mine.tx.same_channel(&h.tx)
    {
        // A newer dispatcher for the same group: not this keeper's.
        broker.groups.put_back(topic, group, mine);
    }
    h.stop().await;
}

/// A random id for this broker process, written into its leases.
pub fn process_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Where the other brokers reach this one: `jetstream.advertise_url`, or
/// else this host's address on the route towards the first NATS server
/// (the address the NATS servers, and so the other brokers, can reach)
/// with the port it listens on.
pub async fn advertise_url(
    cfg: &crate::BrokerConfig,
    addr: std::net::SocketAddr,
) -> Result<String> {
    let j = &cfg.jetstream;
    if !j.advertise_url.is_empty() {
        return Ok(j.advertise_url.clone());
    }
    let scheme = if cfg.tls.cert.is_some() {
        "https"
    } else {
        "http"
    };
    let ip = if addr.ip().is_unspecified() {
        local_ip_towards(&j.servers).await.map_err(|e| {
            BrokerError::Unavailable(format!(
                "jetstream.advertise_url is unset and this host's address towards {} cannot be found ({e}); set it",
                j.servers
            ))
        })?
    } else {
        addr.ip()
    };
    Ok(format!(
        "{scheme}://{}",
        std::net::SocketAddr::new(ip, addr.port())
    ))
}

/// The local address the kernel would send from to reach the first of
/// `servers` (a UDP "connect" sends nothing).
async fn local_ip_towards(servers: &str) -> std::io::Result<std::net::IpAddr> {
    let first = servers.split(',').next().unwrap_or_default().trim();
    let host_port = first.split("://").last().unwrap_or(first);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    let target = tokio::net::lookup_host(host_port)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host_port} does not resolve")))?;
    let bind: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(target).await?;
    Ok(sock.local_addr()?.ip())
}
