//! An API key, and the only ways to show one.
//!
//! Invariant: the raw key string leaves this type only through [`ApiKey::expose`], whose
//! only uses are the upstream `Authorization` header (`upstream.rs`, and `commands.rs`
//! for `keys check`), the keys file itself (`keys add`), the prefix match of
//! `keys remove|enable|disable`, and the one-way fingerprint (`state.rs`);
//! `tests/proxy/tidy.rs` fails on any other. `Debug` and `Display` print the masked form
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

    /// The raw key, for the uses the module docs list (and `tests/proxy/tidy.rs` holds).
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

/// A dropped key is wiped, so a freed copy does not linger in memory.
impl Drop for ApiKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
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

/// The shortest run of a key's characters that is masked wherever it appears: any 12
/// consecutive characters of a key (the prefix and two characters, as the masked form
/// shows them, are 11).
pub const MIN_RUN: usize = 12;

/// Replaces every run of [`MIN_RUN`] or more consecutive characters of any of `keys` in
/// `text` (the whole key, or a piece of it cut off anywhere) by the key's masked form:
/// for text that came from outside (an upstream error message or header) before it
/// reaches a log or a client. Run it before cutting text short, so the cut never lands
/// inside a key.
pub fn redact<'a>(text: &str, keys: impl IntoIterator<Item = &'a ApiKey>) -> String {
    match redact_bytes(text.as_bytes(), keys) {
        std::borrow::Cow::Borrowed(_) => text.to_string(),
        // Runs are ASCII, so every cut is at a character boundary.
        std::borrow::Cow::Owned(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// [`redact`] for bytes (an upstream body); borrowed when nothing was found.
pub fn redact_bytes<'t, 'a>(
    text: &'t [u8],
    keys: impl IntoIterator<Item = &'a ApiKey>,
) -> std::borrow::Cow<'t, [u8]> {
    let mut out = std::borrow::Cow::Borrowed(text);
    for key in keys {
        let runs = key_runs(&out, key.0.as_bytes());
        if runs.is_empty() {
            continue;
        }
        let masked = key.masked();
        let mut done = Vec::with_capacity(out.len());
        let mut at = 0;
        for (start, end) in runs {
            done.extend_from_slice(&out[at..start]);
            done.extend_from_slice(masked.as_bytes());
            at = end;
        }
        done.extend_from_slice(&out[at..]);
        out = std::borrow::Cow::Owned(done);
    }
    out
}

/// The byte ranges of `text` made of runs of `key`'s characters at least [`MIN_RUN`]
/// long (a key shorter than that: its whole occurrences), in order, not overlapping.
///
/// Only a stretch of text made of the key's characters alone can hold a piece of it:
/// most text (a header value, an event's JSON) has none long enough and costs a table
/// look-up per byte. In a stretch, each window is looked up by a rolling hash among the
/// key's windows and compared byte by byte only on a match. (Comparing each window with
/// each of the key's took thousands of instructions per byte; an event stream's held
/// start is masked before its first event goes out.)
fn key_runs(text: &[u8], key: &[u8]) -> Vec<(usize, usize)> {
    let width = MIN_RUN.min(key.len());
    let mut runs: Vec<(usize, usize)> = Vec::new();
    if width == 0 || text.len() < width {
        return runs;
    }
    let mut in_key = [false; 256];
    for b in key {
        in_key[usize::from(*b)] = true;
    }
    let mut pieces = None;
    let mut at = 0;
    while at < text.len() {
        let stretch = text[at..]
            .iter()
            .position(|b| !in_key[usize::from(*b)])
            .unwrap_or(text.len() - at);
        if stretch >= width {
            let pieces = pieces.get_or_insert_with(|| Pieces::of(key, width));
            pieces.find(&text[at..at + stretch], key, at, &mut runs);
        }
        at += stretch + 1;
    }
    runs
}

/// A key's windows of [`key_runs`]' width, by rolling hash, sorted.
struct Pieces {
    width: usize,
    /// The weight of a window's first byte in its hash, to roll it out.
    first: u64,
    hashes: Vec<(u64, usize)>,
}

impl Pieces {
    fn of(key: &[u8], width: usize) -> Pieces {
        let first = (1..width).fold(1u64, |w, _| w.wrapping_mul(HASH_BASE));
        let mut pieces = Pieces {
            width,
            first,
            hashes: Vec::with_capacity(key.len() - width + 1),
        };
        let mut h = pieces.hash(&key[..width]);
        for at in 0..=key.len() - width {
            if at > 0 {
                h = pieces.roll(h, key[at - 1], key[at + width - 1]);
            }
            pieces.hashes.push((h, at));
        }
        pieces.hashes.sort_unstable();
        pieces
    }

    fn hash(&self, window: &[u8]) -> u64 {
        window.iter().fold(0u64, |h, b| {
            h.wrapping_mul(HASH_BASE).wrapping_add(u64::from(*b))
        })
    }

    fn roll(&self, h: u64, gone: u8, new: u8) -> u64 {
        h.wrapping_sub(u64::from(gone).wrapping_mul(self.first))
            .wrapping_mul(HASH_BASE)
            .wrapping_add(u64::from(new))
    }

    /// Adds the runs in `stretch` (which starts at `offset` of the text) to `runs`.
    fn find(&self, stretch: &[u8], key: &[u8], offset: usize, runs: &mut Vec<(usize, usize)>) {
        let width = self.width;
        let mut h = self.hash(&stretch[..width]);
        for (start, window) in stretch.windows(width).enumerate() {
            if start > 0 {
                h = self.roll(h, stretch[start - 1], window[width - 1]);
            }
            let from = self.hashes.partition_point(|(p, _)| *p < h);
            let found = self.hashes[from..]
                .iter()
                .take_while(|(p, _)| *p == h)
                .any(|(_, at)| key[*at..*at + width] == *window);
            if !found {
                continue;
            }
            let start = offset + start;
            match runs.last_mut() {
                Some(last) if start <= last.1 => last.1 = start + width,
                _ => runs.push((start, start + width)),
            }
        }
    }
}

/// The multiplier of the rolling hash in [`key_runs`] (FNV-1's 64-bit prime: odd, with
/// bits spread so that windows differing in one byte hash apart).
const HASH_BASE: u64 = 0x0000_0100_0000_01b3;

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
    fn redact_masks_pieces_of_a_key_cut_anywhere() {
        let key = ApiKey::parse(OR_KEY).unwrap();
        // Cut at any place, from either side, inside other text: no 12 characters of the
        // key stay, and the rest of the text does.
        for cut in 0..OR_KEY.len() {
            for piece in [&OR_KEY[..cut], &OR_KEY[cut..]] {
                let text = format!("é {piece} rest");
                let out = redact(&text, [&key]);
                assert!(out.starts_with("é ") && out.ends_with(" rest"), "{out}");
                for window in OR_KEY.as_bytes().windows(MIN_RUN) {
                    let window = std::str::from_utf8(window).unwrap();
                    assert!(!out.contains(window), "{window} stays in {out}");
                }
            }
        }
        let text = format!("a{}b{}c", &OR_KEY[20..40], &OR_KEY[..30]);
        assert_eq!(redact(&text, [&key]), "ask-or-v1-ab…9f3cbsk-or-v1-ab…9f3cc");
        assert_eq!(redact("nothing here", [&key]), "nothing here");
        let bytes = format!("x{OR_KEY}y").into_bytes();
        assert_eq!(
            &*redact_bytes(&bytes, [&key]),
            "xsk-or-v1-ab…9f3cy".as_bytes()
        );
    }

    #[test]
    fn property_runs_are_found_as_a_direct_comparison_finds_them() {
        // The definition: every window of the text equal to one of the key's.
        fn model(text: &[u8], key: &[u8]) -> Vec<(usize, usize)> {
            let width = MIN_RUN.min(key.len());
            let mut runs: Vec<(usize, usize)> = Vec::new();
            if width == 0 || text.len() < width {
                return runs;
            }
            for (start, window) in text.windows(width).enumerate() {
                if !key.windows(width).any(|piece| piece == window) {
                    continue;
                }
                match runs.last_mut() {
                    Some(last) if start <= last.1 => last.1 = start + width,
                    _ => runs.push((start, start + width)),
                }
            }
            runs
        }
        let keys = [OR_KEY, "sk-12345678", "abababababababab", "gsk_Zx9aQ7rT0"];
        let mut rng = crate::testing::Rng::new(5);
        let mut found = 0;
        for _ in 0..3_000 {
            let key = *rng.pick(&keys);
            let mut text = Vec::new();
            while text.len() < rng.below(700) {
                match rng.below(3) {
                    0 => {
                        let from = rng.below(key.len());
                        let to = from + rng.below(key.len() - from + 1);
                        text.extend_from_slice(&key.as_bytes()[from..to]);
                    }
                    1 => text.extend_from_slice(b"data: {\"a\":\"b\"}\n\n"),
                    _ => text.push(*rng.pick(b"0123456789abcdef-sk_ ")),
                }
            }
            let expected = model(&text, key.as_bytes());
            found += usize::from(!expected.is_empty());
            assert_eq!(
                key_runs(&text, key.as_bytes()),
                expected,
                "{:?} in {:?}",
                key,
                String::from_utf8_lossy(&text)
            );
        }
        assert!(found > 500, "the texts seldom hold a run: {found}");
    }

    #[test]
    fn redact_masks_every_pool_key_in_text() {
        let key = ApiKey::parse(OR_KEY).unwrap();
        let text = format!("bad key {OR_KEY} (again: {OR_KEY})");
        let out = redact(&text, [&key]);
        assert_eq!(out, "bad key sk-or-v1-ab…9f3c (again: sk-or-v1-ab…9f3c)");
    }
}
