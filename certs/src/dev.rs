//! `write_dev_pki`: the whole development PKI in one folder, made
//! idempotently: what exists is kept (keys byte for byte), what is missing
//! is made, and a certificate that no longer fits (not signed by `ca.crt`,
//! not for its key, or expired) is reissued for the same key.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::ca::{Ca, DEFAULT_LEAF_DAYS, LeafSpec, cert_der, parse_cert, parse_key};
use crate::error::CertsError;
use crate::files::{self, Owner, PRIVATE, PUBLIC, Placement, SERVICE_PRIVATE};
use crate::log_key::{LOG_KEY_FILE, new_log_key_text};

/// The processes of the mesh, each getting `<name>.crt` and `<name>.key`.
pub const DEFAULT_NAMES: &[&str] = &[
    "broker",
    "orders",
    "billing",
    "shipping",
    "analytics",
    "notifications",
    "console",
    "admin",
];

/// Names that are human operators, not services: their keys go to the
/// folder's owner (the human on the host), not to `--service-owner`.
pub const DEFAULT_OPERATORS: &[&str] = &["admin"];

/// The CA's common name.
pub const DEFAULT_CA_NAME: &str = "mesh development CA";

/// The longest leaf lifetime `--days` accepts (about 27 years), so the
/// end date stays well inside what X.509 and `SystemTime` represent.
pub const MAX_DAYS: u32 = 10_000;

/// What to make, and for whom.
#[derive(Debug, Clone)]
pub struct Options {
    /// Leaf names (principals), one certificate and key each.
    pub names: Vec<String>,
    /// Which of `names` are humans; their keys stay with the folder's owner.
    pub operators: Vec<String>,
    /// Lifetime of newly issued leaf certificates.
    pub days: u32,
    /// Owner for service keys and `log.key` (mode 0400), when run as root.
    pub service_owner: Option<Owner>,
    /// Common name of a newly made CA.
    pub ca_name: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            names: DEFAULT_NAMES.iter().map(|n| n.to_string()).collect(),
            operators: DEFAULT_OPERATORS.iter().map(|n| n.to_string()).collect(),
            days: DEFAULT_LEAF_DAYS,
            service_owner: None,
            ca_name: DEFAULT_CA_NAME.to_owned(),
        }
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Created,
    Kept,
    /// A certificate made again for its existing key, and why.
    Reissued(&'static str),
}

/// Every file `write_dev_pki` looked at, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<(PathBuf, Action)>,
}

impl Report {
    fn push(&mut self, path: &Path, action: Action) {
        self.files.push((path.to_owned(), action));
    }

    /// The action taken on `file_name` (a name inside the folder).
    pub fn action(&self, file_name: &str) -> Option<&Action> {
        self.files
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|n| n == file_name))
            .map(|(_, a)| a)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, action) in &self.files {
            match action {
                Action::Created => writeln!(f, "created  {}", path.display())?,
                Action::Kept => writeln!(f, "kept     {}", path.display())?,
                Action::Reissued(why) => writeln!(f, "reissued {} ({why})", path.display())?,
            }
        }
        Ok(())
    }
}

/// Makes (or completes) the development PKI in `dir`: `ca.crt`, `ca.key`,
/// `<name>.crt` and `<name>.key` per name, and `log.key`. Never replaces a
/// key or `log.key`.
pub fn write_dev_pki(dir: &Path, options: &Options) -> Result<Report, CertsError> {
    for name in &options.names {
        check_name(name)?;
    }
    if options.days == 0 || options.days > MAX_DAYS {
        return Err(CertsError::InvalidDays {
            days: options.days,
            max: MAX_DAYS,
        });
    }
    fs::create_dir_all(dir).map_err(|e| CertsError::io("creating", dir, e))?;
    let host = Owner::of(dir)?;
    let host_private = Placement {
        owner: Some(host),
        mode: PRIVATE,
    };
    let public = Placement {
        owner: Some(host),
        mode: PUBLIC,
    };
    let service_private = match options.service_owner {
        Some(owner) => Placement {
            owner: Some(owner),
            mode: SERVICE_PRIVATE,
        },
        None => Placement {
            owner: None,
            mode: PRIVATE,
        },
    };

    let mut report = Report::default();
    let ca = ca(dir, options, host_private, public, &mut report)?;
    for name in &options.names {
        let key_placement = if options.operators.contains(name) {
            host_private
        } else {
            service_private
        };
        leaf(dir, name, options, &ca, key_placement, public, &mut report)?;
    }
    let log_key = dir.join(LOG_KEY_FILE);
    let created = files::create_new(&log_key, new_log_key_text()?.as_bytes(), service_private)?;
    report.push(
        &log_key,
        if created {
            Action::Created
        } else {
            Action::Kept
        },
    );
    Ok(report)
}

fn ca(
    dir: &Path,
    options: &Options,
    key_placement: Placement,
    cert_placement: Placement,
    report: &mut Report,
) -> Result<Ca, CertsError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    let cert = files::read_if_exists(&cert_path)?;
    let key = files::read_if_exists(&key_path)?;
    let ca = match (cert, key) {
        (Some(cert), Some(key)) => {
            let ca = Ca::from_pem(&cert, &key).map_err(|e| name_files(e, &cert_path, &key_path))?;
            report.push(&key_path, Action::Kept);
            report.push(&cert_path, Action::Kept);
            ca
        }
        (Some(_), None) => {
            return Err(CertsError::Orphan {
                present: cert_path,
                missing: key_path,
            });
        }
        (None, Some(key)) => {
            let ca = Ca::from_key_pem(&options.ca_name, &key)
                .map_err(|e| name_files(e, &cert_path, &key_path))?;
            report.push(&key_path, Action::Kept);
            files::replace(&cert_path, ca.cert_pem().as_bytes(), cert_placement)?;
            report.push(&cert_path, Action::Created);
            ca
        }
        (None, None) => {
            let ca = Ca::new(&options.ca_name)?;
            // The key first: a crash between the two leaves a key that the
            // next run certifies, never a certificate without its key.
            files::create_new(&key_path, ca.key_pem().as_bytes(), key_placement)?;
            report.push(&key_path, Action::Created);
            files::replace(&cert_path, ca.cert_pem().as_bytes(), cert_placement)?;
            report.push(&cert_path, Action::Created);
            ca
        }
    };
    Ok(ca)
}

fn leaf(
    dir: &Path,
    name: &str,
    options: &Options,
    ca: &Ca,
    key_placement: Placement,
    cert_placement: Placement,
    report: &mut Report,
) -> Result<(), CertsError> {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let spec = LeafSpec::new(name).valid_for_days(options.days);
    let existing_key = files::read_if_exists(&key_path)?;
    let cert = files::read_if_exists(&cert_path)?;
    let Some(key) = existing_key else {
        if cert.is_some() {
            return Err(CertsError::Orphan {
                present: cert_path,
                missing: key_path,
            });
        }
        let leaf = ca.issue(&spec)?;
        files::create_new(&key_path, leaf.key_pem.as_bytes(), key_placement)?;
        report.push(&key_path, Action::Created);
        files::replace(&cert_path, leaf.cert_pem.as_bytes(), cert_placement)?;
        report.push(&cert_path, Action::Created);
        return Ok(());
    };
    report.push(&key_path, Action::Kept);
    let action = match cert {
        None => Action::Created,
        Some(cert) => match stale(ca, &cert, &key, &cert_path, &key_path)? {
            None => {
                report.push(&cert_path, Action::Kept);
                return Ok(());
            }
            Some(why) => Action::Reissued(why),
        },
    };
    let leaf = ca
        .issue_for_key(&spec, &key)
        .map_err(|e| name_files(e, &cert_path, &key_path))?;
    files::replace(&cert_path, leaf.cert_pem.as_bytes(), cert_placement)?;
    report.push(&cert_path, action);
    Ok(())
}

/// Why an existing leaf certificate must be reissued, or None if it is fine.
fn stale(
    ca: &Ca,
    cert_pem: &str,
    key_pem: &str,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Option<&'static str>, CertsError> {
    let what = cert_path.display().to_string();
    let ca_der = cert_der("ca.crt", ca.cert_pem())?;
    let leaf_der = cert_der(&what, cert_pem)?;
    let ca_cert = parse_cert("ca.crt", &ca_der)?;
    let leaf = parse_cert(&what, &leaf_der)?;
    let key = parse_key(&key_path.display().to_string(), key_pem)?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Ok(Some("not the certificate of its key"));
    }
    if leaf.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Ok(Some("not signed by ca.crt"));
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let not_after = leaf.validity().not_after.timestamp();
    if i64::try_from(now).is_ok_and(|now| not_after <= now) {
        return Ok(Some("expired"));
    }
    Ok(None)
}

/// Replaces the generic "the CA ... PEM" wording of a parse error with
/// the files it came from.
fn name_files(error: CertsError, cert_path: &Path, key_path: &Path) -> CertsError {
    match error {
        CertsError::Parse {
            expected, detail, ..
        } => CertsError::Parse {
            what: if expected == "certificate" {
                cert_path.display().to_string()
            } else {
                key_path.display().to_string()
            },
            expected,
            detail,
        },
        CertsError::KeyMismatch { .. } => CertsError::KeyMismatch {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
        },
        other => other,
    }
}

/// Names become file names and common names: keep them plain.
pub fn check_name(name: &str) -> Result<(), CertsError> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !plain || name == "ca" || name == "log" {
        return Err(CertsError::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}
