//! The log: `env_logger` as `RUST_LOG` asks, except that other crates never log below
//! `info`, whatever `RUST_LOG` says.
//!
//! Invariant: no log line can hold a key. Our own lines name keys masked; the HTTP
//! client's `debug` and `trace` lines (ureq hex-dumps every request head, the
//! `Authorization` header with the pool key in it, and every body) are never written,
//! however specific the `RUST_LOG` directive that asks for them.

use log::{Level, Log, Metadata, Record};

/// Our own modules: `roo_proxy::…`.
const OURS: &str = "roo_proxy";

/// Starts the log: `RUST_LOG`, default `info`, capped for other crates; in ASCII if
/// `console::init` chose it.
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_target(false);
    if crate::front::console::ascii() {
        let stderr = crate::front::console::Ascii(std::io::stderr());
        builder.target(env_logger::Target::Pipe(Box::new(stderr)));
    }
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Capped(inner))).is_ok() {
        log::set_max_level(max);
    }
}

/// Whether a line at `level` from `target` may be written at all.
pub fn allowed(target: &str, level: Level) -> bool {
    let ours = target == OURS || target.starts_with("roo_proxy::");
    ours || level <= Level::Info
}

struct Capped(env_logger::Logger);

impl Log for Capped {
    fn enabled(&self, metadata: &Metadata) -> bool {
        allowed(metadata.target(), metadata.level()) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if allowed(record.target(), record.level()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_crates_stop_at_info_and_ours_go_to_trace() {
        for target in [
            "ureq",
            "ureq_proto::util",
            "ureq::unversioned::transport",
            "rustls::client",
        ] {
            assert!(allowed(target, Level::Warn), "{target}");
            assert!(allowed(target, Level::Info), "{target}");
            assert!(!allowed(target, Level::Debug), "{target}");
            assert!(!allowed(target, Level::Trace), "{target}");
        }
        for target in ["roo_proxy", "roo_proxy::server"] {
            assert!(allowed(target, Level::Trace), "{target}");
        }
        assert!(!allowed("roo_proxy_evil", Level::Trace));
    }
}
