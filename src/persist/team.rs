//! Instances sharing one key pool through Redis (`--redis`): two background threads
//! carry the facts of `shared.rs` between this pool and the others (a third, in
//! `flights.rs`, counts the attempts under way).
//!
//! - The writer takes the facts the pool hands to a bounded channel (never waited on by
//!   a request), writes each with one atomic script (the later end wins, then it is
//!   published), renews this instance's heartbeat and reads the others'.
//! - The subscriber listens on the channel and merges each fact into the pool as it
//!   comes, so a rest set by one instance holds in the others before their next pick.
//!
//! Invariants: no request waits on Redis for a fact; a request only hands a fact to the
//! channel, or loses it when the channel is full. Nothing sent to Redis names a key but
//! by its fingerprint. When Redis is unreachable, the pool serves on its own state, one
//! warning is logged per outage (not per request), and when Redis is back the whole
//! state goes both ways (the merge), so what was learned meanwhile is shared.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use redis::{Client, Connection, Script, TlsCertificates};

use crate::persist::flights::Flights;
use crate::persist::shared::{self, Action, Fact, Instance, Link, Message, TeamReport};
use crate::rotation::pool::{Now, epoch_ms};
use crate::rotation::pools::Sharing;

/// Facts waiting for the writer; past this, new ones are dropped (and counted).
const OUTBOX: usize = 4096;
/// Time to open a connection, and to wait for any one answer.
const CONNECT: Duration = Duration::from_millis(1000);
const IO: Duration = Duration::from_millis(1000);
/// Time between attempts to reach Redis while it is away.
const RETRY: Duration = Duration::from_millis(500);
/// Time between heartbeats (the heartbeat lives three times as long).
const BEAT: Duration = Duration::from_millis(shared::HEARTBEAT_TTL_MS / 3);
/// Silence on the subscription after which the subscriber checks the link.
const QUIET: Duration = Duration::from_secs(5);

/// The link and what it knows of the other instances.
pub struct Team {
    id: String,
    url: String,
    state: Mutex<LinkState>,
    instances: Mutex<Vec<Instance>>,
    /// The subscription was (re)made: facts published meanwhile were missed, so the
    /// writer merges the whole state again.
    resync: AtomicBool,
}

struct LinkState {
    writer: Link,
    reader: Link,
    /// The connections that reserve attempts (`flights.rs`).
    flights: Link,
    error: Option<String>,
    /// An outage was logged and its end is not yet.
    warned: bool,
}

/// What the heartbeat says besides the counters.
pub struct Announce {
    /// Where this instance listens.
    pub listen: String,
    pub started_ms: u64,
}

impl Team {
    /// Connects this pool to the others through the Redis at `url` (checked by
    /// `config.rs`), on two background threads. Redis need not be up. With `ca` (a PEM
    /// file), a `rediss://` server's certificate must chain to it instead of the public
    /// roots; verification is never turned off.
    pub fn start(
        url: &str,
        ca: Option<&Path>,
        pool: Arc<dyn Sharing>,
        announce: Announce,
    ) -> std::io::Result<Arc<Team>> {
        let client = match ca {
            None => Client::open(url),
            Some(path) => {
                let pem = read_ca(path)?;
                Client::build_with_tls(
                    url,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let team = Arc::new(Team {
            id: instance_id(),
            url: shared::masked_url(url),
            state: Mutex::new(LinkState {
                writer: Link::Connecting,
                reader: Link::Connecting,
                flights: Link::Connecting,
                error: None,
                warned: false,
            }),
            instances: Mutex::new(Vec::new()),
            resync: AtomicBool::new(false),
        });
        let (outbox, facts) = mpsc::sync_channel(OUTBOX);
        let flights = Flights::start(Arc::clone(&team), client.clone())?;
        pool.share(outbox, flights);
        let writer = Writer {
            team: Arc::clone(&team),
            pool: Arc::clone(&pool),
            client: client.clone(),
            script: Script::new(shared::SCRIPT),
            announce,
        };
        thread::Builder::new()
            .name("redis-writer".into())
            .spawn(move || writer.run(&facts))?;
        let reader_team = Arc::clone(&team);
        thread::Builder::new()
            .name("redis-subscriber".into())
            .spawn(move || subscribe(&reader_team, &*pool, &client))?;
        Ok(team)
    }

    pub fn report(&self, pool: &dyn Sharing) -> TeamReport {
        let state = self.lock_state();
        TeamReport {
            id: self.id.clone(),
            url: self.url.clone(),
            link: state.link(),
            error: state.error.clone(),
            instances: self
                .instances
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            dropped: pool.dropped_facts(),
        }
    }

    /// This instance's name among those sharing the pool.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this instance's heartbeat is written (and its facts): the writer's link.
    pub fn writer_link(&self) -> Link {
        self.lock_state().writer
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One side of the link is now `link`; logs the start and the end of an outage once
    /// each.
    pub fn set(&self, side: Side, link: Link, error: Option<String>) {
        let mut state = self.lock_state();
        match side {
            Side::Writer => state.writer = link,
            Side::Reader => state.reader = link,
            Side::Flights => state.flights = link,
        }
        if let Some(error) = error {
            state.error = Some(error);
        }
        match state.link() {
            Link::Down if !state.warned => {
                state.warned = true;
                warn!(
                    "redis {} is unreachable ({}): serving on this instance's own key states until it is back",
                    self.url,
                    state.error.as_deref().unwrap_or("no answer")
                );
            }
            Link::Up => {
                if state.warned {
                    info!(
                        "redis {} is back: key states merged with the other instances",
                        self.url
                    );
                } else if state.error.is_none() {
                    info!(
                        "redis {}: sharing key states as instance {}",
                        self.url, self.id
                    );
                }
                state.warned = false;
                state.error = None;
            }
            _ => {}
        }
    }
}

/// The three connections an instance keeps to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Writes facts and the heartbeat.
    Writer,
    /// Listens to the other instances.
    Reader,
    /// Reserves attempts (`flights.rs`).
    Flights,
}

impl LinkState {
    fn link(&self) -> Link {
        let sides = [self.writer, self.reader, self.flights];
        if sides.contains(&Link::Down) {
            Link::Down
        } else if sides.iter().all(|l| *l == Link::Up) {
            Link::Up
        } else {
            Link::Connecting
        }
    }
}

/// The CA file of `--redis-ca`: PEM text holding at least one certificate.
fn read_ca(path: &Path) -> std::io::Result<Vec<u8>> {
    let named = |why: String| {
        std::io::Error::other(format!(
            "the Redis CA file '{}' (--redis-ca or ROO_PROXY_REDIS_CA) {why}",
            path.display()
        ))
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut pem))
        .map_err(|e| named(format!("cannot be read: {e}")))?;
    if !pem
        .windows(CERTIFICATE.len())
        .any(|w| w == CERTIFICATE.as_bytes())
    {
        return Err(named(format!(
            "holds no PEM certificate ({CERTIFICATE}…): give the CA certificate that signed your Redis server's"
        )));
    }
    Ok(pem)
}

const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// A random name for this instance, 8 hex digits.
fn instance_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = std::process::id().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn connect(client: &Client) -> redis::RedisResult<Connection> {
    let con = client.get_connection_with_timeout(CONNECT)?;
    con.set_read_timeout(Some(IO))?;
    con.set_write_timeout(Some(IO))?;
    Ok(con)
}

/// The text of a Redis error as logged: the crate's own words, which name neither the
/// URL nor its password.
fn why(e: &redis::RedisError) -> String {
    e.to_string()
}

struct Writer {
    team: Arc<Team>,
    pool: Arc<dyn Sharing>,
    client: Client,
    script: Script,
    announce: Announce,
}

impl Writer {
    fn run(&self, facts: &Receiver<Fact>) {
        loop {
            let failure = match connect(&self.client) {
                Ok(mut con) => self.serve(&mut con, facts),
                Err(e) => Err(e),
            };
            match failure {
                Ok(()) => return,
                Err(e) => {
                    debug!("redis writer: {e}");
                    self.team.set(Side::Writer, Link::Down, Some(why(&e)));
                }
            }
            // Facts learned while Redis is away reach it with the merge when it is back.
            let until = Instant::now() + RETRY;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match facts.recv_timeout(left) {
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Writes facts until the connection fails (`Err`) or the pool is gone (`Ok`).
    fn serve(&self, con: &mut Connection, facts: &Receiver<Fact>) -> redis::RedisResult<()> {
        self.merge(con)?;
        self.beat(con)?;
        self.team.set(Side::Writer, Link::Up, None);
        let mut next_beat = Instant::now() + BEAT;
        loop {
            if self.team.resync.swap(false, Ordering::SeqCst) {
                self.merge(con)?;
            }
            let left = next_beat.saturating_duration_since(Instant::now());
            match facts.recv_timeout(left.min(RETRY)) {
                Ok(fact) => self.write(con, &fact)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if Instant::now() >= next_beat {
                self.beat(con)?;
                next_beat = Instant::now() + BEAT;
            }
        }
    }

    /// Writes one fact; the script keeps the later end and publishes only a change.
    fn write(&self, con: &mut Connection, fact: &Fact) -> redis::RedisResult<()> {
        let now_ms = epoch_ms(std::time::SystemTime::now());
        let write = shared::write_of(fact, now_ms);
        let message = shared::encode(&Message {
            from: self.team.id.clone(),
            fact: fact.clone(),
        });
        let expire = match write.action {
            Action::Store { expire_ms } => expire_ms.to_string(),
            Action::Delete => "del".to_string(),
        };
        let _: i64 = self
            .script
            .key(&write.key)
            .key(shared::channel())
            .arg(write.order)
            .arg(expire)
            .arg(message)
            .invoke(con)?;
        Ok(())
    }

    /// Sends this pool's whole state, then merges in every fact stored in Redis.
    fn merge(&self, con: &mut Connection) -> redis::RedisResult<()> {
        let mine = self.pool.facts(Now::read());
        let sent = mine.len();
        for fact in &mine {
            self.write(con, fact)?;
        }
        let mut merged = 0;
        for pattern in shared::fact_patterns() {
            for key in scan(con, &pattern)? {
                let stored: Option<Vec<u8>> = redis::cmd("HGET").arg(&key).arg("m").query(con)?;
                let Some(message) = stored.as_deref().and_then(shared::decode) else {
                    continue;
                };
                merged += usize::from(self.pool.apply(&message.fact, Now::read()));
            }
        }
        debug!("redis merge: sent {sent} facts, {merged} changed this pool");
        Ok(())
    }

    /// Renews this instance's heartbeat and reads every live one.
    fn beat(&self, con: &mut Connection) -> redis::RedisResult<()> {
        let now_ms = epoch_ms(std::time::SystemTime::now());
        let (requests, rate_limited) = self.pool.totals();
        let me = Instance {
            id: self.team.id.clone(),
            listen: self.announce.listen.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: self.announce.started_ms,
            seen_ms: now_ms,
            requests,
            rate_limited,
        };
        let text = serde_json::to_string(&me).unwrap_or_default();
        let _: () = redis::cmd("SET")
            .arg(shared::instance_key(&me.id))
            .arg(text)
            .arg("PX")
            .arg(shared::HEARTBEAT_TTL_MS)
            .query(con)?;
        let mut instances = Vec::new();
        for key in scan(con, &shared::instance_pattern())? {
            let text: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(con)?;
            if let Some(instance) = text.and_then(|t| serde_json::from_slice::<Instance>(&t).ok()) {
                instances.push(instance);
            }
        }
        instances.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        *self
            .team
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = instances;
        Ok(())
    }
}

/// Every key matching `pattern`, by SCAN (never KEYS, which blocks a shared server).
fn scan(con: &mut Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    // Bounded: a SCAN pass ends when the cursor returns to 0; the bound only guards
    // against a server that never says so.
    for _ in 0..100_000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(con)?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The subscriber thread: merges every fact other instances publish, reconnecting
/// while Redis is away.
fn subscribe(team: &Team, pool: &dyn Sharing, client: &Client) {
    loop {
        if let Err(e) = listen(team, pool, client) {
            debug!("redis subscriber: {e}");
            team.set(Side::Reader, Link::Down, Some(why(&e)));
        }
        thread::sleep(RETRY);
    }
}

fn listen(team: &Team, pool: &dyn Sharing, client: &Client) -> redis::RedisResult<()> {
    let mut con = connect(client)?;
    let mut pubsub = con.as_pubsub();
    pubsub.subscribe(shared::channel())?;
    pubsub.set_read_timeout(Some(QUIET))?;
    // Facts published before the subscription are in Redis: the writer merges them.
    team.resync.store(true, Ordering::SeqCst);
    team.set(Side::Reader, Link::Up, None);
    loop {
        match pubsub.get_message() {
            Ok(message) => {
                let payload = message.get_payload_bytes();
                if let Some(account) = shared::decode_freed(payload) {
                    pool.freed(&account);
                    continue;
                }
                let Some(message) = shared::decode(payload) else {
                    continue;
                };
                if message.from != team.id && pool.apply(&message.fact, Now::read()) {
                    debug!("from instance {}: {:?}", message.from, message.fact);
                }
            }
            // Quiet for a while: make sure the server is still there. A subscribed
            // connection answers PING with an array (`pong`, ""), not a string.
            Err(e) if e.is_timeout() => {
                let _: redis::Value = pubsub.ping()?;
            }
            Err(e) => return Err(e),
        }
    }
}
