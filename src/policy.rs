//! Which key serves the next attempt, and how long keys rest after the upstream pushed
//! back.
//!
//! Invariants: pure logic. No clock (every decision takes `now`), no I/O, no key
//! strings: keys are known by their index in the pool and by their account group. The
//! server holds this behind the pool mutex for the nanoseconds a decision takes, never
//! across network I/O.
//!
//! Rules:
//! - Round-robin over ready keys, or (`Strategy::Sticky`) the same key until it fails.
//! - A rate limit rests the key and every key of its account (OpenRouter limits per
//!   account). A running rest is never shortened. Repeated 429s without a success in
//!   between double the rest, up to the announced longest (the end of the day).
//! - When every usable key is resting from 429s that came within [`STORM_WINDOW`] (an
//!   IP-wide or upstream-wide limit), nothing is sent until the shortest of those rests
//!   ends; if the first request after that pause gets a 429 too, the pause doubles. A
//!   success ends the storm.

use std::time::{Duration, Instant};

/// A key's index in the pool (the order of the keys file).
pub type KeyId = usize;

/// 429s on every key within this window mean the limit is not the keys'.
pub const STORM_WINDOW: Duration = Duration::from_secs(10);

/// Whether a key may be used, and if not, why and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Ready,
    /// Rate limited (429) until the instant the upstream announced.
    Cooling {
        until: Instant,
    },
    /// The upstream said the key is invalid or disabled (401): out until the keys file
    /// changes.
    Invalid,
    /// The upstream said the key has no credits left (402).
    OutOfCredits {
        until: Instant,
    },
    /// The user disabled it (`roo-proxy keys disable`).
    Disabled,
}

impl KeyState {
    /// When a resting key may serve again; `None` for the other states.
    pub fn until(self) -> Option<Instant> {
        match self {
            KeyState::Cooling { until } | KeyState::OutOfCredits { until } => Some(until),
            KeyState::Ready | KeyState::Invalid | KeyState::Disabled => None,
        }
    }

    fn ready_at(self, now: Instant) -> bool {
        match self {
            KeyState::Ready => true,
            KeyState::Invalid | KeyState::Disabled => false,
            KeyState::Cooling { until } | KeyState::OutOfCredits { until } => until <= now,
        }
    }

    /// Keys that can serve at some point without a change to the keys file.
    fn usable(self) -> bool {
        !matches!(self, KeyState::Invalid | KeyState::Disabled)
    }
}

/// How requests are spread over the ready keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The next ready key for every request (the default).
    #[default]
    RoundRobin,
    /// The same key while it serves, for providers' per-account prompt caches.
    Sticky,
}

/// What one upstream attempt taught us about the key it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered; whatever it said, the key is fine.
    Served,
    /// 429 that blames the key: rest for `rest`, or up to `longest` when 429s repeat.
    RateLimited { rest: Duration, longest: Duration },
    /// 401: the key is invalid or disabled.
    Invalid,
    /// 402: no credits left; try again after this long.
    OutOfCredits { rest: Duration },
    /// Connection error, timeout or 5xx: says nothing about the key.
    Failed,
}

/// A change of a key's state worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Change {
    /// The key's rest ended and it serves again.
    Back,
    /// The key now rests until `until` (a new or longer rest); `others` more keys of its
    /// account rest with it; `paused` is set when the whole pool pauses until then.
    Resting {
        until: Instant,
        others: usize,
        paused: Option<Instant>,
    },
    Disabled,
}

/// One key as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub state: KeyState,
    /// Keys with the same group share rate limits (an account). Unique for keys without
    /// an account.
    pub group: usize,
    /// 429s since the last success: each one doubles the next rest.
    pub strikes: u32,
    /// When this key last got a 429.
    pub limited_at: Option<Instant>,
}

impl Slot {
    pub fn new(state: KeyState, group: usize) -> Slot {
        Slot {
            state,
            group,
            strikes: 0,
            limited_at: None,
        }
    }
}

/// A summary of the pool, for the error a client gets when no key could serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    pub total: usize,
    pub ready: usize,
    pub invalid: usize,
    pub disabled: usize,
    /// When the first resting key serves again (or the pool's pause ends).
    pub next_free: Option<Instant>,
}

#[derive(Debug)]
pub struct Policy {
    slots: Vec<Slot>,
    /// Where the next scan starts.
    cursor: usize,
    strategy: Strategy,
    /// Nothing is sent before this instant (a rate-limit storm).
    paused_until: Option<Instant>,
    /// Storms since the last success: each doubles the next pause.
    storms: u32,
}

impl Policy {
    #[cfg(test)]
    pub fn new(keys: usize) -> Policy {
        let slots = (0..keys).map(|id| Slot::new(KeyState::Ready, id)).collect();
        Policy::with_slots(slots, 0, Strategy::RoundRobin)
    }

    /// A pool whose keys start as `slots` say (remembered, or carried over when the keys
    /// file changed). The scan starts at `cursor` (wrapped to the pool's size).
    pub fn with_slots(slots: Vec<Slot>, cursor: usize, strategy: Strategy) -> Policy {
        let cursor = if slots.is_empty() {
            0
        } else {
            cursor % slots.len()
        };
        Policy {
            slots,
            cursor,
            strategy,
            paused_until: None,
            storms: 0,
        }
    }

    pub fn slot(&self, id: KeyId) -> Slot {
        self.slots[id]
    }

    pub fn state(&self, id: KeyId) -> KeyState {
        self.slots[id].state
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The pool-wide pause and the storm count, to carry over a reload.
    pub fn pause(&self) -> (Option<Instant>, u32) {
        (self.paused_until, self.storms)
    }

    pub fn set_pause(&mut self, (paused_until, storms): (Option<Instant>, u32)) {
        self.paused_until = paused_until;
        self.storms = storms;
    }

    /// The next key that is ready at `now` and not in `tried`. The second value says
    /// the key just came back from a rest.
    #[must_use]
    pub fn pick(&mut self, now: Instant, tried: &[KeyId]) -> Option<(KeyId, Option<Change>)> {
        if self.paused_until.is_some_and(|p| now < p) {
            return None;
        }
        let n = self.slots.len();
        for step in 0..n {
            let id = (self.cursor + step) % n;
            let state = self.slots[id].state;
            if tried.contains(&id) || !state.ready_at(now) {
                continue;
            }
            self.cursor = match self.strategy {
                Strategy::RoundRobin => (id + 1) % n,
                Strategy::Sticky => id,
            };
            let change = if state == KeyState::Ready {
                None
            } else {
                self.slots[id].state = KeyState::Ready;
                Some(Change::Back)
            };
            return Some((id, change));
        }
        None
    }

    /// Applies what an attempt with key `id` taught us.
    #[must_use]
    pub fn record(&mut self, id: KeyId, outcome: Outcome, now: Instant) -> Option<Change> {
        if self.strategy == Strategy::Sticky && outcome != Outcome::Served && self.cursor == id {
            // Sticky moves on when its key fails.
            self.cursor = (id + 1) % self.slots.len();
        }
        let old = self.slots[id].state;
        match outcome {
            Outcome::Served => {
                self.slots[id].strikes = 0;
                self.storms = 0;
                None
            }
            Outcome::Failed => None,
            Outcome::Invalid => {
                self.slots[id].state = KeyState::Invalid;
                (old != KeyState::Invalid).then_some(Change::Disabled)
            }
            Outcome::OutOfCredits { rest } => {
                let until = later(old.until(), now + rest);
                self.slots[id].state = KeyState::OutOfCredits { until };
                (old != self.slots[id].state).then_some(Change::Resting {
                    until,
                    others: 0,
                    paused: None,
                })
            }
            Outcome::RateLimited { rest, longest } => self.rate_limited(id, rest, longest, now),
        }
    }

    fn rate_limited(
        &mut self,
        id: KeyId,
        rest: Duration,
        longest: Duration,
        now: Instant,
    ) -> Option<Change> {
        let announced = rest;
        let slot = &mut self.slots[id];
        let doubling = 2u32.saturating_pow(slot.strikes.min(20));
        slot.strikes = slot.strikes.saturating_add(1);
        let rest = rest.saturating_mul(doubling).min(longest.max(rest));
        let until = later(slot.state.until(), now + rest);
        let before = slot.state;

        let group = slot.group;
        let mut others = 0;
        for (other, s) in self.slots.iter_mut().enumerate() {
            if s.group != group || !s.state.usable() {
                continue;
            }
            s.limited_at = Some(now);
            let rested = KeyState::Cooling {
                until: later(s.state.until(), until),
            };
            if other != id && s.state != rested {
                others += 1;
            }
            s.state = rested;
        }

        let paused = self.storm(announced, now);
        let until = self.slots[id].state.until().unwrap_or(until);
        let changed = before != self.slots[id].state || others > 0 || paused.is_some();
        changed.then_some(Change::Resting {
            until,
            others,
            paused,
        })
    }

    /// Starts or lengthens a pool-wide pause when the limit is evidently not the keys'.
    /// `rest` is the rest the upstream announced for this 429.
    fn storm(&mut self, rest: Duration, now: Instant) -> Option<Instant> {
        let usable: Vec<&Slot> = self.slots.iter().filter(|s| s.state.usable()).collect();
        // One key limited is that key's business; a storm needs several.
        let everyone_limited = usable.len() >= 2
            && usable.iter().all(|s| {
                !s.state.ready_at(now)
                    && s.limited_at
                        .is_some_and(|at| now.duration_since(at) <= STORM_WINDOW)
            });
        if !(everyone_limited || self.storms > 0) {
            return None;
        }
        self.storms = self.storms.saturating_add(1);
        let length = if self.storms == 1 {
            // The shortest rest announced: no key is back before it anyway, and none of
            // them is burnt again as it comes back one by one.
            usable
                .iter()
                .filter_map(|s| s.state.until())
                .min()
                .map_or(rest, |u| u.duration_since(now))
        } else {
            rest.saturating_mul(2u32.saturating_pow((self.storms - 1).min(20)))
        };
        let until = later(self.paused_until, now + length);
        self.paused_until = Some(until);
        Some(until)
    }

    /// How many keys could serve at `now`.
    pub fn ready(&self, now: Instant) -> usize {
        self.ready_up_to(now, usize::MAX)
    }

    /// Like [`Policy::ready`], but stops counting at `limit`: O(limit) when keys are
    /// ready, which is what a request's attempt budget needs.
    pub fn ready_up_to(&self, now: Instant, limit: usize) -> usize {
        if self.paused_until.is_some_and(|p| now < p) {
            return 0;
        }
        self.slots
            .iter()
            .filter(|s| s.state.ready_at(now))
            .take(limit)
            .count()
    }

    pub fn outlook(&self, now: Instant) -> Outlook {
        let count = |f: fn(&KeyState) -> bool| self.slots.iter().filter(|s| f(&s.state)).count();
        let resting = self
            .slots
            .iter()
            .filter(|s| !s.state.ready_at(now))
            .filter_map(|s| s.state.until())
            .min();
        let next_free = match self.paused_until.filter(|p| now < *p) {
            None => resting,
            // Paused: free when the pause ends, or later if every key still rests then.
            Some(pause) => {
                let any_ready = self.slots.iter().any(|s| s.state.ready_at(now));
                let keys_free = if any_ready { Some(now) } else { resting };
                keys_free.map(|k| k.max(pause))
            }
        };
        Outlook {
            total: self.slots.len(),
            ready: self.ready(now),
            invalid: count(|s| *s == KeyState::Invalid),
            disabled: count(|s| *s == KeyState::Disabled),
            next_free,
        }
    }
}

fn later(old: Option<Instant>, new: Instant) -> Instant {
    old.map_or(new, |old| old.max(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn limited(rest: Duration) -> Outcome {
        Outcome::RateLimited { rest, longest: DAY }
    }

    fn until_of(change: Option<Change>) -> Instant {
        match change {
            Some(Change::Resting { until, .. }) => until,
            other => panic!("not resting: {other:?}"),
        }
    }

    /// A pool of keys in the given account groups.
    fn grouped(groups: &[usize], strategy: Strategy) -> Policy {
        Policy::with_slots(
            groups
                .iter()
                .map(|g| Slot::new(KeyState::Ready, *g))
                .collect(),
            0,
            strategy,
        )
    }

    #[test]
    fn round_robin_spreads_requests_over_ready_keys() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        let order: Vec<KeyId> = (0..6).map(|_| p.pick(t0, &[]).unwrap().0).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_request_never_gets_a_key_it_already_tried() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        assert_eq!(p.pick(t0, &[0, 1]).unwrap().0, 2);
        assert_eq!(p.pick(t0, &[0, 1, 2]), None);
    }

    #[test]
    fn an_empty_pool_has_no_key() {
        let mut p = Policy::new(0);
        assert_eq!(p.pick(Instant::now(), &[]), None);
        assert_eq!(p.outlook(Instant::now()).total, 0);
    }

    #[test]
    fn a_rate_limited_key_rests_then_comes_back() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        assert_eq!(until_of(p.record(0, limited(MIN), t0)), t0 + MIN);
        for _ in 0..3 {
            assert_eq!(p.pick(t0 + secs(59), &[]).unwrap().0, 1);
        }
        let mut seen_back = false;
        for _ in 0..2 {
            let (id, change) = p.pick(t0 + MIN, &[]).unwrap();
            if id == 0 {
                assert_eq!(change, Some(Change::Back));
                seen_back = true;
            }
        }
        assert!(seen_back);
        assert_eq!(p.state(0), KeyState::Ready);
    }

    #[test]
    fn a_running_rest_is_never_shortened() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let _ = p.record(0, limited(secs(300)), t0);
        let _ = p.record(0, limited(secs(1)), t0 + secs(1));
        assert!(p.state(0).until().unwrap() >= t0 + secs(300));
    }

    #[test]
    fn repeated_429s_double_the_rest_up_to_the_longest_and_a_success_resets() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let longest = secs(100);
        let rl = |rest| Outcome::RateLimited { rest, longest };
        assert_eq!(until_of(p.record(0, rl(secs(10)), t0)), t0 + secs(10));
        // It came back and was limited again: 20 s, then 40, 80, then capped at 100.
        let mut t = t0 + secs(10);
        for expected in [20, 40, 80, 100, 100] {
            assert_eq!(until_of(p.record(0, rl(secs(10)), t)), t + secs(expected));
            t += secs(expected);
        }
        let _ = p.record(0, Outcome::Served, t);
        assert_eq!(until_of(p.record(0, rl(secs(10)), t)), t + secs(10));
    }

    #[test]
    fn a_429_rests_every_key_of_the_same_account() {
        let t0 = Instant::now();
        // Keys 0 and 2 share an account; key 1 is alone; key 3 has another account.
        let mut p = grouped(&[7, 1, 7, 9], Strategy::RoundRobin);
        let change = p.record(2, limited(MIN), t0);
        assert_eq!(
            change,
            Some(Change::Resting {
                until: t0 + MIN,
                others: 1,
                paused: None
            })
        );
        let picks: Vec<KeyId> = (0..4).map(|_| p.pick(t0, &[]).unwrap().0).collect();
        assert_eq!(picks, [1, 3, 1, 3]);
    }

    #[test]
    fn sticky_stays_on_one_key_until_it_fails() {
        let t0 = Instant::now();
        let mut p = grouped(&[0, 1, 2], Strategy::Sticky);
        for _ in 0..3 {
            let (id, _) = p.pick(t0, &[]).unwrap();
            assert_eq!(id, 0);
            let _ = p.record(id, Outcome::Served, t0);
        }
        let _ = p.record(0, limited(MIN), t0);
        for _ in 0..3 {
            assert_eq!(p.pick(t0, &[]).unwrap().0, 1);
        }
        let _ = p.record(1, Outcome::Failed, t0);
        assert_eq!(p.pick(t0, &[]).unwrap().0, 2);
        assert_eq!(p.pick(t0, &[]).unwrap().0, 2);
    }

    #[test]
    fn a_storm_on_every_key_pauses_the_pool_and_doubles_if_it_goes_on() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        assert_eq!(
            p.record(0, limited(secs(30)), t0)
                .map(|c| matches!(c, Change::Resting { paused: None, .. })),
            Some(true)
        );
        let _ = p.record(1, limited(secs(20)), t0 + secs(1));
        // The last key's 429 makes it a storm: pause until the shortest rest ends.
        let change = p.record(2, limited(secs(40)), t0 + secs(2));
        let pause = t0 + secs(21);
        assert_eq!(
            change,
            Some(Change::Resting {
                until: t0 + secs(42),
                others: 0,
                paused: Some(pause)
            })
        );
        assert_eq!(p.pick(t0 + secs(20), &[]), None);
        assert_eq!(p.outlook(t0 + secs(20)).next_free, Some(pause));
        // After the pause one key is tried; a 429 again doubles the pause.
        let (id, _) = p.pick(pause, &[]).unwrap();
        assert_eq!(id, 1);
        let change = p.record(id, limited(secs(20)), pause);
        let Some(Change::Resting {
            paused: Some(second),
            ..
        }) = change
        else {
            panic!("{change:?}")
        };
        assert_eq!(second, pause + secs(40));
        assert_eq!(
            p.pick(pause + secs(39), &[]),
            None,
            "keys 0 and 2 are not burnt during the pause"
        );
        // A success ends the storm.
        let (id, _) = p.pick(second, &[]).unwrap();
        let _ = p.record(id, Outcome::Served, second);
        let _ = p.record(id, limited(secs(5)), second);
        assert!(p.pick(second, &[]).is_some(), "no pause after a success");
    }

    #[test]
    fn a_single_usable_key_makes_no_storm() {
        let t0 = Instant::now();
        let mut p = Policy::with_slots(
            vec![
                Slot::new(KeyState::Disabled, 0),
                Slot::new(KeyState::Ready, 1),
            ],
            0,
            Strategy::RoundRobin,
        );
        let change = p.record(1, limited(secs(300)), t0);
        assert!(
            matches!(change, Some(Change::Resting { paused: None, .. })),
            "{change:?}"
        );
    }

    #[test]
    fn spread_out_429s_are_no_storm() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let _ = p.record(0, limited(secs(300)), t0);
        let change = p.record(1, limited(secs(300)), t0 + STORM_WINDOW + secs(1));
        assert!(
            matches!(change, Some(Change::Resting { paused: None, .. })),
            "{change:?}"
        );
    }

    #[test]
    fn invalid_and_disabled_keys_stay_out() {
        let t0 = Instant::now();
        let mut p = Policy::with_slots(
            vec![
                Slot::new(KeyState::Ready, 0),
                Slot::new(KeyState::Ready, 1),
                Slot::new(KeyState::Disabled, 2),
            ],
            0,
            Strategy::RoundRobin,
        );
        assert_eq!(p.record(1, Outcome::Invalid, t0), Some(Change::Disabled));
        for hours in [0, 1, 48] {
            assert_eq!(p.pick(t0 + secs(hours * 3600), &[]).unwrap().0, 0);
            assert_eq!(p.pick(t0 + secs(hours * 3600), &[0]), None);
        }
        let o = p.outlook(t0);
        assert_eq!((o.invalid, o.disabled, o.next_free), (1, 1, None));
    }

    #[test]
    fn out_of_credits_keys_rest_for_their_time() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let hour = secs(3600);
        let _ = p.record(0, Outcome::OutOfCredits { rest: hour }, t0);
        assert_eq!(p.pick(t0 + secs(3599), &[]), None);
        assert_eq!(p.outlook(t0).next_free, Some(t0 + hour));
        assert_eq!(p.pick(t0 + hour, &[]), Some((0, Some(Change::Back))));
    }

    #[test]
    fn served_and_failed_attempts_change_no_state() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        assert_eq!(p.record(0, Outcome::Served, t0), None);
        assert_eq!(p.record(0, Outcome::Failed, t0), None);
        assert_eq!(p.state(0), KeyState::Ready);
    }

    #[test]
    fn outlook_names_the_earliest_free_key() {
        let t0 = Instant::now();
        let mut p = Policy::new(4);
        let _ = p.record(0, limited(secs(30)), t0);
        let _ = p.record(1, limited(secs(10)), t0);
        let _ = p.record(2, Outcome::Invalid, t0);
        let o = p.outlook(t0);
        assert_eq!(
            (o.total, o.ready, o.invalid, o.next_free),
            (4, 1, 1, Some(t0 + secs(10)))
        );
        let o = p.outlook(t0 + secs(20));
        assert_eq!((o.ready, o.next_free), (2, Some(t0 + secs(30))));
    }
}
