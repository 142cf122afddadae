//! Which key serves the next attempt, and how long a key rests after the upstream
//! pushed back.
//!
//! Invariants: pure logic. No clock (every decision takes `now`), no I/O, no key
//! strings: keys are known only by their index in the pool. The server holds this behind
//! its pool mutex for the nanoseconds a decision takes, never across network I/O.

use std::time::{Duration, Instant};

/// A key's index in the pool (the order of the keys file).
pub type KeyId = usize;

/// Whether a key may be used, and if not, why and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Ready,
    /// Rate limited (429) until the instant the upstream announced.
    Cooling {
        until: Instant,
    },
    /// The upstream said the key is invalid or disabled (401): out until the pool changes.
    Invalid,
    /// The upstream said the key has no credits left (402).
    OutOfCredits {
        until: Instant,
    },
}

impl KeyState {
    /// When a resting key may serve again; `None` for ready and invalid keys.
    fn until(self) -> Option<Instant> {
        match self {
            KeyState::Cooling { until } | KeyState::OutOfCredits { until } => Some(until),
            KeyState::Ready | KeyState::Invalid => None,
        }
    }

    fn ready_at(self, now: Instant) -> bool {
        match self {
            KeyState::Ready => true,
            KeyState::Invalid => false,
            KeyState::Cooling { until } | KeyState::OutOfCredits { until } => until <= now,
        }
    }
}

/// What one upstream attempt taught us about the key it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered; whatever it said, the key is fine.
    Served,
    /// 429 that blames the key: rest for this long.
    RateLimited { rest: Duration },
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
    /// The key now rests until `until` (a new or longer rest).
    Resting {
        until: Instant,
    },
    Disabled,
}

/// A summary of the pool, for the error a client gets when no key could serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    pub total: usize,
    pub ready: usize,
    pub invalid: usize,
    /// When the first resting key serves again.
    pub next_free: Option<Instant>,
}

/// Round-robin over the keys that are ready now.
#[derive(Debug)]
pub struct Policy {
    states: Vec<KeyState>,
    /// Where the next round-robin scan starts.
    cursor: usize,
}

impl Policy {
    #[cfg(test)]
    pub fn new(keys: usize) -> Policy {
        Policy::with_states(vec![KeyState::Ready; keys], 0)
    }

    /// A pool whose keys start in the given states (remembered, or carried over when the
    /// keys file changed). Round-robin starts at `cursor` (wrapped to the pool's size).
    pub fn with_states(states: Vec<KeyState>, cursor: usize) -> Policy {
        let cursor = if states.is_empty() {
            0
        } else {
            cursor % states.len()
        };
        Policy { states, cursor }
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn state(&self, id: KeyId) -> KeyState {
        self.states[id]
    }

    /// The next key that is ready at `now` and not in `tried`, in round-robin order.
    /// The second value says the key just came back from a rest.
    #[must_use]
    pub fn pick(&mut self, now: Instant, tried: &[KeyId]) -> Option<(KeyId, Option<Change>)> {
        let n = self.states.len();
        for step in 0..n {
            let id = (self.cursor + step) % n;
            let state = self.states[id];
            if tried.contains(&id) || !state.ready_at(now) {
                continue;
            }
            self.cursor = (id + 1) % n;
            let change = if state == KeyState::Ready {
                None
            } else {
                self.states[id] = KeyState::Ready;
                Some(Change::Back)
            };
            return Some((id, change));
        }
        None
    }

    /// Applies what an attempt with key `id` taught us. A rest is never shortened: a
    /// second, shorter 429 while a key rests leaves the longer rest in place.
    #[must_use]
    pub fn record(&mut self, id: KeyId, outcome: Outcome, now: Instant) -> Option<Change> {
        let old = self.states[id];
        let new = match outcome {
            Outcome::Served | Outcome::Failed => return None,
            Outcome::Invalid => KeyState::Invalid,
            Outcome::RateLimited { rest } => KeyState::Cooling {
                until: later(old.until(), now + rest),
            },
            Outcome::OutOfCredits { rest } => KeyState::OutOfCredits {
                until: later(old.until(), now + rest),
            },
        };
        if new == old {
            return None;
        }
        self.states[id] = new;
        Some(match new {
            KeyState::Invalid => Change::Disabled,
            _ => Change::Resting {
                until: new.until().unwrap_or(now),
            },
        })
    }

    /// How many keys could serve at `now`.
    pub fn ready(&self, now: Instant) -> usize {
        self.states.iter().filter(|s| s.ready_at(now)).count()
    }

    pub fn outlook(&self, now: Instant) -> Outlook {
        Outlook {
            total: self.states.len(),
            ready: self.ready(now),
            invalid: self
                .states
                .iter()
                .filter(|s| **s == KeyState::Invalid)
                .count(),
            next_free: self
                .states
                .iter()
                .filter(|s| !s.ready_at(now))
                .filter_map(|s| s.until())
                .min(),
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

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn limited(rest: Duration) -> Outcome {
        Outcome::RateLimited { rest }
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
        assert_eq!(
            p.record(0, limited(MIN), t0),
            Some(Change::Resting { until: t0 + MIN })
        );
        // While it rests, only key 1 serves.
        for _ in 0..3 {
            assert_eq!(p.pick(t0 + secs(59), &[]).unwrap().0, 1);
        }
        // At the announced instant it is back, and says so once.
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
        let mut p = Policy::new(1);
        let _ = p.record(0, limited(secs(300)), t0);
        assert_eq!(p.record(0, limited(secs(10)), t0 + secs(1)), None);
        assert_eq!(
            p.state(0),
            KeyState::Cooling {
                until: t0 + secs(300)
            }
        );
        // A longer one extends it.
        let longer = p.record(0, limited(secs(600)), t0 + secs(2));
        assert_eq!(
            longer,
            Some(Change::Resting {
                until: t0 + secs(602)
            })
        );
    }

    #[test]
    fn invalid_keys_stay_out() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        assert_eq!(p.record(1, Outcome::Invalid, t0), Some(Change::Disabled));
        for hours in [0, 1, 48] {
            assert_eq!(p.pick(t0 + secs(hours * 3600), &[]).unwrap().0, 0);
            assert_eq!(p.pick(t0 + secs(hours * 3600), &[0]), None);
        }
        assert_eq!(p.outlook(t0).invalid, 1);
        assert_eq!(p.outlook(t0).next_free, None);
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
    fn served_and_failed_attempts_change_nothing() {
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
        // Expired rests no longer count as the next free key.
        let o = p.outlook(t0 + secs(20));
        assert_eq!((o.ready, o.next_free), (2, Some(t0 + secs(30))));
    }
}
