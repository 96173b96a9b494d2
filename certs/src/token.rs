//! Bearer tokens: `<dir>/<name>.token` holds the secret for the client,
//! `<dir>/tokens` holds `<name> sha256:<hex>` lines for the broker, hashes
//! only, so the broker's file gives nothing away if read.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};

use crate::dev::check_name;
use crate::error::{CertsError, hex, random_bytes};
use crate::files::{self, Owner, PRIVATE, PUBLIC, Placement};

/// The broker's token file name under the output folder.
pub const TOKENS_FILE: &str = "tokens";

/// A bearer token: 32 random bytes as 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The secret text the client sends.
    text: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A token must not end up in logs.
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A fresh token from the operating system's CSPRNG.
    pub fn generate() -> Result<Token, CertsError> {
        let mut bytes = [0u8; 32];
        random_bytes(&mut bytes)?;
        Ok(Token { text: hex(&bytes) })
    }

    /// The secret text, exactly as written to `<name>.token`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `sha256:<hex>` of the text: what the broker's token file holds.
    pub fn hash(&self) -> String {
        token_hash(&self.text)
    }

    /// The `tokens` file line for `name`, without the newline.
    pub fn line(&self, name: &str) -> String {
        format!("{name} {}", self.hash())
    }
}

/// `sha256:<lowercase hex of SHA-256(text)>`.
pub fn token_hash(text: &str) -> String {
    format!("sha256:{}", hex(digest(&SHA256, text.as_bytes()).as_ref()))
}

/// What `write_token` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReport {
    /// `<dir>/<name>.token`.
    pub token_path: PathBuf,
    /// Whether the token file was made now (false: an existing one kept).
    pub token_created: bool,
    /// `<dir>/tokens`.
    pub tokens_path: PathBuf,
    /// Whether the hash line was appended (false: it was already there).
    pub line_appended: bool,
}

impl fmt::Display for TokenReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = |done| if done { "created " } else { "kept    " };
        writeln!(
            f,
            "{} {}",
            verb(self.token_created),
            self.token_path.display()
        )?;
        if self.line_appended {
            writeln!(f, "appended {} (its hash)", self.tokens_path.display())
        } else {
            writeln!(
                f,
                "kept     {} (already has its hash)",
                self.tokens_path.display()
            )
        }
    }
}

/// Makes `<dir>/<name>.token` (mode 0600, chowned to `owner` when root)
/// unless it exists, and makes sure `<dir>/tokens` has its hash line.
/// Running it again changes nothing.
pub fn write_token(
    dir: &Path,
    name: &str,
    owner: Option<Owner>,
) -> Result<TokenReport, CertsError> {
    check_name(name)?;
    std::fs::create_dir_all(dir).map_err(|e| CertsError::io("creating", dir, e))?;
    let token_path = dir.join(format!("{name}.token"));
    let tokens_path = dir.join(TOKENS_FILE);
    let fresh = Token::generate()?;
    let token_created = files::create_new(
        &token_path,
        fresh.as_str().as_bytes(),
        Placement {
            owner,
            mode: PRIVATE,
        },
    )?;
    let token = if token_created {
        fresh
    } else {
        let text = files::read_if_exists(&token_path)?.unwrap_or_default();
        let text = text.trim();
        // An empty or cut file would put the hash of a guessable text in
        // the broker's file.
        if text.len() < 32 {
            return Err(CertsError::Parse {
                what: token_path.display().to_string(),
                expected: "token (at least 32 characters)",
                detail: format!(
                    "it holds {} characters; delete it to make a new one",
                    text.len()
                ),
            });
        }
        Token {
            text: text.to_owned(),
        }
    };
    let line = token.line(name);
    let existing = files::read_if_exists(&tokens_path)?.unwrap_or_default();
    let line_appended = !existing.lines().any(|l| l.trim() == line);
    if line_appended {
        append_line(&tokens_path, &existing, &line)?;
    }
    Ok(TokenReport {
        token_path,
        token_created,
        tokens_path,
        line_appended,
    })
}

fn append_line(path: &Path, existing: &str, line: &str) -> Result<(), CertsError> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        // Hashes only: readable by the broker whatever uid it runs as.
        .mode(PUBLIC)
        .open(path)
        .map_err(|e| CertsError::io("opening", path, e))?;
    let separator = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    file.write_all(format!("{separator}{line}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CertsError::io("appending to", path, e))
}
