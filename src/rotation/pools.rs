//! The pools of one process: the keys file's keys grouped by pool (a key's `"pool"`, else
//! its `"provider"`, else `--provider`'s default pool), and the registry that holds one
//! [`Pool`] per pool, each with its own rotation, rests, counters and waiting room.
//!
//! Invariants: the default pool (named after `--provider`) always exists, first, even
//! with no keys, so the bare base URL always has a pool. One pool serves one provider at
//! one upstream. A reload keeps a pool (its `Pool`, hence its state) when its name,
//! provider and upstream stay, and replaces its keys as `Pool::replace` does; pools
//! appear and disappear with the file. A pool that goes is emptied: a request still
//! holding it by `Arc` (a retry, a waiter) finds no key, so a removed key is never sent
//! again. Grouping is pure.

use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;

use crate::keys::store::{KeyEntry, RESERVED_POOL_NAMES};
use crate::persist::shared::Fact;
use crate::persist::state::StateFile;
use crate::rotation::policy::Strategy;
use crate::rotation::pool::{Now, Pool, Reloaded};
use crate::rotation::provider::{self, Provider};
use crate::rotation::waiting::Room;

/// Where each pool's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    /// `--provider`: the default pool's provider, and its name.
    pub default: Provider,
    /// The default pool's base URL (`--upstream`, else the provider's).
    pub default_url: String,
    /// `--pool-upstream NAME=URL`, checked: a pool's base URL instead of its provider's.
    pub overrides: Vec<(String, String)>,
}

impl Upstreams {
    /// The base URL of pool `name` serving `provider`, or why it has none.
    pub fn of(&self, name: &str, provider: Provider) -> Result<String, String> {
        if let Some((_, url)) = self.overrides.iter().find(|(n, _)| n == name) {
            return Ok(url.clone());
        }
        // A pool of `--provider`'s goes where `--upstream` sends the default pool: keys
        // meant for a self-hosted gateway never go to the public API behind its back.
        if provider == self.default {
            return Ok(self.default_url.clone());
        }
        provider.base_url().map(str::to_string).ok_or_else(|| {
            format!(
                "pool '{name}' is for {provider}, which has no base URL of its own: give it one with --pool-upstream {name}=https://…/v1"
            )
        })
    }
}

/// The keys of one pool, before it is built.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub provider: Provider,
    pub upstream: String,
    pub entries: Vec<KeyEntry>,
}

/// The pool a key serves in and its provider.
fn home(entry: &KeyEntry, default: Provider) -> (String, Provider) {
    let provider = entry.provider.unwrap_or(default);
    let name = match &entry.pool {
        Some(pool) => pool.clone(),
        None => provider.name().to_string(),
    };
    (name, provider)
}

/// The pool a key serves in, as `keys list` shows it: its name and provider.
pub fn home_of(entry: &KeyEntry, default: Provider) -> (String, Provider) {
    home(entry, default)
}

/// Whether the entries fit in pools: no pool has keys for two providers, and no pool is
/// named after a preset but serves another. Pure; `Err` says which pool and why.
pub fn check_homes<'e>(
    entries: impl IntoIterator<Item = &'e KeyEntry>,
    default: Provider,
) -> Result<(), String> {
    let mut seen: Vec<(String, Provider)> = Vec::new();
    for entry in entries {
        let (name, provider) = home(entry, default);
        if let Some(named) = Provider::parse(&name).filter(|p| *p != provider) {
            return Err(format!(
                "pool '{name}' is named after the provider {named}, but a key in it is for {provider}; give the key \"provider\":\"{named}\" or put it in a pool with another name"
            ));
        }
        match seen.iter().find(|(n, _)| *n == name) {
            Some((_, first)) if *first != provider => {
                return Err(format!(
                    "pool '{name}' has keys for {first} and for {provider} (a key without \"provider\" is for --provider's, {default}); one pool serves one provider, so give the keys different \"pool\" names"
                ));
            }
            Some(_) => {}
            None => seen.push((name, provider)),
        }
    }
    Ok(())
}

/// Splits the keys file's entries into pools: the default pool first (even empty), then
/// the others in the order their first key comes. Pure. Refuses a pool whose keys are for
/// several providers, a pool named after a preset that serves another, and a pool with
/// no base URL.
pub fn group(entries: Vec<KeyEntry>, upstreams: &Upstreams) -> Result<Vec<Group>, String> {
    let default = upstreams.default;
    check_homes(&entries, default)?;
    let mut groups = vec![Group {
        name: default.name().to_string(),
        provider: default,
        upstream: upstreams.default_url.clone(),
        entries: Vec::new(),
    }];
    for entry in entries {
        let (name, provider) = home(&entry, default);
        match groups.iter_mut().find(|g| g.name == name) {
            Some(group) => group.entries.push(entry),
            None => {
                let upstream = upstreams.of(&name, provider)?;
                groups.push(Group {
                    name,
                    provider,
                    upstream,
                    entries: vec![entry],
                });
            }
        }
    }
    Ok(groups)
}

/// One pool of the registry.
pub struct Member {
    pub name: String,
    pub provider: Provider,
    /// The API base, no trailing slash.
    pub upstream: String,
    pub pool: Arc<Pool>,
    /// Requests waiting for one of this pool's keys (`--wait`).
    pub room: Room,
}

impl Member {
    fn new(group: Group, remembered: &StateFile, strategy: Strategy, now: Now) -> Member {
        Member {
            pool: Arc::new(Pool::new(group.entries, remembered, strategy, now)),
            name: group.name,
            provider: group.provider,
            upstream: group.upstream,
            room: Room::default(),
        }
    }
}

/// What a reload did to one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChange {
    /// A pool that was there: its keys replaced.
    Kept(String, Reloaded),
    /// A new pool (or one whose provider or upstream changed), with this many keys.
    New(String, usize),
    Gone(String),
}

/// Where a pool's facts go, and where its attempts are reserved (see [`Sharing`]).
type Outbox = (SyncSender<Fact>, Arc<dyn Flight>);

/// Every pool of the process.
pub struct Pools {
    upstreams: Upstreams,
    strategy: Strategy,
    /// The default pool first. Replaced whole on a reload; readers clone the `Arc`.
    members: RwLock<Arc<[Arc<Member>]>>,
    /// Where the pools' facts go with `--redis`, and where their attempts are reserved
    /// (see [`Sharing`]); new pools share too.
    outbox: Mutex<Option<Outbox>>,
    /// Every pool name this process has served: a request for one that has (for now) no
    /// keys gets 404, never the default pool's key and upstream.
    seen: Mutex<Vec<String>>,
}

impl Pools {
    /// The pools of `entries`, each key starting as `remembered` says.
    pub fn new(
        entries: Vec<KeyEntry>,
        upstreams: Upstreams,
        remembered: &StateFile,
        strategy: Strategy,
        now: Now,
    ) -> Result<Pools, String> {
        let members: Arc<[Arc<Member>]> = group(entries, &upstreams)?
            .into_iter()
            .map(|g| Arc::new(Member::new(g, remembered, strategy, now)))
            .collect();
        let seen = members.iter().map(|m| m.name.clone()).collect();
        Ok(Pools {
            upstreams,
            strategy,
            members: RwLock::new(members),
            outbox: Mutex::new(None),
            seen: Mutex::new(seen),
        })
    }

    /// Every pool, the default one first.
    pub fn all(&self) -> Arc<[Arc<Member>]> {
        Arc::clone(&self.members.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The default pool (`--provider`'s, at the bare base URL).
    pub fn default_pool(&self) -> Arc<Member> {
        Arc::clone(&self.all()[0])
    }

    /// The pool called `name`.
    pub fn find(&self, name: &str) -> Option<Arc<Member>> {
        self.all().iter().find(|m| m.name == name).cloned()
    }

    /// Whether a path's first segment `name` stands for a pool, with keys or not: a
    /// preset's name, a `--pool-upstream` name, or a pool this process has served. A
    /// request for one that is not here gets 404 rather than the default pool.
    pub fn is_pool_name(&self, name: &str) -> bool {
        // Most requests at the bare base URL start `/api/…` or `/v1/…`: answered before
        // any lock (no pool may have such a name).
        if RESERVED_POOL_NAMES.contains(&name) {
            return false;
        }
        is_provider_name(name)
            || self.upstreams.overrides.iter().any(|(n, _)| n == name)
            || self
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|n| n == name)
    }

    /// The pools' names, for messages: `openrouter, gemini, work`.
    pub fn names(&self) -> String {
        self.all()
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Keys in every pool.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.all().iter().map(|m| m.pool.len()).sum()
    }

    /// Replaces the keys (the keys file changed): each pool that stays keeps its state
    /// (see `Pool::replace`); a new pool (or one whose provider or upstream changed)
    /// starts from what the old pools knew of its keys, so a key moved between pools
    /// keeps its rest. A pool that goes is emptied and its waiters woken: a request still
    /// holding it (a retry, a waiter) finds no key, and no removed or moved key is sent
    /// again. Nothing changes when the new keys do not group.
    pub fn replace(&self, entries: Vec<KeyEntry>, now: Now) -> Result<Vec<PoolChange>, String> {
        let groups = group(entries, &self.upstreams)?;
        let old = self.all();
        let mut remembered: Option<StateFile> = None;
        let mut changes = Vec::new();
        let mut members = Vec::with_capacity(groups.len());
        for group in groups {
            let same = old.iter().find(|m| {
                m.name == group.name && m.provider == group.provider && m.upstream == group.upstream
            });
            match same {
                Some(member) => {
                    let reloaded = member.pool.replace(group.entries);
                    changes.push(PoolChange::Kept(member.name.clone(), reloaded));
                    members.push(Arc::clone(member));
                }
                None => {
                    changes.push(PoolChange::New(group.name.clone(), group.entries.len()));
                    let remembered = remembered.get_or_insert_with(|| self.snapshot(now));
                    let fresh = Member::new(group, remembered, self.strategy, now);
                    let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some((outbox, flight)) = outbox.as_ref() {
                        share_keys_only(&fresh, outbox.clone(), Arc::clone(flight));
                    }
                    members.push(Arc::new(fresh));
                }
            }
        }
        let mut gone = Vec::new();
        for member in old.iter() {
            if !members.iter().any(|m| Arc::ptr_eq(m, member)) {
                changes.push(PoolChange::Gone(member.name.clone()));
                gone.push(Arc::clone(member));
            }
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            for member in &members {
                if !seen.contains(&member.name) {
                    seen.push(member.name.clone());
                }
            }
        }
        *self.members.write().unwrap_or_else(PoisonError::into_inner) = members.into();
        for member in gone {
            member.pool.replace(Vec::new());
            member.room.wake();
        }
        Ok(changes)
    }

    /// What should be remembered of every pool, when any pool's state changed (see
    /// `Pool::take_snapshot`): one state file for all, its entries by key fingerprint.
    pub fn take_snapshot(&self, now: Now, with_use: bool) -> Option<StateFile> {
        let members = self.all();
        let taken: Vec<Option<StateFile>> = members
            .iter()
            .map(|m| m.pool.take_snapshot(now, with_use))
            .collect();
        if taken.iter().all(Option::is_none) {
            return None;
        }
        let mut whole = StateFile::default();
        for (member, taken) in members.iter().zip(taken) {
            let part = taken.unwrap_or_else(|| member.pool.snapshot(now));
            whole.version = part.version;
            whole.keys.extend(part.keys);
        }
        Some(whole)
    }

    /// What is remembered of every pool, whether or not it changed (for shutdown).
    pub fn snapshot(&self, now: Now) -> StateFile {
        let mut whole = StateFile::default();
        for member in self.all().iter() {
            let part = member.pool.snapshot(now);
            whole.version = part.version;
            whole.keys.extend(part.keys);
        }
        whole
    }
}

/// What `--redis` shares (`team.rs`): one pool's, or every pool's, facts.
pub trait Sharing: Send + Sync {
    /// Hands the facts learned from now on to `outbox`, and reserves attempts with
    /// accounts whose answers announce a budget through `flight`.
    fn share(&self, outbox: SyncSender<Fact>, flight: Arc<dyn Flight>);
    /// Facts the outbox had no room for.
    fn dropped_facts(&self) -> u64;
    /// Everything worth sharing, for the merge when Redis (re)appears.
    fn facts(&self, now: Now) -> Vec<Fact>;
    /// Merges another instance's fact; whether anything changed.
    fn apply(&self, fact: &Fact, now: Now) -> bool;
    /// Upstream attempts and 429s since the start.
    fn totals(&self) -> (u64, u64);
    /// Another instance's attempt with the account known as `account` (see
    /// [`Flight`]) ended: requests waiting for it look again. Whether any pool has it.
    fn freed(&self, account: &str) -> bool;
}

/// The attempts every instance sharing the pool makes with an account, counted in Redis
/// (`flights.rs`): those under way, so that together they never have more than its
/// announced budget (or the slow start's one probe) allows, and those in its counted
/// window, so that together they fill it as one instance would. An account is known by
/// its name in Redis (a hash of its keys-file account name, or its key's fingerprint).
pub trait Flight: Send + Sync {
    /// Asks for one more attempt with `account` on the terms of `ask`. Never waits on
    /// Redis more than a few milliseconds: when it would, the answer is
    /// [`Reserve::Unavailable`].
    fn reserve(&self, account: &str, ask: Ask) -> Reserve;
    /// Whether Redis answers reservations now (else they go on this instance's count).
    fn linked(&self) -> bool;
    /// Ends an attempt reserved (granted or unavailable), never waiting.
    fn release(&self, account: &str, ended: Ended);
}

/// What an attempt is reserved against (see [`Flight::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The most attempts under way with the account, every instance's together.
    pub cap: u32,
    /// The reset of the window the cap is for (epoch ms).
    pub reset_ms: u64,
    /// The account has not answered this instance yet: `cap` is the slow start's, which
    /// does not hold once another instance had an answer from it.
    pub first: bool,
    /// When the account's counted window began (epoch ms; answers announce no budget):
    /// every instance's attempts in it are counted together, and `cap` holds only once
    /// they sent what the window before served (and while the window is no older than
    /// that one was).
    pub window: Option<u64>,
}

/// How an attempt reserved with [`Flight::reserve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Answered (the account's slow start is over for every instance), with the budget
    /// the answer announced (remaining, reset in epoch ms), if any, and the start of the
    /// counted window it was reserved in (epoch ms), if any.
    Served {
        budget: Option<(u32, u64)>,
        window: Option<u64>,
    },
    /// Refused with a rate limit that began a rest, in a counted window: the window is
    /// full for every instance until the rest ends (both epoch ms).
    Limited { window: u64, until: u64 },
    /// Refused otherwise, failed, or never sent.
    Other,
}

/// What a reservation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Counted: the attempt may go.
    Granted,
    /// Counted, and a `first` attempt: another instance had an answer from the account,
    /// so the slow start is over here too.
    Answered,
    /// Counted, in a counted window in which other attempts went before it.
    Begun,
    /// The budget has no room for another with the attempts every instance has under
    /// way.
    Refused,
    /// Redis did not answer in time (or is away): the attempt goes, counted here, and
    /// Redis counts it when it can. Released like a granted one.
    Unavailable,
}

impl Sharing for Pool {
    fn share(&self, outbox: SyncSender<Fact>, flight: Arc<dyn Flight>) {
        Pool::share(self, outbox, flight);
    }
    fn dropped_facts(&self) -> u64 {
        Pool::dropped_facts(self)
    }
    fn facts(&self, now: Now) -> Vec<Fact> {
        Pool::facts(self, now)
    }
    fn apply(&self, fact: &Fact, now: Now) -> bool {
        Pool::apply(self, fact, now)
    }
    fn totals(&self) -> (u64, u64) {
        Pool::totals(self)
    }
    fn freed(&self, account: &str) -> bool {
        Pool::freed(self, account)
    }
}

/// Facts a pool other than the default one hands on: rests, marks, budgets (by key
/// fingerprint, so they reach that key's pool on every instance), not the pause, which
/// Redis holds once, for the default pool.
fn keys_only(fact: &Fact) -> bool {
    !matches!(fact, Fact::Pause { .. })
}

/// Lets `member` (not the default pool) share through `outbox`: its facts pass a small
/// thread that drops its pauses (see [`keys_only`]); the thread ends with the pool.
fn share_keys_only(member: &Member, outbox: SyncSender<Fact>, flight: Arc<dyn Flight>) {
    let (to_filter, facts) = mpsc::sync_channel::<Fact>(1024);
    let started = thread::Builder::new()
        .name(format!("redis-pool-{}", member.name))
        .spawn(move || {
            for fact in facts.iter().filter(keys_only) {
                // Full: lost like any fact the outbox has no room for.
                let _ = outbox.try_send(fact);
            }
        });
    if started.is_ok() {
        member.pool.share(to_filter, flight);
    } else {
        log::warn!(
            "pool {}: cannot start the thread that shares its key states; they stay on this instance",
            member.name
        );
    }
}

/// With several pools, instances share every pool's keys' states (a key's facts name
/// it by fingerprint, so they land in its pool); the pause of a storm is the default
/// pool's alone.
impl Sharing for Pools {
    fn share(&self, outbox: SyncSender<Fact>, flight: Arc<dyn Flight>) {
        let mut kept = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, member) in self.all().iter().enumerate() {
            if i == 0 {
                member.pool.share(outbox.clone(), Arc::clone(&flight));
            } else {
                share_keys_only(member, outbox.clone(), Arc::clone(&flight));
            }
        }
        *kept = Some((outbox, flight));
    }
    fn dropped_facts(&self) -> u64 {
        self.all().iter().map(|m| m.pool.dropped_facts()).sum()
    }
    fn facts(&self, now: Now) -> Vec<Fact> {
        let mut facts = Vec::new();
        for (i, member) in self.all().iter().enumerate() {
            let mine = member.pool.facts(now);
            facts.extend(mine.into_iter().filter(|f| i == 0 || keys_only(f)));
        }
        facts
    }
    fn apply(&self, fact: &Fact, now: Now) -> bool {
        let all = self.all();
        if !keys_only(fact) {
            return all[0].pool.apply(fact, now);
        }
        all.iter()
            .fold(false, |changed, m| m.pool.apply(fact, now) | changed)
    }
    fn totals(&self) -> (u64, u64) {
        self.all().iter().fold((0, 0), |(a, l), m| {
            let (attempts, limited) = m.pool.totals();
            (a + attempts, l + limited)
        })
    }
    fn freed(&self, account: &str) -> bool {
        let mut any = false;
        for member in self.all().iter() {
            if member.pool.freed(account) {
                member.room.wake();
                any = true;
            }
        }
        any
    }
}

/// The pool names a message lists when a path names no pool, with where each is served.
pub fn listing(pools: &Pools) -> String {
    let all = pools.all();
    let mut text = String::new();
    for (i, member) in all.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push('/');
        text.push_str(&member.name);
        text.push('/');
        if member.name != member.provider.name() {
            text.push_str(&format!(" ({})", member.provider));
        }
        if i == 0 {
            text.push_str(" (also the bare base URL)");
        }
    }
    text
}

/// Whether `name` is a preset's name, which names a pool only when that pool exists.
pub fn is_provider_name(name: &str) -> bool {
    provider::ALL.iter().any(|p| p.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::key::ApiKey;

    fn key(raw: &str, provider: Option<Provider>, pool: Option<&str>) -> KeyEntry {
        KeyEntry {
            provider,
            pool: pool.map(str::to_string),
            ..KeyEntry::bare(ApiKey::parse(raw).unwrap())
        }
    }

    fn upstreams() -> Upstreams {
        Upstreams {
            default: Provider::OpenRouter,
            default_url: "http://127.0.0.1:1/api/v1".into(),
            overrides: vec![("work".into(), "http://127.0.0.1:2/v1".into())],
        }
    }

    fn shape(groups: &[Group]) -> Vec<(String, Provider, String, Vec<String>)> {
        groups
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    g.provider,
                    g.upstream.clone(),
                    g.entries
                        .iter()
                        .map(|e| e.key.expose().to_string())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn keys_group_by_pool_then_provider_then_the_default_pool_first() {
        let groups = group(
            vec![
                key("AIza-1", Some(Provider::Gemini), None),
                key("sk-or-1", None, None),
                key("sk-w-1", Some(Provider::OpenAi), Some("work")),
                key("AIza-2", Some(Provider::Gemini), None),
                key("sk-or-2", Some(Provider::OpenRouter), None),
            ],
            &upstreams(),
        )
        .unwrap();
        assert_eq!(
            shape(&groups),
            [
                (
                    "openrouter".into(),
                    Provider::OpenRouter,
                    "http://127.0.0.1:1/api/v1".into(),
                    vec!["sk-or-1".into(), "sk-or-2".into()]
                ),
                (
                    "gemini".into(),
                    Provider::Gemini,
                    "https://generativelanguage.googleapis.com".into(),
                    vec!["AIza-1".into(), "AIza-2".into()]
                ),
                (
                    "work".into(),
                    Provider::OpenAi,
                    "http://127.0.0.1:2/v1".into(),
                    vec!["sk-w-1".into()]
                ),
            ]
        );
    }

    #[test]
    fn no_keys_is_one_empty_default_pool() {
        let groups = group(Vec::new(), &upstreams()).unwrap();
        assert_eq!(shape(&groups).len(), 1);
        assert_eq!(groups[0].name, "openrouter");
    }

    #[test]
    fn a_pool_serves_one_provider() {
        let err = group(
            vec![
                key("sk-1", None, Some("team")),
                key("sk-2", Some(Provider::Groq), Some("team")),
            ],
            &upstreams(),
        )
        .unwrap_err();
        assert!(
            err.starts_with("pool 'team' has keys for openrouter and for groq"),
            "{err}"
        );
        let err = group(vec![key("sk-1", None, Some("gemini"))], &upstreams()).unwrap_err();
        assert!(
            err.starts_with("pool 'gemini' is named after the provider gemini, but a key in it is for openrouter"),
            "{err}"
        );
    }

    #[test]
    fn a_custom_pool_needs_its_upstream() {
        let err = group(
            vec![key("sk-1", Some(Provider::Custom), None)],
            &upstreams(),
        )
        .unwrap_err();
        assert!(err.contains("--pool-upstream custom=https://"), "{err}");
        let err = group(
            vec![key("sk-1", Some(Provider::Custom), Some("lab"))],
            &upstreams(),
        )
        .unwrap_err();
        assert!(err.contains("--pool-upstream lab="), "{err}");
    }

    #[test]
    fn a_reload_keeps_pools_that_stay_and_follows_the_file() {
        let now = Now::read();
        let pools = Pools::new(
            vec![key("sk-or-1", None, None)],
            upstreams(),
            &StateFile::default(),
            Strategy::default(),
            now,
        )
        .unwrap();
        let default = pools.default_pool();
        let changes = pools
            .replace(
                vec![
                    key("sk-or-1", None, None),
                    key("AIza-1", Some(Provider::Gemini), None),
                ],
                now,
            )
            .unwrap();
        assert_eq!(
            changes,
            [
                PoolChange::Kept(
                    "openrouter".into(),
                    Reloaded {
                        added: 0,
                        removed: 0,
                        total: 1
                    }
                ),
                PoolChange::New("gemini".into(), 1),
            ]
        );
        assert!(Arc::ptr_eq(&default.pool, &pools.default_pool().pool));
        assert_eq!(pools.find("gemini").unwrap().pool.len(), 1);
        assert_eq!(pools.keys(), 2);
        // A file that does not group changes nothing.
        assert!(
            pools
                .replace(vec![key("sk-x", None, Some("gemini"))], now)
                .is_err()
        );
        assert_eq!(pools.names(), "openrouter, gemini");
        let changes = pools.replace(Vec::new(), now).unwrap();
        assert!(changes.contains(&PoolChange::Gone("gemini".into())));
        assert_eq!(pools.names(), "openrouter");
        assert_eq!(pools.default_pool().pool.len(), 0);
    }

    #[test]
    fn a_pool_that_goes_is_emptied_and_a_moved_key_keeps_its_rest() {
        let now = Now::read();
        let pools = Pools::new(
            vec![
                key("sk-or-1", None, Some("team")),
                key("AIza-1", Some(Provider::Gemini), None),
            ],
            upstreams(),
            &StateFile::default(),
            Strategy::default(),
            now,
        )
        .unwrap();
        // A request in flight holds the Gemini pool, and rests its key.
        let held = pools.find("gemini").unwrap();
        let (ticket, _) = held.pool.pick(now, &[], None).unwrap();
        let rest = crate::rotation::policy::Outcome::RateLimited {
            rest: std::time::Duration::from_secs(600),
            longest: std::time::Duration::from_secs(86_400),
            scope: crate::rotation::policy::Scope::Key,
        };
        ticket.finish(rest, None, now);
        // The key moves to the pool g2; the pool team goes.
        pools
            .replace(vec![key("AIza-1", Some(Provider::Gemini), Some("g2"))], now)
            .unwrap();
        // The request's retry finds no key in the pool that went.
        assert_eq!(held.pool.len(), 0);
        assert!(held.pool.pick(now, &[], None).is_none());
        // The moved key still rests in its new pool.
        let moved = pools.find("g2").unwrap().pool.report(now);
        assert_eq!(moved.keys.len(), 1);
        assert!(
            moved.keys[0].seconds_left.is_some_and(|s| s > 500),
            "{:?}",
            moved.keys[0].seconds_left
        );
        // A pool that went (or is named for later) is still a pool name, not the
        // default pool's path; other names are not.
        assert!(pools.find("team").is_none());
        assert!(pools.is_pool_name("team"));
        assert!(pools.is_pool_name("work"));
        assert!(pools.is_pool_name("anthropic"));
        assert!(!pools.is_pool_name("nobody"));
        for reserved in RESERVED_POOL_NAMES {
            assert!(!pools.is_pool_name(reserved), "{reserved}");
        }
    }

    #[test]
    fn a_named_pool_of_the_default_provider_goes_where_the_default_pool_goes() {
        let groups = group(vec![key("sk-or-1", None, Some("team2"))], &upstreams()).unwrap();
        assert_eq!(groups[1].name, "team2");
        assert_eq!(groups[1].upstream, "http://127.0.0.1:1/api/v1");
        // Another provider's pool goes to its own base URL.
        let groups = group(
            vec![key("gsk-1", Some(Provider::Groq), Some("fast"))],
            &upstreams(),
        )
        .unwrap();
        assert_eq!(groups[1].upstream, Provider::Groq.base_url().unwrap());
    }
}
