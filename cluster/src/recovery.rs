//! The server's recovery bookkeeping (digest §7.4): which clients of the previous server
//! must still come back.
//!
//! A new server reads `mounted_clients`; every rid listed must greet it and finish lock
//! recovery before the deadline, or be fenced with reason [`FENCE_REASON`] and reclaimed.
//! Lock processing waits until no rid is pending lock recovery ([`Recovery::locks_pending`]).
//! This is a plain state machine: the caller passes the time (`now`) and arms its own timer
//! from [`Recovery::deadline`]; nothing here reads a clock, sleeps or sends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long clients of the previous server have to greet and recover their locks
/// (`SERVER_RECOV_TIMEOUT_MS`).
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Fence reason for clients that did not finish recovery in time.
pub const FENCE_REASON: &str = "client_recovery";

const GREETING: u8 = 1;
const LOCKS: u8 = 2;

/// Rids still to recover and what each still owes.
#[derive(Debug, Clone)]
pub struct Recovery {
    pending: BTreeMap<u64, u8>,
    deadline: Instant,
}

impl Recovery {
    /// Each rid pending GREETING and LOCKS; the deadline is `now + timeout`.
    pub fn new(rids: impl IntoIterator<Item = u64>, now: Instant, timeout: Duration) -> Self {
        Recovery {
            pending: rids.into_iter().map(|r| (r, GREETING | LOCKS)).collect(),
            deadline: now + timeout,
        }
    }

    fn clear(&mut self, rid: u64, bit: u8) {
        if let Some(b) = self.pending.get_mut(&rid) {
            *b &= !bit;
            if *b == 0 {
                self.pending.remove(&rid);
            }
        }
    }

    /// `rid` greeted this server.
    pub fn greeted(&mut self, rid: u64) {
        self.clear(rid, GREETING);
    }

    /// `rid` reported all its locks.
    pub fn locks_recovered(&mut self, rid: u64) {
        self.clear(rid, LOCKS);
    }

    /// Does `rid` still owe anything?
    pub fn is_pending(&self, rid: u64) -> bool {
        self.pending.contains_key(&rid)
    }

    /// Has `rid` yet to finish lock recovery? (Its farewell waits for that.)
    pub fn is_pending_locks(&self, rid: u64) -> bool {
        self.pending.get(&rid).is_some_and(|b| b & LOCKS != 0)
    }

    /// Does any rid still owe lock recovery? Lock requests wait while it does.
    pub fn locks_pending(&self) -> bool {
        self.pending.values().any(|b| b & LOCKS != 0)
    }

    /// Rids still pending, in order.
    pub fn pending(&self) -> Vec<u64> {
        self.pending.keys().copied().collect()
    }

    /// When pending rids time out; `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then_some(self.deadline)
    }

    /// Rids still pending at `now` past the deadline: to be fenced with reason
    /// client_recovery; they leave the pending set.
    pub fn timed_out(&mut self, now: Instant) -> Vec<u64> {
        if now < self.deadline {
            return Vec::new();
        }
        std::mem::take(&mut self.pending).into_keys().collect()
    }

    /// `rid` is gone (farewell, fenced): it owes nothing any more.
    pub fn remove(&mut self, rid: u64) {
        self.pending.remove(&rid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rid_owes_greeting_and_locks() {
        let now = Instant::now();
        let mut r = Recovery::new([3, 1, 2], now, RECOVERY_TIMEOUT);
        assert_eq!(r.pending(), [1, 2, 3]);
        assert!(r.locks_pending());
        r.greeted(1);
        assert!(r.is_pending(1), "locks still owed");
        assert!(r.is_pending_locks(1));
        r.locks_recovered(1);
        assert!(!r.is_pending(1));
        // Either order.
        r.locks_recovered(2);
        assert!(r.is_pending(2) && !r.is_pending_locks(2));
        r.greeted(2);
        assert!(!r.is_pending(2));
        assert!(r.locks_pending(), "rid 3");
        r.greeted(3);
        r.locks_recovered(3);
        assert!(!r.locks_pending());
        assert!(r.pending().is_empty());
    }

    #[test]
    fn unknown_and_repeated_events_change_nothing() {
        let now = Instant::now();
        let mut r = Recovery::new([1], now, RECOVERY_TIMEOUT);
        r.greeted(9);
        r.locks_recovered(9);
        r.remove(9);
        r.greeted(1);
        r.greeted(1);
        assert_eq!(r.pending(), [1]);
        assert!(!r.is_pending(9));
    }

    #[test]
    fn deadline_exists_only_while_something_is_pending() {
        let now = Instant::now();
        let r = Recovery::new([], now, RECOVERY_TIMEOUT);
        assert_eq!(r.deadline(), None);
        let mut r = Recovery::new([5], now, Duration::from_secs(30));
        assert_eq!(r.deadline(), Some(now + Duration::from_secs(30)));
        r.greeted(5);
        r.locks_recovered(5);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn rids_still_pending_at_the_deadline_time_out_once() {
        let now = Instant::now();
        let t = Duration::from_secs(30);
        let mut r = Recovery::new([1, 2, 3], now, t);
        r.greeted(1);
        r.locks_recovered(1);
        r.greeted(2);
        assert!(r.timed_out(now + t - Duration::from_millis(1)).is_empty());
        assert_eq!(r.pending(), [2, 3]);
        assert_eq!(r.timed_out(now + t), [2, 3]);
        assert!(r.pending().is_empty());
        assert_eq!(r.deadline(), None);
        assert!(r.timed_out(now + t * 2).is_empty(), "fenced once");
        assert!(!r.locks_pending());
    }

    #[test]
    fn removed_rids_owe_nothing() {
        let now = Instant::now();
        let mut r = Recovery::new([1, 2], now, RECOVERY_TIMEOUT);
        r.remove(1);
        assert_eq!(r.pending(), [2]);
        assert_eq!(r.timed_out(now + RECOVERY_TIMEOUT), [2]);
    }
}
