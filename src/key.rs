//! An API key, and the only ways to show one.
//!
//! Invariant: the raw key string leaves this type only through [`ApiKey::expose`], whose
//! only uses are the upstream `Authorization` header (`upstream.rs`, and `commands.rs`
//! for `keys check`), the keys file itself (`keys add`), the prefix match of
//! `keys remove`, and the one-way fingerprint (`state.rs`). `Debug` and `Display` print the masked form
//! (`sk-or-v1-ab…9f3c`), so a key that slips into a log line, an error or a panic message
//! is still masked.

use std::fmt;

/// A validated API key: non-empty, visible ASCII only (it travels in an HTTP header).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(Box<str>);

/// Why a string cannot be a key. Positions are 1-based character positions.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyProblem {
    Empty,
    Whitespace(usize),
    Control(usize),
    NonAscii(usize),
}

impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyProblem::Empty => write!(f, "the key is empty"),
            KeyProblem::Whitespace(at) => write!(f, "the key has whitespace at character {at}"),
            KeyProblem::Control(at) => {
                write!(f, "the key has a control character at character {at}")
            }
            KeyProblem::NonAscii(at) => write!(
                f,
                "the key has a non-ASCII character at character {at} (keys are plain ASCII)"
            ),
        }
    }
}

impl ApiKey {
    /// Checks `raw` and wraps it. Surrounding whitespace is an error, not trimmed away:
    /// the caller decides whether trimming is what the user meant.
    pub fn parse(raw: &str) -> Result<ApiKey, KeyProblem> {
        if raw.is_empty() {
            return Err(KeyProblem::Empty);
        }
        for (i, c) in raw.chars().enumerate() {
            let at = i + 1;
            if c.is_whitespace() {
                return Err(KeyProblem::Whitespace(at));
            }
            if c.is_control() {
                return Err(KeyProblem::Control(at));
            }
            if !c.is_ascii() {
                return Err(KeyProblem::NonAscii(at));
            }
        }
        Ok(ApiKey(raw.into()))
    }

    /// The raw key, for the upstream `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key as people may see it: its vendor prefix, two characters, an ellipsis and
    /// the last four (`sk-or-v1-ab…9f3c`). Short keys show less, never more than a third
    /// of their secret part.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.masked())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks a key-like string. Works on any ASCII string; other input shows nothing of it.
fn mask(key: &str) -> String {
    if !key.is_ascii() {
        return "…".to_string();
    }
    // The vendor prefix ("sk-or-v1-", "gsk_", "sk-ant-api03-") is not secret and tells
    // people which provider a key is for: keep up to the last '-' or '_' in the first 14.
    let head = &key[..key.len().min(14)];
    let prefix_len = head.rfind(['-', '_']).map_or(0, |i| i + 1);
    let (prefix, secret) = key.split_at(prefix_len);
    if secret.len() >= 18 {
        format!("{prefix}{}…{}", &secret[..2], &secret[secret.len() - 4..])
    } else if secret.len() >= 6 {
        format!("{prefix}…{}", &secret[secret.len() - 2..])
    } else if !secret.is_empty() {
        format!("{prefix}…")
    } else {
        // All prefix: showing the prefix would show the whole key.
        "…".to_string()
    }
}

/// Replaces every occurrence of any of `keys` in `text` by its masked form: for text that
/// came from outside (an upstream error message) before it reaches a log or a client.
pub fn redact<'a>(text: &str, keys: impl IntoIterator<Item = &'a ApiKey>) -> String {
    let mut out = text.to_string();
    for key in keys {
        if out.contains(key.expose()) {
            out = out.replace(key.expose(), &key.masked());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OR_KEY: &str = "sk-or-v1-ab0123456789abcdef0123456789abcdef0123456789abcdef01239f3c";

    #[test]
    fn openrouter_keys_mask_to_prefix_two_and_four() {
        let key = ApiKey::parse(OR_KEY).unwrap();
        assert_eq!(key.masked(), "sk-or-v1-ab…9f3c");
        assert_eq!(format!("{key}"), "sk-or-v1-ab…9f3c");
        assert_eq!(format!("{key:?}"), "ApiKey(sk-or-v1-ab…9f3c)");
        assert_eq!(
            format!("{:?}", vec![key.clone()]),
            "[ApiKey(sk-or-v1-ab…9f3c)]"
        );
    }

    #[test]
    fn other_vendor_prefixes_are_kept() {
        let groq = ApiKey::parse("gsk_Zx9aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaQ7rT").unwrap();
        assert_eq!(groq.masked(), "gsk_Zx…Q7rT");
        let bare = ApiKey::parse("abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(bare.masked(), "ab…wxyz");
    }

    #[test]
    fn short_keys_reveal_little() {
        assert_eq!(ApiKey::parse("sk-12345678").unwrap().masked(), "sk-…78");
        assert_eq!(ApiKey::parse("sk-123").unwrap().masked(), "sk-…");
        assert_eq!(ApiKey::parse("x").unwrap().masked(), "…");
    }

    #[test]
    fn masked_form_never_contains_the_key() {
        for raw in [
            OR_KEY,
            "gsk_0123456789abcdefghij",
            "abc",
            "sk-or-v1-",
            "k-123456",
        ] {
            let key = ApiKey::parse(raw).unwrap();
            assert!(!key.masked().contains(raw), "{raw} leaks");
        }
    }

    #[test]
    fn bad_keys_are_refused_with_the_position() {
        assert_eq!(ApiKey::parse(""), Err(KeyProblem::Empty));
        assert_eq!(ApiKey::parse("sk or"), Err(KeyProblem::Whitespace(3)));
        assert_eq!(ApiKey::parse("sk-\u{7}"), Err(KeyProblem::Control(4)));
        assert_eq!(ApiKey::parse("sk-é"), Err(KeyProblem::NonAscii(4)));
        assert_eq!(
            ApiKey::parse(" sk").unwrap_err().to_string(),
            "the key has whitespace at character 1"
        );
    }

    #[test]
    fn redact_masks_every_pool_key_in_text() {
        let key = ApiKey::parse(OR_KEY).unwrap();
        let text = format!("bad key {OR_KEY} (again: {OR_KEY})");
        let out = redact(&text, [&key]);
        assert_eq!(out, "bad key sk-or-v1-ab…9f3c (again: sk-or-v1-ab…9f3c)");
    }
}
