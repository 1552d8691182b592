//! One member of a cluster at run time, assembled from the protocol parts:
//!
//! * the quorum agent ([`crate::quorum`]) when the node owns a quorum slot: it votes,
//!   heartbeats and, when elected, starts the server;
//! * the server while the node leads ([`leader`]): the metadata engine
//!   ([`crate::server::Server`]), the lock server, client recovery and fencing, behind the
//!   TCP listener ([`crate::net::NetServer`]) on the slot's address;
//! * the mount ([`mount`]): the TCP link to whichever node leads ([`crate::net::NetClient`],
//!   resending across failovers), the lock client ([`crate::lock_client::NetLocks`]) and the
//!   filesystem ([`Fs`]) on top.
//!
//! Every node mounts, leader or not: the leader's own filesystem reaches its server over
//! TCP like everyone else's, so a failover changes nothing for it but the address.
//!
//! This module wires parts together and owns no protocol state of its own; it must not
//! depend on NFS, HTTP or configuration files.

mod leader;
mod mount;
mod send_order;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use scoutgw_blockdev::{BlockDevice, MetaDev};

use crate::fence::Fencer;
use crate::format::super_block::SuperBlock;
use crate::fs::{Fs, FsError, FsOptions};
use crate::lock::{LockCounts, LockMode};
use crate::lock_client::NetLocks;
use crate::msg::ServerError;
use crate::net::{NetClient, NetClientOptions};
use crate::quorum::{self, Leader, QuorumAgent, QuorumError, QuorumOptions, QuorumStatus};
use crate::server::ServerConfig;

pub use leader::{LockServerReport, ServerRunStats};
pub use quorum::ServerStatus;

/// How a node runs.
#[derive(Clone)]
pub struct NodeOptions {
    /// This mount's rid (kept across restarts of the node).
    pub rid: u64,
    /// The quorum slot this node owns (`None`: a client that never leads).
    pub quorum_slot: Option<usize>,
    pub quorum: QuorumOptions,
    /// The server's tunables (`term` is set at election).
    pub server: ServerConfig,
    pub fs: FsOptions,
    /// Block cache of the mount's metadata device handle.
    pub cache_bytes: u64,
    /// Fences dead nodes before the server touches their state.
    pub fencer: Arc<dyn Fencer>,
    /// How long a new server waits for the clients of the previous one to reconnect and
    /// recover their locks before fencing them.
    pub recovery_timeout: Duration,
    /// How long a client that lost its connection may take to come back before it is fenced.
    pub reconnect_timeout: Duration,
    /// A connection silent this long is dead (pings go out at a quarter of it).
    pub idle_timeout: Duration,
    /// How long fencing previous leaders may take before the new server gives up.
    pub fence_timeout: Duration,
    /// How often the leader's merger looks for finalized log trees.
    pub merge_interval: Duration,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("rid", &format_args!("{:016x}", self.rid))
            .field("quorum_slot", &self.quorum_slot)
            .finish_non_exhaustive()
    }
}

/// Why a node could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("quorum: {0}")]
    Quorum(#[from] QuorumError),
    #[error("server: {0}")]
    Server(#[from] ServerError),
    #[error("filesystem: {0}")]
    Fs(#[from] FsError),
    #[error("reading the super block: {0}")]
    Format(#[from] crate::format::FormatError),
    #[error("{0}")]
    Config(String),
}

/// What a node knows about the cluster right now.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub rid: u64,
    pub fsid: u64,
    pub quorum_slot: Option<usize>,
    /// This node's election state (quorum members only).
    pub quorum: Option<QuorumStatus>,
    /// The leader recorded in the quorum blocks.
    pub leader: Option<Leader>,
    /// This node's server.
    pub server: ServerStatus,
    /// Counters of this node's server while it runs.
    pub server_stats: Option<ServerRunStats>,
    /// The term of the server this node's mount talks to.
    pub server_term: u64,
    /// The mount has a live connection to the server.
    pub connected: bool,
}

/// A running cluster member: its filesystem, its quorum agent and (while it leads) its
/// server.
pub struct ClusterNode {
    fs: Option<Arc<Fs>>,
    locks: Arc<NetLocks>,
    client: Arc<NetClient>,
    quorum: Option<QuorumAgent>,
    leader: Arc<leader::LeaderControl>,
    meta: Arc<dyn BlockDevice>,
    rid: u64,
    fsid: u64,
    slot: Option<usize>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("rid", &format_args!("{:016x}", self.rid))
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// Join the cluster on `meta`/`data`: start the quorum agent (members), connect to the
    /// leader (waiting for one to be elected) and mount.
    pub fn start(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        opts: NodeOptions,
    ) -> Result<Self, NodeError> {
        let sb = SuperBlock::read_current(&*meta)?.sb;
        let fsid = sb.fsid();
        let slot_addr = match opts.quorum_slot {
            None => None,
            Some(slot) => Some(
                sb.qconf
                    .slots
                    .get(slot)
                    .and_then(|a| a.to_v4())
                    .map(SocketAddr::V4)
                    .ok_or_else(|| {
                        NodeError::Config(format!(
                            "quorum slot {slot} is not configured in this filesystem (mkfs -Q)"
                        ))
                    })?,
            ),
        };
        let leader = Arc::new(leader::LeaderControl::new(
            meta.clone(),
            slot_addr,
            opts.clone(),
        ));
        let quorum = match opts.quorum_slot {
            Some(slot) => Some(QuorumAgent::start(
                meta.clone(),
                slot,
                opts.rid,
                opts.quorum,
                leader.clone(),
            )?),
            None => None,
        };
        let link = Arc::new(mount::MountLink::default());
        let find_server = {
            let meta = meta.clone();
            Box::new(move || {
                quorum::find_leader(&*meta)
                    .ok()
                    .flatten()
                    .map(|l| SocketAddr::V4(l.addr))
            })
        };
        let client = NetClient::start(
            NetClientOptions {
                fsid,
                format_version: sb.fmt_vers.get(),
                rid: opts.rid,
                connect_timeout: Duration::from_secs(1),
                idle_timeout: opts.idle_timeout,
                give_up_after: None,
            },
            find_server,
            link.clone(),
        )?;
        let locks = NetLocks::new(link.clone());
        link.attach(&client, &locks);
        let md = Arc::new(MetaDev::new(meta.clone(), fsid, opts.cache_bytes));
        let fs = match Fs::mount(
            md,
            data,
            client.clone(),
            locks.clone(),
            opts.rid,
            opts.fs.clone(),
        ) {
            Ok(fs) => Arc::new(fs),
            Err(e) => {
                locks.shutdown();
                client.shutdown();
                if let Some(Err(qe)) = quorum.map(QuorumAgent::shutdown) {
                    tracing::warn!("stopping the quorum agent: {qe}");
                }
                return Err(e.into());
            }
        };
        let weak_fs: std::sync::Weak<Fs> = Arc::downgrade(&fs);
        let cache: std::sync::Weak<dyn crate::lock_client::LockCache> = weak_fs;
        locks.set_cache(cache);
        Ok(Self {
            fs: Some(fs),
            locks,
            client,
            quorum,
            leader,
            meta,
            rid: opts.rid,
            fsid,
            slot: opts.quorum_slot,
        })
    }

    /// The mounted filesystem.
    pub fn fs(&self) -> &Arc<Fs> {
        self.fs.as_ref().expect("mounted until shutdown")
    }

    pub fn rid(&self) -> u64 {
        self.rid
    }

    pub fn fsid(&self) -> u64 {
        self.fsid
    }

    /// The server fenced this mount (or the link stopped for good): it can never write
    /// again, and the node should exit so it can be restarted as a new mount.
    pub fn fenced(&self) -> Option<ServerError> {
        self.client.stopped()
    }

    /// Lock requests, grants and invalidations per mode on this node.
    pub fn lock_counts(&self) -> [(LockMode, LockCounts); 4] {
        self.locks.counts()
    }

    /// The lock server's objects and its `n` busiest locks, while this node leads.
    pub fn lock_server_report(&self, n: usize) -> Option<LockServerReport> {
        self.leader.lock_report(n)
    }

    /// Block cache statistics of this node's server, while it runs.
    pub fn server_cache_stats(&self) -> Option<scoutgw_blockdev::CacheStats> {
        self.leader.cache_stats()
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            rid: self.rid,
            fsid: self.fsid,
            quorum_slot: self.slot,
            quorum: self.quorum.as_ref().map(|q| q.status()),
            leader: quorum::find_leader(&*self.meta).ok().flatten(),
            server: quorum::ServerControl::status(&*self.leader),
            server_stats: self.leader.stats(),
            server_term: self.client.server_term(),
            connected: self.client.connected(),
        }
    }

    /// Leave the cluster: commit, say farewell (the server reclaims this mount's state),
    /// then stop the lock client, the link and the quorum agent (which stops a server this
    /// node runs, letting another member take over).
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        let fs = self.fs.take().expect("mounted until shutdown");
        // The final commit and the farewell need a server; when none can be elected (the
        // whole cluster is stopping) give up after FAREWELL_TIMEOUT: everything committed
        // stays, and the next server recovers or fences this mount.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("scoutgw-unmount".into())
            .spawn(move || {
                // Commit while invalidations can still reach the filesystem.
                let synced = fs.sync();
                let r = match Arc::try_unwrap(fs) {
                    Ok(fs) => fs.unmount().map_err(NodeError::from),
                    Err(fs) => {
                        tracing::warn!(
                            "requests still hold the filesystem; leaving without farewell"
                        );
                        drop(fs);
                        synced.map_err(NodeError::from)
                    }
                };
                let _ = tx.send(r);
            })
            .expect("spawn unmount thread");
        let result = match rx.recv_timeout(FAREWELL_TIMEOUT) {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "no server answered the farewell within {FAREWELL_TIMEOUT:?}; leaving \
                     anyway. Either no server can be elected (the rest of the quorum is \
                     down), or the leader held this quorum member's farewell because \
                     answering it would leave too few members to elect a server for the \
                     mounts still there: stop the remaining members together. Committed \
                     changes stay; the next server recovers or fences this mount."
                );
                self.client.shutdown();
                rx.recv()
                    .unwrap_or_else(|_| Err(NodeError::Config("unmount thread died".into())))
            }
        };
        // The answer to a farewell the server carried out can be lost when that server
        // stops right after (digest 7.5): the mount's record gone from the committed super
        // block says it left.
        let result = match result {
            Err(e) if !mounted_on_device(&self.meta, self.rid) => {
                tracing::info!("the farewell was carried out (its answer was lost: {e})");
                Ok(())
            }
            other => other,
        };
        self.locks.shutdown();
        self.client.shutdown();
        if let Some(Err(e)) = self.quorum.take().map(QuorumAgent::shutdown) {
            tracing::warn!("stopping the quorum agent: {e}");
        }
        result
    }
}

/// Does the last committed super block still list `rid` in `mounted_clients`? (True when
/// it cannot be read: then nothing says the mount left.)
fn mounted_on_device(meta: &Arc<dyn BlockDevice>, rid: u64) -> bool {
    let Ok(cur) = SuperBlock::read_current(&**meta) else {
        return true;
    };
    let md = MetaDev::new(meta.clone(), cur.sb.fsid(), 0);
    let key = crate::format::log_trees::mounted_client_key(rid);
    !matches!(
        crate::btree::lookup(&md, None, &cur.sb.mounted_clients, &key),
        Ok(None)
    )
}

/// How long leaving the cluster waits for a server to answer the final commit and farewell.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(10);
