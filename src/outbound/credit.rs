//! Roo Code's credit display: `GET {base}/key` answered for the whole pool, in
//! OpenRouter's shape, from each key's own `/key` answer, remembered for a minute.
//!
//! Invariants: pure (the clock is passed in; fetching is the server's); keys are named
//! by their fingerprint, never held as strings; a key whose answer failed counts for
//! nothing and is asked again only after the same minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a key's answer is remembered.
pub const FRESH_FOR: Duration = Duration::from_secs(60);
/// Most keys asked about for one `/key` request; the others count once asked by a later
/// one (Roo's settings page asks again on every visit).
pub const MOST_ASKED: usize = 16;

/// What OpenRouter's `/key` says of one key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Credit {
    pub usage: f64,
    /// `None`: no limit.
    pub limit: Option<f64>,
    pub limit_remaining: Option<f64>,
    pub is_free_tier: bool,
}

/// The credit in a `/key` answer's body, if it has OpenRouter's shape.
pub fn parse(body: &[u8]) -> Option<Credit> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?;
    Some(Credit {
        usage: data.get("usage").and_then(Value::as_f64).unwrap_or(0.0),
        limit: data.get("limit").and_then(Value::as_f64),
        limit_remaining: data.get("limit_remaining").and_then(Value::as_f64),
        is_free_tier: data.get("is_free_tier").and_then(Value::as_bool) == Some(true),
    })
}

/// The pool's answer: usage summed; a limit (and what remains of it) summed only when
/// every counted key has one, else `null` (no limit), as OpenRouter says of one key.
/// `keys` is how many keys the pool has, `counted` how many answers are in the sum.
pub fn sum(credits: &[Credit], keys: usize) -> Value {
    let total = |f: fn(&Credit) -> Option<f64>| -> Option<f64> {
        credits.iter().map(f).sum::<Option<f64>>()
    };
    let limited = !credits.is_empty();
    json!({"data": {
        "label": format!("roo-proxy pool of {keys} key{}", if keys == 1 { "" } else { "s" }),
        "usage": credits.iter().map(|c| c.usage).sum::<f64>(),
        "limit": total(|c| c.limit).filter(|_| limited),
        "limit_remaining": total(|c| c.limit_remaining).filter(|_| limited),
        "is_free_tier": limited && credits.iter().all(|c| c.is_free_tier),
        "keys": keys,
        "keys_counted": credits.len(),
    }})
}

/// Each key's last answer (or failure), by fingerprint, with when it came.
#[derive(Default)]
pub struct Cache {
    known: Mutex<HashMap<String, (Instant, Option<Credit>)>>,
}

impl Cache {
    /// The key's remembered answer, if fresh at `now`: `Some(None)` is a remembered
    /// failure.
    pub fn fresh(&self, fingerprint: &str, now: Instant) -> Option<Option<Credit>> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let (at, credit) = known.get(fingerprint)?;
        (now.saturating_duration_since(*at) < FRESH_FOR).then_some(*credit)
    }

    /// Remembers an answer; forgets the stale ones (keys removed from the pool too).
    pub fn store(&self, fingerprint: String, credit: Option<Credit>, now: Instant) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, (at, _)| now.saturating_duration_since(*at) < FRESH_FOR);
        known.insert(fingerprint, (now, credit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &[u8] = br#"{"data":{"label":"x","limit":10.0,"limit_remaining":8.5,"usage":1.5,"is_free_tier":false}}"#;

    #[test]
    fn the_pool_sums_its_keys() {
        let one = parse(ONE).unwrap();
        let v = sum(&[one, one, one], 4);
        assert_eq!(v["data"]["usage"], 4.5);
        assert_eq!(v["data"]["limit"], 30.0);
        assert_eq!(v["data"]["limit_remaining"], 25.5);
        assert_eq!(v["data"]["is_free_tier"], false);
        assert_eq!(v["data"]["keys"], 4);
        assert_eq!(v["data"]["keys_counted"], 3);
    }

    #[test]
    fn one_unlimited_key_makes_the_pool_unlimited() {
        let one = parse(ONE).unwrap();
        let free = parse(br#"{"data":{"limit":null,"usage":2}}"#).unwrap();
        let v = sum(&[one, free], 2);
        assert_eq!(v["data"]["limit"], Value::Null);
        assert_eq!(v["data"]["limit_remaining"], Value::Null);
        assert_eq!(v["data"]["usage"], 3.5);
        let none = sum(&[], 2);
        assert_eq!(none["data"]["limit"], Value::Null);
        assert_eq!(none["data"]["usage"], 0.0);
        assert_eq!(parse(b"{\"error\":{}}"), None);
        assert_eq!(parse(b"not json"), None);
    }

    #[test]
    fn answers_are_remembered_for_a_minute() {
        let cache = Cache::default();
        let t0 = Instant::now();
        assert_eq!(cache.fresh("k", t0), None);
        let one = parse(ONE);
        cache.store("k".into(), one, t0);
        cache.store("bad".into(), None, t0);
        assert_eq!(cache.fresh("k", t0 + FRESH_FOR / 2), Some(one));
        assert_eq!(cache.fresh("bad", t0 + FRESH_FOR / 2), Some(None));
        assert_eq!(cache.fresh("k", t0 + FRESH_FOR), None);
    }
}
