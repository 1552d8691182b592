//! The lock server: the cluster's lock table, run by the elected leader (digest §5.4, §5.6).
//!
//! What it holds: for every lock (named by its start key, [`crate::lock_names::lock_start`])
//! the modes granted to clients (by rid), a FIFO of requests waiting for a grant, and the
//! invalidations sent to clients and not yet answered; the set of clients that must finish
//! lock recovery before any request is processed; the greatest `write_seq` clients reported
//! in recovery; and per-lock message counts (seed 001, 2021-08-25).
//!
//! What it is not: it owns no sockets, threads, timers or devices and reads no clock. Every
//! entry point takes one message (or event) and returns the messages to send as
//! [`LockAction`]s; the caller delivers them (a disconnected client is not an error: it will be
//! fenced and [`LockServer::remove_client`] drops its state). The core seq comes from the
//! caller (`next_seq`), so the server owns nothing persistent here either: after a failover
//! every grant is rebuilt from what clients report ([`LockServer::recover`]).
//!
//! Invalidations are server calls whose ids this server chooses
//! ([`LockServer::with_first_call_id`]); an answer names its call, so a late answer to a dead
//! server's call, or a second answer to one call, never answers another.
//!
//! Ordering: the actions of one call are in the order they must be sent. Messages of one lock
//! must reach the server, and its actions reach each client, in order (the transport hashes
//! lock messages to ordered workers); different locks are independent.
//!
//! Concurrency (seed 001, 2024-10-30): the table is a mutex over a map of reference-counted
//! lock objects, each with its own mutex. A caller takes a reference under the table mutex,
//! works under the lock's mutex only, and puts the reference under the table mutex again; an
//! unused object (no references, nothing granted, requested or being invalidated) is freed in
//! that same critical section, so nobody can find an object that is being freed and attach a
//! request to it. Lock order: table → lock state → recovery set.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::format::Key;
use crate::lock::LockMode;
use crate::msg::NetLock;

/// A message the lock server wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAction {
    /// Answer lock request `req_id` of client `rid` with this grant (old_mode = what the
    /// server believed rid held, new_mode = granted mode, write_seq set for Write/WriteOnly
    /// grants).
    Grant {
        rid: u64,
        req_id: u64,
        lock: NetLock,
    },
    /// Ask client `rid` to reduce its grant from lock.old_mode to lock.new_mode, as server
    /// call `call_id` (the transport sends it with that id, and the client's answer names it:
    /// that is how [`LockServer::invalidated`] knows which invalidation is answered).
    Invalidate {
        rid: u64,
        call_id: u64,
        lock: NetLock,
    },
}

impl LockAction {
    /// The client the message goes to.
    pub fn rid(&self) -> u64 {
        match self {
            LockAction::Grant { rid, .. } | LockAction::Invalidate { rid, .. } => *rid,
        }
    }

    /// The lock message carried.
    pub fn lock(&self) -> &NetLock {
        match self {
            LockAction::Grant { lock, .. } | LockAction::Invalidate { lock, .. } => lock,
        }
    }
}

/// Messages of one lock since its lock object was created (seed 001, 2021-08-25): where
/// conflicts happen. Counts go away with the object when the lock falls idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockMessageCounts {
    /// Lock requests received (resends included).
    pub requests: u64,
    /// Grants sent.
    pub grants: u64,
    /// Invalidations sent.
    pub invalidations: u64,
    /// Invalidation responses received (duplicates included).
    pub invalidation_responses: u64,
}

/// A granted mode of one client.
#[derive(Debug, Clone, Copy)]
struct Granted {
    rid: u64,
    /// The request this grant answered (0: recovered, or left by an invalidation answer).
    req_id: u64,
    mode: LockMode,
    write_seq: u64,
    /// Rebuilt from a client's recovery report rather than granted by this server: the client
    /// may still be invalidating it (it reports the old mode, seed 000), so a request for
    /// the same mode is not taken for a resend of an answered request.
    recovered: bool,
}

/// A request waiting for its grant.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    rid: u64,
    req_id: u64,
    mode: LockMode,
}

/// An invalidation sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Invalidating {
    rid: u64,
    /// The server call that carries it; the answer names it.
    call_id: u64,
    /// The mode the client was asked to reduce.
    from: LockMode,
    write_seq: u64,
    /// The request the grant answered (0: none).
    req_id: u64,
}

/// The state of one lock.
#[derive(Debug, Default)]
struct LockState {
    granted: Vec<Granted>,
    requested: VecDeque<Waiting>,
    invalidating: Vec<Invalidating>,
    counts: LockMessageCounts,
}

impl LockState {
    fn idle(&self) -> bool {
        self.granted.is_empty() && self.requested.is_empty() && self.invalidating.is_empty()
    }

    /// `rid` sent a request stating `old_mode`, and this server has not answered it, so no
    /// grant of it is on its way. A client asks only while no invalidation of the lock is
    /// queued or in progress and has one request per lock: until the grant it uses no more
    /// than `old_mode`. So a recovered grant (the client's report, maybe of a mode it was
    /// still giving up, seed 000) above it is lowered to it, and a Null one answers every
    /// invalidation of the rid in flight. Otherwise the client, which waits for the grant of
    /// its request before it applies an invalidation of that mode, and this server, which
    /// waits for the answer before it grants, would wait for each other.
    fn bound_by_request(&mut self, rid: u64, old_mode: LockMode) {
        if old_mode == LockMode::Null {
            self.invalidating.retain(|v| v.rid != rid);
        }
        if let Some(i) = self.granted.iter().position(|g| {
            g.rid == rid && g.recovered && g.mode != old_mode && old_mode != LockMode::Write
        }) {
            if old_mode == LockMode::Null {
                self.granted.remove(i);
            } else {
                self.granted[i].mode = old_mode;
            }
        }
    }

    /// Forget everything of `rid`; true when something was dropped.
    fn drop_rid(&mut self, rid: u64) -> bool {
        let before = self.granted.len() + self.requested.len() + self.invalidating.len();
        self.granted.retain(|g| g.rid != rid);
        self.requested.retain(|w| w.rid != rid);
        self.invalidating.retain(|v| v.rid != rid);
        before != self.granted.len() + self.requested.len() + self.invalidating.len()
    }

    /// Grant waiting requests in order until one conflicts with a grant (then invalidate the
    /// conflicting grants and wait) or none are left. Nothing moves while an invalidation is
    /// in flight or a client is still recovering (`blocked`).
    fn process(
        &mut self,
        key: Key,
        blocked: bool,
        next_seq: &mut dyn FnMut() -> u64,
        call_ids: &AtomicU64,
        out: &mut Vec<LockAction>,
    ) {
        if blocked {
            return;
        }
        while self.invalidating.is_empty() {
            let Some(head) = self.requested.front().copied() else {
                break;
            };
            let mut i = 0;
            while i < self.granted.len() {
                let g = self.granted[i];
                if head.mode.compatible(head.rid, g.mode, g.rid) {
                    i += 1;
                    continue;
                }
                self.granted.remove(i);
                let call_id = call_ids.fetch_add(1, Ordering::Relaxed);
                self.invalidating.push(Invalidating {
                    rid: g.rid,
                    call_id,
                    from: g.mode,
                    write_seq: g.write_seq,
                    req_id: g.req_id,
                });
                self.counts.invalidations += 1;
                out.push(LockAction::Invalidate {
                    rid: g.rid,
                    call_id,
                    lock: NetLock {
                        key,
                        write_seq: g.write_seq,
                        old_mode: g.mode,
                        new_mode: g.mode.invalidate_to(head.mode),
                    },
                });
            }
            if !self.invalidating.is_empty() {
                break;
            }
            self.requested.pop_front();
            let old_mode = match self.granted.iter().position(|g| g.rid == head.rid) {
                Some(i) => self.granted.remove(i).mode,
                None => LockMode::Null,
            };
            let write_seq = if matches!(head.mode, LockMode::Write | LockMode::WriteOnly) {
                next_seq()
            } else {
                0
            };
            if head.mode != LockMode::Null {
                self.granted.push(Granted {
                    rid: head.rid,
                    req_id: head.req_id,
                    mode: head.mode,
                    write_seq,
                    recovered: false,
                });
            }
            self.counts.grants += 1;
            out.push(LockAction::Grant {
                rid: head.rid,
                req_id: head.req_id,
                lock: NetLock {
                    key,
                    write_seq,
                    old_mode,
                    new_mode: head.mode,
                },
            });
        }
    }
}

/// One lock object of the table.
#[derive(Debug)]
struct ServerLock {
    key: Key,
    /// References taken by callers; changed only under the table mutex.
    users: AtomicUsize,
    state: Mutex<LockState>,
}

/// A poisoned mutex only means another caller panicked; its state is still the best we have
/// (and unwinding through [`LockRef`]'s drop must not panic again).
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reference to a lock object; dropping it puts the reference.
struct LockRef<'a> {
    server: &'a LockServer,
    lock: Arc<ServerLock>,
}

impl LockRef<'_> {
    fn state(&self) -> MutexGuard<'_, LockState> {
        locked(&self.lock.state)
    }
}

impl Drop for LockRef<'_> {
    fn drop(&mut self) {
        self.server.put(&self.lock);
    }
}

/// The lock server of the elected leader. All methods take `&self`; calls for different locks
/// run in parallel.
#[derive(Debug, Default)]
pub struct LockServer {
    table: Mutex<BTreeMap<Key, Arc<ServerLock>>>,
    /// Clients that must finish lock recovery (or be removed) before requests are processed.
    recovering: Mutex<BTreeSet<u64>>,
    max_write_seq: AtomicU64,
    /// The call id of the next invalidation.
    call_ids: AtomicU64,
}

impl LockServer {
    /// A lock server whose invalidation calls get ids from 1 on.
    pub fn new() -> Self {
        Self::with_first_call_id(1)
    }

    /// A lock server whose invalidation calls get ids from `first` on. Ids must not repeat
    /// those of an earlier server (a client may answer a dead server's call on its
    /// connection to this one): the leader starts at its term shifted past any count of
    /// calls, see [`first_call_id`].
    pub fn with_first_call_id(first: u64) -> Self {
        Self {
            call_ids: AtomicU64::new(first),
            ..Self::default()
        }
    }

    /// Clients that must finish lock recovery (or be removed) before ANY lock request is
    /// processed (digest 5.6).
    pub fn begin_recovery(&self, rids: &[u64]) {
        locked(&self.recovering).extend(rids.iter().copied());
    }

    /// Clients still in lock recovery.
    pub fn recovering(&self) -> Vec<u64> {
        locked(&self.recovering).iter().copied().collect()
    }

    /// A lock request (client says "I hold old_mode, want new_mode"). `next_seq` hands out
    /// the core seq (used for write_seq of Write/WriteOnly grants).
    ///
    /// Resends are expected (a client resends every unanswered request after reconnecting): a
    /// request already queued for the rid is not queued again (a different `req_id` replaces
    /// the queued one's: a client has one request per lock at a time); a resend of a request
    /// this server granted is answered again with that grant, also while it is being
    /// invalidated; and a request for the mode this server believes the rid holds is answered
    /// at once with it. A request not answered yet bounds what its client uses by its
    /// `old_mode` (see `LockState::bound_by_request`).
    pub fn request(
        &self,
        rid: u64,
        req_id: u64,
        req: NetLock,
        next_seq: &mut dyn FnMut() -> u64,
    ) -> Vec<LockAction> {
        let mut out = Vec::new();
        let lock = self.get(&req.key, true).expect("lock object created");
        {
            let mut st = lock.state();
            st.counts.requests += 1;
            // A resend of a request this server answered already (the grant was lost with a
            // connection): answer again with that grant as it stands, granted or being
            // invalidated (the client waits for it before it answers the invalidation).
            let answered = st
                .granted
                .iter()
                .find(|g| g.rid == rid && g.req_id == req_id)
                .map(|g| (g.mode, g.write_seq))
                .or_else(|| {
                    st.invalidating
                        .iter()
                        .find(|v| v.rid == rid && v.req_id == req_id)
                        .map(|v| (v.from, v.write_seq))
                });
            if answered.is_none() {
                st.bound_by_request(rid, req.old_mode);
            }
            // A request for the mode this server believes the rid holds is answered with it.
            let held = answered.or_else(|| {
                st.granted
                    .iter()
                    .find(|g| g.rid == rid && !g.recovered && g.mode == req.new_mode)
                    .map(|g| (g.mode, g.write_seq))
            });
            if let Some((mode, write_seq)) = held {
                // The grant was made but its answer lost: send it again.
                st.counts.grants += 1;
                out.push(LockAction::Grant {
                    rid,
                    req_id,
                    lock: NetLock {
                        key: req.key,
                        write_seq,
                        old_mode: req.old_mode,
                        new_mode: mode,
                    },
                });
            } else if let Some(w) = st.requested.iter_mut().find(|w| w.rid == rid) {
                w.req_id = req_id;
                w.mode = req.new_mode;
            } else {
                st.requested.push_back(Waiting {
                    rid,
                    req_id,
                    mode: req.new_mode,
                });
            }
            self.process(req.key, &mut st, next_seq, &mut out);
        }
        out
    }

    /// A client's answer to invalidation call `call_id` (new_mode = what it holds now,
    /// old_mode and write_seq echo the invalidation).
    ///
    /// Answers to no invalidation in flight are ignored: copies of one answered already, and
    /// answers to a dead server's calls (a client that was invalidating when that server
    /// died reported the old mode in recovery, seed 000, and answers on its new connection).
    /// Such an answer does not lower the recovered grant: a grant that arrived during that
    /// invalidation may be applied right after it, and recovery reported it too.
    pub fn invalidated(
        &self,
        rid: u64,
        call_id: u64,
        resp: NetLock,
        next_seq: &mut dyn FnMut() -> u64,
    ) -> Vec<LockAction> {
        let mut out = Vec::new();
        let Some(lock) = self.get(&resp.key, false) else {
            return out;
        };
        {
            let mut st = lock.state();
            st.counts.invalidation_responses += 1;
            if let Some(i) = st
                .invalidating
                .iter()
                .position(|v| v.rid == rid && v.call_id == call_id)
            {
                let v = st.invalidating.remove(i);
                if resp.new_mode != LockMode::Null {
                    st.granted.push(Granted {
                        rid,
                        req_id: 0,
                        mode: resp.new_mode,
                        write_seq: v.write_seq,
                        recovered: false,
                    });
                }
            } else {
                return out;
            }
            self.process(resp.key, &mut st, next_seq, &mut out);
        }
        out
    }

    /// A batch of granted locks a recovering client reported (new_mode = mode it holds;
    /// recreate granted entries; remember max write_seq). A batch sent again replaces what
    /// the first one recorded.
    pub fn recover(&self, rid: u64, locks: &[NetLock]) {
        for nl in locks {
            self.max_write_seq
                .fetch_max(nl.write_seq, Ordering::Relaxed);
            if nl.new_mode == LockMode::Null {
                continue;
            }
            let lock = self.get(&nl.key, true).expect("lock object created");
            let mut st = lock.state();
            st.granted.retain(|g| g.rid != rid);
            st.granted.push(Granted {
                rid,
                req_id: 0,
                mode: nl.new_mode,
                write_seq: nl.write_seq,
                recovered: true,
            });
        }
    }

    /// `rid` finished lock recovery; once nobody is recovering, waiting requests are
    /// processed.
    pub fn recovery_done(&self, rid: u64, next_seq: &mut dyn FnMut() -> u64) -> Vec<LockAction> {
        let last = {
            let mut rec = locked(&self.recovering);
            rec.remove(&rid) && rec.is_empty()
        };
        let mut out = Vec::new();
        if last {
            self.for_each_lock(|key, st| {
                self.process(key, st, next_seq, &mut out);
            });
        }
        out
    }

    /// `rid` left (farewell) or was fenced: drop its grants, requests and pending
    /// invalidations (also ends its recovery) and process what that unblocks.
    pub fn remove_client(&self, rid: u64, next_seq: &mut dyn FnMut() -> u64) -> Vec<LockAction> {
        let last = {
            let mut rec = locked(&self.recovering);
            rec.remove(&rid) && rec.is_empty()
        };
        let mut out = Vec::new();
        self.for_each_lock(|key, st| {
            if st.drop_rid(rid) || last {
                self.process(key, st, next_seq, &mut out);
            }
        });
        out
    }

    /// Greatest write_seq among recovered grants (the server moves its core seq past it;
    /// seed 001 2020-10-30 / 2021-06-15).
    pub fn max_write_seq(&self) -> u64 {
        self.max_write_seq.load(Ordering::Relaxed)
    }

    /// Message counts of every lock object, in key order.
    pub fn message_counts(&self) -> Vec<(Key, LockMessageCounts)> {
        let table = locked(&self.table);
        table
            .iter()
            .map(|(k, l)| (*k, locked(&l.state).counts))
            .collect()
    }

    /// Granted (rid, mode) entries of the lock starting at `key` (inspection and tests), by
    /// rid. Grants being invalidated are not listed.
    pub fn granted(&self, key: &Key) -> Vec<(u64, LockMode)> {
        let table = locked(&self.table);
        let mut v: Vec<(u64, LockMode)> = table.get(key).map_or(Vec::new(), |l| {
            locked(&l.state)
                .granted
                .iter()
                .map(|g| (g.rid, g.mode))
                .collect()
        });
        v.sort_unstable();
        v
    }

    /// Number of lock objects currently allocated (to test that idle ones are freed).
    pub fn lock_objects(&self) -> usize {
        locked(&self.table).len()
    }

    /// Grant what `st` can grant now (nothing while a client is recovering).
    fn process(
        &self,
        key: Key,
        st: &mut LockState,
        next_seq: &mut dyn FnMut() -> u64,
        out: &mut Vec<LockAction>,
    ) {
        st.process(key, self.any_recovering(), next_seq, &self.call_ids, out);
    }

    fn any_recovering(&self) -> bool {
        !locked(&self.recovering).is_empty()
    }

    /// Take a reference to the lock object of `key` (creating it if asked).
    fn get(&self, key: &Key, create: bool) -> Option<LockRef<'_>> {
        let mut table = locked(&self.table);
        let lock = match table.get(key) {
            Some(l) => Arc::clone(l),
            None if create => {
                let l = Arc::new(ServerLock {
                    key: *key,
                    users: AtomicUsize::new(0),
                    state: Mutex::new(LockState::default()),
                });
                table.insert(*key, Arc::clone(&l));
                l
            }
            None => return None,
        };
        lock.users.fetch_add(1, Ordering::Relaxed);
        Some(LockRef { server: self, lock })
    }

    /// Put a reference; the last user of an idle object frees it. Both happen under the table
    /// mutex, so no new reference can be taken between the test and the removal.
    fn put(&self, lock: &Arc<ServerLock>) {
        let mut table = locked(&self.table);
        if lock.users.fetch_sub(1, Ordering::Relaxed) == 1
            && locked(&lock.state).idle()
            && table.get(&lock.key).is_some_and(|l| Arc::ptr_eq(l, lock))
        {
            table.remove(&lock.key);
        }
    }

    /// Run `f` on every lock object, each under a reference and its own mutex.
    fn for_each_lock(&self, mut f: impl FnMut(Key, &mut LockState)) {
        let keys: Vec<Key> = locked(&self.table).keys().copied().collect();
        for key in keys {
            if let Some(lock) = self.get(&key, false) {
                f(key, &mut lock.state());
            }
        }
    }
}

/// The first invalidation call id of the lock server of leader term `term`: ids of
/// different terms never meet (2^40 calls per term).
pub fn first_call_id(term: u64) -> u64 {
    ((term + 1) << 40) | 1
}

#[cfg(test)]
mod tests {
    use super::LockMode::*;
    use super::*;
    use crate::format::key::zone;
    use crate::lock_client::{covers, join, meet};

    fn key(n: u64) -> Key {
        Key::new(zone::FS, n * 1024, 0, 0, 0, 0)
    }

    fn nl(key: Key, old_mode: LockMode, new_mode: LockMode) -> NetLock {
        NetLock {
            key,
            write_seq: 0,
            old_mode,
            new_mode,
        }
    }

    fn grant(
        rid: u64,
        req_id: u64,
        key: Key,
        old: LockMode,
        new: LockMode,
        seq: u64,
    ) -> LockAction {
        LockAction::Grant {
            rid,
            req_id,
            lock: NetLock {
                key,
                write_seq: seq,
                old_mode: old,
                new_mode: new,
            },
        }
    }

    /// An invalidation as [`Harness`] returns it (call ids are kept by the harness and
    /// shown as 0).
    fn inval(rid: u64, key: Key, old: LockMode, new: LockMode, seq: u64) -> LockAction {
        LockAction::Invalidate {
            rid,
            call_id: 0,
            lock: NetLock {
                key,
                write_seq: seq,
                old_mode: old,
                new_mode: new,
            },
        }
    }

    /// A lock as recovery reports it: `mode` held (or being given up), last `write_seq`.
    fn recovered(key: Key, mode: LockMode, write_seq: u64) -> NetLock {
        NetLock {
            key,
            write_seq,
            old_mode: mode,
            new_mode: mode,
        }
    }

    /// A server and the core seq it hands out (starting after 100). Answers name the last
    /// invalidation the server sent for that (rid, key, old mode) and echo its write_seq, as
    /// clients do.
    struct Harness {
        s: LockServer,
        seq: u64,
        /// (rid, key, old mode) → (call id, write_seq)
        sent: BTreeMap<(u64, Key, LockMode), (u64, u64)>,
    }

    impl Harness {
        fn new() -> Self {
            Harness {
                s: LockServer::new(),
                seq: 100,
                sent: BTreeMap::new(),
            }
        }

        /// Remember the invalidations in `acts`; return them with call ids shown as 0.
        fn seen(&mut self, acts: Vec<LockAction>) -> Vec<LockAction> {
            acts.into_iter()
                .map(|a| match a {
                    LockAction::Invalidate { rid, call_id, lock } => {
                        self.sent
                            .insert((rid, lock.key, lock.old_mode), (call_id, lock.write_seq));
                        LockAction::Invalidate {
                            rid,
                            call_id: 0,
                            lock,
                        }
                    }
                    grant => grant,
                })
                .collect()
        }

        fn req(
            &mut self,
            rid: u64,
            req_id: u64,
            k: Key,
            old: LockMode,
            new: LockMode,
        ) -> Vec<LockAction> {
            let seq = &mut self.seq;
            let acts = self.s.request(rid, req_id, nl(k, old, new), &mut || {
                *seq += 1;
                *seq
            });
            self.seen(acts)
        }

        fn answer(&mut self, rid: u64, k: Key, old: LockMode, new: LockMode) -> Vec<LockAction> {
            let (call_id, write_seq) = self.sent.get(&(rid, k, old)).copied().unwrap_or((0, 0));
            let seq = &mut self.seq;
            let resp = NetLock {
                write_seq,
                ..nl(k, old, new)
            };
            let acts = self.s.invalidated(rid, call_id, resp, &mut || {
                *seq += 1;
                *seq
            });
            self.seen(acts)
        }

        fn done(&mut self, rid: u64) -> Vec<LockAction> {
            let seq = &mut self.seq;
            let acts = self.s.recovery_done(rid, &mut || {
                *seq += 1;
                *seq
            });
            self.seen(acts)
        }

        fn remove(&mut self, rid: u64) -> Vec<LockAction> {
            let seq = &mut self.seq;
            let acts = self.s.remove_client(rid, &mut || {
                *seq += 1;
                *seq
            });
            self.seen(acts)
        }
    }

    #[test]
    fn first_request_is_granted_at_once_and_null_grants_are_not_tracked() {
        let mut h = Harness::new();
        let k = key(1);
        assert_eq!(
            h.req(1, 10, k, Null, Read),
            [grant(1, 10, k, Null, Read, 0)]
        );
        assert_eq!(h.s.granted(&k), [(1, Read)]);
        // Dropping its own read: the server asks the client to invalidate it first.
        assert_eq!(h.req(1, 11, k, Read, Null), [inval(1, k, Read, Null, 0)]);
        assert_eq!(h.answer(1, k, Read, Null), [grant(1, 11, k, Null, Null, 0)]);
        assert!(h.s.granted(&k).is_empty());
        assert_eq!(h.s.lock_objects(), 0, "an idle lock object is freed");
        // A null request for a lock never held is answered and leaves nothing behind.
        assert_eq!(h.req(2, 1, k, Null, Null), [grant(2, 1, k, Null, Null, 0)]);
        assert_eq!(h.s.lock_objects(), 0);
    }

    #[test]
    fn write_request_invalidates_every_reader_and_waits_for_all_answers() {
        let mut h = Harness::new();
        let k = key(1);
        h.req(1, 1, k, Null, Read);
        h.req(2, 1, k, Null, Read);
        assert_eq!(
            h.req(3, 1, k, Null, Write),
            [inval(1, k, Read, Null, 0), inval(2, k, Read, Null, 0)]
        );
        // Later requests queue behind the head, even compatible ones.
        assert!(h.req(4, 1, k, Null, Null).is_empty());
        assert!(
            h.answer(1, k, Read, Null).is_empty(),
            "rid 2 has not answered"
        );
        assert_eq!(
            h.answer(2, k, Read, Null),
            [
                grant(3, 1, k, Null, Write, 101),
                grant(4, 1, k, Null, Null, 0)
            ]
        );
        assert_eq!(h.s.granted(&k), [(3, Write)]);
    }

    /// (f) A reader wanting a written lock leaves the writer its cache: WRITE → READ.
    #[test]
    fn write_is_downgraded_to_read_for_a_reader() {
        let mut h = Harness::new();
        let k = key(1);
        assert_eq!(
            h.req(1, 1, k, Null, Write),
            [grant(1, 1, k, Null, Write, 101)]
        );
        assert_eq!(h.req(2, 1, k, Null, Read), [inval(1, k, Write, Read, 101)]);
        assert_eq!(h.answer(1, k, Write, Read), [grant(2, 1, k, Null, Read, 0)]);
        assert_eq!(h.s.granted(&k), [(1, Read), (2, Read)]);
    }

    /// (f) A writer wanting a written lock takes it whole: WRITE → NULL.
    #[test]
    fn write_is_invalidated_to_null_for_a_writer() {
        let mut h = Harness::new();
        let k = key(1);
        h.req(1, 1, k, Null, Write);
        assert_eq!(h.req(2, 1, k, Null, Write), [inval(1, k, Write, Null, 101)]);
        assert_eq!(
            h.answer(1, k, Write, Null),
            [grant(2, 1, k, Null, Write, 102)]
        );
        assert_eq!(h.s.granted(&k), [(2, Write)]);
        // Write-only holders are invalidated to null for readers too.
        h.req(3, 1, key(2), Null, WriteOnly);
        assert_eq!(
            h.req(4, 1, key(2), Null, Read),
            [inval(3, key(2), WriteOnly, Null, 103)]
        );
    }

    /// (f) Shared modes coexist across clients; read and write_only exclude each other.
    #[test]
    fn many_readers_and_many_write_only_holders_coexist() {
        let mut h = Harness::new();
        let (r, w) = (key(1), key(2));
        for rid in 1..=5 {
            assert_eq!(
                h.req(rid, 1, r, Null, Read),
                [grant(rid, 1, r, Null, Read, 0)]
            );
            let acts = h.req(rid, 1, w, Null, WriteOnly);
            assert!(
                matches!(acts[..], [LockAction::Grant { rid: g, lock, .. }] if g == rid && lock.new_mode == WriteOnly),
                "{acts:?}"
            );
        }
        assert_eq!(h.s.granted(&r).len(), 5);
        assert_eq!(h.s.granted(&w).len(), 5);
        // Each write_only grant got its own, increasing write_seq.
        assert_eq!(h.seq, 105);
        // A reader of the write_only lock must wait for all five.
        assert_eq!(h.req(6, 1, w, Null, Read).len(), 5);
    }

    #[test]
    fn read_upgrade_to_write_keeps_own_read_and_invalidates_other_readers() {
        let mut h = Harness::new();
        let k = key(1);
        h.req(1, 1, k, Null, Read);
        h.req(2, 1, k, Null, Read);
        assert_eq!(h.req(1, 2, k, Read, Write), [inval(2, k, Read, Null, 0)]);
        assert_eq!(
            h.answer(2, k, Read, Null),
            [grant(1, 2, k, Read, Write, 101)]
        );
        assert_eq!(h.s.granted(&k), [(1, Write)]);
    }

    /// Seed 001 (2024-10-31): a null request conflicts only with the requester's own grant.
    #[test]
    fn null_request_spares_other_rids_and_invalidates_own_grant_seed_001_2024_10_31() {
        let mut h = Harness::new();
        let (r, w) = (key(1), key(2));
        h.req(1, 1, r, Null, Read);
        h.req(2, 1, w, Null, Write);
        // rid 3 holds nothing: its null requests are answered without touching anyone.
        assert_eq!(h.req(3, 1, r, Null, Null), [grant(3, 1, r, Null, Null, 0)]);
        assert_eq!(h.req(3, 2, w, Null, Null), [grant(3, 2, w, Null, Null, 0)]);
        assert_eq!(h.s.granted(&r), [(1, Read)]);
        assert_eq!(h.s.granted(&w), [(2, Write)]);
        // rid 2 dropping its own write is an invalidation of that write.
        assert_eq!(h.req(2, 2, w, Write, Null), [inval(2, w, Write, Null, 101)]);
        assert!(h.s.granted(&w).is_empty());
        assert_eq!(h.answer(2, w, Write, Null), [grant(2, 2, w, Null, Null, 0)]);
        assert_eq!(h.s.granted(&r), [(1, Read)], "other locks untouched");
    }

    /// Seed 000 (ca526e2b): a client that was invalidating WRITE when the server failed
    /// reports the old WRITE; the new server invalidates it again and grants the waiting
    /// reader only after that answer.
    #[test]
    fn recovered_old_mode_is_invalidated_again_before_granting_seed_000_ca526e2b() {
        let mut h = Harness::new();
        let k = key(1);
        h.s.begin_recovery(&[1, 2]);
        h.s.recover(
            1,
            &[NetLock {
                key: k,
                write_seq: 40,
                old_mode: Write,
                new_mode: Write,
            }],
        );
        // B's request, resent to the new server, waits for recovery.
        assert!(h.req(2, 7, k, Null, Read).is_empty());
        assert!(h.done(1).is_empty());
        assert_eq!(h.done(2), [inval(1, k, Write, Read, 40)]);
        // A's answer to the dead server's invalidation never arrives; nothing is granted
        // until A answers this one.
        assert!(
            h.req(2, 7, k, Null, Read).is_empty(),
            "resend changes nothing"
        );
        assert_eq!(h.s.granted(&k), []);
        assert_eq!(h.answer(1, k, Write, Read), [grant(2, 7, k, Null, Read, 0)]);
        // The duplicate answer (A processes both invalidations) is ignored.
        assert!(h.answer(1, k, Write, Read).is_empty());
        assert_eq!(h.s.granted(&k), [(1, Read), (2, Read)]);
    }

    /// A client's request states the mode it holds, and until its grant it uses no more
    /// (it asks only while no invalidation of the lock is queued or in progress). A recovered
    /// grant above that (reported while the client was still giving it up, seed 000, its
    /// answer to the dead server lost) is lowered to it, not invalidated: the client would
    /// wait for this grant before answering such an invalidation.
    #[test]
    fn a_requests_old_mode_lowers_a_recovered_grant_above_it() {
        let mut h = Harness::new();
        let k = key(1);
        h.s.begin_recovery(&[1]);
        h.s.recover(1, &[recovered(k, Write, 9)]);
        assert!(h.req(1, 3, k, Null, Write).is_empty());
        assert_eq!(h.done(1), [grant(1, 3, k, Null, Write, 101)]);
    }

    /// A client that was giving up a recovered mode answers the dead server's invalidation on
    /// its new connection: that changes nothing here (a grant deferred behind that
    /// invalidation may follow it, and recovery reported it). The recovered grant is
    /// invalidated again when a request needs it; seed 000.
    #[test]
    fn a_late_answer_to_a_dead_servers_call_changes_nothing_seed_000_ca526e2b() {
        let mut h = Harness::new();
        let k = key(1);
        h.s.begin_recovery(&[1, 2]);
        h.s.recover(1, &[recovered(k, Write, 9)]);
        let late = NetLock {
            write_seq: 9,
            ..nl(k, Write, Read)
        };
        assert!(h
            .s
            .invalidated(1, first_call_id(3) + 5, late, &mut || 0)
            .is_empty());
        assert_eq!(h.s.granted(&k), [(1, Write)]);
        assert!(h.req(2, 4, k, Null, Read).is_empty());
        h.done(1);
        assert_eq!(h.done(2), [inval(1, k, Write, Read, 9)]);
        assert_eq!(h.answer(1, k, Write, Read), [grant(2, 4, k, Null, Read, 0)]);
    }

    /// An answer names its invalidation by call id: a late answer to a dead server's
    /// invalidation of the same mode does not answer this server's invalidation.
    #[test]
    fn an_answer_names_its_invalidation_by_call_id() {
        let mut h = Harness::new();
        let k = key(1);
        assert_eq!(
            h.req(1, 1, k, Null, Write),
            [grant(1, 1, k, Null, Write, 101)]
        );
        assert_eq!(h.req(2, 2, k, Null, Read), [inval(1, k, Write, Read, 101)]);
        let stale = NetLock {
            write_seq: 101,
            ..nl(k, Write, Read)
        };
        let dead_servers_call = first_call_id(7) + 3;
        assert!(h
            .s
            .invalidated(1, dead_servers_call, stale, &mut || 0)
            .is_empty());
        assert_eq!(h.s.granted(&k), []);
        assert_eq!(h.answer(1, k, Write, Read), [grant(2, 2, k, Null, Read, 0)]);
    }

    /// Recovery reports a read being invalidated as read; the same client's upgrade to write
    /// is compatible with it (digest §5.1 rule 2), so a new server may grant it while the
    /// client still finishes the dead server's invalidation. Other clients still wait for it.
    #[test]
    fn recovered_read_still_allows_its_holders_upgrade() {
        let mut h = Harness::new();
        let k = key(1);
        h.s.begin_recovery(&[1, 2]);
        h.s.recover(
            1,
            &[NetLock {
                key: k,
                write_seq: 0,
                old_mode: Read,
                new_mode: Read,
            }],
        );
        assert!(h.req(1, 4, k, Read, Write).is_empty());
        assert!(h.req(2, 9, k, Null, Write).is_empty());
        h.done(1);
        assert_eq!(
            h.done(2),
            [
                grant(1, 4, k, Read, Write, 101),
                inval(1, k, Write, Null, 101)
            ]
        );
    }

    /// Seed 001 (2020-10-30, 2021-06-15): write grants carry increasing core seqs, and the
    /// write_seqs clients report in recovery are remembered so the new server's core seq can
    /// move past them.
    #[test]
    fn write_seqs_increase_and_recovery_reports_the_max_seed_001_2020_10_30() {
        let mut h = Harness::new();
        let mut last = 0;
        for (i, rid) in (1..=4).enumerate() {
            let acts = h.req(rid, i as u64, key(1), Null, Write);
            let acts = if acts.len() == 1 && matches!(acts[0], LockAction::Invalidate { .. }) {
                let prev = acts[0].rid();
                h.answer(prev, key(1), Write, Null)
            } else {
                acts
            };
            let ws = acts[0].lock().write_seq;
            assert!(ws > last, "{ws} after {last}");
            last = ws;
        }
        let wo = h.req(9, 1, key(2), Null, WriteOnly)[0].lock().write_seq;
        assert!(wo > last);
        assert_eq!(h.s.max_write_seq(), 0, "nothing recovered yet");

        let s = LockServer::new();
        s.begin_recovery(&[1, 2]);
        s.recover(
            1,
            &[NetLock {
                key: key(1),
                write_seq: 77,
                old_mode: Write,
                new_mode: Write,
            }],
        );
        s.recover(
            2,
            &[
                NetLock {
                    key: key(2),
                    write_seq: 91,
                    old_mode: WriteOnly,
                    new_mode: WriteOnly,
                },
                NetLock {
                    key: key(3),
                    write_seq: 12,
                    old_mode: Read,
                    new_mode: Read,
                },
            ],
        );
        assert_eq!(s.max_write_seq(), 91);
        // The server's core seq moves past it; the next write grant is above every item.
        let mut core = s.max_write_seq();
        let mut next = || {
            core += 1;
            core
        };
        s.recovery_done(1, &mut next);
        s.recovery_done(2, &mut next);
        let acts = s.request(3, 1, nl(key(4), Null, Write), &mut next);
        assert_eq!(acts, [grant(3, 1, key(4), Null, Write, 92)]);
    }

    /// (d) No lock moves while any client recovers; recovery_done or removal releases them.
    #[test]
    fn requests_wait_while_any_client_recovers() {
        let mut h = Harness::new();
        h.s.begin_recovery(&[1, 2, 3]);
        assert!(h.req(1, 1, key(1), Null, Read).is_empty());
        assert!(
            h.req(4, 1, key(2), Null, Write).is_empty(),
            "even a new client waits"
        );
        h.s.recover(1, &[]);
        assert!(h.done(1).is_empty());
        assert!(h.done(1).is_empty(), "a repeated done changes nothing");
        assert_eq!(h.s.recovering(), [2, 3]);
        assert!(h.done(2).is_empty());
        // rid 3 never comes back: fencing it ends recovery.
        assert_eq!(
            h.remove(3),
            [
                grant(1, 1, key(1), Null, Read, 0),
                grant(4, 1, key(2), Null, Write, 101)
            ]
        );
        assert!(h.s.recovering().is_empty());
        // Once recovered, requests are processed at once.
        assert_eq!(
            h.req(2, 1, key(3), Null, Read),
            [grant(2, 1, key(3), Null, Read, 0)]
        );

        let mut h = Harness::new();
        h.s.begin_recovery(&[1]);
        assert!(h.req(2, 5, key(1), Null, Read).is_empty());
        assert_eq!(h.done(1), [grant(2, 5, key(1), Null, Read, 0)]);
    }

    /// (e) Resent requests: queued once, answered once; a resend whose grant was made (and
    /// lost) is answered again with the same write_seq.
    #[test]
    fn resent_requests_are_answered_once_and_held_modes_regranted() {
        let mut h = Harness::new();
        let k = key(1);
        h.req(1, 1, k, Null, Write);
        assert_eq!(h.req(2, 8, k, Null, Write), [inval(1, k, Write, Null, 101)]);
        assert!(h.req(2, 8, k, Null, Write).is_empty());
        assert!(h.req(2, 8, k, Null, Write).is_empty());
        assert_eq!(
            h.answer(1, k, Write, Null),
            [grant(2, 8, k, Null, Write, 102)],
            "one grant for three copies"
        );
        // The grant got lost; the client resends: answered at once, same write_seq, no new seq.
        let seq = h.seq;
        assert_eq!(
            h.req(2, 8, k, Null, Write),
            [grant(2, 8, k, Null, Write, 102)]
        );
        assert_eq!(h.seq, seq);
        assert_eq!(h.s.granted(&k), [(2, Write)]);
        // A queued request resent under a new id is answered once, under the new id.
        h.req(3, 1, k, Null, Read);
        assert!(h.req(3, 2, k, Null, Read).is_empty());
        assert_eq!(h.answer(2, k, Write, Read), [grant(3, 2, k, Null, Read, 0)]);
        let c = h.s.message_counts();
        assert_eq!(c[0].1.requests, 7);
    }

    /// (g) A fenced (or departed) holder's grants go away and the waiter gets its lock.
    #[test]
    fn removing_a_holder_unblocks_a_waiting_request() {
        let mut h = Harness::new();
        let k = key(1);
        h.req(1, 1, k, Null, Write);
        assert_eq!(h.req(2, 1, k, Null, Write), [inval(1, k, Write, Null, 101)]);
        assert!(h.req(3, 1, k, Null, Read).is_empty());
        // The head request's client leaves: the next waits for the same invalidation.
        assert_eq!(h.remove(2), []);
        // rid 1 dies without answering.
        assert_eq!(h.remove(1), [grant(3, 1, k, Null, Read, 0)]);
        assert!(
            h.answer(1, k, Write, Null).is_empty(),
            "late answer of the fenced client"
        );
        assert_eq!(h.s.granted(&k), [(3, Read)]);
        assert_eq!(h.remove(3), []);
        assert_eq!(h.s.lock_objects(), 0);
    }

    #[test]
    fn duplicate_and_unknown_invalidation_responses_are_ignored() {
        let mut h = Harness::new();
        let k = key(1);
        assert!(h.answer(1, key(5), Read, Null).is_empty());
        assert_eq!(h.s.lock_objects(), 0, "an unknown answer creates nothing");
        h.req(1, 1, k, Null, Write);
        h.req(2, 1, k, Null, Read);
        h.answer(1, k, Write, Read);
        assert_eq!(h.s.granted(&k), [(1, Read), (2, Read)]);
        // A stale echo of an older invalidation does not answer the current one.
        assert_eq!(
            h.req(3, 1, k, Null, Write),
            [inval(1, k, Read, Null, 101), inval(2, k, Read, Null, 0)]
        );
        assert!(h.answer(1, k, Write, Read).is_empty());
        assert!(h.answer(1, k, Read, Null).is_empty());
        assert!(h.answer(1, k, Read, Null).is_empty(), "duplicate");
        assert_eq!(
            h.answer(2, k, Read, Null),
            [grant(3, 1, k, Null, Write, 102)]
        );
        assert_eq!(h.s.granted(&k), [(3, Write)]);
    }

    /// Seed 001 (2021-08-25): per-lock message counts.
    #[test]
    fn message_counts_are_kept_per_lock_seed_001_2021_08_25() {
        let mut h = Harness::new();
        h.req(1, 1, key(1), Null, Write);
        h.req(2, 1, key(1), Null, Write);
        h.answer(1, key(1), Write, Null);
        h.answer(1, key(1), Write, Null);
        h.req(1, 2, key(2), Null, Read);
        assert_eq!(
            h.s.message_counts(),
            [
                (
                    key(1),
                    LockMessageCounts {
                        requests: 2,
                        grants: 2,
                        invalidations: 1,
                        invalidation_responses: 2
                    }
                ),
                (
                    key(2),
                    LockMessageCounts {
                        requests: 1,
                        grants: 1,
                        invalidations: 0,
                        invalidation_responses: 0
                    }
                )
            ]
        );
    }

    #[test]
    fn recovery_batches_resent_replace_rather_than_duplicate() {
        let s = LockServer::new();
        let k = key(1);
        s.begin_recovery(&[1]);
        let batch = [NetLock {
            key: k,
            write_seq: 3,
            old_mode: Read,
            new_mode: Read,
        }];
        s.recover(1, &batch);
        s.recover(1, &batch);
        assert_eq!(s.granted(&k), [(1, Read)]);
        s.recover(
            1,
            &[NetLock {
                key: key(2),
                write_seq: 0,
                old_mode: Null,
                new_mode: Null,
            }],
        );
        assert_eq!(s.lock_objects(), 1, "null reports make no lock object");
    }

    // ---- seed 001 (2024-10-30): concurrent gets and puts -------------------------------

    /// Per-rid mailboxes the test threads deliver actions to.
    struct Net {
        boxes: Vec<(Mutex<Vec<LockAction>>, std::sync::Condvar)>,
    }

    impl Net {
        fn deliver(&self, acts: Vec<LockAction>) {
            for a in acts {
                let (m, cv) = &self.boxes[(a.rid() - 1) as usize];
                m.lock().unwrap().push(a);
                cv.notify_all();
            }
        }
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Seed 001 (2024-10-30): threads race requests and reference puts on the same keys and
    /// on keys that keep falling idle (freed and created again). A request attached to an
    /// object being freed would never be answered; every one must be, and once everything
    /// is dropped to null no object is left.
    #[test]
    fn racing_requests_and_puts_lose_no_request_seed_001_2024_10_30() {
        use std::sync::Condvar;
        use std::time::Duration;
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 250;
        let server = Arc::new(LockServer::new());
        let core = Arc::new(AtomicU64::new(1));
        let net = Arc::new(Net {
            boxes: (0..THREADS)
                .map(|_| (Mutex::new(Vec::new()), Condvar::new()))
                .collect(),
        });
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let inspector = {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = server.message_counts();
                    let _ = server.granted(&key(0));
                    let _ = server.lock_objects();
                    std::thread::yield_now();
                }
            })
        };
        let threads: Vec<_> = (1..=THREADS)
            .map(|rid| {
                let (server, core, net) =
                    (Arc::clone(&server), Arc::clone(&core), Arc::clone(&net));
                std::thread::spawn(move || {
                    let mut rng = rid.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let mut next_seq = || core.fetch_add(1, Ordering::Relaxed);
                    let mut req_id = 0;
                    // Send one request and serve invalidations until its grant arrives.
                    let mut ask =
                        |k: Key,
                         old: LockMode,
                         new: LockMode,
                         next_seq: &mut dyn FnMut() -> u64| {
                            req_id += 1;
                            net.deliver(server.request(rid, req_id, nl(k, old, new), next_seq));
                            let (m, cv) = &net.boxes[(rid - 1) as usize];
                            loop {
                                let msgs = {
                                    let mut b = m.lock().unwrap();
                                    if b.is_empty() {
                                        let (g, to) =
                                            cv.wait_timeout(b, Duration::from_secs(30)).unwrap();
                                        assert!(
                                            !to.timed_out(),
                                            "rid {rid} request {req_id} for {new:?} was lost"
                                        );
                                        b = g;
                                    }
                                    std::mem::take(&mut *b)
                                };
                                let mut granted = None;
                                for msg in msgs {
                                    match msg {
                                        LockAction::Grant {
                                            req_id: id, lock, ..
                                        } => {
                                            assert_eq!(id, req_id, "one request at a time");
                                            granted = Some(lock.new_mode);
                                        }
                                        LockAction::Invalidate { call_id, lock, .. } => {
                                            net.deliver(
                                                server.invalidated(rid, call_id, lock, next_seq),
                                            );
                                        }
                                    }
                                }
                                if let Some(mode) = granted {
                                    return mode;
                                }
                            }
                        };
                    for _ in 0..ROUNDS {
                        let r = xorshift(&mut rng);
                        // Three shared keys and one private key per thread.
                        let k = if r % 4 == 3 {
                            key(100 + rid)
                        } else {
                            key(r % 3)
                        };
                        let mode = match (r >> 8) % 8 {
                            0 => Write,
                            1 => WriteOnly,
                            _ => Read,
                        };
                        assert_eq!(ask(k, Null, mode, &mut next_seq), mode);
                        assert_eq!(ask(k, mode, Null, &mut next_seq), Null);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
        stop.store(true, Ordering::Relaxed);
        inspector.join().unwrap();
        assert_eq!(server.lock_objects(), 0, "every idle lock object was freed");
    }

    // ---- (h) random schedules -----------------------------------------------------------

    /// A client → server message of the simulation.
    #[derive(Debug, Clone, Copy)]
    enum Up {
        Request {
            req_id: u64,
            lock: NetLock,
        },
        /// The answer to server call `call`.
        Invalidated {
            lock: NetLock,
            call: u64,
        },
        /// Lock recovery: the client's locks as they are when this is delivered, then done.
        Recover,
    }

    /// An invalidation the simulated client is working on: it already uses `to`, but still
    /// writes out and drops what `from` allowed, so until it answers it counts as `from`.
    #[derive(Debug, Clone, Copy)]
    struct Work {
        from: LockMode,
        to: LockMode,
        call: Call,
    }

    /// An invalidation call as a client received it.
    #[derive(Debug, Clone, Copy)]
    struct Call {
        inv: NetLock,
        /// The server that sent it.
        epoch: u64,
        id: u64,
    }

    /// A client that always obeys, following the rules of the real lock client
    /// ([`crate::lock_client`] module doc): invalidations of a lock one at a time in arrival
    /// order; one that reduces a grant still on its way waits for it; a grant arriving while
    /// an invalidation is in progress is applied after the answer; no new request while an
    /// invalidation of the lock is queued or in progress.
    #[derive(Debug, Default)]
    struct SimClient {
        rid: u64,
        held: BTreeMap<usize, (LockMode, u64)>,
        /// Outstanding request per key: (req_id, the request as sent).
        pending: BTreeMap<usize, (u64, NetLock)>,
        working: BTreeMap<usize, Work>,
        queued_invals: BTreeMap<usize, VecDeque<Call>>,
        /// A grant (req_id, lock) that arrived while an invalidation was in progress.
        deferred: BTreeMap<usize, (u64, NetLock)>,
        /// Greatest write_seq granted per key, forgotten when the key falls idle (as the
        /// real client drops idle entries).
        known_ws: BTreeMap<usize, u64>,
        /// Invalidation calls answered (the real client keeps the last few thousand).
        answered: BTreeSet<u64>,
        /// Server messages in flight: (message, epoch of the server, call id of an
        /// invalidation).
        inbox: VecDeque<(LockAction, u64, u64)>,
        outbox: VecDeque<Up>,
    }

    impl SimClient {
        fn mode(&self, k: usize) -> LockMode {
            self.held.get(&k).map_or(Null, |h| h.0)
        }

        /// The modes the client may be using: the held one, and while invalidating also the
        /// old one (it is still writing out and dropping what that allowed).
        fn uses(&self, k: usize) -> [LockMode; 2] {
            [self.mode(k), self.working.get(&k).map_or(Null, |w| w.from)]
        }

        /// What lock recovery reports: the old mode while invalidating (seed 000), joined
        /// with a grant waiting for that invalidation's answer.
        fn report(&self, k: usize) -> (LockMode, u64) {
            let mut ws = self.known_ws.get(&k).copied().unwrap_or(0);
            let mut m = self.working.get(&k).map_or(self.mode(k), |w| w.from);
            if let Some((_, g)) = self.deferred.get(&k) {
                m = join(m, g.new_mode);
                ws = ws.max(g.write_seq);
            }
            (m, ws)
        }

        fn set_mode(&mut self, k: usize, mode: LockMode, write_seq: u64) {
            if mode == Null {
                self.held.remove(&k);
            } else {
                self.held.insert(k, (mode, write_seq));
            }
        }

        fn apply_grant(&mut self, k: usize, req_id: u64, lock: NetLock) {
            let (pending_id, sent) = self.pending.remove(&k).expect("grant answers a request");
            assert_eq!(pending_id, req_id);
            assert_eq!(sent.new_mode, lock.new_mode);
            self.set_mode(k, lock.new_mode, lock.write_seq);
            let ws = self.known_ws.entry(k).or_default();
            *ws = (*ws).max(lock.write_seq);
            self.advance(k);
            self.gc(k);
        }

        /// Forget what the real client forgets when a lock falls idle.
        fn gc(&mut self, k: usize) {
            if self.mode(k) == Null
                && !self.pending.contains_key(&k)
                && !self.working.contains_key(&k)
                && !self.deferred.contains_key(&k)
                && self.queued_invals.get(&k).is_none_or(|q| q.is_empty())
            {
                self.known_ws.remove(&k);
            }
        }

        /// Start the head invalidation of `k` if nothing is in progress and it does not
        /// reduce a grant still on its way.
        fn advance(&mut self, k: usize) {
            if self.working.contains_key(&k) {
                return;
            }
            let Some(&call) = self.queued_invals.get(&k).and_then(|q| q.front()) else {
                return;
            };
            let inv = call.inv;
            let stale_write = matches!(inv.old_mode, Write | WriteOnly)
                && inv.write_seq != 0
                && inv.write_seq <= self.known_ws.get(&k).copied().unwrap_or(0);
            let answered_already = self.answered.contains(&call.id);
            if self
                .pending
                .get(&k)
                .is_some_and(|(_, sent)| sent.new_mode == inv.old_mode)
                && !covers(self.mode(k), inv.old_mode)
                && !stale_write
                && !answered_already
            {
                return;
            }
            self.queued_invals.get_mut(&k).map(|q| q.pop_front());
            let from = self.mode(k);
            let older_than_grant = matches!(inv.old_mode, Write | WriteOnly)
                && inv.write_seq != 0
                && inv.write_seq < self.known_ws.get(&k).copied().unwrap_or(0)
                && from == inv.old_mode;
            let to = if older_than_grant || answered_already {
                from
            } else {
                meet(from, inv.new_mode)
            };
            let ws = self.held.get(&k).map_or(0, |h| h.1);
            self.set_mode(k, to, ws);
            self.working.insert(k, Work { from, to, call });
        }
    }

    /// The next core seq of the simulated leader: past every write_seq lock recovery
    /// reported to `server`.
    fn core_seq(seq: &mut u64, server: &LockServer) -> u64 {
        *seq = (*seq).max(server.max_write_seq()) + 1;
        *seq
    }

    struct Sim {
        server: LockServer,
        epoch: u64,
        seq: u64,
        keys: Vec<Key>,
        clients: Vec<SimClient>,
        next_rid: u64,
        next_req_id: u64,
        last_write_seq: u64,
        /// The core seq the current server started from.
        epoch_first_seq: u64,
        /// The current server's invalidation calls not answered yet: id → (rid, lock).
        calls: BTreeMap<u64, (u64, NetLock)>,
        /// The write_seq of the last write grant per (rid, key).
        write_seqs: BTreeMap<(u64, usize), u64>,
        stats: SimStats,
        /// Print every message (set LOCK_SIM_TRACE=1 to follow a failing schedule).
        trace: bool,
    }

    /// What a schedule exercised.
    #[derive(Debug, Default, Clone, Copy)]
    struct SimStats {
        grants: u64,
        invalidations: u64,
        fences: u64,
        failovers: u64,
        /// Grants of a newer server reaching a client still finishing an older invalidation.
        grants_while_invalidating: u64,
        /// Answers to a dead server's invalidation sent to its successor.
        late_answers: u64,
        /// Connections broken and made again to the same server.
        reconnects: u64,
        /// Second answers to one request, dropped by the client's transport.
        duplicate_grants: u64,
    }

    impl Sim {
        fn new(nkeys: usize, nclients: usize) -> Self {
            let mut sim = Sim {
                server: LockServer::new(),
                epoch: 1,
                seq: 1,
                keys: (0..nkeys as u64).map(key).collect(),
                clients: Vec::new(),
                next_rid: 1,
                next_req_id: 1,
                last_write_seq: 0,
                epoch_first_seq: 1,
                calls: BTreeMap::new(),
                write_seqs: BTreeMap::new(),
                stats: SimStats::default(),
                trace: std::env::var_os("LOCK_SIM_TRACE").is_some(),
            };
            for _ in 0..nclients {
                let c = sim.new_client();
                sim.clients.push(c);
            }
            sim
        }

        fn new_client(&mut self) -> SimClient {
            self.next_rid += 1;
            SimClient {
                rid: self.next_rid,
                ..Default::default()
            }
        }

        fn key_index(&self, k: &Key) -> usize {
            self.keys.iter().position(|x| x == k).expect("sim key")
        }

        fn route(&mut self, acts: Vec<LockAction>) {
            for a in acts {
                if let LockAction::Grant { rid, lock, .. } = a {
                    if matches!(lock.new_mode, Write | WriteOnly) {
                        // New grants get a new seq; a grant sent again (the server believes
                        // the rid still holds it) repeats its own.
                        let k = self.key_index(&lock.key);
                        let again = self.write_seqs.get(&(rid, k)) == Some(&lock.write_seq);
                        assert!(
                            lock.write_seq > self.last_write_seq || again,
                            "write_seq goes up"
                        );
                        self.last_write_seq = self.last_write_seq.max(lock.write_seq);
                        self.write_seqs.insert((rid, k), lock.write_seq);
                    }
                }
                // Server calls wait in the rid's outbox until answered.
                let mut id = 0;
                if let LockAction::Invalidate { rid, call_id, lock } = a {
                    id = call_id;
                    self.calls.insert(id, (rid, lock));
                }
                // Messages to fenced clients go nowhere.
                if let Some(c) = self.clients.iter_mut().find(|c| c.rid == a.rid()) {
                    c.inbox.push_back((a, self.epoch, id));
                }
            }
        }

        fn request(&mut self, ci: usize, k: usize, pick: u32) {
            let c = &self.clients[ci];
            if c.pending.contains_key(&k)
                || c.working.contains_key(&k)
                || c.queued_invals.get(&k).is_some_and(|q| !q.is_empty())
            {
                return;
            }
            let held = c.mode(k);
            let wants: Vec<LockMode> = LockMode::ALL
                .into_iter()
                .filter(|&m| m != held && (m == Null || !held.satisfies(m)))
                .collect();
            let want = wants[pick as usize % wants.len()];
            self.send_request(ci, k, want);
        }

        /// Client `ci` asks for `want` on key `k`, stating the mode it holds.
        fn send_request(&mut self, ci: usize, k: usize, want: LockMode) {
            self.next_req_id += 1;
            let req_id = self.next_req_id;
            let c = &mut self.clients[ci];
            let lock = nl(self.keys[k], c.mode(k), want);
            c.pending.insert(k, (req_id, lock));
            c.outbox.push_back(Up::Request { req_id, lock });
        }

        /// Deliver client `ci`'s next message to the server.
        fn send_up(&mut self, ci: usize) -> bool {
            let Some(msg) = self.clients[ci].outbox.pop_front() else {
                return false;
            };
            let rid = self.clients[ci].rid;
            let (seq, server) = (&mut self.seq, &self.server);
            let mut next = || core_seq(seq, server);
            let acts = match msg {
                Up::Request { req_id, lock } => self.server.request(rid, req_id, lock, &mut next),
                Up::Invalidated { lock, call } => {
                    self.calls.remove(&call);
                    self.server.invalidated(rid, call, lock, &mut next)
                }
                Up::Recover => {
                    let c = &self.clients[ci];
                    // A lock held at Null is reported while its write_seq is remembered,
                    // as the real client does.
                    let locks: Vec<NetLock> = (0..self.keys.len())
                        .filter(|&k| c.report(k) != (Null, 0))
                        .map(|k| {
                            let (m, write_seq) = c.report(k);
                            NetLock {
                                key: self.keys[k],
                                write_seq,
                                old_mode: m,
                                new_mode: m,
                            }
                        })
                        .collect();
                    self.server.recover(rid, &locks);
                    self.server.recovery_done(rid, &mut next)
                }
            };
            if self.trace {
                eprintln!("rid {rid} -> server: {msg:?}\n    => {acts:?}");
            }
            self.route(acts);
            true
        }

        /// Client `ci` reads its next message.
        fn receive(&mut self, ci: usize) -> bool {
            let Some((msg, epoch, id)) = self.clients[ci].inbox.pop_front() else {
                return false;
            };
            let k = self.key_index(&msg.lock().key);
            let c = &mut self.clients[ci];
            if self.trace {
                eprintln!("server -> rid {} (epoch {epoch}): {msg:?}", c.rid);
            }
            match msg {
                LockAction::Grant { req_id, lock, .. } => {
                    // The transport drops a second answer to one request (the answer to a
                    // resent request the server had already answered).
                    let waiting = c.pending.get(&k).is_some_and(|(id, _)| *id == req_id);
                    if !waiting || c.deferred.contains_key(&k) {
                        self.stats.duplicate_grants += 1;
                        return true;
                    }
                    self.stats.grants += 1;
                    if c.working.contains_key(&k) {
                        // Applied once the invalidation in progress is answered.
                        self.stats.grants_while_invalidating += 1;
                        assert!(c.deferred.insert(k, (req_id, lock)).is_none());
                    } else {
                        c.apply_grant(k, req_id, lock);
                    }
                }
                LockAction::Invalidate { lock, .. } => {
                    self.stats.invalidations += 1;
                    // A call resent after a reconnect while its first copy is still here.
                    let have = c.working.get(&k).is_some_and(|w| w.call.id == id)
                        || c.queued_invals
                            .get(&k)
                            .is_some_and(|q| q.iter().any(|x| x.id == id));
                    if have {
                        return true;
                    }
                    c.queued_invals.entry(k).or_default().push_back(Call {
                        inv: lock,
                        epoch,
                        id,
                    });
                    c.advance(k);
                }
            }
            true
        }

        /// Client `ci` finishes one invalidation (the first in key order) and answers it.
        fn finish(&mut self, ci: usize, pick: u32) -> bool {
            let c = &mut self.clients[ci];
            let keys: Vec<usize> = c.working.keys().copied().collect();
            if keys.is_empty() {
                return false;
            }
            let k = keys[pick as usize % keys.len()];
            let w = c.working.remove(&k).unwrap();
            if self.trace {
                eprintln!("rid {} finishes {w:?} in epoch {}", c.rid, self.epoch);
            }
            let answer = Up::Invalidated {
                lock: NetLock {
                    new_mode: w.to,
                    ..w.call.inv
                },
                call: w.call.id,
            };
            // The answer to a server that is gone goes out on the connection to the new one,
            // where it lowers the old mode recovery reported (or answers the new server's
            // invalidation of it).
            if w.call.epoch != self.epoch {
                self.stats.late_answers += 1;
            }
            c.outbox.push_back(answer);
            c.answered.insert(w.call.id);
            match c.deferred.remove(&k) {
                Some((req_id, lock)) => c.apply_grant(k, req_id, lock),
                None => c.advance(k),
            }
            c.gc(k);
            true
        }

        fn fence(&mut self, ci: usize) {
            let rid = self.clients[ci].rid;
            if self.trace {
                eprintln!("rid {rid} fenced");
            }
            let (seq, server) = (&mut self.seq, &self.server);
            let acts = server.remove_client(rid, &mut || core_seq(seq, server));
            self.clients[ci] = self.new_client();
            self.route(acts);
            self.stats.fences += 1;
        }

        /// A new server takes over: server→client messages in flight are lost, answers to
        /// the old server are dropped, requests are resent after lock recovery or before it.
        fn failover(&mut self, order: u32) {
            self.epoch += 1;
            self.server = LockServer::with_first_call_id(first_call_id(self.epoch));
            self.calls.clear();
            // The new server's core seq may start where the dead one's did (nothing it handed
            // out since was durable) or where it ended: lock recovery must lift it past
            // every write_seq a client still uses or remembers. write_seqs go up within a
            // server.
            if order & (1 << 18) == 0 {
                self.seq = self.epoch_first_seq;
            }
            self.epoch_first_seq = self.seq;
            self.last_write_seq = 0;
            self.write_seqs.clear();
            if self.trace {
                eprintln!("failover to epoch {}", self.epoch);
            }
            self.stats.failovers += 1;
            let rids: Vec<u64> = self.clients.iter().map(|c| c.rid).collect();
            self.server.begin_recovery(&rids);
            for (i, c) in self.clients.iter_mut().enumerate() {
                c.inbox.clear();
                c.outbox.clear();
                // Invalidations of the dead server not started yet are moot: the new one
                // invalidates again what recovery reports, if it must.
                c.queued_invals.clear();
                let deferred = &c.deferred;
                let resend = c
                    .pending
                    .iter()
                    .filter(|(k, _)| !deferred.contains_key(k))
                    .map(|(_, &(req_id, lock))| Up::Request { req_id, lock });
                if (order >> (i % 32)) & 1 == 0 {
                    c.outbox.push_back(Up::Recover);
                    c.outbox.extend(resend);
                } else {
                    c.outbox.extend(resend);
                    c.outbox.push_back(Up::Recover);
                }
            }
        }

        /// Client `ci`'s connection breaks and it reconnects to the same server: messages
        /// in flight both ways are lost; the client resends its unanswered requests, the
        /// server its unanswered calls (in call order), and a lock recovery still waiting for
        /// the client asks again.
        fn reconnect(&mut self, ci: usize) {
            let c = &mut self.clients[ci];
            if self.trace {
                eprintln!("rid {} reconnects", c.rid);
            }
            c.inbox.clear();
            c.outbox.clear();
            let deferred = &c.deferred;
            let resend: Vec<Up> = c
                .pending
                .iter()
                .filter(|(k, _)| !deferred.contains_key(k))
                .map(|(_, &(req_id, lock))| Up::Request { req_id, lock })
                .collect();
            c.outbox.extend(resend);
            for (&id, &(rid, lock)) in &self.calls {
                if rid == c.rid {
                    let call = LockAction::Invalidate {
                        rid,
                        call_id: id,
                        lock,
                    };
                    c.inbox.push_back((call, self.epoch, id));
                }
            }
            if self.server.recovering().contains(&c.rid) {
                c.outbox.push_back(Up::Recover);
            }
            self.stats.reconnects += 1;
        }

        /// No two clients may use incompatible modes of one lock at once.
        fn check_safety(&self) {
            for k in 0..self.keys.len() {
                for a in &self.clients {
                    for b in &self.clients {
                        if a.rid == b.rid {
                            continue;
                        }
                        for ma in a.uses(k) {
                            for mb in b.uses(k) {
                                assert!(
                                    ma.compatible(a.rid, mb, b.rid),
                                    "key {k}: rid {} uses {ma:?} while rid {} uses {mb:?}",
                                    a.rid,
                                    b.rid
                                );
                            }
                        }
                    }
                }
            }
        }

        /// Deliver everything until nothing moves.
        fn drain(&mut self) {
            for _ in 0..100_000 {
                let mut moved = false;
                for ci in 0..self.clients.len() {
                    moved |= self.finish(ci, 0);
                    moved |= self.receive(ci);
                    moved |= self.send_up(ci);
                    self.check_safety();
                }
                if !moved {
                    return;
                }
            }
            panic!("the simulation does not settle");
        }

        fn step(&mut self, choice: u32) {
            let ci = (choice >> 4) as usize % self.clients.len();
            let arg = choice >> 8;
            match choice % 16 {
                0..=3 => self.request(ci, arg as usize % self.keys.len(), arg >> 4),
                4..=7 => {
                    self.send_up(ci);
                }
                8..=11 => {
                    self.receive(ci);
                }
                12..=13 => {
                    self.finish(ci, arg);
                }
                14 => match arg % 32 {
                    0 => self.fence(ci),
                    1 => self.reconnect(ci),
                    _ => {}
                },
                _ => {
                    if arg.is_multiple_of(32) {
                        self.failover(arg >> 5)
                    }
                }
            }
            self.check_safety();
        }
    }

    fn run_schedule(choices: &[u32], nkeys: usize, nclients: usize) -> SimStats {
        let mut sim = Sim::new(nkeys, nclients);
        for &c in choices {
            sim.step(c);
        }
        sim.drain();
        for c in &sim.clients {
            assert!(
                c.pending.is_empty(),
                "rid {} still waits for {:?}",
                c.rid,
                c.pending
            );
            assert!(c.working.is_empty() && c.outbox.is_empty() && c.inbox.is_empty());
        }
        // The server's table covers what the clients hold. After failovers it may believe a
        // client holds more than it does (a lost answer to a dead server's invalidation
        // whose old mode recovery reported, seed 000; an answer to the dead server's
        // invalidation taken for the answer to the new one's): never less.
        for (k, key) in sim.keys.iter().enumerate() {
            let mut held: Vec<(u64, LockMode)> = sim
                .clients
                .iter()
                .filter(|c| c.mode(k) != Null)
                .map(|c| (c.rid, c.mode(k)))
                .collect();
            held.sort_unstable();
            let table = sim.server.granted(key);
            for (rid, mode) in held {
                assert!(
                    table.iter().any(|&(r, m)| r == rid && m.satisfies(mode)),
                    "key {k}: rid {rid} holds {mode:?}, the server believes {table:?}"
                );
            }
        }
        // Everybody drops everything: no lock object is left.
        for ci in 0..sim.clients.len() {
            for k in 0..sim.keys.len() {
                if sim.clients[ci].mode(k) != Null {
                    sim.send_request(ci, k, Null);
                }
            }
        }
        sim.drain();
        // Modes the table still believes given up after a lost answer are taken back by the
        // next conflicting request: a new client takes and drops Write on every key.
        if sim.server.lock_objects() != 0 {
            let sweeper = sim.new_client();
            sim.clients.push(sweeper);
            let ci = sim.clients.len() - 1;
            for want in [Write, Null] {
                for k in 0..sim.keys.len() {
                    sim.send_request(ci, k, want);
                }
                sim.drain();
            }
        }
        assert!(sim
            .clients
            .iter()
            .all(|c| c.pending.is_empty() && c.held.is_empty()));
        assert_eq!(sim.server.lock_objects(), 0);
        sim.stats
    }

    /// Schedules per run of the property: `LOCK_SIM_CASES`, 200 by default.
    fn sim_cases() -> u32 {
        std::env::var("LOCK_SIM_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(sim_cases()))]

        /// (h) Random interleavings of requests, invalidation answers, fencing and server
        /// failovers never let two clients use incompatible modes at once, and every request
        /// is granted in the end.
        #[test]
        fn random_schedules_keep_grants_compatible_and_grant_every_request(
            choices in proptest::collection::vec(proptest::prelude::any::<u32>(), 0..600),
            nkeys in 1usize..4,
            nclients in 2usize..5,
        ) {
            run_schedule(&choices, nkeys, nclients);
        }
    }

    /// A fixed long schedule (the same checks as the property, more steps).
    #[test]
    fn a_long_random_schedule_settles() {
        let mut s = 0x1234_5678_9abc_def1u64;
        let choices: Vec<u32> = (0..20_000).map(|_| xorshift(&mut s) as u32).collect();
        let stats = run_schedule(&choices, 3, 4);
        assert!(
            stats.grants > 500
                && stats.invalidations > 100
                && stats.fences > 10
                && stats.failovers > 10
                && stats.late_answers > 0
                && stats.reconnects > 10,
            "{stats:?}"
        );
    }
}
