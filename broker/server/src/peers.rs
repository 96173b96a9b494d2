//! This broker's place among the others on one JetStream cluster: its
//! group leases, what it writes into them, and its clients of the other
//! brokers (see [`crate::cluster`] for how groups are claimed, kept and
//! forwarded).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_jetstream::{
    JetStreamStorage,
    lease::{Holder, Leases},
};
use mesh_proto::broker::v1::broker_client::BrokerClient;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::{BrokerError, Result};

/// This broker's place among the others.
pub struct Cluster {
    /// The backend itself, for the groups' durable consumers.
    pub js: Arc<JetStreamStorage>,
    pub leases: Leases,
    /// What this broker writes into the leases it holds.
    pub me: Holder,
    /// TLS towards the other brokers (their certificates name
    /// `jetstream.peer_tls_name`), with this broker's own certificate as
    /// the client identity; `None` when the brokers serve plaintext.
    pub(crate) peer_tls: Option<ClientTlsConfig>,
    /// Channels to the other brokers, by URL (each multiplexes every
    /// forwarded stream to that broker).
    pub(crate) peers: Mutex<HashMap<String, Channel>>,
    /// Claims run one at a time, so two sessions of this broker joining
    /// the same new group do not both try to take its lease.
    pub(crate) claiming: tokio::sync::Mutex<()>,
    /// The lease keepers, awaited at shutdown so leases are given back.
    pub(crate) keepers: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    pub fn new(
        js: Arc<JetStreamStorage>,
        leases: Leases,
        me: Holder,
        peer_tls: Option<ClientTlsConfig>,
    ) -> Cluster {
        Cluster {
            js,
            leases,
            me,
            peer_tls,
            peers: Mutex::new(HashMap::new()),
            claiming: tokio::sync::Mutex::new(()),
            keepers: Mutex::new(Vec::new()),
        }
    }

    /// A client of the broker at `url` (connected lazily, reused).
    pub fn peer(&self, url: &str) -> Result<BrokerClient<Channel>> {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(ch) = peers.get(url) {
            return Ok(client(ch.clone()));
        }
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| BrokerError::Unavailable(format!("peer broker URL {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        if let Some(tls) = &self.peer_tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| BrokerError::Unavailable(format!("TLS towards {url}: {e}")))?;
        }
        let ch = ep.connect_lazy();
        peers.insert(url.to_string(), ch.clone());
        Ok(client(ch))
    }

    /// Waits (bounded) for the lease keepers to give their leases back.
    pub async fn release_all(&self) {
        let keepers: Vec<_> = std::mem::take(&mut *self.keepers.lock().expect("keepers lock"));
        for k in keepers {
            let _ = tokio::time::timeout(Duration::from_secs(2), k).await;
        }
    }
}

fn client(ch: Channel) -> BrokerClient<Channel> {
    BrokerClient::new(ch)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}
