//! What instances sharing one key pool tell each other through Redis (`--redis`): the
//! facts, how each is stored and announced, and the rule that merges them.
//!
//! Invariants: pure (no clock, no I/O; times are wall-clock epoch milliseconds passed
//! in). No key material: keys are named by their fingerprint (the state file's name for
//! them, 16 hex digits of their SHA-256), model names by a hash in Redis key names.
//! Every fact is a state, not an event, so applying one twice, or two in either order,
//! ends in the same place: rests and pauses keep the later end, budgets the latest-sent
//! word, marks are set or cleared.

use std::fmt::Display;

use serde::{Deserialize, Serialize};

/// Every Redis key and channel this proxy uses starts with this.
pub const PREFIX: &str = "roo-proxy:";

/// How long an invalid mark stays in Redis without being set again.
pub const INVALID_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long an instance's heartbeat lives; it is renewed three times as often.
pub const HEARTBEAT_TTL_MS: u64 = 6_000;

/// What one instance learned about a key (by fingerprint `k`) or the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Fact {
    /// The key rests (every key of an account gets its own fact) until `until_ms`;
    /// `strikes` is its account's refusals in a row (the escalation).
    Rest {
        k: String,
        until_ms: u64,
        strikes: u32,
        reason: Reason,
    },
    /// The key's account rests for some models only: a model's name, or
    /// [`crate::persist::state::FREE_MODELS`].
    ModelRest {
        k: String,
        models: String,
        until_ms: u64,
        strikes: u32,
    },
    /// The upstream said the key is invalid (401).
    Invalid { k: String },
    /// A keys-file change cleared the key's invalid mark.
    Valid { k: String },
    /// The user disabled the key (`roo-proxy keys disable`).
    Off { k: String },
    /// The user enabled it again.
    On { k: String },
    /// Nothing is sent before `until_ms` (a rate-limit storm); `storms` in a row.
    Pause { until_ms: u64, storms: u32 },
    /// The key's account may make `remaining` more requests until `reset_ms`, as an
    /// answer to an attempt sent at `sent_ms` said.
    Budget {
        k: String,
        remaining: u32,
        reset_ms: u64,
        sent_ms: u64,
        /// The whole budget of a window, when the answer said it.
        #[serde(default)]
        limit: Option<u32>,
    },
}

/// Why a key rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A 429, or a spent budget.
    RateLimited,
    /// A 402.
    OutOfCredits,
}

/// A fact as one instance announces it on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The instance that learned it (its own messages come back to it too).
    pub from: String,
    pub fact: Fact,
}

/// How a fact is written to Redis, atomically (one script): the write wins only if its
/// `order` is above the stored one, then the key expires at `expire_ms` (none if 0), and
/// the message is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub order: u64,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Store the message; it expires at this epoch millisecond (never if 0).
    Store { expire_ms: u64 },
    /// Delete the key (a mark cleared).
    Delete,
}

/// The channel every instance publishes to and listens on.
pub fn channel() -> String {
    format!("{PREFIX}facts")
}

/// What comes before an instance's id in its heartbeat key.
pub fn instance_prefix() -> String {
    format!("{PREFIX}instance:")
}

/// The heartbeat key of instance `id`.
pub fn instance_key(id: &str) -> String {
    format!("{}{id}", instance_prefix())
}

/// How long an account's count of attempts under way lives after its last change: an
/// instance renews its own part every heartbeat, so a count whose instances all went
/// away is gone after this.
pub const FLIGHT_TTL_MS: u64 = 600_000;

/// The hash that counts the attempts with `account` (its name in Redis, see `Flight`):
/// per instance its attempts under way (`i:ID`) and its latest reservation's number
/// (`s:ID`); the budget its answers announced (`r`, left until `t`, epoch ms); `w`
/// while a reservation waits for room; `a` once it answered an instance; and its
/// counted window (`ws` its start, `wn` attempts, `wv` successes, `wf` the end of the
/// rest a 429 in it began; `ps`, `pv` the window before's start and successes).
pub fn flight_key(account: &str) -> String {
    format!("{PREFIX}flight:{account}")
}

/// What the release script publishes when a reservation was refused since the last one:
/// an attempt with `account` ended, so a waiting instance looks again.
pub fn freed_message(account: &str) -> String {
    serde_json::json!({ "freed": account }).to_string()
}

/// The account of a message [`freed_message`] made.
pub fn decode_freed(text: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Freed {
        freed: String,
    }
    serde_json::from_slice::<Freed>(text).ok().map(|f| f.freed)
}

/// Reserves an attempt with an account: KEYS = [its flight key]; ARGV = [this instance,
/// its own attempts under way with the account, the budget it knows (cap), that
/// budget's reset (epoch ms), now (epoch ms), the heartbeat key prefix, the count's
/// lifetime (ms), this reservation's number, '1' when the cap is the slow start's, the
/// start of the account's counted window (epoch ms) or '']. Counts the attempts of
/// every other instance whose heartbeat lives (and forgets those of instances gone),
/// drops the slow start's cap once the account answered an instance (`a`), and in a
/// counted window (`ws`) drops the cap until the instances together sent (`wn`) what
/// the window before (`ps`) served (`pv`), unless the window is older than that one
/// was long (the current one's successes are `wv`; a window that begins more than
/// 500 ms after the current one makes it the one before, and so does one that begins
/// where the rest a 429 began ends), and refuses all once a 429 said the window is full,
/// until that rest ends (`wf`), by the clock at the latest. Takes the fewer of the two budgets when
/// Redis holds one for the same or a later window, and counts one more for this
/// instance if there is room, noting the highest number granted (`s:ID`, for
/// [`MEND`]). Returns 1, or 2 when it dropped the slow start's cap, or 3 when other
/// attempts went in the counted window before this one, or 0 when there is no room; a
/// refusal marks the account so that the next release announces that one ended.
pub const RESERVE: &str = r"
local me, mine, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local reset, now = tonumber(ARGV[4]), tonumber(ARGV[5])
local others, r, t, answered = 0, nil, nil, false
local ws, wn, wv, ps, pv, wf = nil, 0, 0, nil, 0, nil
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f == 'r' then r = tonumber(v)
  elseif f == 't' then t = tonumber(v)
  elseif f == 'a' then answered = ARGV[9] == '1'
  elseif f == 'ws' then ws = tonumber(v)
  elseif f == 'wn' then wn = tonumber(v) or 0
  elseif f == 'wv' then wv = tonumber(v) or 0
  elseif f == 'ps' then ps = tonumber(v)
  elseif f == 'pv' then pv = tonumber(v) or 0
  elseif f == 'wf' then wf = tonumber(v)
  elseif string.sub(f, 2, 2) == ':' then
    local id = string.sub(f, 3)
    if id == me then
    elseif redis.call('EXISTS', ARGV[6] .. id) == 0 then redis.call('HDEL', KEYS[1], f)
    elseif string.sub(f, 1, 1) == 'i' then others = others + (tonumber(v) or 0) end
  end
end
if answered then cap = 4294967295 end
local start, counted = tonumber(ARGV[10]), false
if start then
  if not ws or start > ws + 500 or (wf and start + 500 >= wf) then
    if ws then redis.call('HSET', KEYS[1], 'ps', string.format('%d', ws), 'pv', wv)
    else redis.call('HDEL', KEYS[1], 'ps', 'pv') end
    redis.call('HSET', KEYS[1], 'ws', ARGV[10], 'wn', 0, 'wv', 0)
    redis.call('HDEL', KEYS[1], 'wf')
    ps, pv, ws, wn, wf = ws, ws and wv or 0, start, 0, nil
  end
  if start + 500 >= ws then
    counted = true
    if wf and now < wf then cap = 0
    elseif not ps or pv <= 0 or now >= ws + (ws - ps) or wn < pv then cap = 4294967295 end
  end
end
if r and t and now < t and t + 500 >= reset and r < cap then cap = r end
if others + mine >= cap then
  redis.call('HSET', KEYS[1], 'w', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  return 0
end
redis.call('HINCRBY', KEYS[1], 'i:' .. me, 1)
if counted then redis.call('HINCRBY', KEYS[1], 'wn', 1) end
local seq = tonumber(ARGV[8])
if seq > (tonumber(redis.call('HGET', KEYS[1], 's:' .. me) or '0') or 0) then
  redis.call('HSET', KEYS[1], 's:' .. me, seq)
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
if answered then return 2 end
if counted and wn > 0 then return 3 end
return 1
";

/// Ends reserved attempts: KEYS = [the flight key, the channel]; ARGV = [this instance,
/// the remaining budget their answers announced or '', that budget's reset (epoch ms),
/// the [`freed_message`], the count's lifetime (ms), how many ended less how many went
/// uncounted, '1' when one of them was answered, the successes per counted window as
/// `start:n,…` (see [`number_pairs`]), the counted windows a 429 said are full and
/// the end of the rest it began, as `start:end,…`]. Counts that many fewer for this
/// instance (never below 0), notes that the account answered (`a`: its slow start is
/// over), adds the successes to the current window or the one before, whichever began
/// then, marks the current window full until the latest such end (`wf`), keeps the
/// budget of the latest window (the fewest left within one), and publishes the message
/// when a reservation was refused since the last release.
pub const RELEASE: &str = r"
local f = 'i:' .. ARGV[1]
local n = (tonumber(redis.call('HGET', KEYS[1], f) or '0') or 0) - tonumber(ARGV[6])
if n > 0 then
  redis.call('HSET', KEYS[1], f, n)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else redis.call('HDEL', KEYS[1], f) end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], 'a', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if ARGV[8] ~= '' then
  local ws = tonumber(redis.call('HGET', KEYS[1], 'ws') or '')
  local ps = tonumber(redis.call('HGET', KEYS[1], 'ps') or '')
  for start, n in string.gmatch(ARGV[8], '(%d+):(%d+)') do
    start = tonumber(start)
    if ws and math.abs(start - ws) <= 500 then redis.call('HINCRBY', KEYS[1], 'wv', n)
    elseif ps and math.abs(start - ps) <= 500 then redis.call('HINCRBY', KEYS[1], 'pv', n) end
  end
end
if ARGV[9] ~= '' then
  local ws = tonumber(redis.call('HGET', KEYS[1], 'ws') or '')
  local wf = tonumber(redis.call('HGET', KEYS[1], 'wf') or '')
  for start, till in string.gmatch(ARGV[9], '(%d+):(%d+)') do
    if ws and math.abs(tonumber(start) - ws) <= 500 and (not wf or tonumber(till) > wf) then
      redis.call('HSET', KEYS[1], 'wf', till)
      wf = tonumber(till)
    end
  end
end
if ARGV[2] ~= '' then
  local r, t = tonumber(ARGV[2]), tonumber(ARGV[3])
  local sr = tonumber(redis.call('HGET', KEYS[1], 'r') or '')
  local st = tonumber(redis.call('HGET', KEYS[1], 't') or '')
  if not sr or not st or t > st + 500 then
    redis.call('HSET', KEYS[1], 'r', r, 't', t)
  elseif t + 500 >= st and r < sr then
    redis.call('HSET', KEYS[1], 'r', r)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if redis.call('HDEL', KEYS[1], 'w') == 1 then
  redis.call('PUBLISH', KEYS[2], ARGV[4])
end
return n
";

/// Writes this instance's count of an account as it knows it: KEYS = [the flight key];
/// ARGV = [this instance, the count, the number of its latest reservation when the count
/// was read, the count's lifetime (ms)]. When a reservation begun after that reading has
/// landed (`s:ID` is higher), the stored count may already hold it, so it is only
/// raised, never lowered: the count errs high until a later mend, never low.
pub const MEND: &str = r"
local f, n = 'i:' .. ARGV[1], tonumber(ARGV[2])
local landed = tonumber(redis.call('HGET', KEYS[1], 's:' .. ARGV[1]) or '0') or 0
if landed > tonumber(ARGV[3]) then
  local stored = tonumber(redis.call('HGET', KEYS[1], f) or '0') or 0
  if stored > n then n = stored end
end
if n > 0 then
  redis.call('HSET', KEYS[1], f, n)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('HDEL', KEYS[1], f)
end
return n
";

/// Pairs of numbers as [`RELEASE`] reads them: `a:b,a:b` (successes per counted
/// window, start → how many; and windows a 429 said are full, start → the end of the
/// rest it began; all times epoch ms).
pub fn number_pairs<A: Display, B: Display>(pairs: impl IntoIterator<Item = (A, B)>) -> String {
    let pairs: Vec<String> = pairs.into_iter().map(|(a, b)| format!("{a}:{b}")).collect();
    pairs.join(",")
}

/// Of two budgets (remaining, reset in epoch ms) announced for an account, the one
/// [`RELEASE`] would keep: the later window's, or within one window (resets 500 ms
/// apart at most) the fewer left.
pub fn newer_budget(a: Option<(u32, u64)>, b: Option<(u32, u64)>) -> Option<(u32, u64)> {
    match (a, b) {
        (Some(a), Some(b)) if a.1.abs_diff(b.1) <= 500 => Some(if b.0 < a.0 { b } else { a }),
        (Some(a), Some(b)) => Some(if b.1 > a.1 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The pattern of every heartbeat key.
pub fn instance_pattern() -> String {
    format!("{PREFIX}instance:*")
}

/// The patterns of every stored fact, for the merge when Redis (re)appears.
pub fn fact_patterns() -> [String; 6] {
    ["rest", "model", "invalid", "off", "pause", "budget"].map(|kind| format!("{PREFIX}{kind}*"))
}

/// How `fact`, learned at `now_ms`, is written.
pub fn write_of(fact: &Fact, now_ms: u64) -> Write {
    // Marks are set unconditionally (order 0 always wins); rests by their end.
    let (key, order, action) = match fact {
        Fact::Rest { k, until_ms, .. } => (
            format!("{PREFIX}rest:{k}"),
            *until_ms,
            Action::Store {
                expire_ms: *until_ms,
            },
        ),
        Fact::ModelRest {
            k,
            models,
            until_ms,
            ..
        } => (
            format!("{PREFIX}model:{k}:{}", hash16(models)),
            *until_ms,
            Action::Store {
                expire_ms: *until_ms,
            },
        ),
        Fact::Invalid { k } => (
            format!("{PREFIX}invalid:{k}"),
            0,
            Action::Store {
                expire_ms: now_ms.saturating_add(INVALID_TTL_MS),
            },
        ),
        Fact::Valid { k } => (format!("{PREFIX}invalid:{k}"), 0, Action::Delete),
        Fact::Off { k } => (
            format!("{PREFIX}off:{k}"),
            0,
            Action::Store { expire_ms: 0 },
        ),
        Fact::On { k } => (format!("{PREFIX}off:{k}"), 0, Action::Delete),
        Fact::Pause { until_ms, .. } => (
            format!("{PREFIX}pause"),
            *until_ms,
            Action::Store {
                expire_ms: *until_ms,
            },
        ),
        Fact::Budget {
            k,
            reset_ms,
            sent_ms,
            ..
        } => (
            format!("{PREFIX}budget:{k}"),
            *sent_ms,
            Action::Store {
                expire_ms: *reset_ms,
            },
        ),
    };
    Write { key, order, action }
}

/// The script that writes a fact: KEYS = [the fact's key, the channel]; ARGV = [order,
/// expiry in epoch ms or `del`, message]. A store with an order not above the stored
/// one changes nothing and announces nothing, so a rest is never shortened, whoever
/// writes last. Returns 1 when it wrote.
pub const SCRIPT: &str = r"
local order = tonumber(ARGV[1])
if order > 0 then
  local stored = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
  if stored >= order then return 0 end
end
if ARGV[2] == 'del' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'o', ARGV[1], 'm', ARGV[3])
  local expire = tonumber(ARGV[2])
  if expire > 0 then
    redis.call('PEXPIREAT', KEYS[1], expire)
  else
    redis.call('PERSIST', KEYS[1])
  end
end
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
";

/// A message as sent on the channel and stored.
pub fn encode(message: &Message) -> String {
    // A struct of strings and numbers always serialises.
    serde_json::to_string(message).unwrap_or_default()
}

/// A message from the channel or a stored fact; `None` for anything else (another
/// program's traffic, a future version's fact).
pub fn decode(text: &[u8]) -> Option<Message> {
    serde_json::from_slice(text).ok()
}

/// How Redis names an account of the keys file (`text`: its provider, pool and name):
/// a hash, told apart from a key fingerprint by its prefix.
pub fn account_name(text: &str) -> String {
    format!("acct-{}", hash16(text))
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn hash16(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Redis URL as it may be shown: the password (if any) replaced by `***`.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// One instance as its heartbeat announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    /// Where it listens.
    pub listen: String,
    pub pid: u32,
    pub version: String,
    pub started_ms: u64,
    /// When it last announced itself.
    pub seen_ms: u64,
    /// Requests answered and upstream 429s, since it started.
    pub requests: u64,
    pub rate_limited: u64,
}

/// How this instance's link to Redis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not reached yet.
    Connecting,
    Up,
    /// Unreachable: serving on this instance's own state.
    Down,
}

impl Link {
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Connecting => "connecting",
            Link::Up => "up",
            Link::Down => "down",
        }
    }
}

/// The shared state's side of the status endpoints.
#[derive(Debug, Clone)]
pub struct TeamReport {
    /// This instance.
    pub id: String,
    /// The Redis URL, its password masked.
    pub url: String,
    pub link: Link,
    /// Why Redis is unreachable (when it is).
    pub error: Option<String>,
    /// Every instance whose heartbeat is alive, this one included, as last read.
    pub instances: Vec<Instance>,
    /// Facts that found the outbox full.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(until_ms: u64) -> Fact {
        Fact::Rest {
            k: "0123456789abcdef".into(),
            until_ms,
            strikes: 1,
            reason: Reason::RateLimited,
        }
    }

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        let facts = [
            rest(5),
            Fact::ModelRest {
                k: "a".into(),
                models: "x/y:free".into(),
                until_ms: 9,
                strikes: 2,
            },
            Fact::Invalid { k: "a".into() },
            Fact::Valid { k: "a".into() },
            Fact::Off { k: "a".into() },
            Fact::On { k: "a".into() },
            Fact::Pause {
                until_ms: 1,
                storms: 2,
            },
            Fact::Budget {
                k: "a".into(),
                remaining: 3,
                reset_ms: 4,
                sent_ms: 5,
                limit: Some(10),
            },
        ];
        for fact in facts {
            let message = Message {
                from: "i1".into(),
                fact,
            };
            assert_eq!(decode(encode(&message).as_bytes()), Some(message));
        }
        for junk in [
            "",
            "{",
            "null",
            r#"{"from":"x","fact":{"t":"later"}}"#,
            "\u{0}",
        ] {
            assert_eq!(decode(junk.as_bytes()), None, "{junk}");
        }
    }

    #[test]
    fn rests_are_ordered_by_their_end_and_expire_with_it() {
        let w = write_of(&rest(1_000), 10);
        assert_eq!(w.key, "roo-proxy:rest:0123456789abcdef");
        assert_eq!(w.order, 1_000);
        assert_eq!(w.action, Action::Store { expire_ms: 1_000 });
        // Marks always win; clearing one deletes it.
        let w = write_of(&Fact::Invalid { k: "a".into() }, 10);
        assert_eq!((w.order, w.key.as_str()), (0, "roo-proxy:invalid:a"));
        assert_eq!(
            w.action,
            Action::Store {
                expire_ms: 10 + INVALID_TTL_MS
            }
        );
        assert_eq!(
            write_of(&Fact::Valid { k: "a".into() }, 10).action,
            Action::Delete
        );
        assert_eq!(
            write_of(&Fact::On { k: "a".into() }, 10).key,
            "roo-proxy:off:a"
        );
    }

    #[test]
    fn model_names_are_hashed_in_key_names() {
        let fact = Fact::ModelRest {
            k: "a".into(),
            models: "vendor/secret-model".into(),
            until_ms: 9,
            strikes: 1,
        };
        let key = write_of(&fact, 0).key;
        assert!(key.starts_with("roo-proxy:model:a:"), "{key}");
        assert!(!key.contains("vendor"), "{key}");
        assert!(
            fact_patterns()
                .iter()
                .any(|p| key.starts_with(p.trim_end_matches('*')))
        );
    }

    #[test]
    fn of_budgets_released_together_the_latest_windows_fewest_left_is_kept() {
        assert_eq!(newer_budget(None, None), None);
        assert_eq!(newer_budget(Some((5, 1_000)), None), Some((5, 1_000)));
        assert_eq!(newer_budget(None, Some((5, 1_000))), Some((5, 1_000)));
        // One window (resets 500 ms apart at most): the fewer left, in either order.
        assert_eq!(
            newer_budget(Some((5, 1_000)), Some((3, 1_400))),
            Some((3, 1_400))
        );
        assert_eq!(
            newer_budget(Some((3, 1_400)), Some((5, 1_000))),
            Some((3, 1_400))
        );
        // A later window replaces an earlier one, whatever is left in it.
        assert_eq!(
            newer_budget(Some((1, 1_000)), Some((9, 6_000))),
            Some((9, 6_000))
        );
        assert_eq!(
            newer_budget(Some((9, 6_000)), Some((1, 1_000))),
            Some((9, 6_000))
        );
    }

    #[test]
    fn freed_accounts_are_told_apart_from_facts() {
        let text = freed_message("0123456789abcdef");
        assert_eq!(
            decode_freed(text.as_bytes()).as_deref(),
            Some("0123456789abcdef")
        );
        assert_eq!(decode(text.as_bytes()), None, "not a fact");
        let fact = encode(&Message {
            from: "i1".into(),
            fact: rest(5),
        });
        assert_eq!(decode_freed(fact.as_bytes()), None);
        assert_eq!(flight_key("ab"), "roo-proxy:flight:ab");
        assert!(
            !fact_patterns()
                .iter()
                .any(|p| flight_key("ab").starts_with(p.trim_end_matches('*'))),
            "counts in flight are not facts to merge"
        );
    }

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            masked_url("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(
            masked_url("rediss://me:pa@ss@db/1?x=y"),
            "rediss://me:***@db/1?x=y"
        );
        assert_eq!(masked_url("redis://db:6379"), "redis://db:6379");
        assert_eq!(masked_url("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
        assert_eq!(masked_url("nonsense"), "(not a URL)");
    }
}
