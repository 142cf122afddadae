//! Settings, validated once at start from flags, `ROO_PROXY_*` variables and defaults.
//!
//! Invariant: a `Config` that exists is usable; every problem is found here and
//! reported with the flag or variable that caused it. No threads, no network.

use std::path::PathBuf;
use std::time::Duration;

use crate::front::cli::Args;
use crate::keys::store;
use crate::rotation::policy::Strategy;
use crate::rotation::provider::{self, Provider};
use crate::serve::browser::{self, OriginRule};
use crate::serve::error::Error;
use crate::serve::http1::Limits;

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 3002;
pub const DEFAULT_KEYS_FILE: &str = "keys.json";
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// The default attempt budget is one per available key, but never more than this.
pub const MAX_DEFAULT_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// The provider preset (`--provider`): how keys go upstream, paths, error shapes.
    pub provider: Provider,
    /// The API base, without a trailing slash: the provider's, or `--upstream`.
    pub upstream: String,
    /// `--pool-upstream NAME=URL`: other pools' API bases (no trailing slash), checked.
    pub pool_upstreams: Vec<(String, String)>,
    /// Absolute.
    pub keys_file: PathBuf,
    pub cooldown: Duration,
    /// `None`: one try per available key, at most [`MAX_DEFAULT_ATTEMPTS`].
    pub max_attempts: Option<usize>,
    pub strategy: Strategy,
    /// How long a request may wait for a resting key; zero answers 429 at once.
    pub wait: Duration,
    /// Largest request body accepted (413 past it).
    pub max_body: u64,
    /// Memory all request bodies may hold together (503 past it).
    pub max_body_memory: u64,
    /// Requests handled at once; more get 503 with `Retry-After: 1`.
    pub max_requests: usize,
    /// How long a stop signal waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Connections open at once; more get 503.
    pub max_connections: usize,
    /// Request head size and header count (431 past them).
    pub limits: Limits,
    /// Time a client has to send a whole request once it began (408 past it).
    pub client_timeout: Duration,
    /// Time an unused client connection stays open.
    pub idle_timeout: Duration,
    pub upstream_timeouts: UpstreamTimeouts,
    /// When set, every request must carry it (as `Authorization: Bearer` or `x-api-key`).
    pub access_token: Option<String>,
    /// Page origins a browser may call the proxy from (the defaults, then `--allow-origin`).
    pub allow_origins: Vec<OriginRule>,
    /// Host names answered besides loopback names and `host` (`--allow-host`).
    pub allow_hosts: Vec<String>,
    /// The Redis that instances sharing the pool meet at (`--redis`), checked.
    pub redis: Option<String>,
    /// The PEM file of the CA a `rediss://` server's certificate must chain to, in place
    /// of the public roots (`--redis-ca`); read when the link starts.
    pub redis_ca: Option<PathBuf>,
}

impl Config {
    /// Builds the settings from `args`, falling back to `env` (a lookup of variables, so
    /// tests need not touch the process environment) and then to the defaults.
    pub fn build(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let host = args
            .host
            .or_else(|| env("ROO_PROXY_HOST"))
            .unwrap_or_else(|| DEFAULT_HOST.into());
        if host.trim().is_empty() {
            return Err(Error::Config("--host is empty".into()));
        }
        let port = match args.port {
            Some(port) => port,
            None => match env("ROO_PROXY_PORT") {
                Some(v) => v.trim().parse().map_err(|_| {
                    Error::Config(format!(
                        "ROO_PROXY_PORT='{v}' is not a port number (0 to 65535)"
                    ))
                })?,
                None => DEFAULT_PORT,
            },
        };
        let upstream_given = args.upstream.is_some() || env("ROO_PROXY_UPSTREAM").is_some();
        let (provider, upstream) = upstream(args.provider, args.upstream, env)?;
        let keys_file = keys_file(args.keys_file, env);
        let cooldown = setting(
            args.cooldown,
            "--cooldown",
            "ROO_PROXY_COOLDOWN",
            env,
            parse_duration,
        )?
        .unwrap_or(DEFAULT_COOLDOWN);
        let count = |flag: Option<String>, name: &str, variable: &str, range: &Range| {
            setting(flag, name, variable, env, |v| range.count(v))
        };
        let size = |flag: Option<String>, name: &str, variable: &str, range: &Range| {
            setting(flag, name, variable, env, |v| range.size(v))
        };
        let max_attempts = count(
            args.max_attempts,
            "--max-attempts",
            "ROO_PROXY_MAX_ATTEMPTS",
            &MAX_ATTEMPTS,
        )?;
        let strategy = setting(
            args.strategy,
            "--strategy",
            "ROO_PROXY_STRATEGY",
            env,
            parse_strategy,
        )?
        .unwrap_or_default();
        let wait = setting(args.wait, "--wait", "ROO_PROXY_WAIT", env, parse_wait)?
            .unwrap_or(Duration::ZERO);
        let max_body = size(args.max_body, "--max-body", "ROO_PROXY_MAX_BODY", &MAX_BODY)?
            .unwrap_or(DEFAULT_MAX_BODY);
        let max_body_memory = max_body_memory(args.max_body_memory, max_body, env)?;
        let shutdown_grace = setting(
            args.shutdown_grace,
            "--shutdown-grace",
            "ROO_PROXY_SHUTDOWN_GRACE",
            env,
            parse_wait,
        )?
        .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        let time = |flag: Option<String>, name: &str, variable: &str, default: Duration| {
            setting(flag, name, variable, env, parse_duration).map(|t| t.unwrap_or(default))
        };
        let max_requests = count(
            args.max_requests,
            "--max-requests",
            "ROO_PROXY_MAX_REQUESTS",
            &MAX_REQUESTS,
        )?
        .unwrap_or(DEFAULT_MAX_REQUESTS);
        let max_connections = count(
            args.max_connections,
            "--max-connections",
            "ROO_PROXY_MAX_CONNECTIONS",
            &MAX_CONNECTIONS,
        )?
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        let max_head = setting(
            args.max_header_size,
            "--max-header-size",
            "ROO_PROXY_MAX_HEADER_SIZE",
            env,
            |v| MAX_HEADER_SIZE.size::<usize>(v),
        )?
        .unwrap_or(DEFAULT_MAX_HEADER_SIZE);
        let max_headers = count(
            args.max_headers,
            "--max-headers",
            "ROO_PROXY_MAX_HEADERS",
            &MAX_HEADERS,
        )?
        .unwrap_or(DEFAULT_MAX_HEADERS);
        let client_timeout = time(
            args.client_timeout,
            "--client-timeout",
            "ROO_PROXY_CLIENT_TIMEOUT",
            DEFAULT_CLIENT_TIMEOUT,
        )?;
        let idle_timeout = time(
            args.idle_timeout,
            "--idle-timeout",
            "ROO_PROXY_IDLE_TIMEOUT",
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let upstream_timeouts = UpstreamTimeouts {
            connect: time(
                args.connect_timeout,
                "--connect-timeout",
                "ROO_PROXY_CONNECT_TIMEOUT",
                UpstreamTimeouts::DEFAULT.connect,
            )?,
            headers: time(
                args.headers_timeout,
                "--headers-timeout",
                "ROO_PROXY_HEADERS_TIMEOUT",
                UpstreamTimeouts::DEFAULT.headers,
            )?,
            silence: time(
                args.silence_timeout,
                "--silence-timeout",
                "ROO_PROXY_SILENCE_TIMEOUT",
                UpstreamTimeouts::DEFAULT.silence,
            )?,
        };
        let access_token = args
            .access_token
            .or_else(|| env("ROO_PROXY_ACCESS_TOKEN"))
            .map(|t| t.trim().to_string());
        if access_token.as_deref() == Some("") {
            return Err(Error::Config("--access-token is empty".into()));
        }
        if access_token.is_none() && !is_loopback(host.trim()) {
            return Err(Error::Config(format!(
                "listening on '{}' would let other machines spend your keys; set an access token first (--access-token or ROO_PROXY_ACCESS_TOKEN), which clients then send as their API key",
                host.trim()
            )));
        }
        let allow_insecure = args.allow_insecure_upstream
            || env("ROO_PROXY_ALLOW_INSECURE_UPSTREAM")
                .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        if !allow_insecure && cleartext_remote(&upstream) {
            return Err(Error::Config(format!(
                "the upstream '{upstream}' is http:// on another machine, so your keys would travel in clear text; use https://, or --allow-insecure-upstream if you really mean it"
            )));
        }
        let pool_upstreams = pool_upstreams(&args.pool_upstream, allow_insecure, env)?;
        if upstream_given && pool_upstreams.iter().any(|(n, _)| n == provider.name()) {
            return Err(Error::Config(format!(
                "--upstream and --pool-upstream {}=… both give the default pool's base URL; keep one",
                provider.name()
            )));
        }
        let (allow_origins, allow_hosts) =
            browser_settings(&args.allow_origin, &args.allow_host, env)?;
        let redis = match args.redis {
            Some(url) => Some((url, "--redis")),
            None => env("ROO_PROXY_REDIS").map(|url| (url, "ROO_PROXY_REDIS")),
        };
        let redis = match redis {
            Some((url, source)) => Some(check_redis(url.trim()).map_err(|why| {
                Error::Config(format!(
                    "{source} '{}' {why}",
                    crate::persist::shared::masked_url(url.trim())
                ))
            })?),
            None => None,
        };
        let redis_ca = match args.redis_ca {
            Some(path) => Some((path, "--redis-ca")),
            None => {
                env("ROO_PROXY_REDIS_CA").map(|path| (PathBuf::from(path), "ROO_PROXY_REDIS_CA"))
            }
        };
        let redis_ca = match (redis_ca, &redis) {
            (None, _) => None,
            (Some((path, _)), Some(url)) if tls_url(url) => Some(path),
            (Some((path, source)), _) => {
                return Err(Error::Config(format!(
                    "{source} '{}' is for a Redis reached over TLS; give --redis rediss://host:6380 (or ROO_PROXY_REDIS) as well",
                    path.display()
                )));
            }
        };
        Ok(Config {
            host: host.trim().to_string(),
            port,
            provider,
            upstream,
            pool_upstreams,
            keys_file,
            cooldown,
            max_attempts,
            strategy,
            wait,
            max_body,
            max_body_memory,
            max_requests,
            shutdown_grace,
            max_connections,
            limits: Limits {
                max_head,
                max_headers,
            },
            client_timeout,
            idle_timeout,
            upstream_timeouts,
            access_token,
            allow_origins,
            allow_hosts,
            redis,
            redis_ca,
        })
    }
}

/// Whether a Redis URL is reached over TLS.
fn tls_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        matches!(scheme.to_ascii_lowercase().as_str(), "rediss" | "valkeys")
    })
}

/// A Redis URL the client can use, or why not (without echoing the URL, which may hold
/// a password).
fn check_redis(url: &str) -> Result<String, String> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("redis" | "rediss" | "valkey" | "valkeys") => {}
        Some("unix" | "redis+unix") if cfg!(unix) => {}
        Some("unix" | "redis+unix") => {
            return Err(
                "is a Unix socket, which this system does not have; use redis://host:port".into(),
            );
        }
        _ => {
            return Err(
                "is not a Redis URL; use redis://host:6379, rediss://host:6380 (TLS) or unix:///path/redis.sock".into(),
            );
        }
    }
    #[cfg(feature = "redis")]
    return match redis::Client::open(url) {
        Ok(_) => Ok(url.to_string()),
        Err(_) => Err("does not parse as a Redis URL; e.g. redis://:password@host:6379/0".into()),
    };
    #[cfg(not(feature = "redis"))]
    Err("needs a roo-proxy built with Redis support: cargo install --locked --path . --features redis".into())
}

/// `--pool-upstream NAME=URL` (repeatable; else `ROO_PROXY_POOL_UPSTREAM`,
/// comma-separated): each a pool name and an API base checked like `--upstream`'s.
pub fn pool_upstreams(
    flags: &[String],
    allow_insecure: bool,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, Error> {
    let (values, source): (Vec<String>, &str) = match env("ROO_PROXY_POOL_UPSTREAM") {
        Some(v) if flags.is_empty() => (
            v.split(',')
                .map(str::to_string)
                .filter(|v| !v.trim().is_empty())
                .collect(),
            "ROO_PROXY_POOL_UPSTREAM",
        ),
        _ => (flags.to_vec(), "--pool-upstream"),
    };
    let mut pools: Vec<(String, String)> = Vec::new();
    for value in values {
        let Some((name, url)) = value.split_once('=') else {
            return Err(Error::Config(format!(
                "{source} '{}' must be NAME=URL, e.g. gemini=https://gateway.example/gemini",
                without_userinfo(value.trim())
            )));
        };
        let name = crate::keys::store::check_pool_name(name)
            .map_err(|why| Error::Config(format!("{source}: the pool {why}")))?;
        let url = check_upstream(url).map_err(|why| {
            Error::Config(format!(
                "{source} {name}='{}' {why}",
                without_userinfo(url.trim())
            ))
        })?;
        if !allow_insecure && cleartext_remote(&url) {
            return Err(Error::Config(format!(
                "{source} {name}='{url}' is http:// on another machine, so your keys would travel in clear text; use https://, or --allow-insecure-upstream if you really mean it"
            )));
        }
        if pools.iter().any(|(n, _)| *n == name) {
            return Err(Error::Config(format!(
                "{source} names the pool '{name}' twice; give each pool one base URL"
            )));
        }
        pools.push((name, url));
    }
    Ok(pools)
}

/// `--allow-origin` and `--allow-host` (else their variables, comma-separated): the
/// origin rules (after the defaults) and the extra host names.
fn browser_settings(
    origins: &[String],
    hosts: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Vec<OriginRule>, Vec<String>), Error> {
    fn list<T>(
        flags: &[String],
        flag: &str,
        variable: &str,
        env: &dyn Fn(&str) -> Option<String>,
        parse: fn(&str) -> Result<T, &'static str>,
    ) -> Result<Vec<T>, Error> {
        let (values, source) = match env(variable) {
            Some(v) if flags.is_empty() => (v.split(',').map(str::to_string).collect(), variable),
            _ => (flags.to_vec(), flag),
        };
        values
            .iter()
            .filter(|v| !v.trim().is_empty() || source == flag)
            .map(|v| parse(v).map_err(|why| Error::Config(format!("{source} '{v}': {why}"))))
            .collect()
    }
    let mut rules = browser::default_rules();
    rules.extend(list(
        origins,
        "--allow-origin",
        "ROO_PROXY_ALLOW_ORIGIN",
        &env,
        OriginRule::parse,
    )?);
    let hosts = list(
        hosts,
        "--allow-host",
        "ROO_PROXY_ALLOW_HOST",
        &env,
        browser::parse_host,
    )?;
    Ok((rules, hosts))
}

/// The keys file, absolute: the flag, else `ROO_PROXY_KEYS_FILE`, else `keys.json` in
/// the current folder when there is one (where older versions kept it), else the
/// per-user one ([`user_keys_file`]), else `keys.json` here.
pub fn keys_file(flag: Option<PathBuf>, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let path = flag
        .or_else(|| {
            env("ROO_PROXY_KEYS_FILE")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        })
        .or_else(|| {
            let here = PathBuf::from(DEFAULT_KEYS_FILE);
            if here.exists() { Some(here) } else { None }
        })
        .or_else(|| user_keys_file(&env))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYS_FILE));
    store::absolute(&path)
}

/// The per-user keys file, from the platform's variables: `%APPDATA%\roo-proxy\keys.json`
/// on Windows, `~/Library/Application Support/roo-proxy/keys.json` on macOS, and
/// `$XDG_CONFIG_HOME/roo-proxy/keys.json` (else `~/.config/…`) elsewhere. `None` when the
/// variables it needs are unset.
pub fn user_keys_file(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let absolute = |name: &str| {
        env(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let folder = if cfg!(windows) {
        absolute("APPDATA")?
    } else if cfg!(target_os = "macos") {
        absolute("HOME")?
            .join("Library")
            .join("Application Support")
    } else {
        // XDG: a relative XDG_CONFIG_HOME is invalid and is ignored.
        absolute("XDG_CONFIG_HOME").or_else(|| Some(absolute("HOME")?.join(".config")))?
    };
    Some(folder.join("roo-proxy").join(DEFAULT_KEYS_FILE))
}

/// The provider (`--provider`, else `ROO_PROXY_PROVIDER`, else OpenRouter) and the API
/// base: `--upstream`, else `ROO_PROXY_UPSTREAM`, else the provider's; checked.
pub fn upstream(
    provider_flag: Option<String>,
    flag: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Provider, String), Error> {
    let provider = match provider_flag.map(|p| (p, "--provider")).or_else(|| {
        env("ROO_PROXY_PROVIDER")
            .filter(|v| !v.trim().is_empty())
            .map(|p| (p, "ROO_PROXY_PROVIDER"))
    }) {
        None => Provider::OpenRouter,
        Some((name, source)) => Provider::parse(&name).ok_or_else(|| {
            Error::Config(format!(
                "{source} '{}' is not a provider; use one of {}",
                name.escape_debug(),
                provider::names()
            ))
        })?,
    };
    let (url, source) = match flag {
        Some(url) => (url, "--upstream"),
        None => match env("ROO_PROXY_UPSTREAM").filter(|v| !v.trim().is_empty()) {
            Some(url) => (url, "ROO_PROXY_UPSTREAM"),
            None => match provider.base_url() {
                Some(base) => (base.to_string(), "--upstream"),
                None => {
                    return Err(Error::Config(
                        "--provider custom needs the API base: give it with --upstream https://…/v1"
                            .to_string(),
                    ));
                }
            },
        },
    };
    let url = check_upstream(&url)
        .map_err(|why| Error::Config(format!("{source} '{}' {why}", without_userinfo(&url))))?;
    Ok((provider, url))
}

pub const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;
pub const DEFAULT_MAX_BODY_MEMORY: u64 = 256 * 1024 * 1024;

/// `--max-body-memory`: at least one body of `--max-body` must fit; by default the larger
/// of 256 MiB and `--max-body`.
fn max_body_memory(
    flag: Option<String>,
    max_body: u64,
    env: impl Fn(&str) -> Option<String>,
) -> Result<u64, Error> {
    let given = setting(
        flag,
        "--max-body-memory",
        "ROO_PROXY_MAX_BODY_MEMORY",
        env,
        |v| MAX_BODY_MEMORY.size::<u64>(v),
    )?;
    match given {
        None => Ok(DEFAULT_MAX_BODY_MEMORY.max(max_body)),
        Some(memory) if memory < max_body => Err(Error::Config(format!(
            "--max-body-memory ({memory} bytes) is less than --max-body ({max_body} bytes), so the largest request could never be held; raise it or lower --max-body"
        ))),
        Some(memory) => Ok(memory),
    }
}

/// The values a size or count setting may take, and why no others.
#[derive(Debug)]
pub struct Range {
    pub min: u64,
    pub max: u64,
    /// A size in bytes (else a count).
    pub bytes: bool,
    /// What a value outside the range would do.
    pub why: &'static str,
    /// The default, as the README writes it.
    pub default: &'static str,
}

pub const MAX_ATTEMPTS: Range = Range {
    min: 1,
    max: 1000,
    bytes: false,
    why: "a request needs at least one try, and more than 1000 only keep a client waiting on a pool that keeps refusing",
    default: "one per available key, at most 8",
};
pub const MAX_BODY: Range = Range {
    min: 1 << 10,
    max: 4 << 30,
    bytes: true,
    why: "below 1KiB even a short chat request is refused; each body is held in memory until its request is answered",
    default: "32MiB",
};
pub const MAX_BODY_MEMORY: Range = Range {
    min: 1 << 10,
    max: 64 << 30,
    bytes: true,
    why: "it must hold at least one body of --max-body, and more than 64GiB is no limit on any machine",
    default: "256MiB, or --max-body if larger",
};
pub const MAX_REQUESTS: Range = Range {
    min: 1,
    max: 65536,
    bytes: false,
    why: "every request in flight holds a thread, its body and an upstream connection",
    default: "1024",
};
pub const MAX_CONNECTIONS: Range = Range {
    min: 1,
    max: 65536,
    bytes: false,
    why: "every open connection holds a thread and a file descriptor",
    default: "1024",
};
pub const MAX_HEADER_SIZE: Range = Range {
    min: 4 << 10,
    max: 1 << 20,
    bytes: true,
    why: "below 4KiB ordinary client requests get 431, and each connection may hold a head of this size",
    default: "64KiB",
};
pub const MAX_HEADERS: Range = Range {
    min: 32,
    max: 1024,
    bytes: false,
    why: "SDKs send up to about 20 headers (the OpenAI SDK sends 17), and each request reserves room for this many",
    default: "100",
};

impl Range {
    /// A count in this range.
    fn count<T: TryFrom<u64>>(&self, text: &str) -> Result<T, String> {
        let n = text
            .parse::<u64>()
            .map_err(|_| format!("not a whole number; {}", self.allowed()))?;
        self.check(n)
    }

    /// A size ([`parse_size`]) in this range.
    fn size<T: TryFrom<u64>>(&self, text: &str) -> Result<T, String> {
        let n = parse_size(text).map_err(|why| format!("{why}; {}", self.allowed()))?;
        self.check(n)
    }

    fn check<T: TryFrom<u64>>(&self, n: u64) -> Result<T, String> {
        if !(self.min..=self.max).contains(&n) {
            return Err(format!("out of range ({}); {}", self.why, self.allowed()));
        }
        // Every range fits a usize on 32-bit systems too, except sizes over 4GiB,
        // which are u64.
        T::try_from(n).map_err(|_| format!("too large for this system; {}", self.allowed()))
    }

    /// What to give instead, as a person reads it.
    pub fn allowed(&self) -> String {
        let show = |n: u64| match self.bytes {
            true => size_text(n),
            false => n.to_string(),
        };
        format!(
            "give {} to {}, or leave it out for the default ({})",
            show(self.min),
            show(self.max),
            self.default
        )
    }
}

/// A size as the flags take it: `64KiB`, `4GiB`, or bytes when not whole KiB.
fn size_text(n: u64) -> String {
    match n {
        _ if n >= 1 << 30 && n.is_multiple_of(1 << 30) => format!("{}GiB", n >> 30),
        _ if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{}MiB", n >> 20),
        _ if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{}KiB", n >> 10),
        _ => n.to_string(),
    }
}

pub const DEFAULT_MAX_REQUESTS: usize = 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the proxy waits on the upstream. None is a total: a stream that keeps
/// sending is never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// To open a TCP (and TLS) connection.
    pub connect: Duration,
    /// From request sent to response headers. Non-streamed completions of slow reasoning
    /// models arrive only when done, which can take many minutes.
    pub headers: Duration,
    /// Longest silence between two reads of a body. OpenRouter sends keep-alive comments
    /// well within this.
    pub silence: Duration,
}

impl UpstreamTimeouts {
    pub const DEFAULT: UpstreamTimeouts = UpstreamTimeouts {
        connect: Duration::from_secs(15),
        headers: Duration::from_secs(15 * 60),
        silence: Duration::from_secs(5 * 60),
    };
}

/// A setting from its flag, else its variable, parsed; errors name where it came from.
fn setting<T, E: std::fmt::Display>(
    flag: Option<String>,
    flag_name: &str,
    variable: &str,
    env: impl Fn(&str) -> Option<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, Error> {
    if let Some(value) = flag {
        return parse(value.trim())
            .map(Some)
            .map_err(|why| Error::Config(format!("{flag_name} '{value}': {why}")));
    }
    match env(variable).filter(|v| !v.trim().is_empty()) {
        Some(value) => parse(value.trim())
            .map(Some)
            .map_err(|why| Error::Config(format!("{variable}='{value}': {why}"))),
        None => Ok(None),
    }
}

/// Hosts only this machine can reach.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An `http://` upstream on another machine: keys would cross the network unencrypted.
fn cleartext_remote(upstream: &str) -> bool {
    let Ok(uri) = upstream.parse::<ureq::http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("http") && !uri.host().is_some_and(is_loopback)
}

/// Reads a size: `1048576`, `512KiB`, `32MiB`, `1GiB` (also KB/MB/GB, K/M/G as binary).
fn parse_size(text: &str) -> Result<u64, &'static str> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = match text[..digits].parse() {
        Ok(n) => n,
        // All digits, and still no u64.
        Err(_) if digits > 0 => return Err("far too large"),
        Err(_) => return Err("expected a size such as 32MiB or 1048576"),
    };
    let unit: u64 = match text[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err("the unit must be KiB, MiB or GiB"),
    };
    match n.checked_mul(unit) {
        Some(0) => Err("must be at least 1 byte"),
        Some(n) => Ok(n),
        None => Err("far too large"),
    }
}

/// Checks an API base URL and returns it without a trailing slash.
fn check_upstream(url: &str) -> Result<String, &'static str> {
    let uri: ureq::http::Uri = url.trim().parse().map_err(|_| "is not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with https:// (or http://)"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if uri.query().is_some() {
        return Err("must not have a query string");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "must not carry a user name or password (user:password@): the proxy signs in with the pool's keys, and the URL is shown on the start line and the status page",
        );
    }
    Ok(url.trim().trim_end_matches('/').to_string())
}

/// `url` with any `user:password@` cut out, for messages.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn parse_strategy(text: &str) -> Result<Strategy, &'static str> {
    match text.trim().to_ascii_lowercase().as_str() {
        "round-robin" | "roundrobin" | "rr" => Ok(Strategy::RoundRobin),
        "sticky" => Ok(Strategy::Sticky),
        _ => Err("must be round-robin or sticky"),
    }
}

/// Like [`parse_duration`], and `0` (no waiting) is allowed.
fn parse_wait(text: &str) -> Result<Duration, &'static str> {
    if text.trim().trim_end_matches(['s', 'm', 'h']) == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(text)
}

/// The longest time any duration setting may name: a day. Longer ones are mistakes, and
/// deadlines computed from them (`now + timeout`) could not be represented.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
const TOO_LONG: &str = "must be at most 24h (86400 s)";

/// Reads `90`, `90s`, `2m`, `1h` (whole numbers; at least one second, at most
/// [`MAX_DURATION`]).
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = match number.parse() {
        Ok(n) => n,
        // All digits, and still no u64: far too long.
        Err(_) if !number.is_empty() => return Err(TOO_LONG),
        Err(_) => return Err("expected a whole number of seconds, or a number with s, m or h"),
    };
    let secs = match unit.trim() {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err("the unit must be s, m or h"),
    };
    if secs == 0 {
        return Err("must be at least 1 second");
    }
    if secs > MAX_DURATION.as_secs() {
        return Err(TOO_LONG);
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn zero_config_gives_the_documented_defaults() {
        let c = Config::build(Args::default(), no_env).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 3002));
        assert_eq!(c.upstream, "https://openrouter.ai/api/v1");
        assert!(c.keys_file.is_absolute() && c.keys_file.ends_with("keys.json"));
        assert_eq!(
            (c.cooldown, c.max_attempts),
            (Duration::from_secs(60), None)
        );
    }

    #[test]
    fn the_per_user_keys_file_is_in_the_platforms_config_folder() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let found = |pairs| user_keys_file(vars(pairs));
        let all: &[(&str, &str)] = if cfg!(windows) {
            &[
                ("APPDATA", r"C:\Users\me\AppData\Roaming"),
                ("HOME", r"C:\Users\me"),
            ]
        } else {
            &[("HOME", "/home/me"), ("XDG_CONFIG_HOME", "/xdg")]
        };
        let expected = if cfg!(windows) {
            r"C:\Users\me\AppData\Roaming\roo-proxy\keys.json"
        } else if cfg!(target_os = "macos") {
            "/home/me/Library/Application Support/roo-proxy/keys.json"
        } else {
            "/xdg/roo-proxy/keys.json"
        };
        assert_eq!(found(all), Some(PathBuf::from(expected)));
        assert_eq!(found(&[]), None);
        if cfg!(all(unix, not(target_os = "macos"))) {
            assert_eq!(
                found(&[("HOME", "/home/me")]),
                Some(PathBuf::from("/home/me/.config/roo-proxy/keys.json"))
            );
            // A relative XDG_CONFIG_HOME is not valid XDG, and a relative HOME is not a home.
            assert_eq!(
                found(&[("HOME", "/home/me"), ("XDG_CONFIG_HOME", "rel")]),
                Some(PathBuf::from("/home/me/.config/roo-proxy/keys.json"))
            );
            assert_eq!(found(&[("HOME", "rel")]), None);
        }
    }

    /// One row per flag: the flag with a value that is not the default, and the same
    /// value for its variable (`ROO_PROXY_` and the flag's name in capitals). `base` is
    /// set on every side, for flags that only mean something beside another setting.
    struct FlagRow {
        flag: &'static str,
        value: Option<&'static str>,
        variable_value: &'static str,
        base: &'static [(&'static str, &'static str)],
    }

    const fn row(flag: &'static str, value: &'static str) -> FlagRow {
        FlagRow {
            flag,
            value: Some(value),
            variable_value: value,
            base: &[],
        }
    }

    const FLAGS: &[FlagRow] = &[
        row("--host", "::1"),
        row("--port", "4000"),
        row("--provider", "groq"),
        row("--upstream", "https://api.groq.com/openai/v1"),
        row("--pool-upstream", "gemini=https://gateway.example/gemini"),
        row("--keys-file", "/elsewhere/k.json"),
        row("--cooldown", "90s"),
        row("--max-attempts", "3"),
        row("--strategy", "sticky"),
        row("--wait", "30s"),
        row("--max-body", "1MiB"),
        row("--max-body-memory", "512MiB"),
        row("--max-requests", "7"),
        row("--max-connections", "9"),
        row("--max-header-size", "8KiB"),
        row("--max-headers", "40"),
        row("--client-timeout", "5s"),
        row("--idle-timeout", "6s"),
        row("--connect-timeout", "7s"),
        row("--headers-timeout", "8m"),
        row("--silence-timeout", "9m"),
        row("--shutdown-grace", "3s"),
        row("--access-token", "a-long-token"),
        row("--allow-origin", "https://app.example"),
        row("--allow-host", "proxy.lan"),
        row("--redis", "redis://127.0.0.1:6379"),
        FlagRow {
            flag: "--redis-ca",
            value: Some("/etc/redis/ca.pem"),
            variable_value: "/etc/redis/ca.pem",
            base: &[("ROO_PROXY_REDIS", "rediss://127.0.0.1:6380")],
        },
        FlagRow {
            flag: "--allow-insecure-upstream",
            value: None,
            variable_value: "1",
            base: &[("ROO_PROXY_UPSTREAM", "http://192.0.2.1/api/v1")],
        },
    ];

    /// The flags `--help` lists, except --help and --version.
    fn flags_in_help() -> Vec<String> {
        use argh::FromArgs;
        let help = match Args::from_args(&["roo-proxy"], &["--help"]) {
            Err(exit) => exit.output,
            Ok(_) => panic!("--help parsed as a run"),
        };
        let options = help
            .split("Options:")
            .nth(1)
            .and_then(|rest| rest.split("Commands:").next())
            .expect("an Options section in --help");
        options
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("--"))
            .filter_map(|rest| rest.split([' ', ',']).next())
            .filter(|name| !["help", "version"].contains(name))
            .map(|name| format!("--{name}"))
            .collect()
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        use argh::FromArgs;
        let listed: Vec<&str> = FLAGS.iter().map(|r| r.flag).collect();
        let help = flags_in_help();
        assert!(help.len() >= 20, "{help:?}");
        for flag in &help {
            assert!(
                listed.contains(&flag.as_str()),
                "{flag} has no row in FLAGS: give it a variable in Config::build and a row here"
            );
        }
        for flag in &listed {
            assert!(help.iter().any(|h| h == flag), "{flag} is not in --help");
        }
        for row in FLAGS {
            let variable = format!(
                "ROO_PROXY_{}",
                row.flag[2..].to_ascii_uppercase().replace('-', "_")
            );
            let lookup = |extra: Option<(&str, &str)>| {
                let pairs: Vec<(String, String)> = row
                    .base
                    .iter()
                    .copied()
                    .chain(extra)
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect();
                move |name: &str| {
                    pairs
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                }
            };
            let mut argv = vec![row.flag];
            argv.extend(row.value);
            let flag_args = Args::from_args(&["roo-proxy"], &argv)
                .unwrap_or_else(|e| panic!("{argv:?}: {}", e.output));
            let by_flag = format!("{:?}", Config::build(flag_args, lookup(None)));
            let by_variable = format!(
                "{:?}",
                Config::build(
                    Args::default(),
                    lookup(Some((variable.as_str(), row.variable_value)))
                )
            );
            let by_default = format!("{:?}", Config::build(Args::default(), lookup(None)));
            if row.flag.starts_with("--redis") && !cfg!(feature = "redis") {
                // Without Redis support, flag and variable both say how to get it (the
                // CA's row fails on the Redis URL beside it).
                let source = |own: &str| {
                    if row.flag == "--redis" {
                        own.to_string()
                    } else {
                        "ROO_PROXY_REDIS".into()
                    }
                };
                for (given, source) in [
                    (&by_flag, source(row.flag)),
                    (&by_variable, source(&variable)),
                ] {
                    assert!(
                        given.starts_with("Err(")
                            && given.contains(&source)
                            && given.contains("--features redis"),
                        "{source}: {given}"
                    );
                }
                continue;
            }
            assert!(by_flag.starts_with("Ok("), "{}: {by_flag}", row.flag);
            assert_eq!(
                by_variable, by_flag,
                "{variable} is not read like {}",
                row.flag
            );
            assert_ne!(by_flag, by_default, "{} changes nothing", row.flag);
        }
    }

    #[test]
    fn environment_fills_in_and_flags_win() {
        let env = |name: &str| match name {
            "ROO_PROXY_PORT" => Some("4000".to_string()),
            "ROO_PROXY_UPSTREAM" => Some("https://api.groq.com/openai/v1/".to_string()),
            "ROO_PROXY_COOLDOWN" => Some("2m".to_string()),
            "ROO_PROXY_HOST" => Some("  ".to_string()),
            _ => None,
        };
        let c = Config::build(Args::default(), env).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 4000));
        assert_eq!(c.upstream, "https://api.groq.com/openai/v1");
        assert_eq!(c.cooldown, Duration::from_secs(120));
        let args = Args {
            port: Some(5000),
            ..Args::default()
        };
        assert_eq!(Config::build(args, env).unwrap().port, 5000);
    }

    #[test]
    fn bad_values_name_their_source() {
        let err = |args: Args, env: fn(&str) -> Option<String>| {
            Config::build(args, env).unwrap_err().to_string()
        };
        assert_eq!(
            err(
                Args {
                    upstream: Some("ftp://x".into()),
                    ..Args::default()
                },
                no_env
            ),
            "--upstream 'ftp://x' must start with https:// (or http://)"
        );
        assert_eq!(
            err(Args::default(), |n| (n == "ROO_PROXY_PORT")
                .then(|| "70000".into())),
            "ROO_PROXY_PORT='70000' is not a port number (0 to 65535)"
        );
        assert_eq!(
            err(
                Args {
                    cooldown: Some("5 days".into()),
                    ..Args::default()
                },
                no_env
            ),
            "--cooldown '5 days': the unit must be s, m or h"
        );
        assert_eq!(
            err(
                Args {
                    max_attempts: Some("0".into()),
                    ..Args::default()
                },
                no_env
            ),
            "--max-attempts '0': out of range (a request needs at least one try, and more than 1000 only keep a client waiting on a pool that keeps refusing); give 1 to 1000, or leave it out for the default (one per available key, at most 8)"
        );
        assert_eq!(
            err(
                Args {
                    upstream: Some("https://x/v1?a=b".into()),
                    ..Args::default()
                },
                no_env
            ),
            "--upstream 'https://x/v1?a=b' must not have a query string"
        );
        let message = err(
            Args {
                upstream: Some("http://me:hunter2@127.0.0.1:9/v1".into()),
                ..Args::default()
            },
            no_env,
        );
        assert!(
            message.starts_with("--upstream 'http://…@127.0.0.1:9/v1' must not carry a user name"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn strategy_and_wait() {
        let args = Args {
            strategy: Some("Sticky".into()),
            wait: Some("30s".into()),
            ..Args::default()
        };
        let c = Config::build(args, no_env).unwrap();
        assert_eq!(
            (c.strategy, c.wait),
            (Strategy::Sticky, Duration::from_secs(30))
        );
        let env = |n: &str| (n == "ROO_PROXY_WAIT").then(|| "0".to_string());
        assert_eq!(
            Config::build(Args::default(), env).unwrap().wait,
            Duration::ZERO
        );
        let bad = Args {
            strategy: Some("random".into()),
            ..Args::default()
        };
        assert_eq!(
            Config::build(bad, no_env).unwrap_err().to_string(),
            "--strategy 'random': must be round-robin or sticky"
        );
    }

    #[test]
    fn listening_beyond_this_machine_needs_a_token() {
        let open = Args {
            host: Some("0.0.0.0".into()),
            ..Args::default()
        };
        let err = Config::build(open, no_env).unwrap_err().to_string();
        assert!(
            err.starts_with("listening on '0.0.0.0' would let other machines spend your keys"),
            "{err}"
        );
        let with_token = Args {
            host: Some("0.0.0.0".into()),
            access_token: Some("s3cret-token-123".into()),
            ..Args::default()
        };
        assert_eq!(
            Config::build(with_token, no_env)
                .unwrap()
                .access_token
                .as_deref(),
            Some("s3cret-token-123")
        );
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            let args = Args {
                host: Some(host.into()),
                ..Args::default()
            };
            assert!(Config::build(args, no_env).is_ok(), "{host}");
        }
    }

    #[test]
    fn pool_upstreams_are_checked_like_the_upstream() {
        let build = |values: &[&str]| {
            Config::build(
                Args {
                    pool_upstream: values.iter().map(|v| v.to_string()).collect(),
                    ..Args::default()
                },
                no_env,
            )
        };
        let c = build(&["gemini=http://127.0.0.1:9/", "work=https://gw.example/v1"]).unwrap();
        assert_eq!(
            c.pool_upstreams,
            [
                ("gemini".to_string(), "http://127.0.0.1:9".to_string()),
                ("work".to_string(), "https://gw.example/v1".to_string())
            ]
        );
        let message = |values: &[&str]| build(values).unwrap_err().to_string();
        assert_eq!(
            message(&["https://gw.example/v1"]),
            "--pool-upstream 'https://gw.example/v1' must be NAME=URL, e.g. gemini=https://gateway.example/gemini"
        );
        assert!(
            message(&["Work=https://gw.example/v1"])
                .starts_with("--pool-upstream: the pool 'Work' is not a pool name"),
        );
        assert_eq!(
            message(&["v1=https://gw.example/v1"]),
            "--pool-upstream: the pool 'v1' begins API paths of the default pool (/v1/…), so it cannot name a pool; choose another name"
        );
        assert_eq!(
            message(&["work=ftp://x"]),
            "--pool-upstream work='ftp://x' must start with https:// (or http://)"
        );
        assert!(message(&["work=http://gw.example/v1"]).contains("would travel in clear text"),);
        assert!(!message(&["work=https://me:hunter2@gw.example/v1"]).contains("hunter2"));
        assert_eq!(
            message(&["work=https://a.example", "work=https://b.example"]),
            "--pool-upstream names the pool 'work' twice; give each pool one base URL"
        );
        let both = Config::build(
            Args {
                upstream: Some("https://a.example/v1".into()),
                pool_upstream: vec!["openrouter=https://b.example/v1".into()],
                ..Args::default()
            },
            no_env,
        );
        assert!(both.unwrap_err().to_string().contains("keep one"));
    }

    #[test]
    fn cleartext_upstreams_off_this_machine_are_refused() {
        let remote = Args {
            upstream: Some("http://gateway.example/v1".into()),
            ..Args::default()
        };
        let err = Config::build(remote, no_env).unwrap_err().to_string();
        assert!(err.contains("keys would travel in clear text"), "{err}");
        let allowed = Args {
            upstream: Some("http://gateway.example/v1".into()),
            allow_insecure_upstream: true,
            ..Args::default()
        };
        assert!(Config::build(allowed, no_env).is_ok());
        let local = Args {
            upstream: Some("http://127.0.0.1:8080/v1".into()),
            ..Args::default()
        };
        assert!(Config::build(local, no_env).is_ok());
    }

    #[test]
    fn limits_have_defaults_and_flags() {
        let c = Config::build(Args::default(), no_env).unwrap();
        assert_eq!(
            (c.max_body, c.max_requests, c.shutdown_grace),
            (32 << 20, 1024, Duration::from_secs(30))
        );
        let args = Args {
            max_body: Some("1MiB".into()),
            max_requests: Some("8".into()),
            shutdown_grace: Some("0".into()),
            ..Args::default()
        };
        let c = Config::build(args, no_env).unwrap();
        assert_eq!(
            (c.max_body, c.max_requests, c.shutdown_grace),
            (1 << 20, 8, Duration::ZERO)
        );
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn connection_limits_and_timeouts_have_defaults_flags_and_variables() {
        let c = Config::build(Args::default(), no_env).unwrap();
        assert_eq!(c.max_connections, 1024);
        assert_eq!(
            c.limits,
            Limits {
                max_head: 64 << 10,
                max_headers: 100
            }
        );
        assert_eq!(
            (c.client_timeout, c.idle_timeout),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
        assert_eq!(c.upstream_timeouts, UpstreamTimeouts::DEFAULT);
        let args = Args {
            max_header_size: Some("8KiB".into()),
            headers_timeout: Some("2m".into()),
            ..Args::default()
        };
        let env = |name: &str| match name {
            "ROO_PROXY_MAX_CONNECTIONS" => Some("16".to_string()),
            "ROO_PROXY_SILENCE_TIMEOUT" => Some("45s".to_string()),
            _ => None,
        };
        let c = Config::build(args, env).unwrap();
        assert_eq!((c.max_connections, c.limits.max_head), (16, 8 << 10));
        assert_eq!(c.upstream_timeouts.headers, Duration::from_secs(120));
        assert_eq!(c.upstream_timeouts.silence, Duration::from_secs(45));
        let bad = |args: Args| Config::build(args, no_env).unwrap_err().to_string();
        let zero = bad(Args {
            max_connections: Some("0".into()),
            ..Args::default()
        });
        assert!(zero.contains("--max-connections"), "{zero}");
        let forever = bad(Args {
            client_timeout: Some("0".into()),
            ..Args::default()
        });
        assert!(forever.contains("--client-timeout '0'"), "{forever}");
    }

    #[test]
    fn every_size_and_count_has_a_range_and_its_error_says_what_to_give() {
        let bad = |args: Args| Config::build(args, no_env).unwrap_err().to_string();
        let cases = [
            (
                Args {
                    max_header_size: Some("1".into()),
                    ..Args::default()
                },
                "--max-header-size '1': out of range",
                "give 4KiB to 1MiB, or leave it out for the default (64KiB)",
            ),
            (
                Args {
                    max_connections: Some("18446744073709551615".into()),
                    ..Args::default()
                },
                "--max-connections '18446744073709551615': out of range",
                "give 1 to 65536",
            ),
            (
                Args {
                    max_connections: Some("99999999999999999999999".into()),
                    ..Args::default()
                },
                "--max-connections '99999999999999999999999': not a whole number",
                "give 1 to 65536",
            ),
            (
                Args {
                    max_headers: Some("1000000000".into()),
                    ..Args::default()
                },
                "--max-headers '1000000000': out of range",
                "give 32 to 1024",
            ),
            (
                Args {
                    max_requests: Some("0".into()),
                    ..Args::default()
                },
                "--max-requests '0': out of range",
                "give 1 to 65536",
            ),
            (
                Args {
                    max_attempts: Some("1001".into()),
                    ..Args::default()
                },
                "--max-attempts '1001': out of range",
                "give 1 to 1000",
            ),
            (
                Args {
                    max_body: Some("100".into()),
                    ..Args::default()
                },
                "--max-body '100': out of range",
                "give 1KiB to 4GiB",
            ),
            (
                Args {
                    max_body: Some("99999999999GiB".into()),
                    ..Args::default()
                },
                "--max-body '99999999999GiB': far too large",
                "give 1KiB to 4GiB",
            ),
            (
                Args {
                    max_body_memory: Some("65GiB".into()),
                    ..Args::default()
                },
                "--max-body-memory '65GiB': out of range",
                "give 1KiB to 64GiB",
            ),
        ];
        for (args, starts, gives) in cases {
            let error = bad(args);
            assert!(error.starts_with(starts), "{error}");
            assert!(error.contains(gives), "{error}");
        }
        let env = |name: &str| (name == "ROO_PROXY_MAX_HEADERS").then(|| "8".to_string());
        let error = Config::build(Args::default(), env).unwrap_err().to_string();
        assert!(
            error.starts_with("ROO_PROXY_MAX_HEADERS='8': out of range"),
            "{error}"
        );
        // The ends of each range are taken.
        let args = Args {
            max_attempts: Some("1000".into()),
            max_body: Some("4GiB".into()),
            max_body_memory: Some("64GiB".into()),
            max_requests: Some("65536".into()),
            max_connections: Some("1".into()),
            max_header_size: Some("4KiB".into()),
            max_headers: Some("1024".into()),
            ..Args::default()
        };
        let c = Config::build(args, no_env).unwrap();
        assert_eq!(
            (
                c.max_attempts,
                c.max_body,
                c.max_body_memory,
                c.max_requests
            ),
            (Some(1000), 4 << 30, 64 << 30, 65536)
        );
        assert_eq!(
            (c.max_connections, c.limits.max_head, c.limits.max_headers),
            (1, 4096, 1024)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1.5m").is_err());
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        for long in [
            "86401",
            "1441m",
            "25h",
            "18446744073709551615",
            "99999999999999999999999h",
        ] {
            assert_eq!(parse_duration(long), Err(TOO_LONG), "{long}");
            assert_eq!(parse_wait(long), Err(TOO_LONG), "{long}");
        }
    }
}
