//! The keys at rest: the key type, the keys file and its edits, encryption, the secret, and owner-only files.

pub mod key;
#[cfg(any(windows, test))]
pub mod owner_only;
pub mod sealed;
pub mod secret;
pub mod store;
