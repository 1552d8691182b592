//! Client ↔ server messages.
//!
//! Every call a client makes to the server is one [`Request`] answered by one [`Response`].
//! The server identifies the caller by the rid it greeted with. Every handler copes with a
//! request it has already processed (a client resends unanswered requests after reconnecting
//! to a new server): `GetLogTrees` and `CommitLogTrees` recognise resends through the
//! `get_trans_seq` / `commit_trans_seq` pair of the stored `log_trees` record (seed 004),
//! `Greeting` and `Farewell` are idempotent by construction. Today the messages are delivered
//! in process; the TCP transport adds framing, not new semantics.

use crate::format::log_trees::LogTrees;
use crate::format::BtreeRoot;

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
    /// The roots readers merge: the last committed fs_root and logs_root.
    GetRoots,
    /// The stable sequence horizon: no open transaction can write an item at or below it.
    GetLastSeq,
    Statfs,
    /// The client is leaving: reclaim its state.
    Farewell,
}

/// The roots of the last committed super block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roots {
    pub fs_root: BtreeRoot,
    pub logs_root: BtreeRoot,
    pub srch_root: BtreeRoot,
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
    Greeting { server_term: u64, fsid: u64 },
    AllocInodes { first: u64, count: u64 },
    LogTrees(Box<LogTrees>),
    Committed,
    Roots(Roots),
    LastSeq(u64),
    Statfs(Statfs),
    FarewellDone,
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
}

/// How a client reaches the server. In process today; over TCP with resend later.
pub trait ServerLink: Send + Sync {
    fn call(&self, rid: u64, req: Request) -> Result<Response, ServerError>;
}
