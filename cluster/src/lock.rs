//! Cluster lock modes, their rules, and the lock-client API every filesystem operation uses.
//!
//! A lock covers the key range of a lock group ([`crate::lock_names`]). The modes and their
//! compatibility are those of scoutfs (digest §5.1): many readers, one writer, many
//! write-only holders (for items another lock already serializes), and null grants that
//! coexist with every mode on other nodes (seed 001, 2024-10-31).
//!
//! [`LockClient`] is what the filesystem layer calls. [`LocalLocks`] serves a single node: it
//! grants at once (there is nobody to invalidate) and hands out write_seqs from the open
//! transaction, which is what the item seq rule needs. The multi-node issue replaces the
//! service behind the trait, not its callers.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::format::Key;
use crate::lock_names::{lock_end, lock_start};

/// A lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LockMode {
    /// No access; a null grant is compatible with everything on other nodes.
    Null,
    /// Read and cache items; many holders.
    Read,
    /// Create and delete items without reading them; many holders.
    WriteOnly,
    /// Read and write items; exclusive.
    Write,
}

impl LockMode {
    /// Can a granted `self` be used for `want`?
    pub fn satisfies(self, want: LockMode) -> bool {
        self == want || (self == LockMode::Write && want == LockMode::Read)
    }

    /// Is a request for `self` by `req_rid` compatible with a grant of `granted` to
    /// `grant_rid`? (The server's rule.)
    pub fn compatible(self, req_rid: u64, granted: LockMode, grant_rid: u64) -> bool {
        use LockMode::*;
        if self == granted && matches!(self, Read | WriteOnly) {
            return true;
        }
        if req_rid == grant_rid {
            return granted == Read && self == Write;
        }
        self == Null || granted == Null
    }

    /// What a conflicting grant of `self` is reduced to when `requested` is wanted.
    pub fn invalidate_to(self, requested: LockMode) -> LockMode {
        if self == LockMode::Write && requested == LockMode::Read {
            LockMode::Read
        } else {
            LockMode::Null
        }
    }
}

/// A held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub start: Key,
    pub end: Key,
    pub mode: LockMode,
    /// Items written under this lock get at least this seq.
    pub write_seq: u64,
}

impl Lock {
    pub fn covers(&self, key: &Key) -> bool {
        self.start <= *key && *key <= self.end
    }
}

/// Why a lock could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("lock service unavailable: {0}")]
    Unavailable(String),
    /// The node was fenced or is shutting down: no lock will be granted again.
    #[error("lock client shut down: {0}")]
    Shutdown(String),
}

/// What the filesystem layer calls to lock key ranges.
///
/// The filesystem holds its mount mutex while it uses locks, and an invalidation needs that
/// mutex (to commit and drop cached items), so nobody may wait for a grant while holding it.
/// Operations therefore call [`LockClient::try_lock`] under the mutex; when it answers
/// `None` they undo nothing (they lock before they change anything), drop the mutex, call
/// [`LockClient::wait_grant`] and start over.
pub trait LockClient: Send + Sync {
    /// Use the lock of the group holding `key` in `mode` if a grant that satisfies it is held
    /// and not being invalidated to a mode that no longer satisfies it; `None` otherwise
    /// (never waits). `trans_seq` is the caller's open transaction.
    fn try_lock(
        &self,
        key: &Key,
        mode: LockMode,
        trans_seq: u64,
    ) -> Result<Option<Lock>, LockError>;
    /// Wait until a grant satisfying `mode` is held for the group of `key` (requesting it
    /// from the server if needed). Takes no use of the lock: the caller retries `try_lock`.
    fn wait_grant(&self, key: &Key, mode: LockMode) -> Result<(), LockError>;
    /// Release one use of a lock (the grant may be kept cached).
    fn unlock(&self, lock: &Lock);
    /// Counts grants received from the server; when it changes, other nodes may have
    /// committed items this node now may read, so readers sample fresh roots.
    fn grant_gen(&self) -> u64;
}

#[derive(Debug, Default)]
struct Held {
    mode: Option<LockMode>,
    users: u64,
    write_seq: u64,
    grants: u64,
}

/// Lock events of one mode, counted since the service started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockCounts {
    /// Lock calls asking for the mode.
    pub requests: u64,
    /// Requests that needed a new grant (the rest were served by a grant already held).
    pub grants: u64,
    /// Grants of the mode taken back for another node.
    pub invalidations: u64,
}

impl LockMode {
    pub const ALL: [LockMode; 4] = [
        LockMode::Null,
        LockMode::Read,
        LockMode::WriteOnly,
        LockMode::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LockMode::Null => "null",
            LockMode::Read => "read",
            LockMode::WriteOnly => "write_only",
            LockMode::Write => "write",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The lock service of a single-node cluster: every request is granted at once.
#[derive(Debug, Default)]
pub struct LocalLocks {
    held: Mutex<HashMap<Key, Held>>,
    counts: Mutex<[LockCounts; 4]>,
}

impl LocalLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests, grants and invalidations per mode so far. A single node never
    /// invalidates: nobody else asks.
    pub fn counts(&self) -> [(LockMode, LockCounts); 4] {
        let c = *self.counts.lock().expect("lock counts");
        LockMode::ALL.map(|m| (m, c[m.index()]))
    }

    /// Grants made per lock group so far (for tests and metrics).
    pub fn grants(&self, key: &Key) -> u64 {
        self.held
            .lock()
            .expect("lock table")
            .get(&lock_start(key))
            .map_or(0, |h| h.grants)
    }
}

impl LockClient for LocalLocks {
    fn try_lock(
        &self,
        key: &Key,
        mode: LockMode,
        trans_seq: u64,
    ) -> Result<Option<Lock>, LockError> {
        self.lock(key, mode, trans_seq).map(Some)
    }

    fn wait_grant(&self, _key: &Key, _mode: LockMode) -> Result<(), LockError> {
        Ok(())
    }

    fn unlock(&self, lock: &Lock) {
        let mut table = self.held.lock().expect("lock table");
        if let Some(h) = table.get_mut(&lock.start) {
            h.users = h.users.saturating_sub(1);
        }
    }

    fn grant_gen(&self) -> u64 {
        0
    }
}

impl LocalLocks {
    /// Grant at once (nobody else to invalidate) and take one use.
    pub fn lock(&self, key: &Key, mode: LockMode, trans_seq: u64) -> Result<Lock, LockError> {
        let start = lock_start(key);
        let mut table = self.held.lock().expect("lock table");
        let h = table.entry(start).or_default();
        let granted = h.mode.is_some_and(|m| m.satisfies(mode));
        if !granted {
            h.mode = Some(match h.mode {
                Some(m) if m > mode => m,
                _ => mode,
            });
            h.grants += 1;
            if matches!(mode, LockMode::Write | LockMode::WriteOnly) {
                h.write_seq = h.write_seq.max(trans_seq);
            }
        }
        h.users += 1;
        {
            let mut c = self.counts.lock().expect("lock counts");
            c[mode.index()].requests += 1;
            if !granted {
                c[mode.index()].grants += 1;
            }
        }
        Ok(Lock {
            start,
            end: lock_end(key),
            mode: h.mode.expect("granted"),
            write_seq: h.write_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LockMode::*;
    use super::*;

    #[test]
    fn compatibility_follows_the_scoutfs_rules() {
        // Same shared mode on different nodes.
        assert!(Read.compatible(1, Read, 2));
        assert!(WriteOnly.compatible(1, WriteOnly, 2));
        // Writers exclude everyone else.
        assert!(!Write.compatible(1, Read, 2));
        assert!(!Read.compatible(1, Write, 2));
        assert!(!Write.compatible(1, Write, 2));
        assert!(!WriteOnly.compatible(1, Read, 2));
        // Upgrade of one's own read grant.
        assert!(Write.compatible(1, Read, 1));
        assert!(!Read.compatible(1, Write, 1));
    }

    /// Seed 001 (2024-10-31): null grants are compatible with every mode on other nodes,
    /// and a null request against one's own grant is an invalidation of it.
    #[test]
    fn null_locks_are_compatible_across_nodes_seed_001_2024_10_31() {
        for m in [Null, Read, WriteOnly, Write] {
            assert!(Null.compatible(1, m, 2), "{m:?}");
            assert!(m.compatible(1, Null, 2), "{m:?}");
        }
        for m in [Read, WriteOnly, Write] {
            assert!(!Null.compatible(1, m, 1), "{m:?}");
        }
    }

    #[test]
    fn write_downgrades_to_read_for_readers_else_to_null() {
        assert_eq!(Write.invalidate_to(Read), Read);
        assert_eq!(Write.invalidate_to(Write), Null);
        assert_eq!(Read.invalidate_to(Write), Null);
    }

    #[test]
    fn local_locks_grant_and_reuse() {
        let l = LocalLocks::new();
        let k = Key::new(16, 5, 4, 0, 0, 0);
        let a = l.lock(&k, Read, 10).unwrap();
        assert!(a.covers(&Key::new(16, 1023, 8, 1, 1, 1)));
        let b = l.lock(&k, Read, 10).unwrap();
        assert_eq!(l.grants(&k), 1, "a held read grant serves the second read");
        let w = l.lock(&k, Write, 12).unwrap();
        assert_eq!(w.write_seq, 12);
        assert_eq!(l.grants(&k), 2);
        assert!(l.lock(&k, Read, 13).unwrap().mode.satisfies(Read));
        for x in [a, b, w] {
            l.unlock(&x);
        }
        let counts = l.counts();
        assert_eq!(
            counts[1].1,
            LockCounts {
                requests: 3,
                grants: 1,
                invalidations: 0
            }
        );
        assert_eq!(
            counts[3].1,
            LockCounts {
                requests: 1,
                grants: 1,
                invalidations: 0
            }
        );
    }
}
