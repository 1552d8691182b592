//! The lock client of a node in a multi-node cluster (digest §5.5).
//!
//! [`NetLocks`] holds this node's view of every cluster lock it has been granted or has asked
//! for, keyed by the lock's start key ([`crate::lock_names::lock_start`]): the granted mode,
//! the uses in progress per mode, the one request in flight, the grant's write_seq, and the
//! queue of invalidations the server sent. It implements [`LockClient`] for the filesystem
//! layer and takes the server's side of the protocol through [`NetLocks::granted`],
//! [`NetLocks::invalidate`] and [`NetLocks::recover`].
//!
//! It knows nothing of sockets or of the filesystem: messages go out through a
//! [`LockSender`] (the node's transport) and cached state is given up through a
//! [`LockCache`] (the filesystem's `Fs::invalidate_lock`).
//!
//! # Threads and locking
//!
//! One mutex guards the lock table. Callers of [`LockClient::wait_grant`] block on a condvar
//! under it. One worker thread (`scoutgw-lockinv`) processes invalidations; it calls the
//! cache and the sender **without** holding the table mutex: the cache takes the
//! filesystem's mount mutex, under which the filesystem calls [`LockClient::try_lock`], so
//! holding the table mutex across the cache call would deadlock. Requests are also sent
//! outside the table mutex, so a transport may call [`NetLocks::granted`] from inside
//! [`LockSender::send_request`] or while holding its own locks.
//!
//! Invalidations of one lock are processed one at a time in arrival order. Invalidations of
//! different locks are independent while they wait for users to unlock; the cache callbacks
//! themselves run one at a time on the worker (the filesystem serializes them on its mount
//! mutex anyway).
//!
//! # Invalidation
//!
//! The head invalidation of a lock reduces the granted mode to `target = meet(held, new)`
//! (the strongest mode both the held and the requested mode allow; for the modes servers
//! send, simply `new`). From the moment it is queued, [`LockClient::try_lock`] refuses modes
//! the target does not satisfy. Once no users of such modes remain, the worker records the
//! old mode in `invalidating_mode`, lowers the granted mode to the target (users the target
//! satisfies — readers during a Write→Read downgrade — carry on), calls the cache, answers the
//! server with `{old, target}`, and clears `invalidating_mode`. While `invalidating_mode` is
//! set, [`NetLocks::recover`] reports the old mode (seed 000, commit ca526e2b): the
//! invalidation is not done until it is answered.
//!
//! An invalidation that reduces nothing — for a lock not held, or a duplicate whose target
//! the held mode already is at or below — is answered at once with the held mode
//! (duplicates are expected after server failover).
//!
//! If the cache callback fails (the filesystem could not commit), the invalidation stays in
//! progress — mode lowered, old mode still reported by recovery — and the worker calls the
//! cache again after [`INVALIDATE_RETRY_DELAY`]; the server is answered only after success.
//!
//! # Grants and invalidations that cross
//!
//! The server states both modes in every message; this client orders them so that it never
//! holds a stronger mode than the server believes it holds:
//!
//! * A grant is authoritative about the mode held and is applied when it arrives — unless an
//!   invalidation of that lock is in progress (between lowering the mode and answering):
//!   then the grant is kept and applied right after the answer is sent, so no user of the
//!   granted mode runs while the cache is being emptied for a lower one. Queued
//!   invalidations are then judged against the new mode when they reach the head (a
//!   duplicate that the grant made moot is answered at once).
//! * An invalidation whose `old_mode` is stronger than the mode held and is the mode of our
//!   request in flight (for write modes: with a write_seq newer than any we were granted)
//!   reduces a grant that has not arrived yet: it waits at the head of its lock's queue
//!   until that grant arrives, then reduces it. (Answering it at once and applying the
//!   grant later would leave this node holding a mode the server believes it gave up.) Any
//!   other such invalidation is stale (a dead server's, or one of a mode recovery reported
//!   while it was still being given up) and is applied to what is held: waiting would
//!   deadlock with a server waiting for its answer.
//! * A new request for a lock is sent only once no invalidation of it is queued or in
//!   progress, so the `old_mode` it states is what the server will have recorded.
//!
//! # Disconnects and new servers
//!
//! After a reconnect the server resends every invalidation call not answered. A copy of a
//! call still queued is ignored; a copy of one answered already (its answer was lost) is
//! answered again at once with the mode held, without waiting for anything. When the new
//! connection is to a new server ([`NetLocks::server_changed`]), the dead server's
//! invalidations not started yet are dropped: the new one invalidates again what recovery
//! reports, and one of them waiting for a grant that will never come would hold up the new
//! server's invalidations of the same lock.
//!
//! A failed send is not fatal. A request that could not be sent stays pending: the transport
//! keeps unanswered requests and resends them once it reaches a server (an error other than
//! [`LockError::Shutdown`] from [`LockSender::send_request`] means exactly that). A failed
//! invalidation answer is dropped: the server that asked is gone, and the next one learns
//! the mode through [`NetLocks::recover`] and resends the invalidation if it still needs it.
//!
//! Not done yet: idle locks are never given back (no LRU, no Null requests); entries are
//! dropped when a lock ends at Null with nothing pending.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::format::Key;
use crate::lock::{Lock, LockClient, LockCounts, LockError, LockMode};
use crate::lock_names::{lock_end, lock_start};
use crate::msg::{NetLock, LOCK_RECOVER_BATCH};

/// How the lock client talks to the lock server (implemented by the node's transport).
pub trait LockSender: Send + Sync {
    /// Send a lock request; the grant comes back later through `NetLocks::granted`. Must not
    /// wait for the answer. An error other than [`LockError::Shutdown`] means the transport
    /// could not send now and will resend the request once it reaches a server.
    fn send_request(&self, req: NetLock) -> Result<(), LockError>;
    /// Answer the server's invalidation call `call_id`.
    fn send_invalidated(&self, call_id: u64, resp: NetLock) -> Result<(), LockError>;
}

/// What must happen to cached state when a grant is reduced (implemented by the
/// filesystem: `Fs::invalidate_lock`). Called by the invalidation worker, never under the
/// lock table's mutex; it may call [`LockClient::try_lock`].
pub trait LockCache: Send + Sync {
    fn invalidate(
        &self,
        start: &Key,
        end: &Key,
        old: LockMode,
        new: LockMode,
    ) -> Result<(), LockError>;
}

/// How long the worker waits before calling the cache again after it failed.
pub const INVALIDATE_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Is a grant of `a` at least as strong as `b` (does giving up `b` leave `a` untouched)?
pub(crate) fn covers(a: LockMode, b: LockMode) -> bool {
    a == b || b == LockMode::Null || a == LockMode::Write
}

/// The strongest mode both `a` and `b` allow.
pub(crate) fn meet(a: LockMode, b: LockMode) -> LockMode {
    if covers(a, b) {
        b
    } else if covers(b, a) {
        a
    } else {
        LockMode::Null
    }
}

/// The weakest mode that allows everything `a` and `b` allow.
pub(crate) fn join(a: LockMode, b: LockMode) -> LockMode {
    if covers(a, b) {
        a
    } else if covers(b, a) {
        b
    } else {
        LockMode::Write
    }
}

fn shut() -> LockError {
    LockError::Shutdown("lock client shut down".into())
}

/// One invalidation call from the server.
#[derive(Debug, Clone, Copy)]
struct Invalidation {
    call_id: u64,
    req: NetLock,
}

/// Where the worker is with the head invalidation of a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started (waiting for users, a grant in flight, or the worker).
    Idle,
    /// The worker is calling the cache or answering.
    Working,
    /// The cache failed; call it again at this time.
    RetryAt(Instant),
}

/// This node's state of one lock.
#[derive(Debug)]
struct LockState {
    end: Key,
    /// Granted mode (`Null`: not held).
    mode: LockMode,
    write_seq: u64,
    /// Uses in progress, per mode used.
    users: [u64; 4],
    /// The mode of our request in flight.
    request_pending: Option<LockMode>,
    /// Invalidations in arrival order; the head stays here until answered.
    queue: VecDeque<Invalidation>,
    /// The mode held before the invalidation in progress lowered `mode`.
    invalidating_mode: Option<LockMode>,
    phase: Phase,
    /// A grant that arrived while an invalidation was in progress.
    deferred_grant: Option<NetLock>,
    /// The call being answered was sent again meanwhile: answer it once more.
    answer_again: bool,
}

impl LockState {
    fn new(end: Key) -> Self {
        Self {
            end,
            mode: LockMode::Null,
            write_seq: 0,
            users: [0; 4],
            request_pending: None,
            queue: VecDeque::new(),
            invalidating_mode: None,
            phase: Phase::Idle,
            deferred_grant: None,
            answer_again: false,
        }
    }

    /// May a new user of `want` use the lock now?
    fn usable(&self, want: LockMode) -> bool {
        self.mode.satisfies(want)
            && self
                .queue
                .iter()
                .all(|i| meet(self.mode, i.req.new_mode).satisfies(want))
    }

    /// Does invalidation `inv` reduce the grant of our request in flight, which has not
    /// arrived yet (the server sent both, and they crossed)? Then it must wait for that
    /// grant. An invalidation names the mode it reduces: the grant's mode, and for write
    /// modes its write_seq, which is new for every grant. Any other invalidation of a mode
    /// we do not hold is stale (a dead server's, or a new server's of a mode recovery
    /// reported while we were still giving it up, seed 000) and is applied to what we hold;
    /// waiting for a grant would deadlock with a server waiting for the answer.
    fn reduces_a_grant_on_its_way(&self, inv: &NetLock) -> bool {
        let stale_write = matches!(inv.old_mode, LockMode::Write | LockMode::WriteOnly)
            && inv.write_seq != 0
            && inv.write_seq <= self.write_seq;
        self.request_pending == Some(inv.old_mode)
            && !covers(self.mode, inv.old_mode)
            && !stale_write
    }

    /// Does `inv` name a write grant older than the one we hold (its write_seq is lower)?
    /// Then it is stale and reduces nothing: the server made our grant after it sent that
    /// invalidation.
    fn older_than_our_grant(&self, inv: &NetLock) -> bool {
        matches!(inv.old_mode, LockMode::Write | LockMode::WriteOnly)
            && inv.write_seq != 0
            && inv.write_seq < self.write_seq
            && self.mode == inv.old_mode
    }

    /// Nothing held, used, asked or queued: the entry can go.
    fn idle(&self) -> bool {
        self.mode == LockMode::Null
            && self.users.iter().all(|&u| u == 0)
            && self.request_pending.is_none()
            && self.queue.is_empty()
            && self.invalidating_mode.is_none()
            && self.phase == Phase::Idle
            && self.deferred_grant.is_none()
    }
}

/// What the worker does next, decided under the table mutex, done outside it.
#[derive(Debug)]
enum Work {
    /// Nothing to reduce: answer with the held mode.
    Answer {
        start: Key,
        call_id: u64,
        resp: NetLock,
    },
    /// Empty the cache from `old` down to `new`, then answer.
    Reduce {
        start: Key,
        end: Key,
        call_id: u64,
        old: LockMode,
        new: LockMode,
        resp: NetLock,
    },
}

#[derive(Debug)]
struct Table {
    locks: BTreeMap<Key, LockState>,
    /// Locks with queued invalidations.
    work: BTreeSet<Key>,
    /// Call ids of the invalidations answered last (at most [`RECENT_ANSWERS`]): the server
    /// resends a call whose answer a broken connection lost, and that copy is answered at
    /// once (the lock's entry may be gone by then).
    answered: RecentCalls,
    counts: [LockCounts; 4],
    shutdown: bool,
    retry_delay: Duration,
}

/// How many answered invalidation call ids [`Table::answered`] keeps.
const RECENT_ANSWERS: usize = 4096;

/// A bounded set of call ids, oldest dropped first.
#[derive(Debug, Default)]
struct RecentCalls {
    order: VecDeque<u64>,
    ids: HashSet<u64>,
}

impl RecentCalls {
    fn insert(&mut self, id: u64) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_ANSWERS {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }
}

impl Table {
    fn entry(&mut self, start: Key) -> &mut LockState {
        self.locks
            .entry(start)
            .or_insert_with(|| LockState::new(lock_end(&start)))
    }

    fn gc(&mut self, start: &Key) {
        if self.locks.get(start).is_some_and(LockState::idle) {
            self.locks.remove(start);
            self.work.remove(start);
        }
    }

    /// Take a grant: the mode held is now what the server says.
    fn apply_grant(&mut self, start: Key, g: NetLock, gen: &AtomicU64) {
        let st = self.entry(start);
        st.mode = g.new_mode;
        st.write_seq = st.write_seq.max(g.write_seq);
        st.request_pending = None;
        self.counts[g.new_mode as usize].grants += 1;
        gen.fetch_add(1, Ordering::SeqCst);
    }

    /// The next invalidation the worker can act on, or when to look again.
    fn pick(&mut self, now: Instant) -> Result<Work, Option<Instant>> {
        enum Step {
            Answer,
            Reduce(LockMode),
            Retry,
        }
        let mut earliest: Option<Instant> = None;
        let mut found = None;
        for key in &self.work {
            let Some(st) = self.locks.get(key) else {
                continue;
            };
            let Some(head) = st.queue.front() else {
                continue;
            };
            match st.phase {
                Phase::Working => continue,
                Phase::RetryAt(at) if at <= now => {
                    found = Some((*key, Step::Retry));
                    break;
                }
                Phase::RetryAt(at) => {
                    earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    continue;
                }
                Phase::Idle => {}
            }
            let answered = self.answered.contains(head.call_id);
            if !answered && st.reduces_a_grant_on_its_way(&head.req) {
                continue;
            }
            let target = meet(st.mode, head.req.new_mode);
            if target == st.mode || answered || st.older_than_our_grant(&head.req) {
                found = Some((*key, Step::Answer));
                break;
            }
            let drained = LockMode::ALL
                .iter()
                .all(|&m| target.satisfies(m) || st.users[m as usize] == 0);
            if drained {
                found = Some((*key, Step::Reduce(target)));
                break;
            }
        }
        let Some((start, step)) = found else {
            return Err(earliest);
        };
        let st = self.locks.get_mut(&start).expect("picked lock");
        let head = *st.queue.front().expect("picked invalidation");
        st.phase = Phase::Working;
        let (key, write_seq, asked_old) = (head.req.key, head.req.write_seq, head.req.old_mode);
        // Answers repeat the old mode and write_seq the server's invalidation named (that is
        // how the lock server matches an answer to its invalidation); new_mode is what this
        // node holds.
        let resp = move |_held_before: LockMode, new| NetLock {
            key,
            write_seq,
            old_mode: asked_old,
            new_mode: new,
        };
        Ok(match step {
            Step::Answer => Work::Answer {
                start,
                call_id: head.call_id,
                resp: resp(st.mode, st.mode),
            },
            Step::Reduce(target) => {
                let old = st.mode;
                st.invalidating_mode = Some(old);
                st.mode = target;
                Work::Reduce {
                    start,
                    end: st.end,
                    call_id: head.call_id,
                    old,
                    new: target,
                    resp: resp(old, target),
                }
            }
            Step::Retry => {
                let old = st.invalidating_mode.expect("retried invalidation");
                Work::Reduce {
                    start,
                    end: st.end,
                    call_id: head.call_id,
                    old,
                    new: st.mode,
                    resp: resp(old, st.mode),
                }
            }
        })
    }
}

/// State shared with the worker thread.
struct Shared {
    table: Mutex<Table>,
    /// Waiters for grants.
    grants_cv: Condvar,
    /// The worker.
    work_cv: Condvar,
    grant_gen: AtomicU64,
    sender: Arc<dyn LockSender>,
    cache: Mutex<Option<Weak<dyn LockCache>>>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn worker(&self) {
        let mut t = self.table();
        loop {
            if t.shutdown {
                return;
            }
            let now = Instant::now();
            match t.pick(now) {
                Ok(work) => {
                    drop(t);
                    self.run(work);
                    t = self.table();
                }
                Err(Some(at)) => {
                    let wait = at.saturating_duration_since(now);
                    t = self
                        .work_cv
                        .wait_timeout(t, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Err(None) => t = self.work_cv.wait(t).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Carry out one invalidation step; called without the table mutex.
    fn run(&self, work: Work) {
        match work {
            Work::Answer {
                start,
                call_id,
                resp,
            } => {
                // A failed answer is dropped: see the module doc.
                let _ = self.sender.send_invalidated(call_id, resp);
                if self.finish(start, None) {
                    let _ = self.sender.send_invalidated(call_id, resp);
                }
            }
            Work::Reduce {
                start,
                end,
                call_id,
                old,
                new,
                resp,
            } => {
                let cache = self
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(Weak::upgrade);
                let res = match &cache {
                    Some(c) => c.invalidate(&start, &end, old, new),
                    None => Ok(()),
                };
                drop(cache);
                match res {
                    Ok(()) => {
                        let _ = self.sender.send_invalidated(call_id, resp);
                        if self.finish(start, Some(old)) {
                            let _ = self.sender.send_invalidated(call_id, resp);
                        }
                    }
                    Err(_) => {
                        let mut t = self.table();
                        let at = Instant::now() + t.retry_delay;
                        if let Some(st) = t.locks.get_mut(&start) {
                            st.phase = Phase::RetryAt(at);
                        }
                    }
                }
            }
        }
    }

    /// The head invalidation of `start` is answered.
    ///
    /// True when the server sent the call again while it was being answered (a reconnect):
    /// the answer may have gone to the dead connection, so the caller sends it once more.
    fn finish(&self, start: Key, reduced_from: Option<LockMode>) -> bool {
        let mut t = self.table();
        if let Some(old) = reduced_from {
            t.counts[old as usize].invalidations += 1;
        }
        let Some(st) = t.locks.get_mut(&start) else {
            return false;
        };
        let again = std::mem::take(&mut st.answer_again);
        let answered = st.queue.pop_front().map(|i| i.call_id);
        st.invalidating_mode = None;
        st.phase = Phase::Idle;
        let deferred = st.deferred_grant.take();
        let empty = st.queue.is_empty();
        if let Some(id) = answered {
            t.answered.insert(id);
        }
        if empty {
            t.work.remove(&start);
        }
        if let Some(g) = deferred {
            t.apply_grant(start, g, &self.grant_gen);
        }
        t.gc(&start);
        drop(t);
        self.grants_cv.notify_all();
        again
    }
}

/// The lock client of one node of a multi-node cluster (see the module doc).
pub struct NetLocks {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NetLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetLocks").finish_non_exhaustive()
    }
}

impl NetLocks {
    /// A lock client sending through `sender`, with its invalidation worker running.
    pub fn new(sender: Arc<dyn LockSender>) -> Arc<Self> {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                locks: BTreeMap::new(),
                work: BTreeSet::new(),
                answered: RecentCalls::default(),
                counts: [LockCounts::default(); 4],
                shutdown: false,
                retry_delay: INVALIDATE_RETRY_DELAY,
            }),
            grants_cv: Condvar::new(),
            work_cv: Condvar::new(),
            grant_gen: AtomicU64::new(0),
            sender,
            cache: Mutex::new(None),
        });
        let w = shared.clone();
        let handle = thread::Builder::new()
            .name("scoutgw-lockinv".into())
            .spawn(move || w.worker())
            .expect("spawn the lock invalidation worker");
        Arc::new(Self {
            shared,
            worker: Mutex::new(Some(handle)),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.shared.table()
    }

    /// Where reduced grants empty their cached state. Without a cache (or once it is
    /// dropped) invalidations only change modes.
    pub fn set_cache(&self, cache: Weak<dyn LockCache>) {
        *self.shared.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(cache);
    }

    /// How long to wait before calling a failed cache callback again
    /// ([`INVALIDATE_RETRY_DELAY`] by default).
    pub fn set_invalidate_retry_delay(&self, delay: Duration) {
        self.table().retry_delay = delay;
    }

    /// A grant for one of our requests arrived (old_mode = what the server believed we
    /// held). Applied at once, or right after the invalidation of the lock in progress is
    /// answered (module doc).
    pub fn granted(&self, grant: NetLock) {
        let start = lock_start(&grant.key);
        let mut t = self.table();
        if t.shutdown {
            return;
        }
        let st = t.entry(start);
        if st.phase != Phase::Idle {
            st.deferred_grant = Some(grant);
            return;
        }
        t.apply_grant(start, grant, &self.shared.grant_gen);
        t.gc(&start);
        drop(t);
        self.shared.grants_cv.notify_all();
        // An invalidation may have been waiting for this grant.
        self.shared.work_cv.notify_all();
    }

    /// Server call: invalidate. Queued; the worker processes invalidations of one lock in
    /// arrival order and answers each through [`LockSender::send_invalidated`].
    pub fn invalidate(&self, call_id: u64, req: NetLock) {
        let start = lock_start(&req.key);
        let mut t = self.table();
        if t.shutdown {
            return;
        }
        let st = t.entry(start);
        // A call resent after a reconnect while its first copy is still queued; if that copy
        // is being answered right now, the answer may have gone to the dead connection.
        if let Some(pos) = st.queue.iter().position(|i| i.call_id == call_id) {
            if pos == 0 && st.phase != Phase::Idle {
                st.answer_again = true;
            }
            return;
        }
        st.queue.push_back(Invalidation { call_id, req });
        t.work.insert(start);
        drop(t);
        self.shared.work_cv.notify_all();
    }

    /// We are connected to a new server (the old one died): invalidations of the old one not
    /// started yet are dropped, and so are the write_seqs of locks held at Null (recovery does
    /// not report them, so the new server may grant lower ones). The new one rebuilds its table from our recovery report and
    /// invalidates again what it must; left queued, one waiting for a grant that will never
    /// come would hold up the new server's invalidations behind it. Invalidations in
    /// progress go on (recovery reports their old mode, seed 000).
    pub fn server_changed(&self) {
        let mut t = self.table();
        // Write_seqs of locks recovery leaves out (held at Null) are not reported, so the
        // new server may hand out lower ones: forget them, or a new grant would look older
        // than the one remembered (`older_than_our_grant`, `reduces_a_grant_on_its_way`).
        for st in t.locks.values_mut() {
            if st.mode == LockMode::Null
                && st.invalidating_mode.is_none()
                && st.deferred_grant.is_none()
            {
                st.write_seq = 0;
            }
        }
        let starts: Vec<Key> = t.work.iter().copied().collect();
        for start in starts {
            if let Some(st) = t.locks.get_mut(&start) {
                let keep = usize::from(st.phase != Phase::Idle);
                st.queue.truncate(keep);
                if st.queue.is_empty() {
                    t.work.remove(&start);
                }
            }
            t.gc(&start);
        }
        drop(t);
        self.shared.work_cv.notify_all();
    }

    /// Server call LockRecover: our locks with key >= start in key order, at most
    /// [`LOCK_RECOVER_BATCH`]; `old_mode` = `new_mode` = the mode held, or the old mode of a
    /// lock being invalidated (seed 000) joined with the mode of a grant waiting for that
    /// invalidation to be answered. Locks held at Null are left out unless a write_seq of
    /// theirs is remembered (reported with mode Null: the new server's core seq must pass
    /// it). The server asks
    /// again from the key after the last one returned; an empty batch ends recovery. After
    /// shutdown the batch is empty.
    pub fn recover(&self, start: &Key) -> Vec<NetLock> {
        let t = self.table();
        if t.shutdown {
            return Vec::new();
        }
        t.locks
            .range(*start..)
            .filter_map(|(k, st)| {
                let mut held = st.invalidating_mode.unwrap_or(st.mode);
                let mut write_seq = st.write_seq;
                // A grant waiting for the invalidation in progress is a mode this node will
                // use once it answers; the request it answers is not resent (it was
                // answered), so the new server learns of it only here.
                if let Some(g) = st.deferred_grant {
                    held = join(held, g.new_mode);
                    write_seq = write_seq.max(g.write_seq);
                }
                // A lock held at Null is reported too while we remember a write_seq of it:
                // the new server's core seq must move past it (a grant of a lower one would
                // look older than ours).
                (held != LockMode::Null || write_seq != 0).then_some(NetLock {
                    key: *k,
                    write_seq,
                    old_mode: held,
                    new_mode: held,
                })
            })
            .take(LOCK_RECOVER_BATCH)
            .collect()
    }

    /// Stop: every waiter and future call gets [`LockError::Shutdown`]; queued invalidations
    /// are dropped; the worker thread exits (joined, unless this is the worker itself).
    pub fn shutdown(&self) {
        self.table().shutdown = true;
        self.shared.grants_cv.notify_all();
        self.shared.work_cv.notify_all();
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            if h.thread().id() != thread::current().id() {
                let _ = h.join();
            }
        }
    }

    /// Per mode: requests (uses handed out by `try_lock`; a call answered `None` is not
    /// counted, its retry is), grants (received from the server), invalidations (grants of
    /// the mode reduced for the server; duplicates answered at once are not counted).
    pub fn counts(&self) -> [(LockMode, LockCounts); 4] {
        let c = self.table().counts;
        LockMode::ALL.map(|m| (m, c[m as usize]))
    }

    /// The mode granted for the group of `key` now (lowered already while an invalidation
    /// is in progress).
    pub fn mode(&self, key: &Key) -> LockMode {
        self.table()
            .locks
            .get(&lock_start(key))
            .map_or(LockMode::Null, |st| st.mode)
    }
}

impl Drop for NetLocks {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl LockClient for NetLocks {
    fn try_lock(
        &self,
        key: &Key,
        mode: LockMode,
        _trans_seq: u64,
    ) -> Result<Option<Lock>, LockError> {
        let start = lock_start(key);
        let mut t = self.table();
        if t.shutdown {
            return Err(shut());
        }
        let Some(st) = t.locks.get_mut(&start) else {
            return Ok(None);
        };
        if !st.usable(mode) {
            return Ok(None);
        }
        st.users[mode as usize] += 1;
        let lock = Lock {
            start,
            end: st.end,
            mode,
            write_seq: st.write_seq,
        };
        t.counts[mode as usize].requests += 1;
        Ok(Some(lock))
    }

    fn wait_grant(&self, key: &Key, mode: LockMode) -> Result<(), LockError> {
        let start = lock_start(key);
        let mut t = self.table();
        loop {
            if t.shutdown {
                return Err(shut());
            }
            let st = t.entry(start);
            if st.usable(mode) {
                t.gc(&start);
                return Ok(());
            }
            if st.request_pending.is_none() && st.queue.is_empty() && !st.mode.satisfies(mode) {
                let req = NetLock {
                    key: start,
                    write_seq: 0,
                    old_mode: st.mode,
                    new_mode: mode,
                };
                st.request_pending = Some(mode);
                drop(t);
                let res = self.shared.sender.send_request(req);
                t = self.table();
                if let Err(LockError::Shutdown(why)) = res {
                    if let Some(st) = t.locks.get_mut(&start) {
                        if st.request_pending == Some(mode) {
                            st.request_pending = None;
                        }
                    }
                    t.gc(&start);
                    drop(t);
                    self.shared.grants_cv.notify_all();
                    return Err(LockError::Shutdown(why));
                }
                // Other errors: the transport resends (module doc); wait for the grant.
                continue;
            }
            t = self
                .shared
                .grants_cv
                .wait(t)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn unlock(&self, lock: &Lock) {
        let mut t = self.table();
        let Some(st) = t.locks.get_mut(&lock.start) else {
            return;
        };
        let users = &mut st.users[lock.mode as usize];
        *users = users.saturating_sub(1);
        let wake = *users == 0 && !st.queue.is_empty();
        drop(t);
        if wake {
            self.shared.work_cv.notify_all();
        }
    }

    fn grant_gen(&self) -> u64 {
        self.shared.grant_gen.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::zone;
    use crate::lock_names::INODES_PER_LOCK;
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;
    use LockMode::*;

    /// A message the lock client sent to the server.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Sent {
        Request(NetLock),
        Invalidated(u64, NetLock),
    }

    /// Records every message; can be told to fail sends of requests.
    #[derive(Default)]
    struct FakeSender {
        sent: Mutex<Vec<Sent>>,
        fail_requests: AtomicBool,
    }

    impl FakeSender {
        fn sent(&self) -> Vec<Sent> {
            self.sent.lock().unwrap().clone()
        }
        fn requests(&self) -> Vec<NetLock> {
            self.sent()
                .into_iter()
                .filter_map(|s| match s {
                    Sent::Request(r) => Some(r),
                    _ => None,
                })
                .collect()
        }
        fn answers(&self) -> Vec<(u64, NetLock)> {
            self.sent()
                .into_iter()
                .filter_map(|s| match s {
                    Sent::Invalidated(id, r) => Some((id, r)),
                    _ => None,
                })
                .collect()
        }
    }

    impl LockSender for FakeSender {
        fn send_request(&self, req: NetLock) -> Result<(), LockError> {
            self.sent.lock().unwrap().push(Sent::Request(req));
            if self.fail_requests.load(Ordering::SeqCst) {
                return Err(LockError::Unavailable("disconnected".into()));
            }
            Ok(())
        }
        fn send_invalidated(&self, call_id: u64, resp: NetLock) -> Result<(), LockError> {
            self.sent
                .lock()
                .unwrap()
                .push(Sent::Invalidated(call_id, resp));
            Ok(())
        }
    }

    type Hook = Arc<dyn Fn(&Key, LockMode, LockMode) -> Result<(), LockError> + Send + Sync>;

    /// Records every call (at entry), then runs the test's hook if any.
    #[derive(Default)]
    struct FakeCache {
        calls: Mutex<Vec<(Key, LockMode, LockMode)>>,
        hook: Mutex<Option<Hook>>,
    }

    impl FakeCache {
        fn calls(&self) -> Vec<(Key, LockMode, LockMode)> {
            self.calls.lock().unwrap().clone()
        }
        fn set_hook(&self, hook: Hook) {
            *self.hook.lock().unwrap() = Some(hook);
        }
    }

    impl LockCache for FakeCache {
        fn invalidate(
            &self,
            start: &Key,
            end: &Key,
            old: LockMode,
            new: LockMode,
        ) -> Result<(), LockError> {
            assert_eq!(*end, lock_end(start));
            self.calls.lock().unwrap().push((*start, old, new));
            let hook = self.hook.lock().unwrap().clone();
            match hook {
                Some(h) => h(start, old, new),
                None => Ok(()),
            }
        }
    }

    fn setup() -> (Arc<NetLocks>, Arc<FakeSender>, Arc<FakeCache>) {
        let sender = Arc::new(FakeSender::default());
        let nl = NetLocks::new(sender.clone());
        let cache = Arc::new(FakeCache::default());
        let weak: Weak<dyn LockCache> = Arc::downgrade(&cache) as Weak<FakeCache>;
        nl.set_cache(weak);
        (nl, sender, cache)
    }

    /// The start key of lock group `g` (inodes g×1024 …).
    fn key(g: u64) -> Key {
        Key::new(zone::FS, g * INODES_PER_LOCK, 0, 0, 0, 0)
    }

    /// The scripted server grants `mode` of group `g` (without a request: grants are
    /// authoritative).
    fn give(nl: &NetLocks, g: u64, mode: LockMode, write_seq: u64) {
        nl.granted(NetLock {
            key: key(g),
            write_seq,
            old_mode: Null,
            new_mode: mode,
        });
    }

    /// The scripted server answers a request.
    fn grant(nl: &NetLocks, req: NetLock, write_seq: u64) {
        nl.granted(NetLock { write_seq, ..req });
    }

    fn inv(g: u64, old: LockMode, new: LockMode) -> NetLock {
        NetLock {
            key: key(g),
            write_seq: 0,
            old_mode: old,
            new_mode: new,
        }
    }

    /// Make every cache callback wait at the returned barrier twice (once on entry, once
    /// to leave), so a test can act while an invalidation is in progress.
    fn hold_in_cache(cache: &FakeCache) -> Arc<Barrier> {
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        cache.set_hook(Arc::new(move |_, _, _| {
            g.wait();
            g.wait();
            Ok(())
        }));
        gate
    }

    /// [`inv`] naming the grant's write_seq `ws`.
    fn inv_ws(g: u64, old: LockMode, new: LockMode, ws: u64) -> NetLock {
        NetLock {
            write_seq: ws,
            ..inv(g, old, new)
        }
    }

    /// A thread waiting for a grant of `mode` on group `g`.
    fn spawn_wait(
        nl: &Arc<NetLocks>,
        g: u64,
        mode: LockMode,
    ) -> thread::JoinHandle<Result<(), LockError>> {
        let nl = nl.clone();
        thread::spawn(move || nl.wait_grant(&key(g), mode))
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Long enough for something that should not happen to have happened.
    fn settle() {
        thread::sleep(Duration::from_millis(60));
    }

    #[test]
    fn try_lock_never_waits_and_sends_nothing() {
        let (nl, sender, _) = setup();
        let t0 = Instant::now();
        assert_eq!(nl.try_lock(&key(3), Read, 1).unwrap(), None);
        // Not even while a request is in flight.
        let waiter = spawn_wait(&nl, 3, Write);
        eventually("the request", || sender.requests().len() == 1);
        assert_eq!(nl.try_lock(&key(3), Write, 1).unwrap(), None);
        assert_eq!(nl.try_lock(&key(3), Read, 1).unwrap(), None);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(sender.requests().len(), 1, "try_lock sends no request");
        grant(&nl, sender.requests()[0], 5);
        waiter.join().unwrap().unwrap();
        let l = nl.try_lock(&key(3), Write, 1).unwrap().expect("granted");
        assert_eq!(
            (l.start, l.end, l.mode, l.write_seq),
            (key(3), lock_end(&key(3)), Write, 5)
        );
        nl.unlock(&l);
        nl.shutdown();
    }

    #[test]
    fn wait_grant_sends_exactly_one_request_for_concurrent_waiters() {
        let (nl, sender, _) = setup();
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let nl = nl.clone();
                thread::spawn(move || nl.wait_grant(&key(1), Write))
            })
            .collect();
        eventually("the request", || !sender.requests().is_empty());
        settle();
        let reqs = sender.requests();
        assert_eq!(reqs, vec![inv(1, Null, Write)], "old mode = held (none)");
        grant(&nl, reqs[0], 9);
        for w in waiters {
            w.join().unwrap().unwrap();
        }
        assert_eq!(sender.requests().len(), 1);
        nl.shutdown();
    }

    #[test]
    fn a_write_grant_satisfies_read() {
        let (nl, sender, _) = setup();
        give(&nl, 2, Write, 4);
        nl.wait_grant(&key(2), Read).unwrap();
        let r = nl
            .try_lock(&key(2), Read, 1)
            .unwrap()
            .expect("write serves read");
        assert_eq!(r.mode, Read, "the use is counted as a read");
        nl.unlock(&r);
        assert!(sender.requests().is_empty());
        nl.shutdown();
    }

    #[test]
    fn an_upgrade_from_read_requests_write_stating_the_read_grant() {
        let (nl, sender, _) = setup();
        give(&nl, 2, Read, 0);
        let w = spawn_wait(&nl, 2, Write);
        eventually("the request", || sender.requests().len() == 1);
        assert_eq!(sender.requests()[0], inv(2, Read, Write));
        // Readers keep using the read grant meanwhile.
        let r = nl.try_lock(&key(2), Read, 1).unwrap().expect("read held");
        nl.unlock(&r);
        grant(&nl, sender.requests()[0], 11);
        w.join().unwrap().unwrap();
        assert_eq!(nl.mode(&key(2)), Write);
        nl.shutdown();
    }

    #[test]
    fn an_invalidation_waits_for_incompatible_users_and_refuses_new_ones() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        let w = nl.try_lock(&key(1), Write, 1).unwrap().unwrap();
        nl.invalidate(7, inv_ws(1, Write, Null, 3));
        settle();
        assert!(cache.calls().is_empty(), "a writer still uses the lock");
        assert!(sender.answers().is_empty());
        assert_eq!(nl.try_lock(&key(1), Write, 1).unwrap(), None);
        assert_eq!(nl.try_lock(&key(1), Read, 1).unwrap(), None);
        assert_eq!(
            nl.mode(&key(1)),
            Write,
            "still granted until the users are gone"
        );
        nl.unlock(&w);
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(cache.calls(), vec![(key(1), Write, Null)]);
        assert_eq!(
            sender.answers(),
            vec![(
                7,
                NetLock {
                    key: key(1),
                    write_seq: 3,
                    old_mode: Write,
                    new_mode: Null
                }
            )]
        );
        assert_eq!(nl.mode(&key(1)), Null);
        nl.shutdown();
    }

    #[test]
    fn a_write_to_read_invalidation_lets_readers_keep_using_the_lock() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        let reader = nl.try_lock(&key(1), Read, 1).unwrap().unwrap();
        let gate = hold_in_cache(&cache);
        nl.invalidate(1, inv(1, Write, Read));
        gate.wait(); // the cache is being invalidated, a reader holds the lock
        let r2 = nl
            .try_lock(&key(1), Read, 1)
            .unwrap()
            .expect("readers go on");
        assert_eq!(nl.try_lock(&key(1), Write, 1).unwrap(), None);
        assert_eq!(nl.mode(&key(1)), Read);
        gate.wait();
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(sender.answers()[0].1.new_mode, Read);
        nl.unlock(&reader);
        nl.unlock(&r2);
        assert!(nl.try_lock(&key(1), Read, 1).unwrap().is_some());
        nl.shutdown();
    }

    #[test]
    fn invalidations_of_one_lock_are_processed_in_arrival_order() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        let w = nl.try_lock(&key(1), Write, 1).unwrap().unwrap();
        nl.invalidate(1, inv(1, Write, Read));
        nl.invalidate(2, inv(1, Read, Null));
        settle();
        assert!(sender.answers().is_empty());
        nl.unlock(&w);
        eventually("both answers", || sender.answers().len() == 2);
        assert_eq!(
            cache.calls(),
            vec![(key(1), Write, Read), (key(1), Read, Null)]
        );
        let a = sender.answers();
        assert_eq!((a[0].0, a[0].1.old_mode, a[0].1.new_mode), (1, Write, Read));
        assert_eq!((a[1].0, a[1].1.old_mode, a[1].1.new_mode), (2, Read, Null));
        nl.shutdown();
    }

    #[test]
    fn invalidations_of_different_locks_proceed_independently() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        give(&nl, 2, Write, 4);
        let busy = nl.try_lock(&key(1), Write, 1).unwrap().unwrap();
        nl.invalidate(1, inv(1, Write, Null));
        nl.invalidate(2, inv(2, Write, Null));
        eventually("lock 2's answer", || sender.answers().len() == 1);
        assert_eq!(sender.answers()[0].0, 2);
        assert_eq!(cache.calls(), vec![(key(2), Write, Null)]);
        nl.unlock(&busy);
        eventually("lock 1's answer", || sender.answers().len() == 2);
        assert_eq!(sender.answers()[1].0, 1);
        nl.shutdown();
    }

    #[test]
    fn the_cache_is_called_outside_the_table_mutex() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        give(&nl, 2, Read, 0);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (weak, s) = (Arc::downgrade(&nl), seen.clone());
        // Like Fs::invalidate_lock racing an operation: the operation calls try_lock.
        cache.set_hook(Arc::new(move |_, _, _| {
            let nl = weak.upgrade().unwrap();
            for (g, m) in [(1, Read), (1, Write), (2, Read)] {
                let l = nl.try_lock(&key(g), m, 1).unwrap();
                s.lock().unwrap().push(l.is_some());
                if let Some(l) = l {
                    nl.unlock(&l);
                }
            }
            assert!(!nl.recover(&Key::MIN).is_empty());
            Ok(())
        }));
        nl.invalidate(1, inv(1, Write, Read));
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(*seen.lock().unwrap(), vec![true, false, true]);
        nl.shutdown();
    }

    /// Seed 000 (commit ca526e2b): a new server's lock recovery during an invalidation must
    /// see the old mode, or it would grant a conflicting lock while this node still writes
    /// out and drops what it cached. The resent invalidation is then a duplicate.
    #[test]
    fn recover_reports_the_old_mode_while_invalidating_seed_000_ca526e2b() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 42);
        let gate = hold_in_cache(&cache);
        nl.invalidate(1, inv(1, Write, Null));
        gate.wait(); // the worker is inside the cache callback
        assert_eq!(nl.mode(&key(1)), Null, "the mode is already lowered");
        assert_eq!(
            nl.recover(&Key::MIN),
            vec![NetLock {
                key: key(1),
                write_seq: 42,
                old_mode: Write,
                new_mode: Write
            }],
            "recovery reports the old mode"
        );
        // The new server resends the invalidation.
        nl.invalidate(2, inv(1, Write, Null));
        gate.wait();
        eventually("both answers", || sender.answers().len() == 2);
        let a = sender.answers();
        assert_eq!((a[0].0, a[0].1.old_mode, a[0].1.new_mode), (1, Write, Null));
        assert_eq!((a[1].0, a[1].1.new_mode), (2, Null), "duplicate answered");
        assert_eq!(cache.calls().len(), 1);
        assert!(nl.recover(&Key::MIN).is_empty());
        nl.shutdown();
    }

    /// A newer server may grant this node's read → write upgrade while it still finishes a
    /// dead server's invalidation of the read (the grant waits for the answer). If that server
    /// dies too, the next one's recovery must learn of the write: the upgrade request was
    /// answered, so it is not resent, and the node uses write once it answers.
    #[test]
    fn recover_reports_a_grant_waiting_for_the_invalidation_in_progress() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Read, 0);
        let gate = hold_in_cache(&cache);
        nl.invalidate(1, inv(1, Read, Null));
        gate.wait(); // the worker is inside the cache callback
        nl.granted(NetLock {
            key: key(1),
            write_seq: 77,
            old_mode: Read,
            new_mode: Write,
        });
        assert_eq!(nl.mode(&key(1)), Null, "the grant waits for the answer");
        assert_eq!(
            nl.recover(&Key::MIN),
            vec![NetLock {
                key: key(1),
                write_seq: 77,
                old_mode: Write,
                new_mode: Write
            }]
        );
        gate.wait();
        eventually("the answer", || sender.answers().len() == 1);
        eventually("the grant applied", || nl.mode(&key(1)) == Write);
        assert_eq!(nl.recover(&Key::MIN)[0].new_mode, Write);
        nl.shutdown();
    }

    #[test]
    fn duplicate_and_unknown_invalidations_are_answered_at_once() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Read, 0);
        // A lock never held.
        nl.invalidate(1, inv(5, Write, Null));
        // A duplicate whose new mode we already hold.
        nl.invalidate(2, inv(1, Write, Read));
        eventually("two answers", || sender.answers().len() == 2);
        let mut a = sender.answers();
        a.sort_by_key(|x| x.0); // different locks: no order between them
        assert_eq!((a[0].0, a[0].1.key, a[0].1.new_mode), (1, key(5), Null));
        // The answer repeats the invalidation's old mode (how the server matches it).
        assert_eq!((a[1].0, a[1].1.old_mode, a[1].1.new_mode), (2, Write, Read));
        assert!(cache.calls().is_empty());
        // A real one, then its duplicate: the duplicate finds us below its target.
        nl.invalidate(3, inv(1, Read, Null));
        nl.invalidate(4, inv(1, Read, Null));
        eventually("four answers", || sender.answers().len() == 4);
        let a = sender.answers();
        assert_eq!((a[2].0, a[2].1.new_mode), (3, Null));
        assert_eq!((a[3].0, a[3].1.old_mode, a[3].1.new_mode), (4, Read, Null));
        assert_eq!(cache.calls(), vec![(key(1), Read, Null)]);
        let c = nl.counts();
        assert_eq!(
            c[Read as usize].1.invalidations, 1,
            "duplicates are not counted"
        );
        nl.shutdown();
    }

    #[test]
    fn recover_pages_by_start_key_with_at_most_lock_recover_batch() {
        let (nl, _, _) = setup();
        let n = 2 * LOCK_RECOVER_BATCH as u64 + 452;
        for g in (0..n).rev() {
            give(&nl, g, if g.is_multiple_of(2) { Read } else { Write }, g);
        }
        // A lock asked for but not granted is not reported.
        nl.granted(NetLock {
            key: key(n + 10),
            write_seq: 0,
            old_mode: Read,
            new_mode: Null,
        });
        let mut start = Key::MIN;
        let mut pages = Vec::new();
        let mut all = Vec::new();
        loop {
            let batch = nl.recover(&start);
            if batch.is_empty() {
                break;
            }
            assert!(batch.windows(2).all(|w| w[0].key < w[1].key), "key order");
            assert!(batch.iter().all(|l| l.key >= start));
            pages.push(batch.len());
            start = batch.last().unwrap().key.next().unwrap();
            all.extend(batch);
        }
        assert_eq!(pages, vec![LOCK_RECOVER_BATCH, LOCK_RECOVER_BATCH, 452]);
        for (g, l) in all.iter().enumerate() {
            let g = g as u64;
            assert_eq!(l.key, key(g));
            assert_eq!(l.write_seq, g);
            assert_eq!(l.new_mode, if g.is_multiple_of(2) { Read } else { Write });
            assert_eq!(l.old_mode, l.new_mode);
        }
        // Paging from the middle of a group's keys starts at the next group.
        assert_eq!(
            nl.recover(&Key::new(zone::FS, 5, 0, 0, 0, 0))[0].key,
            key(1)
        );
        nl.shutdown();
    }

    #[test]
    fn shutdown_wakes_waiters_with_shutdown_error() {
        let (nl, sender, _) = setup();
        let waiters: Vec<_> = (0..3)
            .map(|g| {
                let nl = nl.clone();
                thread::spawn(move || nl.wait_grant(&key(g), Write))
            })
            .collect();
        eventually("the requests", || sender.requests().len() == 3);
        nl.shutdown();
        for w in waiters {
            assert!(matches!(w.join().unwrap(), Err(LockError::Shutdown(_))));
        }
        assert!(matches!(
            nl.try_lock(&key(0), Read, 1),
            Err(LockError::Shutdown(_))
        ));
        assert!(matches!(
            nl.wait_grant(&key(0), Read),
            Err(LockError::Shutdown(_))
        ));
        assert!(nl.worker.lock().unwrap().is_none(), "worker joined");
        // Calls after shutdown are ignored.
        nl.invalidate(1, inv(0, Write, Null));
        settle();
        assert!(sender.answers().is_empty());
    }

    #[test]
    fn grant_gen_increases_per_grant() {
        let (nl, sender, _) = setup();
        assert_eq!(nl.grant_gen(), 0);
        give(&nl, 1, Read, 0);
        assert_eq!(nl.grant_gen(), 1);
        give(&nl, 2, Write, 5);
        assert_eq!(nl.grant_gen(), 2);
        let r = nl.try_lock(&key(1), Read, 1).unwrap().unwrap();
        nl.unlock(&r);
        assert_eq!(nl.grant_gen(), 2, "using a held grant is not a grant");
        nl.invalidate(1, inv(2, Write, Null));
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(nl.grant_gen(), 2, "an invalidation is not a grant");
        give(&nl, 2, Write, 6);
        assert_eq!(nl.grant_gen(), 3);
        nl.shutdown();
    }

    /// Crossing rule: an invalidation of a mode whose grant has not arrived yet waits for
    /// the grant, then reduces it.
    #[test]
    fn an_invalidation_of_a_grant_still_in_flight_waits_for_the_grant() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Read, 0);
        let w = spawn_wait(&nl, 1, Write);
        eventually("the request", || sender.requests().len() == 1);
        // The server granted Write and then invalidated it; the invalidation comes first.
        nl.invalidate(9, inv(1, Write, Null));
        settle();
        assert!(sender.answers().is_empty(), "waits for the grant");
        assert!(cache.calls().is_empty());
        assert_eq!(
            nl.try_lock(&key(1), Read, 1).unwrap(),
            None,
            "refused meanwhile"
        );
        grant(&nl, sender.requests()[0], 8);
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(cache.calls(), vec![(key(1), Write, Null)]);
        let a = sender.answers()[0];
        assert_eq!((a.0, a.1.old_mode, a.1.new_mode), (9, Write, Null));
        // The waiter saw the grant taken away again: it asks anew.
        eventually("the second request", || sender.requests().len() == 2);
        assert_eq!(sender.requests()[1], inv(1, Null, Write));
        grant(&nl, sender.requests()[1], 12);
        w.join().unwrap().unwrap();
        nl.shutdown();
    }

    /// Crossing rule, stale side: an invalidation of a write grant we already received (its
    /// write_seq is not newer than ours: a dead server's, or one of a mode recovery reported
    /// while it was being given up) is not for the grant in flight. It is applied to what we
    /// hold at once; waiting would deadlock with a server that waits for this answer before
    /// it grants.
    #[test]
    fn a_stale_write_invalidation_does_not_wait_for_the_grant_in_flight() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 5);
        let ws5 = |old, new| inv_ws(1, old, new, 5);
        nl.invalidate(1, ws5(Write, Read));
        eventually("the first answer", || sender.answers().len() == 1);
        let w = spawn_wait(&nl, 1, Write);
        eventually("the upgrade request", || sender.requests().len() == 1);
        nl.invalidate(2, ws5(Write, Null));
        eventually("answered without the grant", || sender.answers().len() == 2);
        assert_eq!(sender.answers()[1], (2, ws5(Write, Null)));
        assert_eq!(
            cache.calls(),
            vec![(key(1), Write, Read), (key(1), Read, Null)]
        );
        grant(&nl, sender.requests()[0], 9);
        w.join().unwrap().unwrap();
        assert_eq!(nl.mode(&key(1)), Write);
        nl.shutdown();
    }

    /// After a reconnect the server resends every call not answered. A copy of one still
    /// queued is ignored; a copy of one answered (the answer was lost) is answered again at
    /// once, even while a grant is in flight: the server grants nothing until it has it.
    #[test]
    fn resent_invalidation_calls_are_answered_once_more_without_waiting() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Read, 0);
        nl.invalidate(4, inv(1, Read, Null));
        eventually("the answer", || sender.answers().len() == 1);
        // Asks again; the answer to call 4 was lost, so the server resends call 4.
        let w = spawn_wait(&nl, 1, Read);
        eventually("the request", || sender.requests().len() == 1);
        nl.invalidate(4, inv(1, Read, Null));
        eventually("answered again", || sender.answers().len() == 2);
        assert_eq!(sender.answers()[1], (4, inv(1, Read, Null)));
        assert_eq!(cache.calls(), vec![(key(1), Read, Null)]);
        // Two copies of one call queued behind a busy writer: answered once.
        grant(&nl, sender.requests()[0], 0);
        w.join().unwrap().unwrap();
        let r = nl.try_lock(&key(1), Read, 1).unwrap().unwrap();
        nl.invalidate(5, inv(1, Read, Null));
        nl.invalidate(5, inv(1, Read, Null));
        nl.unlock(&r);
        eventually("the answer", || sender.answers().len() == 3);
        settle();
        assert_eq!(sender.answers().len(), 3, "one answer for one call");
        nl.shutdown();
    }

    /// A new server: invalidations of the dead one not started yet are dropped (one waiting
    /// for a grant that will not come would hold up the new server's behind it); the one in
    /// progress goes on and is answered.
    #[test]
    fn a_new_server_drops_the_dead_servers_queued_invalidations() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        give(&nl, 2, Read, 0);
        let gate = hold_in_cache(&cache);
        nl.invalidate(1, inv(1, Write, Null));
        gate.wait(); // lock 1: in progress
        let w = spawn_wait(&nl, 2, Write);
        eventually("the upgrade request", || sender.requests().len() == 1);
        // Lock 2: the dead server's invalidation of the write on its way waits for it.
        nl.invalidate(2, inv_ws(2, Write, Null, 7));
        settle();
        nl.server_changed();
        gate.wait();
        eventually("lock 1 answered", || sender.answers().len() == 1);
        assert_eq!(sender.answers()[0].0, 1);
        // The new server grants the upgrade; nothing reduces it.
        grant(&nl, sender.requests()[0], 9);
        w.join().unwrap().unwrap();
        settle();
        assert_eq!(nl.mode(&key(2)), Write);
        assert_eq!(sender.answers().len(), 1);
        nl.shutdown();
    }

    /// A call the server sends again (a reconnect) while the worker answers it: the answer
    /// may have gone to the dead connection, so it is sent once more.
    #[test]
    fn a_call_resent_while_it_is_being_answered_is_answered_again() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        let gate = hold_in_cache(&cache);
        let call = inv_ws(1, Write, Null, 3);
        nl.invalidate(7, call);
        gate.wait(); // the worker is inside the cache callback
        nl.invalidate(7, call);
        gate.wait();
        eventually("two answers", || sender.answers().len() == 2);
        let a = sender.answers();
        assert_eq!((a[0].0, a[1].0), (7, 7));
        assert_eq!(cache.calls().len(), 1, "reduced once");
        nl.shutdown();
    }

    /// Recovery does not report a lock held at Null, so a new server may grant lower
    /// write_seqs than one this node remembers for it: after a server change an
    /// invalidation of the grant on its way must still wait for that grant.
    #[test]
    fn a_new_server_forgets_write_seqs_recovery_does_not_report() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 100);
        // Asks for WriteOnly; the old server takes the write away first.
        let w = spawn_wait(&nl, 1, WriteOnly);
        eventually("the request", || sender.requests().len() == 1);
        nl.invalidate(1, inv_ws(1, Write, Null, 100));
        eventually("the first answer", || sender.answers().len() == 1);
        nl.server_changed();
        // The new server grants WriteOnly with seq 50 and invalidates it; the invalidation
        // arrives first.
        nl.invalidate(2, inv_ws(1, WriteOnly, Null, 50));
        settle();
        assert_eq!(sender.answers().len(), 1, "waits for the grant");
        grant(&nl, sender.requests()[0], 50);
        eventually("the second answer", || sender.answers().len() == 2);
        assert_eq!(cache.calls().len(), 2);
        drop(w);
        nl.shutdown();
    }

    /// An invalidation in progress when a new server connects is reported with its old
    /// mode; if it finishes before the recovery call, the lock is at Null but its write_seq is
    /// still reported, so the new server's core seq passes it (a grant of a lower one would
    /// look older than ours and be kept through every invalidation: a livelock).
    #[test]
    fn recovery_reports_the_write_seq_of_a_lock_given_up_after_the_server_changed() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 100);
        let w = spawn_wait(&nl, 1, WriteOnly);
        eventually("the request", || sender.requests().len() == 1);
        let gate = hold_in_cache(&cache);
        nl.invalidate(1, inv_ws(1, Write, Null, 100));
        gate.wait(); // in progress when the new server connects
        nl.server_changed();
        gate.wait();
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(nl.mode(&key(1)), Null);
        let rep = nl.recover(&Key::MIN);
        assert_eq!(rep.len(), 1);
        assert_eq!((rep[0].new_mode, rep[0].write_seq), (Null, 100));
        grant(&nl, sender.requests()[0], 101);
        w.join().unwrap().unwrap();
        nl.shutdown();
    }

    /// A write invalidation naming an older grant than the one held reduces nothing: the
    /// server granted ours after it sent that one.
    #[test]
    fn a_write_invalidation_older_than_our_grant_reduces_nothing() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 9);
        let old = inv_ws(1, Write, Null, 4);
        nl.invalidate(1, old);
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(
            sender.answers()[0],
            (
                1,
                NetLock {
                    new_mode: Write,
                    ..old
                }
            )
        );
        assert!(cache.calls().is_empty());
        assert_eq!(nl.mode(&key(1)), Write);
        nl.shutdown();
    }

    /// Crossing rule: a grant that arrives while an invalidation is in progress takes effect
    /// only after the invalidation is answered.
    #[test]
    fn a_grant_arriving_during_an_invalidation_takes_effect_after_the_answer() {
        let (nl, sender, cache) = setup();
        give(&nl, 1, Write, 3);
        let gate = hold_in_cache(&cache);
        nl.invalidate(1, inv(1, Write, Null));
        gate.wait();
        let gen = nl.grant_gen();
        give(&nl, 1, Read, 0);
        assert_eq!(nl.grant_gen(), gen, "not applied yet");
        assert_eq!(nl.try_lock(&key(1), Read, 1).unwrap(), None);
        gate.wait();
        eventually("the grant", || nl.grant_gen() == gen + 1);
        assert_eq!(sender.answers()[0].1.new_mode, Null, "answered first");
        assert_eq!(nl.mode(&key(1)), Read);
        assert!(nl.try_lock(&key(1), Read, 1).unwrap().is_some());
        nl.shutdown();
    }

    #[test]
    fn a_request_waits_for_the_invalidation_of_its_lock_to_finish() {
        let (nl, sender, _) = setup();
        give(&nl, 1, Write, 3);
        let busy = nl.try_lock(&key(1), Write, 1).unwrap().unwrap();
        nl.invalidate(1, inv(1, Write, Null));
        let w = spawn_wait(&nl, 1, Write);
        settle();
        assert!(
            sender.requests().is_empty(),
            "no request while invalidating"
        );
        nl.unlock(&busy);
        eventually("the request", || sender.requests().len() == 1);
        assert_eq!(
            sender.requests()[0],
            inv(1, Null, Write),
            "states the new mode"
        );
        grant(&nl, sender.requests()[0], 10);
        w.join().unwrap().unwrap();
        nl.shutdown();
    }

    #[test]
    fn a_failed_send_keeps_the_request_pending_for_the_transport_to_resend() {
        let (nl, sender, _) = setup();
        sender.fail_requests.store(true, Ordering::SeqCst);
        let w = spawn_wait(&nl, 1, Read);
        eventually("the attempt", || sender.requests().len() == 1);
        settle();
        assert_eq!(sender.requests().len(), 1, "not resent by the lock client");
        assert!(!w.is_finished());
        // The transport reconnected and resent it; the grant comes.
        grant(&nl, sender.requests()[0], 0);
        w.join().unwrap().unwrap();
        nl.shutdown();
    }

    #[test]
    fn a_failed_cache_invalidation_is_retried_before_answering() {
        let (nl, sender, cache) = setup();
        nl.set_invalidate_retry_delay(Duration::from_millis(20));
        give(&nl, 1, Write, 3);
        let fails = Arc::new(AtomicU64::new(2));
        let f = fails.clone();
        cache.set_hook(Arc::new(move |_, _, _| {
            if f.load(Ordering::SeqCst) > 0 {
                f.fetch_sub(1, Ordering::SeqCst);
                return Err(LockError::Unavailable("commit failed".into()));
            }
            Ok(())
        }));
        nl.invalidate(1, inv(1, Write, Null));
        eventually("the answer", || sender.answers().len() == 1);
        assert_eq!(cache.calls(), vec![(key(1), Write, Null); 3]);
        assert_eq!(sender.answers()[0].1.old_mode, Write);
        nl.shutdown();
    }

    #[test]
    fn failed_invalidation_keeps_reporting_the_old_mode_until_it_succeeds() {
        let (nl, sender, cache) = setup();
        nl.set_invalidate_retry_delay(Duration::from_secs(60));
        give(&nl, 1, Write, 3);
        cache.set_hook(Arc::new(|_, _, _| {
            Err(LockError::Unavailable("eio".into()))
        }));
        nl.invalidate(1, inv(1, Write, Null));
        eventually("the cache call", || cache.calls().len() == 1);
        settle();
        assert!(sender.answers().is_empty());
        assert_eq!(nl.recover(&Key::MIN)[0].new_mode, Write);
        assert_eq!(nl.try_lock(&key(1), Read, 1).unwrap(), None);
        nl.shutdown();
    }

    #[test]
    fn counts_requests_grants_and_invalidations_per_mode() {
        let (nl, sender, _) = setup();
        give(&nl, 1, Write, 3);
        for m in [Read, Write, Write] {
            let l = nl.try_lock(&key(1), m, 1).unwrap().unwrap();
            nl.unlock(&l);
        }
        assert_eq!(nl.try_lock(&key(2), Read, 1).unwrap(), None);
        nl.invalidate(1, inv(1, Write, Read));
        eventually("the answer", || sender.answers().len() == 1);
        let c = nl.counts();
        assert_eq!(c.map(|(m, _)| m), LockMode::ALL);
        let cw = c[Write as usize].1;
        let cr = c[Read as usize].1;
        assert_eq!((cw.requests, cw.grants, cw.invalidations), (2, 1, 1));
        assert_eq!((cr.requests, cr.grants, cr.invalidations), (1, 0, 0));
        nl.shutdown();
    }

    #[test]
    fn dropping_the_client_stops_the_worker() {
        let (nl, _, _) = setup();
        let shared = Arc::downgrade(&nl.shared);
        drop(nl);
        assert!(shared.upgrade().is_none(), "the worker let go of the state");
    }
}
