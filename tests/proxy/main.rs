//! Integration tests: the real `roo-proxy` binary against the `mock-upstream` binary,
//! speaking real HTTP on 127.0.0.1. See `support.rs` for the harness.

mod support;

mod browser;
mod dialects;
mod encrypted;
mod faults;
mod forwarding;
mod hardening;
mod keys;
mod observe;
mod policies;
mod pools;
mod providers;
mod reload;
mod rotation;
mod secrets;
#[cfg(feature = "redis")]
mod shared;
mod startup;
mod streaming;
mod tidy;
