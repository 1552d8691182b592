//! Keeps the lock server's messages to each client in the order the lock server decided
//! them.
//!
//! The lock server decides under one lock's mutex and returns what to send; the leader sends
//! after. Two requests for one lock handled by two threads could then reach a client in the
//! other order: an invalidation ahead of the grant it reduces. The client copes with some of
//! that, but the random schedules of the lock protocol (`lock_server` tests) show a request
//! left waiting forever when such overtaking meets a failover. So the leader decides and
//! sends each lock's messages under one stripe of this, and messages that span every lock
//! (recovery finished, a client removed) under all of it. Sends are writes of small frames
//! to sockets; a stuck client holds up only the locks whose messages go to it.

use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::Key;

/// Stripes: locks that share one are decided and sent one after the other.
const STRIPES: usize = 64;

#[derive(Debug)]
pub(super) struct SendOrder {
    every: RwLock<()>,
    stripes: Vec<Mutex<()>>,
}

/// Held while one lock's messages are decided and sent.
pub(super) struct OneLock<'a> {
    _stripe: MutexGuard<'a, ()>,
    _every: RwLockReadGuard<'a, ()>,
}

impl SendOrder {
    pub(super) fn new() -> Self {
        Self {
            every: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Order the messages about the lock named `key`.
    pub(super) fn one(&self, key: &Key) -> OneLock<'_> {
        let every = self.every.read().unwrap_or_else(PoisonError::into_inner);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let stripe = &self.stripes[(h.finish() % STRIPES as u64) as usize];
        OneLock {
            _stripe: stripe.lock().unwrap_or_else(PoisonError::into_inner),
            _every: every,
        }
    }

    /// Order messages about any lock.
    pub(super) fn every(&self) -> RwLockWriteGuard<'_, ()> {
        self.every.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::zone;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn key(n: u64) -> Key {
        Key::new(zone::FS, n << 10, 0, 0, 0, 0)
    }

    /// Whether `f` (run on another thread) finishes while the caller holds what it took.
    fn finishes_while_held(order: &Arc<SendOrder>, f: fn(&SendOrder)) -> bool {
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (order, done) = (order.clone(), done.clone());
            std::thread::spawn(move || {
                f(&order);
                done.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        // A thread still waiting finishes once the caller lets go.
        drop(t);
        done.load(Ordering::SeqCst)
    }

    #[test]
    fn one_lock_excludes_itself_and_every_lock_excludes_all() {
        let order = Arc::new(SendOrder::new());
        {
            let _held = order.one(&key(1));
            assert!(!finishes_while_held(&order, |o| drop(o.one(&key(1)))));
            assert!(!finishes_while_held(&order, |o| drop(o.every())));
        }
        {
            let _held = order.every();
            assert!(!finishes_while_held(&order, |o| drop(o.one(&key(2)))));
        }
        // Released: everything goes through.
        assert!(finishes_while_held(&order, |o| {
            drop(o.one(&key(1)));
            drop(o.every());
        }));
    }
}
