//! Keeps a running proxy in step with its files: reloads the keys file when it changes,
//! and saves the pool's state at most once a second.
//!
//! The keys file is polled (read and compared every 250 ms) rather than watched through
//! OS notifications: a keys file is a few hundred bytes, polling behaves the same on every
//! OS and file system (network drives, editors that replace files, atomic renames), and
//! it needs no crate.
//!
//! Invariants: the proxy never writes the keys file. A keys file that does not parse,
//! or a path that names no regular file (a FIFO, a folder), is logged and ignored, and the last good pool keeps serving. The state file is written
//! only while a keys file exists (a pool from environment variables leaves no files).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::keys::secret::Ask;
use crate::keys::store::{self, KeyEntry};
use crate::persist::state;
use crate::rotation::pool::Now;
use crate::rotation::pools::{PoolChange, Pools};

const POLL: Duration = Duration::from_millis(250);
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// How often "last used" times alone are saved.
const SAVE_USE_EVERY: Duration = Duration::from_secs(15);

/// Values of the key variables at start, for when the keys file goes away.
pub type EnvKeys = Vec<(String, String)>;

pub struct Watch {
    pub pools: Arc<Pools>,
    pub keys_file: PathBuf,
    pub state_file: PathBuf,
    /// The keys file's bytes when the pool was built (`None`: there was no file).
    pub seen: Option<Vec<u8>>,
    pub env: EnvKeys,
    /// What opened the keys file when it is encrypted: a reload after an edit needs no
    /// secret (edits keep the header), so the keychain is asked only for a new one.
    pub seal: Option<store::Seal>,
}

impl Watch {
    pub fn spawn(self) -> io::Result<()> {
        thread::Builder::new()
            .name("watch".into())
            .spawn(move || self.run())
            .map(|_| ())
    }

    fn run(mut self) {
        let mut last_save = Instant::now();
        let mut last_use_save = Instant::now();
        let mut save_error: Option<String> = None;
        let mut refused: Option<String> = None;
        loop {
            thread::sleep(POLL);
            self.check_keys_file(&mut refused);
            if last_save.elapsed() >= SAVE_EVERY {
                last_save = Instant::now();
                let with_use = last_use_save.elapsed() >= SAVE_USE_EVERY;
                if with_use {
                    last_use_save = last_save;
                }
                if let Err(e) = self.save_if_changed(with_use) {
                    let message = e.to_string();
                    // Say it once, not every second.
                    if save_error.as_ref() != Some(&message) {
                        warn!(
                            "cannot save key state to '{}': {message}",
                            self.state_file.display()
                        );
                        save_error = Some(message);
                    }
                }
            }
        }
    }

    /// Reloads the keys file if it changed. `refused`: why it was last refused, so that
    /// a path that names no file (a FIFO, a folder) is reported once, not every poll.
    fn check_keys_file(&mut self, refused: &mut Option<String>) {
        let now = match crate::keys::store::read_bounded(&self.keys_file) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if store::NotAFile::is(&e) => {
                let why = e.to_string();
                if refused.as_ref() != Some(&why) {
                    error!(
                        "keys file '{}': {why}; the proxy keeps serving with the keys it had",
                        self.keys_file.display()
                    );
                    *refused = Some(why);
                }
                return;
            }
            Err(_) => return, // Unreadable for a moment (being replaced on Windows): look again.
        };
        *refused = None;
        if now == self.seen {
            return;
        }
        let replaced = self.entries(now.as_deref()).and_then(|entries| {
            self.pools
                .replace(entries, Now::read())
                .map_err(|e| format!("keys file '{}': {e}", self.keys_file.display()))
        });
        match replaced {
            Ok(changes) => {
                let several = changes.len() > 1;
                for change in changes {
                    match change {
                        PoolChange::Kept(name, reloaded) if several => info!(
                            "keys file changed: pool {name}: {} added, {} removed, {} in the pool",
                            reloaded.added, reloaded.removed, reloaded.total
                        ),
                        PoolChange::Kept(_, reloaded) => info!(
                            "keys file changed: {} added, {} removed, {} in the pool",
                            reloaded.added, reloaded.removed, reloaded.total
                        ),
                        PoolChange::New(name, keys) => {
                            info!(
                                "keys file changed: new pool {name} with {keys} key(s), at /{name}/"
                            )
                        }
                        PoolChange::Gone(name) => {
                            info!("keys file changed: pool {name} has no keys left and is gone")
                        }
                    }
                }
            }
            Err(e) => error!("{e}; the proxy keeps serving with the keys it had"),
        }
        self.seen = now;
    }

    fn entries(&mut self, bytes: Option<&[u8]>) -> Result<Vec<KeyEntry>, String> {
        match bytes {
            Some(bytes) => {
                let (document, entries, _) =
                    store::parse_file(&self.keys_file, bytes, &mut self.seal, Ask::Never)
                        .map_err(|e| e.to_string())?;
                store::scrub(document);
                Ok(entries)
            }
            None => {
                let env = |name: &str| {
                    self.env
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                store::load_with_env(&self.keys_file, env)
                    .map(|file| file.entries)
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn save_if_changed(&self, with_use: bool) -> io::Result<()> {
        if !self.keys_file.exists() {
            return Ok(());
        }
        match self.pools.take_snapshot(Now::read(), with_use) {
            Some(snapshot) => state::save(&self.state_file, &snapshot),
            None => Ok(()),
        }
    }
}

/// Saves the pools' state now (at shutdown), when there is a keys file to sit beside.
pub fn save_now(pools: &Pools, keys_file: &std::path::Path) {
    if !keys_file.exists() {
        return;
    }
    let path = state::path_for(keys_file);
    if let Err(e) = state::save(&path, &pools.snapshot(Now::read())) {
        warn!("cannot save key state to '{}': {e}", path.display());
    }
}
