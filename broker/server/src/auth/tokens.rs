//! Bearer tokens: the broker's `token_file` names each principal with the
//! SHA-256 of its token, so the file on the broker's disk holds no secret
//! a reader could replay.
//!
//! ```text
//! # principal  sha256 of the token's text
//! billing sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
//! ```
//!
//! A presented token is hashed and compared with every entry in constant
//! time, so neither the comparison nor the position of a match leaks how
//! close a guess came.

use std::path::Path;

use mesh_runtime::tls::{digest_eq, token_digest};

use crate::config::ConfigError;

/// The principals that tokens stand for.
#[derive(Clone, Default)]
pub struct Tokens {
    /// (principal, SHA-256 of its token).
    entries: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} principals)", self.entries.len())
    }
}

fn bad(reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: "token_file",
        reason,
    }
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Tokens::parse(&text).map_err(|m| bad(format!("{}: {m}", path.display())))
    }

    /// Parses the file's text; errors name the line, never its contents
    /// past the principal.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |m: &str| format!("line {}: {m}", n + 1);
            let mut parts = line.split_whitespace();
            let (Some(name), Some(digest), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(at("expected `<principal> sha256:<64 hex digits>`"));
            };
            let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                at("the digest must start with `sha256:` (the file holds hashes, not tokens)")
            })?;
            let d = parse_hex32(hex).ok_or_else(|| at("the digest must be 64 hex digits"))?;
            if entries.iter().any(|(_, e)| digest_eq(e, &d)) {
                return Err(at("this token is already listed for another principal"));
            }
            entries.push((name.to_string(), d));
        }
        Ok(Tokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal whose token this is, if any.
    pub fn principal(&self, token: &str) -> Option<&str> {
        let d = token_digest(token);
        let mut found = None;
        // Every entry is compared, match or not.
        for (name, e) in &self.entries {
            if digest_eq(e, &d) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_listed_token_names_its_principal_and_nothing_else_does() {
        let text = format!(
            "# comment\n\nbilling sha256:{}\nadmin  sha256:{}\n",
            hex(token_digest("t-billing")),
            hex(token_digest("t-admin"))
        );
        let t = Tokens::parse(&text).unwrap();
        assert_eq!(t.principal("t-billing"), Some("billing"));
        assert_eq!(t.principal("t-admin"), Some("admin"));
        assert_eq!(t.principal("t-billin"), None);
        assert_eq!(t.principal(""), None);
        assert!(format!("{t:?}").contains("2 principals"));
    }

    #[test]
    fn plain_tokens_and_malformed_lines_are_refused_by_line() {
        for (text, want) in [
            (
                "billing secret-token",
                "line 1: the digest must start with `sha256:`",
            ),
            ("billing", "line 1: expected"),
            (
                "# x\nbilling sha256:abcd",
                "line 2: the digest must be 64 hex digits",
            ),
        ] {
            let e = Tokens::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("secret-token"), "{e}");
        }
        let d = hex(token_digest("x"));
        let e = Tokens::parse(&format!("a sha256:{d}\nb sha256:{d}")).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
