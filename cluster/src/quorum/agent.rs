//! [`QuorumAgent`]: the shell that runs an [`Election`] with a real socket, clock and
//! quorum block.
//!
//! One thread ("scoutgw-quorum") loops: ask the server for its status, let the election act
//! on it and on the clock, then wait for one datagram at most until the election's next
//! wakeup (and at most [`POLL`], so server status and shutdown are noticed promptly). The
//! loop never waits for the server: [`ServerControl::start`] and
//! [`ServerControl::stop`] return at once, so heartbeats keep flowing while the server
//! fences (seed 001, 2022-03-31). This thread is the only writer of our quorum block.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use scoutgw_blockdev::BlockDevice;

use crate::format::layout::QUORUM_MAX_SLOTS;
use crate::format::quorum::QuorumConfig;
use crate::format::SuperBlock;

use super::block::{max_term, read_quorum_block, shows_live_leader, OwnBlock};
use super::election::{Action, Election, ElectionStart};
use super::message::QuorumMessage;
use super::{QuorumError, QuorumOptions, Role, ServerControl, SlotSet};

/// Longest single wait for a datagram.
pub const POLL: Duration = Duration::from_millis(20);

/// What a member's agent reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    pub slot: usize,
    pub term: u64,
    pub role: Role,
    /// The leader of the current term as far as we know (our own slot when leading).
    pub leader_slot: Option<usize>,
    /// Time since the current leader's last heartbeat arrived (followers).
    pub heartbeat_age: Option<Duration>,
    /// Why the agent stopped taking part, if it failed.
    pub error: Option<String>,
}

#[derive(Debug)]
struct Snapshot {
    term: u64,
    role: Role,
    leader: Option<usize>,
    last_heartbeat: Option<Instant>,
    error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    snap: Mutex<Snapshot>,
    stop: AtomicBool,
}

/// The greatest term in all configured slots' quorum blocks, and whether one of them shows a
/// live leader (digest §6.3). Our own block must be readable; another slot's block that
/// fails verification is skipped.
fn startup_state(
    meta: &dyn BlockDevice,
    fsid: u64,
    conf: &QuorumConfig,
    own_slot: usize,
) -> Result<ElectionStart, QuorumError> {
    let mut start = ElectionStart::default();
    for (slot, _) in conf.present() {
        match read_quorum_block(meta, fsid, slot) {
            Ok(q) => {
                start.term = start.term.max(max_term(&q));
                start.live_leader |= shows_live_leader(&q);
            }
            Err(e) if slot != own_slot && e.is_corruption() => {}
            Err(source) => return Err(QuorumError::Block { slot, source }),
        }
    }
    Ok(start)
}

/// A running quorum member.
pub struct QuorumAgent {
    slot: usize,
    rid: u64,
    local_addr: SocketAddrV4,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), QuorumError>>>,
}

impl std::fmt::Debug for QuorumAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumAgent")
            .field("slot", &self.slot)
            .field("rid", &format_args!("{:016x}", self.rid))
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl QuorumAgent {
    /// Join the quorum in `slot` as mount `rid`: read the super block (fsid, slots), bind
    /// the slot's UDP address, record `BEGIN` in our quorum block and start the election
    /// thread. The server is started through `server` when this member is elected.
    pub fn start(
        meta: Arc<dyn BlockDevice>,
        slot: usize,
        rid: u64,
        opts: QuorumOptions,
        server: Arc<dyn ServerControl>,
    ) -> Result<QuorumAgent, QuorumError> {
        opts.validate()?;
        let sb = SuperBlock::read_current(&*meta)?.sb;
        let (fsid, conf) = (sb.fsid(), sb.qconf);
        let slots = SlotSet::from_config(&conf);
        let local_addr =
            conf.slots
                .get(slot)
                .and_then(|a| a.to_v4())
                .ok_or(QuorumError::SlotNotConfigured {
                    slot,
                    configured: slots,
                })?;
        let start = startup_state(&*meta, fsid, &conf, slot)?;
        // Bind before writing: a slot whose address is taken on this host is most likely
        // used by another mount here, and we must not touch its block.
        let sock = UdpSocket::bind(local_addr).map_err(|source| QuorumError::Bind {
            addr: local_addr,
            source,
        })?;
        let own = OwnBlock::begin(meta, fsid, slot, rid, start.term)?;
        let now = Instant::now();
        let seed = getrandom::u64().unwrap_or(0) ^ rid;
        let el = Election::new(slot, slots, opts, start, now, seed);
        let mut addrs = [None; QUORUM_MAX_SLOTS];
        for (s, a) in conf.present() {
            if s != slot {
                addrs[s] = Some(a);
            }
        }
        let shared = Arc::new(Shared {
            snap: Mutex::new(Snapshot {
                term: el.term(),
                role: el.role(),
                leader: None,
                last_heartbeat: None,
                error: None,
            }),
            stop: AtomicBool::new(false),
        });
        let worker = Worker {
            el,
            sock,
            own,
            server,
            fsid,
            version: conf.version.get(),
            slots,
            addrs,
            shared: shared.clone(),
            opts,
        };
        let thread = std::thread::Builder::new()
            .name("scoutgw-quorum".into())
            .spawn(move || worker.run())
            .map_err(QuorumError::Thread)?;
        Ok(QuorumAgent {
            slot,
            rid,
            local_addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn rid(&self) -> u64 {
        self.rid
    }

    /// The UDP address the agent listens on (its slot's address).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    pub fn status(&self) -> QuorumStatus {
        let s = self.shared.snap.lock().unwrap_or_else(|p| p.into_inner());
        QuorumStatus {
            slot: self.slot,
            term: s.term,
            role: s.role,
            leader_slot: s.leader,
            heartbeat_age: s.last_heartbeat.map(|t| t.elapsed()),
            error: s.error.clone(),
        }
    }

    /// Leave the quorum: stop the server, resign if leading, record `STOP` once the server
    /// is down (waiting at most `server_stop_wait`) and `END`. Returns the error that ended
    /// the agent early, if one did.
    pub fn shutdown(mut self) -> Result<(), QuorumError> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> Result<(), QuorumError> {
        self.shared.stop.store(true, Ordering::Release);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| QuorumError::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for QuorumAgent {
    fn drop(&mut self) {
        let _ = self.stop_thread();
    }
}

struct Worker {
    el: Election,
    sock: UdpSocket,
    own: OwnBlock,
    server: Arc<dyn ServerControl>,
    fsid: u64,
    version: u64,
    slots: SlotSet,
    addrs: [Option<SocketAddrV4>; QUORUM_MAX_SLOTS],
    shared: Arc<Shared>,
    opts: QuorumOptions,
}

impl Worker {
    fn run(mut self) -> Result<(), QuorumError> {
        let res = self.elect().and_then(|()| self.finish());
        if let Err(e) = &res {
            self.fail(e);
        }
        self.publish();
        res
    }

    /// The election loop, until shutdown is asked for.
    fn elect(&mut self) -> Result<(), QuorumError> {
        let mut buf = [0u8; 64];
        // Elections start only after a receive timed out past the deadline, never because
        // one slow iteration found the deadline passed while heartbeats wait in the socket.
        let mut timed_out = true;
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let acts = self.el.server_status(self.server.status(), now);
            self.exec(acts)?;
            if timed_out || self.el.role() == Role::Leader {
                let acts = self.el.tick(now);
                self.exec(acts)?;
            }
            self.publish();
            let wait = self
                .el
                .next_wakeup()
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), POLL);
            self.sock
                .set_read_timeout(Some(wait))
                .map_err(QuorumError::Socket)?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    timed_out = false;
                    // Datagrams that are not ours, damaged or from unknown slots are dropped.
                    if let Ok(msg) =
                        QuorumMessage::decode(&buf[..n], self.fsid, self.version, self.slots)
                    {
                        let acts = self.el.received(msg, Instant::now());
                        self.exec(acts)?;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    timed_out = true;
                }
                // ICMP errors of earlier sends to members that are not up.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(QuorumError::Socket(e)),
            }
        }
        Ok(())
    }

    /// Orderly shutdown: stop the server and resign, record `STOP` when it is down, `END`.
    fn finish(&mut self) -> Result<(), QuorumError> {
        let acts = self.el.shutdown(Instant::now());
        self.exec(acts)?;
        let give_up = Instant::now() + self.opts.server_stop_wait;
        while self.el.server_term().is_some() {
            let acts = self.el.server_status(self.server.status(), Instant::now());
            self.exec(acts)?;
            if self.el.server_term().is_none() || Instant::now() >= give_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let end = self.el.end();
        self.exec(vec![end])
    }

    /// The agent cannot go on (its block cannot be written, or someone else uses the slot):
    /// stop the server and resign, without touching the block again.
    fn fail(&mut self, e: &QuorumError) {
        let acts = self.el.shutdown(Instant::now());
        for a in acts {
            match a {
                Action::Send { .. } => self.send(a),
                Action::StopServer => self.server.stop(),
                Action::Persist { .. } | Action::StartServer { .. } => {}
            }
        }
        let mut s = self.shared.snap.lock().unwrap_or_else(|p| p.into_inner());
        s.error.get_or_insert_with(|| e.to_string());
    }

    fn publish(&self) {
        let mut s = self.shared.snap.lock().unwrap_or_else(|p| p.into_inner());
        s.term = self.el.term();
        s.role = self.el.role();
        s.leader = self.el.leader();
        s.last_heartbeat = self.el.last_heartbeat();
    }

    fn send(&self, a: Action) {
        let Action::Send { to, msg } = a else {
            return;
        };
        let bytes = msg.encode(self.fsid, self.version);
        let targets = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(s, _)| to.is_none_or(|t| t == *s))
            .filter_map(|(_, a)| *a);
        for addr in targets {
            // Lost datagrams are part of the protocol.
            let _ = self.sock.send_to(&bytes, SocketAddr::V4(addr));
        }
    }

    fn exec(&mut self, acts: Vec<Action>) -> Result<(), QuorumError> {
        for a in acts {
            match a {
                Action::Send { .. } => self.send(a),
                Action::Persist { kind, term } => {
                    self.own.record(kind, term)?;
                }
                Action::StartServer { term } => self.server.start(term),
                Action::StopServer => self.server.stop(),
            }
        }
        Ok(())
    }
}
