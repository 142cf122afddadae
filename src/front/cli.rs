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

    /// the provider the keys are for: openrouter (default), openai, anthropic, gemini,
    /// gemini-openai, groq, mistral, deepseek, cerebras, xai, or custom (with --upstream)
    #[argh(option)]
    pub provider: Option<String>,

    /// API base URL to forward to, instead of the provider's (default
    /// https://openrouter.ai/api/v1)
    #[argh(option)]
    pub upstream: Option<String>,

    /// a pool's API base URL instead of its provider's, as NAME=URL, e.g.
    /// gemini=https://gateway.example/gemini (repeatable; ROO_PROXY_POOL_UPSTREAM takes a
    /// comma-separated list)
    #[argh(option)]
    pub pool_upstream: Vec<String>,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,

    /// how long a rate-limited key rests when the upstream does not say: 60, 90s, 2m, 1h
    /// (default 60s)
    #[argh(option)]
    pub cooldown: Option<String>,

    /// upstream tries one request may make, 1 to 1000 (default: every available key once,
    /// at most 8)
    #[argh(option)]
    pub max_attempts: Option<String>,

    /// how requests are spread over keys: round-robin (default), or sticky (the same key
    /// until it fails, which keeps provider prompt caches warm)
    #[argh(option)]
    pub strategy: Option<String>,

    /// when every key rests, let a request wait this long for the first to come back
    /// instead of answering 429: 0 (default), 30, 30s, 2m
    #[argh(option)]
    pub wait: Option<String>,

    /// the largest request body accepted, 1KiB to 4GiB: 32MiB (default)
    #[argh(option)]
    pub max_body: Option<String>,

    /// the memory all request bodies held at once may take, --max-body to 64GiB: 256MiB
    /// (default, or --max-body if larger); past it, new requests get 503 with Retry-After: 1
    #[argh(option)]
    pub max_body_memory: Option<String>,

    /// requests handled at once, 1 to 65536 (default 1024); more get 503 with
    /// Retry-After: 1
    #[argh(option)]
    pub max_requests: Option<String>,

    /// connections open at once, 1 to 65536 (default 1024); more get 503
    #[argh(option)]
    pub max_connections: Option<String>,

    /// the largest request line plus headers, 4KiB to 1MiB: 64KiB (default); more get 431
    #[argh(option)]
    pub max_header_size: Option<String>,

    /// the most header lines in a request, 32 to 1024 (default 100); more get 431
    #[argh(option)]
    pub max_headers: Option<String>,

    /// time a client has to send a whole request once it began: 30s (default); slower
    /// gets 408
    #[argh(option)]
    pub client_timeout: Option<String>,

    /// time an unused client connection is kept open: 60s (default)
    #[argh(option)]
    pub idle_timeout: Option<String>,

    /// time to connect to the upstream: 15s (default)
    #[argh(option)]
    pub connect_timeout: Option<String>,

    /// time the upstream has to start answering (slow reasoning models answer late):
    /// 15m (default)
    #[argh(option)]
    pub headers_timeout: Option<String>,

    /// longest silence inside an upstream answer before it counts as broken: 5m
    /// (default); a stream is never cut while bytes flow
    #[argh(option)]
    pub silence_timeout: Option<String>,

    /// how long a stop signal waits for requests in flight: 30s (default), 0 for none
    #[argh(option)]
    pub shutdown_grace: Option<String>,

    /// a secret every request must carry (as its API key); required to listen on an
    /// address other than this machine's own
    #[argh(option)]
    pub access_token: Option<String>,

    /// a web page origin that may call the proxy from a browser, besides the editor's web
    /// views and pages on this machine: https://app.example, http://host:* (any port) or
    /// scheme:// (repeatable; ROO_PROXY_ALLOW_ORIGIN takes a comma-separated list)
    #[argh(option)]
    pub allow_origin: Vec<String>,

    /// a host name the proxy answers to besides loopback names and its address, e.g. a
    /// name in /etc/hosts (repeatable; ROO_PROXY_ALLOW_HOST takes a comma-separated list)
    #[argh(option)]
    pub allow_host: Vec<String>,

    /// share key states (rests, invalid marks, budgets) with other roo-proxy instances
    /// through Redis or Valkey: redis://host:6379, rediss://… (TLS), unix:///path.sock
    #[argh(option)]
    pub redis: Option<String>,

    /// a PEM file of the certificate authority that signed the rediss:// server's
    /// certificate, trusted instead of the public ones (a private CA)
    #[argh(option)]
    pub redis_ca: Option<PathBuf>,

    /// allow an http:// upstream on another machine (keys then travel in clear text)
    #[argh(switch)]
    pub allow_insecure_upstream: bool,

    /// print the version and exit
    #[argh(switch, short = 'V')]
    pub version: bool,

    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Keys(KeysArgs),
    Status(StatusArgs),
}

/// Show the key pool of a running proxy (from its /_roo/status): each key's state,
/// cooldown, counters and last error.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// the proxy's address (default 127.0.0.1, or ROO_PROXY_HOST)
    #[argh(option)]
    pub host: Option<String>,

    /// the proxy's port (default 3002, or ROO_PROXY_PORT)
    #[argh(option)]
    pub port: Option<u16>,

    /// print the JSON the proxy answers, for scripts
    #[argh(switch)]
    pub json: bool,

    /// the proxy's access token, if it has one (or ROO_PROXY_ACCESS_TOKEN)
    #[argh(option)]
    pub access_token: Option<String>,
}

/// Manage the keys file: add, remove, list and check keys. A running proxy picks up
/// changes within a second.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "keys")]
pub struct KeysArgs {
    #[argh(subcommand)]
    pub action: KeysAction,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum KeysAction {
    Add(AddArgs),
    Remove(RemoveArgs),
    List(ListArgs),
    Check(CheckArgs),
    Disable(DisableArgs),
    Enable(EnableArgs),
    Encrypt(EncryptArgs),
    Decrypt(DecryptArgs),
}

/// Add a key. Without KEY (or with -) it is read from standard input, hidden when typed
/// at a terminal, so it stays out of your shell history.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
pub struct AddArgs {
    /// the key; omit it (or give -) to read it from standard input
    #[argh(positional)]
    pub key: Option<String>,

    /// a name for the key, shown in logs and lists
    #[argh(option)]
    pub label: Option<String>,

    /// the account the key belongs to: keys of one account share its rate limits, so a
    /// 429 rests them all
    #[argh(option)]
    pub account: Option<String>,

    /// the provider the key is for (openrouter, gemini, anthropic, …; default: the
    /// proxy's --provider, i.e. the default pool)
    #[argh(option)]
    pub provider: Option<String>,

    /// the pool the key serves in, when not the one named after its provider (clients
    /// reach it at http://localhost:3002/NAME)
    #[argh(option)]
    pub pool: Option<String>,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// Remove the keys that start with PREFIX (at least 8 characters), or whose label is
/// PREFIX.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
pub struct RemoveArgs {
    /// the start of the key (8 characters or more), or its label
    #[argh(positional)]
    pub prefix: String,

    /// remove every key that matches, when several do
    #[argh(switch)]
    pub all: bool,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// List the keys, masked, with their state as the proxy last saved it (a running proxy
/// saves within a second of a change; `roo-proxy status` asks it live).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {
    /// print JSON, for scripts
    #[argh(switch)]
    pub json: bool,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// Ask the upstream about each key (GET <upstream>/key on OpenRouter): valid or not,
/// usage, limit and what remains. Exits 1 when a key is not valid.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "check")]
pub struct CheckArgs {
    /// the provider the keys are for (default openrouter; see roo-proxy --help)
    #[argh(option)]
    pub provider: Option<String>,

    /// the API base to ask, instead of the provider's (default
    /// https://openrouter.ai/api/v1)
    #[argh(option)]
    pub upstream: Option<String>,

    /// NAME=URL: the API base to ask about the keys of pool NAME, as the proxy's flag
    /// (repeatable)
    #[argh(option)]
    pub pool_upstream: Vec<String>,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// Take keys out of rotation until `keys enable`: the ones that start with PREFIX (at
/// least 8 characters) or whose label is PREFIX. A running proxy stops using them within
/// a second.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "disable")]
pub struct DisableArgs {
    /// the start of the key (8 characters or more), or its label
    #[argh(positional)]
    pub prefix: String,

    /// disable every key that matches, when several do
    #[argh(switch)]
    pub all: bool,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// Put keys back into rotation, clearing a rest or an invalid mark too: the ones that
/// start with PREFIX (at least 8 characters) or whose label is PREFIX.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enable")]
pub struct EnableArgs {
    /// the start of the key (8 characters or more), or its label
    #[argh(positional)]
    pub prefix: String,

    /// enable every key that matches, when several do
    #[argh(switch)]
    pub all: bool,

    /// the keys file (default: keys.json here if there is one, else the per-user one)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// Encrypt the keys file in place (an age file, https://age-encryption.org). Its secret
/// goes to the OS keychain (generated there on macOS and Windows); on Linux it is a
/// passphrase from ROO_PROXY_PASSPHRASE or typed at the terminal, kept in the kernel
/// keyring until reboot. Every command and the proxy then work as before.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "encrypt")]
pub struct EncryptArgs {
    /// the keys file (default keys.json in the current directory)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// Turn an encrypted keys file back into plain JSON, and remove its secret from the
/// keychain.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "decrypt")]
pub struct DecryptArgs {
    /// the keys file (default keys.json in the current directory)
    #[argh(option)]
    pub keys_file: Option<PathBuf>,
}

/// What `keys disable` and `keys enable` share.
pub struct SwitchArgs {
    pub prefix: String,
    pub all: bool,
}

impl From<DisableArgs> for SwitchArgs {
    fn from(a: DisableArgs) -> SwitchArgs {
        SwitchArgs {
            prefix: a.prefix,
            all: a.all,
        }
    }
}

impl From<EnableArgs> for SwitchArgs {
    fn from(a: EnableArgs) -> SwitchArgs {
        SwitchArgs {
            prefix: a.prefix,
            all: a.all,
        }
    }
}
