//! One nats-server process of a test cluster: its ports, config file, store
//! directory and log file, which all outlive the process so a restart comes
//! back as the same server with the same data.

use std::{
    fs::OpenOptions,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
};

/// The three ports of one node, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub client: u16,
    /// The cluster route port the other nodes dial.
    pub route: u16,
    /// The HTTP monitor (`/healthz`, `/jsz`).
    pub monitor: u16,
}

/// `n` sets of free ports. Every listener is held until all are bound, so the
/// ports are distinct; another process can still take one before
/// nats-server binds it, which `NatsCluster::start` retries.
pub(crate) fn free_ports(n: usize) -> std::io::Result<Vec<Ports>> {
    let listeners = (0..3 * n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(ports
        .chunks(3)
        .map(|c| Ports {
            client: c[0],
            route: c[1],
            monitor: c[2],
        })
        .collect())
}

pub(crate) struct Node {
    /// `n1`, `n2`, ...: the server name, which JetStream reports as leader.
    pub name: String,
    pub ports: Ports,
    /// The config file, written once so a restart runs the same config.
    config: PathBuf,
    /// stdout and stderr of every run of this node, appended.
    log: PathBuf,
    /// The running process; `None` once killed. A mutex so the readiness
    /// poll (which holds `&self` across awaits) can see an early exit.
    child: Mutex<Option<Child>>,
}

impl Node {
    /// Writes the node's config (and creates its store directory) under
    /// `dir`. `routes` holds every node's route port, itself included (a
    /// route to itself is ignored); empty for a standalone server.
    pub fn create(dir: &Path, name: &str, ports: Ports, routes: &[u16]) -> std::io::Result<Self> {
        let store = dir.join("store");
        std::fs::create_dir_all(&store)?;
        let config = dir.join("nats.conf");
        std::fs::write(&config, config_text(name, ports, &store, routes))?;
        Ok(Node {
            name: name.to_string(),
            ports,
            config,
            log: dir.join("nats.log"),
            child: Mutex::new(None),
        })
    }

    /// Starts the process; its output goes to the node's log file.
    pub fn spawn(&self, bin: &Path) -> std::io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        *self.lock() = Some(child);
        Ok(())
    }

    /// SIGKILL, then reap, so the ports are free when this returns. No-op
    /// if not running.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.lock().is_some()
    }

    /// The exit status if the process was started and has exited by itself.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.lock()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether the log says a listener could not bind (a port was taken
    /// between `free_ports` and the start).
    pub fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("address already in use"))
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.log_tail_without(lines, None)
    }

    /// The last `lines` lines of the node's log, leaving out lines that
    /// contain `noise`.
    pub fn log_tail_without(&self, lines: usize, noise: Option<&str>) -> String {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => {
                let kept: Vec<&str> = text
                    .lines()
                    .filter(|l| noise.is_none_or(|n| !l.contains(n)))
                    .collect();
                kept[kept.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(no log at {}: {e})", self.log.display()),
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        // A panic while holding it cannot leave the Option half-written.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The node's config: the settings the backend expects of a production
/// cluster (fsync on every write, 8 MiB messages), on loopback ports.
fn config_text(name: &str, ports: Ports, store: &Path, routes: &[u16]) -> String {
    let mut text = format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{monitor}\n\
         max_payload: 8MB\n\
         jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n",
        client = ports.client,
        monitor = ports.monitor,
        store = store.display(),
    );
    if !routes.is_empty() {
        let routes: Vec<String> = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        text.push_str(&format!(
            "cluster {{\n  name: mesh\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
            ports.route,
            routes.join(", ")
        ));
    }
    text
}
