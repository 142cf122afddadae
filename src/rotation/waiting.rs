//! The waiting room: requests that wait for a key (`--wait`), in arrival order.
//!
//! Invariants: a request is in the room only while it waits (it leaves when it sends an
//! attempt or gives up, and on drop, so a panic or a client that left frees its place).
//! Every change of the room or of the pool (an attempt ended) wakes the waiters, who
//! decide again (`attempts.rs`); a wake-up is never lost: a waiter names the version of
//! the room it decided on and does not sleep if it changed since. With nobody waiting,
//! nothing here takes a lock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// With nobody waiting (always, without `--wait`), looking and waking take no lock.
#[derive(Default)]
pub struct Room {
    /// Arrival numbers of the requests waiting.
    waiting: Mutex<BTreeSet<u64>>,
    changed: Condvar,
    arrivals: AtomicU64,
    /// Changes counted, so that a waiter sees one that came after it looked. Changed
    /// only under the lock, read without it where nobody waits.
    version: AtomicU64,
    /// `waiting.len()`, changed only under the lock.
    count: AtomicUsize,
}

/// A request's place in line: its arrival number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place(u64);

/// What a waiter saw: how many wait ahead of it, and the room's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ahead: usize,
    version: u64,
}

impl Room {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        // A set of numbers: consistent after any panic.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A number for a request that just arrived: its place if it comes to wait.
    pub fn arrive(&self) -> Place {
        Place(self.arrivals.fetch_add(1, Ordering::Relaxed))
    }

    /// How many requests that arrived before `place` are waiting.
    pub fn look(&self, place: Place) -> Seen {
        if self.count.load(Ordering::SeqCst) == 0 {
            return Seen {
                ahead: 0,
                version: self.version.load(Ordering::SeqCst),
            };
        }
        let waiting = self.lock();
        Seen {
            ahead: waiting.range(..place.0).count(),
            version: self.version.load(Ordering::SeqCst),
        }
    }

    /// `place` waits; it leaves when the returned guard is dropped.
    pub fn join(&self, place: Place) -> InLine<'_> {
        let mut waiting = self.lock();
        if waiting.insert(place.0) {
            self.count.store(waiting.len(), Ordering::SeqCst);
            self.version.fetch_add(1, Ordering::SeqCst);
        }
        InLine { room: self, place }
    }

    /// Something changed that may let a waiter go (an attempt ended). Nobody waiting:
    /// nothing to do (a request that joins looks again after joining).
    pub fn wake(&self) {
        if self.count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let waiting = self.lock();
        self.version.fetch_add(1, Ordering::SeqCst);
        drop(waiting);
        self.changed.notify_all();
    }

    /// Sleeps until `until`, or until the room changed since `seen`. Returns whether it
    /// changed.
    pub fn sleep(&self, seen: Seen, until: Instant) -> bool {
        let mut waiting = self.lock();
        loop {
            if self.version.load(Ordering::SeqCst) != seen.version {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            waiting = self
                .changed
                .wait_timeout(waiting, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn leave(&self, place: Place) {
        let mut waiting = self.lock();
        if waiting.remove(&place.0) {
            self.count.store(waiting.len(), Ordering::SeqCst);
            self.version.fetch_add(1, Ordering::SeqCst);
            drop(waiting);
            self.changed.notify_all();
        }
    }

    /// Requests waiting now (for the status page).
    pub fn waiting(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A place in line; dropping it leaves the room.
pub struct InLine<'r> {
    room: &'r Room,
    place: Place,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.room.leave(self.place);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn waiters_are_counted_in_arrival_order() {
        let room = Room::default();
        let (first, second, third) = (room.arrive(), room.arrive(), room.arrive());
        let _third_waits = room.join(third);
        let second_waits = room.join(second);
        assert_eq!(room.look(first).ahead, 0);
        assert_eq!(room.look(third).ahead, 1, "second came first");
        drop(second_waits);
        assert_eq!(room.look(third).ahead, 0);
        assert_eq!(room.len(), 1);
    }

    #[test]
    fn a_change_after_looking_is_never_slept_through() {
        let room = Room::default();
        let place = room.arrive();
        let _waits = room.join(place);
        let seen = room.look(place);
        room.wake();
        // Changed since it looked: returns at once, though the deadline is far.
        assert!(room.sleep(seen, Instant::now() + Duration::from_secs(3600)));
        let seen = room.look(place);
        assert!(!room.sleep(seen, Instant::now()), "nothing changed");
        let other = room.arrive();
        drop(room.join(other));
        assert!(room.sleep(seen, Instant::now() + Duration::from_secs(3600)));
    }

    #[test]
    fn with_nobody_waiting_a_wake_changes_nothing() {
        let room = Room::default();
        let place = room.arrive();
        let seen = room.look(place);
        room.wake();
        assert_eq!(room.look(place), seen);
    }

    #[test]
    fn a_waiter_is_woken_by_another_thread() {
        let room = std::sync::Arc::new(Room::default());
        let place = room.arrive();
        let _waits = room.join(place);
        let seen = room.look(place);
        let waker = std::sync::Arc::clone(&room);
        let handle = std::thread::spawn(move || waker.wake());
        assert!(room.sleep(seen, Instant::now() + Duration::from_secs(3600)));
        handle.join().unwrap();
    }
}
