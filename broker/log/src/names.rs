//! Topic and group names. They become directory and file names, so the
//! rules are strict: Kafka's character set and length.

use crate::error::{LogError, Result};

pub const MAX_NAME_LEN: usize = 249;

pub fn validate(what: &'static str, name: &str) -> Result<()> {
    let fail = |reason| {
        Err(LogError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("must be at most 249 characters");
    }
    if name == "." || name == ".." {
        return fail("must not be \".\" or \"..\"");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules() {
        for ok in ["orders", "a.b-c_d", "X1"] {
            super::validate("topic", ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(250)] {
            assert!(super::validate("topic", bad).is_err(), "{bad:?}");
        }
    }
}
