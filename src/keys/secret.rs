//! The secret that opens an encrypted keys file, and where it is looked for: the
//! `ROO_PROXY_PASSPHRASE` variable, then the OS keychain (macOS Keychain, Windows
//! Credential Manager, the Linux kernel keyring), then a hidden prompt at a terminal.
//!
//! Each keys file has its own entry, named by its absolute path: service `roo-proxy`,
//! account = the path on macOS and Windows (through `keyring`); a `user` key
//! `roo-proxy:<path>` in the user keyring on Linux (through `linux-keyutils`, the crate
//! `keyring` itself uses; `keyring`'s own store fails where the persistent keyring cannot
//! be linked, as in containers). On macOS and Windows the keychain keeps it for good, so
//! `keys encrypt` generates the secret and nobody ever types it. The Linux kernel keyring
//! forgets at reboot, so there the secret is a passphrase the user chose, and the keyring
//! spares typing it again. A passphrase from `ROO_PROXY_PASSPHRASE` is never copied into
//! the keychain.
//!
//! Invariants: the secret is never printed or logged; it lives in [`Zeroizing`] strings.
//! A wrong or missing secret is an error that says where we looked and what to do.

use std::io::IsTerminal;
use std::path::Path;

use zeroize::Zeroizing;

use crate::front::console::errln;
use crate::keys::sealed::{self, Seal, SealError};

pub const PASSPHRASE_VARIABLE: &str = "ROO_PROXY_PASSPHRASE";
const SERVICE: &str = "roo-proxy";

/// Whether a secret may be asked for at the terminal (never from the watch thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Terminal,
    Never,
}

/// The keychain of this OS, as messages name it.
pub fn keychain_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "the macOS Keychain"
    } else if cfg!(windows) {
        "Windows Credential Manager"
    } else if cfg!(target_os = "linux") {
        "the Linux kernel keyring"
    } else {
        "the OS keychain (none on this system)"
    }
}

/// Whether the keychain keeps a secret across reboots (so a generated one is safe there).
pub fn keychain_persists() -> bool {
    cfg!(any(target_os = "macos", windows))
}

fn account(path: &Path) -> String {
    path.display().to_string()
}

/// The secret stored for `path`: `Ok(None)` when there is no entry, `Err` when the
/// keychain cannot be used.
#[cfg(any(target_os = "macos", target_os = "windows"))]
fn keychain_read(path: &Path) -> Result<Option<Zeroizing<String>>, String> {
    let entry = keyring::Entry::new(SERVICE, &account(path)).map_err(|e| e.to_string())?;
    match entry.get_password() {
        Ok(secret) => Ok(Some(Zeroizing::new(secret))),
        Err(keyring::Error::NoEntry) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(any(target_os = "macos", target_os = "windows"))]
fn keychain_write(path: &Path, secret: &str) -> Result<(), String> {
    keyring::Entry::new(SERVICE, &account(path))
        .and_then(|entry| entry.set_password(secret))
        .map_err(|e| e.to_string())
}

/// Removes the entry for `path`; no entry is not an error.
#[cfg(any(target_os = "macos", target_os = "windows"))]
pub fn forget(path: &Path) -> Result<(), String> {
    match keyring::Entry::new(SERVICE, &account(path)).and_then(|e| e.delete_credential()) {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// On Linux the entry is a `user` key described `roo-proxy:<path>` in the user keyring
/// (`keyctl show @u`), which every session of the user reaches; it is also linked into
/// the persistent keyring when the system allows, so it outlives a logout for a few days.
#[cfg(target_os = "linux")]
mod kernel {
    use linux_keyutils::{Key, KeyError, KeyRing, KeyRingIdentifier};

    pub fn description(path: &std::path::Path) -> String {
        format!("{}:{}", super::SERVICE, super::account(path))
    }

    fn user_keyring() -> Result<KeyRing, String> {
        KeyRing::from_special_id(KeyRingIdentifier::User, true).map_err(|e| e.to_string())
    }

    pub fn find(description: &str) -> Result<Option<Key>, String> {
        match user_keyring()?.search(description) {
            Ok(key) => Ok(Some(key)),
            Err(KeyError::KeyDoesNotExist | KeyError::KeyExpired | KeyError::KeyRevoked) => {
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn add(description: &str, secret: &[u8]) -> Result<(), String> {
        let key = user_keyring()?
            .add_key(description, secret)
            .map_err(|e| e.to_string())?;
        if let Ok(persistent) = KeyRing::get_persistent(KeyRingIdentifier::User) {
            let _ = persistent.link_key(key);
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn keychain_read(path: &Path) -> Result<Option<Zeroizing<String>>, String> {
    let Some(key) = kernel::find(&kernel::description(path))? else {
        return Ok(None);
    };
    let bytes = Zeroizing::new(key.read_to_vec().map_err(|e| e.to_string())?);
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Some(Zeroizing::new(text.to_string()))),
        Err(_) => Err("its entry is not text".into()),
    }
}

#[cfg(target_os = "linux")]
fn keychain_write(path: &Path, secret: &str) -> Result<(), String> {
    kernel::add(&kernel::description(path), secret.as_bytes())
}

/// Removes the entry for `path`; no entry is not an error.
#[cfg(target_os = "linux")]
pub fn forget(path: &Path) -> Result<(), String> {
    match kernel::find(&kernel::description(path))? {
        Some(key) => key.invalidate().map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

#[cfg(not(any(target_os = "macos", target_os = "windows", target_os = "linux")))]
fn keychain_read(_: &Path) -> Result<Option<Zeroizing<String>>, String> {
    Err("roo-proxy has no keychain support on this system".into())
}

#[cfg(not(any(target_os = "macos", target_os = "windows", target_os = "linux")))]
fn keychain_write(_: &Path, _: &str) -> Result<(), String> {
    keychain_read(Path::new("")).map(|_| ())
}

#[cfg(not(any(target_os = "macos", target_os = "windows", target_os = "linux")))]
pub fn forget(_: &Path) -> Result<(), String> {
    Ok(())
}

/// How the entry for `path` is named in the keychain, for messages.
fn entry_name(path: &Path) -> String {
    #[cfg(target_os = "linux")]
    let name = format!("a user key '{}'", kernel::description(path));
    #[cfg(not(target_os = "linux"))]
    let name = format!("service '{SERVICE}', account '{}'", account(path));
    name
}

/// Stores the secret for `path` in the keychain.
pub fn remember(path: &Path, secret: &str) -> Result<(), String> {
    keychain_write(path, secret)
}

fn variable() -> Option<Zeroizing<String>> {
    std::env::var(PASSPHRASE_VARIABLE)
        .ok()
        .map(Zeroizing::new)
        .filter(|v| !v.is_empty())
}

fn can_ask(ask: Ask) -> bool {
    ask == Ask::Terminal && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn prompt(question: &str) -> Result<Zeroizing<String>, String> {
    rpassword::prompt_password(question)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read the passphrase from the terminal: {e}"))
}

/// Opens a sealed keys file: the seal that opened it and its text. The error says where
/// we looked and what to do (the caller adds the path).
pub fn open(path: &Path, bytes: &[u8], ask: Ask) -> Result<(Seal, Zeroizing<Vec<u8>>), String> {
    let damaged = |e: SealError| e.to_string();
    if let Some(passphrase) = variable() {
        return Seal::open(&passphrase, bytes).map_err(|e| match e {
            SealError::WrongSecret => format!(
                "{PASSPHRASE_VARIABLE} does not open it; set it to the passphrase the file was encrypted with, or unset it to use {}",
                keychain_name()
            ),
            other => damaged(other),
        });
    }
    let mut looked = vec![format!("{PASSPHRASE_VARIABLE} is not set")];
    match keychain_read(path) {
        Ok(Some(secret)) => match Seal::open(&secret, bytes) {
            Ok(opened) => return Ok(opened),
            Err(SealError::WrongSecret) => looked.push(format!(
                "the entry for it in {} does not open it (the file was encrypted again elsewhere?)",
                keychain_name()
            )),
            Err(other) => return Err(damaged(other)),
        },
        Ok(None) => looked.push(format!(
            "{} has no entry for it ({}){}",
            keychain_name(),
            entry_name(path),
            if keychain_persists() {
                " (was the file moved or copied from elsewhere?)"
            } else {
                "; it forgets at reboot"
            }
        )),
        Err(e) => looked.push(format!("{} cannot be used: {e}", keychain_name())),
    }
    if can_ask(ask) {
        let passphrase = prompt(&format!("Passphrase for {}: ", path.display()))?;
        return match Seal::open(&passphrase, bytes) {
            Ok(opened) => {
                if let Err(e) = keychain_write(path, &passphrase) {
                    errln!(
                        "note: cannot remember the passphrase in {}: {e}",
                        keychain_name()
                    );
                }
                Ok(opened)
            }
            Err(SealError::WrongSecret) => {
                Err("the passphrase typed does not open it; try again".into())
            }
            Err(other) => Err(damaged(other)),
        };
    }
    looked.push("there is no terminal to ask at".into());
    Err(format!(
        "no secret for it was found: {}. Set {PASSPHRASE_VARIABLE} to its passphrase, or run `roo-proxy keys list` at a terminal to type it (it is then kept in {})",
        looked.join("; "),
        keychain_name()
    ))
}

/// The secret `keys encrypt` seals with, its scrypt work factor, and where it came from.
pub struct Chosen {
    pub secret: Zeroizing<String>,
    pub work: u8,
    pub from: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `ROO_PROXY_PASSPHRASE`: the environment supplies it, so it is not copied into the
    /// keychain.
    Variable,
    /// Typed at the terminal: kept in the keychain, so nothing asks again.
    Typed,
    /// Generated here: it must reach the keychain before the file is sealed.
    Generated,
}

/// Picks the secret for `keys encrypt`: `ROO_PROXY_PASSPHRASE`; else a generated one
/// where the keychain keeps it for good; else a passphrase typed twice at a terminal.
pub fn choose() -> Result<Chosen, String> {
    if let Some(secret) = variable() {
        return Ok(Chosen {
            secret,
            work: sealed::WORK_PASSPHRASE,
            from: Origin::Variable,
        });
    }
    if keychain_persists() {
        return Ok(Chosen {
            secret: sealed::generate_passphrase().map_err(|e| e.to_string())?,
            work: sealed::WORK_GENERATED,
            from: Origin::Generated,
        });
    }
    if !can_ask(Ask::Terminal) {
        return Err(format!(
            "{} forgets at reboot, so the keys file needs a passphrase you keep: set {PASSPHRASE_VARIABLE}, or run `roo-proxy keys encrypt` at a terminal to type one",
            keychain_name()
        ));
    }
    let first = prompt("Choose a passphrase for the keys file (input is hidden): ")?;
    if first.trim().is_empty() {
        return Err("the passphrase is empty; nothing changed".into());
    }
    let second = prompt("Type it again: ")?;
    if *first != *second {
        return Err("the two passphrases differ; nothing changed".into());
    }
    Ok(Chosen {
        secret: first,
        work: sealed::WORK_PASSPHRASE,
        from: Origin::Typed,
    })
}
