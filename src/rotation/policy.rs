//! Which key serves the next attempt, and how long keys rest after the upstream pushed
//! back.
//!
//! Invariants: pure logic. No clock (every decision takes `now`, every outcome the
//! instant its attempt was sent), no I/O, no key strings: keys are known by their index
//! in the pool and by their account group. The server holds this behind the pool mutex
//! for the nanoseconds a decision takes, never across network I/O.
//!
//! Rules:
//! - Round-robin over ready keys, or (`Strategy::Sticky`) the same key until it fails.
//! - Evidence, not echoes: only a 429 for an attempt *sent after* the key's latest rest
//!   ended (its own or its account's) is news. A 429 for an attempt sent before that
//!   rest began, or during it, confirms the rest and changes nothing, however many of
//!   them come back, in whatever order.
//! - A rate limit rests the key and every key of its account (OpenRouter limits per
//!   account) for the rest the upstream announced. A key refused again right after it
//!   came back on time (no success in between) rests twice as long each time, up to the
//!   announced longest (the end of the day): "right after" is the first attempt sent
//!   with the account after its rest ended. Later attempts of a burst let go at the
//!   reset are refused when the new window fills, which says nothing against the reset.
//!   A running rest is never shortened.
//! - A limit on one model (or on `:free` models) rests the key's account for that model
//!   only; the key keeps serving other models.
//! - Budget: a success that announces the account's remaining requests caps the attempts
//!   in flight with its keys at that number until the reset; at 0 the account rests until
//!   the reset without waiting for a 429. The latest-sent answer speaks, but within one
//!   window the fewest left count (the upstream admits attempts sent at once in any
//!   order). After the reset, the window's whole budget
//!   (when answers say it) caps them until an answer says what is left: requests let go
//!   at the reset do not overfill the new window.
//! - Slow start: while an account's budget is unknown (no answer has come back from it
//!   since the start), [`SLOW_START`] attempt goes to it at a time, as TCP probes a
//!   window: the first answer says whether answers announce a budget and how much is
//!   left, so a burst of requests at the start does not overfill a window it cannot
//!   see. The hold lasts until that answer, or [`PATIENCE`] after its attempt went
//!   out; then the account takes every attempt again, as if it had answered. Instances
//!   sharing the pool hold it together: one probe among them all, and an answer to any
//!   of them ends the slow start for each ([`Policy::answered_elsewhere`]).
//! - Windows counted: when answers announce no budget, the successes an account had
//!   since its latest rest ended, up to the 429 that ended the window, are the size of
//!   its window, and the time from that rest's end to the reset the 429 announced its
//!   length. In the next window (no older than that length), once that many attempts
//!   went, one at a time goes (a probe) until a 429 says the window is full: requests
//!   let go at a reset do not all go at once into a window that holds fewer. A window
//!   whose first attempt was refused (the rest escalates) teaches nothing. Instances
//!   sharing the pool (`--redis`) count the window together while Redis answers:
//!   every attempt in it is reserved with the window's start, the size is the
//!   successes all of them had in the window before, and the one-at-a-time holds once
//!   they sent that many together; a 429 another instance saw ends the window here
//!   too. Without word from Redis, each instance's own part of the window (its own
//!   successes in the one before) caps it, as it would alone.
//! - Instances sharing the pool (`--redis`) count each other's attempts under way with
//!   an account ([`Policy::shared_cap`] says against what cap they reserve;
//!   [`Policy::refused`] books an account a reservation found full).
//! - When every usable key is resting from 429s that came within [`STORM_WINDOW`] (an
//!   IP-wide or upstream-wide limit), nothing is sent until the shortest of those rests
//!   ends; if the first attempt sent after that pause gets a 429 too, the pause doubles.
//!   A success ends the storm.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// A key's index in the pool (the order of the keys file).
pub type KeyId = usize;

/// 429s on every key within this window mean the limit is not the keys'.
pub const STORM_WINDOW: Duration = Duration::from_secs(10);

/// Attempts in flight with an account whose budget is unknown (see the slow start).
pub const SLOW_START: u32 = 1;

/// How long the slow start holds an account's other attempts back while its first one
/// is under way: an answer that takes longer (a long completion that is not streamed)
/// does not keep the rest of a burst waiting for it.
pub const PATIENCE: Duration = Duration::from_secs(2);

/// Model rests that ended this long ago are forgotten (their echoes are long over).
const FORGET_MODEL_REST: Duration = Duration::from_secs(600);

/// At most this many model rests are kept per key; past it, the one that ends first
/// makes room (clients choose model names, so they must not grow memory without end).
pub const MOST_MODEL_RESTS: usize = 32;

/// Whether a key may be used, and if not, why and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Ready,
    /// Rate limited (429, or a budget spent) until the instant the upstream announced.
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
    pub fn usable(self) -> bool {
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

/// What a rate limit covers, as the upstream told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// The key and its whole account.
    #[default]
    Key,
    /// The model the request asked for (Gemini's `…PerModel…` quotas).
    Model,
    /// Free models (`…:free`; OpenRouter's `free-models-per-day`).
    FreeModels,
}

/// The models a model-scoped rest covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Models {
    /// One model, by the name the request gave.
    Named(Box<str>),
    /// Every model whose name ends in `:free`.
    Free,
}

impl Models {
    fn covers(&self, model: Option<&str>) -> bool {
        match (self, model) {
            (Models::Named(name), Some(model)) => **name == *model,
            (Models::Free, Some(model)) => model.ends_with(":free"),
            (_, None) => false,
        }
    }
}

impl fmt::Display for Models {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Models::Named(name) => write!(f, "model {name}"),
            Models::Free => f.write_str("free models"),
        }
    }
}

/// The requests an account may still make, as a successful answer announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub remaining: u32,
    /// How long until the budget is full again.
    pub reset: Duration,
    /// The whole budget of a window, when the answer says it.
    pub limit: Option<u32>,
}

/// What one upstream attempt taught us about the key it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered; whatever it said, the key is fine. `budget` is the
    /// remaining budget the answer announced, if it did.
    Served { budget: Option<Budget> },
    /// 429 that blames the key: rest for `rest`, or up to `longest` when 429s repeat;
    /// `scope` says whether the whole key is limited or only some models.
    RateLimited {
        rest: Duration,
        longest: Duration,
        scope: Scope,
    },
    /// 401: the key is invalid or disabled.
    Invalid,
    /// 402: no credits left; try again after this long.
    OutOfCredits { rest: Duration },
    /// Connection error, timeout or 5xx: says nothing about the key.
    Failed,
}

#[cfg(test)]
impl Outcome {
    /// A success that announced nothing.
    pub const SERVED: Outcome = Outcome::Served { budget: None };
}

/// One attempt as the policy needs to know it: when it was sent, and for which model.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'m> {
    pub at: Instant,
    pub model: Option<&'m str>,
}

/// A change of a key's state worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Change {
    /// The key's rest ended and it serves again.
    Back,
    /// The key now rests until `until` (a new or longer rest); `others` more keys of its
    /// account rest with it; `paused` is set when the whole pool pauses until then.
    /// `scope` says whether the key rests for every request or for one model (class).
    Resting {
        until: Instant,
        others: usize,
        paused: Option<Instant>,
        scope: Scope,
    },
    Disabled,
}

/// A rest that covers some models only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRest {
    pub models: Models,
    pub until: Instant,
    /// 429s for these models since the last success with them.
    pub strikes: u32,
}

/// The remaining budget of a key's account, as answers announced it (see [`combine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub remaining: u32,
    pub reset: Instant,
    /// When the attempt that announced it was sent: older news never overrides newer.
    pub sent: Instant,
    /// The whole budget of a window: after the reset, no more attempts than this are
    /// let go at once (a new window holds no more), until an answer says what is left.
    pub limit: Option<u32>,
}

/// One key as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub state: KeyState,
    /// Keys with the same group share rate limits (an account). Unique for keys without
    /// an account.
    pub group: usize,
    /// 429s since the last success: each one doubles the next rest.
    pub strikes: u32,
    /// When this key last got a 429 that was news.
    pub limited_at: Option<Instant>,
    /// When the key's latest rest (its own or its account's) ends or ended. A 429 for an
    /// attempt sent before this instant is an echo of that rest.
    pub rest_end: Option<Instant>,
    /// Rests that cover some models only.
    pub model_rests: Vec<ModelRest>,
    /// The account's remaining budget, when answers announce it.
    pub allowance: Option<Allowance>,
    /// Attempts under way with this key.
    pub in_flight: u32,
    /// When the first attempt with a key of this account after its latest rest ended
    /// was sent: only that attempt's refusal says the announced reset was too early.
    pub first_back: Option<Instant>,
    /// When the rest before the latest one ended: a success sent between the two says
    /// the key came back on time.
    pub back_at: Option<Instant>,
    /// An answer came back from this key's account: its budget, if answers announce
    /// one, is known, and the slow start is over.
    pub answered: bool,
    /// Another instance had an answer from the account (`--redis`): the slow start is
    /// over, but the budget is not known here until an answer of this instance's own.
    pub answered_elsewhere: bool,
    /// When the account's probe (its first attempt in flight while nothing was known of
    /// its budget) went out: the slow start holds other attempts until
    /// [`PATIENCE`] after it.
    pub probe: Option<Instant>,
}

impl Slot {
    pub fn new(state: KeyState, group: usize) -> Slot {
        Slot {
            state,
            group,
            strikes: 0,
            limited_at: None,
            rest_end: state.until(),
            model_rests: Vec::new(),
            allowance: None,
            in_flight: 0,
            first_back: None,
            back_at: None,
            answered: false,
            answered_elsewhere: false,
            probe: None,
        }
    }

    /// Whether the account's slow start is over (an answer came, here or elsewhere).
    fn held_over(&self) -> bool {
        self.answered || self.answered_elsewhere
    }

    /// Whether the slow start holds attempts with this key's account back at `now`
    /// (one is under way, and nothing is known of its budget).
    fn held(&self, now: Instant) -> bool {
        self.allowance.is_none()
            && !self.answered
            && !self.answered_elsewhere
            && self.probe.is_some_and(|p| now < p + PATIENCE)
    }

    /// The model rests still running at `now`.
    pub fn model_rests_at(&self, now: Instant) -> impl Iterator<Item = &ModelRest> {
        self.model_rests.iter().filter(move |r| r.until > now)
    }

    /// Whether the key may take a request for `model` at `now`, as far as its own state
    /// and rests say (its account's load aside).
    fn open_for(&self, model: Option<&str>, now: Instant) -> bool {
        self.state.ready_at(now) && !self.rested_for(model, now)
    }

    fn rested_for(&self, model: Option<&str>, now: Instant) -> bool {
        model.is_some() && self.model_rests_at(now).any(|r| r.models.covers(model))
    }
}

/// What is counted of an account's window when its answers announce no budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Window {
    /// When the current window began: when the account's latest rest after a news 429
    /// ended (`None`: nothing known, counting since the start).
    since: Option<Instant>,
    /// Attempts sent since then, and successes among them.
    sent: u32,
    served: u32,
    /// The window before, when a whole one was seen and its first attempt was not
    /// refused.
    before: Option<Before>,
}

/// A window that a 429 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Before {
    since: Instant,
    /// From its start to the reset its 429 announced.
    length: Duration,
    /// Successes of the attempts sent in it, counted as their answers come (a 429 is
    /// often back before the answers sent with it).
    served: u32,
}

impl Window {
    /// A 429 ended this window, announcing its reset at `reset`; the next one begins at
    /// `next`. What it served is the size of the window it was (`teaches`: unless its
    /// first attempt was refused), from its start to `reset`.
    fn close(&mut self, reset: Instant, next: Instant, teaches: bool) {
        let before = self.since.filter(|_| teaches).map(|since| Before {
            since,
            length: reset.saturating_duration_since(since),
            served: self.served,
        });
        *self = Window {
            since: Some(next),
            before,
            ..Window::default()
        };
    }

    /// Whether this window has taken as many attempts as the one before held, at `now`.
    fn full(&self, now: Instant) -> bool {
        match (self.before, self.since) {
            (Some(before), Some(since)) if before.served > 0 => {
                now >= since && now < since + before.length && self.sent >= before.served
            }
            _ => false,
        }
    }
}

/// A summary of the pool, for the error a client gets when no key could serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outlook {
    pub total: usize,
    pub ready: usize,
    pub invalid: usize,
    pub disabled: usize,
    /// When the first resting key serves again (or the pool's pause ends).
    pub next_free: Option<Instant>,
    /// Keys that could serve but have as many attempts in flight as their account's
    /// remaining budget: one is free again when such an attempt ends.
    pub booked: usize,
    /// When the slow start lets attempts go again with the first of the `booked` keys
    /// it holds back (or earlier, when the probe's answer comes).
    pub held_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Policy {
    slots: Vec<Slot>,
    /// Where the next scan starts.
    cursor: usize,
    strategy: Strategy,
    /// Nothing is sent before this instant (a rate-limit storm). Kept after it ends: a
    /// 429 for an attempt sent before it is an echo of the storm.
    paused_until: Option<Instant>,
    /// Storms since the last success: each doubles the next pause.
    storms: u32,
    /// When the first attempt after the latest pause ended was sent.
    first_after_pause: Option<Instant>,
    /// Attempts in flight per account group (the sum of its slots' `in_flight`).
    loads: HashMap<usize, u32>,
    /// The next key of each key's account group, in a ring (a key alone points at
    /// itself): what a rule applies to a whole account walks the account, not the pool.
    ring: Vec<KeyId>,
    /// Windows counted per account group (for answers that announce no budget). Not
    /// carried over a reload: a new pool counts again.
    windows: HashMap<usize, Window>,
    /// Account groups whose budget a reservation found full with the attempts every
    /// instance has under way (`--redis`): booked until another instance's attempt ends
    /// (see [`Policy::freed`]) or until the instant held, whichever comes first.
    full_elsewhere: HashMap<usize, Instant>,
    /// Windows are counted with the other instances, in Redis (`--redis`, linked): a
    /// reservation says when one is full, not this instance's own count.
    together: bool,
}

/// What instances sharing the pool reserve an attempt with an account against,
/// together (see [`Policy::shared_cap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedCap {
    /// The most attempts under way with the account, every instance's together.
    pub cap: u32,
    /// The reset of the window the cap is for.
    pub reset: Instant,
    /// The account has not answered here yet: the cap is the slow start's, which an
    /// answer to another instance lifts.
    pub first: bool,
    /// When the account's window began (a rest's end), counted with the other
    /// instances': the cap holds only once they together sent what the window before
    /// served.
    pub window: Option<Instant>,
}

/// How long a refused reservation books its account when no word comes that another
/// instance's attempt ended: as long as a waiting request waits before it looks again.
pub const ELSEWHERE: Duration = Duration::from_secs(1);

impl Policy {
    /// A pool of `keys` keys, each its own account, that have all answered once (the
    /// slow start is over).
    #[cfg(test)]
    pub fn new(keys: usize) -> Policy {
        let slots = (0..keys).map(|id| Slot::new(KeyState::Ready, id)).collect();
        Policy::answered(slots, Strategy::RoundRobin)
    }

    /// A pool of `slots` whose accounts have all answered once (the slow start is over).
    #[cfg(test)]
    pub fn answered(slots: Vec<Slot>, strategy: Strategy) -> Policy {
        let slots = slots
            .into_iter()
            .map(|slot| Slot {
                answered: true,
                ..slot
            })
            .collect();
        Policy::with_slots(slots, 0, strategy)
    }

    /// A pool whose keys start as `slots` say (remembered, or carried over when the keys
    /// file changed). The scan starts at `cursor` (wrapped to the pool's size).
    pub fn with_slots(slots: Vec<Slot>, cursor: usize, strategy: Strategy) -> Policy {
        let cursor = if slots.is_empty() {
            0
        } else {
            cursor % slots.len()
        };
        let mut loads = HashMap::new();
        for slot in slots.iter().filter(|s| s.in_flight > 0) {
            *loads.entry(slot.group).or_insert(0) += slot.in_flight;
        }
        Policy {
            ring: ring_of(&slots),
            slots,
            cursor,
            strategy,
            paused_until: None,
            storms: 0,
            first_after_pause: None,
            loads,
            windows: HashMap::new(),
            full_elsewhere: HashMap::new(),
            together: false,
        }
    }

    /// Key `id` and the other keys of its account group, each once.
    pub fn account(&self, id: KeyId) -> impl Iterator<Item = KeyId> + '_ {
        members(&self.ring, id)
    }

    pub fn slot(&self, id: KeyId) -> &Slot {
        &self.slots[id]
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

    fn load(&self, group: usize) -> u32 {
        self.loads.get(&group).copied().unwrap_or(0)
    }

    /// What instances sharing the pool (`--redis`) reserve an attempt with key `id`'s
    /// account against, all together: the remaining budget until the reset, and after
    /// it the window's whole budget (no cap when answers do not say it). Before the
    /// account's first answer the attempt is the slow start's probe, one among all the
    /// instances (until [`PATIENCE`] after this instance's first was held, as alone),
    /// and is counted: its answer may announce a budget, which the others must count it
    /// against. Once it was answered elsewhere, attempts are counted with no cap of this
    /// instance's until one is answered here. Once answers announce no budget, the
    /// attempts in a window whose start is known are counted together while Redis is
    /// linked ([`Policy::count_together`]; the window before's size caps them there);
    /// else `None`, and each instance keeps its own count, probes aside.
    pub fn shared_cap(&self, id: KeyId, now: Instant) -> Option<SharedCap> {
        let slot = &self.slots[id];
        let (cap, reset, first) = match slot.allowance {
            Some(a) if now < a.reset => (a.remaining, a.reset, false),
            Some(a) => (a.limit.unwrap_or(u32::MAX), a.reset, false),
            // Answered elsewhere: counted, and capped by the budget Redis knows.
            None if slot.answered_elsewhere && !slot.answered => (u32::MAX, now, true),
            None if !slot.answered => {
                let patient = slot.probe.is_none_or(|p| now < p + PATIENCE);
                (if patient { SLOW_START } else { u32::MAX }, now, true)
            }
            None => {
                let window = self.windows.get(&slot.group)?;
                if self.together
                    && let Some(since) = window.since
                {
                    // Counted in Redis with every instance's: one at a time once the
                    // window took what the one before held, all together. (Its start
                    // may be a moment ahead here: the key came back by another
                    // instance's word of the same reset.)
                    return Some(SharedCap {
                        cap: 1,
                        reset: now,
                        first: false,
                        window: Some(since),
                    });
                }
                // This instance's part of the window is spent: its probes, one at a time
                // across the instances.
                if !window.full(now) {
                    return None;
                }
                (1, now, false)
            }
        };
        Some(SharedCap {
            cap,
            reset,
            first,
            window: None,
        })
    }

    /// Whether key `id`'s account, with the attempt counted with it, has more under way
    /// than this instance's own part of its window allows (as without Redis: once the
    /// part is spent, one at a time).
    pub fn full_alone(&self, id: KeyId, now: Instant) -> bool {
        let group = self.slots[id].group;
        self.load(group) > 1 && self.windows.get(&group).is_some_and(|w| w.full(now))
    }

    /// When key `id`'s account's counted window began (or begins: a rest's end).
    pub fn window_start(&self, id: KeyId) -> Option<Instant> {
        self.windows.get(&self.slots[id].group)?.since
    }

    /// Whether windows are counted with the other instances sharing the pool (through
    /// Redis, while it is linked) rather than by this instance alone.
    pub fn count_together(&mut self, together: bool) {
        self.together = together;
    }

    /// Ends the attempt with key `id` that [`Policy::pick`] counted at `now`, because its
    /// reservation found the account's budget full with the attempts every instance has
    /// under way: the account is booked until another instance's attempt ends
    /// ([`Policy::freed`]), or for [`ELSEWHERE`], whatever this instance knows of its
    /// budget (Redis may know a smaller one). Before the account's first answer, that
    /// is another instance's probe: this instance holds its requests for it as for one
    /// of its own.
    pub fn refused(&mut self, id: KeyId, now: Instant) {
        self.abandon(id);
        let mut until = now + ELSEWHERE;
        if !self.slots[id].held_over() {
            self.probing(id, now);
            // Booked no longer than the hold: then requests go as alone.
            if let Some(probe) = self.slots[id].probe {
                until = until.min(probe + PATIENCE);
            }
        }
        self.full_elsewhere.insert(self.slots[id].group, until);
    }

    /// A reservation of the slow start's probe with key `id`'s account is asked for at
    /// `now`: this instance's other requests for it wait for the probe's answer (here
    /// or elsewhere), as for a probe of its own, rather than ask Redis too.
    pub fn probing(&mut self, id: KeyId, now: Instant) {
        for other in members(&self.ring, id) {
            self.slots[other].probe.get_or_insert(now);
        }
    }

    /// Other instances sent attempts with key `id`'s account in its window that began at
    /// `since` before this instance's first (its reservation said so): a 429 for this
    /// one is not the window's first attempt refused, so it does not lengthen the rest.
    pub fn window_begun_elsewhere(&mut self, id: KeyId, since: Instant) {
        for other in members(&self.ring, id) {
            self.slots[other].first_back.get_or_insert(since);
        }
    }

    /// Another instance had an answer from key `id`'s account (its reservation said
    /// so): the slow start is over here too.
    pub fn answered_elsewhere(&mut self, id: KeyId) {
        for other in members(&self.ring, id) {
            self.slots[other].answered_elsewhere = true;
        }
    }

    /// Another instance's attempt with key `id`'s account ended: the account is no longer
    /// booked by a refused reservation. Whether it was.
    pub fn freed(&mut self, id: KeyId) -> bool {
        self.full_elsewhere.remove(&self.slots[id].group).is_some()
    }

    /// Whether the key's account has as many attempts in flight as its budget allows
    /// (an announced budget; or, while the budget is unknown, as the slow start allows;
    /// or, once its window took what the one before held, a probe), or a reservation
    /// found it full with every instance's attempts.
    fn booked(&self, slot: &Slot, now: Instant) -> bool {
        if self
            .full_elsewhere
            .get(&slot.group)
            .is_some_and(|until| now < *until)
        {
            return true;
        }
        let cap = match slot.allowance {
            Some(a) if now < a.reset => Some(a.remaining),
            Some(a) => a.limit,
            None if slot.held(now) => Some(SLOW_START),
            None if self.together => None,
            None => self
                .windows
                .get(&slot.group)
                .is_some_and(|w| w.full(now))
                .then_some(1),
        };
        cap.is_some_and(|cap| self.load(slot.group) >= cap)
    }

    /// Whether key `id` could take an attempt for `model` at `now`.
    fn serves(&self, id: KeyId, model: Option<&str>, now: Instant) -> bool {
        let slot = &self.slots[id];
        slot.open_for(model, now) && !self.booked(slot, now)
    }

    /// The next key that could serve a request for `model` at `now` and is not in
    /// `tried`, and counts an attempt in flight with it until [`Policy::record`] or
    /// [`Policy::abandon`]. The second value says the key just came back from a rest.
    #[cfg(test)]
    #[must_use]
    pub fn pick(
        &mut self,
        now: Instant,
        tried: &[KeyId],
        model: Option<&str>,
    ) -> Option<(KeyId, Option<Change>)> {
        let id = self.choose(now, tried, model)?;
        self.count(id);
        Some((id, self.commit(id, now)))
    }

    /// The next key that could serve a request for `model` at `now` and is not in
    /// `tried`; nothing changes until [`Policy::count`] and [`Policy::commit`] (`pick`
    /// does all three; a reservation in Redis goes between the two).
    pub fn choose(&self, now: Instant, tried: &[KeyId], model: Option<&str>) -> Option<KeyId> {
        if self.paused_until.is_some_and(|p| now < p) {
            return None;
        }
        let n = self.slots.len();
        (0..n)
            .map(|step| (self.cursor + step) % n)
            .find(|id| !tried.contains(id) && self.serves(*id, model, now))
    }

    /// Counts an attempt in flight with key `id` until [`Policy::record`] or
    /// [`Policy::abandon`].
    pub fn count(&mut self, id: KeyId) {
        let slot = &mut self.slots[id];
        slot.in_flight = slot.in_flight.saturating_add(1);
        *self.loads.entry(slot.group).or_insert(0) += 1;
    }

    /// Whether key `id`, chosen earlier, may still take the attempt counted with it at
    /// `now` (a rest may have begun while Redis was asked).
    pub fn still_serves(&self, id: KeyId, model: Option<&str>, now: Instant) -> bool {
        let slot = &self.slots[id];
        self.paused_until.is_none_or(|p| now >= p) && slot.open_for(model, now)
    }

    /// The attempt counted with key `id` goes out at `now`: the rotation moves on, and
    /// what the rules learn from an attempt's sending is noted. `Back` when the key just
    /// came back from a rest.
    #[must_use]
    pub fn commit(&mut self, id: KeyId, now: Instant) -> Option<Change> {
        let n = self.slots.len();
        self.cursor = match self.strategy {
            Strategy::RoundRobin => (id + 1) % n,
            Strategy::Sticky => id,
        };
        if self.paused_until.is_some() && self.first_after_pause.is_none() {
            self.first_after_pause = Some(now);
        }
        let slot = &self.slots[id];
        if slot.first_back.is_none() && slot.rest_end.is_some_and(|end| now >= end) {
            // Once per rest: the account's first attempt since it ended.
            for other in members(&self.ring, id) {
                self.slots[other].first_back.get_or_insert(now);
            }
        }
        let slot = &self.slots[id];
        if slot.allowance.is_none() && !slot.held_over() && self.load(slot.group) == 1 {
            // Nothing known of the account's budget: this attempt is its probe.
            for other in members(&self.ring, id) {
                self.slots[other].probe = Some(now);
            }
        }
        let slot = &mut self.slots[id];
        if slot.allowance.is_none() {
            let window = self.windows.entry(slot.group).or_default();
            window.sent = window.sent.saturating_add(1);
        }
        if slot.state == KeyState::Ready {
            None
        } else {
            slot.state = KeyState::Ready;
            Some(Change::Back)
        }
    }

    /// Ends an attempt that [`Policy::pick`] counted, without an outcome (it was never
    /// sent, or its outcome is lost).
    pub fn abandon(&mut self, id: KeyId) {
        let slot = &mut self.slots[id];
        if slot.in_flight == 0 {
            return;
        }
        slot.in_flight -= 1;
        let group = slot.group;
        if let Some(load) = self.loads.get_mut(&group) {
            *load = load.saturating_sub(1);
            if *load == 0 {
                self.loads.remove(&group);
            }
        }
    }

    /// Ends an attempt with key `id` that was sent as `sent` says, and applies what it
    /// taught us.
    #[must_use]
    pub fn record(
        &mut self,
        id: KeyId,
        outcome: Outcome,
        sent: Sent<'_>,
        now: Instant,
    ) -> Option<Change> {
        self.abandon(id);
        let served = matches!(outcome, Outcome::Served { .. });
        if self.strategy == Strategy::Sticky && !served && self.cursor == id {
            // Sticky moves on when its key fails.
            self.cursor = (id + 1) % self.slots.len();
        }
        let old = self.slots[id].state;
        match outcome {
            Outcome::Served { budget } => self.served(id, budget, sent, now),
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
                    scope: Scope::Key,
                })
            }
            Outcome::RateLimited {
                rest,
                longest,
                scope,
            } => {
                // A model limit for a request that named none (or a free-models limit
                // for a model that is not free) can only be taken as the key's.
                let models = match (scope, sent.model) {
                    (Scope::Model, Some(model)) => Some(Models::Named(model.into())),
                    (Scope::FreeModels, model) if Models::Free.covers(model) => Some(Models::Free),
                    _ => None,
                };
                match models {
                    Some(models) => self.model_limited(id, models, rest, longest, sent.at, now),
                    None => self.rate_limited(id, rest, longest, sent.at, now),
                }
            }
        }
    }

    /// A success: news only if the attempt was sent after the key's latest rest ended.
    fn served(
        &mut self,
        id: KeyId,
        budget: Option<Budget>,
        sent: Sent<'_>,
        now: Instant,
    ) -> Option<Change> {
        if !self.slots[id].answered {
            // The slow start is over for the account, and a refusal of a reservation
            // for its probe no longer books it.
            for other in members(&self.ring, id) {
                self.slots[other].answered = true;
            }
            self.full_elsewhere.remove(&self.slots[id].group);
        }
        let slot = &mut self.slots[id];
        let news = slot.rest_end.is_none_or(|end| sent.at >= end);
        // Sent after the key came back from the rest before the latest: it came back on
        // time (the latest rest is the new window filling up).
        let on_time = slot.back_at.is_some_and(|back| sent.at >= back);
        if (news || on_time) && slot.strikes > 0 {
            // The account serves again: its refusals in a row are over.
            for other in members(&self.ring, id) {
                self.slots[other].strikes = 0;
            }
        }
        let slot = &mut self.slots[id];
        for rest in &mut slot.model_rests {
            if rest.models.covers(sent.model) && sent.at >= rest.until {
                rest.strikes = 0;
            }
        }
        if self.paused_until.is_none_or(|p| sent.at >= p) {
            self.storms = 0;
        }
        if let Some(window) = self.windows.get_mut(&self.slots[id].group) {
            if window.since.is_none_or(|since| sent.at >= since) {
                window.served = window.served.saturating_add(1);
            } else if let Some(before) = &mut window.before
                && sent.at >= before.since
            {
                before.served = before.served.saturating_add(1);
            }
        }
        let budget = budget?;
        let allowance = Allowance {
            remaining: budget.remaining,
            reset: now + budget.reset,
            sent: sent.at,
            limit: budget.limit,
        };
        let mut newest = false;
        for other in members(&self.ring, id) {
            let s = &mut self.slots[other];
            let kept = combine(s.allowance, allowance, now);
            if s.allowance != Some(kept) {
                s.allowance = Some(kept);
                newest = true;
            }
        }
        let kept = self.slots[id].allowance?;
        if !newest || kept.remaining > 0 || kept.reset <= now {
            return None;
        }
        let allowance = kept;
        // Spent: the account rests until the reset, without asking for a 429.
        let until = allowance.reset;
        self.rest_group(id, until, now, None)
    }

    /// Rests every usable key of `id`'s group until at least `until`; `strikes` is set
    /// for a 429 that was news (the account's refusals in a row). Returns the change for
    /// `id`'s log line, if anything changed.
    fn rest_group(
        &mut self,
        id: KeyId,
        until: Instant,
        now: Instant,
        strikes: Option<u32>,
    ) -> Option<Change> {
        let before = self.slots[id].state;
        let mut others = 0;
        for other in members(&self.ring, id) {
            let s = &mut self.slots[other];
            if !s.state.usable() {
                continue;
            }
            if let Some(strikes) = strikes {
                s.limited_at = Some(now);
                s.strikes = s.strikes.max(strikes);
            }
            // Out of credits stays so (and is shared so): only a 429's rest covers the
            // whole account.
            let end = later(s.state.until().filter(|u| *u > now), until);
            let rested = match s.state {
                KeyState::OutOfCredits { until } if until > now => {
                    KeyState::OutOfCredits { until: end }
                }
                _ => KeyState::Cooling { until: end },
            };
            if other != id && s.state != rested {
                others += 1;
            }
            s.state = rested;
            if s.rest_end.is_none_or(|end| end < until) {
                if s.rest_end.is_some_and(|end| end <= now) {
                    s.back_at = s.rest_end;
                }
                s.rest_end = Some(until);
                s.first_back = None;
            }
        }
        let until = self.slots[id].state.until().unwrap_or(until);
        (before != self.slots[id].state || others > 0).then_some(Change::Resting {
            until,
            others,
            paused: None,
            scope: Scope::Key,
        })
    }

    fn rate_limited(
        &mut self,
        id: KeyId,
        rest: Duration,
        longest: Duration,
        sent: Instant,
        now: Instant,
    ) -> Option<Change> {
        let slot = &mut self.slots[id];
        if slot.rest_end.is_some_and(|end| sent < end) {
            // An echo: sent before the rest began or while it ran.
            return None;
        }
        let announced = rest;
        // Refused again right after coming back: the first attempt since the rest ended.
        let again = slot.first_back.is_none_or(|first| sent <= first);
        let strikes = slot.strikes;
        let (rest, strikes) = match again {
            true => (escalate(rest, longest, strikes), strikes.saturating_add(1)),
            false => (rest, strikes),
        };
        let group = slot.group;
        if let Some(window) = self.windows.get_mut(&group) {
            // The window is over: what it served is its size (answers still under way
            // count as they come), unless its first attempt was refused (a reset
            // announced too early).
            window.close(now + announced, now + rest, !again);
        }
        let change = self.rest_group(id, now + rest, now, Some(strikes));
        let paused = self.storm(announced, sent, now);
        match change {
            Some(Change::Resting {
                until,
                others,
                scope,
                ..
            }) => Some(Change::Resting {
                until,
                others,
                paused,
                scope,
            }),
            _ => paused.map(|paused| Change::Resting {
                until: self.slots[id].state.until().unwrap_or(now),
                others: 0,
                paused: Some(paused),
                scope: Scope::Key,
            }),
        }
    }

    /// A 429 for some models only: the key's account rests for them, and serves others.
    fn model_limited(
        &mut self,
        id: KeyId,
        models: Models,
        rest: Duration,
        longest: Duration,
        sent: Instant,
        now: Instant,
    ) -> Option<Change> {
        let slot = &self.slots[id];
        let known = slot.model_rests.iter().find(|r| r.models == models);
        if known.is_some_and(|r| sent < r.until) || slot.rest_end.is_some_and(|end| sent < end) {
            return None;
        }
        let strikes = known.map_or(0, |r| r.strikes);
        let until = now + escalate(rest, longest, strikes);
        let mut others = 0;
        for other in members(&self.ring, id) {
            let s = &mut self.slots[other];
            if !s.state.usable() {
                continue;
            }
            s.model_rests
                .retain(|r| r.until + FORGET_MODEL_REST > now || r.models == models);
            match s.model_rests.iter_mut().find(|r| r.models == models) {
                Some(r) => {
                    r.until = r.until.max(until);
                    r.strikes = strikes + 1;
                }
                None => {
                    if s.model_rests.len() >= MOST_MODEL_RESTS
                        && let Some(first) =
                            (0..s.model_rests.len()).min_by_key(|i| s.model_rests[*i].until)
                    {
                        s.model_rests.swap_remove(first);
                    }
                    s.model_rests.push(ModelRest {
                        models: models.clone(),
                        until,
                        strikes: strikes + 1,
                    });
                }
            }
            others += usize::from(other != id);
        }
        Some(Change::Resting {
            until,
            others,
            paused: None,
            scope: match models {
                Models::Named(_) => Scope::Model,
                Models::Free => Scope::FreeModels,
            },
        })
    }

    /// Starts or lengthens a pool-wide pause when the limit is evidently not the keys'.
    /// `rest` is the rest the upstream announced for this 429, which was news for its
    /// key; `sent` is when its attempt went out.
    fn storm(&mut self, rest: Duration, sent: Instant, now: Instant) -> Option<Instant> {
        if self.storms > 0 {
            // A storm goes on only if the first attempt sent after its pause is refused
            // too (later ones of the same burst find the new window full).
            if self.paused_until.is_some_and(|p| sent < p)
                || self.first_after_pause.is_some_and(|first| sent > first)
            {
                return None;
            }
            self.storms = self.storms.saturating_add(1);
            let length = rest.saturating_mul(2u32.saturating_pow((self.storms - 1).min(20)));
            let until = later(self.paused_until, now + length);
            self.paused_until = Some(until);
            self.first_after_pause = None;
            return Some(until);
        }
        let usable: Vec<&Slot> = self.slots.iter().filter(|s| s.state.usable()).collect();
        // One key limited is that key's business; a storm needs several.
        let everyone_limited = usable.len() >= 2
            && usable.iter().all(|s| {
                !s.state.ready_at(now)
                    && s.limited_at
                        .is_some_and(|at| now.duration_since(at) <= STORM_WINDOW)
            });
        if !everyone_limited {
            return None;
        }
        self.storms = 1;
        // The shortest rest announced: no key is back before it anyway, and none of them
        // is burnt again as it comes back one by one.
        let length = usable
            .iter()
            .filter_map(|s| s.state.until())
            .min()
            .map_or(rest, |u| u.duration_since(now));
        let until = later(self.paused_until, now + length);
        self.paused_until = Some(until);
        self.first_after_pause = None;
        Some(until)
    }

    /// How many keys could serve at `now` (any model).
    #[cfg(test)]
    pub fn ready(&self, now: Instant) -> usize {
        self.ready_up_to(now, usize::MAX)
    }

    /// Like [`Policy::ready`], but stops counting at `limit`: O(limit) when keys are
    /// ready, which is what a request's attempt budget needs.
    pub fn ready_up_to(&self, now: Instant, limit: usize) -> usize {
        if self.paused_until.is_some_and(|p| now < p) {
            return 0;
        }
        (0..self.slots.len())
            .filter(|id| self.serves(*id, None, now))
            .take(limit)
            .count()
    }

    /// The pool as a request for `model` sees it at `now`.
    pub fn outlook(&self, now: Instant, model: Option<&str>) -> Outlook {
        let count = |f: fn(&KeyState) -> bool| self.slots.iter().filter(|s| f(&s.state)).count();
        let paused = self.paused_until.filter(|p| now < *p);
        let ready = if paused.is_some() {
            0
        } else {
            (0..self.slots.len())
                .filter(|id| self.serves(*id, model, now))
                .count()
        };
        let (booked, held_until) = self
            .slots
            .iter()
            .filter(|s| s.open_for(model, now) && self.booked(s, now))
            .fold((0, None), |(booked, held): (usize, Option<Instant>), s| {
                let until = s.probe.filter(|_| s.held(now)).map(|p| p + PATIENCE);
                (booked + 1, held.into_iter().chain(until).min())
            });
        // When each usable key could serve this request again (None: it can now, or
        // only when an attempt in flight ends).
        let resting = self
            .slots
            .iter()
            .filter(|s| s.state.usable())
            .filter_map(|s| {
                let key_back = s.state.until().filter(|u| *u > now);
                let model_back = s
                    .model_rests_at(now)
                    .filter(|r| r.models.covers(model))
                    .map(|r| r.until)
                    .max();
                match (key_back, model_back) {
                    (None, None) => None,
                    (a, b) => a.max(b),
                }
            })
            .min();
        let next_free = match paused {
            None => resting,
            // Paused: free when the pause ends, or later if every key still rests then.
            Some(pause) => {
                let any_ready = (0..self.slots.len()).any(|id| self.serves(id, model, now));
                let keys_free = if any_ready { Some(now) } else { resting };
                keys_free.map(|k| k.max(pause))
            }
        };
        Outlook {
            total: self.slots.len(),
            ready,
            invalid: count(|s| *s == KeyState::Invalid),
            disabled: count(|s| *s == KeyState::Disabled),
            next_free,
            booked,
            held_until,
        }
    }
}

/// What other instances sharing the pool learned (`shared.rs`), merged in. Each merge
/// keeps the later end of a rest and the higher count of refusals, so merging one fact
/// twice, or two in either order, ends in the same state, and no rest is ever shortened.
/// A merge is never news for this instance's storms or log.
impl Policy {
    /// Another instance rests key `id` until `until` (a 429 or a spent budget, or with
    /// `credits` a 402) after `strikes` refusals in a row. A 429 or a spent budget rests
    /// the key's whole account, as here (the other keys' facts follow, but a request
    /// picked between two of them would go into the full window). Returns whether
    /// anything changed.
    pub fn merge_rest(
        &mut self,
        id: KeyId,
        until: Instant,
        strikes: u32,
        credits: bool,
        now: Instant,
    ) -> bool {
        if !self.slots[id].state.usable() || until <= now {
            return false;
        }
        let keys: Vec<KeyId> = match credits {
            true => vec![id],
            false => members(&self.ring, id).collect(),
        };
        let mut changed = false;
        for key in keys {
            let slot = &mut self.slots[key];
            if !slot.state.usable() {
                continue;
            }
            let before = slot.clone();
            let end = later(slot.state.until().filter(|u| *u > now), until);
            slot.state = match slot.state {
                KeyState::OutOfCredits { .. } => KeyState::OutOfCredits { until: end },
                _ if credits => KeyState::OutOfCredits { until: end },
                _ => KeyState::Cooling { until: end },
            };
            slot.rest_end = Some(later(slot.rest_end, until));
            slot.strikes = slot.strikes.max(strikes);
            if !credits && before.state.until().is_none_or(|u| u < until) {
                slot.limited_at = Some(now);
            }
            changed |= *slot != before;
        }
        if !credits {
            self.window_ended_elsewhere(id, until, strikes == 0, now);
        }
        changed
    }

    /// Another instance's 429 ended key `id`'s account's window, with a rest until
    /// `until`: as with one of this instance's own, what this instance sent in it is its
    /// part of the window's size (unless the 429 escalated, `teaches` false), and the
    /// next window starts at `until`. Each instance counts its own part (what caps it
    /// when Redis does not answer; while it does, the window is counted there).
    fn window_ended_elsewhere(&mut self, id: KeyId, until: Instant, teaches: bool, now: Instant) {
        // Known here from now on, even before this instance's first attempt with it.
        let window = self.windows.entry(self.slots[id].group).or_default();
        if window
            .since
            .is_some_and(|since| since + SAME_WINDOW >= until)
        {
            // This window, or a later one, already began there (another of the
            // account's keys, or another instance, brought the same news: an end
            // converted between clocks on two instances can differ by a millisecond).
            return;
        }
        // A window that has not begun yet served nothing to learn from.
        let begun = window.since.is_some_and(|since| since <= now);
        window.close(until, until, teaches && begun);
    }

    /// Another instance rests key `id` for `models` until `until`.
    pub fn merge_model_rest(
        &mut self,
        id: KeyId,
        models: Models,
        until: Instant,
        strikes: u32,
        now: Instant,
    ) -> bool {
        let slot = &mut self.slots[id];
        if !slot.state.usable() || until <= now {
            return false;
        }
        match slot.model_rests.iter_mut().find(|r| r.models == models) {
            Some(r) if r.until >= until && r.strikes >= strikes => false,
            Some(r) => {
                r.until = r.until.max(until);
                r.strikes = r.strikes.max(strikes);
                true
            }
            None => {
                // Bounded like this instance's own: the one that ends first makes room.
                if slot.model_rests.len() >= MOST_MODEL_RESTS
                    && let Some(first) =
                        (0..slot.model_rests.len()).min_by_key(|i| slot.model_rests[*i].until)
                {
                    slot.model_rests.swap_remove(first);
                }
                slot.model_rests.push(ModelRest {
                    models,
                    until,
                    strikes,
                });
                true
            }
        }
    }

    /// Another instance found key `id` invalid (`true`), or a keys-file change there
    /// cleared the mark (`false`). A disabled key stays disabled.
    pub fn merge_invalid(&mut self, id: KeyId, invalid: bool) -> bool {
        let slot = &mut self.slots[id];
        let next = match (slot.state, invalid) {
            (KeyState::Disabled, _) => return false,
            (_, true) => KeyState::Invalid,
            (KeyState::Invalid, false) => KeyState::Ready,
            (state, false) => state,
        };
        let changed = slot.state != next;
        slot.state = next;
        changed
    }

    /// The user disabled key `id` elsewhere (`true`), or enabled it (`false`: a
    /// disabled key is ready again).
    pub fn merge_disabled(&mut self, id: KeyId, disabled: bool) -> bool {
        let slot = &mut self.slots[id];
        let next = match (slot.state, disabled) {
            (_, true) => KeyState::Disabled,
            (KeyState::Disabled, false) => KeyState::Ready,
            (state, false) => state,
        };
        let changed = slot.state != next;
        slot.state = next;
        changed
    }

    /// Another instance paused the pool until `until` after `storms` storms in a row.
    pub fn merge_pause(&mut self, until: Instant, storms: u32) -> bool {
        let before = (self.paused_until, self.storms);
        self.paused_until = Some(later(self.paused_until, until));
        self.storms = self.storms.max(storms);
        before != (self.paused_until, self.storms)
    }

    /// Another instance heard the budget of key `id`'s account; the latest-sent word
    /// wins, as with this instance's own answers.
    pub fn merge_allowance(&mut self, id: KeyId, allowance: Allowance, now: Instant) -> bool {
        let slot = &mut self.slots[id];
        if now >= allowance.reset {
            return false;
        }
        let kept = combine(slot.allowance, allowance, now);
        let news = slot.allowance != Some(kept);
        slot.allowance = Some(kept);
        news
    }

    /// The pool-wide pause, if one runs at `now`, with its storm count.
    pub fn pause_at(&self, now: Instant) -> Option<(Instant, u32)> {
        self.paused_until
            .filter(|p| *p > now)
            .map(|p| (p, self.storms))
    }
}

/// For each key, the next key of its group: each group's keys in one ring, in pool order.
fn ring_of(slots: &[Slot]) -> Vec<KeyId> {
    let mut ring: Vec<KeyId> = (0..slots.len()).collect();
    // Each group's first and latest key so far.
    let mut ends: HashMap<usize, (KeyId, KeyId)> = HashMap::new();
    for (id, slot) in slots.iter().enumerate() {
        match ends.get_mut(&slot.group) {
            Some((first, last)) => {
                ring[*last] = id;
                ring[id] = *first;
                *last = id;
            }
            None => {
                ends.insert(slot.group, (id, id));
            }
        }
    }
    ring
}

/// `id` and the rest of its ring.
fn members(ring: &[KeyId], id: KeyId) -> impl Iterator<Item = KeyId> + '_ {
    let mut at = Some(id);
    std::iter::from_fn(move || {
        let this = at?;
        at = Some(ring[this]).filter(|next| *next != id);
        Some(this)
    })
}

/// Answers whose resets are this close announce the same window.
pub const SAME_WINDOW: Duration = Duration::from_millis(500);

/// What is known of an account's budget once an answer announced `new`, where `old` was
/// known. The latest-sent answer speaks (answers overtake each other), except within one
/// window (resets [`SAME_WINDOW`] apart at most): there the fewest requests left count,
/// whatever the send order, because the upstream admits attempts sent at once in an
/// order their send instants do not tell, and an answer admitted earlier counts fewer
/// of its neighbours. Taking the larger number would let attempts go that the window has
/// no room for.
fn combine(old: Option<Allowance>, new: Allowance, now: Instant) -> Allowance {
    let Some(old) = old.filter(|a| now < a.reset) else {
        return new;
    };
    let apart = if old.reset > new.reset {
        old.reset - new.reset
    } else {
        new.reset - old.reset
    };
    if apart <= SAME_WINDOW {
        let fewer = if new.remaining < old.remaining {
            new
        } else {
            old
        };
        return Allowance {
            sent: old.sent.max(new.sent),
            limit: new.limit.or(old.limit),
            ..fewer
        };
    }
    if new.sent >= old.sent { new } else { old }
}

/// The rest after `strikes` refusals in a row: doubled for each, up to `longest` (but
/// never below what was announced).
fn escalate(rest: Duration, longest: Duration, strikes: u32) -> Duration {
    let doubling = 2u32.saturating_pow(strikes.min(20));
    rest.saturating_mul(doubling).min(longest.max(rest))
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

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn property_an_account_is_walked_whole_and_alone_from_any_of_its_keys() {
        let mut rng = crate::testing::Rng::new(17);
        for _ in 0..500 {
            let groups: Vec<usize> = (0..rng.below(12)).map(|_| rng.below(5)).collect();
            let slots = groups
                .iter()
                .map(|g| Slot::new(KeyState::Ready, *g))
                .collect();
            let p = Policy::with_slots(slots, 0, Strategy::RoundRobin);
            for id in 0..groups.len() {
                let mut walked: Vec<KeyId> = p.account(id).collect();
                assert_eq!(walked[0], id, "{groups:?}");
                walked.sort_unstable();
                let expected: Vec<KeyId> = (0..groups.len())
                    .filter(|other| groups[*other] == groups[id])
                    .collect();
                assert_eq!(walked, expected, "{groups:?} from {id}");
            }
        }
    }

    fn limited(rest: Duration) -> Outcome {
        Outcome::RateLimited {
            rest,
            longest: DAY,
            scope: Scope::Key,
        }
    }

    fn at(t: Instant) -> Sent<'static> {
        Sent { at: t, model: None }
    }

    fn until_of(change: Option<Change>) -> Instant {
        match change {
            Some(Change::Resting { until, .. }) => until,
            other => panic!("not resting: {other:?}"),
        }
    }

    fn pick(p: &mut Policy, now: Instant, tried: &[KeyId]) -> Option<(KeyId, Option<Change>)> {
        p.pick(now, tried, None)
    }

    /// A pool of keys in the given account groups, past the slow start.
    fn grouped(groups: &[usize], strategy: Strategy) -> Policy {
        let slots = groups
            .iter()
            .map(|g| Slot::new(KeyState::Ready, *g))
            .collect();
        Policy::answered(slots, strategy)
    }

    /// A pool of keys in the given account groups, none of which has answered yet.
    fn fresh(groups: &[usize]) -> Policy {
        let slots = groups
            .iter()
            .map(|g| Slot::new(KeyState::Ready, *g))
            .collect();
        Policy::with_slots(slots, 0, Strategy::RoundRobin)
    }

    #[test]
    fn a_rest_merged_from_elsewhere_is_kept_and_its_echoes_here_are_not_news() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        // An attempt with key 0 is under way here when another instance rests the key.
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        assert_eq!(id, 0);
        assert!(p.merge_rest(0, t0 + secs(60), 1, false, t0 + ms(10)));
        assert!(
            !p.merge_rest(0, t0 + secs(30), 0, false, t0 + ms(10)),
            "never shorter"
        );
        assert_eq!(
            p.state(0),
            KeyState::Cooling {
                until: t0 + secs(60)
            }
        );
        // Its 429 comes back: an echo of the shared rest, no escalation, no longer rest.
        let change = p.record(0, limited(secs(60)), at(t0), t0 + ms(20));
        assert_eq!(change, None);
        assert_eq!(
            p.state(0),
            KeyState::Cooling {
                until: t0 + secs(60)
            }
        );
        assert_eq!(pick(&mut p, t0 + ms(30), &[]).map(|(id, _)| id), Some(1));
        // An invalid or disabled key takes no rest; enabling brings it back ready.
        assert!(p.merge_disabled(1, true));
        assert!(!p.merge_rest(1, t0 + secs(60), 1, false, t0));
        assert!(p.merge_disabled(1, false));
        assert_eq!(p.state(1), KeyState::Ready);
    }

    #[test]
    fn round_robin_spreads_requests_over_ready_keys() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        let order: Vec<KeyId> = (0..6).map(|_| pick(&mut p, t0, &[]).unwrap().0).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_request_never_gets_a_key_it_already_tried() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        assert_eq!(pick(&mut p, t0, &[0, 1]).unwrap().0, 2);
        assert_eq!(pick(&mut p, t0, &[0, 1, 2]), None);
    }

    #[test]
    fn an_empty_pool_has_no_key() {
        let mut p = Policy::new(0);
        assert_eq!(pick(&mut p, Instant::now(), &[]), None);
        assert_eq!(p.outlook(Instant::now(), None).total, 0);
    }

    #[test]
    fn a_rate_limited_key_rests_then_comes_back() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        assert_eq!(until_of(p.record(0, limited(MIN), at(t0), t0)), t0 + MIN);
        for _ in 0..3 {
            assert_eq!(pick(&mut p, t0 + secs(59), &[]).unwrap().0, 1);
        }
        let mut seen_back = false;
        for _ in 0..2 {
            let (id, change) = pick(&mut p, t0 + MIN, &[]).unwrap();
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
        let _ = p.record(0, limited(secs(300)), at(t0), t0);
        let _ = p.record(0, limited(secs(1)), at(t0 + secs(1)), t0 + secs(1));
        assert!(p.state(0).until().unwrap() >= t0 + secs(300));
    }

    #[test]
    fn refusals_right_after_coming_back_double_the_rest_up_to_the_longest() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let longest = secs(100);
        let rl = |rest| Outcome::RateLimited {
            rest,
            longest,
            scope: Scope::Key,
        };
        assert_eq!(
            until_of(p.record(0, rl(secs(10)), at(t0), t0)),
            t0 + secs(10)
        );
        // It came back on time and was refused again: 20 s, then 40, 80, then capped.
        let mut t = t0 + secs(10);
        for expected in [20, 40, 80, 100, 100] {
            assert_eq!(
                until_of(p.record(0, rl(secs(10)), at(t), t)),
                t + secs(expected)
            );
            t += secs(expected);
        }
        // A success sent after the rest resets the count.
        let _ = p.record(0, Outcome::SERVED, at(t), t);
        assert_eq!(until_of(p.record(0, rl(secs(10)), at(t), t)), t + secs(10));
    }

    #[test]
    fn an_announced_reset_is_obeyed_as_announced() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let _ = p.record(0, limited(secs(5)), at(t0), t0 + ms(100));
        assert_eq!(p.state(0).until(), Some(t0 + ms(5100)));
        // Served in the next window, then limited again: the announcement, not a double.
        let t1 = t0 + secs(6);
        let _ = p.record(0, Outcome::SERVED, at(t1), t1);
        let t2 = t1 + secs(1);
        assert_eq!(
            until_of(p.record(0, limited(secs(4)), at(t2), t2)),
            t2 + secs(4)
        );
    }

    /// The issue's failure: 8 attempts in flight on two accounts of two keys each, all
    /// refused by one window. Whatever order their 429s come back in, each account rests
    /// exactly as announced, and the pool pause is the shortest rest, never doubled.
    #[test]
    fn echoes_of_one_limit_change_nothing_in_any_order() {
        let mut rng = crate::testing::Rng::new(15);
        for _ in 0..500 {
            let t0 = Instant::now();
            let mut p = grouped(&[10, 10, 11, 11], Strategy::RoundRobin);
            // Eight attempts in flight at once, sent 1 ms apart.
            let sent: Vec<(KeyId, Instant)> = (0..8)
                .map(|i| {
                    let t = t0 + ms(i);
                    (pick(&mut p, t, &[]).unwrap().0, t)
                })
                .collect();
            let mut order: Vec<usize> = (0..8).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let mut first_refusal: HashMap<usize, Instant> = HashMap::new();
            let mut pauses = Vec::new();
            for (n, &i) in order.iter().enumerate() {
                let (id, sent_at) = sent[i];
                let now = t0 + ms(200 + 10 * n as u64);
                let group = p.slot(id).group;
                first_refusal.entry(group).or_insert(now);
                if let Some(Change::Resting {
                    paused: Some(pause),
                    ..
                }) = p.record(id, limited(secs(5)), at(sent_at), now)
                {
                    pauses.push(pause);
                }
            }
            for id in 0..4 {
                let group = p.slot(id).group;
                assert_eq!(p.state(id).until(), Some(first_refusal[&group] + secs(5)));
                assert_eq!(p.slot(id).strikes, 1, "key {id}: {order:?}");
                assert_eq!(p.slot(id).in_flight, 0);
            }
            let shortest = first_refusal.values().min().unwrap().to_owned() + secs(5);
            assert_eq!(pauses, [shortest], "{order:?}");
            assert_eq!(p.pause(), (Some(shortest), 1));
        }
    }

    /// Attempts sent before a rest, during it, and after it ended, answered in random
    /// order: only the first refusal of an attempt sent after the rest lengthens it.
    #[test]
    fn only_attempts_sent_after_the_rest_are_evidence() {
        let mut rng = crate::testing::Rng::new(7);
        for _ in 0..500 {
            let t0 = Instant::now();
            let mut p = Policy::new(1);
            // The first refusal, at 100 ms, rests the key until 5.1 s.
            let _ = p.pick(t0, &[], None).unwrap();
            let _ = p.record(0, limited(secs(5)), at(t0), t0 + ms(100));
            let rest_end = t0 + ms(5100);
            // Four attempts that were sent before that 429 came back, and four sent
            // once the rest was over (the key came back on time).
            let mut attempts: Vec<Instant> = (1..=4).map(|i| t0 + ms(10 * i)).collect();
            attempts.extend((0..4).map(|i| rest_end + ms(i)));
            let mut order: Vec<usize> = (0..8).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let mut news = 0;
            let mut first_late: Option<Instant> = None;
            for (n, &i) in order.iter().enumerate() {
                let sent = attempts[i];
                let now = sent.max(t0 + ms(150)) + ms(50 + n as u64);
                let change = p.record(0, limited(secs(5)), at(sent), now);
                if sent >= rest_end && first_late.is_none() {
                    first_late = Some(now);
                    // Refused again after coming back on time: twice the rest.
                    assert_eq!(until_of(change), now + secs(10), "{order:?}");
                    news += 1;
                } else {
                    assert_eq!(change, None, "attempt {i} is an echo: {order:?}");
                }
            }
            assert_eq!(news, 1);
            assert_eq!(p.state(0).until(), Some(first_late.unwrap() + secs(10)));
            assert_eq!(p.slot(0).strikes, 2);
        }
    }

    #[test]
    fn a_429_sent_before_a_rest_of_the_account_is_an_echo_on_every_key() {
        let t0 = Instant::now();
        // Three keys of one account, and one of another.
        let mut p = grouped(&[7, 7, 7, 8], Strategy::RoundRobin);
        let picks: Vec<KeyId> = (0..9).map(|_| pick(&mut p, t0, &[3]).unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        let first = p.record(2, limited(secs(5)), at(t0), t0 + ms(50));
        assert_eq!(
            first,
            Some(Change::Resting {
                until: t0 + ms(5050),
                others: 2,
                paused: None,
                scope: Scope::Key
            })
        );
        for (n, id) in [0, 1, 0, 2, 1, 2, 0, 1].into_iter().enumerate() {
            let now = t0 + ms(60 + n as u64);
            assert_eq!(p.record(id, limited(secs(30)), at(t0), now), None);
        }
        for id in 0..3 {
            assert_eq!(p.state(id).until(), Some(t0 + ms(5050)));
        }
    }

    #[test]
    fn a_429_rests_every_key_of_the_same_account() {
        let t0 = Instant::now();
        // Keys 0 and 2 share an account; key 1 is alone; key 3 has another account.
        let mut p = grouped(&[7, 1, 7, 9], Strategy::RoundRobin);
        let change = p.record(2, limited(MIN), at(t0), t0);
        assert_eq!(
            change,
            Some(Change::Resting {
                until: t0 + MIN,
                others: 1,
                paused: None,
                scope: Scope::Key,
            })
        );
        let picks: Vec<KeyId> = (0..4).map(|_| pick(&mut p, t0, &[]).unwrap().0).collect();
        assert_eq!(picks, [1, 3, 1, 3]);
    }

    #[test]
    fn sticky_stays_on_one_key_until_it_fails() {
        let t0 = Instant::now();
        let mut p = grouped(&[0, 1, 2], Strategy::Sticky);
        for _ in 0..3 {
            let (id, _) = pick(&mut p, t0, &[]).unwrap();
            assert_eq!(id, 0);
            let _ = p.record(id, Outcome::SERVED, at(t0), t0);
        }
        let _ = p.record(0, limited(MIN), at(t0), t0);
        for _ in 0..3 {
            assert_eq!(pick(&mut p, t0, &[]).unwrap().0, 1);
        }
        let _ = p.record(1, Outcome::Failed, at(t0), t0);
        assert_eq!(pick(&mut p, t0, &[]).unwrap().0, 2);
        assert_eq!(pick(&mut p, t0, &[]).unwrap().0, 2);
    }

    #[test]
    fn a_storm_on_every_key_pauses_the_pool_and_doubles_if_it_goes_on() {
        let t0 = Instant::now();
        let mut p = Policy::new(3);
        assert_eq!(
            p.record(0, limited(secs(30)), at(t0), t0)
                .map(|c| matches!(c, Change::Resting { paused: None, .. })),
            Some(true)
        );
        let _ = p.record(1, limited(secs(20)), at(t0), t0 + secs(1));
        // The last key's 429 makes it a storm: pause until the shortest rest ends.
        let change = p.record(2, limited(secs(40)), at(t0), t0 + secs(2));
        let pause = t0 + secs(21);
        assert_eq!(
            change,
            Some(Change::Resting {
                until: t0 + secs(42),
                others: 0,
                paused: Some(pause),
                scope: Scope::Key,
            })
        );
        assert_eq!(pick(&mut p, t0 + secs(20), &[]), None);
        assert_eq!(p.outlook(t0 + secs(20), None).next_free, Some(pause));
        // Echoes of the storm, sent before the pause ended, change nothing.
        assert_eq!(p.record(0, limited(secs(20)), at(t0), pause), None);
        assert_eq!(p.pause(), (Some(pause), 1));
        // After the pause one key is tried; a 429 again doubles the pause.
        let (id, _) = pick(&mut p, pause, &[]).unwrap();
        assert_eq!(id, 1);
        let change = p.record(id, limited(secs(20)), at(pause), pause);
        let Some(Change::Resting {
            paused: Some(second),
            ..
        }) = change
        else {
            panic!("{change:?}")
        };
        assert_eq!(second, pause + secs(40));
        assert_eq!(
            pick(&mut p, pause + secs(39), &[]),
            None,
            "keys 0 and 2 are not burnt during the pause"
        );
        // A success ends the storm.
        let (id, _) = pick(&mut p, second, &[]).unwrap();
        let _ = p.record(id, Outcome::SERVED, at(second), second);
        let _ = p.record(id, limited(secs(5)), at(second), second);
        assert!(
            pick(&mut p, second, &[]).is_some(),
            "no pause after a success"
        );
    }

    /// At the reset, waiting requests go at once: the window's first attempts are
    /// served (slowly), the rest are refused at once as the new window fills. Those
    /// refusals come back first, but only the first attempt's refusal would say the
    /// reset was too early: the account rests until the new reset, not twice as long.
    #[test]
    fn a_burst_at_the_reset_that_fills_the_new_window_is_not_escalated() {
        let t0 = Instant::now();
        let mut p = grouped(&[7, 7], Strategy::RoundRobin);
        let _ = pick(&mut p, t0, &[]).unwrap();
        let first = p.record(0, limited(secs(5)), at(t0), t0);
        assert_eq!(until_of(first), t0 + secs(5));
        let reset = t0 + secs(5);
        // Eight attempts let go at the reset, one after the other.
        let sent: Vec<(KeyId, Instant)> = (0..8)
            .map(|i| (pick(&mut p, reset + ms(i), &[]).unwrap().0, reset + ms(i)))
            .collect();
        // The last three are refused (the new window is full) before the first five
        // are served: the account rests until the announced reset only.
        let refused = p.record(sent[7].0, limited(secs(5)), at(sent[7].1), reset + ms(20));
        assert_eq!(until_of(refused), reset + ms(20) + secs(5));
        for &(id, at_) in &sent[5..7] {
            assert_eq!(
                p.record(id, limited(secs(5)), at(at_), reset + ms(21)),
                None
            );
        }
        for &(id, at_) in &sent[..5] {
            let _ = p.record(id, Outcome::SERVED, at(at_), reset + ms(100));
        }
        assert_eq!(p.slot(0).strikes, 0);
        // Next time, the first attempt after the rest is refused: that escalates.
        let back = reset + ms(20) + secs(5);
        let (id, _) = pick(&mut p, back, &[]).unwrap();
        let _ = pick(&mut p, back + ms(1), &[]).unwrap();
        let again = p.record(id, limited(secs(5)), at(back), back + ms(5));
        assert_eq!(until_of(again), back + ms(5) + secs(5));
        let back = back + ms(5) + secs(5);
        let (id, _) = pick(&mut p, back, &[]).unwrap();
        let again = p.record(id, limited(secs(5)), at(back), back + ms(5));
        assert_eq!(
            until_of(again),
            back + ms(5) + secs(10),
            "refused right after coming back twice in a row"
        );
    }

    /// The same for a pool-wide pause: a refusal of a later attempt of the burst that
    /// follows the pause does not double it.
    #[test]
    fn a_burst_after_a_pause_doubles_it_only_if_its_first_attempt_is_refused() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let _ = p.record(0, limited(secs(5)), at(t0), t0);
        let change = p.record(1, limited(secs(5)), at(t0), t0);
        let Some(Change::Resting {
            paused: Some(pause),
            ..
        }) = change
        else {
            panic!("{change:?}")
        };
        let (first, _) = pick(&mut p, pause, &[]).unwrap();
        let (second, _) = pick(&mut p, pause + ms(1), &[]).unwrap();
        let change = p.record(second, limited(secs(5)), at(pause + ms(1)), pause + ms(2));
        assert!(
            matches!(change, Some(Change::Resting { paused: None, .. })),
            "{change:?}"
        );
        assert_eq!(p.pause().1, 1, "the storm count did not go up");
        let change = p.record(first, limited(secs(5)), at(pause), pause + ms(3));
        assert!(
            matches!(
                change,
                Some(Change::Resting {
                    paused: Some(_),
                    ..
                })
            ),
            "the first attempt after the pause refused: {change:?}"
        );
    }

    /// After the reset, no more attempts go at once than the window's whole budget,
    /// until an answer says what is left of it.
    #[test]
    fn after_the_reset_the_windows_limit_caps_attempts_in_flight() {
        let t0 = Instant::now();
        let mut p = grouped(&[7, 7], Strategy::RoundRobin);
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        let spent = Outcome::Served {
            budget: Some(Budget {
                remaining: 0,
                reset: secs(5),
                limit: Some(3),
            }),
        };
        assert!(p.record(id, spent, at(t0), t0).is_some(), "spent: rests");
        let reset = t0 + secs(5);
        let sent: Vec<KeyId> = (0..3)
            .map(|_| pick(&mut p, reset, &[]).unwrap().0)
            .collect();
        assert_eq!(pick(&mut p, reset, &[]), None, "three in flight: the limit");
        assert_eq!(p.outlook(reset, None).booked, 2);
        // An answer says two are left (the three took one): two more may go.
        let left = Outcome::Served {
            budget: Some(Budget {
                remaining: 4,
                reset: secs(5),
                limit: Some(3),
            }),
        };
        let _ = p.record(sent[0], left, at(reset), reset + ms(100));
        assert!(pick(&mut p, reset + ms(100), &[]).is_some());
        assert!(pick(&mut p, reset + ms(100), &[]).is_some());
        assert_eq!(pick(&mut p, reset + ms(100), &[]), None);
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
        let change = p.record(1, limited(secs(300)), at(t0), t0);
        assert!(
            matches!(change, Some(Change::Resting { paused: None, .. })),
            "{change:?}"
        );
    }

    #[test]
    fn spread_out_429s_are_no_storm() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let _ = p.record(0, limited(secs(300)), at(t0), t0);
        let later = t0 + STORM_WINDOW + secs(1);
        let change = p.record(1, limited(secs(300)), at(later), later);
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
        assert_eq!(
            p.record(1, Outcome::Invalid, at(t0), t0),
            Some(Change::Disabled)
        );
        for hours in [0, 1, 48] {
            let t = t0 + secs(hours * 3600);
            assert_eq!(pick(&mut p, t, &[]).unwrap().0, 0);
            assert_eq!(pick(&mut p, t, &[0]), None);
        }
        let o = p.outlook(t0, None);
        assert_eq!((o.invalid, o.disabled, o.next_free), (1, 1, None));
    }

    #[test]
    fn out_of_credits_keys_rest_for_their_time() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let hour = secs(3600);
        let _ = p.record(0, Outcome::OutOfCredits { rest: hour }, at(t0), t0);
        assert_eq!(pick(&mut p, t0 + secs(3599), &[]), None);
        assert_eq!(p.outlook(t0, None).next_free, Some(t0 + hour));
        assert_eq!(pick(&mut p, t0 + hour, &[]), Some((0, Some(Change::Back))));
    }

    /// A 429 on an account-mate rests a key that is out of credits no shorter, and
    /// leaves it out of credits (so other instances do not take its long rest for a
    /// 429 of the whole account).
    #[test]
    fn a_429_on_a_mate_leaves_a_key_out_of_credits_as_it_is() {
        let t0 = Instant::now();
        let mut p = grouped(&[0, 0], Strategy::RoundRobin);
        let hour = secs(3600);
        let _ = p.record(0, Outcome::OutOfCredits { rest: hour }, at(t0), t0);
        let _ = p.record(1, limited(secs(5)), at(t0), t0);
        assert_eq!(p.state(0), KeyState::OutOfCredits { until: t0 + hour });
        assert_eq!(
            p.state(1),
            KeyState::Cooling {
                until: t0 + secs(5)
            }
        );
    }

    #[test]
    fn served_and_failed_attempts_change_no_state() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        assert_eq!(p.record(0, Outcome::SERVED, at(t0), t0), None);
        assert_eq!(p.record(0, Outcome::Failed, at(t0), t0), None);
        assert_eq!(p.state(0), KeyState::Ready);
    }

    #[test]
    fn outlook_names_the_earliest_free_key() {
        let t0 = Instant::now();
        let mut p = Policy::new(4);
        let _ = p.record(0, limited(secs(30)), at(t0), t0);
        let _ = p.record(1, limited(secs(10)), at(t0), t0);
        let _ = p.record(2, Outcome::Invalid, at(t0), t0);
        let o = p.outlook(t0, None);
        assert_eq!(
            (o.total, o.ready, o.invalid, o.next_free),
            (4, 1, 1, Some(t0 + secs(10)))
        );
        let o = p.outlook(t0 + secs(20), None);
        assert_eq!((o.ready, o.next_free), (2, Some(t0 + secs(30))));
    }

    fn served_with(remaining: u32, reset: Duration) -> Outcome {
        Outcome::Served {
            budget: Some(Budget {
                remaining,
                reset,
                limit: None,
            }),
        }
    }

    #[test]
    fn no_more_attempts_in_flight_than_the_budget_allows() {
        let t0 = Instant::now();
        // One account of two keys, and a key alone.
        let mut p = grouped(&[5, 5, 9], Strategy::RoundRobin);
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        let _ = p.record(id, served_with(3, secs(10)), at(t0), t0);
        // Three attempts for the account (on either key), then only the other key.
        let picks: Vec<KeyId> = (0..6).map(|_| pick(&mut p, t0, &[]).unwrap().0).collect();
        assert_eq!(picks, [1, 2, 0, 1, 2, 2]);
        let o = p.outlook(t0, None);
        assert_eq!((o.ready, o.booked, o.next_free), (1, 2, None));
        // One of them ends: room for one more.
        let _ = p.record(1, Outcome::Failed, at(t0), t0);
        assert!(matches!(pick(&mut p, t0, &[2]), Some((0 | 1, None))));
        assert_eq!(pick(&mut p, t0, &[2]), None);
        // An attempt that is never sent gives its room back too.
        p.abandon(0);
        assert!(pick(&mut p, t0, &[2]).is_some());
        // After the reset the budget is unknown again: no cap.
        let t1 = t0 + secs(10);
        assert!(pick(&mut p, t1, &[2]).is_some());
        assert!(pick(&mut p, t1, &[2]).is_some());
    }

    /// While nothing is known of an account's budget, one attempt goes to it; its answer
    /// says how many more may go (or, announcing nothing, that any number may).
    #[test]
    fn the_slow_start_sends_one_probe_per_account_until_it_answers() {
        let t0 = Instant::now();
        let mut p = fresh(&[0, 0, 1]);
        let probes: Vec<KeyId> = (0..2).map(|_| pick(&mut p, t0, &[]).unwrap().0).collect();
        assert_eq!(probes, [0, 2], "one per account");
        assert_eq!(pick(&mut p, t0, &[]), None, "both accounts hold the rest");
        let o = p.outlook(t0 + ms(5), None);
        assert_eq!((o.ready, o.booked, o.next_free), (0, 3, None));
        assert_eq!(o.held_until, Some(t0 + PATIENCE));
        // Account 0 answers with 3 left: three more go to it, no fourth.
        let _ = p.record(0, served_with(3, secs(5)), at(t0), t0 + ms(100));
        let now = t0 + ms(100);
        let more: Vec<KeyId> = (0..3).map(|_| pick(&mut p, now, &[]).unwrap().0).collect();
        assert_eq!(more, [0, 1, 0]);
        assert_eq!(pick(&mut p, now, &[]), None, "account 1 still held");
        // Account 1's answer announces no budget: the hold is over for good.
        let _ = p.record(2, Outcome::SERVED, at(t0), now);
        for _ in 0..5 {
            assert_eq!(pick(&mut p, now, &[]).map(|p| p.0), Some(2));
        }
        assert_eq!(p.outlook(now, None).held_until, None);
    }

    /// A probe that takes long holds the others [`PATIENCE`] at most; one that fails
    /// (never answered) leaves the budget unknown, and the next attempt is a new probe.
    #[test]
    fn the_slow_start_waits_for_a_probe_a_moment_at_most() {
        let t0 = Instant::now();
        let mut p = fresh(&[0, 0]);
        let (probe, _) = pick(&mut p, t0, &[]).unwrap();
        assert_eq!(pick(&mut p, t0 + PATIENCE - ms(1), &[]), None);
        assert!(
            pick(&mut p, t0 + PATIENCE, &[]).is_some(),
            "patience is over"
        );
        assert!(pick(&mut p, t0 + PATIENCE, &[]).is_some());
        let mut p = fresh(&[0, 0]);
        let _ = pick(&mut p, t0, &[]).unwrap();
        let _ = p.record(probe, Outcome::Failed, at(t0), t0 + ms(50));
        let later = t0 + ms(60);
        assert!(pick(&mut p, later, &[]).is_some(), "a new probe");
        assert_eq!(pick(&mut p, later, &[]), None);
        assert_eq!(
            p.outlook(later, None).held_until,
            Some(later + PATIENCE),
            "held from the new probe on"
        );
    }

    fn shared(cap: u32, reset: Instant) -> Option<SharedCap> {
        Some(SharedCap {
            cap,
            reset,
            first: false,
            window: None,
        })
    }

    #[test]
    fn attempts_under_way_elsewhere_book_the_account_until_one_ends_or_the_word_expires() {
        let t0 = Instant::now();
        let mut p = fresh(&[5, 5]);
        // Nothing known yet: the slow start's probe, one among all the instances.
        let probe = SharedCap {
            cap: SLOW_START,
            reset: t0,
            first: true,
            window: None,
        };
        assert_eq!(p.shared_cap(0, t0), Some(probe));
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        let _ = p.record(id, served_with(4, secs(10)), at(t0), t0);
        assert_eq!(p.shared_cap(1, t0), shared(4, t0 + secs(10)));
        // This instance picks one; the reservation is refused: the attempts under way
        // elsewhere fill the budget of 4.
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        p.refused(id, t0);
        assert_eq!(
            pick(&mut p, t0, &[]),
            None,
            "booked by the others' attempts"
        );
        assert_eq!(p.outlook(t0, None).booked, 2);
        // One of theirs ends: the account takes attempts again (the next reservation
        // decides).
        assert!(p.freed(1));
        assert!(!p.freed(1), "once");
        assert!(pick(&mut p, t0, &[]).is_some());
        // Refused although this instance knows of room (another instance heard a
        // smaller budget): still booked, not picked again and again.
        p.refused(0, t0);
        assert_eq!(pick(&mut p, t0, &[]), None);
        // No word that one ended: the booking lapses after ELSEWHERE.
        assert!(pick(&mut p, t0 + ELSEWHERE, &[]).is_some());
        // An account that has not answered yet (no cap known here) is booked by a
        // refusal too, not picked again at once.
        let mut f = fresh(&[3]);
        let (id, _) = pick(&mut f, t0, &[]).unwrap();
        f.refused(id, t0);
        assert_eq!(pick(&mut f, t0, &[]), None);
        assert_eq!(f.outlook(t0, None).booked, 1);
        // After the reset, the window's whole budget is what is reserved against, when
        // answers say it; without, the attempts are counted, uncapped.
        assert_eq!(
            p.shared_cap(0, t0 + secs(10)),
            shared(u32::MAX, t0 + secs(10))
        );
        // Answers that announce no budget: each instance counts alone.
        let mut q = grouped(&[7], Strategy::RoundRobin);
        let (id, _) = pick(&mut q, t0, &[]).unwrap();
        let _ = q.record(id, Outcome::SERVED, at(t0), t0);
        assert_eq!(q.shared_cap(0, t0), None);
        let mut p = grouped(&[5, 5], Strategy::RoundRobin);
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        let budget = Budget {
            remaining: 2,
            reset: secs(10),
            limit: Some(6),
        };
        let _ = p.record(
            id,
            Outcome::Served {
                budget: Some(budget),
            },
            at(t0),
            t0,
        );
        assert_eq!(p.shared_cap(0, t0 + secs(11)), shared(6, t0 + secs(10)));
    }

    #[test]
    fn the_slow_start_holds_for_a_probe_elsewhere_and_ends_with_an_answer_elsewhere() {
        let t0 = Instant::now();
        let mut p = fresh(&[4, 4]);
        // Another instance's probe is under way: the reservation is refused, and this
        // instance's requests wait for its answer as for one of its own.
        let id = p.choose(t0, &[], None).unwrap();
        p.count(id);
        p.refused(id, t0);
        assert_eq!(pick(&mut p, t0, &[]), None);
        let o = p.outlook(t0, None);
        assert_eq!((o.booked, o.held_until), (2, Some(t0 + PATIENCE)));
        // Word that it ended: the next attempt is a probe again (Redis knows whether
        // the account answered).
        assert!(p.freed(id));
        let later = t0 + ms(100);
        let probe = p.shared_cap(0, later).map(|c| (c.cap, c.first));
        assert_eq!(probe, Some((SLOW_START, true)));
        // It did: the slow start is over here too; until an answer here, attempts are
        // counted in Redis with no cap of this instance's.
        let id = p.choose(later, &[], None).unwrap();
        p.count(id);
        p.answered_elsewhere(id);
        let _ = p.commit(id, later);
        assert!(
            pick(&mut p, later, &[]).is_some(),
            "more than one at a time"
        );
        let counted = p.shared_cap(0, later).map(|c| (c.cap, c.first));
        assert_eq!(counted, Some((u32::MAX, true)));
        // A refusal while held books the account no longer than the hold.
        let mut r = fresh(&[4]);
        let id = r.choose(t0, &[], None).unwrap();
        r.count(id);
        r.refused(id, t0);
        let id = r.choose(t0 + ms(1500), &[], None).unwrap();
        r.count(id);
        r.refused(id, t0 + ms(1500));
        assert!(pick(&mut r, t0 + PATIENCE, &[]).is_some());
        // A probe elsewhere that takes longer than PATIENCE holds no longer than one of
        // this instance's own: then attempts go, counted, with no cap.
        let mut q = fresh(&[4]);
        let id = q.choose(t0, &[], None).unwrap();
        q.count(id);
        q.refused(id, t0);
        let late = t0 + PATIENCE;
        let uncapped = q.shared_cap(0, late).map(|c| (c.cap, c.first));
        assert_eq!(uncapped, Some((u32::MAX, true)));
        assert!(pick(&mut q, late, &[]).is_some());
    }

    #[test]
    fn a_spent_budget_rests_the_account_until_its_reset_without_a_429() {
        let t0 = Instant::now();
        let mut p = grouped(&[5, 5, 9], Strategy::RoundRobin);
        let change = p.record(0, served_with(0, secs(7)), at(t0), t0 + ms(30));
        assert_eq!(
            change,
            Some(Change::Resting {
                until: t0 + ms(7030),
                others: 1,
                paused: None,
                scope: Scope::Key,
            })
        );
        assert_eq!(p.outlook(t0 + ms(30), None).ready, 1);
        // A 429 for an attempt sent before that answer came back is an echo of it.
        assert_eq!(p.record(1, limited(secs(60)), at(t0), t0 + ms(40)), None);
        assert_eq!(pick(&mut p, t0 + ms(7030), &[2]).map(|p| p.0), Some(0));
    }

    #[test]
    fn the_latest_sent_answer_speaks_for_the_budget() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        // Sent at 2 ms: 0 left. The answer to the attempt sent at 1 ms arrives later and
        // says 1 left: older news, ignored.
        let change = p.record(0, served_with(0, secs(5)), at(t0 + ms(2)), t0 + ms(10));
        assert!(change.is_some());
        let _ = p.record(0, served_with(1, secs(5)), at(t0 + ms(1)), t0 + ms(11));
        assert_eq!(p.slot(0).allowance.unwrap().remaining, 0);
        assert_eq!(p.state(0).until(), Some(t0 + ms(5010)));
    }

    /// Without budget headers, the window is counted: after a 429, as many attempts
    /// go at once as the window before held (3 here), then one at a time, until a 429
    /// says the window is full. The request let go at the reset in a crowd costs one
    /// 429, not one per request waiting.
    #[test]
    fn without_budgets_the_window_before_caps_the_next_then_one_probe_at_a_time() {
        let t0 = Instant::now();
        let mut p = grouped(&[0, 0], Strategy::RoundRobin);
        // Window 1 (nothing known): its 429 rests the account until t1.
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        let _ = p.record(id, limited(secs(5)), at(t0), t0);
        let t1 = t0 + secs(5);
        // Window 2: four go at once; the fourth is refused, and its 429 is back before
        // the three answers: the window holds three.
        let sent: Vec<KeyId> = (0..4).map(|_| pick(&mut p, t1, &[]).unwrap().0).collect();
        let t2 = t1 + secs(5);
        let change = p.record(
            sent[3],
            limited(secs(5) - ms(2)),
            at(t1 + ms(1)),
            t1 + ms(2),
        );
        assert_eq!(until_of(change), t2);
        for &id in &sent[..3] {
            let _ = p.record(id, Outcome::SERVED, at(t1), t1 + ms(100));
        }
        // Window 3: three go at once, no fourth while they are under way.
        let burst: Vec<KeyId> = (0..3).map(|_| pick(&mut p, t2, &[]).unwrap().0).collect();
        assert_eq!(pick(&mut p, t2, &[]), None, "the window held three");
        assert_eq!(p.outlook(t2, None).booked, 2);
        for id in burst {
            let _ = p.record(id, Outcome::SERVED, at(t2), t2 + ms(100));
        }
        // Then one at a time: a probe.
        let later = t2 + ms(100);
        let (probe, _) = pick(&mut p, later, &[]).unwrap();
        assert_eq!(pick(&mut p, later, &[]), None, "one probe at a time");
        let _ = p.record(probe, Outcome::SERVED, at(later), later + ms(100));
        assert!(
            pick(&mut p, later + ms(100), &[]).is_some(),
            "the next probe"
        );
        // A window no older than the length learned: once it is over, no cap.
        let after = t2 + secs(5);
        assert!(pick(&mut p, after, &[]).is_some());
        assert!(pick(&mut p, after, &[]).is_some());
    }

    /// Another instance's 429 ends the window here too: what this instance served in
    /// it is its part of the next one, so the instances' parts add up to the window.
    /// A 429 at `t0` (window 1, begun nobody knows when), then two answers in window 2
    /// (from the rest's end, returned).
    fn two_served_after_a_429(p: &mut Policy, t0: Instant) -> Instant {
        let (id, _) = pick(p, t0, &[]).unwrap();
        let _ = p.record(id, limited(secs(5)), at(t0), t0);
        let t1 = t0 + secs(5);
        for _ in 0..2 {
            let (id, _) = pick(p, t1, &[]).unwrap();
            let _ = p.record(id, Outcome::SERVED, at(t1), t1 + ms(100));
        }
        t1
    }

    #[test]
    fn a_window_another_instance_saw_end_caps_this_instances_part_of_the_next() {
        let t0 = Instant::now();
        let mut p = grouped(&[0, 0], Strategy::RoundRobin);
        // Window 1: this instance's own 429; window 2: two served here, and another
        // instance's 429 ends it (both keys' facts: the first rests the whole account,
        // as a 429 here would).
        let t1 = two_served_after_a_429(&mut p, t0);
        let t2 = t1 + secs(5);
        assert!(p.merge_rest(0, t2, 0, false, t1 + ms(200)));
        assert_eq!(p.state(1), KeyState::Cooling { until: t2 });
        assert!(!p.merge_rest(1, t2, 0, false, t1 + ms(200)), "nothing new");
        // Window 3: this instance's part is two, then one probe at a time.
        let burst: Vec<KeyId> = (0..2).map(|_| pick(&mut p, t2, &[]).unwrap().0).collect();
        assert_eq!(pick(&mut p, t2, &[]), None, "this instance's part was two");
        for id in burst {
            let _ = p.record(id, Outcome::SERVED, at(t2), t2 + ms(100));
        }
        assert!(pick(&mut p, t2 + ms(100), &[]).is_some(), "a probe");
        assert_eq!(pick(&mut p, t2 + ms(100), &[]), None, "one at a time");
        // An escalated rest from elsewhere (refusals in a row) teaches no size.
        let mut q = grouped(&[0], Strategy::RoundRobin);
        let (id, _) = pick(&mut q, t0, &[]).unwrap();
        let _ = q.record(id, limited(secs(5)), at(t0), t0);
        let (id, _) = pick(&mut q, t1, &[]).unwrap();
        let _ = q.record(id, Outcome::SERVED, at(t1), t1 + ms(100));
        assert!(q.merge_rest(0, t2, 2, false, t1 + ms(200)));
        for _ in 0..3 {
            assert!(pick(&mut q, t2, &[]).is_some(), "no cap");
        }
    }

    /// With Redis linked, an account's window is counted with the other instances':
    /// every attempt in it is reserved with the window's start, this instance's own part
    /// caps nothing, and a 429 for an attempt that others' attempts preceded in the
    /// window does not lengthen the rest.
    #[test]
    fn with_redis_a_window_is_counted_together_and_the_part_here_caps_nothing() {
        let t0 = Instant::now();
        let mut p = grouped(&[0], Strategy::RoundRobin);
        p.count_together(true);
        // Window 1 began at a rest's end unknown: nothing to count in.
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        assert_eq!(p.shared_cap(id, t0), None);
        let _ = p.record(id, limited(secs(5)), at(t0), t0);
        // Window 2 (begun at t1): counted, but no size known yet (no window before
        // seen whole).
        let t1 = t0 + secs(5);
        let window = |p: &Policy, t| p.shared_cap(0, t).and_then(|c| c.window);
        assert_eq!(window(&p, t1), Some(t1));
        for _ in 0..2 {
            let (id, _) = pick(&mut p, t1, &[]).unwrap();
            let _ = p.record(id, Outcome::SERVED, at(t1), t1 + ms(100));
        }
        let (id, _) = pick(&mut p, t1 + ms(200), &[]).unwrap();
        let _ = p.record(
            id,
            limited(secs(5) - ms(200)),
            at(t1 + ms(200)),
            t1 + ms(200),
        );
        // Window 3: the size of window 2 holds in it (Redis knows it, from every
        // instance's answers): this instance's part of two caps nothing here.
        let t2 = t1 + secs(5);
        assert_eq!(window(&p, t2), Some(t2));
        for _ in 0..3 {
            assert!(pick(&mut p, t2, &[]).is_some(), "no cap of this instance's");
        }
        // Redis unlinked: the part here caps again (two sent already, one more than
        // two under way is too many).
        assert!(p.full_alone(0, t2));
        p.count_together(false);
        assert_eq!(pick(&mut p, t2, &[]), None);
        // Others sent in the window first: a 429 for this instance's first attempt in it
        // is not the window's first refused, so the rest is as announced.
        let mut q = grouped(&[0], Strategy::RoundRobin);
        q.count_together(true);
        let (id, _) = pick(&mut q, t0, &[]).unwrap();
        let _ = q.record(id, limited(secs(5)), at(t0), t0);
        let id = q.choose(t1, &[], None).unwrap();
        q.count(id);
        q.window_begun_elsewhere(id, t1);
        let _ = q.commit(id, t1 + ms(300));
        let change = q.record(id, limited(secs(5)), at(t1 + ms(300)), t1 + ms(300));
        assert_eq!(until_of(change), t1 + ms(300) + secs(5), "not doubled");
        // A window another instance saw end is known here before this instance's first
        // attempt with the account: its next attempt counts in it.
        let mut r = grouped(&[0], Strategy::RoundRobin);
        r.count_together(true);
        assert!(r.merge_rest(0, t1, 0, false, t0));
        assert_eq!(window(&r, t1), Some(t1));
    }

    /// The same window's end, as two instances converted it between clocks, a
    /// millisecond apart: the second word ends nothing, so the part learned stays.
    #[test]
    fn a_window_end_heard_twice_a_millisecond_apart_keeps_the_part_learned() {
        let t0 = Instant::now();
        let mut p = grouped(&[0], Strategy::RoundRobin);
        let t1 = two_served_after_a_429(&mut p, t0);
        // This instance's own 429 ends window 2, and another's word of it comes after.
        let (id, _) = pick(&mut p, t1 + ms(200), &[]).unwrap();
        let t2 = t1 + secs(5);
        let _ = p.record(
            id,
            limited(secs(5) - ms(200)),
            at(t1 + ms(200)),
            t1 + ms(200),
        );
        let _ = p.merge_rest(0, t2 + ms(1), 0, false, t1 + ms(210));
        let t3 = t2 + ms(1);
        assert!(pick(&mut p, t3, &[]).is_some());
        assert!(pick(&mut p, t3, &[]).is_some());
        assert_eq!(pick(&mut p, t3, &[]), None, "this instance's part was two");
    }

    /// A window whose first attempt was refused (the rest doubles) teaches no size.
    #[test]
    fn a_window_refused_at_once_teaches_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let (id, _) = pick(&mut p, t0, &[]).unwrap();
        let _ = p.record(id, limited(secs(5)), at(t0), t0);
        let t1 = t0 + secs(5);
        let (id, _) = pick(&mut p, t1, &[]).unwrap();
        let change = p.record(id, limited(secs(5)), at(t1), t1);
        let t2 = until_of(change);
        assert_eq!(t2, t1 + secs(10), "escalated");
        for _ in 0..4 {
            assert!(pick(&mut p, t2, &[]).is_some(), "no cap");
        }
    }

    /// Ten attempts go at once; the upstream admits them in an order their send
    /// instants do not tell. An answer sent earlier that says fewer are left is the
    /// truer word for the window: attempts that go on a larger number are refused.
    #[test]
    fn within_one_window_the_fewest_left_count_whatever_the_send_order() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let sent: Vec<Instant> = (0..10).map(|i| t0 + ms(i)).collect();
        for _ in 0..10 {
            let _ = pick(&mut p, t0 + ms(10), &[]).unwrap();
        }
        let reset = t0 + secs(5);
        // An answer recorded at `now` for the window that resets at `reset`.
        let answer = |left: u32, reset: Instant, now: Instant| Outcome::Served {
            budget: Some(Budget {
                remaining: left,
                reset: reset - now,
                limit: Some(10),
            }),
        };
        // The last sent was admitted first (9 left), the first sent later (5 left).
        let now = t0 + ms(100);
        let _ = p.record(0, answer(9, reset, now), at(sent[9]), now);
        let _ = p.record(0, answer(5, reset, now + ms(1)), at(sent[0]), now + ms(1));
        assert_eq!(p.slot(0).allowance.unwrap().remaining, 5);
        // Eight still in flight against 5 left: none may go.
        assert_eq!(pick(&mut p, now + ms(2), &[]), None);
        // In the next window the latest-sent word speaks again: an answer from the old
        // window that comes late changes nothing.
        let next = reset + ms(100);
        for _ in 0..8 {
            p.abandon(0);
        }
        let _ = pick(&mut p, reset, &[]).unwrap();
        let _ = p.record(0, answer(9, reset + secs(5), next), at(reset), next);
        let late = Outcome::Served {
            budget: Some(Budget {
                remaining: 0,
                reset: Duration::ZERO,
                limit: Some(10),
            }),
        };
        assert_eq!(p.record(0, late, at(sent[5]), next), None);
        assert_eq!(p.slot(0).allowance.unwrap().remaining, 9);
    }

    fn model_limited(rest: Duration, scope: Scope) -> Outcome {
        Outcome::RateLimited {
            rest,
            longest: DAY,
            scope,
        }
    }

    #[test]
    fn a_per_model_limit_rests_the_key_for_that_model_only() {
        let t0 = Instant::now();
        let mut p = grouped(&[3, 3, 4], Strategy::RoundRobin);
        let pro = Some("gemini-2.5-pro");
        let (id, _) = p.pick(t0, &[], pro).unwrap();
        assert_eq!(id, 0);
        let sent = Sent { at: t0, model: pro };
        let change = p.record(id, model_limited(secs(37), Scope::Model), sent, t0);
        assert_eq!(
            change,
            Some(Change::Resting {
                until: t0 + secs(37),
                others: 1,
                paused: None,
                scope: Scope::Model,
            })
        );
        // The account's keys serve other models, and only key 2 serves this one.
        for _ in 0..3 {
            assert_eq!(p.pick(t0, &[], pro).unwrap().0, 2);
        }
        let flash: Vec<KeyId> = (0..3)
            .map(|_| p.pick(t0, &[], Some("gemini-2.5-flash")).unwrap().0)
            .collect();
        assert_eq!(flash, [0, 1, 2]);
        assert_eq!(p.state(0), KeyState::Ready);
        let o = p.outlook(t0, pro);
        assert_eq!((o.ready, o.next_free), (1, Some(t0 + secs(37))));
        assert_eq!(p.outlook(t0, Some("other")).ready, 3);
        // An echo for the same model changes nothing; after the rest it serves again.
        assert_eq!(
            p.record(1, model_limited(secs(99), Scope::Model), sent, t0 + ms(5)),
            None
        );
        assert_eq!(p.pick(t0 + secs(37), &[2], pro).unwrap().0, 0);
    }

    #[test]
    fn a_free_models_limit_spares_paid_models() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let free = Some("deepseek/deepseek-r1:free");
        let sent = Sent {
            at: t0,
            model: free,
        };
        let _ = p.record(0, model_limited(secs(3600), Scope::FreeModels), sent, t0);
        assert_eq!(p.pick(t0, &[], Some("meta/llama-3:free")), None);
        assert!(p.pick(t0, &[], Some("anthropic/claude-sonnet-4")).is_some());
        assert!(p.pick(t0, &[], None).is_some());
        assert_eq!(
            p.slot(0)
                .model_rests_at(t0)
                .next()
                .map(|r| r.models.to_string()),
            Some("free models".to_string())
        );
    }

    #[test]
    fn model_rests_per_key_are_bounded() {
        let t0 = Instant::now();
        let mut p = Policy::new(1);
        let names: Vec<String> = (0..100).map(|i| format!("model-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            let sent = Sent {
                at: t0,
                model: Some(name),
            };
            let rest = secs(1000 + i as u64);
            assert!(
                p.record(0, model_limited(rest, Scope::Model), sent, t0)
                    .is_some()
            );
        }
        assert_eq!(p.slot(0).model_rests.len(), MOST_MODEL_RESTS);
        // The latest ones are kept.
        assert!(p.pick(t0, &[], Some("model-99")).is_none());
        assert!(p.pick(t0, &[], Some("model-0")).is_some());
    }

    #[test]
    fn a_model_limit_without_a_model_rests_the_whole_key() {
        let t0 = Instant::now();
        let mut p = Policy::new(2);
        let change = p.record(0, model_limited(secs(9), Scope::Model), at(t0), t0);
        assert_eq!(until_of(change), t0 + secs(9));
        assert_eq!(p.state(0).until(), Some(t0 + secs(9)));
        // A free-models limit for a paid model is the key's too.
        let paid = Sent {
            at: t0,
            model: Some("openai/gpt-4o"),
        };
        let change = p.record(1, model_limited(secs(9), Scope::FreeModels), paid, t0);
        assert_eq!(until_of(change), t0 + secs(9));
        assert!(p.slot(1).model_rests.is_empty());
    }

    #[test]
    fn property_pick_and_record_keep_in_flight_counts_and_rests_bounded() {
        let mut rng = crate::testing::Rng::new(99);
        let t0 = Instant::now();
        let mut p = grouped(&[1, 1, 2, 3, 3, 3], Strategy::RoundRobin);
        let mut open: Vec<(KeyId, Instant)> = Vec::new();
        let mut now = t0;
        for _ in 0..20_000 {
            now += ms(rng.below(300) as u64);
            if rng.below(2) == 0 {
                if let Some((id, _)) = p.pick(now, &[], None) {
                    open.push((id, now));
                }
            } else if !open.is_empty() {
                let (id, sent) = open.swap_remove(rng.below(open.len()));
                let outcome = match rng.below(4) {
                    0 => limited(secs(rng.below(10) as u64 + 1)),
                    1 => served_with(rng.below(4) as u32, secs(rng.below(5) as u64)),
                    2 => Outcome::Failed,
                    _ => Outcome::SERVED,
                };
                let _ = p.record(id, outcome, at(sent), now);
            }
            for id in 0..6 {
                let mine = open.iter().filter(|(k, _)| *k == id).count() as u32;
                assert_eq!(p.slot(id).in_flight, mine);
                if let Some(until) = p.state(id).until() {
                    assert!(until <= now + DAY);
                }
            }
        }
    }
}
