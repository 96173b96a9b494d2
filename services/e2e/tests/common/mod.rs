//! The mesh as real processes: the broker and services A–D (and the
//! tutorial consumer) started from the workspace's binaries, each on an
//! ephemeral 127.0.0.1 port, logging to files in a temp dir.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use mesh_proto::{
    analytics::v1::analytics_client::AnalyticsClient,
    billing::v1::billing_client::BillingClient,
    broker::v1::broker_client::BrokerClient,
    orders::v1::{Money, OrderItem, PlaceOrderRequest, orders_client::OrdersClient},
    shipping::v1::shipping_client::ShippingClient,
};
use mesh_sdk::mesh_runtime::tls::TlsConfig;
use tonic::transport::{Channel, Endpoint};

/// Shared by every test crate of the workspace. Allowed unused like the
/// rest of this module: not every test file polls.
#[allow(unused_imports)]
pub use mesh_test_support::{eventually, eventually_some};

/// Builds every binary of the workspace once per test process, with the
/// same cargo that runs the tests, so the processes run the current code.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--workspace", "--bins", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // Not the variables cargo set for this test binary: build scripts
        // (ring's) watch CARGO_MANIFEST_DIR, so inheriting it made every
        // build here and every `cargo test` after it rebuild ring, rustls,
        // tonic and everything above them.
        for (k, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            let set_for_tests = k == "CARGO_MANIFEST_DIR"
                || k == "CARGO_MANIFEST_PATH"
                || k == "CARGO_CRATE_NAME"
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_TMPDIR"
                || k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_");
            if set_for_tests {
                cmd.env_remove(k);
            }
        }
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build");
        assert!(st.success(), "cargo build --workspace --bins failed");
        dir
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port for a broker that may restart on it. Not from the kernel's
/// ephemeral range: a port the kernel handed out once can be handed to
/// another test's `bind(0)` while this broker is down, and its services
/// would then talk to the wrong broker. Each test process walks its own
/// slice of 20000..32000 and never reuses a port.
pub fn broker_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 60) as u16 * 200;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 200;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `bin` with `env` and waits for its "listening on ADDR" line.
    pub fn spawn(bin: &str, name: &str, dir: &Path, env: &[(String, String)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(bin_dir().join(bin));
        if bin == "broker" {
            // The broker refuses to start without `auth`; plaintext tests
            // run without authentication on purpose. `env` may say
            // otherwise.
            cmd.env("BROKER__AUTH", "none");
        }
        cmd.current_dir(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            // Metrics off unless `env` sets them: many meshes run at once,
            // and the default ports are fixed.
            .env(format!("{}__METRICS_LISTEN", bin.to_uppercase()), "");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name} did not start: {line:?}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        // Nothing else is printed on stdout; drop the pipe reader in a thread
        // so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Proc {
            name: name.to_string(),
            child,
            addr,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        // Generous: draining on a loaded 2-core machine takes a while, and
        // only the exit (not its speed) is under test.
        for _ in 0..600 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("{} did not exit within 30 s of SIGTERM", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const SERVICES: [&str; 4] = ["orders", "billing", "shipping", "analytics"];

/// A broker on a fixed port (so it can restart where the services expect
/// it) and any of the services.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub broker_port: u16,
    pub broker: Option<Proc>,
    pub services: std::collections::BTreeMap<String, Proc>,
    /// Environment given to every process started from now on.
    pub env: Vec<(String, String)>,
    /// With TLS: the development PKI's folder (`ca.crt`, `<name>.crt`,
    /// `<name>.key` for every process and `admin`). The broker then runs
    /// with auth = "mtls" and the demo ACL, every service with its own
    /// certificate, and the test's clients as `admin`.
    pub pki: Option<PathBuf>,
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `[tls]` settings of principal `name` in the PKI at `pki`.
pub fn tls_of(pki: &Path, name: &str) -> TlsConfig {
    TlsConfig {
        ca: Some(pki.join("ca.crt")),
        cert: Some(pki.join(format!("{name}.crt"))),
        key: Some(pki.join(format!("{name}.key"))),
        ..Default::default()
    }
}

/// `PREFIX__TLS__CA`, `..CERT` and `..KEY` for principal `name`'s files in
/// `pki`.
pub fn tls_env(prefix: &str, pki: &Path, name: &str) -> Vec<(String, String)> {
    ["ca", "crt", "key"]
        .into_iter()
        .zip(["CA", "CERT", "KEY"])
        .map(|(ext, key)| {
            let file = if ext == "ca" {
                "ca.crt".to_string()
            } else {
                format!("{name}.{ext}")
            };
            (
                format!("{prefix}__TLS__{key}"),
                pki.join(file).display().to_string(),
            )
        })
        .collect()
}

impl Mesh {
    pub fn new() -> Mesh {
        let mut m = Mesh::without_broker();
        m.start_broker();
        m
    }

    /// A mesh whose broker is not started yet.
    pub fn without_broker() -> Mesh {
        Mesh {
            dir: tempfile::tempdir().unwrap(),
            broker_port: broker_port(),
            broker: None,
            services: Default::default(),
            env: Vec::new(),
            pki: None,
        }
    }

    /// A mesh over mutual TLS whose broker is not started yet: a fresh
    /// development PKI in `<dir>/pki`, and a `broker.toml` (read from the
    /// broker's working directory) that creates the business topics, as
    /// services under the least-privilege ACL may not.
    pub fn secure_without_broker() -> Mesh {
        let mut m = Mesh::without_broker();
        let pki = m.dir.path().join("pki");
        mesh_certs::write_dev_pki(&pki, &mesh_certs::Options::default()).unwrap();
        std::fs::write(
            m.dir.path().join("broker.toml"),
            "[[topics]]\nname = \"orders\"\n\n[[topics]]\nname = \"payments\"\n\n\
             [[topics]]\nname = \"shipments\"\n",
        )
        .unwrap();
        m.pki = Some(pki);
        m
    }

    fn scheme(&self) -> &'static str {
        if self.pki.is_some() { "https" } else { "http" }
    }

    pub fn broker_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.broker_port)
    }

    /// The TLS settings of the test's own clients: `admin`'s certificate
    /// (the ACL lets it do everything), or none in a plaintext mesh.
    pub fn admin_tls(&self) -> TlsConfig {
        self.pki
            .as_deref()
            .map_or_else(TlsConfig::default, |p| tls_of(p, "admin"))
    }

    /// A broker link for the test's own producers and readers, as `admin`.
    pub fn link(&self) -> mesh_sdk::Broker {
        mesh_sdk::Broker::new(&self.broker_url(), &self.admin_tls(), None).unwrap()
    }

    /// A channel to `url` as `admin` (over TLS in a secure mesh).
    pub async fn channel(&self, url: &str) -> Channel {
        let ep = match &self.pki {
            None => Endpoint::from_shared(url.to_string()).unwrap(),
            Some(_) => {
                mesh_sdk::mesh_runtime::tls::endpoint("url", url, &self.admin_tls()).unwrap()
            }
        };
        ep.connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e:?}"))
    }

    pub fn start_broker(&mut self) {
        let mut env = Vec::new();
        if let Some(pki) = &self.pki {
            env.push(("BROKER__AUTH".to_string(), "mtls".to_string()));
            env.extend(tls_env("BROKER", pki, "broker"));
            env.push((
                "BROKER__ACL_FILE".into(),
                repo_root()
                    .join("deploy/mesh/acl.toml")
                    .display()
                    .to_string(),
            ));
        }
        env.extend(self.env.clone());
        env.extend([
            (
                "BROKER__LISTEN".to_string(),
                format!("127.0.0.1:{}", self.broker_port),
            ),
            (
                "BROKER__DATA_DIR".into(),
                self.dir.path().join("broker").display().to_string(),
            ),
            ("BROKER__DELIVERY__ACK_DEADLINE".into(), "3s".into()),
            ("BROKER__DELIVERY__COMMIT_INTERVAL".into(), "20ms".into()),
            ("BROKER__DELIVERY__MIN_BACKOFF".into(), "50ms".into()),
            ("BROKER__DELIVERY__MAX_BACKOFF".into(), "1s".into()),
        ]);
        self.broker = Some(Proc::spawn("broker", "broker", self.dir.path(), &env));
    }

    pub fn start(&mut self, service: &str) {
        self.start_as(service, service);
    }

    /// Starts a process of `service` known (and logging) as `name`: a
    /// replica next to others of the same service, which share its
    /// consumer groups.
    pub fn start_as(&mut self, service: &str, name: &str) {
        let prefix = service.to_uppercase();
        let mut env = Vec::new();
        if let Some(pki) = &self.pki {
            env.extend(tls_env(&prefix, pki, service));
        }
        env.extend(self.env.clone());
        env.extend([
            (format!("{prefix}__LISTEN"), "127.0.0.1:0".to_string()),
            (format!("{prefix}__BROKER"), self.broker_url()),
        ]);
        let p = Proc::spawn(service, name, self.dir.path(), &env);
        self.services.insert(name.to_string(), p);
    }

    pub fn start_all(&mut self) {
        for s in SERVICES {
            self.start(s);
        }
    }

    pub fn url(&self, service: &str) -> String {
        format!("{}://{}", self.scheme(), self.services[service].addr)
    }

    pub fn take(&mut self, service: &str) -> Proc {
        self.services.remove(service).unwrap()
    }

    pub async fn orders(&self) -> OrdersClient<Channel> {
        OrdersClient::new(self.channel(&self.url("orders")).await)
    }
    pub async fn billing(&self) -> BillingClient<Channel> {
        BillingClient::new(self.channel(&self.url("billing")).await)
    }
    pub async fn shipping(&self) -> ShippingClient<Channel> {
        ShippingClient::new(self.channel(&self.url("shipping")).await)
    }
    pub async fn analytics(&self) -> AnalyticsClient<Channel> {
        AnalyticsClient::new(self.channel(&self.url("analytics")).await)
    }
    pub async fn broker_client(&self) -> BrokerClient<Channel> {
        BrokerClient::new(self.channel(&self.broker_url()).await)
    }

    /// Every process's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(to) = std::env::var("MESH_E2E_KEEP_LOGS") {
            // Copies every log for a post-mortem.
            let dest = std::path::Path::new(&to).join(self.dir.path().file_name().unwrap());
            let _ = std::fs::create_dir_all(&dest);
            let _ = Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", self.dir.path().display()))
                .arg(&dest)
                .status();
            s += &format!("(full logs in {})\n", dest.display());
        }
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                s += &format!(
                    "==== {}\n{}\n",
                    e.path().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        s
    }
}

pub fn order(key: &str, customer: &str, amount_minor: i64) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: vec![OrderItem {
            sku: "sku-1".into(),
            quantity: 1,
            unit_price: Some(Money {
                currency: "EUR".into(),
                amount_minor,
            }),
        }],
    }
}

/// Events of `topic` by type, as stored in the log: (type, subject) pairs.
pub async fn log_events(broker: &str, topic: &str) -> Vec<(String, String)> {
    log_events_via(&mesh_sdk::Broker::plaintext(broker).unwrap(), topic).await
}

/// [`log_events`] over a given link (TLS, a token).
pub async fn log_events_via(broker: &mesh_sdk::Broker, topic: &str) -> Vec<(String, String)> {
    let stop = mesh_sdk::CancellationToken::new();
    let mut out = Vec::new();
    mesh_sdk::tail::replay(broker, topic, &stop, |d| {
        out.push((d.event.r#type.clone(), d.event.subject.clone()))
    })
    .await
    .unwrap();
    out
}

/// How many events of `type` each subject has in `topic`.
pub async fn count_by_subject(
    broker: &str,
    topic: &str,
    ty: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (t, s) in log_events(broker, topic).await {
        if t == ty {
            *m.entry(s).or_insert(0) += 1;
        }
    }
    m
}
