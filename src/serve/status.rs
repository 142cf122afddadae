//! What the proxy says about itself on its reserved paths: `/_roo/health`,
//! `/_roo/status` (JSON), `/_roo/metrics` (Prometheus text) and `/_roo/` (a live page).
//!
//! Invariant: built from a pool report and a metrics snapshot only, so keys appear
//! masked and nothing here can change state.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::persist::shared::TeamReport;
use crate::persist::state::KeyStatus;
use crate::rotation::policy::Strategy;
use crate::rotation::pool::{KeyReport, KeyStats, PoolReport};
use crate::rotation::pools;
use crate::rotation::provider::Provider;
use crate::serve::metrics::{BUCKETS, Counters, Histogram, SLICE};

/// The paths the proxy answers itself. Everything else goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Status,
    Metrics,
    Page,
}

impl Route {
    /// The reserved route for a request path (without query), if it is one. Paths under
    /// `/_roo` that are not routes are answered 404, never forwarded.
    pub fn of(path: &str) -> Option<Option<Route>> {
        let rest = path.strip_prefix("/_roo")?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        Some(match rest {
            "" | "/" => Some(Route::Page),
            "/health" => Some(Route::Health),
            "/status" => Some(Route::Status),
            "/metrics" => Some(Route::Metrics),
            _ => None,
        })
    }
}

/// One pool at a glance (`/_roo/status`'s `pools`).
pub struct PoolAbout {
    pub name: String,
    pub provider: Provider,
    pub upstream: String,
    pub keys_available: usize,
    pub keys_total: usize,
    pub paused_seconds: Option<u64>,
    /// Requests waiting for one of its keys now (`--wait`).
    pub waiting: usize,
}

/// Facts about this proxy that do not change while it runs.
pub struct About<'a> {
    /// The provider preset's name (`--provider`).
    pub provider: &'a str,
    pub upstream: &'a str,
    pub strategy: Strategy,
    pub uptime: Duration,
    /// Requests waiting for a key now (`--wait`).
    pub waiting: usize,
    /// The instances sharing the pool, with `--redis`.
    pub team: Option<TeamReport>,
    /// Every pool, the default one first; the report holds all their keys.
    pub pools: Vec<PoolAbout>,
    /// The default pool's provider (`--provider`), which a key without one is for.
    pub default: Provider,
}

impl About<'_> {
    /// The pool a key of the report serves in, when there are several (else `None`).
    fn pool_of(&self, k: &KeyReport) -> Option<String> {
        (self.pools.len() > 1).then(|| pools::home_of(&k.entry, self.default).0)
    }
}

/// The pools as JSON.
fn pools_json(about: &About) -> Value {
    about
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "provider": p.provider.name(),
                "upstream": p.upstream,
                "keys_available": p.keys_available,
                "keys_total": p.keys_total,
                "paused_seconds": p.paused_seconds,
                "requests_waiting": p.waiting,
            })
        })
        .collect()
}

/// `/_roo/health`: 200 while a key can serve (now or after a rest), 503 otherwise.
/// With `--redis`, it says whether Redis is reachable; an instance without it still
/// serves (on its own key states), so that does not change the status code.
pub fn health(report: &PoolReport, about: &About) -> (u16, Value) {
    let o = &report.outlook;
    let ok = o.ready > 0;
    let mut body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "keys_available": o.ready,
        "keys_total": o.total,
    });
    if about.pools.len() > 1 {
        body["pools"] = pools_json(about);
    }
    if let Some(team) = &about.team {
        body["redis"] = json!(team.link.as_str());
        if let Some(error) = &team.error {
            body["redis_error"] = json!(error);
        }
    }
    (if ok { 200 } else { 503 }, body)
}

/// The shared state's part of `/_roo/status`: `null` without `--redis`.
fn team_json(team: Option<&TeamReport>) -> Value {
    let Some(team) = team else {
        return Value::Null;
    };
    json!({
        "redis": team.url,
        "link": team.link.as_str(),
        "error": team.error,
        "instance": team.id,
        "dropped_facts": team.dropped,
        "instances": team.instances,
    })
}

/// `/_roo/status`: the pool and the counters as JSON.
pub fn status(report: &PoolReport, counters: &Counters, about: &About) -> Value {
    let keys: Vec<Value> = report
        .keys
        .iter()
        .map(|k| {
            json!({
                "key": k.entry.key.masked(),
                "pool": about.pool_of(k).unwrap_or_else(|| about.default.name().to_string()),
                "label": k.entry.label,
                "account": k.entry.account,
                "state": k.state,
                "seconds_left": k.seconds_left,
                "model_rests": k.model_rests,
                "last_error": k.stats.last_error,
                "requests": k.stats.requests,
                "served": k.stats.served,
                "rate_limited": k.stats.rate_limited,
                "failures": k.stats.failures,
                "last_used_ms": k.last_used_ms,
            })
        })
        .collect();
    let history: Vec<Value> = counters
        .history
        .iter()
        .map(|s| json!({"start_ms": s.start_ms, "requests": s.requests, "rate_limited": s.rate_limited}))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": about.uptime.as_secs(),
        "provider": about.provider,
        "upstream": about.upstream,
        "strategy": match about.strategy { Strategy::RoundRobin => "round-robin", Strategy::Sticky => "sticky" },
        "keys_available": report.outlook.ready,
        "keys_total": report.outlook.total,
        "paused_seconds": report.paused_seconds,
        "requests_waiting": about.waiting,
        "shared": team_json(about.team.as_ref()),
        "pools": pools_json(about),
        "requests": counters.by_status.values().sum::<u64>(),
        "requests_by_status": counters.by_status.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "upstream_attempts": counters.attempts,
        "retries": counters.retries,
        "history_slice_seconds": SLICE.as_secs(),
        "history": history,
        "keys": keys,
    })
}

/// `/_roo/metrics`: Prometheus text exposition format 0.0.4.
pub fn prometheus(report: &PoolReport, counters: &Counters, about: &About) -> String {
    let mut out = String::with_capacity(4096);
    header(
        &mut out,
        "roo_proxy_uptime_seconds",
        "gauge",
        "Seconds since the proxy started.",
    );
    let _ = writeln!(out, "roo_proxy_uptime_seconds {}", about.uptime.as_secs());

    header(
        &mut out,
        "roo_proxy_provider_info",
        "gauge",
        "The provider preset the pool's keys are for (--provider), as a label.",
    );
    let _ = writeln!(
        out,
        "roo_proxy_provider_info{{provider=\"{}\"}} 1",
        about.provider
    );

    header(
        &mut out,
        "roo_proxy_pool_keys",
        "gauge",
        "Keys in each pool, and how many could serve now (a pool's name is the first segment of its base URL).",
    );
    for p in &about.pools {
        for (kind, n) in [("total", p.keys_total), ("available", p.keys_available)] {
            let _ = writeln!(
                out,
                "roo_proxy_pool_keys{{pool=\"{}\",provider=\"{}\",kind=\"{kind}\"}} {n}",
                escape(&p.name),
                p.provider
            );
        }
    }

    header(
        &mut out,
        "roo_proxy_requests_waiting",
        "gauge",
        "Requests waiting for a key (--wait).",
    );
    let _ = writeln!(out, "roo_proxy_requests_waiting {}", about.waiting);

    header(
        &mut out,
        "roo_proxy_requests_total",
        "counter",
        "Requests answered, by HTTP status.",
    );
    for (status, n) in &counters.by_status {
        let _ = writeln!(out, "roo_proxy_requests_total{{status=\"{status}\"}} {n}");
    }
    header(
        &mut out,
        "roo_proxy_upstream_attempts_total",
        "counter",
        "Requests sent upstream, retries included.",
    );
    let _ = writeln!(
        out,
        "roo_proxy_upstream_attempts_total {}",
        counters.attempts
    );
    header(
        &mut out,
        "roo_proxy_retries_total",
        "counter",
        "Upstream attempts after a request's first, with another key.",
    );
    let _ = writeln!(out, "roo_proxy_retries_total {}", counters.retries);

    header(
        &mut out,
        "roo_proxy_keys",
        "gauge",
        "Keys in the pool, by state.",
    );
    for state in KeyStatus::ALL {
        let n = report.keys.iter().filter(|k| k.state == state).count();
        let _ = writeln!(out, "roo_proxy_keys{{state=\"{state}\"}} {n}");
    }
    header(
        &mut out,
        "roo_proxy_paused_seconds",
        "gauge",
        "Seconds left of a pool-wide pause after 429s on every key.",
    );
    let _ = writeln!(
        out,
        "roo_proxy_paused_seconds {}",
        report.paused_seconds.unwrap_or(0)
    );
    if let Some(team) = &about.team {
        header(
            &mut out,
            "roo_proxy_redis_up",
            "gauge",
            "1 while the Redis shared by the instances is reachable.",
        );
        let up = u8::from(team.link == crate::persist::shared::Link::Up);
        let _ = writeln!(out, "roo_proxy_redis_up {up}");
        header(
            &mut out,
            "roo_proxy_instances",
            "gauge",
            "Instances sharing the key pool whose heartbeat is alive.",
        );
        let _ = writeln!(out, "roo_proxy_instances {}", team.instances.len());
        header(
            &mut out,
            "roo_proxy_shared_facts_dropped_total",
            "counter",
            "Key-state changes not shared because the queue to Redis was full.",
        );
        let _ = writeln!(out, "roo_proxy_shared_facts_dropped_total {}", team.dropped);
    }

    // With several pools, each key's series also name its pool.
    let labels = |k: &KeyReport| {
        let pool = about
            .pool_of(k)
            .map(|p| format!(",pool=\"{}\"", escape(&p)))
            .unwrap_or_default();
        format!(
            "key=\"{}\",label=\"{}\",account=\"{}\"{pool}",
            escape(&k.entry.key.masked()),
            escape(k.entry.label.as_deref().unwrap_or("")),
            escape(k.entry.account.as_deref().unwrap_or(""))
        )
    };
    header(
        &mut out,
        "roo_proxy_key_state",
        "gauge",
        "1 for the state each key is in.",
    );
    for k in &report.keys {
        for state in KeyStatus::ALL {
            let _ = writeln!(
                out,
                "roo_proxy_key_state{{{},state=\"{state}\"}} {}",
                labels(k),
                u8::from(k.state == state)
            );
        }
    }
    header(
        &mut out,
        "roo_proxy_key_cooldown_seconds",
        "gauge",
        "Seconds until a resting key is back.",
    );
    for k in &report.keys {
        let _ = writeln!(
            out,
            "roo_proxy_key_cooldown_seconds{{{}}} {}",
            labels(k),
            k.seconds_left.unwrap_or(0)
        );
    }
    header(
        &mut out,
        "roo_proxy_key_model_rest_seconds",
        "gauge",
        "Seconds until a key serves a model (or free models) again; it serves others.",
    );
    for k in &report.keys {
        for rest in &k.model_rests {
            let _ = writeln!(
                out,
                "roo_proxy_key_model_rest_seconds{{{},scope=\"{}\"}} {}",
                labels(k),
                escape(&rest.scope),
                rest.seconds_left
            );
        }
    }
    let per_key: [PerKeyCounter; 4] = [
        (
            "roo_proxy_key_requests_total",
            "Upstream attempts made with each key.",
            |s| s.requests,
        ),
        (
            "roo_proxy_key_served_total",
            "Attempts whose answer went to the client.",
            |s| s.served,
        ),
        (
            "roo_proxy_key_rate_limited_total",
            "Attempts rate limited (429).",
            |s| s.rate_limited,
        ),
        (
            "roo_proxy_key_failures_total",
            "Other failed attempts: invalid, out of credits, 5xx, connection errors.",
            |s| s.failures,
        ),
    ];
    for (name, help, value) in per_key {
        header(&mut out, name, "counter", help);
        for k in &report.keys {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(k), value(&k.stats));
        }
    }

    histogram(
        &mut out,
        "roo_proxy_request_duration_seconds",
        "Time from request to the end of the answer.",
        &counters.duration,
    );
    histogram(
        &mut out,
        "roo_proxy_time_to_first_byte_seconds",
        "Time from request to the first byte of the answer.",
        &counters.first_byte,
    );
    out
}

/// A per-key counter family: name, help, and how to read it from a key's stats.
type PerKeyCounter = (&'static str, &'static str, fn(&KeyStats) -> u64);

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let mut cumulative = 0;
    for (le, n) in BUCKETS.iter().zip(h.counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/_roo/`: the live status page, one self-contained file.
pub const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_paths_are_recognised_and_nothing_else() {
        assert_eq!(Route::of("/_roo/health"), Some(Some(Route::Health)));
        assert_eq!(Route::of("/_roo/"), Some(Some(Route::Page)));
        assert_eq!(Route::of("/_roo"), Some(Some(Route::Page)));
        assert_eq!(Route::of("/_roo/nope"), Some(None));
        assert_eq!(Route::of("/_rooster"), None);
        assert_eq!(Route::of("/v1/_roo/health"), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
