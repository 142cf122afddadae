//! What an upstream answer means for the key that got it.
//!
//! Invariant: pure. The wall-clock time comes in as an argument (rate-limit resets are
//! announced as wall-clock instants), and the answer is a [`Verdict`]: pass the response
//! to the client, or record an [`Outcome`] against the key and try the next one.
//!
//! Every provider's dialect (see the field notes, section 6): OpenRouter's
//! `X-RateLimit-Reset` in epoch milliseconds, as a header or inside
//! `error.metadata.headers` of the body; `Retry-After` and `retry-after-ms`; Gemini's
//! `RetryInfo.retryDelay` and `QuotaFailure` quota ids in a body that may be a JSON list;
//! "Please try again in 2m59.56s" in OpenAI's and Groq's messages; the
//! `x-ratelimit-{remaining,reset}-requests…` family (durations such as `2m59.56s`,
//! `120ms`, or float seconds such as `33011.38`) and Anthropic's
//! `anthropic-ratelimit-requests-{remaining,reset}` (RFC 3339). A precise reset always
//! beats a guess from the limit's period (a day, a minute). A 429 whose body names the
//! model's provider is the provider's limit, not the key's: another key would not help.
//! Successful answers are read for the budget they announce ([`budget`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ureq::http::HeaderMap;

use crate::rotation::policy::{Budget, Outcome, Scope};

/// How long a key rests after a 402 that gave no `Retry-After`.
pub const OUT_OF_CREDITS_REST: Duration = Duration::from_secs(3600);
/// The longest rest any announcement can impose: daily limits reset within a day.
pub const LONGEST_REST: Duration = Duration::from_secs(24 * 3600);
/// The rest for a reset already in the past (or now): it still means "not right now",
/// and the two clocks may differ.
pub const SHORTEST_REST: Duration = Duration::from_secs(1);
/// The shortest rest a reset announced in the future gets: a closer one is obeyed as
/// announced (a window that ends in 300 ms serves again in 300 ms), but a few
/// milliseconds are within the jitter of clocks and networks, and the attempt sent after
/// them would find the old window. Were the upstream's clock behind ours, the key refused
/// again right after its rest rests twice as long each time (policy.rs), which soon
/// covers the difference.
pub const SHORTEST_ANNOUNCED: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the response to the client; the key served.
    Pass,
    /// Record this against the key and send the request again with another one.
    Retry(Outcome),
}

/// Whether the body of a response with this status must be read (bounded) before
/// [`classify`] can decide, and kept in case the client gets it after all.
pub fn needs_body(status: u16) -> bool {
    matches!(status, 401 | 402 | 429) || status >= 500
}

/// Decides what to do with an upstream response. `body` is the (bounded) body for the
/// statuses [`needs_body`] names, empty otherwise; `cooldown` is the rest for a 429 that
/// says nothing about its reset.
pub fn classify(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    cooldown: Duration,
) -> Verdict {
    match status {
        429 => {
            let json = serde_json::from_slice::<Value>(body).ok().map(unwrap_list);
            if json.as_ref().is_some_and(blames_provider) {
                return Verdict::Pass;
            }
            // A precise reset always beats a guess from the limit's period.
            let rest = announced_rest(headers, json.as_ref(), now)
                .or_else(|| json.as_ref().and_then(|j| limit_period_rest(j, now)))
                .unwrap_or(cooldown);
            // Repeated 429s may lengthen a rest up to the end of the UTC day, when daily
            // limits reset.
            let longest = until_midnight(now).max(SHORTEST_REST);
            Verdict::Retry(Outcome::RateLimited {
                rest: clamp(rest),
                longest,
                scope: json.as_ref().map_or(Scope::Key, limit_scope),
            })
        }
        401 => Verdict::Retry(Outcome::Invalid),
        402 => {
            let rest = retry_after(headers, now).unwrap_or(OUT_OF_CREDITS_REST);
            Verdict::Retry(Outcome::OutOfCredits { rest: clamp(rest) })
        }
        s if s >= 500 => Verdict::Retry(Outcome::Failed),
        _ => Verdict::Pass,
    }
}

/// An error in the first event of a 200 stream, as OpenRouter sends it when a request
/// fails after the stream began: `{"error":{"code":429,"message":…},"choices":[…]}`, or
/// as Anthropic does, with a type for a code: `event: error` with
/// `{"type":"error","error":{"type":"rate_limit_error",…}}`.
/// Rate limits (429) and spent credits (402) are judged as if they had come as the HTTP
/// status; anything else is not for us to judge (`None`: pass the stream on).
pub fn stream_error(
    data: &[u8],
    headers: &HeaderMap,
    now: SystemTime,
    cooldown: Duration,
) -> Option<Verdict> {
    let json: Value = serde_json::from_slice(data).ok()?;
    let error = json.get("error")?;
    let code = match error.get("code") {
        Some(Value::Number(n)) => n.as_u64()?,
        Some(Value::String(s)) => s.trim().parse().ok()?,
        Some(_) => return None,
        None => anthropic_code(error)?,
    };
    if code != 429 && code != 402 {
        return None;
    }
    let body = serde_json::json!({ "error": error }).to_string();
    match classify(code as u16, headers, body.as_bytes(), now, cooldown) {
        Verdict::Retry(outcome) => Some(Verdict::Retry(outcome)),
        Verdict::Pass => None,
    }
}

/// The status an Anthropic error event's type stands for, for the two a key's next
/// request depends on (its API reference, "Errors").
fn anthropic_code(error: &Value) -> Option<u64> {
    match error.get("type")?.as_str()? {
        "rate_limit_error" => Some(429),
        "billing_error" => Some(402),
        _ => None,
    }
}

/// The message of an error event in a stream, for logs.
pub fn stream_error_message(data: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(data).ok()?;
    let code = json
        .pointer("/error/code")
        .or_else(|| json.pointer("/error/type"))
        .map(|c| c.to_string())
        .unwrap_or_default();
    let message = json
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    Some(format!(
        "{} {}",
        code.trim_matches('"'),
        message.chars().take(300).collect::<String>()
    ))
}

/// The upstream's own error message from an OpenAI/OpenRouter error body, if any.
pub fn error_message(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let message = json.pointer("/error/message").and_then(Value::as_str)?;
    Some(message.chars().take(300).collect())
}

fn clamp(rest: Duration) -> Duration {
    if rest.is_zero() {
        return SHORTEST_REST;
    }
    rest.clamp(SHORTEST_ANNOUNCED, LONGEST_REST)
}

/// A rest inferred from what the message says the limit is: a daily limit
/// (`free-models-per-day`) resets at 00:00 UTC, a per-minute one on the next minute.
fn limit_period_rest(json: &Value, now: SystemTime) -> Option<Duration> {
    let message = json
        .pointer("/error/message")?
        .as_str()?
        .to_ascii_lowercase();
    if message.contains("per-day") || message.contains("per day") {
        return Some(until_midnight(now));
    }
    if message.contains("per minute")
        || message.contains("per-minute")
        || message.contains("limit_rpm")
    {
        let into_minute = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 60_000) as u64;
        return Some(Duration::from_millis(60_000 - into_minute));
    }
    None
}

/// Time left until the next 00:00 UTC.
fn until_midnight(now: SystemTime) -> Duration {
    let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as u64;
    Duration::from_millis(86_400_000 - ms % 86_400_000)
}

/// A 429 from the model's provider rather than from the key's limits.
fn blames_provider(json: &Value) -> bool {
    let provider = json
        .pointer("/error/metadata/provider_name")
        .is_some_and(|v| !v.is_null());
    let message = json
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    provider || message.contains("Provider returned error")
}

/// How long until the limit resets, as the upstream announced it: `X-RateLimit-Reset`
/// as header, then as body metadata, then `retry-after-ms` and `Retry-After`, Gemini's
/// `RetryInfo.retryDelay`, "try again in 2m59.56s" in the message, and the reset of a
/// spent budget (`x-ratelimit-reset-*`, `anthropic-ratelimit-*-reset`).
fn announced_rest(headers: &HeaderMap, json: Option<&Value>, now: SystemTime) -> Option<Duration> {
    let header_reset = header(headers, "x-ratelimit-reset");
    if let Some(rest) = header_reset.and_then(|v| reset_rest(v, now)) {
        return Some(rest);
    }
    let body_reset = json
        .and_then(|j| j.pointer("/error/metadata/headers"))
        .and_then(Value::as_object)
        .and_then(|map| {
            map.iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("x-ratelimit-reset"))
                .map(|(_, v)| v)
        })
        .and_then(|v| match v {
            Value::String(s) => reset_rest(s, now),
            Value::Number(n) => reset_rest(&n.to_string(), now),
            _ => None,
        });
    body_reset
        .or_else(|| {
            let ms = header(headers, "retry-after-ms")?
                .trim()
                .parse::<f64>()
                .ok()?;
            seconds(ms / 1000.0)
        })
        .or_else(|| retry_after(headers, now))
        .or_else(|| json.and_then(retry_delay))
        .or_else(|| json.and_then(message_rest))
        .or_else(|| spent_reset(headers, now))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Gemini's OpenAI-compatible endpoint may wrap its error in a list.
fn unwrap_list(json: Value) -> Value {
    match json {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    }
}

/// Gemini: `error.details[]` holds a `google.rpc.RetryInfo` with `retryDelay: "37s"`.
fn retry_delay(json: &Value) -> Option<Duration> {
    json.pointer("/error/details")?
        .as_array()?
        .iter()
        .filter_map(|d| d.get("retryDelay")?.as_str())
        .find_map(parse_duration)
}

/// "Please try again in 2m59.56s." (OpenAI, Groq) or "Please retry in 37.2s." (Gemini).
fn message_rest(json: &Value) -> Option<Duration> {
    let message = json
        .pointer("/error/message")?
        .as_str()?
        .to_ascii_lowercase();
    ["try again in ", "retry in ", "retry after "]
        .iter()
        .find_map(|lead| {
            let start = message.find(lead)? + lead.len();
            let word: String = message[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
                .collect();
            parse_duration(word.trim_end_matches('.'))
        })
}

/// What the limit covers: Gemini's `…PerModel…` quota ids name one model; OpenRouter's
/// `free-models-per-…` limits concern `:free` models only.
fn limit_scope(json: &Value) -> Scope {
    let message = json
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("");
    if message.contains("free-models-per") {
        return Scope::FreeModels;
    }
    let per_model = json
        .pointer("/error/details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("violations")?.as_array())
        .flatten()
        .filter_map(|v| v.get("quotaId")?.as_str())
        .any(|id| id.contains("PerModel"));
    if per_model { Scope::Model } else { Scope::Key }
}

/// The remaining-requests families, each as (remaining header, reset header, how the
/// reset is written): OpenAI, Groq; Cerebras (per day); Mistral (per minute, reset
/// unconfirmed); Anthropic; OpenRouter.
const BUDGETS: [(&str, &str, Reset); 5] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        Reset::Duration,
    ),
    (
        "x-ratelimit-remaining-requests-day",
        "x-ratelimit-reset-requests-day",
        Reset::Duration,
    ),
    (
        "x-ratelimit-remaining-req-minute",
        "x-ratelimit-reset-req-minute",
        Reset::Duration,
    ),
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        Reset::Rfc3339,
    ),
    ("x-ratelimit-remaining", "x-ratelimit-reset", Reset::Epoch),
];

/// The whole budget of each of [`BUDGETS`]' families, in the same order.
const BUDGET_LIMITS: [&str; 5] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-requests-day",
    "x-ratelimit-limit-req-minute",
    "anthropic-ratelimit-requests-limit",
    "x-ratelimit-limit",
];

/// The other spent-budget families a 429 may name: tokens run out too.
const TOKEN_RESETS: [(&str, &str, Reset); 4] = [
    (
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        Reset::Duration,
    ),
    (
        "x-ratelimit-remaining-tokens-minute",
        "x-ratelimit-reset-tokens-minute",
        Reset::Duration,
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        Reset::Rfc3339,
    ),
    (
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        Reset::Rfc3339,
    ),
];

#[derive(Debug, Clone, Copy)]
enum Reset {
    /// `6s`, `120ms`, `2m59.56s`, or float seconds (`33011.38`).
    Duration,
    /// An instant (`2025-08-21T12:40:59Z`).
    Rfc3339,
    /// Epoch milliseconds or seconds, or a delay ([`reset_rest`]).
    Epoch,
}

fn reset_of(value: &str, how: Reset, now: SystemTime) -> Option<Duration> {
    match how {
        Reset::Duration => parse_duration(value),
        Reset::Rfc3339 => {
            let at = parse_rfc3339(value)?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        }
        Reset::Epoch => reset_rest(value, now),
    }
}

/// Each family's (remaining, reset) that the headers carry.
fn families<'a>(
    headers: &'a HeaderMap,
    list: &'a [(&'static str, &'static str, Reset)],
    now: SystemTime,
) -> impl Iterator<Item = (u32, Option<Duration>)> + 'a {
    list.iter().filter_map(move |(remaining, reset, how)| {
        let left = header(headers, remaining)?.trim().parse::<f64>().ok()?;
        let left = left.clamp(0.0, u32::MAX as f64) as u32;
        let reset = header(headers, reset).and_then(|v| reset_of(v, *how, now));
        Some((left, reset))
    })
}

/// The longest reset of a spent budget (remaining 0) a 429 names.
fn spent_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    families(headers, &BUDGETS, now)
        .chain(families(headers, &TOKEN_RESETS, now))
        .filter(|(left, _)| *left == 0)
        .filter_map(|(_, reset)| reset)
        .max()
}

/// The remaining request budget a successful answer announces, in any provider's
/// dialect: the tightest of the families it carries (the fewest requests left; among
/// spent ones, the latest reset). A family without a reset says too little to act on.
pub fn budget(headers: &HeaderMap, now: SystemTime) -> Option<Budget> {
    BUDGETS
        .iter()
        .zip(BUDGET_LIMITS)
        .filter_map(|((remaining, reset, how), limit)| {
            let left = header(headers, remaining)?.trim().parse::<f64>().ok()?;
            let reset = header(headers, reset).and_then(|v| reset_of(v, *how, now))?;
            let limit = header(headers, limit)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|l| *l >= 1.0)
                .map(|l| l.min(u32::MAX as f64) as u32);
            Some(Budget {
                remaining: left.clamp(0.0, u32::MAX as f64) as u32,
                reset: reset.min(LONGEST_REST),
                limit,
            })
        })
        .min_by_key(|b| (b.remaining, std::cmp::Reverse(b.reset)))
}

/// A duration as providers write it: Go style (`6s`, `120ms`, `2m59.56s`, `1h2m3s`,
/// `1.5us`), or bare float seconds (`33011.38`). Bounded by [`LONGEST_REST`].
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = 0.0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(LONGEST_REST.as_secs_f64())))
}

/// An RFC 3339 instant: `2025-08-21T12:40:59Z`, with optional fraction and offset.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if sep(at, b".") {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        let frac = std::str::from_utf8(&b[at + 1..at + 1 + digits.min(9)]).ok()?;
        nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - digits.min(9) as u32);
        at += 1 + digits;
    }
    let offset = match b.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == at + 6 && sep(at + 3, b":") => {
            let minutes = num(at + 1, 2)? * 60 + num(at + 4, 2)?;
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Reads an `X-RateLimit-Reset` value. OpenRouter sends epoch milliseconds; other APIs
/// send epoch seconds or seconds from now. Told apart by size: epoch milliseconds are
/// past 10^12 since 2001, epoch seconds past 10^9; a smaller number is a delay.
fn reset_rest(value: &str, now: SystemTime) -> Option<Duration> {
    let n: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let since_epoch = if n >= 1e12 {
        Duration::from_millis(n as u64)
    } else if n >= 1e9 {
        Duration::from_secs_f64(n)
    } else {
        return Some(Duration::from_secs_f64(n.min(LONGEST_REST.as_secs_f64())));
    };
    // Past SystemTime's range (Windows ends in the year 30828): as far off as a rest goes.
    let Some(at) = UNIX_EPOCH.checked_add(since_epoch) else {
        return Some(LONGEST_REST);
    };
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(LONGEST_REST.as_secs())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::HeaderValue;

    const COOLDOWN: Duration = Duration::from_secs(60);

    /// 2026-05-21T00:00:00Z, the reset in the field notes' example.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_779_321_600_000) - Duration::from_secs(90)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn rest_of(verdict: Verdict) -> Duration {
        match verdict {
            Verdict::Retry(Outcome::RateLimited { rest, .. }) => rest,
            other => panic!("not a rate limit: {other:?}"),
        }
    }

    const OPENROUTER_429: &str = r#"{"error":{"code":429,"message":"Rate limit exceeded: limit_rpm/google/gemini-2.5-pro/abc: limited to 1 requests per minute","metadata":{"headers":{"X-RateLimit-Limit":"50","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1779321600000"}}}}"#;

    #[test]
    fn reset_header_in_epoch_ms_sets_the_rest() {
        let h = headers(&[("X-RateLimit-Reset", "1779321600000"), ("Retry-After", "5")]);
        assert_eq!(
            rest_of(classify(429, &h, b"", now(), COOLDOWN)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn reset_inside_the_body_metadata_is_used_when_no_header() {
        let v = classify(
            429,
            &HeaderMap::new(),
            OPENROUTER_429.as_bytes(),
            now(),
            COOLDOWN,
        );
        assert_eq!(rest_of(v), Duration::from_secs(90));
        let numeric = r#"{"error":{"code":429,"message":"x","metadata":{"headers":{"x-ratelimit-reset":1779321600000}}}}"#;
        let v = classify(429, &HeaderMap::new(), numeric.as_bytes(), now(), COOLDOWN);
        assert_eq!(rest_of(v), Duration::from_secs(90));
    }

    #[test]
    fn a_reset_past_the_end_of_time_rests_the_longest() {
        for reset in ["1e30", "18446744073709551615", "99999999999999999999999"] {
            let h = headers(&[("X-RateLimit-Reset", reset)]);
            assert_eq!(
                rest_of(classify(429, &h, b"", now(), COOLDOWN)),
                LONGEST_REST,
                "{reset}"
            );
        }
    }

    #[test]
    fn the_header_wins_over_the_body() {
        let h = headers(&[("x-ratelimit-reset", "1779321570000")]);
        let v = classify(429, &h, OPENROUTER_429.as_bytes(), now(), COOLDOWN);
        assert_eq!(rest_of(v), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_seconds_and_dates_are_read() {
        let v = classify(
            429,
            &headers(&[("Retry-After", "17")]),
            b"",
            now(),
            COOLDOWN,
        );
        assert_eq!(rest_of(v), Duration::from_secs(17));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(120));
        let v = classify(
            429,
            &headers(&[("Retry-After", &date)]),
            b"",
            now(),
            COOLDOWN,
        );
        assert_eq!(rest_of(v), Duration::from_secs(120));
    }

    #[test]
    fn a_429_without_hints_rests_for_the_cooldown() {
        let v = classify(429, &HeaderMap::new(), b"not json", now(), COOLDOWN);
        assert_eq!(rest_of(v), COOLDOWN);
        let garbage = headers(&[("X-RateLimit-Reset", "soon"), ("Retry-After", "later")]);
        assert_eq!(
            rest_of(classify(429, &garbage, b"", now(), COOLDOWN)),
            COOLDOWN
        );
    }

    #[test]
    fn rests_are_as_announced_up_to_a_day_and_a_past_reset_is_a_second() {
        let past = headers(&[("X-RateLimit-Reset", "1000000000000")]);
        assert_eq!(
            rest_of(classify(429, &past, b"", now(), COOLDOWN)),
            SHORTEST_REST
        );
        // A reset in the future is obeyed as announced, however close.
        let soon = (now() + Duration::from_millis(300))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let soon = headers(&[("X-RateLimit-Reset", &soon)]);
        assert_eq!(
            rest_of(classify(429, &soon, b"", now(), COOLDOWN)),
            Duration::from_millis(300)
        );
        let short = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "120ms"),
        ]);
        assert_eq!(
            rest_of(classify(429, &short, b"", now(), COOLDOWN)),
            Duration::from_millis(120)
        );
        let far = headers(&[("X-RateLimit-Reset", "99999999999999")]);
        assert_eq!(
            rest_of(classify(429, &far, b"", now(), COOLDOWN)),
            LONGEST_REST
        );
    }

    #[test]
    fn other_reset_conventions_are_understood() {
        let epoch_secs = headers(&[("X-RateLimit-Reset", "1779321600")]);
        assert_eq!(
            rest_of(classify(429, &epoch_secs, b"", now(), COOLDOWN)),
            Duration::from_secs(90)
        );
        let delay = headers(&[("X-RateLimit-Reset", "12")]);
        assert_eq!(
            rest_of(classify(429, &delay, b"", now(), COOLDOWN)),
            Duration::from_secs(12)
        );
    }

    #[test]
    fn a_provider_429_is_passed_to_the_client() {
        let named = r#"{"error":{"code":429,"message":"google/gemini is temporarily rate-limited upstream","metadata":{"provider_name":"Google AI Studio","raw":"..."}}}"#;
        assert_eq!(
            classify(429, &HeaderMap::new(), named.as_bytes(), now(), COOLDOWN),
            Verdict::Pass
        );
        let message = r#"{"error":{"code":429,"message":"Provider returned error"}}"#;
        assert_eq!(
            classify(429, &HeaderMap::new(), message.as_bytes(), now(), COOLDOWN),
            Verdict::Pass
        );
        let null_provider = r#"{"error":{"code":429,"message":"Rate limit exceeded","metadata":{"provider_name":null}}}"#;
        assert!(matches!(
            classify(
                429,
                &HeaderMap::new(),
                null_provider.as_bytes(),
                now(),
                COOLDOWN
            ),
            Verdict::Retry(_)
        ));
    }

    #[test]
    fn key_problems_take_the_key_out() {
        assert_eq!(
            classify(401, &HeaderMap::new(), b"", now(), COOLDOWN),
            Verdict::Retry(Outcome::Invalid)
        );
        assert_eq!(
            classify(402, &HeaderMap::new(), b"", now(), COOLDOWN),
            Verdict::Retry(Outcome::OutOfCredits {
                rest: OUT_OF_CREDITS_REST
            })
        );
        assert_eq!(
            classify(
                402,
                &headers(&[("Retry-After", "600")]),
                b"",
                now(),
                COOLDOWN
            ),
            Verdict::Retry(Outcome::OutOfCredits {
                rest: Duration::from_secs(600)
            })
        );
    }

    #[test]
    fn server_errors_retry_and_everything_else_passes() {
        for s in [500, 502, 503, 504] {
            assert_eq!(
                classify(s, &HeaderMap::new(), b"", now(), COOLDOWN),
                Verdict::Retry(Outcome::Failed)
            );
        }
        for s in [200, 201, 204, 301, 400, 403, 404, 408, 413, 422] {
            assert_eq!(
                classify(s, &HeaderMap::new(), b"", now(), COOLDOWN),
                Verdict::Pass,
                "{s}"
            );
        }
    }

    /// 2026-05-20T23:58:30Z
    fn late_evening() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_779_321_600_000) - Duration::from_secs(90)
    }

    #[test]
    fn a_daily_limit_without_a_reset_rests_until_midnight_utc() {
        let body = r#"{"error":{"code":429,"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day"}}"#;
        let v = classify(
            429,
            &HeaderMap::new(),
            body.as_bytes(),
            late_evening(),
            COOLDOWN,
        );
        assert_eq!(rest_of(v), Duration::from_secs(90));
    }

    #[test]
    fn a_per_minute_limit_without_a_reset_rests_until_the_next_minute() {
        let body = r#"{"error":{"code":429,"message":"limited to 20 requests per minute"}}"#;
        let at = UNIX_EPOCH + Duration::from_millis(1_779_321_600_000 + 15_250);
        let v = classify(429, &HeaderMap::new(), body.as_bytes(), at, COOLDOWN);
        assert_eq!(rest_of(v), Duration::from_millis(44_750));
    }

    #[test]
    fn every_429_may_back_off_until_the_end_of_the_day() {
        let v = classify(
            429,
            &headers(&[("Retry-After", "5")]),
            b"",
            late_evening(),
            COOLDOWN,
        );
        assert_eq!(
            v,
            Verdict::Retry(Outcome::RateLimited {
                rest: Duration::from_secs(5),
                longest: Duration::from_secs(90),
                scope: Scope::Key,
            })
        );
    }

    #[test]
    fn errors_in_the_first_stream_event_are_judged_like_statuses() {
        let h = HeaderMap::new();
        let limited = br#"{"id":"x","error":{"code":429,"message":"Rate limit exceeded","metadata":{"headers":{"X-RateLimit-Reset":"1779321600000"}}},"choices":[{"index":0,"delta":{},"finish_reason":"error"}]}"#;
        let v = stream_error(limited, &h, now(), COOLDOWN).unwrap();
        assert_eq!(rest_of(v), Duration::from_secs(90));
        let credits = br#"{"error":{"code":"402","message":"Insufficient credits"}}"#;
        assert!(matches!(
            stream_error(credits, &h, now(), COOLDOWN),
            Some(Verdict::Retry(Outcome::OutOfCredits { .. }))
        ));
        let provider = br#"{"error":{"code":429,"message":"Provider returned error","metadata":{"provider_name":"X"}}}"#;
        assert_eq!(stream_error(provider, &h, now(), COOLDOWN), None);
        // Anthropic's error event names a type instead of a code.
        let anthropic = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#;
        assert!(matches!(
            stream_error(anthropic, &h, now(), COOLDOWN),
            Some(Verdict::Retry(Outcome::RateLimited { .. }))
        ));
        assert_eq!(
            stream_error_message(anthropic).unwrap(),
            "rate_limit_error Number of requests has exceeded your rate limit"
        );
        let billing = br#"{"type":"error","error":{"type":"billing_error","message":"x"}}"#;
        assert!(matches!(
            stream_error(billing, &h, now(), COOLDOWN),
            Some(Verdict::Retry(Outcome::OutOfCredits { .. }))
        ));
        let overloaded = br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#;
        assert_eq!(stream_error(overloaded, &h, now(), COOLDOWN), None);
        for other in [
            &br#"{"error":{"code":500,"message":"x"}}"#[..],
            br#"{"choices":[]}"#,
            b"[DONE]",
            b"not json",
        ] {
            assert_eq!(stream_error(other, &h, now(), COOLDOWN), None);
        }
    }

    #[test]
    fn property_any_answer_gives_a_bounded_rest_or_passes() {
        let values = [
            "0",
            "1",
            "30",
            "-5",
            "1e400",
            "NaN",
            "1779321600000",
            "99999999999999999999",
            "soon",
            "",
            " 7 ",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Sun, 06 Nov 2044 08:49:37 GMT",
            "\u{7f}",
        ];
        let bodies = [
            "",
            "{",
            "null",
            r#"{"error":{"code":429,"message":"per-day"}}"#,
            r#"{"error":{"metadata":{"headers":{"X-RateLimit-Reset":"x"}}}}"#,
            r#"{"error":{"metadata":{"provider_name":"p"}}}"#,
            r#"{"error":{"message":"limit_rpm"}}"#,
            "[1,2]",
            r#"{"error":{"metadata":{"headers":[]}}}"#,
        ];
        let mut rng = crate::testing::Rng::new(5);
        for _ in 0..20_000 {
            let status = [200u16, 401, 402, 403, 429, 500, 503][rng.below(7)];
            let mut h = HeaderMap::new();
            for name in ["x-ratelimit-reset", "retry-after"] {
                let value: &&str = rng.pick(&values[..]);
                if rng.below(2) == 0
                    && let Ok(v) = HeaderValue::from_str(value)
                {
                    h.insert(name, v);
                }
            }
            let body: &&str = rng.pick(&bodies[..]);
            match classify(status, &h, body.as_bytes(), now(), COOLDOWN) {
                Verdict::Retry(Outcome::RateLimited { rest, longest, .. }) => {
                    assert!(
                        (SHORTEST_ANNOUNCED..=LONGEST_REST).contains(&rest),
                        "{status} {h:?} {body}: {rest:?}"
                    );
                    assert!(longest >= SHORTEST_REST);
                }
                Verdict::Retry(Outcome::OutOfCredits { rest }) => assert!(rest <= LONGEST_REST),
                _ => {}
            }
            let _ = stream_error(body.as_bytes(), &h, now(), COOLDOWN);
        }
    }

    #[test]
    fn error_messages_are_extracted_and_bounded() {
        let message = error_message(OPENROUTER_429.as_bytes()).unwrap();
        assert!(
            message.starts_with("Rate limit exceeded: limit_rpm/"),
            "{message}"
        );
        assert_eq!(error_message(b"<html>"), None);
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(1000));
        assert_eq!(error_message(long.as_bytes()).unwrap().len(), 300);
    }

    fn scope_of(verdict: Verdict) -> Scope {
        match verdict {
            Verdict::Retry(Outcome::RateLimited { scope, .. }) => scope,
            other => panic!("not a rate limit: {other:?}"),
        }
    }

    #[test]
    fn durations_in_every_providers_writing() {
        let cases = [
            ("6s", 6_000),
            ("120ms", 120),
            ("2m59.56s", 179_560),
            ("1h2m3s", 3_723_000),
            ("33011.38", 33_011_380),
            ("0.5s", 500),
            ("0s", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "s", "6x", "-3s", "1e400", "m5", "NaN", "5 s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_duration("99999h"), Some(LONGEST_REST));
    }

    #[test]
    fn rfc3339_instants_are_read() {
        let at = |s| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(
            at("2026-05-21T00:00:00Z"),
            Some(Duration::from_secs(1_779_321_600))
        );
        assert_eq!(
            at("2026-05-21T02:00:00.250+02:00"),
            Some(Duration::from_millis(1_779_321_600_250))
        );
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        for bad in [
            "",
            "2026-05-21",
            "2026-13-01T00:00:00Z",
            "2026-05-21T00:00:00",
            "1969-12-31T23:59:59Z",
            "2026-05-21T00:00:00.Z",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_precise_reset_in_the_message_beats_the_period_it_names() {
        // Groq, per-day limit: the message's reset, not midnight.
        let groq = r#"{"error":{"message":"Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_x` service tier `on_demand` on requests per day (RPD): Limit 1000, Used 1000, Requested 1. Please try again in 2m59.56s. Need more tokens?","type":"requests","code":"rate_limit_exceeded"}}"#;
        let v = classify(
            429,
            &HeaderMap::new(),
            groq.as_bytes(),
            late_evening(),
            COOLDOWN,
        );
        assert_eq!(rest_of(v), Duration::from_millis(179_560));
        // OpenAI: the headers of the spent budget.
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-remaining-tokens", "3000"),
            ("x-ratelimit-reset-tokens", "120ms"),
        ]);
        let v = classify(429, &h, b"{}", now(), COOLDOWN);
        assert_eq!(rest_of(v), Duration::from_millis(179_560));
        // Anthropic: an RFC 3339 reset 90 s away.
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-05-21T00:00:00Z"),
        ]);
        assert_eq!(
            rest_of(classify(429, &h, b"", now(), COOLDOWN)),
            Duration::from_secs(90)
        );
        // Cerebras: float seconds.
        let h = headers(&[
            ("x-ratelimit-remaining-requests-day", "0"),
            ("x-ratelimit-reset-requests-day", "33011.38"),
        ]);
        assert_eq!(
            rest_of(classify(429, &h, b"", now(), COOLDOWN)),
            Duration::from_millis(33_011_380)
        );
        // OpenAI SDK's own header.
        let h = headers(&[("retry-after-ms", "1500")]);
        assert_eq!(
            rest_of(classify(429, &h, b"", now(), COOLDOWN)),
            Duration::from_millis(1500)
        );
    }

    const GEMINI_429: &str = r#"[{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.5-pro"},"quotaValue":"5"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}]"#;

    #[test]
    fn a_gemini_429_rests_for_its_retry_delay_and_for_its_model() {
        let v = classify(
            429,
            &HeaderMap::new(),
            GEMINI_429.as_bytes(),
            now(),
            COOLDOWN,
        );
        assert_eq!(rest_of(v), Duration::from_secs(37));
        assert_eq!(scope_of(v), Scope::Model);
        // Not wrapped in a list, and per project only: the key's limit.
        let plain = GEMINI_429
            .trim_start_matches('[')
            .trim_end_matches(']')
            .replace("PerProjectPerModel", "PerProject");
        let v = classify(429, &HeaderMap::new(), plain.as_bytes(), now(), COOLDOWN);
        assert_eq!(
            (rest_of(v), scope_of(v)),
            (Duration::from_secs(37), Scope::Key)
        );
        // Only "Resource has been exhausted": the cooldown.
        let bare = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
        let v = classify(429, &HeaderMap::new(), bare.as_bytes(), now(), COOLDOWN);
        assert_eq!((rest_of(v), scope_of(v)), (COOLDOWN, Scope::Key));
    }

    #[test]
    fn openrouters_free_models_limit_concerns_free_models() {
        let body = r#"{"error":{"code":429,"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day"}}"#;
        let v = classify(429, &HeaderMap::new(), body.as_bytes(), now(), COOLDOWN);
        assert_eq!(scope_of(v), Scope::FreeModels);
        assert_eq!(
            scope_of(classify(
                429,
                &HeaderMap::new(),
                OPENROUTER_429.as_bytes(),
                now(),
                COOLDOWN
            )),
            Scope::Key
        );
    }

    #[test]
    fn a_budget_carries_the_windows_limit_when_the_answer_says_it() {
        let b = budget(
            &headers(&[
                ("x-ratelimit-limit-requests", "30"),
                ("x-ratelimit-remaining-requests", "29"),
                ("x-ratelimit-reset-requests", "2s"),
            ]),
            now(),
        );
        assert_eq!(b.and_then(|b| b.limit), Some(30));
        let b = budget(
            &headers(&[
                ("x-ratelimit-limit", "junk"),
                ("x-ratelimit-remaining", "3"),
                ("x-ratelimit-reset", "1779321600000"),
            ]),
            now(),
        );
        assert_eq!(b.map(|b| (b.remaining, b.limit)), Some((3, None)));
    }

    #[test]
    fn successes_announce_the_budget_in_every_dialect() {
        let b = |pairs: &[(&'static str, &str)]| budget(&headers(pairs), now());
        let budget_of = |remaining, ms| {
            Some(Budget {
                remaining,
                reset: Duration::from_millis(ms),
                limit: None,
            })
        };
        assert_eq!(
            b(&[
                ("x-ratelimit-remaining-requests", "14"),
                ("x-ratelimit-reset-requests", "6s")
            ]),
            budget_of(14, 6_000)
        );
        assert_eq!(
            b(&[
                ("x-ratelimit-remaining-requests-day", "0"),
                ("x-ratelimit-reset-requests-day", "33011.38")
            ]),
            budget_of(0, 33_011_380)
        );
        assert_eq!(
            b(&[
                ("anthropic-ratelimit-requests-remaining", "3"),
                ("anthropic-ratelimit-requests-reset", "2026-05-21T00:00:00Z")
            ]),
            budget_of(3, 90_000)
        );
        assert_eq!(
            b(&[
                ("X-RateLimit-Remaining", "7"),
                ("X-RateLimit-Reset", "1779321600000")
            ]),
            budget_of(7, 90_000)
        );
        // The tightest family speaks; one without a reset says too little.
        assert_eq!(
            b(&[
                ("x-ratelimit-remaining-requests", "14"),
                ("x-ratelimit-reset-requests", "6s"),
                ("x-ratelimit-remaining-requests-day", "2"),
                ("x-ratelimit-reset-requests-day", "100"),
            ]),
            budget_of(2, 100_000)
        );
        assert_eq!(b(&[("x-ratelimit-remaining-requests", "0")]), None);
        assert_eq!(
            b(&[
                ("x-ratelimit-remaining-requests", "lots"),
                ("x-ratelimit-reset-requests", "6s")
            ]),
            None
        );
        assert_eq!(b(&[]), None);
    }

    #[test]
    fn property_any_reset_text_parses_bounded_or_not_at_all() {
        let pieces = [
            "0",
            "1",
            "9",
            ".",
            "5",
            "m",
            "s",
            "ms",
            "h",
            "us",
            "µs",
            "ns",
            "-",
            "+",
            ":",
            "T",
            "Z",
            "2026-05-21",
            "T12:40:59",
            "e",
            " ",
            "99999999999",
            "x",
        ];
        let mut rng = crate::testing::Rng::new(3339);
        for _ in 0..20_000 {
            let text = rng.text(&pieces, 8);
            if let Some(d) = parse_duration(&text) {
                assert!(d <= LONGEST_REST, "{text}: {d:?}");
            }
            let _ = parse_rfc3339(&text);
            let mut h = headers(&[
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1s"),
                ("anthropic-ratelimit-requests-remaining", "0"),
            ]);
            if let Ok(v) = HeaderValue::from_str(&text) {
                h.insert("anthropic-ratelimit-requests-reset", v.clone());
                h.insert("x-ratelimit-reset-requests", v);
            }
            if let Some(b) = budget(&h, now()) {
                assert!(b.reset <= LONGEST_REST);
            }
            let body = format!(r#"{{"error":{{"message":"try again in {text}"}}}}"#);
            if let Verdict::Retry(Outcome::RateLimited { rest, .. }) =
                classify(429, &h, body.as_bytes(), now(), COOLDOWN)
            {
                assert!(
                    (SHORTEST_ANNOUNCED..=LONGEST_REST).contains(&rest),
                    "{text}"
                );
            }
        }
    }
}
