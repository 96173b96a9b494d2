//! The `mesh-certs` binary as compose runs it.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn mesh_certs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-certs"))
        .args(args)
        .output()
        .expect("run mesh-certs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn out(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
fn dev_prints_what_it_created_then_what_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let first = mesh_certs(&[
        "dev",
        "--out",
        out(&certs),
        "--names",
        "broker,billing",
        "--days",
        "30",
    ]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    for name in [
        "ca.crt",
        "ca.key",
        "broker.crt",
        "broker.key",
        "billing.crt",
        "billing.key",
        "log.key",
    ] {
        assert!(
            stdout.contains(&format!("created  {}", certs.join(name).display())),
            "{stdout}"
        );
    }
    assert!(!certs.join("orders.crt").exists());

    let second = mesh_certs(&["dev", "--out", out(&certs), "--names", "broker,billing"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let stdout = text(&second.stdout);
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("kept ")), "{stdout}");
    // Secrets never reach the terminal.
    let log_key = fs::read_to_string(certs.join("log.key")).unwrap();
    let secret = log_key.lines().nth(1).unwrap().split(' ').nth(1).unwrap();
    assert!(!text(&first.stdout).contains(secret));
}

#[test]
fn token_never_prints_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let run = mesh_certs(&["token", "console", "--out", out(dir.path())]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let token = fs::read_to_string(dir.path().join("console.token")).unwrap();
    assert!(!text(&run.stdout).contains(&token));
    assert!(!text(&run.stderr).contains(&token));
    assert!(text(&run.stdout).contains("console.token"));
}

#[test]
fn a_bad_service_owner_names_the_option_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let run = mesh_certs(&["dev", "--out", out(&certs), "--service-owner", "nobody"]);
    assert!(!run.status.success());
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains("--service-owner") && stderr.contains("UID:GID"),
        "{stderr}"
    );
    assert!(!certs.exists());
}

#[test]
fn an_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
    let run = mesh_certs(&["dev", "--out", out(dir.path())]);
    assert!(!run.status.success());
    let stderr = text(&run.stderr);
    assert!(stderr.starts_with("mesh-certs: error: "), "{stderr}");
    assert!(
        stderr.contains("ca.crt exists but") && stderr.contains("ca.key"),
        "{stderr}"
    );
}

#[test]
fn help_shows_examples() {
    for sub in ["dev", "token"] {
        let run = mesh_certs(&[sub, "--help"]);
        assert!(run.status.success());
        let stdout = text(&run.stdout);
        assert!(
            stdout.contains("Examples:") && stdout.contains("--out"),
            "{stdout}"
        );
    }
}
