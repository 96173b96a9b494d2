//! Who is calling, and whether they may: authentication by client
//! certificate or bearer token ([`AuthMode`]), and the access-control list
//! ([`acl`]) checked per verb, topic and consumer group.
//!
//! Health checks never reach this (grpc.health.v1 is its own service and
//! stays open); every Broker RPC calls [`Auth::authenticate`] first and
//! [`Auth::check`] before it reads or writes anything.

pub mod acl;
pub mod tokens;

use std::sync::Arc;

use tonic::metadata::MetadataMap;

pub use crate::config::AuthMode;
pub use acl::{Acl, Verb};
pub use tokens::Tokens;

use crate::{
    config::{BrokerConfig, ConfigError},
    error::BrokerError,
};

/// The authenticated caller of one RPC (or one stream).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The principal the ACL names; `"anonymous"` with `auth = "none"`.
    pub principal: Arc<str>,
}

/// Authentication and authorization, built once at start.
#[derive(Debug)]
pub struct Auth {
    mode: AuthMode,
    /// Token digests by principal (`token_file`), for `auth = "token"`.
    tokens: Tokens,
    /// What each principal may do (`acl_file`); unused with `auth = "none"`.
    acl: Acl,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl Auth {
    /// Reads `token_file` and `acl_file`, after [`check_mode`].
    pub fn from_config(cfg: &BrokerConfig) -> Result<Auth, ConfigError> {
        let mode = check_mode(cfg)?;
        let tokens = match (&cfg.token_file, mode) {
            (Some(p), AuthMode::Token) => Tokens::load(p)?,
            _ => Tokens::default(),
        };
        if mode == AuthMode::Token && tokens.is_empty() {
            return Err(invalid("token_file", "lists no tokens"));
        }
        let acl = match &cfg.acl_file {
            Some(p) if mode != AuthMode::None => Acl::load(p)?,
            Some(p) => {
                tracing::warn!(acl_file = %p.display(), "auth = \"none\": acl_file is not applied");
                Acl::default()
            }
            None => Acl::default(),
        };
        match mode {
            AuthMode::None => tracing::warn!(
                "auth = \"none\": every client may publish, read, seek and purge everything; \
                 set auth = \"mtls\" or \"token\" for anything but a local experiment"
            ),
            _ if acl.grants().is_empty() => tracing::warn!(
                "no grants (acl_file unset or empty): every call but health checks will be denied"
            ),
            _ => tracing::info!(auth = ?mode, grants = acl.grants().len(), "access control on"),
        }
        Ok(Auth { mode, tokens, acl })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent a request, from its TLS client certificate or its bearer
    /// token. UNAUTHENTICATED otherwise; the message never repeats a
    /// token.
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Caller, BrokerError> {
        let caller = |p: &str| {
            Ok(Caller {
                principal: p.into(),
            })
        };
        match self.mode {
            AuthMode::None => caller("anonymous"),
            AuthMode::Mtls => {
                let certs = req.peer_certs().ok_or_else(|| {
                    BrokerError::Unauthenticated(
                        "this broker authenticates clients by certificate (auth = \"mtls\"): \
                         connect over TLS with a client certificate signed by its CA"
                            .into(),
                    )
                })?;
                let leaf = certs.first().ok_or_else(|| {
                    BrokerError::Unauthenticated("no client certificate was presented".into())
                })?;
                let name = mesh_runtime::tls::cert_principal(leaf).ok_or_else(|| {
                    BrokerError::Unauthenticated(
                        "the client certificate names no principal (no common name or DNS name)"
                            .into(),
                    )
                })?;
                caller(&name)
            }
            AuthMode::Token => {
                let token = bearer(req.metadata())?;
                match self.tokens.principal(token) {
                    Some(p) => caller(p),
                    None => Err(BrokerError::Unauthenticated(
                        "the bearer token is not valid".into(),
                    )),
                }
            }
        }
    }

    /// PERMISSION_DENIED unless `who` may do `verb` on `topic` (as
    /// `group`). The message names the principal, verb, topic and group.
    pub fn check(
        &self,
        who: &Caller,
        verb: Verb,
        topic: &str,
        group: Option<&str>,
    ) -> Result<(), BrokerError> {
        if self.mode == AuthMode::None || self.acl.allows(&who.principal, verb, topic, group) {
            return Ok(());
        }
        crate::metrics::denied(verb);
        Err(BrokerError::PermissionDenied {
            principal: who.principal.to_string(),
            verb: verb.as_str(),
            topic: topic.to_string(),
            group: group.map(str::to_string),
        })
    }

    /// Whether `who` may see `topic` at all (any grant on it).
    pub fn sees_topic(&self, who: &Caller, topic: &str) -> bool {
        self.mode == AuthMode::None || self.acl.sees_topic(&who.principal, topic)
    }

    /// Whether `who` may see `group` of `topic` (a group-scoped grant).
    pub fn sees_group(&self, who: &Caller, topic: &str, group: &str) -> bool {
        self.mode == AuthMode::None || self.acl.sees_group(&who.principal, topic, group)
    }
}

/// Checks that `auth` is set and fits the TLS settings (no I/O): the
/// broker refuses to start with no authentication unless `auth = "none"`
/// says so.
pub fn check_mode(cfg: &BrokerConfig) -> Result<AuthMode, ConfigError> {
    use mesh_runtime::tls::ClientAuth;
    let mode = cfg.auth.ok_or_else(|| {
        invalid(
            "auth",
            "no authentication is configured: set auth = \"mtls\" (with [tls] ca, cert and key) \
             or \"token\" (with [tls] and token_file), or auth = \"none\" to run without \
             authentication on purpose",
        )
    })?;
    let tls_on = cfg.tls.cert.is_some();
    match mode {
        AuthMode::Mtls
            if !tls_on
                || cfg.tls.client_auth_or(crate::config::BROKER_CLIENT_AUTH)
                    == ClientAuth::None =>
        {
            Err(invalid(
                "auth",
                "\"mtls\" needs [tls] ca, cert and key, and tls.client_auth \"optional\" or \"required\"",
            ))
        }
        AuthMode::Token if !tls_on => Err(invalid(
            "auth",
            "\"token\" needs [tls] cert and key: a bearer token sent in plaintext can be read and replayed",
        )),
        AuthMode::Token if cfg.token_file.is_none() => {
            Err(invalid("token_file", "must be set with auth = \"token\""))
        }
        _ => Ok(mode),
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(meta: &MetadataMap) -> Result<&str, BrokerError> {
    let missing = || {
        BrokerError::Unauthenticated(
            "this broker authenticates clients by token (auth = \"token\"): send \
             `authorization: Bearer <token>`"
                .into(),
        )
    };
    let v = meta.get("authorization").ok_or_else(missing)?;
    let v = v.to_str().map_err(|_| missing())?;
    let (scheme, token) = v.split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}
