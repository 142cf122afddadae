//! The pool's state beyond one process's memory: the state file, the watch thread, and sharing through Redis.

pub mod shared;
pub mod state;
#[cfg(feature = "redis")]
pub mod team;
pub mod watch;
