//! What a request does next: send an attempt with a key, wait for one, or give up with
//! an answer of the proxy's own.
//!
//! Invariants: pure. No clock (`now` is passed in), no I/O, no locks. The server reads
//! the pool and the waiting room into a [`View`], asks [`Attempts::next`], does what it
//! says, and reports back what happened (`sent`, `failed`, `no_key`, `waited`); as quinn keeps its protocol state machine free of I/O, every rule of the
//! attempt loop is here and tested without sockets or sleeps.
//!
//! Rules:
//! - A round tries each ready key once, at most `--max-attempts` (default: the keys ready
//!   when it began, at most 8); a request makes at most [`MOST_ATTEMPTS`] in all.
//! - With `--wait`, a request that finds no key waits for the first key that could serve
//!   it, if that one is back before its wait is over, then starts a new round. Waiting
//!   requests go in arrival order: one with others waiting ahead of it waits, even when a
//!   key is ready, until those have taken theirs (or its own wait is over).
//! - A request whose keys are held back by the slow start (policy.rs: their account's
//!   first attempt is under way and its budget unknown) waits for that attempt's answer,
//!   at most `PATIENCE`, with or without `--wait`: it would have been sent otherwise,
//!   so the hold must not turn it into a 429.
//! - No waiting when the upstream is failing (a connection error or a 5xx and keys
//!   ready): that is 502 at once.
//! - `Retry-After` on an exhausted pool is the time until a key that could serve this
//!   request is back.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::front::config::MAX_DEFAULT_ATTEMPTS;
use crate::rotation::policy::Outlook;
use crate::serve::error::Reply;

/// Upstream attempts one request makes at most, across all its rounds.
pub const MOST_ATTEMPTS: usize = 32;

/// When keys are ready but none is left to try in this round (all tried, or busy with
/// attempts in flight), a waiting request looks again this often.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The settings the decisions follow, built once.
#[derive(Debug, Clone)]
pub struct Rules<'c> {
    /// `--wait`: how long a request may wait for a key.
    pub wait: Duration,
    /// `--max-attempts`: tries per round; `None`: each ready key once, at most 8.
    pub max_attempts: Option<usize>,
    /// For the wording of answers.
    pub upstream: &'c str,
    pub keys_file: &'c Path,
}

/// The pool and the waiting room as this request sees them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct View {
    /// The pool as this request's model sees it (`ready`: keys that could serve it now;
    /// `next_free`: when the first that could is back, or a pause ends).
    pub pool: Outlook,
    /// Requests waiting that arrived before this one.
    pub ahead: usize,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send an attempt with the key the pool picks now, skipping those tried this round
    /// (the pool picks under its lock, where round-robin and the budget of requests in
    /// flight are kept; if it finds none, report [`Attempts::no_key`] and ask again).
    Try,
    /// Wait (in the waiting room, watching the client) until this instant or until the
    /// pool or the room changes, then report [`Attempts::waited`] and ask again.
    Wait(Instant),
    /// Answer the client with this.
    GiveUp(Reply),
}

/// One request's attempts so far; `K` names a key (the server's pool entry).
#[derive(Debug)]
pub struct Attempts<'r, K> {
    rules: &'r Rules<'r>,
    /// The request waits for no key past this.
    deadline: Instant,
    /// Attempts sent, in all rounds.
    made: usize,
    /// Keys tried in this round, and how many attempts it may make (set by its first).
    tried: Vec<K>,
    round_budget: usize,
    /// The pool had no untried key for this round.
    spent: bool,
    /// Why an attempt failed when it was the upstream's failure (not a refusal).
    last_failure: Option<String>,
    /// The key of the last attempt.
    last: Option<K>,
}

impl<'r, K: Clone> Attempts<'r, K> {
    pub fn new(rules: &'r Rules<'r>, arrived: Instant) -> Attempts<'r, K> {
        Attempts {
            rules,
            deadline: arrived + rules.wait,
            made: 0,
            tried: Vec::new(),
            round_budget: 0,
            spent: false,
            last_failure: None,
            last: None,
        }
    }

    /// Attempts sent, in all rounds.
    pub fn made(&self) -> usize {
        self.made
    }

    /// The pool found no key for this round although the last view counted some ready.
    pub fn found_none(&self) -> bool {
        self.spent
    }

    /// Keys tried in this round: the pool skips them.
    pub fn tried(&self) -> &[K] {
        &self.tried
    }

    /// The key of the last attempt (for the log line).
    pub fn last_key(&self) -> Option<&K> {
        self.last.as_ref()
    }

    /// The decision.
    pub fn next(&self, now: Instant, view: &View) -> Next {
        if view.pool.total == 0 {
            return Next::GiveUp(Reply::new(503, no_keys_hint(self.rules.keys_file)));
        }
        let may_wait = now < self.deadline;
        let budget_left = self.tried.is_empty() || self.tried.len() < self.round_budget;
        let round_open = !self.spent && self.made < MOST_ATTEMPTS && budget_left;
        if round_open && view.pool.ready > 0 {
            if view.ahead == 0 || !may_wait {
                return Next::Try;
            }
            // Others waited longer: they go first; the room wakes us as they do.
            return Next::Wait(self.deadline);
        }
        if view.pool.ready > 0 {
            if let Some(why) = &self.last_failure {
                return Next::GiveUp(self.upstream_failed(why));
            }
            if may_wait && self.made < MOST_ATTEMPTS {
                // The round's budget is spent on refusals while other keys are ready: a
                // new round at once. The pool found no key although some are ready (all
                // tried, or busy): look again when an attempt ends, or in a moment.
                let at = if self.spent { now + RECHECK } else { now };
                return Next::Wait(self.deadline.min(at));
            }
            return Next::GiveUp(Reply::wait(
                Duration::ZERO,
                format!(
                    "rate limited on all {} attempts this request may make (--max-attempts); other keys are ready, send it again",
                    self.made
                ),
            ));
        }
        if let Some(held) = view.pool.held_until {
            // Keys wait for their account's first answer (the slow start): a moment,
            // with or without --wait; without the hold this request would have gone.
            return Next::Wait(view.pool.next_free.map_or(held, |at| at.min(held)));
        }
        match view.pool.next_free {
            Some(at) if at <= self.deadline => Next::Wait(at),
            Some(at) => Next::GiveUp(self.resting(view, at.saturating_duration_since(now))),
            // Keys busy with as many attempts as their budget allows: one ends soon (and
            // wakes the waiting room).
            None if view.pool.booked > 0 => {
                if may_wait {
                    return Next::Wait(self.deadline.min(now + RECHECK));
                }
                Next::GiveUp(Reply::wait(
                    Duration::from_secs(1),
                    format!(
                        "the {} key(s) that could serve have as many requests under way as their remaining budget allows; send it again in a moment",
                        view.pool.booked
                    ),
                ))
            }
            None => Next::GiveUp(self.unusable(view)),
        }
    }

    /// An attempt goes out with `key`; `ready` keys could serve when it was picked.
    pub fn sent(&mut self, key: K, ready: usize) {
        if self.tried.is_empty() {
            self.round_budget = self
                .rules
                .max_attempts
                .unwrap_or_else(|| ready.clamp(1, MAX_DEFAULT_ATTEMPTS));
        }
        self.last = Some(key.clone());
        self.tried.push(key);
        self.made += 1;
    }

    /// The upstream failed (connection error, timeout, 5xx): `why`, keys masked.
    pub fn failed(&mut self, why: String) {
        self.last_failure = Some(why);
    }

    /// The pool had no key for this round that was not tried already.
    pub fn no_key(&mut self) {
        self.spent = true;
    }

    /// A wait ended: keys tried before may be back, so a new round begins.
    pub fn waited(&mut self) {
        self.tried.clear();
        self.spent = false;
    }

    fn upstream_failed(&self, why: &str) -> Reply {
        let attempts = self.made;
        Reply::new(
            502,
            format!(
                "the upstream {} failed on {attempts} attempt{} (last: {why}); check that it is reachable, or try again",
                self.rules.upstream,
                if attempts == 1 { "" } else { "s" }
            ),
        )
    }

    fn resting(&self, view: &View, wait: Duration) -> Reply {
        let (invalid, disabled) = (view.pool.invalid, view.pool.disabled);
        let mut more = Vec::new();
        if invalid > 0 {
            more.push(format!("{invalid} more are invalid"));
        }
        if disabled > 0 {
            more.push(format!("{disabled} more are disabled"));
        }
        let more = if more.is_empty() {
            String::new()
        } else {
            format!(" ({})", more.join(", "))
        };
        Reply::wait(
            wait,
            format!(
                "all {} keys are resting after rate limits or spent credits{more}; the first is free again in {} s. Wait, or add keys to '{}'",
                view.pool.total - invalid - disabled,
                wait.as_secs_f64().ceil() as u64,
                self.rules.keys_file.display()
            ),
        )
    }

    fn unusable(&self, view: &View) -> Reply {
        let file = self.rules.keys_file.display();
        if view.pool.disabled == 0 {
            return Reply::new(
                503,
                format!(
                    "none of the {} keys can serve: the upstream rejected them as invalid (401). Check or replace them in '{file}'; the proxy picks up the change within a second",
                    view.pool.total
                ),
            );
        }
        Reply::new(
            503,
            format!(
                "none of the {} keys can serve: {} are disabled (enable one with `roo-proxy keys enable PREFIX`){}",
                view.pool.total,
                view.pool.disabled,
                if view.pool.invalid > 0 {
                    format!(
                        " and {} were rejected by the upstream as invalid (401)",
                        view.pool.invalid
                    )
                } else {
                    String::new()
                }
            ),
        )
    }
}

/// What to say when the pool has no keys at all.
pub fn no_keys_hint(path: &Path) -> String {
    format!(
        "no API keys: add one with `roo-proxy keys add` (it goes to '{}'; the running proxy picks it up within a second), or set ROO_PROXY_KEYS",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn rules(wait: Duration, max_attempts: Option<usize>) -> Rules<'static> {
        Rules {
            wait,
            max_attempts,
            upstream: "https://openrouter.ai/api/v1",
            keys_file: Path::new("keys.json"),
        }
    }

    fn of(pool: Outlook) -> View {
        View { pool, ahead: 0 }
    }

    fn ready(n: usize) -> View {
        of(Outlook {
            total: 4,
            ready: n,
            ..Outlook::default()
        })
    }

    fn resting(until: Instant) -> View {
        of(Outlook {
            total: 4,
            ready: 0,
            next_free: Some(until),
            ..Outlook::default()
        })
    }

    fn gave_up(next: Next) -> Reply {
        match next {
            Next::GiveUp(reply) => reply,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn a_ready_key_is_tried_and_each_key_once_per_round() {
        let t = Instant::now();
        let rules = rules(Duration::ZERO, None);
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        assert_eq!(a.next(t, &ready(3)), Next::Try);
        a.sent(1, 3);
        a.sent(2, 2);
        assert_eq!(a.next(t, &ready(1)), Next::Try);
        a.sent(3, 1);
        assert_eq!(a.tried(), [1, 2, 3]);
        // The round's budget (the 3 keys ready when it began) is spent; no --wait.
        let reply = gave_up(a.next(t, &ready(1)));
        assert_eq!((reply.status, reply.retry_after), (429, Some(1)));
        assert!(
            reply.message.contains("all 3 attempts"),
            "{}",
            reply.message
        );
    }

    #[test]
    fn max_attempts_bounds_a_round() {
        let t = Instant::now();
        let rules = rules(Duration::ZERO, Some(1));
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        a.sent(1, 4);
        assert_eq!(gave_up(a.next(t, &ready(3))).status, 429);
    }

    #[test]
    fn a_failing_upstream_gets_502_at_once_even_with_wait() {
        let t = Instant::now();
        let rules = rules(60 * SEC, None);
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        a.sent(1, 2);
        a.failed("HTTP 500".into());
        a.sent(2, 1);
        a.failed("connection refused".into());
        let reply = gave_up(a.next(t, &ready(2)));
        assert_eq!(reply.status, 502);
        assert!(
            reply
                .message
                .contains("2 attempts (last: connection refused)")
        );
    }

    #[test]
    fn retry_after_is_the_time_until_a_key_for_this_request_is_back() {
        let t = Instant::now();
        let rules = rules(Duration::ZERO, None);
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        a.sent(1, 1);
        let mut view = resting(t + 7 * SEC + Duration::from_millis(200));
        view.pool.invalid = 1;
        let reply = gave_up(a.next(t, &view));
        assert_eq!((reply.status, reply.retry_after), (429, Some(8)));
        assert!(
            reply.message.contains("all 3 keys are resting"),
            "{}",
            reply.message
        );
        assert!(
            reply.message.contains("1 more are invalid"),
            "{}",
            reply.message
        );
    }

    #[test]
    fn a_key_back_within_wait_is_waited_for_and_then_tried_again() {
        let t = Instant::now();
        let rules = rules(10 * SEC, None);
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        a.sent(1, 1);
        assert_eq!(a.next(t, &resting(t + 5 * SEC)), Next::Wait(t + 5 * SEC));
        a.waited();
        assert!(a.tried().is_empty(), "a new round may use the key again");
        assert_eq!(a.next(t + 5 * SEC, &ready(1)), Next::Try);
        a.sent(1, 1);
        assert_eq!(a.made(), 2);
        assert_eq!(a.last_key(), Some(&1));
    }

    #[test]
    fn a_key_back_only_after_the_wait_is_answered_429_at_once() {
        let t = Instant::now();
        let rules = rules(10 * SEC, None);
        let a: Attempts<u8> = Attempts::new(&rules, t);
        let reply = gave_up(a.next(t + 2 * SEC, &resting(t + 11 * SEC)));
        assert_eq!((reply.status, reply.retry_after), (429, Some(9)));
    }

    #[test]
    fn a_request_waits_behind_those_that_waited_longer() {
        let t = Instant::now();
        let rules = rules(10 * SEC, None);
        let a: Attempts<u8> = Attempts::new(&rules, t);
        let behind = View {
            ahead: 2,
            ..ready(1)
        };
        assert_eq!(a.next(t, &behind), Next::Wait(t + 10 * SEC));
        assert_eq!(a.next(t, &ready(1)), Next::Try, "first in line");
        // Without --wait, or once its own wait is over, nobody is ahead of it.
        assert_eq!(a.next(t + 10 * SEC, &behind), Next::Try);
        let no_wait = super::tests::rules(Duration::ZERO, None);
        assert_eq!(Attempts::<u8>::new(&no_wait, t).next(t, &behind), Next::Try);
    }

    #[test]
    fn with_wait_a_spent_round_starts_again_and_attempts_stay_bounded() {
        let t = Instant::now();
        let rules = rules(600 * SEC, Some(1));
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        let mut now = t;
        let mut waits = 0;
        loop {
            match a.next(now, &ready(2)) {
                Next::Try => a.sent(1, 2),
                Next::Wait(until) => {
                    assert!(until >= now);
                    now = until;
                    waits += 1;
                    a.waited();
                }
                Next::GiveUp(reply) => {
                    assert_eq!(reply.status, 429);
                    break;
                }
            }
            assert!(waits <= MOST_ATTEMPTS, "the loop does not end");
        }
        assert_eq!(a.made(), MOST_ATTEMPTS);
    }

    #[test]
    fn no_key_found_while_some_are_ready_looks_again_in_a_moment() {
        let t = Instant::now();
        let rules = rules(10 * SEC, None);
        let mut a: Attempts<u8> = Attempts::new(&rules, t);
        assert_eq!(a.next(t, &ready(1)), Next::Try);
        a.no_key();
        assert_eq!(a.next(t, &ready(1)), Next::Wait(t + RECHECK));
        // Without --wait it is an answer at once.
        let no_wait = super::tests::rules(Duration::ZERO, None);
        let mut b: Attempts<u8> = Attempts::new(&no_wait, t);
        b.no_key();
        assert_eq!(gave_up(b.next(t, &ready(1))).status, 429);
    }

    #[test]
    fn keys_busy_up_to_their_budget_are_waited_for_or_answered_429() {
        let t = Instant::now();
        let busy = of(Outlook {
            total: 2,
            invalid: 1,
            booked: 1,
            ..Outlook::default()
        });
        let rules = rules(10 * SEC, None);
        let a: Attempts<u8> = Attempts::new(&rules, t);
        assert_eq!(a.next(t, &busy), Next::Wait(t + RECHECK));
        let no_wait = super::tests::rules(Duration::ZERO, None);
        let reply = gave_up(Attempts::<u8>::new(&no_wait, t).next(t, &busy));
        assert_eq!((reply.status, reply.retry_after), (429, Some(1)));
        assert!(
            reply.message.contains("remaining budget"),
            "{}",
            reply.message
        );
    }

    #[test]
    fn keys_held_by_the_slow_start_are_waited_for_even_without_wait() {
        let t = Instant::now();
        let held = t + 2 * SEC;
        let view = of(Outlook {
            total: 2,
            booked: 2,
            held_until: Some(held),
            ..Outlook::default()
        });
        for wait in [Duration::ZERO, 10 * SEC] {
            let rules = rules(wait, None);
            let a: Attempts<u8> = Attempts::new(&rules, t);
            assert_eq!(a.next(t, &view), Next::Wait(held), "--wait {wait:?}");
            // A key of another account back sooner: look again then.
            let sooner = View {
                pool: Outlook {
                    next_free: Some(t + SEC),
                    ..view.pool
                },
                ..view
            };
            assert_eq!(a.next(t, &sooner), Next::Wait(t + SEC));
        }
    }

    #[test]
    fn keys_that_no_wait_brings_back_get_503_that_says_why() {
        let t = Instant::now();
        let rules = rules(10 * SEC, None);
        let a: Attempts<u8> = Attempts::new(&rules, t);
        let invalid = of(Outlook {
            total: 2,
            invalid: 2,
            ..Outlook::default()
        });
        let reply = gave_up(a.next(t, &invalid));
        assert_eq!(reply.status, 503);
        assert!(reply.message.contains("invalid (401)"));
        let disabled = of(Outlook {
            total: 2,
            invalid: 1,
            disabled: 1,
            ..Outlook::default()
        });
        let reply = gave_up(a.next(t, &disabled));
        assert!(
            reply.message.contains("1 are disabled"),
            "{}",
            reply.message
        );
        assert!(reply.message.contains("rejected by the upstream"));
        let none = gave_up(a.next(t, &View::default()));
        assert_eq!(none.status, 503);
        assert!(none.message.contains("no API keys"));
    }
}
