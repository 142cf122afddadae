//! What instances sharing one key pool tell each other through Redis (`--redis`): the
//! facts, how each is stored and announced, and the rule that merges them.
//!
//! Invariants: pure (no clock, no I/O; times are wall-clock epoch milliseconds passed
//! in). No key material: keys are named by their fingerprint (the state file's name for
//! them, 16 hex digits of their SHA-256), model names by a hash in Redis key names.
//! Every fact is a state, not an event, so applying one twice, or two in either order,
//! ends in the same place: rests and pauses keep the later end, budgets the latest-sent
//! word, marks are set or cleared.

use serde::{Deserialize, Serialize};

use crate::rotation::policy::Share;

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

/// The heartbeat key of instance `id`.
pub fn instance_key(id: &str) -> String {
    format!("{PREFIX}instance:{id}")
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

/// This instance's part of every budget: its place among the live `instances` (sorted
/// by start), or the whole of it when its own heartbeat is not among them.
pub fn share_of(instances: &[Instance], me: &str) -> Share {
    match instances.iter().position(|i| i.id == me) {
        Some(rank) => Share {
            rank: u32::try_from(rank).unwrap_or(0),
            of: u32::try_from(instances.len()).unwrap_or(1),
        },
        None => Share::ALONE,
    }
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
    fn each_live_instance_takes_its_own_part_of_a_budget() {
        let instance = |id: &str| Instance {
            id: id.into(),
            listen: String::new(),
            pid: 1,
            version: String::new(),
            started_ms: 0,
            seen_ms: 0,
            requests: 0,
            rate_limited: 0,
        };
        let live = [instance("a"), instance("b"), instance("c")];
        let parts: Vec<u32> = ["a", "b", "c"]
            .iter()
            .map(|me| share_of(&live, me).part(10))
            .collect();
        assert_eq!(parts, [4, 3, 3]);
        // Not (yet) among them: the whole budget, as when alone.
        assert_eq!(share_of(&live, "d"), Share::ALONE);
        assert_eq!(share_of(&[], "a"), Share::ALONE);
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
