//! The shared key pool: the keys, the rotation policy over them, and what is remembered
//! of each, behind one mutex.
//!
//! Invariants: the lock is held only to decide or record, never across I/O (saving takes
//! a snapshot under the lock and writes after releasing it). Callers name keys by entry,
//! never by index, so a request that began before the keys file changed records its
//! outcome against the right key, or against nothing if the key was removed. When the
//! keys file changes, keys that stay keep their state, except that an `invalid` mark is
//! cleared (the user may have fixed the key).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::keys::key::ApiKey;
use crate::keys::store::KeyEntry;
use crate::persist::shared::{Fact, Reason};
use crate::persist::state::{
    self, KeyStatus, Saved, SavedModelRest, SavedState, ScopedRest, StateFile,
};
use crate::rotation::policy::{Allowance, ModelRest, Models, Scope};
use crate::rotation::policy::{
    Change, KeyId, KeyState, Outcome, Outlook, Policy, Sent, Slot, Strategy,
};
use crate::rotation::pools::{Ask, Ended, Flight, Reserve};

/// The clock, read once per event by the caller: monotonic for rests, wall-clock for what
/// is remembered and shown.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn read() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn to_wall_ms(self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.mono) {
            Some(ahead) => self.wall.checked_add(ahead),
            None => self.wall.checked_sub(self.mono.duration_since(at)),
        };
        wall.map_or(0, epoch_ms)
    }

    /// The instant of a remembered wall-clock time; a past one (or one out of
    /// `SystemTime`'s range) is now, and one too far ahead for an `Instant` is `None`.
    fn to_mono(self, wall_ms: u64) -> Option<Instant> {
        let at = from_epoch_ms(wall_ms)?;
        match at.duration_since(self.wall) {
            Ok(ahead) => self.mono.checked_add(ahead),
            Err(_) => Some(self.mono),
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of epoch milliseconds from a file or an upstream, or `None` when
/// `SystemTime` cannot hold it (Windows' range ends in the year 30828; a damaged state
/// file can say anything).
pub fn from_epoch_ms(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// What a key has been through since the proxy started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyStats {
    /// Upstream attempts made with the key.
    pub requests: u64,
    /// Attempts whose answer went to the client.
    pub served: u64,
    pub rate_limited: u64,
    /// Other failures: invalid, out of credits, 5xx, connection errors.
    pub failures: u64,
    /// The last failure, as logged (keys masked).
    pub last_error: Option<String>,
}

/// One key as the status page and `roo-proxy status` show it.
#[derive(Debug, Clone)]
pub struct KeyReport {
    pub entry: Arc<KeyEntry>,
    pub state: KeyStatus,
    /// Seconds until a resting key is back.
    pub seconds_left: Option<u64>,
    /// Rests for some models only (the key serves others).
    pub model_rests: Vec<ScopedRest>,
    pub stats: KeyStats,
    pub last_used_ms: Option<u64>,
}

/// The pool at a glance.
#[derive(Debug, Clone)]
pub struct PoolReport {
    pub keys: Vec<KeyReport>,
    pub outlook: Outlook,
    /// Seconds left of a pool-wide pause after a storm of 429s.
    pub paused_seconds: Option<u64>,
}

/// How a keys-file change altered the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    pub added: usize,
    pub removed: usize,
    pub total: usize,
}

pub struct Pool {
    inner: Mutex<Inner>,
}

/// An attempt under way with one key, from [`Pool::pick`] until [`Ticket::finish`]
/// records its outcome. While it lives it counts against its key's budget of requests;
/// dropped unfinished (never sent, or a panic), it just stops counting.
#[must_use = "an attempt must be finished with its outcome"]
pub struct Ticket<'p> {
    pool: &'p Pool,
    entry: Arc<KeyEntry>,
    /// When the attempt was picked, just before it was sent: what its 429 is evidence of
    /// depends on it.
    sent: Instant,
    model: Option<Box<str>>,
    open: bool,
    /// The account this attempt is counted against in Redis (`--redis`), and where.
    reserved: Option<(Arc<str>, Arc<dyn Flight>)>,
    /// The start of the counted window it was reserved in (epoch ms).
    window: Option<u64>,
}

impl Ticket<'_> {
    /// The key to send the attempt with.
    pub fn entry(&self) -> &Arc<KeyEntry> {
        &self.entry
    }

    /// Records what the attempt taught us; `why` describes a failure (keys masked).
    /// Returns a change worth a log line.
    pub fn finish(mut self, outcome: Outcome, why: Option<&str>, now: Now) -> Option<Change> {
        self.open = false;
        let (change, next_window) = self.pool.finish(&self, outcome, why, now);
        if let Some((account, flight)) = self.reserved.take() {
            let ended = match outcome {
                Outcome::Served { budget } => Ended::Served {
                    budget: budget.and_then(|budget| {
                        let reset = now.wall.checked_add(budget.reset)?;
                        Some((budget.remaining, epoch_ms(reset)))
                    }),
                    window: self.window,
                },
                // A 429 that rested the account (not for one model's limit, not an
                // echo) fills the window for all, until the next one begins.
                Outcome::RateLimited { .. } => match (self.window, next_window) {
                    (Some(window), Some(next)) => Ended::Limited {
                        window,
                        until: now.to_wall_ms(next),
                    },
                    _ => Ended::Other,
                },
                _ => Ended::Other,
            };
            flight.release(&account, ended);
        }
        change
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.open {
            self.pool.abandon(&self.entry);
        }
        if let Some((account, flight)) = self.reserved.take() {
            flight.release(&account, Ended::Other);
        }
    }
}

impl std::fmt::Debug for Ticket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.entry.name())
            .field("open", &self.open)
            .finish()
    }
}

struct Inner {
    entries: Vec<Arc<KeyEntry>>,
    index: HashMap<ApiKey, KeyId>,
    policy: Policy,
    strategy: Strategy,
    last_used: Vec<Option<SystemTime>>,
    stats: Vec<KeyStats>,
    /// Fingerprints (the state file's key names), computed once per key.
    prints: Vec<String>,
    /// The key of each fingerprint: a fact from another instance names its key so.
    by_print: HashMap<String, KeyId>,
    /// A state worth saving changed since the last snapshot.
    dirty: bool,
    /// Only "last used" changed since the last snapshot.
    used: bool,
    /// Where facts worth sharing with other instances go (`--redis`): a bounded channel
    /// to the thread that writes them, never waited on.
    outbox: Option<SyncSender<Fact>>,
    /// Facts the outbox had no room for.
    dropped: u64,
    /// Fingerprints of keys another instance's user disabled.
    peer_off: HashSet<String>,
    /// Each key's account as Redis knows it (see [`Flight`]), and the first key of each.
    accounts: Vec<Arc<str>>,
    by_account: HashMap<Arc<str>, KeyId>,
    /// Where attempts with accounts that announce a budget are reserved (`--redis`).
    flight: Option<Arc<dyn Flight>>,
    /// Word that another instance's attempt ended, so far: a refusal that crossed one
    /// does not book its account.
    freed: u64,
}

impl Pool {
    /// A pool of `entries`, each starting as `remembered` says (by fingerprint).
    pub fn new(
        entries: Vec<KeyEntry>,
        remembered: &StateFile,
        strategy: Strategy,
        now: Now,
    ) -> Pool {
        let groups = groups_of(&entries);
        let mut slots = Vec::with_capacity(entries.len());
        let mut last_used = Vec::with_capacity(entries.len());
        let stats = vec![KeyStats::default(); entries.len()];
        for (entry, group) in entries.iter().zip(groups) {
            let saved = remembered.keys.get(&state::fingerprint(&entry.key));
            let state = match saved {
                _ if entry.disabled => KeyState::Disabled,
                Some(saved) => restore(saved, now),
                None => KeyState::Ready,
            };
            let mut slot = Slot::new(state, group);
            if let Some(saved) = saved.filter(|_| !entry.disabled) {
                slot.model_rests = restore_model_rests(saved, now);
            }
            slots.push(slot);
            last_used.push(saved.and_then(|s| s.last_used_ms).and_then(from_epoch_ms));
        }
        let prints: Vec<String> = entries.iter().map(|e| state::fingerprint(&e.key)).collect();
        let accounts = accounts_of(&entries, &prints);
        let entries: Vec<Arc<KeyEntry>> = entries.into_iter().map(Arc::new).collect();
        Pool {
            inner: Mutex::new(Inner {
                index: index_of(&entries),
                entries,
                policy: Policy::with_slots(slots, 0, strategy),
                strategy,
                last_used,
                stats,
                by_print: index_of_prints(&prints),
                prints,
                dirty: false,
                used: false,
                outbox: None,
                dropped: 0,
                peer_off: HashSet::new(),
                by_account: index_of_accounts(&accounts),
                accounts,
                flight: None,
                freed: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change under this lock is a few plain assignments, so the state stays
        // consistent even if a worker panicked while holding it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// The next key for a request for `model` (the request body's `"model"`, if any)
    /// that already tried `tried`; the change is `Back` when the key just came back from
    /// a rest. The attempt counts against the key's budget until its [`Ticket`] is
    /// finished or dropped.
    pub fn pick(
        &self,
        now: Now,
        tried: &[Arc<KeyEntry>],
        model: Option<&str>,
    ) -> Option<(Ticket<'_>, Option<Change>)> {
        let mut inner = self.lock();
        // Windows are counted with the others while Redis answers, else here alone.
        let together = inner.flight.as_ref().is_some_and(|flight| flight.linked());
        inner.policy.count_together(together);
        // A refused reservation books its account, so the next turn picks another (or
        // none); the bound only guards against counts that disagree.
        for _ in 0..4 {
            // Again each turn: the keys file may change while Redis is asked.
            let ids: Vec<KeyId> = tried
                .iter()
                .filter_map(|e| inner.index.get(&e.key).copied())
                .collect();
            let id = inner.policy.choose(now.mono, &ids, model)?;
            inner.policy.count(id);
            let mut ticket = Ticket {
                pool: self,
                entry: Arc::clone(&inner.entries[id]),
                sent: now.mono,
                model: model.map(Box::from),
                open: true,
                reserved: None,
                window: None,
            };
            let ask = inner.flight.as_ref().and_then(|flight| {
                let shared = inner.policy.shared_cap(id, now.mono)?;
                Some((Arc::clone(flight), shared))
            });
            let Some((flight, shared)) = ask else {
                let change = inner.commit(id, now);
                return Some((ticket, change));
            };
            let account = Arc::clone(&inner.accounts[id]);
            let freed = inner.freed;
            // Redis is asked without the lock: other requests decide meanwhile.
            drop(inner);
            let ask = Ask {
                cap: shared.cap,
                reset_ms: now.to_wall_ms(shared.reset),
                first: shared.first,
                window: shared.window.map(|since| now.to_wall_ms(since)),
            };
            let reserved = flight.reserve(&account, ask);
            inner = self.lock();
            let id = inner.index.get(&ticket.entry.key).copied();
            match (reserved, id) {
                (Reserve::Unavailable, Some(id))
                    if shared.window.is_some() && inner.policy.full_alone(id, now.mono) =>
                {
                    // No word from Redis on a counted window: this instance's own part
                    // of it decides, as without Redis, for the rest of this pick.
                    ticket.open = false;
                    inner.policy.abandon(id);
                    inner.policy.count_together(false);
                    flight.release(&account, Ended::Other);
                }
                (
                    Reserve::Granted | Reserve::Answered | Reserve::Begun | Reserve::Unavailable,
                    Some(id),
                ) if inner.policy.still_serves(id, model, now.mono) => {
                    match (reserved, shared.window) {
                        (Reserve::Answered, _) => inner.policy.answered_elsewhere(id),
                        (Reserve::Begun, Some(since)) => {
                            inner.policy.window_begun_elsewhere(id, since);
                        }
                        _ => {}
                    }
                    ticket.reserved = Some((account, flight));
                    ticket.window = ask.window;
                    let change = inner.commit(id, now);
                    return Some((ticket, change));
                }
                (Reserve::Refused, Some(id)) if inner.freed == freed => {
                    ticket.open = false;
                    inner.policy.refused(id, now.mono);
                }
                (Reserve::Refused, _) => {
                    // Removed meanwhile, or one ended elsewhere since: try again.
                    ticket.open = false;
                    if let Some(id) = id {
                        inner.policy.abandon(id);
                    }
                }
                (
                    Reserve::Granted | Reserve::Answered | Reserve::Begun | Reserve::Unavailable,
                    _,
                ) => {
                    // The key went, or began a rest, while Redis was asked.
                    ticket.open = false;
                    if let Some(id) = id {
                        inner.policy.abandon(id);
                    }
                    flight.release(&account, Ended::Other);
                }
            }
        }
        None
    }

    /// Ends an attempt: records what it taught us; `why` describes a failure (keys
    /// masked). A key removed from the pool since the attempt began is ignored.
    fn finish(
        &self,
        ticket: &Ticket,
        outcome: Outcome,
        why: Option<&str>,
        now: Now,
    ) -> (Option<Change>, Option<Instant>) {
        let mut inner = self.lock();
        let Some(&id) = inner.index.get(&ticket.entry.key) else {
            return (None, None);
        };
        let stats = &mut inner.stats[id];
        stats.requests += 1;
        match outcome {
            Outcome::Served { .. } => stats.served += 1,
            Outcome::RateLimited { .. } => stats.rate_limited += 1,
            _ => stats.failures += 1,
        }
        if let Some(why) = why {
            stats.last_error = Some(why.to_string());
        }
        let sent = Sent {
            at: ticket.sent,
            model: ticket.model.as_deref(),
        };
        let change = inner.policy.record(id, outcome, sent, now.mono);
        inner.dirty |= change.is_some();
        if inner.outbox.is_some() {
            let mut facts = Vec::new();
            if change.is_some() {
                for other in inner.policy.account(id) {
                    facts.extend(key_facts(&inner, other, now));
                }
                facts.extend(pause_fact(&inner, now));
            }
            if matches!(outcome, Outcome::Served { budget: Some(_) }) {
                facts.extend(budget_fact(&inner, id, now));
            }
            inner.send(facts);
        }
        // A rest of the whole key: where its account's next window begins.
        let next_window = match change {
            Some(Change::Resting {
                scope: Scope::Key, ..
            }) => inner.policy.window_start(id),
            _ => None,
        };
        (change, next_window)
    }

    fn abandon(&self, entry: &KeyEntry) {
        let mut inner = self.lock();
        if let Some(&id) = inner.index.get(&entry.key) {
            inner.policy.abandon(id);
        }
    }

    /// Another instance's attempt with `account` ended (see [`Flight`]): whether this
    /// pool counted that account as booked elsewhere (and no longer does).
    pub fn freed(&self, account: &str) -> bool {
        let mut inner = self.lock();
        inner.freed = inner.freed.wrapping_add(1);
        match inner.by_account.get(account).copied() {
            Some(id) => inner.policy.freed(id),
            None => false,
        }
    }

    #[cfg(test)]
    pub fn ready(&self, now: Now) -> usize {
        self.lock().policy.ready(now.mono)
    }

    /// How many keys could serve, counting no further than `limit`.
    pub fn ready_up_to(&self, now: Now, limit: usize) -> usize {
        self.lock().policy.ready_up_to(now.mono, limit)
    }

    /// The pool as a request for `model` sees it.
    pub fn outlook(&self, now: Now, model: Option<&str>) -> Outlook {
        self.lock().policy.outlook(now.mono, model)
    }

    /// Replaces the keys (the keys file changed). Keys that stay keep their rests and
    /// history, except that an invalid mark is cleared, and `keys enable` (a new
    /// `enabled_at`) clears everything; new keys start ready; removed keys are no longer
    /// picked; disabled keys are out.
    pub fn replace(&self, entries: Vec<KeyEntry>) -> Reloaded {
        let mut inner = self.lock();
        let groups = groups_of(&entries);
        let mut slots = Vec::with_capacity(entries.len());
        let mut last_used = Vec::with_capacity(entries.len());
        let mut stats = Vec::with_capacity(entries.len());
        let mut kept = 0;
        let mut enabled = 0;
        let mut facts = Vec::new();
        for (entry, group) in entries.iter().zip(groups) {
            let old = inner.index.get(&entry.key).copied();
            kept += usize::from(old.is_some());
            enabled += usize::from(
                old.is_some_and(|old| inner.entries[old].enabled_at != entry.enabled_at),
            );
            let print = state::fingerprint(&entry.key);
            let was = old.map(|old| {
                let e = &inner.entries[old];
                (
                    e.disabled,
                    e.enabled_at != entry.enabled_at,
                    inner.policy.state(old),
                )
            });
            // What other instances should hear of the user's change.
            if entry.disabled && !was.is_some_and(|(off, _, _)| off) {
                facts.push(Fact::Off { k: print.clone() });
            }
            let turned_on = was.is_some_and(|(off, enabled, _)| off || enabled);
            if !entry.disabled && turned_on {
                inner.peer_off.remove(&print);
                facts.push(Fact::On { k: print.clone() });
            }
            if was.is_some_and(|(_, _, state)| state == KeyState::Invalid) {
                facts.push(Fact::Valid { k: print.clone() });
            }
            let mut slot = match old {
                Some(old) if inner.entries[old].enabled_at == entry.enabled_at => {
                    let mut slot = inner.policy.slot(old).clone();
                    if matches!(slot.state, KeyState::Invalid | KeyState::Disabled) {
                        slot.state = KeyState::Ready;
                    }
                    slot
                }
                _ => Slot::new(KeyState::Ready, group),
            };
            slot.group = group;
            if entry.disabled || inner.peer_off.contains(&print) {
                slot.state = KeyState::Disabled;
            }
            slots.push(slot);
            last_used.push(old.and_then(|old| inner.last_used[old]));
            stats.push(old.map(|old| inner.stats[old].clone()).unwrap_or_default());
        }
        let reloaded = Reloaded {
            added: entries.len() - kept,
            removed: inner.entries.len() - kept,
            total: entries.len(),
        };
        inner.prints = entries.iter().map(|e| state::fingerprint(&e.key)).collect();
        inner.by_print = index_of_prints(&inner.prints);
        inner.accounts = accounts_of(&entries, &inner.prints);
        inner.by_account = index_of_accounts(&inner.accounts);
        let entries: Vec<Arc<KeyEntry>> = entries.into_iter().map(Arc::new).collect();
        let pause = inner.policy.pause();
        inner.policy = Policy::with_slots(slots, inner.policy.cursor(), inner.strategy);
        // New or re-enabled keys are new capacity: a pool-wide pause does not hold them back.
        if reloaded.added == 0 && enabled == 0 {
            inner.policy.set_pause(pause);
        }
        inner.index = index_of(&entries);
        inner.entries = entries;
        inner.last_used = last_used;
        inner.stats = stats;
        inner.dirty = true;
        inner.send(facts);
        reloaded
    }

    /// The keys, in the pool's order.
    pub fn entries(&self) -> Vec<Arc<KeyEntry>> {
        self.lock().entries.iter().map(Arc::clone).collect()
    }

    /// Shares what this pool learns from now on through `outbox`, and reserves attempts
    /// with accounts that announce a budget through `flight` (`--redis`).
    pub fn share(&self, outbox: SyncSender<Fact>, flight: Arc<dyn Flight>) {
        let mut inner = self.lock();
        inner.outbox = Some(outbox);
        inner.flight = Some(flight);
    }

    /// Upstream attempts and 429s since the start, over every key.
    pub fn totals(&self) -> (u64, u64) {
        let inner = self.lock();
        inner.stats.iter().fold((0, 0), |(attempts, limited), s| {
            (attempts + s.requests, limited + s.rate_limited)
        })
    }

    /// Facts the outbox had no room for, since the start.
    pub fn dropped_facts(&self) -> u64 {
        self.lock().dropped
    }

    /// Everything this pool knows that others should: every running rest, mark and
    /// budget, the pause, and the keys this instance's keys file disables. Sent when
    /// Redis (re)appears, so state learned while it was away is merged back.
    pub fn facts(&self, now: Now) -> Vec<Fact> {
        let inner = self.lock();
        let mut facts = Vec::new();
        for id in 0..inner.entries.len() {
            facts.extend(key_facts(&inner, id, now));
            facts.extend(budget_fact(&inner, id, now));
            if inner.entries[id].disabled {
                facts.push(Fact::Off {
                    k: inner.prints[id].clone(),
                });
            }
        }
        facts.extend(pause_fact(&inner, now));
        facts
    }

    /// Merges what another instance learned. Keys this pool does not have are ignored.
    /// Returns whether anything changed.
    pub fn apply(&self, fact: &Fact, now: Now) -> bool {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let find = |k: &str| inner.by_print.get(k).copied();
        // Another instance's word is cut to the longest rest this one gives (a day), like
        // a remembered one: a wrong clock or a damaged fact never locks a key out for long.
        let until = |ms: u64| clamp_remembered(now.to_mono(ms), now).filter(|u| *u > now.mono);
        let changed = match fact {
            Fact::Rest {
                k,
                until_ms,
                strikes,
                reason,
            } => match (find(k), until(*until_ms)) {
                (Some(id), Some(until)) => inner.policy.merge_rest(
                    id,
                    until,
                    *strikes,
                    *reason == Reason::OutOfCredits,
                    now.mono,
                ),
                _ => false,
            },
            Fact::ModelRest {
                k,
                models,
                until_ms,
                strikes,
            } => match (find(k), until(*until_ms)) {
                (Some(id), Some(until)) => {
                    let models = models_of(models);
                    inner
                        .policy
                        .merge_model_rest(id, models, until, *strikes, now.mono)
                }
                _ => false,
            },
            Fact::Invalid { k } | Fact::Valid { k } => match find(k) {
                Some(id) => inner
                    .policy
                    .merge_invalid(id, matches!(fact, Fact::Invalid { .. })),
                None => false,
            },
            Fact::Off { k } => {
                inner.peer_off.insert(k.clone());
                find(k).is_some_and(|id| inner.policy.merge_disabled(id, true))
            }
            Fact::On { k } => {
                inner.peer_off.remove(k);
                match find(k) {
                    Some(id) if !inner.entries[id].disabled => {
                        inner.policy.merge_disabled(id, false)
                    }
                    _ => false,
                }
            }
            Fact::Pause { until_ms, storms } => match until(*until_ms) {
                Some(until) => inner.policy.merge_pause(until, *storms),
                None => false,
            },
            Fact::Budget {
                k,
                remaining,
                reset_ms,
                sent_ms,
                limit,
            } => match (find(k), until(*reset_ms)) {
                (Some(id), Some(reset)) => {
                    let allowance = Allowance {
                        remaining: *remaining,
                        reset,
                        sent: now.to_mono(*sent_ms).unwrap_or(now.mono),
                        limit: *limit,
                    };
                    inner.policy.merge_allowance(id, allowance, now.mono)
                }
                _ => false,
            },
        };
        inner.dirty |= changed;
        changed
    }

    /// Every key's state and history, for the status endpoints.
    pub fn report(&self, now: Now) -> PoolReport {
        let inner = self.lock();
        let keys = inner
            .entries
            .iter()
            .enumerate()
            .map(|(id, entry)| {
                let state = inner.policy.state(id);
                let left = state
                    .until()
                    .filter(|u| *u > now.mono)
                    .map(|u| u.duration_since(now.mono).as_secs_f64().ceil() as u64);
                KeyReport {
                    entry: Arc::clone(entry),
                    state: match state {
                        KeyState::Cooling { .. } if left.is_some() => KeyStatus::Cooling,
                        KeyState::OutOfCredits { .. } if left.is_some() => KeyStatus::OutOfCredits,
                        KeyState::Invalid => KeyStatus::Invalid,
                        KeyState::Disabled => KeyStatus::Disabled,
                        _ => KeyStatus::Ready,
                    },
                    seconds_left: left,
                    model_rests: inner
                        .policy
                        .slot(id)
                        .model_rests_at(now.mono)
                        .map(|r| ScopedRest {
                            scope: r.models.to_string(),
                            seconds_left: seconds_until(r.until, now.mono),
                        })
                        .collect(),
                    stats: inner.stats[id].clone(),
                    last_used_ms: inner.last_used[id].map(epoch_ms),
                }
            })
            .collect();
        let paused_seconds = inner
            .policy
            .pause()
            .0
            .filter(|p| *p > now.mono)
            .map(|p| p.duration_since(now.mono).as_secs_f64().ceil() as u64);
        PoolReport {
            keys,
            outlook: inner.policy.outlook(now.mono, None),
            paused_seconds,
        }
    }

    /// What should be remembered, if a state changed since the last call, or (with
    /// `with_use`) if only "last used" times did. Rests must reach the file quickly;
    /// use times are for `keys list` and can wait, which keeps a busy proxy from
    /// rewriting the file every second.
    pub fn take_snapshot(&self, now: Now, with_use: bool) -> Option<StateFile> {
        let mut inner = self.lock();
        if !(inner.dirty || (with_use && inner.used)) {
            return None;
        }
        inner.dirty = false;
        inner.used = false;
        Some(snapshot(&inner, now))
    }

    /// What is remembered, whether or not it changed (for shutdown).
    pub fn snapshot(&self, now: Now) -> StateFile {
        let mut inner = self.lock();
        inner.dirty = false;
        inner.used = false;
        snapshot(&inner, now)
    }
}

impl Inner {
    /// Hands facts to the outbox without waiting; those it has no room for are counted
    /// and lost (the merge when Redis returns sends the whole state again).
    /// The attempt counted with key `id` goes out (see [`Policy::commit`]).
    fn commit(&mut self, id: KeyId, now: Now) -> Option<Change> {
        let change = self.policy.commit(id, now.mono);
        self.last_used[id] = Some(now.wall);
        self.used = true;
        self.dirty |= change.is_some();
        change
    }

    fn send(&mut self, facts: Vec<Fact>) {
        let Some(outbox) = &self.outbox else { return };
        for fact in facts {
            if outbox.try_send(fact).is_err() {
                self.dropped += 1;
            }
        }
    }
}

/// What other instances should know of key `id`'s state: its rests and its invalid mark.
fn key_facts(inner: &Inner, id: KeyId, now: Now) -> Vec<Fact> {
    let slot = inner.policy.slot(id);
    let k = &inner.prints[id];
    let mut facts = Vec::new();
    match slot.state {
        KeyState::Cooling { until } | KeyState::OutOfCredits { until } if until > now.mono => {
            facts.push(Fact::Rest {
                k: k.clone(),
                until_ms: now.to_wall_ms(until),
                strikes: slot.strikes,
                reason: match slot.state {
                    KeyState::OutOfCredits { .. } => Reason::OutOfCredits,
                    _ => Reason::RateLimited,
                },
            });
        }
        KeyState::Invalid => facts.push(Fact::Invalid { k: k.clone() }),
        _ => {}
    }
    if slot.state.usable() {
        for rest in slot.model_rests_at(now.mono) {
            facts.push(Fact::ModelRest {
                k: k.clone(),
                models: models_name(&rest.models),
                until_ms: now.to_wall_ms(rest.until),
                strikes: rest.strikes,
            });
        }
    }
    facts
}

/// The budget key `id`'s account announced last, while it runs.
fn budget_fact(inner: &Inner, id: KeyId, now: Now) -> Option<Fact> {
    let a = inner
        .policy
        .slot(id)
        .allowance
        .filter(|a| a.reset > now.mono)?;
    Some(Fact::Budget {
        k: inner.prints[id].clone(),
        remaining: a.remaining,
        reset_ms: now.to_wall_ms(a.reset),
        sent_ms: now.to_wall_ms(a.sent),
        limit: a.limit,
    })
}

fn pause_fact(inner: &Inner, now: Now) -> Option<Fact> {
    let (until, storms) = inner.policy.pause_at(now.mono)?;
    Some(Fact::Pause {
        until_ms: now.to_wall_ms(until),
        storms,
    })
}

/// Models as the state file and other instances name them.
fn models_name(models: &Models) -> String {
    match models {
        Models::Named(name) => name.to_string(),
        Models::Free => state::FREE_MODELS.to_string(),
    }
}

fn models_of(name: &str) -> Models {
    if name == state::FREE_MODELS {
        Models::Free
    } else {
        Models::Named(name.into())
    }
}

/// Account groups: keys of one account share a number; keys without one get their own.
fn groups_of(entries: &[KeyEntry]) -> Vec<usize> {
    let mut accounts: HashMap<&str, usize> = HashMap::new();
    let mut groups = Vec::with_capacity(entries.len());
    for (id, entry) in entries.iter().enumerate() {
        groups.push(match entry.account.as_deref() {
            // Account groups are numbered past the key ids, so they never collide.
            Some(account) => {
                let next = entries.len() + accounts.len();
                *accounts.entry(account).or_insert(next)
            }
            None => id,
        });
    }
    groups
}

/// Each key's account as instances sharing the pool name it (see [`Flight`]): a key
/// with an account by a hash of the account's name (with its provider and pool, as the
/// keys file gives them), so that instances whose keys files list different keys of the
/// account still count it as one; a key without one by its fingerprint.
fn accounts_of(entries: &[KeyEntry], prints: &[String]) -> Vec<Arc<str>> {
    let mut names: HashMap<String, Arc<str>> = HashMap::new();
    entries
        .iter()
        .zip(prints)
        .map(|(entry, print)| {
            let name = match &entry.account {
                Some(account) => {
                    let provider = entry.provider.map_or("", |p| p.name());
                    let pool = entry.pool.as_deref().unwrap_or("");
                    crate::persist::shared::account_name(&format!("{provider}/{pool}/{account}"))
                }
                None => print.clone(),
            };
            Arc::clone(names.entry(name.clone()).or_insert_with(|| Arc::from(name)))
        })
        .collect()
}

fn index_of_accounts(accounts: &[Arc<str>]) -> HashMap<Arc<str>, KeyId> {
    let mut index = HashMap::with_capacity(accounts.len());
    for (id, account) in accounts.iter().enumerate() {
        index.entry(Arc::clone(account)).or_insert(id);
    }
    index
}

/// Each fingerprint's first key (as a scan of `prints` would find it).
fn index_of_prints(prints: &[String]) -> HashMap<String, KeyId> {
    let mut index = HashMap::with_capacity(prints.len());
    for (id, print) in prints.iter().enumerate() {
        index.entry(print.clone()).or_insert(id);
    }
    index
}

fn index_of(entries: &[Arc<KeyEntry>]) -> HashMap<ApiKey, KeyId> {
    entries
        .iter()
        .enumerate()
        .map(|(id, e)| (e.key.clone(), id))
        .collect()
}

fn snapshot(inner: &Inner, now: Now) -> StateFile {
    let mut file = StateFile::default();
    for id in 0..inner.entries.len() {
        let slot = inner.policy.slot(id);
        let mut saved = save(slot.state, now);
        saved.last_used_ms = inner.last_used[id].map(epoch_ms);
        if slot.state.usable() {
            saved.model_rests = slot
                .model_rests_at(now.mono)
                .map(|r| SavedModelRest {
                    models: models_name(&r.models),
                    until_ms: now.to_wall_ms(r.until),
                })
                .collect();
        }
        file.keys.insert(inner.prints[id].clone(), saved);
    }
    file
}

/// A key's state as remembered. Rests that are over are remembered as ready.
pub fn save(state: KeyState, now: Now) -> Saved {
    let (state, until_ms) = match state {
        KeyState::Cooling { until } if until > now.mono => {
            (SavedState::Cooling, Some(now.to_wall_ms(until)))
        }
        KeyState::OutOfCredits { until } if until > now.mono => {
            (SavedState::OutOfCredits, Some(now.to_wall_ms(until)))
        }
        KeyState::Invalid => (SavedState::Invalid, None),
        // Disabled is the keys file's to say, not the state file's.
        _ => (SavedState::Ready, None),
    };
    Saved {
        state,
        until_ms,
        last_used_ms: None,
        model_rests: Vec::new(),
    }
}

/// Remembered model rests that still run.
fn restore_model_rests(saved: &Saved, now: Now) -> Vec<ModelRest> {
    saved
        .model_rests
        .iter()
        .take(crate::rotation::policy::MOST_MODEL_RESTS)
        .filter_map(|r| {
            let until = clamp_remembered(now.to_mono(r.until_ms), now).filter(|u| *u > now.mono)?;
            Some(ModelRest {
                models: models_of(&r.models),
                until,
                strikes: 0,
            })
        })
        .collect()
}

fn seconds_until(until: Instant, now: Instant) -> u64 {
    until.saturating_duration_since(now).as_secs_f64().ceil() as u64
}

/// A remembered rest ends no later than the longest rest the proxy gives: a damaged (or
/// edited) state file cannot rest a key for years, nor send a `Retry-After` that large.
fn clamp_remembered(until: Option<Instant>, now: Now) -> Option<Instant> {
    let longest = now
        .mono
        .checked_add(crate::rotation::classify::LONGEST_REST)?;
    until.map(|until| until.min(longest))
}

/// A remembered state as a live one. Rests that ended while we were down are over.
pub fn restore(saved: &Saved, now: Now) -> KeyState {
    let until = clamp_remembered(saved.until_ms.and_then(|ms| now.to_mono(ms)), now)
        .filter(|until| *until > now.mono);
    match (saved.state, until) {
        (SavedState::Cooling, Some(until)) => KeyState::Cooling { until },
        (SavedState::OutOfCredits, Some(until)) => KeyState::OutOfCredits { until },
        (SavedState::Invalid, _) => KeyState::Invalid,
        _ => KeyState::Ready,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> KeyEntry {
        let raw = format!("sk-test-{}", (b'a' + n) as char).repeat(3);
        KeyEntry {
            account: None,
            disabled: false,
            enabled_at: None,
            key: ApiKey::parse(&raw).unwrap(),
            label: None,
            provider: None,
            pool: None,
        }
    }

    #[test]
    fn remembered_times_of_any_size_restore_without_panic() {
        // SystemTime's range is the platform's: Windows' ends in the year 30828.
        assert_eq!(from_epoch_ms(u64::MAX).is_some(), cfg!(unix));
        let t = now();
        let now_ms = epoch_ms(t.wall);
        let cases = [
            (0, false),
            (now_ms - 1, false),
            (now_ms + 60_000, true),
            (u64::MAX / 2, cfg!(unix)),
            (u64::MAX, cfg!(unix)),
        ];
        for (ms, resting) in cases {
            let saved = Saved {
                state: SavedState::Cooling,
                until_ms: Some(ms),
                last_used_ms: Some(ms),
                model_rests: Vec::new(),
            };
            let state = restore(&saved, t);
            assert_eq!(matches!(state, KeyState::Cooling { .. }), resting, "{ms}");
            // Through a whole pool too: restored, reported and saved again.
            let remembered = StateFile {
                version: 1,
                keys: [(state::fingerprint(&entry(0).key), saved)].into(),
            };
            let pool = Pool::new(vec![entry(0)], &remembered, Strategy::RoundRobin, t);
            let _ = pool.report(t);
            let _ = save(state, t);
        }
    }

    #[test]
    fn a_remembered_rest_is_clamped_to_the_longest_rest() {
        let t = now();
        for ms in [u64::MAX / 2, epoch_ms(t.wall) + 400 * 24 * 3600 * 1000] {
            let saved = Saved {
                state: SavedState::Cooling,
                until_ms: Some(ms),
                last_used_ms: None,
                model_rests: Vec::new(),
            };
            match restore(&saved, t) {
                KeyState::Cooling { until } => {
                    assert!(
                        until <= t.mono + crate::rotation::classify::LONGEST_REST,
                        "{ms}"
                    );
                }
                // Where the platform cannot hold the time, the rest simply ends.
                other => assert!(!cfg!(unix) && ms == u64::MAX / 2, "{ms}: {other:?}"),
            }
        }
    }

    /// A pool of `entries` with nothing remembered.
    fn fresh(entries: Vec<KeyEntry>, t: Now) -> Pool {
        Pool::new(entries, &StateFile::default(), Strategy::RoundRobin, t)
    }

    /// `t`, `by` later on both clocks.
    fn shifted(t: Now, by: Duration) -> Now {
        Now {
            mono: t.mono + by,
            wall: t.wall + by,
        }
    }

    fn now() -> Now {
        Now {
            mono: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    fn rest(secs: u64) -> Outcome {
        Outcome::RateLimited {
            rest: Duration::from_secs(secs),
            longest: Duration::from_secs(86_400),
            scope: crate::rotation::policy::Scope::Key,
        }
    }

    /// Sends an attempt with `entry` (picked among the others first) and records it.
    fn record(pool: &Pool, entry: &KeyEntry, outcome: Outcome, t: Now) -> Option<Change> {
        let mut tried = Vec::new();
        loop {
            let (ticket, _) = pool.pick(t, &tried, None).expect("the key is ready");
            if **ticket.entry() == *entry {
                return ticket.finish(outcome, None, t);
            }
            tried.push(Arc::clone(ticket.entry()));
        }
    }

    #[test]
    fn outcomes_are_recorded_by_key_not_by_position() {
        let t = now();
        let pool = fresh(vec![entry(0), entry(1)], t);
        let (first, _) = pool.pick(t, &[], None).unwrap();
        assert_eq!(**first.entry(), entry(0));
        // The file changes while the request is in flight: key 0 moves to position 1.
        pool.replace(vec![entry(2), entry(0)]);
        assert!(first.finish(rest(60), None, t).is_some());
        let picks: Vec<KeyEntry> = (0..3)
            .map(|_| (**pool.pick(t, &[], None).unwrap().0.entry()).clone())
            .collect();
        assert_eq!(picks, [entry(2), entry(2), entry(2)]);
        // A removed key's outcome is dropped.
        let (ticket, _) = pool.pick(t, &[], None).unwrap();
        pool.replace(vec![entry(3)]);
        assert_eq!(ticket.finish(Outcome::Invalid, None, t), None);
    }

    #[test]
    fn reloads_keep_rests_clear_invalid_marks_and_add_ready_keys() {
        let t = now();
        let pool = fresh(vec![entry(0), entry(1)], t);
        let _ = record(&pool, &entry(0), rest(60), t);
        let _ = record(&pool, &entry(1), Outcome::Invalid, t);
        let reloaded = pool.replace(vec![entry(0), entry(1), entry(3)]);
        assert_eq!(
            reloaded,
            Reloaded {
                added: 1,
                removed: 0,
                total: 3
            }
        );
        assert_eq!(
            pool.ready(t),
            2,
            "key 0 still rests; key 1's invalid mark is cleared"
        );
        assert_eq!(
            pool.replace(vec![entry(3)]),
            Reloaded {
                added: 0,
                removed: 2,
                total: 1
            }
        );
    }

    #[test]
    fn tried_keys_are_skipped_across_a_reload() {
        let t = now();
        let pool = fresh(vec![entry(0), entry(1)], t);
        let first = Arc::clone(pool.pick(t, &[], None).unwrap().0.entry());
        pool.replace(vec![entry(1), entry(0)]);
        let second = Arc::clone(
            pool.pick(t, std::slice::from_ref(&first), None)
                .unwrap()
                .0
                .entry(),
        );
        assert_ne!(*second, *first);
        assert!(pool.pick(t, &[first, second], None).is_none());
    }

    #[test]
    fn rests_survive_a_restart_through_the_state_file() {
        let t = now();
        let pool = fresh(vec![entry(0), entry(1), entry(2)], t);
        let _ = record(&pool, &entry(0), rest(300), t);
        let _ = record(&pool, &entry(1), Outcome::Invalid, t);
        let remembered = pool.take_snapshot(t, true).unwrap();
        assert_eq!(pool.take_snapshot(t, true), None, "nothing changed since");

        // Restarted 100 s later: 200 s of rest are left.
        let later = shifted(t, Duration::from_secs(100));
        let restarted = Pool::new(
            vec![entry(0), entry(1), entry(2)],
            &remembered,
            Strategy::RoundRobin,
            later,
        );
        assert_eq!(restarted.ready(later), 1);
        let outlook = restarted.outlook(later, None);
        assert_eq!(
            outlook.next_free,
            Some(later.mono + Duration::from_secs(200))
        );
        // Restarted after the rest ended: ready again.
        let much_later = shifted(t, Duration::from_secs(400));
        assert_eq!(
            Pool::new(
                vec![entry(0)],
                &remembered,
                Strategy::RoundRobin,
                much_later
            )
            .ready(much_later),
            1
        );
    }

    #[test]
    fn attempts_count_in_flight_until_finished_or_dropped() {
        let t = now();
        let pool = fresh(vec![entry(0)], t);
        // The upstream says one request is left: the attempt in flight takes it.
        let served = Outcome::Served {
            budget: Some(crate::rotation::policy::Budget {
                remaining: 1,
                reset: Duration::from_secs(30),
                limit: None,
            }),
        };
        let (first, _) = pool.pick(t, &[], None).unwrap();
        assert!(
            pool.pick(t, &[], None).is_none(),
            "the slow start: one probe"
        );
        assert_eq!(first.finish(served, None, t), None);
        let (ticket, _) = pool.pick(t, &[], None).unwrap();
        assert!(pool.pick(t, &[], None).is_none(), "one in flight, one left");
        drop(ticket);
        let (third, _) = pool
            .pick(t, &[], None)
            .expect("the dropped attempt gave its room back");
        assert!(pool.pick(t, &[], None).is_none());
        // A reload keeps the count of attempts under way.
        pool.replace(vec![entry(0), entry(1)]);
        assert_eq!(**pool.pick(t, &[], None).unwrap().0.entry(), entry(1));
        drop(third);
        assert!(pool.pick(t, &[], None).is_some());
    }

    #[test]
    fn model_rests_are_reported_with_their_scope_and_survive_a_restart() {
        let t = now();
        let pool = fresh(vec![entry(0)], t);
        let (ticket, _) = pool.pick(t, &[], Some("x/y:free")).unwrap();
        let limited = Outcome::RateLimited {
            rest: Duration::from_secs(300),
            longest: Duration::from_secs(86_400),
            scope: crate::rotation::policy::Scope::FreeModels,
        };
        assert!(ticket.finish(limited, None, t).is_some());
        let report = pool.report(t);
        assert_eq!(report.keys[0].state, KeyStatus::Ready);
        assert_eq!(
            report.keys[0].model_rests,
            [ScopedRest {
                scope: "free models".into(),
                seconds_left: 300
            }]
        );
        assert!(pool.pick(t, &[], Some("x/z:free")).is_none());
        let remembered = pool.take_snapshot(t, false).unwrap();
        let later = shifted(t, Duration::from_secs(100));
        let restarted = Pool::new(vec![entry(0)], &remembered, Strategy::RoundRobin, later);
        assert!(restarted.pick(later, &[], Some("x/z:free")).is_none());
        assert!(restarted.pick(later, &[], Some("x/paid")).is_some());
        assert_eq!(
            restarted.report(later).keys[0].model_rests[0].seconds_left,
            200
        );
    }

    /// Every fact a pool sends, as another instance would get it.
    fn shared_facts(pool: &Pool) -> std::sync::mpsc::Receiver<Fact> {
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        pool.share(tx, Arc::new(Ledger::default()));
        rx
    }

    type Released = (String, Ended);

    /// A [`Flight`] that answers reservations as told (granted when not told) and keeps
    /// what it was asked.
    #[derive(Default)]
    struct Ledger {
        answers: Mutex<HashMap<String, Reserve>>,
        asked: Mutex<Vec<(String, u32, bool)>>,
        released: Mutex<Vec<Released>>,
    }

    impl Ledger {
        /// Answers reservations with `account` so from now on.
        fn answer(&self, account: impl Into<String>, reserve: Reserve) {
            self.answers.lock().unwrap().insert(account.into(), reserve);
        }
    }

    impl Flight for Ledger {
        fn reserve(&self, account: &str, ask: Ask) -> Reserve {
            let asked = (account.into(), ask.cap, ask.first);
            self.asked.lock().unwrap().push(asked);
            let answers = self.answers.lock().unwrap();
            answers.get(account).copied().unwrap_or(Reserve::Granted)
        }
        fn linked(&self) -> bool {
            true
        }
        fn release(&self, account: &str, ended: Ended) {
            self.released.lock().unwrap().push((account.into(), ended));
        }
    }

    /// A pool of `entries` that reserves through a [`Ledger`], and where its facts go.
    fn shared_with_ledger(
        entries: Vec<KeyEntry>,
        t: Now,
    ) -> (Pool, Arc<Ledger>, std::sync::mpsc::Receiver<Fact>) {
        let pool = fresh(entries, t);
        let ledger = Arc::new(Ledger::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        pool.share(tx, Arc::clone(&ledger) as Arc<dyn Flight>);
        (pool, ledger, rx)
    }

    fn with_budget(remaining: u32) -> Outcome {
        Outcome::Served {
            budget: Some(crate::rotation::policy::Budget {
                remaining,
                reset: Duration::from_secs(10),
                limit: None,
            }),
        }
    }

    #[test]
    fn attempts_with_an_account_that_announces_a_budget_are_reserved_and_released() {
        let t = now();
        let (pool, ledger, _facts) = shared_with_ledger(vec![entry(0)], t);
        let account = state::fingerprint(&entry(0).key);
        // Nothing known of the budget yet: the slow start's probe, one among all the
        // instances, and counted, so that the others count it against the budget its
        // answer announces.
        let _ = record(&pool, &entry(0), with_budget(3), t);
        // Known: each attempt is reserved against it and released with its answer's.
        let _ = record(&pool, &entry(0), with_budget(2), t);
        let reset = epoch_ms(t.wall + Duration::from_secs(10));
        assert_eq!(
            *ledger.asked.lock().unwrap(),
            [(account.clone(), 1, true), (account.clone(), 3, false)]
        );
        assert_eq!(
            *ledger.released.lock().unwrap(),
            [
                (
                    account.clone(),
                    Ended::Served {
                        budget: Some((3, reset)),
                        window: None
                    }
                ),
                (
                    account.clone(),
                    Ended::Served {
                        budget: Some((2, reset)),
                        window: None
                    }
                )
            ]
        );
        // An attempt dropped unfinished (never sent) is released too; a failure carries
        // no budget.
        drop(pool.pick(t, &[], None).unwrap());
        let _ = record(&pool, &entry(0), Outcome::Failed, t);
        let released = ledger.released.lock().unwrap();
        let other = (account, Ended::Other);
        assert_eq!(released[2..], [other.clone(), other]);
    }

    #[test]
    fn an_answer_to_another_instance_ends_the_slow_start_here() {
        let t = now();
        let (pool, ledger, _facts) = shared_with_ledger(vec![entry(0)], t);
        let account = state::fingerprint(&entry(0).key);
        // Nothing known here: the first attempt is the slow start's probe, which Redis
        // lets go with word that the account answered another instance.
        ledger.answer(account.clone(), Reserve::Answered);
        let (first, _) = pool.pick(t, &[], None).unwrap();
        // So the next goes at once, while the first is under way: counted in Redis
        // with no cap of this instance's, until an answer here says the budget.
        let (second, _) = pool.pick(t, &[], None).unwrap();
        let asked = [
            (account.clone(), 1, true),
            (account.clone(), u32::MAX, true),
        ];
        assert_eq!(*ledger.asked.lock().unwrap(), asked);
        first.finish(Outcome::SERVED, None, t);
        drop(second);
        let served = (
            account.clone(),
            Ended::Served {
                budget: None,
                window: None,
            },
        );
        assert_eq!(
            *ledger.released.lock().unwrap(),
            [served, (account.clone(), Ended::Other)]
        );
        // Answered here: an account without a budget is no longer reserved.
        let (third, _) = pool.pick(t, &[], None).unwrap();
        drop(third);
        assert_eq!(ledger.asked.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_counted_window_is_reserved_and_without_word_from_redis_the_part_here_decides() {
        let t = now();
        let after = |ms: u64| shifted(t, Duration::from_millis(ms));
        let (pool, ledger, _facts) = shared_with_ledger(vec![entry(0)], t);
        let account = state::fingerprint(&entry(0).key);
        // A 429 ends a window whose start nobody knows; the next, from t + 5 s, serves
        // two and ends with a 429: both are counted in Redis with that window's start.
        let _ = record(&pool, &entry(0), Outcome::SERVED, t);
        let _ = record(&pool, &entry(0), rest(5), t);
        let t2 = after(5_000);
        let _ = record(&pool, &entry(0), Outcome::SERVED, t2);
        let _ = record(&pool, &entry(0), Outcome::SERVED, t2);
        let _ = record(&pool, &entry(0), rest(5), after(5_100));
        let start = Some(epoch_ms(t2.wall));
        let released: Vec<Ended> = ledger.released.lock().unwrap()[1..]
            .iter()
            .map(|(_, e)| *e)
            .collect();
        let served = Ended::Served {
            budget: None,
            window: start,
        };
        // The 429 began a rest: the window is full for all until it ends.
        let full = Ended::Limited {
            window: epoch_ms(t2.wall),
            until: epoch_ms(after(10_100).wall),
        };
        assert_eq!(released, [served, served, full]);
        // Redis gives no word in the next window: this instance's own part (two) caps
        // the attempts, as without Redis.
        ledger.answer(account, Reserve::Unavailable);
        let t3 = after(10_100);
        let first = pool.pick(t3, &[], None).expect("within the part");
        let second = pool.pick(t3, &[], None).expect("within the part");
        assert!(pool.pick(t3, &[], None).is_none(), "the part here is spent");
        drop((first, second));
    }

    /// A 429 marks its window full until the account's next window begins, even when
    /// the key itself rests longer (out of credits meanwhile).
    #[test]
    fn a_window_is_marked_full_until_the_next_begins_not_until_a_keys_own_rest() {
        let t = now();
        let after = |ms: u64| shifted(t, Duration::from_millis(ms));
        let acme = |n: u8| KeyEntry {
            account: Some("acme".into()),
            ..entry(n)
        };
        let (pool, ledger, _facts) = shared_with_ledger(vec![acme(0), acme(1)], t);
        let _ = record(&pool, &acme(0), Outcome::SERVED, t);
        let _ = record(&pool, &acme(0), rest(5), t);
        let t2 = after(5_000);
        // Two attempts with key 0: the first finds it out of credits for an hour, the
        // second gets a 429 for the account, whose next window begins in 10 s (the
        // window's first attempts were refused: the rest doubles).
        let other = [Arc::new(acme(1))];
        let (first, _) = pool.pick(t2, &other, None).unwrap();
        let (second, _) = pool.pick(t2, &other, None).unwrap();
        assert_eq!(**second.entry(), acme(0));
        let credits = Outcome::OutOfCredits {
            rest: Duration::from_secs(3600),
        };
        first.finish(credits, None, t2);
        second.finish(rest(5), None, t2);
        let last = ledger.released.lock().unwrap().last().unwrap().1;
        let full = Ended::Limited {
            window: epoch_ms(t2.wall),
            until: epoch_ms(after(15_000).wall),
        };
        assert_eq!(last, full, "not the key's hour");
    }

    #[test]
    fn a_refused_reservation_books_its_account_until_freed_and_the_next_key_goes() {
        let t = now();
        let (pool, ledger, _facts) = shared_with_ledger(vec![entry(0), entry(1)], t);
        let _ = record(&pool, &entry(0), with_budget(3), t);
        let _ = record(&pool, &entry(1), with_budget(3), t);
        let first = state::fingerprint(&entry(0).key);
        ledger.answer(first.clone(), Reserve::Refused);
        // Key 0's account is full elsewhere: key 1 goes, and key 0 is not asked again.
        let later = shifted(t, Duration::from_secs(1));
        for _ in 0..3 {
            let (ticket, _) = pool.pick(later, &[], None).unwrap();
            assert_eq!(**ticket.entry(), entry(1));
            ticket.finish(with_budget(3), None, later);
        }
        // The refused attempt left no trace of a sending: key 0 was last used at `t`.
        assert_eq!(
            pool.report(later).keys[0].last_used_ms,
            Some(epoch_ms(t.wall))
        );
        // Asked twice: its first attempt, and the refused one.
        let asked = ledger.asked.lock().unwrap().clone();
        assert_eq!(asked.iter().filter(|(a, ..)| *a == first).count(), 2);
        // A refused attempt is not released (it was never counted): one release, the
        // first attempt's.
        let released = ledger.released.lock().unwrap().clone();
        assert_eq!(released.iter().filter(|(a, _)| *a == first).count(), 1);
        // One of the others' attempts ends: key 0 is asked again.
        ledger.answers.lock().unwrap().clear();
        assert!(pool.freed(&first));
        let picked: Vec<KeyEntry> = (0..2)
            .map(|_| {
                let (ticket, _) = pool.pick(t, &[], None).unwrap();
                let e = (**ticket.entry()).clone();
                ticket.finish(with_budget(3), None, t);
                e
            })
            .collect();
        assert!(picked.contains(&entry(0)), "{picked:?}");
        // Redis too slow: the attempt goes, counted here (and in Redis when it can be),
        // and is released like a granted one.
        let before = ledger.released.lock().unwrap().len();
        ledger.answer(first.clone(), Reserve::Unavailable);
        ledger.answer(state::fingerprint(&entry(1).key), Reserve::Unavailable);
        let (ticket, _) = pool.pick(t, &[], None).unwrap();
        ticket.finish(with_budget(3), None, t);
        assert_eq!(ledger.released.lock().unwrap().len(), before + 1);
    }

    #[test]
    fn an_account_is_named_alike_on_instances_whose_keys_files_differ() {
        let with = |n: u8, account: &str| KeyEntry {
            account: Some(account.into()),
            ..entry(n)
        };
        let prints = |entries: &[KeyEntry]| -> Vec<String> {
            entries.iter().map(|e| state::fingerprint(&e.key)).collect()
        };
        let one = [with(0, "acme"), with(1, "acme"), entry(2)];
        let other = [with(4, "acme"), with(1, "acme"), with(0, "other")];
        let a = accounts_of(&one, &prints(&one));
        let b = accounts_of(&other, &prints(&other));
        assert_eq!(a[0], a[1]);
        assert_eq!(a[0], b[0], "whatever keys each file lists");
        assert_ne!(a[0], b[2]);
        assert_eq!(*a[2], state::fingerprint(&entry(2).key), "alone: its own");
        // The same name in another pool is another account.
        let elsewhere = [KeyEntry {
            pool: Some("work".into()),
            ..with(0, "acme")
        }];
        assert_ne!(accounts_of(&elsewhere, &prints(&elsewhere))[0], a[0]);
        // Nothing of the name shows.
        assert!(!a[0].contains("acme"), "{}", a[0]);
    }

    #[test]
    fn a_rest_learned_by_one_pool_holds_in_another_and_is_never_shortened() {
        let t = now();
        let a = fresh(vec![entry(0), entry(1)], t);
        let b = fresh(vec![entry(1), entry(0)], t);
        let sent = shared_facts(&a);
        let _ = record(&a, &entry(0), rest(300), t);
        let facts: Vec<Fact> = sent.try_iter().collect();
        assert!(
            matches!(&facts[..], [Fact::Rest { until_ms, strikes: 1, reason: Reason::RateLimited, .. }]
                if *until_ms == epoch_ms(t.wall) + 300_000),
            "{facts:?}"
        );
        for fact in &facts {
            assert!(b.apply(fact, t));
            assert!(!b.apply(fact, t), "the same fact twice changes nothing");
        }
        // B picks only key 1 now, whatever its order.
        let (ticket, _) = b.pick(t, &[], None).unwrap();
        assert_eq!(**ticket.entry(), entry(1));
        drop(ticket);
        assert_eq!(b.report(t).keys[1].seconds_left, Some(300));
        // A shorter rest from elsewhere does not shorten it; a longer one lengthens it.
        let k = state::fingerprint(&entry(0).key);
        let shorter = Fact::Rest {
            k: k.clone(),
            until_ms: epoch_ms(t.wall) + 10_000,
            strikes: 0,
            reason: Reason::RateLimited,
        };
        assert!(!b.apply(&shorter, t));
        assert_eq!(b.report(t).keys[1].seconds_left, Some(300));
        let longer = Fact::Rest {
            k,
            until_ms: epoch_ms(t.wall) + 900_000,
            strikes: 2,
            reason: Reason::RateLimited,
        };
        assert!(b.apply(&longer, t));
        assert_eq!(b.report(t).keys[1].seconds_left, Some(900));
        // What B sends when Redis (re)appears holds the merged rest.
        assert!(b.facts(t).iter().any(|f| matches!(f,
            Fact::Rest { until_ms, strikes: 2, .. } if *until_ms == epoch_ms(t.wall) + 900_000)));
        // A fact for a key B does not have is ignored.
        let other = Fact::Invalid {
            k: state::fingerprint(&entry(5).key),
        };
        assert!(!b.apply(&other, t));
    }

    #[test]
    fn marks_and_pauses_from_elsewhere_merge_in_either_order() {
        let t = now();
        let k = state::fingerprint(&entry(0).key);
        let facts = [
            Fact::Invalid { k: k.clone() },
            Fact::Pause {
                until_ms: epoch_ms(t.wall) + 5_000,
                storms: 1,
            },
            Fact::ModelRest {
                k: k.clone(),
                models: state::FREE_MODELS.into(),
                until_ms: epoch_ms(t.wall) + 60_000,
                strikes: 1,
            },
        ];
        let forward = fresh(vec![entry(0), entry(1)], t);
        let backward = fresh(vec![entry(0), entry(1)], t);
        for fact in &facts {
            let _ = forward.apply(fact, t);
        }
        for fact in facts.iter().rev() {
            let _ = backward.apply(fact, t);
        }
        for pool in [&forward, &backward] {
            let report = pool.report(t);
            assert_eq!(report.paused_seconds, Some(5));
            assert!(pool.pick(t, &[], None).is_none(), "paused");
            let later = shifted(t, Duration::from_secs(6));
            let (ticket, _) = pool.pick(later, &[], Some("a/b:free")).unwrap();
            assert_eq!(**ticket.entry(), entry(1), "key 0 is invalid");
        }
        // The invalid key's model rest was not taken (an invalid key serves nothing).
        assert_eq!(forward.report(t).keys[0].state, KeyStatus::Invalid);
        forward.apply(&Fact::Valid { k }, t);
        assert_eq!(forward.report(t).keys[0].state, KeyStatus::Ready);
    }

    #[test]
    fn disabling_is_shared_and_survives_a_reload_until_enabled() {
        let t = now();
        let a = fresh(vec![entry(0), entry(1)], t);
        let sent = shared_facts(&a);
        let mut off = entry(1);
        off.disabled = true;
        a.replace(vec![entry(0), off.clone()]);
        let facts: Vec<Fact> = sent.try_iter().collect();
        let k = state::fingerprint(&entry(1).key);
        assert_eq!(facts, [Fact::Off { k: k.clone() }]);

        let b = fresh(vec![entry(0), entry(1)], t);
        assert!(b.apply(&facts[0], t));
        assert_eq!(b.report(t).keys[1].state, KeyStatus::Disabled);
        // B's own keys file changes: the key stays disabled.
        b.replace(vec![entry(0), entry(1), entry(2)]);
        assert_eq!(b.report(t).keys[1].state, KeyStatus::Disabled);
        // Enabled on A (a new `enabled_at`): A says so, and B takes the key back.
        let mut on = entry(1);
        on.enabled_at = Some(1_900_000_000_000);
        a.replace(vec![entry(0), on]);
        let facts: Vec<Fact> = sent.try_iter().collect();
        assert_eq!(facts, [Fact::On { k }]);
        assert!(b.apply(&facts[0], t));
        assert_eq!(b.report(t).keys[1].state, KeyStatus::Ready);
    }

    #[test]
    fn a_full_outbox_never_blocks_and_counts_what_it_lost() {
        let t = now();
        let pool = fresh(vec![entry(0), entry(1)], t);
        let (tx, _rx) = std::sync::mpsc::sync_channel(0);
        pool.share(tx, Arc::new(Ledger::default()));
        let _ = record(&pool, &entry(0), rest(60), t);
        assert_eq!(pool.dropped_facts(), 1);
    }

    #[test]
    fn picking_remembers_when_a_key_was_last_used() {
        let t = now();
        let pool = fresh(vec![entry(0)], t);
        let _ = pool.pick(t, &[], None);
        let file = pool.take_snapshot(t, true).unwrap();
        let saved = file.keys.values().next().unwrap();
        assert_eq!(saved.last_used_ms, Some(epoch_ms(t.wall)));
        assert_eq!(saved.state, SavedState::Ready);
    }
}
