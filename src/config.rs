//! Settings, validated once at start from flags, `ROO_PROXY_*` variables and defaults.
//!
//! Invariant: a `Config` that exists is usable; every problem is found here and
//! reported with the flag or variable that caused it. No threads, no network.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::Args;
use crate::error::Error;
use crate::policy::Strategy;
use crate::store;

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 3002;
pub const DEFAULT_UPSTREAM: &str = "https://openrouter.ai/api/v1";
pub const DEFAULT_KEYS_FILE: &str = "keys.json";
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// The default attempt budget is one per available key, but never more than this.
pub const MAX_DEFAULT_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// The API base, without a trailing slash.
    pub upstream: String,
    /// Absolute.
    pub keys_file: PathBuf,
    pub cooldown: Duration,
    /// `None`: one try per available key, at most [`MAX_DEFAULT_ATTEMPTS`].
    pub max_attempts: Option<usize>,
    pub strategy: Strategy,
    /// How long a request may wait for a resting key; zero answers 429 at once.
    pub wait: Duration,
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
        let upstream = upstream(args.upstream, env)?;
        let keys_file = keys_file(args.keys_file, env);
        let cooldown = match (args.cooldown, env("ROO_PROXY_COOLDOWN")) {
            (Some(v), _) => parse_duration(&v)
                .map_err(|why| Error::Config(format!("--cooldown '{v}': {why}")))?,
            (None, Some(v)) => parse_duration(&v)
                .map_err(|why| Error::Config(format!("ROO_PROXY_COOLDOWN='{v}': {why}")))?,
            (None, None) => DEFAULT_COOLDOWN,
        };
        let max_attempts = match (args.max_attempts, env("ROO_PROXY_MAX_ATTEMPTS")) {
            (Some(n), _) => Some(n),
            (None, Some(v)) => Some(v.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "ROO_PROXY_MAX_ATTEMPTS='{v}' is not a whole number"
                ))
            })?),
            (None, None) => None,
        };
        if max_attempts == Some(0) {
            return Err(Error::Config("--max-attempts must be at least 1".into()));
        }
        let strategy = match (args.strategy, env("ROO_PROXY_STRATEGY")) {
            (Some(v), _) => parse_strategy(&v)
                .map_err(|why| Error::Config(format!("--strategy '{v}': {why}")))?,
            (None, Some(v)) => parse_strategy(&v)
                .map_err(|why| Error::Config(format!("ROO_PROXY_STRATEGY='{v}': {why}")))?,
            (None, None) => Strategy::RoundRobin,
        };
        let wait = match (args.wait, env("ROO_PROXY_WAIT")) {
            (Some(v), _) => {
                parse_wait(&v).map_err(|why| Error::Config(format!("--wait '{v}': {why}")))?
            }
            (None, Some(v)) => parse_wait(&v)
                .map_err(|why| Error::Config(format!("ROO_PROXY_WAIT='{v}': {why}")))?,
            (None, None) => Duration::ZERO,
        };
        Ok(Config {
            host: host.trim().to_string(),
            port,
            upstream,
            keys_file,
            cooldown,
            max_attempts,
            strategy,
            wait,
        })
    }
}

/// The keys file: the flag, else `ROO_PROXY_KEYS_FILE`, else `keys.json` here; absolute.
pub fn keys_file(flag: Option<PathBuf>, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let path = flag
        .or_else(|| {
            env("ROO_PROXY_KEYS_FILE")
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYS_FILE));
    store::absolute(&path)
}

/// The API base: the flag, else `ROO_PROXY_UPSTREAM`, else OpenRouter; checked.
pub fn upstream(
    flag: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, Error> {
    let (url, source) = match flag {
        Some(url) => (url, "--upstream"),
        None => match env("ROO_PROXY_UPSTREAM").filter(|v| !v.trim().is_empty()) {
            Some(url) => (url, "ROO_PROXY_UPSTREAM"),
            None => (DEFAULT_UPSTREAM.to_string(), "--upstream"),
        },
    };
    check_upstream(&url).map_err(|why| Error::Config(format!("{source} '{url}' {why}")))
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
    Ok(url.trim().trim_end_matches('/').to_string())
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

/// Reads `90`, `90s`, `2m`, `1h` (whole numbers; at least one second).
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a whole number of seconds, or a number with s, m or h")?;
    let secs = match unit.trim() {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err("the unit must be s, m or h"),
    };
    if secs == 0 {
        return Err("must be at least 1 second");
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
                    max_attempts: Some(0),
                    ..Args::default()
                },
                no_env
            ),
            "--max-attempts must be at least 1"
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
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1.5m").is_err());
    }
}
