//! Client ↔ server messages.
//!
//! Every call a client makes to the server is one [`Request`] answered by one [`Response`].
//! The server identifies the caller by the rid it greeted with. Every handler copes with a
//! request it has already processed (a client resends unanswered requests after reconnecting
//! to a new server): `GetLogTrees`, `CommitLogTrees` and `CommitLogTreesOpenNext` recognise
//! resends through the `get_trans_seq` / `commit_trans_seq` pair of the stored `log_trees`
//! record (seed 004),
//! `Greeting` and `Farewell` are idempotent by construction. Today the messages are delivered
//! in process; the TCP transport adds framing, not new semantics.

use crate::format::log_trees::LogTrees;
use crate::format::{BtreeRoot, Key};
use crate::lock::LockMode;

/// A call from a client to the server.
#[derive(Debug, Clone)]
pub enum Request {
    /// First message of a connection: who the client is.
    Greeting {
        fsid: u64,
        format_version: u64,
        rid: u64,
        /// The last server term the client knew (0 on first mount).
        server_term: u64,
    },
    /// Hand out `count` unused inode numbers.
    AllocInodes {
        count: u64,
    },
    /// Open the client's next transaction: its log_trees record with refilled allocators
    /// and a fresh `get_trans_seq`.
    GetLogTrees,
    /// The client's transaction is written: record its new log_trees.
    CommitLogTrees(Box<LogTrees>),
    /// `CommitLogTrees`, then open the client's next transaction as `GetLogTrees` would, in
    /// the same server commit; answered by [`Response::CommittedNext`]. A resend after the
    /// server applied it (lost reply, new server) gets the same next transaction back.
    /// `unflushed` is 0 when the client flushed its blocks; otherwise it is the client's
    /// `MetaDev::flush_domain`, and a server sharing that domain makes them durable with its
    /// own flush before the super block; any other server answers
    /// [`ServerError::FlushFirst`] before changing anything.
    CommitLogTreesOpenNext {
        lt: Box<LogTrees>,
        unflushed: u64,
    },
    /// The roots readers merge: the last committed fs_root and logs_root.
    GetRoots,
    /// The stable sequence horizon: no open transaction can write an item at or below it.
    GetLastSeq,
    Statfs,
    /// The client is leaving: reclaim its state.
    Farewell,
    /// Lock request (digest §5.3): "I hold `old_mode` of the lock starting at `key`, I want
    /// `new_mode`". Answered by [`Response::Lock`] (the grant, with the server-assigned
    /// `write_seq`) once every conflicting grant on other clients has been invalidated —
    /// possibly much later, so the transport must not block other requests behind it.
    /// Requesting `Null` drops the lock.
    Lock(NetLock),
}

/// One lock message (digest §5.3). Requests, grants, invalidations and their responses all
/// carry one; `old_mode` and `new_mode` always both say what the sender believes, so either
/// side can order grants and invalidations of one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLock {
    /// The lock's start key ([`crate::lock_names::lock_start`]).
    pub key: Key,
    /// Grants of Write/WriteOnly: the server's core seq at the grant (items written under the
    /// lock get at least this seq). Recovery: the client's write_seq of the lock.
    pub write_seq: u64,
    pub old_mode: LockMode,
    pub new_mode: LockMode,
}

/// A call from the server to a client (the server's side of the lock protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCall {
    /// Reduce the lock at `key` from `old_mode` to `new_mode`: write dirty items, drop cached
    /// items, then answer [`ClientReply::Invalidated`]. Duplicates are expected after failover.
    Invalidate(NetLock),
    /// A new server rebuilds its lock table: send the granted locks with keys `>= start`
    /// (at most [`LOCK_RECOVER_BATCH`]); an empty batch ends the client's lock recovery.
    /// A lock being invalidated is reported with its **old** mode (seed 000).
    LockRecover { start: Key },
}

/// Locks per `LockRecover` answer.
pub const LOCK_RECOVER_BATCH: usize = 1024;

/// A client's answer to a [`ServerCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientReply {
    /// The invalidation is done; `new_mode` is what the client holds now.
    Invalidated(NetLock),
    /// Locks for `LockRecover`, in key order; `new_mode` = mode held (old mode if invalidating).
    Recovered(Vec<NetLock>),
}

/// The roots of the last committed super block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roots {
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub srch_root: BtreeRoot,
    /// A number the serving server drew when it started, and the log trees it has merged
    /// since: a client that sees trees leave the forest can tell whether it saw every one
    /// of them before it was merged (its item cache depends on it).
    pub server_incarnation: u64,
    pub trees_merged: u64,
}

/// Free and total space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Statfs {
    pub fsid: u64,
    pub committed_seq: u64,
    pub total_meta_blocks: u64,
    pub free_meta_blocks: u64,
    pub total_data_blocks: u64,
    pub free_data_blocks: u64,
    pub inode_count: u64,
}

/// The server's answer to one request.
#[derive(Debug, Clone)]
pub enum Response {
    Greeting {
        server_term: u64,
        fsid: u64,
    },
    AllocInodes {
        first: u64,
        count: u64,
    },
    LogTrees(Box<LogTrees>),
    Committed,
    /// The answer to `CommitLogTreesOpenNext`: the transaction is committed, `next` is the
    /// client's next open transaction (`None` when the server could not open one now: the
    /// client opens it with `GetLogTrees` at its next change), and `roots` are those of the
    /// server commit that made both durable (what `GetRoots` would answer).
    CommittedNext {
        next: Option<Box<LogTrees>>,
        roots: Roots,
    },
    Roots(Roots),
    LastSeq(u64),
    Statfs(Statfs),
    FarewellDone,
    /// A lock grant: `old_mode` is what the server believed the client held.
    Lock(NetLock),
}

/// Why the server refused or failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("client belongs to filesystem {client:016x}, server serves {server:016x}")]
    WrongFsid { client: u64, server: u64 },
    #[error("client speaks format version {client}, the filesystem is version {server}")]
    WrongFormat { client: u64, server: u64 },
    #[error("client {rid:016x} did not greet the server")]
    NotGreeted { rid: u64 },
    #[error("commit of transaction {sent} does not match the open transaction {stored}")]
    WrongTransaction { sent: u64, stored: u64 },
    #[error("request not valid now: {0}")]
    Invalid(String),
    #[error("out of space: {0}")]
    NoSpace(String),
    #[error("server I/O failed, the request was not committed: {0}")]
    Io(String),
    #[error("metadata corruption: {0}")]
    Corrupt(String),
    /// The server is not (or no longer) reachable; the transport resends once it finds the
    /// next leader, so callers only see this when shutting down or after a timeout.
    #[error("no server reachable: {0}")]
    Unreachable(String),
    /// This client was fenced or reclaimed by the server: it must stop using the filesystem.
    #[error("client {rid:016x} was fenced")]
    Fenced { rid: u64 },
    /// The client left its blocks unflushed for a server that does not share its device's
    /// flushes (another process or host, after a failover): flush them and send again.
    #[error("the client's blocks are not durable on this server's device: flush and resend")]
    FlushFirst,
}

/// How a client reaches the server: in process ([`crate::client::LocalServer`]) or over TCP
/// (`net::NetClient`, which resends unanswered requests to whichever server leads next).
pub trait ServerLink: Send + Sync {
    fn call(&self, rid: u64, req: Request) -> Result<Response, ServerError>;
}
