//! The state file: which keys rest, are disabled or were last used when, remembered
//! across restarts, so a restarted proxy does not send requests to a key that is still
//! rate limited.
//!
//! Invariants: no key material. Keys are named by a fingerprint, the first 16 hex digits
//! of their SHA-256, which cannot be turned back into a key. Times are wall-clock epoch
//! milliseconds, since a remembered instant must outlive the process. The file is a cache:
//! a missing or unreadable one means "nothing remembered" and never stops anything.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::key::ApiKey;
use crate::store;

/// What is remembered of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub state: SavedState,
    /// When a rest ends (cooling, out of credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
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
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state) => (state, None),
            Err(e) => (
                StateFile::default(),
                Some(format!("ignoring the state file '{}': {e}", path.display())),
            ),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (StateFile::default(), None),
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
