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

fn run(block: &str, addr: &str) -> (bool, String) {
    let script = block.replace("localhost:50051", addr);
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

#[test]
fn the_api_docs_grpcurl_commands_work_as_written() {
    let (ok, version) = run("grpcurl -version", "");
    assert!(
        ok && version.contains("1.8.6"),
        "grpcurl -version: {version}"
    );

    let dir = tempfile::tempdir().unwrap();
    let b = BrokerProcess::spawn(dir.path(), &[]);
    let addr = b.addr.to_string();
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
        let (ok, out) = run(block, &addr);
        // Streaming examples end by -max-time, which grpcurl reports as
        // DeadlineExceeded; everything else must exit 0.
        if !block.contains("-max-time") {
            assert!(ok, "command failed:\n{block}\n{out}");
        }
        for n in *needles {
            assert!(out.contains(n), "output of\n{block}\nlacks {n}:\n{out}");
        }
    }
    b.sigterm();
}
