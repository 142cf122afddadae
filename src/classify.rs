//! What an upstream answer means for the key that got it.
//!
//! Invariant: pure. The wall-clock time comes in as an argument (rate-limit resets are
//! announced as wall-clock instants), and the answer is a [`Verdict`]: pass the response
//! to the client, or record an [`Outcome`] against the key and try the next one.
//!
//! OpenRouter's signals (see the field notes): a 429 carries its reset as epoch
//! milliseconds in `X-RateLimit-Reset`, as a header or inside `error.metadata.headers` of
//! the body; `Retry-After` may be there too. A 429 whose body names the model's provider
//! is the provider's limit, not the key's: another key would not help.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ureq::http::HeaderMap;

use crate::policy::Outcome;

/// How long a key rests after a 402 that gave no `Retry-After`.
pub const OUT_OF_CREDITS_REST: Duration = Duration::from_secs(3600);
/// The longest rest any announcement can impose: daily limits reset within a day.
pub const LONGEST_REST: Duration = Duration::from_secs(24 * 3600);
/// The shortest rest: a reset already in the past still means "not right now".
pub const SHORTEST_REST: Duration = Duration::from_secs(1);

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
            let json = serde_json::from_slice::<Value>(body).ok();
            if json.as_ref().is_some_and(blames_provider) {
                return Verdict::Pass;
            }
            let rest = rate_limit_rest(headers, json.as_ref(), now)
                .or_else(|| json.as_ref().and_then(|j| limit_period_rest(j, now)))
                .unwrap_or(cooldown);
            // Repeated 429s may lengthen a rest up to the end of the UTC day, when daily
            // limits reset.
            let longest = until_midnight(now).max(SHORTEST_REST);
            Verdict::Retry(Outcome::RateLimited {
                rest: clamp(rest),
                longest,
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
/// fails after the stream began: `{"error":{"code":429,"message":…},"choices":[…]}`.
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
    let code = match error.get("code")? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
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

/// The message of an error event in a stream, for logs.
pub fn stream_error_message(data: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(data).ok()?;
    let code = json
        .pointer("/error/code")
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
    rest.clamp(SHORTEST_REST, LONGEST_REST)
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

/// How long until the limit resets: `X-RateLimit-Reset` as header, then as body
/// metadata, then `Retry-After`.
fn rate_limit_rest(headers: &HeaderMap, json: Option<&Value>, now: SystemTime) -> Option<Duration> {
    let header_reset = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok());
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
    body_reset.or_else(|| retry_after(headers, now))
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
    fn rests_are_clamped_between_a_second_and_a_day() {
        let past = headers(&[("X-RateLimit-Reset", "1000000000000")]);
        assert_eq!(
            rest_of(classify(429, &past, b"", now(), COOLDOWN)),
            SHORTEST_REST
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
                longest: Duration::from_secs(90)
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
                Verdict::Retry(Outcome::RateLimited { rest, longest }) => {
                    assert!(
                        (SHORTEST_REST..=LONGEST_REST).contains(&rest),
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
}
