//! Attempts under way counted across instances (`--redis`): the [`Flight`] that pools
//! reserve attempts through when an account's answers announce a budget, so that the
//! instances together never have more attempts under way with it than the budget allows
//! (each alone would count only its own), before its first answer, so that one
//! slow-start probe goes among them all, and in a counted window (no budget
//! announced), so that they fill it together as one instance would.
//!
//! - A request reserves on a connection it borrows from a few kept open, with a timeout
//!   of a few milliseconds; with none free, no answer in time, or Redis away, the
//!   attempt goes ([`Reserve::Unavailable`]), counted here, and the lender adds it in
//!   Redis after the fact. It never opens a connection, and waits for none while Redis
//!   is away.
//! - This instance's own attempts are counted here, exactly; Redis holds a copy for the
//!   others. A reservation is judged against this instance's own count and the others'
//!   in Redis, so a release still on its way to Redis never refuses this instance's
//!   next attempt.
//! - Releases go to the lender thread (never waited on), which runs them in order, keeps
//!   the connections open, and every heartbeat writes this instance's count of each
//!   account (with the releases still queued), through a script that lowers the count
//!   only when no reservation landed since the counts were read: a release lost (a
//!   full queue, Redis away) or a Redis restart is mended within one heartbeat, and the
//!   races between the threads only ever count too many, until a later mend.
//!
//! Invariants: no key material (accounts are key fingerprints). An instance's count is
//! only counted by others while its heartbeat lives, so an instance that dies leaves no
//! count behind; reservations start only once the heartbeat is written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use log::debug;
use redis::{Client, Connection, Script};

use crate::persist::shared::{self, Link};
use crate::persist::team::{Side, Team};
use crate::rotation::pool::epoch_ms;
use crate::rotation::pools::{Ask, Ended, Flight, Reserve};

/// The longest a request waits for Redis to reserve an attempt.
const RESERVE_TIMEOUT: Duration = Duration::from_millis(5);
/// Connections kept open for reservations, and the most after a shortage.
const IDLE: usize = 4;
const MOST_IDLE: usize = 16;
/// Releases waiting for the lender; past this, one is dropped (the heartbeat mends it).
const QUEUE: usize = 4096;
/// The most releases the lender takes from the queue at once.
const BATCH: usize = 1024;
/// Time to open a connection, and to wait for an answer on the lender's own.
const CONNECT: Duration = Duration::from_millis(1000);
/// How often the lender looks after the kept connections while no release comes.
const TICK: Duration = Duration::from_millis(50);
/// Time between attempts to reach Redis while it is away.
const RETRY: Duration = Duration::from_millis(500);
/// Time between writes of this instance's true counts (the heartbeat's pace).
const MEND: Duration = Duration::from_millis(shared::HEARTBEAT_TTL_MS / 3);

pub struct Flights {
    team: Arc<Team>,
    client: Client,
    reserve: Script,
    idle: Mutex<Vec<Connection>>,
    /// A connection went back to `idle`.
    returned: Condvar,
    /// A reservation found no free connection: the lender opens more.
    short: AtomicBool,
    /// The lender is linked and this instance's heartbeat written: reservations may wait
    /// for a connection (else they go on this instance's count at once).
    ready: AtomicBool,
    /// This instance's reservations per account (kept at 0 until the next mend).
    counts: Mutex<HashMap<String, Count>>,
    /// Reservations begun so far.
    begun: AtomicU64,
    releases: SyncSender<Release>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count {
    /// Attempts under way.
    held: u32,
    /// Ended, but their releases are still queued for Redis.
    queued: u32,
    /// The number of its latest reservation (numbered across accounts, so that an
    /// account forgotten and counted again never reuses one; it goes to Redis with it).
    seq: u64,
}

/// What a batch of releases does to one account: attempts ended, attempts to add (they
/// went without Redis's word), the budget to keep.
#[derive(Default)]
struct Net {
    ended: u32,
    added: u32,
    served: bool,
    budget: Option<(u32, u64)>,
    /// Successes per counted window (its start, epoch ms).
    windows: HashMap<u64, u32>,
    /// Counted windows a 429 said are full (their starts), and until when.
    full: Vec<(u64, u64)>,
}

/// A change to this instance's count in Redis, for the lender.
struct Release {
    account: String,
    /// An attempt ended, and how (`None`: one went that Redis did not count, to be
    /// added).
    ended: Option<Ended>,
}

impl Flights {
    /// Starts the lender thread for the instance `team` on Redis at `client`.
    pub fn start(team: Arc<Team>, client: Client) -> std::io::Result<Arc<Flights>> {
        let (releases, queue) = mpsc::sync_channel(QUEUE);
        let flights = Arc::new(Flights {
            team,
            client,
            reserve: Script::new(shared::RESERVE),
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            short: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            counts: Mutex::new(HashMap::new()),
            begun: AtomicU64::new(0),
            releases,
        });
        let lender = Arc::clone(&flights);
        thread::Builder::new()
            .name("redis-flights".into())
            .spawn(move || lender.lend(&queue))?;
        Ok(flights)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Count>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes this instance's count of `account`.
    fn count(&self, account: &str, change: impl FnOnce(&mut Count)) -> Count {
        let mut counts = self.counts();
        let count = counts.entry(account.to_string()).or_default();
        change(count);
        *count
    }

    /// The lender thread: runs releases, keeps connections open, mends the counts.
    fn lend(&self, queue: &Receiver<Release>) {
        let release = Script::new(shared::RELEASE);
        let mend = Script::new(shared::MEND);
        loop {
            let failure = match self.connect(CONNECT) {
                Ok(mut con) => self.serve(&mut con, &release, &mend, queue),
                Err(e) => Err(e),
            };
            match failure {
                Ok(()) => return,
                Err(e) => {
                    debug!("redis flights: {e}");
                    self.team
                        .set(Side::Flights, Link::Down, Some(e.to_string()));
                }
            }
            // Kept connections are likely as dead as this one.
            self.ready.store(false, Ordering::SeqCst);
            self.idle().clear();
            let until = Instant::now() + RETRY;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match queue.recv_timeout(left) {
                    // Redis is away: the count is mended when it is back.
                    Ok(r) if r.ended.is_some() => {
                        self.count(&r.account, |c| c.queued = c.queued.saturating_sub(1));
                    }
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    fn serve(
        &self,
        con: &mut Connection,
        release: &Script,
        mend: &Script,
        queue: &Receiver<Release>,
    ) -> redis::RedisResult<()> {
        let mut next_mend = Instant::now();
        let mut up = false;
        loop {
            if self.team.writer_link() == Link::Up {
                if !up {
                    // This connection may have died with an outage the writer saw: made
                    // sure of before this side says it is up.
                    let _: String = redis::cmd("PING").query(con)?;
                }
                if !up || Instant::now() >= next_mend {
                    self.mend(con, mend)?;
                    next_mend = Instant::now() + MEND;
                }
                self.keep_open();
                if !up && !self.idle().is_empty() {
                    up = true;
                    self.ready.store(true, Ordering::SeqCst);
                    self.team.set(Side::Flights, Link::Up, None);
                }
            } else if up {
                // No heartbeat (an outage): others would not count ours. Up again only
                // once this side has checked its own connection.
                up = false;
                self.ready.store(false, Ordering::SeqCst);
                self.idle().clear();
                self.team.set(Side::Flights, Link::Connecting, None);
            } else {
                self.idle().clear();
            }
            match queue.recv_timeout(TICK) {
                Ok(first) => {
                    // Everything queued meanwhile, one script per account.
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match queue.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    self.release_all(con, release, batch)?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }

    /// Runs `batch`'s releases, one script per account: the number ended, and the budget
    /// of the latest window their answers announced (the fewest left within it).
    fn release_all(
        &self,
        con: &mut Connection,
        release: &Script,
        batch: Vec<Release>,
    ) -> redis::RedisResult<()> {
        let mut changes: HashMap<String, Net> = HashMap::new();
        for r in batch {
            let net = changes.entry(r.account).or_default();
            match r.ended {
                Some(Ended::Served { budget, window }) => {
                    net.ended += 1;
                    net.served = true;
                    net.budget = shared::newer_budget(net.budget, budget);
                    if let Some(start) = window {
                        *net.windows.entry(start).or_default() += 1;
                    }
                }
                Some(Ended::Limited { window, until }) => {
                    net.ended += 1;
                    net.full.push((window, until));
                }
                Some(Ended::Other) => net.ended += 1,
                None => net.added += 1,
            }
        }
        let mut failed = None;
        for (account, net) in changes {
            let Net {
                ended: n,
                added,
                served,
                budget,
                windows,
                full,
            } = net;
            if failed.is_none() {
                let (remaining, reset) = match budget {
                    Some((remaining, reset)) => (remaining.to_string(), reset),
                    None => (String::new(), 0),
                };
                let done: redis::RedisResult<i64> = release
                    .key(shared::flight_key(&account))
                    .key(shared::channel())
                    .arg(self.team.id())
                    .arg(remaining)
                    .arg(reset)
                    .arg(shared::freed_message(&account))
                    .arg(shared::FLIGHT_TTL_MS)
                    .arg(i64::from(n) - i64::from(added))
                    .arg(if served { "1" } else { "0" })
                    .arg(shared::number_pairs(&windows))
                    .arg(shared::number_pairs(full))
                    .invoke(con);
                failed = done.err();
            }
            // Done, or lost with the connection: the next mend writes the count.
            self.count(&account, |c| c.queued = c.queued.saturating_sub(n));
        }
        failed.map_or(Ok(()), Err)
    }

    /// Writes this instance's count of every account it reserved with since the last
    /// mend (with the releases still queued, which will each take one off), and forgets
    /// those at 0. A count is only raised, not lowered, where a reservation begun after
    /// the counts were read has landed meanwhile (see [`shared::MEND`]).
    fn mend(&self, con: &mut Connection, mend: &Script) -> redis::RedisResult<()> {
        let counts: Vec<(String, Count)> =
            self.counts().iter().map(|(a, c)| (a.clone(), *c)).collect();
        for (account, count) in &counts {
            let _: i64 = mend
                .key(shared::flight_key(account))
                .arg(self.team.id())
                .arg(count.held.saturating_add(count.queued))
                .arg(count.seq)
                .arg(shared::FLIGHT_TTL_MS)
                .invoke(con)?;
        }
        // Forgotten only if unchanged since: one reserved meanwhile is written next time.
        let mut now = self.counts();
        for (account, count) in counts {
            if count.held == 0 && count.queued == 0 && now.get(&account) == Some(&count) {
                now.remove(&account);
            }
        }
        Ok(())
    }

    /// Opens connections for reservations up to the number wanted.
    fn keep_open(&self) {
        let want = if self.short.swap(false, Ordering::Relaxed) {
            MOST_IDLE
        } else {
            IDLE
        };
        // Bounded: connections lent meanwhile are not waited for.
        for _ in 0..want {
            if self.idle().len() >= want {
                return;
            }
            let opened = self.connect(CONNECT).and_then(|mut con| {
                // Loaded now, so that no reservation pays for it.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(shared::RESERVE)
                    .query(&mut con)?;
                Ok(con)
            });
            match opened {
                Ok(con) => {
                    let io = Some(RESERVE_TIMEOUT);
                    if con.set_read_timeout(io).is_err() || con.set_write_timeout(io).is_err() {
                        return;
                    }
                    self.give_back(con);
                }
                Err(e) => {
                    debug!("redis flights: cannot open a connection: {e}");
                    return;
                }
            }
        }
    }

    /// A kept connection, waiting for one to come back (requests released at once, as
    /// at a reset, outnumber the connections) until `deadline`.
    fn borrow(&self, deadline: Instant) -> Option<Connection> {
        let mut idle = self.idle();
        loop {
            if let Some(con) = idle.pop() {
                return Some(con);
            }
            self.short.store(true, Ordering::Relaxed);
            let left = deadline.checked_duration_since(Instant::now())?;
            idle = self
                .returned
                .wait_timeout(idle, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn give_back(&self, con: Connection) {
        let mut idle = self.idle();
        // Opened while all were lent: past the most kept, closed.
        if idle.len() < MOST_IDLE {
            idle.push(con);
        }
        drop(idle);
        self.returned.notify_one();
    }

    fn connect(&self, timeout: Duration) -> redis::RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(timeout)?;
        con.set_read_timeout(Some(CONNECT))?;
        con.set_write_timeout(Some(CONNECT))?;
        Ok(con)
    }
}

impl Flights {
    /// An attempt with `account` went without Redis's word: counted here (it already
    /// is), and added in Redis by the lender, after the fact.
    fn unavailable(&self, account: &str) -> Reserve {
        let add = Release {
            account: account.to_string(),
            ended: None,
        };
        // Full: the next mend writes it.
        let _ = self.releases.try_send(add);
        Reserve::Unavailable
    }
}

impl Flight for Flights {
    fn linked(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn reserve(&self, account: &str, ask: Ask) -> Reserve {
        // Counted before Redis is asked: a mend meanwhile counts too many, never too few.
        let count = self.count(account, |c| {
            c.held += 1;
            c.seq = self.begun.fetch_add(1, Ordering::Relaxed) + 1;
        });
        if !self.ready.load(Ordering::SeqCst) {
            debug!("redis flights: not linked, an attempt goes uncounted in Redis for now");
            return self.unavailable(account);
        }
        let deadline = Instant::now() + RESERVE_TIMEOUT;
        let Some(mut con) = self.borrow(deadline) else {
            debug!(
                "redis flights: no connection free in time, an attempt goes uncounted in Redis for now"
            );
            return self.unavailable(account);
        };
        // Waiting for the connection counts against the same few milliseconds.
        let left = deadline.saturating_duration_since(Instant::now());
        if con
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .is_err()
        {
            return self.unavailable(account);
        }
        let now_ms = epoch_ms(std::time::SystemTime::now());
        let answer: redis::RedisResult<i64> = self
            .reserve
            .key(shared::flight_key(account))
            .arg(self.team.id())
            .arg(count.held - 1)
            .arg(ask.cap)
            .arg(ask.reset_ms)
            .arg(now_ms)
            .arg(shared::instance_prefix())
            .arg(shared::FLIGHT_TTL_MS)
            .arg(count.seq)
            .arg(if ask.first { "1" } else { "0" })
            .arg(ask.window.map_or(String::new(), |start| start.to_string()))
            .invoke(&mut con);
        match answer {
            Ok(1) => {
                self.give_back(con);
                Reserve::Granted
            }
            Ok(2) => {
                self.give_back(con);
                Reserve::Answered
            }
            Ok(3) => {
                self.give_back(con);
                Reserve::Begun
            }
            Ok(_) => {
                self.give_back(con);
                self.count(account, |c| c.held = c.held.saturating_sub(1));
                Reserve::Refused
            }
            Err(e) => {
                // Too slow, or gone: the connection's next answer could be this one's.
                debug!("redis flights: a reservation went unanswered: {e}");
                self.unavailable(account)
            }
        }
    }

    fn release(&self, account: &str, ended: Ended) {
        self.count(account, |c| {
            c.held = c.held.saturating_sub(1);
            c.queued += 1;
        });
        let release = Release {
            account: account.to_string(),
            ended: Some(ended),
        };
        if self.releases.try_send(release).is_err() {
            // Lost: Redis counts it until the next mend.
            self.count(account, |c| c.queued = c.queued.saturating_sub(1));
        }
    }
}
