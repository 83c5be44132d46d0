//! Email normalisation: trimmed, Unicode NFKC, compared case-insensitively.

use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// A normalised email address, the form stored and compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Trims, applies NFKC and lowercases, then checks the form loosely
    /// (one `@`, non-empty local part, a dotted domain, at most 254 bytes).
    pub fn parse(raw: &str) -> Result<Self> {
        let normalised: String = raw.trim().nfkc().collect::<String>().to_lowercase();
        let bad = || Error::bad_input("email", "not a valid email address");
        if normalised.len() > 254 || normalised.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = normalised.split_once('@').ok_or_else(bad)?;
        if local.is_empty()
            || local.len() > 64
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(bad());
        }
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For values already normalised in storage.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_width_and_whitespace() {
        let a = Email::parse("  Alice@Example.COM ").unwrap();
        let b = Email::parse("alice@example.com").unwrap();
        assert_eq!(a, b);
        // Fullwidth letters fold under NFKC.
        let c = Email::parse("ａｌｉｃｅ@example.com").unwrap();
        assert_eq!(c, b);
    }

    #[test]
    fn rejects_malformed_addresses() {
        for bad in ["", "alice", "@example.com", "alice@", "alice@example", "a b@example.com", "a@b@example.com"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
