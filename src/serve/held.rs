//! The memory held by request bodies, all requests together: a body is kept whole until
//! its request is answered (each retry sends it again), so many large bodies at once
//! could take more memory than the machine has. Each body claims what it holds, as it
//! grows; a claim past the limit is refused, and the request gets 503.
//!
//! Invariant: the total of all live claims never exceeds the limit; a claim is given
//! back when dropped (also when its request panics).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes all request bodies may hold together.
#[derive(Debug)]
pub struct Held {
    used: AtomicU64,
    limit: u64,
}

impl Held {
    pub fn new(limit: u64) -> Arc<Held> {
        Arc::new(Held {
            used: AtomicU64::new(0),
            limit,
        })
    }

    /// A claim of nothing yet, to grow as a body arrives.
    pub fn claim(self: &Arc<Held>) -> Claim {
        Claim {
            held: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Bytes claimed now.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    fn take(&self, more: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(more).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }
}

/// One body's share; given back when dropped.
#[derive(Debug)]
pub struct Claim {
    held: Arc<Held>,
    bytes: u64,
}

impl Claim {
    /// Grows the claim to `bytes` (a smaller value changes nothing); `false`, and no
    /// change, when that would pass the limit.
    pub fn grow_to(&mut self, bytes: u64) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        if !self.held.take(bytes - self.bytes) {
            return false;
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.held.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stay_within_the_limit_and_come_back_when_dropped() {
        let held = Held::new(100);
        let mut a = held.claim();
        let mut b = held.claim();
        assert!(a.grow_to(60));
        assert!(a.grow_to(30), "shrinking is a no-op");
        assert!(!b.grow_to(41));
        assert!(b.grow_to(40));
        assert_eq!(held.used(), 100);
        assert!(!a.grow_to(61));
        assert!(!b.grow_to(u64::MAX));
        drop(a);
        assert_eq!(held.used(), 40);
        assert!(b.grow_to(100));
        drop(b);
        assert_eq!(held.used(), 0);
    }

    #[test]
    fn claims_from_many_threads_never_pass_the_limit() {
        let held = Held::new(1000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                let held = Arc::clone(&held);
                s.spawn(move || {
                    for n in 0..500u64 {
                        let mut claim = held.claim();
                        for step in 1..=4 {
                            if !claim.grow_to(n % 97 * step) {
                                break;
                            }
                            assert!(held.used() <= 1000);
                        }
                    }
                });
            }
        });
        assert_eq!(held.used(), 0);
    }
}
