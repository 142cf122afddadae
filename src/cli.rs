//! The command line as typed: raw flags, before any validation or defaults.
//!
//! Invariant: no file system, no network, no environment here; `config.rs` turns this
//! (plus `ROO_PROXY_*` variables) into settings.

use std::path::PathBuf;

use argh::FromArgs;

/// A local proxy that spreads LLM API requests over a pool of API keys and rides out rate
/// limits. Run it with no arguments, then point your client (Roo Code, Cline, any
/// OpenAI-compatible SDK) at http://localhost:3002. Every flag can also be set with an
/// environment variable ROO_PROXY_<FLAG>, e.g. ROO_PROXY_PORT=3003; a flag wins.
#[derive(FromArgs, Debug, Default)]
pub struct Args {
    /// address to listen on (default 127.0.0.1)
    #[argh(option)]
    pub host: Option<String>,

    /// port to listen on (default 3002; 0 picks a free one)
    #[argh(option)]
    pub port: Option<u16>,

    /// API base URL to forward to (default https://openrouter.ai/api/v1)
    #[argh(option)]
    pub upstream: Option<String>,

    /// the keys file (default keys.json in the current directory)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,

    /// how long a rate-limited key rests when the upstream does not say: 60, 90s, 2m, 1h
    /// (default 60s)
    #[argh(option)]
    pub cooldown: Option<String>,

    /// upstream tries one request may make (default: every available key once, at most 8)
    #[argh(option)]
    pub max_attempts: Option<usize>,

    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,
}
