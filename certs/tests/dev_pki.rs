//! `write_dev_pki` on a real folder: what it writes, modes and owners, and
//! that running it again keeps everything (keys byte for byte).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mesh_certs::{Action, Ca, CertsError, DEFAULT_NAMES, LeafSpec, Options, Owner, write_dev_pki};

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn expected_files() -> Vec<String> {
    let mut files = vec![
        "ca.crt".to_owned(),
        "ca.key".to_owned(),
        "log.key".to_owned(),
    ];
    for name in DEFAULT_NAMES {
        files.push(format!("{name}.crt"));
        files.push(format!("{name}.key"));
    }
    files.sort();
    files
}

#[test]
fn writes_the_ca_every_leaf_and_log_key_with_private_modes() {
    let dir = tempfile::tempdir().unwrap();
    let report = write_dev_pki(dir.path(), &Options::default()).unwrap();
    let names: Vec<String> = snapshot(dir.path()).into_keys().collect();
    assert_eq!(names, expected_files());
    assert!(report.files.iter().all(|(_, a)| *a == Action::Created));
    for name in expected_files() {
        let path = dir.path().join(&name);
        let want = if name.ends_with(".crt") { 0o644 } else { 0o600 };
        assert_eq!(mode(&path), want, "{name}");
    }
    // Every leaf chains to the CA written beside it.
    let ca = Ca::from_pem(
        &fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        &fs::read_to_string(dir.path().join("ca.key")).unwrap(),
    )
    .unwrap();
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
    let ca_cert = ca_pem.parse_x509().unwrap();
    for name in DEFAULT_NAMES {
        let pem = fs::read(dir.path().join(format!("{name}.crt"))).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), *name);
    }
}

#[test]
fn log_key_is_a_comment_then_key_one_in_64_lowercase_hex() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    let text = fs::read_to_string(dir.path().join("log.key")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("# "));
    let (id, hex) = lines[1].split_once(' ').unwrap();
    assert_eq!(id, "1");
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    // Another folder gets another key.
    let other = tempfile::tempdir().unwrap();
    write_dev_pki(other.path(), &Options::default()).unwrap();
    assert_ne!(
        fs::read_to_string(other.path().join("log.key")).unwrap(),
        text
    );
}

#[test]
fn a_second_run_keeps_every_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    let before = snapshot(dir.path());
    let report = write_dev_pki(dir.path(), &Options::default()).unwrap();
    assert!(
        report.files.iter().all(|(_, a)| *a == Action::Kept),
        "{report}"
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_removed_certificate_is_reissued_for_the_kept_key() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    let before = snapshot(dir.path());
    fs::remove_file(dir.path().join("billing.crt")).unwrap();
    let report = write_dev_pki(dir.path(), &Options::default()).unwrap();
    assert_eq!(report.action("billing.crt"), Some(&Action::Created));
    assert_eq!(report.action("billing.key"), Some(&Action::Kept));
    let after = snapshot(dir.path());
    for (name, bytes) in &before {
        if name != "billing.crt" {
            assert_eq!(&after[name], bytes, "{name} changed");
        }
    }
    assert_ne!(after["billing.crt"], before["billing.crt"]);
}

#[test]
fn a_new_ca_reissues_every_certificate_but_keeps_every_key() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    let before = snapshot(dir.path());
    fs::remove_file(dir.path().join("ca.crt")).unwrap();
    fs::remove_file(dir.path().join("ca.key")).unwrap();
    let report = write_dev_pki(dir.path(), &Options::default()).unwrap();
    assert_eq!(report.action("ca.key"), Some(&Action::Created));
    assert_eq!(
        report.action("billing.crt"),
        Some(&Action::Reissued("not signed by ca.crt"))
    );
    let after = snapshot(dir.path());
    for name in DEFAULT_NAMES {
        let key = format!("{name}.key");
        assert_eq!(after[&key], before[&key], "{key} changed");
    }
    assert_eq!(after["log.key"], before["log.key"]);
}

#[test]
fn an_expired_certificate_is_reissued_for_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        names: vec!["billing".into()],
        ..Options::default()
    };
    write_dev_pki(dir.path(), &options).unwrap();
    let ca = Ca::from_pem(
        &fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
        &fs::read_to_string(dir.path().join("ca.key")).unwrap(),
    )
    .unwrap();
    let key = fs::read_to_string(dir.path().join("billing.key")).unwrap();
    let expired = ca
        .issue_for_key(&LeafSpec::new("billing").expired(), &key)
        .unwrap();
    fs::write(dir.path().join("billing.crt"), &expired.cert_pem).unwrap();
    let report = write_dev_pki(dir.path(), &options).unwrap();
    assert_eq!(
        report.action("billing.crt"),
        Some(&Action::Reissued("expired"))
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("billing.key")).unwrap(),
        key
    );
}

#[test]
fn a_certificate_without_its_key_is_an_error_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    fs::remove_file(dir.path().join("orders.key")).unwrap();
    let error = write_dev_pki(dir.path(), &Options::default()).unwrap_err();
    assert!(matches!(error, CertsError::Orphan { .. }));
    let message = error.to_string();
    assert!(
        message.contains("orders.crt") && message.contains("orders.key"),
        "{message}"
    );

    fs::remove_file(dir.path().join("ca.key")).unwrap();
    let message = write_dev_pki(dir.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("ca.crt") && message.contains("ca.key"),
        "{message}"
    );
}

#[test]
fn a_damaged_key_is_an_error_naming_the_file_and_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    fs::write(dir.path().join("shipping.key"), "garbage").unwrap();
    let message = write_dev_pki(dir.path(), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(message.contains("shipping.key"), "{message}");
    assert_eq!(
        fs::read_to_string(dir.path().join("shipping.key")).unwrap(),
        "garbage"
    );
}

#[test]
fn names_that_are_not_plain_file_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["../evil", "", "Billing", "ca", "log", "a/b"] {
        let options = Options {
            names: vec![bad.into()],
            ..Options::default()
        };
        let error = write_dev_pki(dir.path(), &options).unwrap_err();
        assert!(
            matches!(error, CertsError::InvalidName { .. }),
            "{bad:?}: {error}"
        );
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn days_outside_the_limit_are_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    for days in [0, mesh_certs::MAX_DAYS + 1] {
        let options = Options {
            days,
            ..Options::default()
        };
        let message = write_dev_pki(dir.path(), &options).unwrap_err().to_string();
        assert!(message.contains("--days"), "{message}");
    }
}

#[test]
fn service_keys_go_to_the_service_owner_and_the_rest_to_the_folders_owner() {
    let dir = tempfile::tempdir().unwrap();
    let host = Owner::of(dir.path()).unwrap();
    let service = Owner {
        uid: 65532,
        gid: 65532,
    };
    let options = Options {
        service_owner: Some(service),
        ..Options::default()
    };
    write_dev_pki(dir.path(), &options).unwrap();
    // Only root can give files away; otherwise everything is the caller's
    // (the temporary folder is ours, so its owner is who we run as).
    let as_root = host.uid == 0;
    let owner = |name: &str| Owner::of(&dir.path().join(name)).unwrap();
    for name in DEFAULT_NAMES.iter().filter(|n| **n != "admin") {
        let key = format!("{name}.key");
        assert_eq!(mode(&dir.path().join(&key)), 0o400, "{key}");
        if as_root {
            assert_eq!(owner(&key), service, "{key}");
        }
        assert_eq!(owner(&format!("{name}.crt")), host);
    }
    assert_eq!(mode(&dir.path().join("log.key")), 0o400);
    if as_root {
        assert_eq!(owner("log.key"), service);
    }
    for name in ["admin.key", "ca.key"] {
        assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        assert_eq!(owner(name), host, "{name}");
    }
    assert_eq!(owner("ca.crt"), host);
}

#[test]
fn certificates_go_to_the_owner_of_the_folder_when_run_as_root() {
    let dir = tempfile::tempdir().unwrap();
    let host = Owner {
        uid: 1234,
        gid: 2345,
    };
    let me = Owner::of(dir.path()).unwrap();
    if me.uid != 0 {
        // chown to another uid needs root; the case is covered where tests run as root.
        return;
    }
    std::os::unix::fs::chown(dir.path(), Some(host.uid), Some(host.gid)).unwrap();
    write_dev_pki(dir.path(), &Options::default()).unwrap();
    for name in ["ca.crt", "ca.key", "admin.crt", "admin.key", "billing.crt"] {
        assert_eq!(Owner::of(&dir.path().join(name)).unwrap(), host, "{name}");
    }
    // Without --service-owner, service keys stay with the caller.
    assert_eq!(Owner::of(&dir.path().join("billing.key")).unwrap(), me);
}
