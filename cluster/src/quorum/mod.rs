//! Quorum: electing the one member that runs the server, and finding it (digest §6).
//!
//! Members are the mounts configured with a quorum slot (the super block's
//! [`QuorumConfig`]); each slot's address is both its UDP election endpoint and the TCP
//! address its server listens on when it leads.
//!
//! * [`message`]: the 32-byte UDP message and its checks.
//! * [`election`]: [`Election`], the pure state machine (raft leader election only): events
//!   in, [`Action`]s out, explicit time.
//! * [`block`]: quorum block I/O on the metadata device; a member writes only its own block
//!   ([`OwnBlock`], seed 003).
//! * [`agent`]: [`QuorumAgent`], the shell: a UDP socket, the quorum block and a thread
//!   ("scoutgw-quorum") driving an [`Election`]; the node's server is started and stopped
//!   through [`ServerControl`] without waiting (seed 001, 2022-03-31).
//! * [`find_leader`] (for clients: where is the server?) and [`fence_candidates`] (for a new
//!   server: which previous leaders must be fenced before it acts?).

pub mod agent;
pub mod block;
pub mod election;
pub mod message;

use std::fmt;
use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

use scoutgw_blockdev::{BlockDevice, BlockError};

use crate::format::layout::QUORUM_MAX_SLOTS;
use crate::format::quorum::{QuorumConfig, QuorumEventKind};
use crate::format::{FormatError, QuorumBlock, SuperBlock};

pub use agent::{QuorumAgent, QuorumStatus};
pub use block::{read_quorum_block, OwnBlock};
pub use election::{votes_needed, Action, Election, ElectionStart};
pub use message::{MessageError, MessageType, QuorumMessage, MESSAGE_BYTES};

/// Timers of the election (digest §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumOptions {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// How long followers wait without a heartbeat before they stand for election.
    pub heartbeat_timeout: Duration,
    /// Least election timeout.
    pub election_min: Duration,
    /// Random extra election timeout, in `[0, election_var)`.
    pub election_var: Duration,
    /// At shutdown, how long the agent waits for the server to stop before it gives up on
    /// recording `STOP` (then the next leader fences this node).
    pub server_stop_wait: Duration,
}

impl Default for QuorumOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_secs(3),
            election_min: Duration::from_millis(250),
            election_var: Duration::from_millis(100),
            server_stop_wait: Duration::from_secs(30),
        }
    }
}

impl QuorumOptions {
    /// The heartbeat interval must be positive and shorter than both the heartbeat timeout
    /// and the shortest election timeout.
    pub fn validate(&self) -> Result<(), QuorumError> {
        let bad = |why: &str| Err(QuorumError::Options(why.to_string()));
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval must be positive");
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return bad("heartbeat_timeout must be longer than heartbeat_interval");
        }
        if self.election_min <= self.heartbeat_interval {
            return bad("election_min must be longer than heartbeat_interval");
        }
        Ok(())
    }
}

/// A member's role in the current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What the node's server is doing, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStatus {
    /// Not running (never started, or stopped).
    Down,
    /// Started for leadership term `term`: fencing previous leaders, recovering.
    Starting { term: u64 },
    /// Serving for term `term`: every previous leader is fenced.
    Up { term: u64 },
    /// Starting or running for `term` failed; it is not running.
    Failed { term: u64 },
}

/// How the quorum agent starts and stops the node's server.
///
/// Both calls return at once: the node runs the server in the background, so the quorum
/// thread keeps sending heartbeats while the server fences and starts (seed 001,
/// 2022-03-31). After `start(term)` returns, `status` reports `Starting { term }` (or
/// later states of that term); after `stop` it reports `Down` once the server has stopped.
/// A server that cannot start or dies reports `Failed { term }` until the next `start`.
pub trait ServerControl: Send + Sync {
    fn start(&self, term: u64);
    fn stop(&self);
    fn status(&self) -> ServerStatus;
}

/// A set of quorum slots (bit `n` = slot `n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SlotSet(u16);

impl SlotSet {
    pub const EMPTY: SlotSet = SlotSet(0);

    /// The configured slots of `conf`.
    pub fn from_config(conf: &QuorumConfig) -> Self {
        Self::from_slots(conf.present().map(|(s, _)| s))
    }

    /// # Panics
    /// If a slot is not below [`QUORUM_MAX_SLOTS`].
    pub fn from_slots(slots: impl IntoIterator<Item = usize>) -> Self {
        let mut s = Self::EMPTY;
        for n in slots {
            s.insert(n);
        }
        s
    }

    pub fn insert(&mut self, slot: usize) {
        assert!(slot < QUORUM_MAX_SLOTS, "quorum slot {slot} out of range");
        self.0 |= 1 << slot;
    }

    pub fn contains(&self, slot: usize) -> bool {
        slot < QUORUM_MAX_SLOTS && self.0 & (1 << slot) != 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..QUORUM_MAX_SLOTS).filter(|&s| self.contains(s))
    }
}

impl fmt::Display for SlotSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<String> = self.iter().map(|s| s.to_string()).collect();
        write!(f, "{{{}}}", v.join(","))
    }
}

/// Why quorum could not start, go on, or answer.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error(transparent)]
    Format(#[from] FormatError),

    #[error("quorum block of slot {slot}: {source}")]
    Block {
        slot: usize,
        #[source]
        source: BlockError,
    },

    #[error("quorum slot {slot} is not in the quorum config (configured slots: {configured})")]
    SlotNotConfigured { slot: usize, configured: SlotSet },

    #[error(
        "quorum slot {slot} is used by another mount: its BEGIN event holds rid {found:016x}, \
         ours is {ours:016x}"
    )]
    SlotTaken { slot: usize, ours: u64, found: u64 },

    #[error("cannot bind the quorum UDP socket to {addr}: {source}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: io::Error,
    },

    #[error("quorum UDP socket: {0}")]
    Socket(#[source] io::Error),

    #[error("cannot start the quorum thread: {0}")]
    Thread(#[source] io::Error),

    #[error("invalid quorum options: {0}")]
    Options(String),

    #[error("the quorum thread panicked")]
    Panicked,
}

/// The elected leader as the quorum blocks show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub slot: usize,
    /// Where its server listens (TCP) — the slot's address.
    pub addr: SocketAddrV4,
    pub term: u64,
    pub rid: u64,
}

/// A previous leader that a starting server must fence (digest §6.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceCandidate {
    pub slot: usize,
    pub rid: u64,
    pub term: u64,
    pub addr: SocketAddrV4,
}

/// The super block's fsid and quorum config.
fn read_config(meta: &dyn BlockDevice) -> Result<(u64, QuorumConfig), QuorumError> {
    let sb = SuperBlock::read_current(meta)?.sb;
    Ok((sb.fsid(), sb.qconf))
}

/// Where the server is (digest §6.5): among the configured slots whose block shows a live
/// elected leader (`ELECT.term > STOP.term`), the one with the greatest elect term. `None`
/// while there is none (retry later). A block that fails verification is skipped (its owner
/// may be rewriting it; the next try reads it again); device errors are returned.
pub fn find_leader(meta: &dyn BlockDevice) -> Result<Option<Leader>, QuorumError> {
    let (fsid, conf) = read_config(meta)?;
    let mut best: Option<Leader> = None;
    for (slot, addr) in conf.present() {
        let q = match read_quorum_block(meta, fsid, slot) {
            Ok(q) => q,
            Err(e) if e.is_corruption() => continue,
            Err(source) => return Err(QuorumError::Block { slot, source }),
        };
        if !block::shows_live_leader(&q) {
            continue;
        }
        let elect = q.event(QuorumEventKind::Elect);
        if best.is_none_or(|b| elect.term.get() > b.term) {
            best = Some(Leader {
                slot,
                addr,
                term: elect.term.get(),
                rid: elect.rid.get(),
            });
        }
    }
    Ok(best)
}

/// The previous leaders a server starting for term `our_term` as mount `our_rid` must fence
/// before it acts (digest §6.6). Every configured slot's block must be readable: a server
/// that cannot tell who else may be running must not start.
///
/// From each block: the elected leader if its server has not stopped (`ELECT.term >
/// STOP.term`), and an earlier mount of the slot that fenced but never stopped (`STOP.term <
/// FENCE.term < ELECT.term`). Left out: term 0, terms below the greatest `FENCE` term of any
/// block (a later leader fenced them already), terms above ours, and our own rid.
pub fn fence_candidates(
    meta: &dyn BlockDevice,
    our_term: u64,
    our_rid: u64,
) -> Result<Vec<FenceCandidate>, QuorumError> {
    let (fsid, conf) = read_config(meta)?;
    let mut blocks: Vec<(usize, SocketAddrV4, QuorumBlock)> = Vec::new();
    for (slot, addr) in conf.present() {
        let q = read_quorum_block(meta, fsid, slot)
            .map_err(|source| QuorumError::Block { slot, source })?;
        blocks.push((slot, addr, q));
    }
    Ok(candidates_of(&blocks, our_term, our_rid))
}

fn candidates_of(
    blocks: &[(usize, SocketAddrV4, QuorumBlock)],
    our_term: u64,
    our_rid: u64,
) -> Vec<FenceCandidate> {
    let fenced = blocks
        .iter()
        .map(|(_, _, q)| q.event(QuorumEventKind::Fence).term.get())
        .max()
        .unwrap_or(0);
    let mut out = Vec::new();
    for &(slot, addr, ref q) in blocks {
        let elect = q.event(QuorumEventKind::Elect);
        let fence = q.event(QuorumEventKind::Fence);
        let stop = q.event(QuorumEventKind::Stop).term.get();
        let mut found = Vec::new();
        if elect.term.get() > stop {
            found.push(elect);
        }
        if stop < fence.term.get() && fence.term.get() < elect.term.get() {
            found.push(fence);
        }
        for e in found {
            let (term, rid) = (e.term.get(), e.rid.get());
            if term == 0 || term < fenced || term > our_term || rid == our_rid {
                continue;
            }
            out.push(FenceCandidate {
                slot,
                rid,
                term,
                addr,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
