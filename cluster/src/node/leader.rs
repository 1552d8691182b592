//! The server a node runs while it leads: started by the quorum agent after an election
//! (asynchronously, so heartbeats keep flowing while it fences — seed 001, 2022-03-31) and
//! stopped when the node loses leadership or leaves.
//!
//! Start: fence every previous leader the quorum blocks still show as possibly running,
//! open the metadata engine from the devices, put every client listed in
//! `mounted_clients` into recovery (locks are granted to nobody until each has recovered
//! or been fenced), then listen. While running, a timer fences clients that do not recover
//! in time and clients whose connection stayed broken too long, and reclaims their state
//! only after the fence succeeded.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use scoutgw_blockdev::BlockDevice;

use crate::client::{LocalServer, MergerHandle};
use crate::fence::{FenceReason, FenceRequest};
use crate::format::Key;
use crate::lock_server::{first_call_id, LockAction, LockServer};
use crate::msg::{ClientReply, Request, Response, ServerCall, ServerError};
use crate::net::{NetServer, ServerCalls};
use crate::quorum::{self, ServerControl, ServerStatus};
use crate::recovery::Recovery;
use crate::server::{Server, ServerConfig};

use super::send_order::SendOrder;
use super::NodeOptions;

/// Counters of a running server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerRunStats {
    pub term: u64,
    /// Clients fenced by this server (recovery, reconnect and previous leaders).
    pub fenced: u64,
    /// Clients still in recovery.
    pub recovering: u64,
    /// Log trees merged into fs_root.
    pub trees_merged: u64,
    /// Finalized log trees waiting for the merger.
    pub merge_backlog: u64,
}

/// The lock server as seen from outside.
#[derive(Debug, Clone, Default)]
pub struct LockServerReport {
    /// Lock objects allocated (locks granted or wanted by some node).
    pub lock_objects: usize,
    /// The busiest of them with their message counts, busiest first.
    pub busiest: Vec<(Key, crate::lock_server::LockMessageCounts)>,
}

/// The node's [`ServerControl`]: what the quorum agent starts and stops.
pub(crate) struct LeaderControl {
    meta: Arc<dyn BlockDevice>,
    addr: Option<SocketAddr>,
    opts: NodeOptions,
    state: Arc<Mutex<ControlState>>,
}

struct ControlState {
    status: ServerStatus,
    /// Bumped by every start and stop; a start that finds it changed undoes itself.
    generation: u64,
    running: Option<Arc<Running>>,
}

impl LeaderControl {
    pub(crate) fn new(
        meta: Arc<dyn BlockDevice>,
        addr: Option<SocketAddr>,
        opts: NodeOptions,
    ) -> Self {
        Self {
            meta,
            addr,
            opts,
            state: Arc::new(Mutex::new(ControlState {
                status: ServerStatus::Down,
                generation: 0,
                running: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> Option<ServerRunStats> {
        let run = self.state().running.clone()?;
        Some(run.stats())
    }

    /// Lock objects the lock server holds and the `n` with the most messages (seed 001,
    /// 2021-08-25: where conflicts happen), while this node leads.
    pub(crate) fn lock_report(&self, n: usize) -> Option<LockServerReport> {
        let run = self.state().running.clone()?;
        let mut all = run.locks.message_counts();
        all.sort_by_key(|(_, c)| {
            std::cmp::Reverse(c.requests + c.grants + c.invalidations + c.invalidation_responses)
        });
        all.truncate(n);
        Some(LockServerReport {
            lock_objects: run.locks.lock_objects(),
            busiest: all,
        })
    }

    pub(crate) fn cache_stats(&self) -> Option<scoutgw_blockdev::CacheStats> {
        let run = self.state().running.clone()?;
        Some(run.server.with(|s| s.meta_dev().cache_stats()))
    }
}

impl ServerControl for LeaderControl {
    fn start(&self, term: u64) {
        let Some(addr) = self.addr else {
            return;
        };
        let (generation, previous) = {
            let mut st = self.state();
            st.generation += 1;
            st.status = ServerStatus::Starting { term };
            (st.generation, st.running.take())
        };
        let (meta, opts) = (self.meta.clone(), self.opts.clone());
        // The start runs on its own thread and reports back through a weak handle.
        let shared = Arc::downgrade(&self.state);
        std::thread::Builder::new()
            .name("scoutgw-server-start".into())
            .spawn(move || {
                if let Some(old) = previous {
                    old.stop();
                }
                let started = Running::start(meta, addr, term, opts);
                let Some(state) = shared.upgrade() else {
                    if let Ok(run) = started {
                        run.stop();
                    }
                    return;
                };
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                match started {
                    Ok(run) if st.generation == generation => {
                        tracing::info!("server of term {term} is up on {addr}");
                        st.running = Some(run);
                        st.status = ServerStatus::Up { term };
                    }
                    Ok(run) => {
                        drop(st);
                        run.stop();
                    }
                    Err(e) => {
                        tracing::error!("server of term {term} failed to start: {e}");
                        if st.generation == generation {
                            st.status = ServerStatus::Failed { term };
                        }
                    }
                }
            })
            .expect("spawn server start thread");
    }

    fn stop(&self) {
        let running = {
            let mut st = self.state();
            st.generation += 1;
            st.status = ServerStatus::Down;
            st.running.take()
        };
        if let Some(run) = running {
            std::thread::Builder::new()
                .name("scoutgw-server-stop".into())
                .spawn(move || run.stop())
                .expect("spawn server stop thread");
        }
    }

    fn status(&self) -> ServerStatus {
        self.state().status
    }
}

/// A running server: the engine, the lock server, recovery and the listener.
struct Running {
    term: u64,
    opts: NodeOptions,
    server: Arc<LocalServer>,
    locks: LockServer,
    /// Each lock's messages are decided and sent under it, so they reach clients in order.
    send_order: SendOrder,
    net: std::sync::OnceLock<NetServer>,
    recovery: Mutex<Recovery>,
    /// Clients whose connection broke: when, and their address.
    disconnected: Mutex<HashMap<u64, (Instant, Option<SocketAddr>)>>,
    /// Clients that must be fenced before their state is reclaimed (retried until done).
    to_fence: Mutex<HashMap<u64, (FenceReason, Option<SocketAddr>)>>,
    /// Peer address of every greeted client.
    peers: Mutex<HashMap<u64, SocketAddr>>,
    /// Clients this server fenced and reclaimed: their greetings are refused.
    fenced: Mutex<HashSet<u64>>,
    /// Clients that said farewell: their disconnection is expected.
    departed: Mutex<HashSet<u64>>,
    /// Farewells of quorum members held back (rid → request id) so that enough members
    /// stay to elect a server while others are still mounted (digest §6.8).
    farewells: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Serializes passes over `farewells`.
    farewell_pass: Mutex<()>,
    meta: Arc<dyn BlockDevice>,
    fenced_count: AtomicU64,
    stopping: AtomicBool,
    merger: Mutex<Option<MergerHandle>>,
    timer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("fencing previous leaders: {0}")]
    Fence(String),
    #[error("quorum blocks: {0}")]
    Quorum(#[from] quorum::QuorumError),
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The listener's view of a running server; weak, so the listener does not keep it alive.
struct Calls(Weak<Running>);

impl Running {
    fn start(
        meta: Arc<dyn BlockDevice>,
        addr: SocketAddr,
        term: u64,
        opts: NodeOptions,
    ) -> Result<Arc<Running>, StartError> {
        let fenced_leaders = fence_previous_leaders(&*meta, term, &opts)?;
        let mut server = Server::open(
            meta.clone(),
            ServerConfig {
                term,
                ..opts.server.clone()
            },
        )?;
        // A fenced leader's mount (same rid) will not come back: reclaim it now instead of
        // waiting out the recovery timeout.
        let mut rids = server.mounted_rids()?;
        for rid in &fenced_leaders {
            if rids.contains(rid) {
                server.reclaim_rid(*rid)?;
                tracing::warn!("term {term}: reclaimed the mount of fenced leader {rid:016x}");
            }
        }
        rids.retain(|r| !fenced_leaders.contains(r));
        let locks = LockServer::with_first_call_id(first_call_id(term));
        locks.begin_recovery(&rids);
        if !rids.is_empty() {
            tracing::info!(
                "term {term}: waiting up to {:?} for {} client(s) to recover",
                opts.recovery_timeout,
                rids.len()
            );
        }
        let recovery = Recovery::new(rids, Instant::now(), opts.recovery_timeout);
        let server = Arc::new(LocalServer::new(server));
        let merger = server.spawn_merger(opts.merge_interval);
        let run = Arc::new(Running {
            term,
            opts,
            server,
            locks,
            send_order: SendOrder::new(),
            net: std::sync::OnceLock::new(),
            recovery: Mutex::new(recovery),
            disconnected: Mutex::new(HashMap::new()),
            to_fence: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            fenced: Mutex::new(fenced_leaders.iter().copied().collect()),
            departed: Mutex::new(HashSet::new()),
            farewells: Mutex::new(std::collections::BTreeMap::new()),
            farewell_pass: Mutex::new(()),
            meta: meta.clone(),
            fenced_count: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            merger: Mutex::new(Some(merger)),
            timer: Mutex::new(None),
        });
        // The previous server of this node (or of a dead process on this address) may
        // still hold the port for a moment.
        let calls: Arc<dyn ServerCalls> = Arc::new(Calls(Arc::downgrade(&run)));
        let mut tries = 0;
        let net = loop {
            match NetServer::listen(addr, calls.clone(), run.opts.idle_timeout) {
                Ok(n) => break n,
                Err(e) if tries < 40 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    run.stop();
                    return Err(StartError::Listen { addr, source });
                }
            }
        };
        let _ = run.net.set(net);
        let weak = Arc::downgrade(&run);
        let timer = std::thread::Builder::new()
            .name("scoutgw-recovery".into())
            .spawn(move || timer_loop(weak))
            .expect("spawn recovery timer");
        *lock(&run.timer) = Some(timer);
        Ok(run)
    }

    fn net(&self) -> Option<&NetServer> {
        self.net.get()
    }

    fn stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(n) = self.net() {
            n.shutdown();
        }
        drop(lock(&self.merger).take());
        if let Some(t) = lock(&self.timer).take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        tracing::info!("server of term {} stopped", self.term);
    }

    fn stats(&self) -> ServerRunStats {
        let (trees_merged, merge_backlog) = self.server.with(|s| {
            let roots = s.roots();
            let backlog = crate::server::all_log_trees(s.meta_dev(), None, &roots.logs_root)
                .map(|lts| lts.iter().filter(|lt| lt.is_finalized()).count() as u64)
                .unwrap_or(0);
            (s.trees_merged(), backlog)
        });
        ServerRunStats {
            term: self.term,
            fenced: self.fenced_count.load(Ordering::Relaxed),
            recovering: lock(&self.recovery).pending().len() as u64,
            trees_merged,
            merge_backlog,
        }
    }

    /// Carry out the lock server's decisions.
    fn send(&self, actions: Vec<LockAction>) {
        let Some(net) = self.net() else {
            return;
        };
        for a in actions {
            match a {
                LockAction::Grant { rid, req_id, lock } => {
                    net.respond(rid, req_id, Ok(Response::Lock(lock)))
                }
                LockAction::Invalidate { rid, call_id, lock } => {
                    net.call_with_id(rid, call_id, ServerCall::Invalidate(lock));
                }
            }
        }
    }

    fn next_seq(&self) -> impl FnMut() -> u64 + '_ {
        move || self.server.with(|s| s.next_core_seq())
    }

    /// A client is gone for good (fenced, or a new incarnation of its rid greeted): drop
    /// its locks and let waiting requests proceed.
    fn drop_lock_state(&self, rid: u64) {
        if let Some(n) = self.net() {
            n.cancel_calls(rid);
        }
        let _order = self.send_order.every();
        let actions = self.locks.remove_client(rid, &mut self.next_seq());
        self.send(actions);
    }

    /// Fence `rid` (must succeed first), then reclaim everything it held.
    fn fence_and_reclaim(&self, rid: u64, reason: FenceReason, addr: Option<SocketAddr>) -> bool {
        let req = FenceRequest {
            rid,
            addr: addr.map(|a| a.ip()),
            reason,
        };
        if let Err(e) = self.opts.fencer.fence(&req) {
            tracing::error!(
                "fencing client {rid:016x} ({}) failed, will retry: {e}",
                reason.as_str()
            );
            return false;
        }
        tracing::warn!("fenced client {rid:016x} ({})", reason.as_str());
        lock(&self.fenced).insert(rid);
        self.fenced_count.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.net() {
            n.close_client(rid);
        }
        if let Err(e) = self.server.with(|s| s.reclaim_rid(rid)) {
            tracing::error!("reclaiming fenced client {rid:016x}: {e}");
        }
        lock(&self.recovery).remove(rid);
        lock(&self.disconnected).remove(&rid);
        lock(&self.farewells).remove(&rid);
        self.drop_lock_state(rid);
        self.process_farewells();
        true
    }

    /// A client leaves: reclaim its state (it committed first) and forget it.
    fn farewell(&self, rid: u64) -> Result<Response, ServerError> {
        let res = self.server.with(|s| s.handle(rid, Request::Farewell));
        if res.is_ok() {
            lock(&self.departed).insert(rid);
            lock(&self.recovery).remove(rid);
            lock(&self.disconnected).remove(&rid);
            self.drop_lock_state(rid);
        }
        res
    }

    /// Rids of the mounts that own a quorum slot (their agent wrote BEGIN and not yet END),
    /// and the number of configured slots.
    fn quorum_members(&self) -> (HashSet<u64>, usize) {
        use crate::format::quorum::QuorumEventKind;
        let Ok(cur) = crate::format::super_block::SuperBlock::read_current(&*self.meta) else {
            return (HashSet::new(), 0);
        };
        let (fsid, conf) = (cur.sb.fsid(), cur.sb.qconf);
        let mut members = HashSet::new();
        let mut slots = 0;
        for (slot, _) in conf.present() {
            slots += 1;
            if let Ok(q) = quorum::read_quorum_block(&*self.meta, fsid, slot) {
                let (begin, end) = (
                    q.event(QuorumEventKind::Begin),
                    q.event(QuorumEventKind::End),
                );
                if begin.write_nr.get() > end.write_nr.get() {
                    members.insert(begin.rid.get());
                }
            }
        }
        (members, slots)
    }

    /// Answer held farewells of quorum members (digest §6.8): while more members stay
    /// mounted than a vote needs, one at a time; once every mount left is a member asking
    /// to leave, all of them together.
    fn process_farewells(&self) {
        // One pass at a time: connection threads and the timer all call this.
        let _one = lock(&self.farewell_pass);
        let own = self.opts.rid;
        // This node's own farewell goes last: answering it lets this node stop its server.
        let mut pending: Vec<(u64, u64)> = lock(&self.farewells)
            .iter()
            .map(|(r, q)| (*r, *q))
            .collect();
        if pending.is_empty() {
            return;
        }
        pending.sort_by_key(|(rid, _)| *rid == own);
        let (members, slots) = self.quorum_members();
        let needed = quorum::votes_needed(slots);
        let Ok(mounted) = self.server.with(|s| s.mounted_rids()) else {
            return;
        };
        let mut staying = mounted.iter().filter(|r| members.contains(r)).count();
        let mut answer = Vec::new();
        for (rid, req_id) in &pending {
            if staying > needed {
                answer.push((*rid, *req_id));
                staying -= 1;
            }
        }
        if answer.len() < pending.len() {
            let asking: HashSet<u64> = pending.iter().map(|(r, _)| *r).collect();
            if mounted.iter().all(|r| asking.contains(r)) {
                answer = pending.clone();
            }
        }
        // Reclaim every leaver first, then answer, own last: once this node's mount has
        // its answer it stops the server, and the other answers must be out by then.
        let done: Vec<_> = answer
            .into_iter()
            .map(|(rid, req_id)| {
                lock(&self.farewells).remove(&rid);
                (rid, req_id, self.farewell(rid))
            })
            .collect();
        if let Some(n) = self.net() {
            for (rid, req_id, res) in done {
                n.respond(rid, req_id, res);
            }
        }
    }

    /// One pass of the recovery timer.
    fn tick(&self) {
        self.process_farewells();
        let now = Instant::now();
        let own = self.opts.rid;
        let timed_out = lock(&self.recovery).timed_out(now);
        {
            let peers = lock(&self.peers);
            let mut to_fence = lock(&self.to_fence);
            for rid in timed_out {
                if rid == own {
                    // This node's own mount is alive by definition: never fence it.
                    lock(&self.recovery).remove(rid);
                    continue;
                }
                to_fence.insert(rid, (FenceReason::ClientRecovery, peers.get(&rid).copied()));
            }
            let mut disc = lock(&self.disconnected);
            disc.retain(|rid, (since, addr)| {
                if *rid != own && now.duration_since(*since) >= self.opts.reconnect_timeout {
                    to_fence.insert(*rid, (FenceReason::ClientReconnect, *addr));
                    false
                } else {
                    true
                }
            });
        }
        let pending: Vec<_> = lock(&self.to_fence).iter().map(|(r, v)| (*r, *v)).collect();
        for (rid, (reason, addr)) in pending {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            if self.fence_and_reclaim(rid, reason, addr) {
                lock(&self.to_fence).remove(&rid);
            }
        }
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Greeting { .. } => "greeting",
        Request::AllocInodes { .. } => "alloc_inodes",
        Request::GetLogTrees => "get_log_trees",
        Request::CommitLogTrees(_) => "commit_log_trees",
        Request::CommitLogTreesOpenNext { .. } => "commit_log_trees_open_next",
        Request::GetRoots => "get_roots",
        Request::GetLastSeq => "get_last_seq",
        Request::Statfs => "statfs",
        Request::Farewell => "farewell",
        Request::Lock(_) => "lock",
    }
}

fn timer_loop(run: Weak<Running>) {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let Some(run) = run.upgrade() else {
            return;
        };
        if run.stopping.load(Ordering::Relaxed) {
            return;
        }
        run.tick();
    }
}

/// Fence every earlier leader the quorum blocks show as possibly still running (digest
/// 6.6), all at once, and wait for all of them.
fn fence_previous_leaders(
    meta: &dyn BlockDevice,
    term: u64,
    opts: &NodeOptions,
) -> Result<Vec<u64>, StartError> {
    let candidates = quorum::fence_candidates(meta, term, opts.rid)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for c in &candidates {
        let (tx, fencer) = (tx.clone(), opts.fencer.clone());
        let req = FenceRequest {
            rid: c.rid,
            addr: Some(std::net::IpAddr::V4(*c.addr.ip())),
            reason: FenceReason::QuorumBlockLeader,
        };
        std::thread::Builder::new()
            .name("scoutgw-fence".into())
            .spawn(move || {
                let r = fencer.fence(&req).map_err(|e| e.to_string());
                let _ = tx.send((req.rid, r));
            })
            .expect("spawn fence thread");
    }
    drop(tx);
    let deadline = Instant::now() + opts.fence_timeout;
    let mut fenced = Vec::new();
    for _ in &candidates {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((rid, Ok(()))) => {
                tracing::warn!("term {term}: fenced previous leader {rid:016x}");
                fenced.push(rid);
            }
            Ok((rid, Err(e))) => return Err(StartError::Fence(format!("leader {rid:016x}: {e}"))),
            Err(_) => {
                return Err(StartError::Fence(format!(
                    "not done within {:?}",
                    opts.fence_timeout
                )))
            }
        }
    }
    Ok(fenced)
}

impl ServerCalls for Calls {
    fn greeting(&self, peer: SocketAddr, req: &Request) -> Result<Response, ServerError> {
        let run = self
            .0
            .upgrade()
            .ok_or_else(|| ServerError::Unreachable("server stopping".into()))?;
        let Request::Greeting {
            rid,
            server_term: known,
            ..
        } = *req
        else {
            return Err(ServerError::Invalid("the first request must greet".into()));
        };
        // A fenced mount must not come back; a new incarnation of its node (a restart:
        // greeting with term 0) starts afresh.
        if known != 0 && lock(&run.fenced).contains(&rid) {
            return Err(ServerError::Fenced { rid });
        }
        let res = run.server.with(|s| s.handle(rid, req.clone()))?;
        lock(&run.fenced).remove(&rid);
        lock(&run.disconnected).remove(&rid);
        lock(&run.departed).remove(&rid);
        lock(&run.peers).insert(rid, peer);
        let mut rec = lock(&run.recovery);
        let recovering = rec.is_pending(rid);
        if recovering {
            rec.greeted(rid);
        }
        if known == 0 {
            // A new incarnation of the rid (its node restarted): it holds no locks, and
            // whatever an earlier incarnation held is gone with it.
            if recovering {
                rec.locks_recovered(rid);
            }
            drop(rec);
            run.drop_lock_state(rid);
        } else if recovering {
            drop(rec);
            if let Some(n) = run.net() {
                n.call(rid, ServerCall::LockRecover { start: Key::MIN });
            }
        }
        Ok(res)
    }

    fn request(
        &self,
        rid: u64,
        req_id: u64,
        req: Request,
    ) -> Option<Result<Response, ServerError>> {
        let Some(run) = self.0.upgrade() else {
            return Some(Err(ServerError::Unreachable("server stopping".into())));
        };
        match req {
            Request::Lock(nl) => {
                let _order = run.send_order.one(&nl.key);
                let actions = run.locks.request(rid, req_id, nl, &mut run.next_seq());
                run.send(actions);
                None
            }
            Request::Farewell => {
                if run.quorum_members().0.contains(&rid) {
                    lock(&run.farewells).insert(rid, req_id);
                    run.process_farewells();
                    return None;
                }
                let res = run.farewell(rid);
                run.process_farewells();
                Some(res)
            }
            other => {
                let what = request_name(&other);
                let res = run.server.with(|s| s.handle(rid, other));
                if let Err(e) = &res {
                    tracing::error!("{what} from client {rid:016x} failed: {e}");
                }
                Some(res)
            }
        }
    }

    fn reply(&self, rid: u64, call_id: u64, reply: ClientReply) {
        let Some(run) = self.0.upgrade() else {
            return;
        };
        match reply {
            ClientReply::Invalidated(nl) => {
                let _order = run.send_order.one(&nl.key);
                let actions = run.locks.invalidated(rid, call_id, nl, &mut run.next_seq());
                run.send(actions);
            }
            ClientReply::Recovered(locks) => {
                let next = locks.last().and_then(|l| l.key.next());
                if let Some(max) = locks.iter().map(|l| l.write_seq).max() {
                    run.locks.recover(rid, &locks);
                    run.server.with(|s| s.advance_seq_past(max));
                }
                match next {
                    Some(start) if !locks.is_empty() => {
                        if let Some(n) = run.net() {
                            n.call(rid, ServerCall::LockRecover { start });
                        }
                    }
                    _ => {
                        lock(&run.recovery).locks_recovered(rid);
                        let max = run.locks.max_write_seq();
                        run.server.with(|s| s.advance_seq_past(max));
                        let _order = run.send_order.every();
                        let actions = run.locks.recovery_done(rid, &mut run.next_seq());
                        run.send(actions);
                    }
                }
            }
        }
    }

    fn disconnected(&self, rid: u64) {
        let Some(run) = self.0.upgrade() else {
            return;
        };
        if run.stopping.load(Ordering::Relaxed)
            || lock(&run.fenced).contains(&rid)
            || lock(&run.departed).contains(&rid)
        {
            return;
        }
        let addr = lock(&run.peers).get(&rid).copied();
        lock(&run.disconnected).insert(rid, (Instant::now(), addr));
    }
}
