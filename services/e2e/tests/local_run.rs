//! `deploy/run-local.sh` brings the mesh up as processes, and the README's
//! grpcurl commands for the services ("Call the services") work as written
//! against it (with a real grpcurl that knows the services only through
//! reflection).

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::bin_dir;

/// `n` consecutive free ports, the first at or above `from`.
fn free_block(n: u16, from: u16) -> u16 {
    for base in (from..60000).step_by(97) {
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free consecutive ports");
}

/// Runs a README block against the local mesh: its ports moved to the
/// test's, and the compose demo's certificate folder to run-local.sh's.
fn grpcurl(block: &str, base: u16, certs: &std::path::Path) -> String {
    let mut script = block.replace("deploy/certs/", &format!("{}/", certs.display()));
    for (i, p) in (50051..50057).enumerate() {
        script = script.replace(
            &format!("localhost:{p}"),
            &format!("localhost:{}", base + i as u16),
        );
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", mesh_test_support::path_with_grpcurl())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script}\n{text}");
    text
}

/// The exposition text of the metrics endpoint on 127.0.0.1:port.
fn metrics(port: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    mesh_test_support::prometheus::metrics_text(addr)
        .unwrap_or_else(|e| panic!("GET /metrics on port {port}: {e}"))
}

#[test]
fn run_local_script_and_readme_service_commands() {
    let bins = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let base = free_block(6, 21000);
    let mbase = free_block(6, base + 6);
    let mut child = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/run-local.sh"
    ))
    .env("MESH_BIN_DIR", bins)
    // The broker refuses to start without `auth`; this local mesh runs
    // without authentication on purpose.
    .env("MESH_DATA", dir.path())
    .env("MESH_BASE_PORT", base.to_string())
    .env("MESH_METRICS_BASE_PORT", mbase.to_string())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("mesh running"),
        "run-local.sh said {line:?}"
    );

    // run-local.sh is secure by default: mutual TLS with the certificates
    // it made there, which the README's commands use as `admin`.
    let certs = dir.path().join("certs");
    assert!(line.starts_with("mesh running (mtls)"), "{line:?}");
    let readme = mesh_test_support::doc("README.md");
    let blocks = mesh_test_support::code_blocks(readme.section("### Call the services"), "sh");
    assert!(blocks.len() >= 2, "{blocks:?}");
    let placed = grpcurl(&blocks[0], base, &certs);
    assert!(placed.contains("\"orderId\": \"ord-"), "{placed}");
    assert!(placed.contains("ORDER_STATUS_PLACED"), "{placed}");
    // The order flows through billing and shipping, then reads back.
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        last = grpcurl(&blocks[1], base, &certs);
        if last.contains("ORDER_STATUS_SHIPPED") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(last.contains("ORDER_STATUS_SHIPPED"), "{last}");
    for b in &blocks[2..] {
        grpcurl(b, base, &certs);
    }
    // Every process serves Prometheus metrics; billing handled the order.
    for i in 0..6 {
        let body = metrics(mbase + i);
        assert!(body.contains("# TYPE "), "port {}: {body}", mbase + i);
    }
    // Billing counts the event when its handler returns, after its
    // publish: the order can be SHIPPED a moment before that.
    let series = "mesh_service_events_handled_total{topic=\"orders\",group=\"billing\"}";
    let start = Instant::now();
    let mut billing = metrics(mbase + 2);
    while !billing.contains(series) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        billing = metrics(mbase + 2);
    }
    assert!(billing.contains(series), "{billing}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(
                st.code().is_some(),
                "run-local.sh ended by a signal: {st:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run-local.sh did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every process it started is gone: the ports are free again. Polled,
    // not slept on: how soon the kernel lets go of them is not under test.
    let ports: Vec<u16> = (0..6).flat_map(|i| [base + i, mbase + i]).collect();
    let in_use = || -> Vec<u16> {
        ports
            .iter()
            .copied()
            .filter(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err())
            .collect()
    };
    let start = Instant::now();
    while !in_use().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(in_use(), Vec::<u16>::new(), "ports still in use");
}
