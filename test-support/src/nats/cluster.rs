//! A real nats-server cluster for tests: 1 standalone server or 3 clustered
//! ones with JetStream, on free ports of 127.0.0.1, each with its own config
//! file, store directory and log file inside a temporary directory. Nodes
//! are indexed from 0; node `i` is the server named `n{i+1}`.

use std::{cell::RefCell, fmt::Write as _, time::Duration};

use super::{
    binary::nats_server,
    monitor::{self, MetaView},
    node::{Node, Ports, free_ports},
};
use crate::eventually_some;

/// How long a cluster may take to become ready: a fresh 3-node meta group
/// elects its leader in a few seconds, more on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-cluster starts tried when a node finds its port taken.
const START_ATTEMPTS: usize = 3;
/// Log lines of each node quoted in a panic message.
const TAIL_LINES: usize = 20;
/// What nats-server logs for each failed `/healthz` poll: left out of the
/// tails in panic messages, where it would crowd out the lines that say why
/// (the message already quotes the last health error).
const HEALTHCHECK_NOISE: &str = "Healthcheck failed";

/// A running JetStream cluster; dropping it kills every node and removes its
/// files.
pub struct NatsCluster {
    /// In index order; dropped (killed) before `dir` is removed.
    nodes: Vec<Node>,
    /// Holds every node's config, store and log; removed on drop.
    dir: tempfile::TempDir,
}

/// Why a cluster did not become ready.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("node {name} could not bind one of its ports (taken by another process):\n{tail}")]
    PortTaken { name: String, tail: String },
    #[error("node {name} exited ({status}) before the cluster was ready:\n{tail}")]
    Exited {
        name: String,
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("the cluster was not ready within {READY_TIMEOUT:?}: {last}\n{tails}")]
    NotReady { last: String, tails: String },
    #[error("cannot set up node {name}: {source}")]
    Setup {
        name: String,
        source: std::io::Error,
    },
}

impl NatsCluster {
    /// Starts `n` nodes (1, or 3 for a cluster) and waits until they are
    /// ready (see [`NatsCluster::wait_ready`]). If a node finds a port taken,
    /// the whole cluster is started again on new ports, a few times. Panics
    /// with the nodes' log tails if it cannot.
    pub async fn start(n: usize) -> NatsCluster {
        assert!(
            n == 1 || n == 3,
            "NatsCluster::start({n}): only 1 or 3 nodes"
        );
        let bin = nats_server();
        let mut attempt = 1;
        loop {
            let result = match Self::spawn(n, &bin) {
                Ok(cluster) => cluster.ready().await.map(|()| cluster),
                Err(e) => Err(e),
            };
            match result {
                Ok(cluster) => return cluster,
                Err(StartError::PortTaken { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                Err(e) => panic!("NatsCluster::start({n}), attempt {attempt}: {e}"),
            }
        }
    }

    fn spawn(n: usize, bin: &std::path::Path) -> Result<NatsCluster, StartError> {
        let setup = |name: &str| {
            let name = name.to_string();
            move |source| StartError::Setup { name, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("nats-cluster.")
            .tempdir()
            .map_err(setup("(temp dir)"))?;
        let ports = free_ports(n).map_err(setup("(ports)"))?;
        // A standalone server for n = 1: no cluster block, as a developer
        // runs `nats-server -js`; R1 streams only.
        let routes: Vec<u16> = if n > 1 {
            ports.iter().map(|p| p.route).collect()
        } else {
            Vec::new()
        };
        let mut nodes = Vec::with_capacity(n);
        for (i, p) in ports.into_iter().enumerate() {
            let name = format!("n{}", i + 1);
            let node =
                Node::create(&dir.path().join(&name), &name, p, &routes).map_err(setup(&name))?;
            node.spawn(bin).map_err(setup(&name))?;
            nodes.push(node);
        }
        Ok(NatsCluster { nodes, dir })
    }

    /// Waits until every running node is ready, panicking (with every
    /// node's log tail) after a bounded time or as soon as a node exits.
    /// Ready means: each running node's `/healthz` is ok (JetStream enabled,
    /// meta leader known, its streams and consumers recovered and current);
    /// for 3 nodes also that each running node's `/jsz` reports the same
    /// meta leader, itself running, with a meta group of 3, and that the
    /// leader sees every other running node as a current peer, so the
    /// cluster has formed and not just one node come up.
    pub async fn wait_ready(&self) {
        if let Err(e) = self.ready().await {
            panic!("NatsCluster::wait_ready: {e}");
        }
    }

    async fn ready(&self) -> Result<(), StartError> {
        // What the last poll saw, for the timeout message.
        let last = RefCell::new(String::from("no poll finished"));
        let outcome = eventually_some(READY_TIMEOUT, || async {
            match self.poll_ready().await {
                Ok(Ok(())) => Some(Ok(())),
                Ok(Err(waiting)) => {
                    *last.borrow_mut() = waiting;
                    None
                }
                Err(e) => Some(Err(e)),
            }
        })
        .await;
        outcome.unwrap_or_else(|| {
            Err(StartError::NotReady {
                last: last.into_inner(),
                tails: self.log_tails(),
            })
        })
    }

    /// One look at every running node: `Ok(Ok)` if ready, `Ok(Err(what we
    /// wait for))` if not yet, `Err` if a node has exited.
    async fn poll_ready(&self) -> Result<Result<(), String>, StartError> {
        let mut views = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            if let Some(status) = node.exited() {
                let (name, tail) = (
                    node.name.clone(),
                    node.log_tail_without(TAIL_LINES, Some(HEALTHCHECK_NOISE)),
                );
                return Err(if node.port_was_taken() {
                    StartError::PortTaken { name, tail }
                } else {
                    StartError::Exited { name, status, tail }
                });
            }
            match monitor::meta_view(node.ports.monitor).await {
                Ok(v) => views.push((node, v)),
                Err(e) => return Ok(Err(format!("{}: {e}", node.name))),
            }
        }
        Ok(self.judge(&views))
    }

    /// Whether the views of the running nodes add up to a ready cluster.
    fn judge(&self, views: &[(&Node, MetaView)]) -> Result<(), String> {
        if let Some((node, v)) = views.iter().find(|(_, v)| !v.healthy) {
            return Err(format!("{} /healthz: {}", node.name, v.health_error));
        }
        if self.nodes.len() == 1 {
            return Ok(());
        }
        let Some((_, first)) = views.first() else {
            return Ok(()); // no node running: nothing to wait for
        };
        let leader = first.leader.clone().ok_or("no meta leader yet")?;
        for (node, v) in views {
            if v.leader.as_ref() != Some(&leader) {
                return Err(format!(
                    "{} sees meta leader {:?}, not {leader}",
                    node.name, v.leader
                ));
            }
            if v.cluster_size != Some(self.nodes.len() as u64) {
                return Err(format!(
                    "{} meta cluster_size {:?}",
                    node.name, v.cluster_size
                ));
            }
        }
        let (_, lv) = views
            .iter()
            .find(|(n, _)| n.name == leader)
            .ok_or_else(|| format!("meta leader {leader} is not a running node"))?;
        for (node, _) in views {
            if node.name != leader && !lv.current_peers.contains(&node.name) {
                return Err(format!(
                    "leader {leader} does not see {} as current",
                    node.name
                ));
            }
        }
        Ok(())
    }

    /// How many nodes the cluster has (running or killed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has 1 or 3 nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, comma-separated
    /// (`nats://127.0.0.1:p1,nats://127.0.0.1:p2,...`), as NATS clients
    /// take a server list.
    /// The process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.pid()).collect()
    }

    pub fn urls(&self) -> String {
        let urls: Vec<String> = (0..self.len()).map(|i| self.client_url(i)).collect();
        urls.join(",")
    }

    /// Node `i`'s client URL, `nats://127.0.0.1:<port>`.
    pub fn client_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.node(i).ports.client)
    }

    /// Node `i`'s HTTP monitor, `http://127.0.0.1:<port>`.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.node(i).ports.monitor)
    }

    /// Node `i`'s server name, `n{i+1}`: what JetStream reports as leader.
    pub fn name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// Whether node `i` is running (not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.node(i).is_running()
    }

    /// Kills node `i` with SIGKILL (no lame-duck, no flush: a crash) and
    /// reaps it. Its store and ports are kept for [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        self.node(i).kill();
    }

    /// Starts node `i` again (after [`NatsCluster::kill`]) with the same
    /// config, ports and store, then waits until the cluster is ready with
    /// it (see [`NatsCluster::wait_ready`]).
    pub async fn restart(&mut self, i: usize) {
        let node = self.node(i);
        assert!(
            !node.is_running(),
            "NatsCluster::restart({i}): {} is running; kill it first",
            node.name
        );
        if let Err(e) = node.spawn(&nats_server()) {
            panic!("NatsCluster::restart({i}): cannot start {}: {e}", node.name);
        }
        if let Err(e) = self.ready().await {
            panic!("NatsCluster::restart({i}): {e}");
        }
    }

    /// The index of the running node that says it leads stream `stream`
    /// (in any account), or `None` if none does right now (no such stream,
    /// or an election under way). One look, no waiting: wrap it in
    /// `eventually_some` to wait for a leader.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.is_running()
                && monitor::leads_stream(node.ports.monitor, &node.name, stream)
                    .await
                    .unwrap_or(false)
            {
                return Some(i);
            }
        }
        None
    }

    /// The index of the JetStream meta leader as the running nodes agree on
    /// it, or `None` (no agreement, or a standalone server). One look.
    pub async fn meta_leader(&self) -> Option<usize> {
        let mut leader = None;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let seen = monitor::meta_view(node.ports.monitor).await.ok()?.leader?;
            if leader.get_or_insert_with(|| seen.clone()) != &seen {
                return None;
            }
        }
        let leader = leader?;
        self.nodes
            .iter()
            .position(|n| n.name == leader && n.is_running())
    }

    /// The last `lines` lines of node `i`'s log (every run of it).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        self.node(i).log_tail(lines)
    }

    /// The directory holding each node's `nats.conf`, `store/` and
    /// `nats.log` (under `n1/`, `n2/`, ...); removed on drop.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("node {i} of a {}-node cluster", self.nodes.len()))
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let state = if node.is_running() {
                "running"
            } else {
                "killed"
            };
            let _ = write!(
                out,
                "--- {} ({state}, {}), last {TAIL_LINES} lines but the health checks:\n{}\n",
                node.name,
                node.log_path().display(),
                node.log_tail_without(TAIL_LINES, Some(HEALTHCHECK_NOISE))
            );
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<Ports> = self.nodes.iter().map(|n| n.ports).collect();
        f.debug_struct("NatsCluster")
            .field("dir", &self.dir.path())
            .field("ports", &ports)
            .finish()
    }
}
