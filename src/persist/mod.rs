//! The pool's state beyond one process's memory: the state file, the watch thread, and sharing through Redis.

#[cfg(feature = "redis")]
pub mod flights;
pub mod shared;
pub mod state;
#[cfg(feature = "redis")]
pub mod team;
pub mod watch;
