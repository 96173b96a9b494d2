//! Bearer tokens: the secret file for the client, the hash line for the
//! broker, and idempotence.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use mesh_certs::{Token, token_hash, write_token};
use ring::digest::{SHA256, digest};

fn sha256_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_token_file_holds_the_secret_and_tokens_holds_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let report = write_token(dir.path(), "console", None).unwrap();
    assert!(report.token_created && report.line_appended);
    let token = fs::read_to_string(dir.path().join("console.token")).unwrap();
    assert_eq!(token.len(), 64);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let mode = fs::metadata(dir.path().join("console.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let tokens = fs::read_to_string(dir.path().join("tokens")).unwrap();
    assert_eq!(
        tokens,
        format!("console sha256:{}\n", sha256_hex(token.as_bytes()))
    );
    assert!(!tokens.contains(&token));
}

#[test]
fn running_again_keeps_the_token_and_does_not_repeat_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write_token(dir.path(), "console", None).unwrap();
    let token = fs::read(dir.path().join("console.token")).unwrap();
    let report = write_token(dir.path(), "console", None).unwrap();
    assert!(!report.token_created && !report.line_appended);
    assert_eq!(fs::read(dir.path().join("console.token")).unwrap(), token);
    let tokens = fs::read_to_string(dir.path().join("tokens")).unwrap();
    assert_eq!(tokens.lines().count(), 1);
}

#[test]
fn tokens_for_several_names_share_the_broker_file() {
    let dir = tempfile::tempdir().unwrap();
    // A hand-edited file without a final newline gets one before our line.
    fs::write(dir.path().join("tokens"), "ops sha256:00").unwrap();
    write_token(dir.path(), "console", None).unwrap();
    write_token(dir.path(), "ci", None).unwrap();
    let tokens = fs::read_to_string(dir.path().join("tokens")).unwrap();
    let names: Vec<&str> = tokens
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["ops", "console", "ci"]);
}

#[test]
fn in_memory_tokens_hash_like_the_files() {
    let token = Token::generate().unwrap();
    assert_eq!(token.hash(), token_hash(token.as_str()));
    assert_eq!(
        token.hash(),
        format!("sha256:{}", sha256_hex(token.as_str().as_bytes()))
    );
    assert_eq!(token.line("billing"), format!("billing {}", token.hash()));
    assert_ne!(Token::generate().unwrap(), token);
    // Debug output never shows the secret.
    assert!(!format!("{token:?}").contains(token.as_str()));
}

#[test]
fn a_bad_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(write_token(dir.path(), "../x", None).is_err());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_empty_existing_token_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("console.token"), "").unwrap();
    let error = write_token(dir.path(), "console", None).unwrap_err();
    assert!(error.to_string().contains("console.token"), "{error}");
    assert!(!dir.path().join("tokens").exists());
}
