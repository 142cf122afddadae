//! Which key serves next: the pure policy and attempt decisions, the reading of every provider's answers, the presets, and the pool that holds the keys' states.

pub mod attempts;
pub mod classify;
pub mod policy;
pub mod pool;
pub mod pools;
pub mod provider;
pub mod waiting;
