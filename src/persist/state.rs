//! The state file: which keys rest, are disabled or were last used when, remembered
//! across restarts, so a restarted proxy does not send requests to a key that is still
//! rate limited.
//!
//! Invariants: no key material. Keys are named by a fingerprint, the first 16 hex digits
//! of their SHA-256, which cannot be turned back into a key. Times are wall-clock epoch
//! milliseconds, since a remembered instant must outlive the process. The file is a cache:
//! a missing or unreadable one means "nothing remembered" and never stops anything.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::key::ApiKey;
use crate::keys::store;

/// What is remembered of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub state: SavedState,
    /// When a rest ends (cooling, out of credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
    /// Rests that cover some models only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub model_rests: Vec<SavedModelRest>,
}

/// A rest for some models only: `models` is a model's name, or [`FREE_MODELS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedModelRest {
    pub models: String,
    pub until_ms: u64,
}

/// How a rest for every `…:free` model is written in the state file.
pub const FREE_MODELS: &str = "*:free";

/// A key's state as people and tools see it: the status page, `/_roo/status`
/// (`roo-proxy status --json`), `roo-proxy keys list --json`, both CLI tables and the
/// metrics all name it through this one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Ready,
    Cooling,
    OutOfCredits,
    Invalid,
    Disabled,
}

impl KeyStatus {
    pub const ALL: [KeyStatus; 5] = [
        KeyStatus::Ready,
        KeyStatus::Cooling,
        KeyStatus::OutOfCredits,
        KeyStatus::Invalid,
        KeyStatus::Disabled,
    ];

    /// The name in JSON, tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Ready => "ready",
            KeyStatus::Cooling => "cooling",
            KeyStatus::OutOfCredits => "out of credits",
            KeyStatus::Invalid => "invalid",
            KeyStatus::Disabled => "disabled",
        }
    }

    /// Whether the state ends by itself after a time (shown with the time left).
    pub fn rests(self) -> bool {
        matches!(self, KeyStatus::Cooling | KeyStatus::OutOfCredits)
    }

    /// A remembered key's state: `left` is the seconds left of its rest, if any.
    pub fn of_saved(saved: Option<&Saved>, left: Option<u64>, disabled: bool) -> KeyStatus {
        match (saved.map(|s| s.state), left) {
            _ if disabled => KeyStatus::Disabled,
            (Some(SavedState::Invalid), _) => KeyStatus::Invalid,
            (Some(SavedState::Cooling), Some(_)) => KeyStatus::Cooling,
            (Some(SavedState::OutOfCredits), Some(_)) => KeyStatus::OutOfCredits,
            _ => KeyStatus::Ready,
        }
    }
}

impl std::fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for KeyStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Whole seconds until `until_ms`, rounded up (a rest is never shown shorter than it
/// is), from the wall clock: how `keys list` reads the state file. The pool counts the
/// same way from its clock (`pool::seconds_until`).
pub fn rest_seconds(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000)
}

/// The one way a rest's time left is written, in `keys list`, `roo-proxy status` and
/// (the same rule in JavaScript) the status page: `42s` below two minutes, then whole
/// minutes, hours and minutes, or days, each rounded up.
pub fn rest_text(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds.div_ceil(60)),
        7200..=172_799 => {
            let minutes = seconds.div_ceil(60);
            format!("{}h {}m", minutes / 60, minutes % 60)
        }
        _ => format!("{}d", seconds.div_ceil(86_400)),
    }
}

/// A rest for some models, as shown: `scope` reads `model NAME` or `free models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopedRest {
    pub scope: String,
    pub seconds_left: u64,
}

impl ScopedRest {
    /// `model gemini-2.5-pro 37s`-style text for tables.
    pub fn describe(rests: &[ScopedRest]) -> String {
        rests
            .iter()
            .map(|r| format!("{} {}", r.scope, rest_text(r.seconds_left)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The shown scope of a remembered rest's `models`.
    pub fn scope_of(models: &str) -> String {
        if models == FREE_MODELS {
            "free models".to_string()
        } else {
            format!("model {models}")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedState {
    Ready,
    Cooling,
    Invalid,
    OutOfCredits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    #[serde(default)]
    pub version: u32,
    /// By key fingerprint.
    #[serde(default)]
    pub keys: BTreeMap<String, Saved>,
}

const VERSION: u32 = 1;
/// The most of a state file read (10,000 keys with rests take about 3 MiB); the rest of
/// a larger one is cut, which makes it damaged, so it is ignored.
const LARGEST_STATE_FILE: u64 = 64 * 1024 * 1024;

/// The state file that belongs to a keys file: `keys.json` → `keys.json.state`.
pub fn path_for(keys_file: &Path) -> PathBuf {
    store::sibling(keys_file, ".state")
}

/// The name a key has in the state file.
pub fn fingerprint(key: &ApiKey) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.expose().as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the state file; a missing one is empty. A damaged one is also read as empty,
/// and the reason is returned so the caller can say so.
pub fn load(path: &Path) -> (StateFile, Option<String>) {
    let read = store::open_regular(path).and_then(|file| {
        let mut bytes = Vec::new();
        file.take(LARGEST_STATE_FILE).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    match read {
        Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state) => (state, None),
            Err(e) => (
                StateFile::default(),
                Some(format!("ignoring the state file '{}': {e}", path.display())),
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (StateFile::default(), None),
        Err(e) if store::NotAFile::is(&e) => (
            StateFile::default(),
            Some(format!(
                "ignoring the state file '{}': {e}; remove it (it only remembers the keys' rests)",
                path.display()
            )),
        ),
        Err(e) => (
            StateFile::default(),
            Some(format!(
                "cannot read the state file '{}': {e}",
                path.display()
            )),
        ),
    }
}

/// Writes the state file atomically.
pub fn save(path: &Path, state: &StateFile) -> io::Result<()> {
    let mut state = state.clone();
    state.version = VERSION;
    let mut text = serde_json::to_string_pretty(&state).map_err(io::Error::other)?;
    text.push('\n');
    store::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rest_is_written_one_way_and_never_shorter_than_it_is() {
        let cases = [
            (0, "0s"),
            (42, "42s"),
            (119, "119s"),
            (120, "2m"),
            (121, "3m"),
            (599, "10m"),
            (600, "10m"),
            (7199, "120m"),
            (7200, "2h 0m"),
            (7201, "2h 1m"),
            (10_799, "3h 0m"),
            (172_799, "48h 0m"),
            (172_800, "2d"),
            (172_801, "3d"),
        ];
        for (seconds, text) in cases {
            assert_eq!(rest_text(seconds), text, "{seconds}");
        }
        assert_eq!(rest_seconds(10_001, 1), 10);
        assert_eq!(rest_seconds(10_002, 1), 11);
        assert_eq!(rest_seconds(5, 10), 0);
    }

    #[test]
    fn fingerprints_are_short_stable_and_not_the_key() {
        let key = ApiKey::parse("sk-or-v1-0123456789abcdef0123456789abcdef").unwrap();
        let print = fingerprint(&key);
        assert_eq!(print.len(), 16);
        assert_eq!(print, fingerprint(&key.clone()));
        assert!(!key.expose().contains(&print));
        let other = ApiKey::parse("sk-or-v1-0123456789abcdef0123456789abcdeF").unwrap();
        assert_ne!(print, fingerprint(&other));
    }

    #[test]
    fn state_files_round_trip_and_damage_is_not_fatal() {
        let dir = std::env::temp_dir().join(format!("roo-proxy-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json.state");
        let mut state = StateFile::default();
        state.keys.insert(
            "00ff".into(),
            Saved {
                state: SavedState::Cooling,
                until_ms: Some(5),
                last_used_ms: None,
                model_rests: vec![SavedModelRest {
                    models: FREE_MODELS.into(),
                    until_ms: 7,
                }],
            },
        );
        save(&path, &state).unwrap();
        let (read, problem) = load(&path);
        assert_eq!(problem, None);
        assert_eq!(read.keys, state.keys);
        assert_eq!(read.version, VERSION);

        std::fs::write(&path, b"{not json").unwrap();
        let (read, problem) = load(&path);
        assert_eq!(read, StateFile::default());
        assert!(problem.unwrap().starts_with("ignoring the state file"));
        assert_eq!(load(&dir.join("missing")), (StateFile::default(), None));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
