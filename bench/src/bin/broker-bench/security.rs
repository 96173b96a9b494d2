//! The security variants of a run (`--tls`, `--encryption`): TLS between
//! the clients and the broker, encryption at rest of the broker's log, and
//! the development PKI both take their files from.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use mesh_broker::{BrokerConfig, auth::AuthMode};
use mesh_runtime::tls::TlsConfig;

use mesh_bench::disk::RunDir;

use crate::{Res, args::Args, broker::Target, err};

/// One combination of the security settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Mutual TLS with auth = "mtls" (else plaintext with auth = "none").
    pub tls: bool,
    /// `storage.encryption_key_file` set (else the log is plaintext).
    pub enc: bool,
}

impl Variant {
    /// Plaintext on the wire and on disk: broker-bench before `--tls`.
    pub const PLAIN: Variant = Variant {
        tls: false,
        enc: false,
    };

    /// Every combination `args` asks for, TLS varying fastest, so that
    /// each TLS on/off pair runs back to back.
    pub fn all(args: &Args) -> Vec<Variant> {
        args.encryption
            .iter()
            .flat_map(|&enc| args.tls.iter().map(move |&tls| Variant { tls, enc }))
            .collect()
    }

    pub fn label(&self) -> String {
        let on = |b: bool| if b { "on" } else { "off" };
        format!("TLS {}, encryption {}", on(self.tls), on(self.enc))
    }
}

/// The development PKI (`mesh_certs::write_dev_pki`, for the broker and
/// `admin` only), in a run directory removed at the end.
pub struct Pki {
    /// ca.crt, broker.crt/key, admin.crt/key and log.key.
    dir: RunDir,
}

impl Pki {
    pub fn new(base: &Path) -> Res<Pki> {
        let dir = RunDir::new(base, "pki").map_err(err)?;
        let options = mesh_certs::Options {
            names: vec!["broker".into(), "admin".into()],
            ..mesh_certs::Options::default()
        };
        mesh_certs::write_dev_pki(&dir.0, &options)
            .map_err(|e| format!("dev PKI in {}: {e}", dir.0.display()))?;
        Ok(Pki { dir })
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.0.join(file)
    }

    /// The `[tls]` settings of principal `name`, trusting the PKI's CA.
    fn tls(&self, name: &str) -> TlsConfig {
        TlsConfig {
            ca: Some(self.path("ca.crt")),
            cert: Some(self.path(&format!("{name}.crt"))),
            key: Some(self.path(&format!("{name}.key"))),
            client_auth: None,
        }
    }
}

/// The repository's demo access-control list, in which `admin` may do
/// everything.
fn acl_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mesh/acl.toml")
}

/// A variant with the files it needs: how a broker is configured and how
/// its clients connect.
#[derive(Clone)]
pub struct Security {
    pub variant: Variant,
    /// Shared by every variant of the run; `None` when no variant needs it.
    pki: Option<Arc<Pki>>,
}

impl Security {
    /// Plaintext everywhere; needs no files (the tests, and
    /// `--vs-jetstream`).
    pub fn plain() -> Security {
        Security {
            variant: Variant::PLAIN,
            pki: None,
        }
    }

    /// Every variant `args` asks for, with one PKI (under `args.dir`) if
    /// any of them uses TLS or encryption.
    pub fn all(args: &Args) -> Res<Vec<Security>> {
        let variants = Variant::all(args);
        let pki = if variants.iter().any(|v| v.tls || v.enc) {
            Some(Arc::new(Pki::new(&args.dir)?))
        } else {
            None
        };
        if variants.iter().any(|v| v.tls) && !acl_file().is_file() {
            return Err(format!(
                "--tls on needs the ACL file {} (deploy/mesh/acl.toml of the repository)",
                acl_file().display()
            ));
        }
        Ok(variants
            .into_iter()
            .map(|variant| Security {
                variant,
                pki: pki.clone(),
            })
            .collect())
    }

    fn pki(&self) -> &Pki {
        self.pki
            .as_deref()
            .expect("Security::all makes a PKI for every variant that uses one")
    }

    /// Sets the broker's `auth`, `tls`, `acl_file` and
    /// `storage.encryption_key_file` for this variant.
    pub fn apply(&self, cfg: &mut BrokerConfig) {
        if self.variant.tls {
            let pki = self.pki();
            cfg.auth = Some(AuthMode::Mtls);
            cfg.tls = pki.tls("broker");
            cfg.acl_file = Some(acl_file());
        } else {
            // Measures delivery, not access control.
            cfg.auth = Some(AuthMode::None);
        }
        if self.variant.enc {
            cfg.storage.encryption_key_file = Some(self.pki().path("log.key"));
        }
    }

    /// How clients reach a broker of this variant at `addr`: plaintext, or
    /// over https as `admin`.
    pub fn target(&self, addr: SocketAddr) -> Res<Target> {
        if self.variant.tls {
            Target::new(addr, &self.pki().tls("admin"))
        } else {
            Target::new(addr, &TlsConfig::default())
        }
    }
}
