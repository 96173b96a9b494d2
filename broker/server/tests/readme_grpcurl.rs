//! Runs the grpcurl commands of docs/broker-api.md ("Calls, with grpcurl"),
//! as written, with a real grpcurl 1.8.6
//! (from PATH, or installed into target/tools by mesh-test-support) against
//! the real broker binary. Only the address is changed, to the test's
//! ephemeral port.

mod common;

use std::process::Command;

use common::BrokerProcess;

/// The ```sh blocks of the API doc's examples that call grpcurl.
fn doc_commands() -> Vec<String> {
    let doc = mesh_test_support::doc("docs/broker-api.md");
    mesh_test_support::code_blocks(doc.section("## Calls, with grpcurl"), "sh")
        .into_iter()
        .filter(|b| b.contains("grpcurl "))
        .collect()
}

/// Runs `block` against `addr`, with `-plaintext` replaced by `tls` when
/// given (the flags of a client certificate).
fn run_as(block: &str, addr: &str, tls: Option<&str>) -> (bool, String) {
    let mut script = block.replace("localhost:50051", addr);
    if let Some(flags) = tls {
        script = script.replace("-plaintext", flags);
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", mesh_test_support::path_with_grpcurl())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run(block: &str, addr: &str) -> (bool, String) {
    run_as(block, addr, None)
}

#[test]
fn the_api_docs_grpcurl_commands_work_as_written() {
    let (ok, version) = run("grpcurl -version", "");
    assert!(
        ok && version.contains("1.8.6"),
        "grpcurl -version: {version}"
    );
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::spawn(dir.path(), &[]);
    check_blocks(&b.addr.to_string(), None);
    b.sigterm();
}

/// The same commands as `admin` against a broker with mutual TLS and the
/// demo's policy, with `-plaintext` replaced as the doc says.
#[test]
fn the_api_docs_grpcurl_commands_work_with_mutual_tls_as_admin() {
    let pki = tempfile::tempdir().unwrap();
    mesh_certs::write_dev_pki(pki.path(), &mesh_certs::Options::default()).unwrap();
    let f = |n: &str| pki.path().join(n).display().to_string();
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mesh/acl.toml");
    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::spawn(
        dir.path(),
        &[
            ("BROKER__AUTH", "mtls"),
            ("BROKER__TLS__CA", &f("ca.crt")),
            ("BROKER__TLS__CERT", &f("broker.crt")),
            ("BROKER__TLS__KEY", &f("broker.key")),
            ("BROKER__ACL_FILE", &acl.display().to_string()),
        ],
    );
    let flags = format!(
        "-cacert {} -cert {} -key {}",
        f("ca.crt"),
        f("admin.crt"),
        f("admin.key")
    );
    // The certificate names localhost, not 127.0.0.1's reverse name.
    check_blocks(&format!("localhost:{}", b.addr.port()), Some(&flags));
    b.sigterm();
}

fn check_blocks(addr: &str, tls: Option<&str>) {
    let blocks = doc_commands();
    // The order of the doc: create, publish, tail, group+ack, describe,
    // dead letters, seek.
    let expect: &[(&str, &[&str])] = &[
        ("CreateTopic", &["\"name\": \"orders\""]),
        (
            "PublishUnary",
            &["\"offset\": \"0\"", "\"duplicate\": false"],
        ),
        ("auto_ack", &["\"id\": \"order-1\"", "\"caughtUp\""]),
        (
            "\"group\":\"billing\",\"max_in_flight\"",
            &["\"memberId\": \"billing-1\"", "\"id\": \"order-1\""],
        ),
        (
            "DescribeGroup",
            &["\"committedOffset\": \"1\"", "\"lagEvents\": \"0\""],
        ),
        (
            "ListDeadLetters",
            &[
                "\"deadLetterTopic\": \"orders.billing.dlq\"",
                "\"redriven\": \"0\"",
                "\"purged\": \"0\"",
            ],
        ),
        (
            "SeekGroup",
            &[
                "\"eventsToRedeliver\": \"1\"",
                "\"applied\": true",
                "\"newOffset\": \"0\"",
            ],
        ),
    ];
    assert_eq!(
        blocks.len(),
        expect.len(),
        "docs/broker-api.md grpcurl blocks changed: {blocks:#?}"
    );
    for (block, (marker, needles)) in blocks.iter().zip(expect) {
        assert!(
            block.contains(marker),
            "expected a {marker} block, got {block}"
        );
        let (ok, out) = run_as(block, addr, tls);
        // Streaming examples end by -max-time, which grpcurl reports as
        // DeadlineExceeded; everything else must exit 0.
        if !block.contains("-max-time") {
            assert!(ok, "command failed:\n{block}\n{out}");
        }
        for n in *needles {
            assert!(out.contains(n), "output of\n{block}\nlacks {n}:\n{out}");
        }
    }
}
