//! The server: the one member (the elected leader) that owns the super block, the shared
//! btrees (`logs_root`, `fs_root`, `mounted_clients`) and the core allocators.
//!
//! Every request handler changes the server's open transaction and commits it before it
//! answers, so an answer always describes durable state. A server commit writes every dirty
//! block and the server's alloc lists, flushes, then writes the super block into the slot
//! that does not hold the current one and flushes again: a crash at any point leaves the old
//! or the new super, never a mix.
//!
//! Metadata blocks freed by a commit go to the server's `freed` list and become reusable only
//! once that commit is durable. Clients' freed lists come back at their next `GetLogTrees`,
//! after the commit that freed them.
//!
//! Log merge: finalized log trees are merged into `fs_root` by [`Server::merge_finalized`]
//! (items keep their seq; the greatest seq wins; deletions remove), then their blocks are
//! freed. Finalization is coordinated so that every item of a merged tree is older than every
//! item of the trees still open: trees without an open transaction are finalized at once,
//! the others at their next commit, and the merge waits for all of them.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use scoutgw_blockdev::{BlockDevice, MetaDev};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::alloc::extent;
use crate::alloc::{ListAlloc, MetaList};
use crate::btree::{self, BtreeError, BtreeWriter, Dirty, Item, LeafCursor, PutCost};
use crate::format::key::zone;
use crate::format::log_trees::{
    log_trees_key, mounted_client_key, LogTrees, MountedClient, LOG_TREES_FINALIZED,
};
use crate::format::super_block::{CurrentSuper, DeviceRole};
use crate::format::{
    AllocListHead, AllocRoot, BtreeRoot, FormatError, Key, SuperBlock, KIND_SUPER,
};
use crate::msg::{Request, Response, Roots, ServerError, Statfs};

/// Allocation policy of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Block cache of the server's device handle.
    pub cache_bytes: u64,
    /// A client's metadata avail list is refilled to this many blocks...
    pub client_meta_fill: u64,
    /// ...when it holds fewer than this many.
    pub client_meta_low: u64,
    /// A client's data avail is refilled to this many 4 KiB blocks...
    pub client_data_fill: u64,
    /// ...when it holds fewer than this many.
    pub client_data_low: u64,
    /// The server keeps at least this many blocks in its own avail list...
    pub server_meta_low: u64,
    /// ...and returns blocks beyond this many to the extent allocator.
    pub server_meta_high: u64,
    /// A log tree is finalized (and later merged) once its btree is taller than this.
    pub finalize_height: u8,
    /// The quorum term this server was elected in (0 for an offline or in-process server);
    /// greeting responses carry it so clients notice a new server.
    pub term: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            client_meta_fill: 4096,
            client_meta_low: 2048,
            client_data_fill: 1 << 20,
            client_data_low: 1 << 18,
            server_meta_low: 1024,
            server_meta_high: 8192,
            finalize_height: 2,
            term: 0,
        }
    }
}

/// A client's metadata avail list is filled to at least this many blocks (when the server
/// has them to spare), whatever share of the free space that is: enough for the largest
/// operation and the commit of its transaction (see `Fs::reserve_meta`).
const CLIENT_META_MIN_FILL: u64 = 256;
/// ...and refilled whenever it holds fewer than this many.
const CLIENT_META_MIN_LOW: u64 = 192;
/// Metadata avail blocks a mount keeps between transactions however short the server is:
/// the server takes back only those beyond this from mounts with no open transaction (an
/// idle node must not hold the space another needs to delete files).
const CLIENT_META_KEEP: u64 = 32;
/// A client's metadata avail list is filled to at least this many blocks whenever the
/// server has them beyond its reserve and merge room: enough to remove files (see
/// `Fs::reserve_meta`), even while the space is held for merges of finalized trees.
const CLIENT_META_REMOVE_FILL: u64 = 64;
/// Blocks beyond its reserve that the server keeps from client refills for merges, which
/// must go on when the device is full: they are what gives back the space of deletions.
const MERGE_ROOM: u64 = 32;

fn io(e: impl std::fmt::Display) -> ServerError {
    ServerError::Io(e.to_string())
}

impl From<BtreeError> for ServerError {
    fn from(e: BtreeError) -> Self {
        match e {
            // Every server operation first makes sure its own avail list holds what the
            // operation can allocate (see `Server::ensure_server_avail`): running dry in the
            // middle of one leaves half a change in memory, which must never be committed.
            BtreeError::NoSpace => ServerError::Io(
                "the server's metadata blocks ran out in the middle of a change".into(),
            ),
            BtreeError::Format(f) => ServerError::Corrupt(f.to_string()),
            BtreeError::Block(b) if b.is_corruption() || b.is_stale() => {
                ServerError::Corrupt(b.to_string())
            }
            other => ServerError::Io(other.to_string()),
        }
    }
}

impl From<FormatError> for ServerError {
    fn from(e: FormatError) -> Self {
        ServerError::Corrupt(e.to_string())
    }
}

/// The server of one filesystem.
pub struct Server {
    md: Arc<MetaDev>,
    cfg: ServerConfig,
    /// The super block being changed by the open server transaction.
    sb: SuperBlock,
    /// The last super block written, and its slot.
    stable: CurrentSuper,
    /// The next core sequence number to hand out.
    next_seq: u64,
    dirty: Dirty,
    alloc: ListAlloc,
    greeted: HashSet<u64>,
    /// Clients whose tree is to be finalized at their next commit.
    finalize_pending: BTreeSet<u64>,
    /// A commit failed: the in-memory state no longer matches the device.
    failed: bool,
    /// Log trees merged since the server started.
    trees_merged: u64,
    /// Drawn at start, reported with the roots (see [`Roots`]).
    incarnation: u64,
    /// The merge under way between [`Server::merge_step`] calls.
    merge: Option<MergeState>,
}

/// A merge under way: its input trees (record key and item root) and the next key to
/// merge (`None`: all merged).
#[derive(Debug)]
struct MergeState {
    inputs: Vec<(Key, BtreeRoot)>,
    next: Option<Key>,
}

/// The log trees with items that a merge does not take in, as committed when a slice
/// starts (the server's lock keeps them so for the slice), with their bloom blocks: what
/// decides whether a merged deletion must stay in fs_root as a tombstone.
struct Unmerged {
    trees: Vec<(BtreeRoot, Option<Arc<scoutgw_blockdev::CachedBlock>>)>,
}

impl Unmerged {
    fn new(
        md: &MetaDev,
        lts: &[LogTrees],
        inputs: &[(Key, BtreeRoot)],
    ) -> Result<Self, ServerError> {
        let mut trees = Vec::new();
        for lt in lts {
            if lt.item_root.is_empty() || inputs.iter().any(|(k, _)| *k == lt.key()) {
                continue;
            }
            let bloom = if lt.bloom_ref.is_null() {
                None
            } else {
                Some(
                    md.read_ref(crate::format::KIND_BLOOM, lt.bloom_ref)
                        .map_err(|e| ServerError::Corrupt(e.to_string()))?,
                )
            };
            trees.push((lt.item_root, bloom));
        }
        Ok(Self { trees })
    }

    /// Whether an unmerged tree holds a version of `key` no newer than `seq`: a deletion
    /// of `seq` merged into fs_root must then stay there as a tombstone, or that older
    /// version would be read again. Versions written later are newer (writing `key` takes
    /// its lock, whose grant carries a greater write_seq), so committed trees are all
    /// that need looking at. When the tree holding the older version is merged, the key
    /// is merged again and the tombstone looked at again.
    fn hold_older(&self, md: &MetaDev, key: &Key, seq: u64) -> Result<bool, ServerError> {
        let group = crate::lock_names::lock_start(key);
        for (root, bloom) in &self.trees {
            if let Some(block) = bloom {
                if !crate::format::bloom::block_may_hold(block.data.as_slice(), &group) {
                    continue;
                }
            }
            if btree::lookup(md, None, root, key)?.is_some_and(|it| it.seq <= seq) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What one [`Server::merge_step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStep {
    /// No finalized tree to merge.
    Idle,
    /// Merged a slice of keys; more remain.
    Partial,
    /// Finished a merge of this many trees (and freed them).
    Merged(usize),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("fsid", &format_args!("{:016x}", self.sb.fsid()))
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Server {
    /// Start serving the filesystem on `meta`: read the super block, the server's allocators
    /// and every log tree, and set the core seq above every seq already persistent.
    pub fn open(meta: Arc<dyn BlockDevice>, cfg: ServerConfig) -> Result<Self, ServerError> {
        let current = SuperBlock::read_current(&*meta)?;
        current.sb.check_device_size(&*meta, DeviceRole::Meta)?;
        let md = Arc::new(MetaDev::new(meta, current.sb.fsid(), cfg.cache_bytes));
        let sb = current.sb;
        let mut avail = MetaList::load(&md, &sb.server_meta_avail[0])?;
        let mut freed = MetaList::load(&md, &sb.server_meta_freed[0])?;
        // The freed list of the last durable commit is reusable now.
        for b in freed.take_entries() {
            avail.push(b);
        }
        let mut max_seq = sb.seq.get();
        for lt in all_log_trees(&md, None, &sb.logs_root)? {
            max_seq = max_seq
                .max(lt.max_item_seq.get())
                .max(lt.get_trans_seq.get())
                .max(lt.commit_trans_seq.get());
        }
        let mut server = Self {
            md,
            cfg,
            sb,
            stable: current,
            next_seq: max_seq + 1,
            dirty: Dirty::new(0),
            alloc: ListAlloc::new(avail, freed),
            greeted: HashSet::new(),
            finalize_pending: BTreeSet::new(),
            failed: false,
            trees_merged: 0,
            incarnation: incarnation(),
            merge: None,
        };
        let seq = server.take_seq();
        server.dirty = Dirty::new(seq);
        Ok(server)
    }

    /// Log trees merged into fs_root since the server started.
    pub fn trees_merged(&self) -> u64 {
        self.trees_merged
    }

    pub fn meta_dev(&self) -> &Arc<MetaDev> {
        &self.md
    }

    pub fn fsid(&self) -> u64 {
        self.sb.fsid()
    }

    /// The last super block written.
    pub fn stable_super(&self) -> &SuperBlock {
        &self.stable.sb
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Hand out the next core seq: the lock server's write_seq of a write grant. Every later
    /// transaction gets a greater seq, and every open transaction has a smaller one (seed
    /// 001, 2021-06-15).
    pub fn next_core_seq(&mut self) -> u64 {
        self.take_seq()
    }

    /// Move the core seq past `seq` (a write_seq recovered from the clients' granted locks,
    /// seed 001 2020-10-30).
    pub fn advance_seq_past(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// The term this server serves.
    pub fn term(&self) -> u64 {
        self.cfg.term
    }

    /// Rids listed in `mounted_clients`: the clients that must recover with a new server.
    pub fn mounted_rids(&self) -> Result<Vec<u64>, ServerError> {
        let first = mounted_client_key(0);
        let last = mounted_client_key(u64::MAX);
        Ok(btree::range(
            &self.md,
            Some(&self.dirty),
            &self.sb.mounted_clients,
            &first,
            &last,
        )?
        .iter()
        .map(|it| it.key.first.get())
        .collect())
    }

    /// Is `rid` listed in `mounted_clients`?
    pub fn is_mounted(&self, rid: u64) -> Result<bool, ServerError> {
        let key = mounted_client_key(rid);
        Ok(btree::lookup(&self.md, Some(&self.dirty), &self.sb.mounted_clients, &key)?.is_some())
    }

    /// Reclaim a client that was fenced (or otherwise will never come back): its open
    /// transaction is dropped (nothing uncommitted was acknowledged as durable), its log
    /// tree is finalized for merging, its allocators return to the server, and its
    /// mounted_clients record goes. Idempotent: a later server may repeat it.
    pub fn reclaim_rid(&mut self, rid: u64) -> Result<(), ServerError> {
        if self.failed {
            return Err(ServerError::Io(
                "an earlier commit failed; the server must be restarted".into(),
            ));
        }
        self.farewell(rid).map(|_| ())
    }

    /// Answer one request from client `rid`.
    pub fn handle(&mut self, rid: u64, req: Request) -> Result<Response, ServerError> {
        if self.failed {
            return Err(ServerError::Io(
                "an earlier commit failed; the server must be restarted".into(),
            ));
        }
        if !matches!(req, Request::Greeting { .. }) && !self.greeted.contains(&rid) {
            return Err(ServerError::NotGreeted { rid });
        }
        let res = match req {
            Request::Greeting {
                fsid,
                format_version,
                rid,
                server_term,
            } => self.greeting(rid, fsid, format_version, server_term),
            Request::AllocInodes { count } => self.alloc_inodes(count),
            Request::GetLogTrees => self
                .get_log_trees(rid)
                .map(|lt| Response::LogTrees(Box::new(lt))),
            Request::CommitLogTrees(lt) => self.commit_log_trees(rid, &lt),
            Request::CommitLogTreesOpenNext { lt, unflushed } => {
                self.commit_log_trees_open_next(rid, &lt, unflushed)
            }
            Request::GetRoots => Ok(Response::Roots(self.roots())),
            Request::GetLastSeq => self.last_seq().map(Response::LastSeq),
            Request::Statfs => self.statfs().map(Response::Statfs),
            Request::Farewell => self.farewell(rid),
            Request::Lock(_) => Err(ServerError::Invalid(
                "lock requests are answered by the lock server".into(),
            )),
        };
        if matches!(res, Err(ServerError::Io(_))) {
            self.failed = true;
        }
        res
    }

    /// The roots of the last written super block.
    pub fn roots(&self) -> Roots {
        Roots {
            fs_root: self.stable.sb.fs_root,
            logs_root: self.stable.sb.logs_root,
            srch_root: self.stable.sb.srch_root,
            server_incarnation: self.incarnation,
            trees_merged: self.trees_merged,
        }
    }

    fn greeting(
        &mut self,
        rid: u64,
        fsid: u64,
        fmt: u64,
        known_term: u64,
    ) -> Result<Response, ServerError> {
        if fsid != self.sb.fsid() {
            return Err(ServerError::WrongFsid {
                client: fsid,
                server: self.sb.fsid(),
            });
        }
        if fmt != self.sb.fmt_vers.get() {
            return Err(ServerError::WrongFormat {
                client: fmt,
                server: self.sb.fmt_vers.get(),
            });
        }
        let key = mounted_client_key(rid);
        if btree::lookup(&self.md, Some(&self.dirty), &self.sb.mounted_clients, &key)?.is_none() {
            // A client that knew a server before but has no record was fenced and reclaimed
            // (or said farewell): it must not write again. The first greeting of a mount
            // (term 0) creates the record; a resent first greeting finds it (seed 001,
            // 2021-03-16).
            if known_term != 0 && self.cfg.term != 0 {
                return Err(ServerError::Fenced { rid });
            }
            let mc = MountedClient::new_zeroed();
            let mut w = BtreeWriter {
                md: &self.md,
                dirty: &mut self.dirty,
                alloc: &mut self.alloc,
            };
            w.put(&mut self.sb.mounted_clients, item(key, mc.as_bytes()))?;
            self.commit()?;
        }
        self.greeted.insert(rid);
        Ok(Response::Greeting {
            server_term: self.cfg.term,
            fsid: self.sb.fsid(),
        })
    }

    fn alloc_inodes(&mut self, count: u64) -> Result<Response, ServerError> {
        let count = count.clamp(1, crate::lock_names::INODES_PER_LOCK);
        let first = self.sb.next_ino.get();
        let next = first
            .checked_add(count)
            .ok_or_else(|| ServerError::NoSpace("inode numbers exhausted".into()))?;
        self.sb.next_ino = next.into();
        self.commit()?;
        Ok(Response::AllocInodes { first, count })
    }

    /// The newest log_trees record of `rid`.
    fn last_log_trees(&self, rid: u64) -> Result<Option<LogTrees>, ServerError> {
        let item = btree::prev(
            &self.md,
            Some(&self.dirty),
            &self.sb.logs_root,
            &log_trees_key(rid, u64::MAX),
            &log_trees_key(rid, 0),
        )?;
        item.map(|it| decode_log_trees(&it)).transpose()
    }

    fn store_log_trees(&mut self, lt: &LogTrees) -> Result<(), ServerError> {
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut self.dirty,
            alloc: &mut self.alloc,
        };
        w.put(&mut self.sb.logs_root, item(lt.key(), lt.as_bytes()))?;
        Ok(())
    }

    /// Blocks of the server's own avail list that client refills never take: what the
    /// server's own operations (opening and committing transactions, finishing merges)
    /// need however full the device is.
    fn reserve(&self) -> u64 {
        let small_device = (self.sb.total_meta_blocks.get() / 64).max(64);
        (self.cfg.server_meta_low / 4).clamp(64, small_device)
    }

    /// Whether free metadata space (not handed to any client) is short: log trees are then
    /// finalized at every commit so that merges give back what deletions freed.
    fn meta_space_low(&self) -> bool {
        let free = self.sb.meta_alloc[0].total_len.get() + self.alloc.avail.len() as u64;
        free < self.sb.total_meta_blocks.get() / 16 + self.reserve()
    }

    /// Make sure the server's own avail list can satisfy `n` allocations, before an
    /// operation changes anything: [`ServerError::NoSpace`] if the device cannot.
    fn ensure_server_avail(&mut self, n: u64) -> Result<(), ServerError> {
        let want = n.max(self.cfg.server_meta_low);
        while (self.alloc.avail.len() as u64) < want {
            let need = want - self.alloc.avail.len() as u64;
            let mut w = BtreeWriter {
                md: &self.md,
                dirty: &mut self.dirty,
                alloc: &mut self.alloc,
            };
            let Some((start, len)) =
                extent::alloc_extent(&mut w, &mut self.sb.meta_alloc[0], need)?
            else {
                break;
            };
            for b in start..start + len {
                self.alloc.avail.push(b);
            }
        }
        if (self.alloc.avail.len() as u64) < n {
            return Err(ServerError::NoSpace(format!(
                "{} free metadata blocks where the server needs {n}",
                self.alloc.avail.len()
            )));
        }
        Ok(())
    }

    /// Free metadata blocks the server can hand to clients, given `pending_merge` from
    /// [`Server::pending_merge`]: beyond its reserve, the room
    /// merges need, and what merging the finalized log trees may add to fs_root before it
    /// frees them (about their own size, counted twice: fs_root's leaves may end up half
    /// as full). Clients get ENOSPC before merges could run out of room to give back the
    /// space of what they delete.
    fn meta_spare(&self, pending_merge: u64) -> u64 {
        self.beyond_reserve().saturating_sub(pending_merge)
    }

    /// Free metadata blocks beyond the reserve and the merge room.
    fn beyond_reserve(&self) -> u64 {
        (self.sb.meta_alloc[0].total_len.get() + self.alloc.avail.len() as u64)
            .saturating_sub(self.reserve() + MERGE_ROOM)
    }

    /// Blocks that merging the finalized trees among `lts` may add to fs_root (see
    /// [`Server::meta_spare`]); reads only their parent blocks.
    fn pending_merge(&self, lts: &[LogTrees]) -> Result<u64, ServerError> {
        let mut pending = 0;
        for lt in lts.iter().filter(|lt| lt.is_finalized()) {
            pending += 2 * PutCost::tree_blocks(&self.md, &lt.item_root)?;
        }
        Ok(pending)
    }

    /// Take back, until the server has `want` blocks to spare, the metadata avail blocks
    /// beyond [`CLIENT_META_KEEP`] of other mounts that have no transaction open. Between
    /// transactions a mount's avail list is the server's to change: the mount reads it
    /// again from its log_trees record when it opens the next one.
    fn reclaim_idle_avail(
        &mut self,
        lts: Vec<LogTrees>,
        pending_merge: u64,
        except_rid: u64,
        want: u64,
    ) -> Result<(), ServerError> {
        for mut lt in lts {
            if self.meta_spare(pending_merge) >= want {
                break;
            }
            if lt.rid.get() == except_rid
                || lt.trans_open()
                || lt.meta_avail.total_nr.get() <= CLIENT_META_KEEP
            {
                continue;
            }
            self.ensure_server_avail(16)?;
            let mut avail = MetaList::load(&self.md, &lt.meta_avail)?;
            for b in avail.take_list_blocks() {
                self.alloc.freed.push(b);
            }
            let mut entries = avail.take_entries();
            // Never written since the mount's last commit, and named only by its list:
            // reusable at once (a crash before the next server commit keeps them listed).
            for b in entries.split_off(CLIENT_META_KEEP as usize) {
                self.alloc.avail.push(b);
            }
            let mut kept = MetaList::from_entries(entries);
            let seq = self.dirty.seq();
            lt.meta_avail = kept.write_new(&self.md, seq, &mut self.alloc)?;
            self.store_log_trees(&lt)?;
        }
        Ok(())
    }

    /// Take up to `n` free metadata blocks for a client, from the extent allocator.
    fn take_meta_blocks(&mut self, n: u64) -> Result<Vec<u64>, ServerError> {
        let mut out = Vec::new();
        while (out.len() as u64) < n {
            let mut w = BtreeWriter {
                md: &self.md,
                dirty: &mut self.dirty,
                alloc: &mut self.alloc,
            };
            let want = n - out.len() as u64;
            match extent::alloc_extent(&mut w, &mut self.sb.meta_alloc[0], want)? {
                Some((start, len)) => out.extend(start..start + len),
                None => break,
            }
        }
        // The extent allocator ran dry: share the server's own avail beyond its reserve and
        // the room merges need.
        let reserve = (self.reserve() + MERGE_ROOM) as usize;
        while (out.len() as u64) < n && self.alloc.avail.len() > reserve {
            out.push(self.alloc.avail.pop().expect("above reserve"));
        }
        Ok(out)
    }

    /// Move every block of a client's committed lists and data trees back to the server.
    fn reclaim_client_allocators(&mut self, lt: &mut LogTrees) -> Result<(), ServerError> {
        for head in [&mut lt.meta_avail, &mut lt.meta_freed] {
            let mut list = MetaList::load(&self.md, head)?;
            for b in list
                .take_entries()
                .into_iter()
                .chain(list.take_list_blocks())
            {
                self.alloc.freed.push(b);
            }
            *head = AllocListHead::default();
        }
        for root in [&mut lt.data_avail, &mut lt.data_freed] {
            self.return_data_extents(root)?;
        }
        Ok(())
    }

    /// Move every extent of a client data tree into `data_alloc` and free the tree.
    fn return_data_extents(&mut self, root: &mut AllocRoot) -> Result<(), ServerError> {
        let extents = extent::list_extents(&self.md, Some(&self.dirty), root)?;
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut self.dirty,
            alloc: &mut self.alloc,
        };
        for (start, len) in extents {
            extent::free_extent(&mut w, &mut self.sb.data_alloc, start, len)?;
        }
        w.free_tree(&mut root.root)?;
        *root = AllocRoot::default();
        Ok(())
    }

    fn get_log_trees(&mut self, rid: u64) -> Result<LogTrees, ServerError> {
        let (lt, changed) = self.open_log_trees(rid)?;
        if changed {
            self.commit()?;
        }
        Ok(lt)
    }

    /// The body of `GetLogTrees`, not committed: open the next transaction of `rid` (or
    /// find the one a resent request opened already: then `false`, nothing changed).
    fn open_log_trees(&mut self, rid: u64) -> Result<(LogTrees, bool), ServerError> {
        let mut lt = match self.last_log_trees(rid)? {
            Some(lt) if !lt.is_finalized() => lt,
            Some(mut fin) => {
                // Start the next tree; it inherits the finalized tree's allocators. Room
                // first: failing after the finalized record gave them up would leak them.
                self.ensure_server_avail(64)?;
                let mut next = LogTrees::new_zeroed();
                next.rid = rid.into();
                next.nr = (fin.nr.get() + 1).into();
                next.meta_avail = fin.meta_avail;
                next.meta_freed = fin.meta_freed;
                next.data_avail = fin.data_avail;
                next.data_freed = fin.data_freed;
                next.get_trans_seq = fin.commit_trans_seq;
                next.commit_trans_seq = fin.commit_trans_seq;
                fin.meta_avail = AllocListHead::default();
                fin.meta_freed = AllocListHead::default();
                fin.data_avail = AllocRoot::default();
                fin.data_freed = AllocRoot::default();
                self.store_log_trees(&fin)?;
                next
            }
            None => {
                let mut lt = LogTrees::new_zeroed();
                lt.rid = rid.into();
                lt.nr = 1.into();
                lt
            }
        };
        if lt.trans_open() {
            // A resent request: the transaction is already open; answer as before.
            return Ok((lt, false));
        }
        if lt.get_trans_seq.get() < lt.commit_trans_seq.get() {
            return Err(ServerError::Corrupt(format!(
                "log_trees {rid:016x}.{}: committed seq {} beyond opened seq {}",
                lt.nr.get(),
                lt.commit_trans_seq.get(),
                lt.get_trans_seq.get()
            )));
        }
        self.ensure_server_avail(64)?;

        // The committed transaction's freed blocks are durable garbage now.
        let mut freed = MetaList::load(&self.md, &lt.meta_freed)?;
        for b in freed
            .take_entries()
            .into_iter()
            .chain(freed.take_list_blocks())
        {
            self.alloc.freed.push(b);
        }
        lt.meta_freed = AllocListHead::default();

        // Refill the metadata avail list.
        let mut avail = MetaList::load(&self.md, &lt.meta_avail)?;
        for b in avail.take_list_blocks() {
            self.alloc.freed.push(b);
        }
        // As with data below: an eighth of the free metadata space per client, but at
        // least what one operation and its commit need while the server can spare it.
        let have = avail.len() as u64;
        let lts = all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)?;
        let pending_merge = self.pending_merge(&lts)?;
        if have < CLIENT_META_MIN_LOW
            && self.meta_spare(pending_merge) < CLIENT_META_MIN_FILL - have
        {
            self.reclaim_idle_avail(lts, pending_merge, rid, CLIENT_META_MIN_FILL - have)?;
        }
        let (spare, beyond_reserve) = (self.meta_spare(pending_merge), self.beyond_reserve());
        let fill = self
            .cfg
            .client_meta_fill
            .min(((spare + have) / 8).max(CLIENT_META_MIN_FILL))
            .min(spare + have)
            // Room to remove files, even from what pending merges may need: removals are
            // what lets them give space back.
            .max(CLIENT_META_REMOVE_FILL.min(beyond_reserve + have));
        let low = self
            .cfg
            .client_meta_low
            .min(fill / 2)
            .max(CLIENT_META_MIN_LOW.min(fill))
            .max(1);
        if have < low {
            let more = self.take_meta_blocks(fill - have)?;
            for b in more {
                avail.push(b);
            }
        }
        let seq = self.dirty.seq();
        lt.meta_avail = avail.write_new(&self.md, seq, &mut self.alloc)?;

        // Freed data extents go back to the core allocator; refill data avail.
        self.return_data_extents(&mut lt.data_freed)?;
        let mut have = lt.data_avail.total_len.get();
        // Every client gets at most an eighth of the free space (at least 1 MiB of it while
        // that much is free), so one node cannot hold all of it while others run dry.
        let free = self.sb.data_alloc.total_len.get();
        let fill = self
            .cfg
            .client_data_fill
            .min(((free + have) / 8).max(256.min(free + have)));
        let low = self.cfg.client_data_low.min(fill / 2).max(1);
        if have < low {
            while have < fill {
                let mut w = BtreeWriter {
                    md: &self.md,
                    dirty: &mut self.dirty,
                    alloc: &mut self.alloc,
                };
                let want = fill - have;
                let Some((s, l)) = extent::alloc_extent(&mut w, &mut self.sb.data_alloc, want)?
                else {
                    break;
                };
                extent::free_extent(&mut w, &mut lt.data_avail, s, l)?;
                have += l;
            }
        }

        lt.get_trans_seq = self.take_seq().into();
        if lt.first_trans_seq.get() == 0 {
            lt.first_trans_seq = lt.get_trans_seq;
        }
        self.store_log_trees(&lt)?;
        Ok((lt, true))
    }

    fn commit_log_trees(&mut self, rid: u64, sent: &LogTrees) -> Result<Response, ServerError> {
        if self.stage_commit_log_trees(rid, sent)? {
            self.commit()?;
        }
        Ok(Response::Committed)
    }

    /// `CommitLogTrees` and `GetLogTrees` in one server commit: the client's transaction is
    /// recorded (finalizing its tree when due), then its next one opened, and one commit
    /// makes both durable before the answer. Two device flushes instead of four, and no
    /// `GetLogTrees` or `GetRoots` round trip: the answer carries the roots.
    ///
    /// A resend after the server (this one or a previous one) applied it finds the client's
    /// newest record open with `commit_trans_seq` = the sent transaction's seq, and answers
    /// with that record: the same next transaction, never a second one (seed 004). The
    /// client has one commit in flight at a time, so no other request can have opened it.
    /// When the server lacks the room to open the next transaction, the commit alone is
    /// made and the answer has no next one (the client asks with `GetLogTrees` at its next
    /// change, as without this request).
    fn commit_log_trees_open_next(
        &mut self,
        rid: u64,
        sent: &LogTrees,
        unflushed: u64,
    ) -> Result<Response, ServerError> {
        check_sender(rid, sent)?;
        if let Some(last) = self.last_log_trees(rid)? {
            // Its tree may have been finalized at that commit (the next transaction is in
            // the next tree), and even merged away since.
            if last.trans_open()
                && sent.get_trans_seq.get() != 0
                && last.commit_trans_seq == sent.get_trans_seq
                && last.nr.get() >= sent.nr.get()
            {
                return Ok(Response::CommittedNext {
                    next: Some(Box::new(last)),
                    roots: self.roots(),
                });
            }
        }
        // Blocks the client left unflushed become durable with this commit's flush before
        // the super block only if they went through the same device object (one process);
        // anywhere else the client flushes them first. Nothing has changed yet.
        if unflushed != 0 && unflushed != self.md.flush_domain() {
            return Err(ServerError::FlushFirst);
        }
        let mut changed = self.stage_commit_log_trees(rid, sent)?;
        // Room for opening the next transaction on top of what the commit took, checked
        // before anything of it changes.
        let next = match self.ensure_server_avail(64 + 16) {
            Ok(()) => {
                let (next, opened) = self.open_log_trees(rid)?;
                changed |= opened;
                Some(Box::new(next))
            }
            Err(ServerError::NoSpace(_)) => None,
            Err(e) => return Err(e),
        };
        if changed {
            self.commit()?;
        }
        Ok(Response::CommittedNext {
            next,
            roots: self.roots(),
        })
    }

    /// The body of `CommitLogTrees`, not committed: record the client's committed
    /// transaction, finalizing its tree when due. `false` when a previous copy of the
    /// request did it already (nothing changed).
    fn stage_commit_log_trees(&mut self, rid: u64, sent: &LogTrees) -> Result<bool, ServerError> {
        check_sender(rid, sent)?;
        let key = log_trees_key(rid, sent.nr.get());
        let Some(found) = btree::lookup(&self.md, Some(&self.dirty), &self.sb.logs_root, &key)?
        else {
            return Err(ServerError::Invalid(format!(
                "commit for unknown log tree {rid:016x}.{}",
                sent.nr.get()
            )));
        };
        let stored = decode_log_trees(&found)?;
        if stored.get_trans_seq != sent.get_trans_seq {
            return Err(ServerError::WrongTransaction {
                sent: sent.get_trans_seq.get(),
                stored: stored.get_trans_seq.get(),
            });
        }
        if !stored.trans_open() {
            // Already committed, by us or by a previous server: nothing to do again.
            return Ok(false);
        }
        let mut new = *sent;
        new.commit_trans_seq = stored.get_trans_seq;
        new.flags = stored.flags;
        new.finalize_seq = stored.finalize_seq;
        self.ensure_server_avail(16)?;
        if self.finalize_pending.remove(&rid)
            || new.item_root.height > self.cfg.finalize_height
            || self.bloom_mostly_set(&new)?
            || (self.meta_space_low() && !new.item_root.is_empty())
        {
            new.flags = (new.flags.get() | LOG_TREES_FINALIZED).into();
            new.finalize_seq = self.next_seq.into();
        }
        self.store_log_trees(&new)?;
        Ok(true)
    }

    /// A tree whose bloom filter has more than half its bits set no longer lets readers skip
    /// it; finalizing it (and merging it) keeps reads cheap.
    fn bloom_mostly_set(&self, lt: &LogTrees) -> Result<bool, ServerError> {
        use crate::format::bloom::{BloomBlockHeader, BLOOM_BITS};
        if lt.bloom_ref.is_null() {
            return Ok(false);
        }
        let block = self
            .md
            .read_ref(crate::format::KIND_BLOOM, lt.bloom_ref)
            .map_err(|e| ServerError::Corrupt(e.to_string()))?;
        let (h, _) = BloomBlockHeader::read_from_prefix(block.data.as_slice())
            .map_err(|_| ServerError::Corrupt("short bloom block".into()))?;
        Ok(h.total_set.get() > BLOOM_BITS / 2)
    }

    fn open_transactions(&self) -> Result<Vec<LogTrees>, ServerError> {
        Ok(
            all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)?
                .into_iter()
                .filter(|lt| lt.trans_open())
                .collect(),
        )
    }

    /// The stable seq: every item with a seq at or below it is in a committed tree, and no
    /// open transaction can still write one.
    pub fn last_seq(&self) -> Result<u64, ServerError> {
        let mut last = self.next_seq - 1;
        for lt in self.open_transactions()? {
            last = last.min(lt.get_trans_seq.get() - 1);
        }
        Ok(last)
    }

    fn statfs(&self) -> Result<Statfs, ServerError> {
        let mut free_meta = self.sb.meta_alloc[0].total_len.get()
            + self.sb.meta_alloc[1].total_len.get()
            + (self.alloc.avail.len() + self.alloc.freed.len()) as u64;
        let mut free_data = self.sb.data_alloc.total_len.get();
        for lt in all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)? {
            free_meta += lt.meta_avail.total_nr.get() + lt.meta_freed.total_nr.get();
            free_data += lt.data_avail.total_len.get() + lt.data_freed.total_len.get();
        }
        Ok(Statfs {
            fsid: self.sb.fsid(),
            committed_seq: self.stable.sb.seq.get(),
            total_meta_blocks: self.sb.total_meta_blocks.get(),
            free_meta_blocks: free_meta,
            total_data_blocks: self.sb.total_data_blocks.get(),
            free_data_blocks: free_data,
            inode_count: self.sb.inode_count.get(),
        })
    }

    fn farewell(&mut self, rid: u64) -> Result<Response, ServerError> {
        let key = mounted_client_key(rid);
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut self.dirty,
            alloc: &mut self.alloc,
        };
        w.remove(&mut self.sb.mounted_clients, &key)?;
        if let Some(mut lt) = self.last_log_trees(rid)? {
            // The client committed everything it wanted kept before saying farewell; the
            // transaction it has open is empty and closes here.
            lt.commit_trans_seq = lt.get_trans_seq;
            self.reclaim_client_allocators(&mut lt)?;
            if !lt.is_finalized() && !lt.item_root.is_empty() {
                lt.flags = (lt.flags.get() | LOG_TREES_FINALIZED).into();
                lt.finalize_seq = self.next_seq.into();
            }
            if lt.item_root.is_empty() {
                let mut w = BtreeWriter {
                    md: &self.md,
                    dirty: &mut self.dirty,
                    alloc: &mut self.alloc,
                };
                if !lt.bloom_ref.is_null() {
                    w.alloc.free_meta(lt.bloom_ref.blkno.get())?;
                }
                w.remove(&mut self.sb.logs_root, &lt.key())?;
            } else {
                self.store_log_trees(&lt)?;
            }
        }
        self.greeted.remove(&rid);
        self.finalize_pending.remove(&rid);
        self.commit()?;
        Ok(Response::FarewellDone)
    }

    /// Ask for every current log tree to be finalized so the next merge covers them. Trees
    /// without an open transaction are finalized now, the others at their next commit.
    pub fn request_merge(&mut self) -> Result<(), ServerError> {
        self.finalize_all()?;
        self.commit()
    }

    /// Finalize every log tree with items: now if no transaction is open in it, at its
    /// commit otherwise.
    fn finalize_all(&mut self) -> Result<(), ServerError> {
        for mut lt in all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)? {
            if lt.is_finalized() || lt.item_root.is_empty() {
                continue;
            }
            if lt.trans_open() {
                self.finalize_pending.insert(lt.rid.get());
            } else {
                lt.flags = (lt.flags.get() | LOG_TREES_FINALIZED).into();
                lt.finalize_seq = self.next_seq.into();
                self.store_log_trees(&lt)?;
            }
        }
        Ok(())
    }

    /// Merge every finalized log tree into `fs_root` and free it. Returns the number of
    /// trees merged (a merge already under way is finished first and counts too).
    ///
    /// Merged items keep their seq in `fs_root`, so readers still pick the newest version
    /// across `fs_root` and the unmerged trees. A merged deletion stays in `fs_root` as a
    /// tombstone while an unmerged tree holds an older version of its key (found through
    /// the trees' bloom filters and a lookup, see `Unmerged`); otherwise it removes the key.
    /// A tombstone kept is looked at again when that tree is merged.
    pub fn merge_finalized(&mut self) -> Result<usize, ServerError> {
        let mut merged = 0;
        loop {
            match self.merge_step(usize::MAX)? {
                MergeStep::Idle => return Ok(merged),
                MergeStep::Merged(n) => merged += n,
                MergeStep::Partial => {}
            }
        }
    }

    /// Merge at most `max_items` keys of the finalized log trees into `fs_root` and commit.
    ///
    /// A merge starts with the trees finalized at that moment and goes through their keys in
    /// order, a slice per call, so that whoever drives it (the background merger) can let
    /// client requests in between slices instead of holding the server for the whole merge.
    /// Between slices `fs_root` holds some of the inputs' items while the inputs stay in the
    /// forest: readers still see every key's newest version (merged items keep their seq;
    /// a deletion removed from `fs_root` is still in its input tree). The inputs are freed by
    /// the call that merges their last key. A crash or restart in between starts the merge
    /// over, and merging a key again changes nothing.
    pub fn merge_step(&mut self, max_items: usize) -> Result<MergeStep, ServerError> {
        self.merge_within(max_items, None)
    }

    /// [`Server::merge_step`] for about `budget` of work: a slice ends at the first multiple
    /// of 256 keys merged after the budget ran out (so every call makes progress).
    pub fn merge_for(&mut self, budget: std::time::Duration) -> Result<MergeStep, ServerError> {
        self.merge_within(usize::MAX, Some(std::time::Instant::now() + budget))
    }

    fn merge_within(
        &mut self,
        max_items: usize,
        deadline: Option<std::time::Instant>,
    ) -> Result<MergeStep, ServerError> {
        if self.merge.is_none() {
            let mut lts = all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)?;
            if self.meta_space_low()
                || self.meta_spare(self.pending_merge(&lts)?) < CLIENT_META_MIN_FILL
            {
                // Merge what every mount has written so far: removals in trees still open
                // then cancel what they remove in the finalized ones, instead of those
                // being merged into fs_root first (which needs the room that is short).
                self.ensure_server_avail(16)?;
                self.finalize_all()?;
                lts = all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)?;
            }
            let inputs: Vec<LogTrees> = lts.into_iter().filter(|lt| lt.is_finalized()).collect();
            if inputs.is_empty() {
                return Ok(MergeStep::Idle);
            }
            self.merge = Some(MergeState {
                inputs: inputs.iter().map(|lt| (lt.key(), lt.item_root)).collect(),
                next: Some(Key::MIN),
            });
        }
        let state = self.merge.take().expect("merge state");
        let res = self.merge_slice(state, max_items.max(1), deadline);
        match &res {
            // Half a change to fs_root is in memory: nothing more may be committed.
            Err(ServerError::Io(_)) => self.failed = true,
            // Start over next time, with the trees finalized by then (deletions made since
            // may be what lets it fit). Slices already committed stay merged.
            Err(_) => self.merge = None,
            Ok(_) => {}
        }
        res
    }

    fn merge_slice(
        &mut self,
        mut state: MergeState,
        max_items: usize,
        deadline: Option<std::time::Instant>,
    ) -> Result<MergeStep, ServerError> {
        if let Some(from) = state.next {
            let lts = all_log_trees(&self.md, Some(&self.dirty), &self.sb.logs_root)?;
            let unmerged = Unmerged::new(&self.md, &lts, &state.inputs)?;
            // Merge items in key order; for each key the greatest seq wins.
            let mut cursors: Vec<LeafCursor> = state
                .inputs
                .iter()
                .map(|(_, root)| LeafCursor::new(*root, from, Key::MAX))
                .collect();
            let mut applied = 0usize;
            state.next = loop {
                let mut best: Option<Item> = None;
                for c in cursors.iter_mut() {
                    if let Some(it) = c.peek(&self.md, None)? {
                        best = match best {
                            None => Some(it.clone()),
                            Some(b) if it.key < b.key || (it.key == b.key && it.seq > b.seq) => {
                                Some(it.clone())
                            }
                            Some(b) => Some(b),
                        };
                    }
                }
                let Some(win) = best else { break None };
                if applied == max_items
                    || (applied > 0
                        && applied.is_multiple_of(256)
                        && deadline.is_some_and(|d| std::time::Instant::now() >= d))
                {
                    break Some(win.key);
                }
                {
                    // Room for this key's change to fs_root (it can copy and split a block
                    // per level, join a sibling and grow a level) on top of the reserve,
                    // which a merge never takes: requests must go on however full the
                    // device is. What the slice freed is reusable once it is committed.
                    let need = self.reserve() + self.sb.fs_root.height as u64 + 4;
                    if self.ensure_server_avail(need).is_err() {
                        if applied == 0 {
                            return Err(ServerError::NoSpace(
                                "a merge waits for free metadata blocks".into(),
                            ));
                        }
                        break Some(win.key);
                    }
                }
                for c in cursors.iter_mut() {
                    c.skip_key(&self.md, None, &win.key)?;
                }
                applied += 1;
                let mut w = BtreeWriter {
                    md: &self.md,
                    dirty: &mut self.dirty,
                    alloc: &mut self.alloc,
                };
                let seq = win.seq;
                let deletion = win.flags & crate::format::btree::ITEM_FLAG_DELETION != 0;
                let key = win.key;
                let replaced = if deletion && !unmerged.hold_older(w.md, &key, seq)? {
                    w.remove(&mut self.sb.fs_root, &key)?
                } else {
                    let mut merged = win;
                    merged.flags &= crate::format::btree::ITEM_FLAG_DELETION;
                    w.put(&mut self.sb.fs_root, merged)?
                };
                // Trees are merged as they are finalized, not in seq order: fs_root may
                // already have held a newer version (from a tree merged earlier), which must
                // win. Rare, so it is put back rather than looked up before every change.
                // A newer tombstone was kept for an older version in a tree not merged
                // then, maybe the one merged now: it goes once no unmerged tree holds one.
                if let Some(newer) = replaced.filter(|r| r.seq > seq) {
                    let tombstone = newer.flags & crate::format::btree::ITEM_FLAG_DELETION != 0;
                    if tombstone && !unmerged.hold_older(w.md, &key, newer.seq)? {
                        w.remove(&mut self.sb.fs_root, &key)?;
                    } else {
                        w.put(&mut self.sb.fs_root, newer)?;
                    }
                }
            };
            if let Some(next) = state.next {
                self.trim_merged_inputs(&mut state, &next)?;
                self.merge = Some(state);
                // Committed here, so that the next request does not write the slice's
                // blocks on its caller's time.
                self.commit()?;
                return Ok(MergeStep::Partial);
            }
        }
        // Free the merged trees and their records. The records are read again: requests
        // served between slices may have changed them (a client's next tree takes over the
        // allocators of its finalized one; farewell removes an empty record).
        let mut delta: i64 = 0;
        let merged = state.inputs.len();
        for (key, root) in state.inputs {
            let Some(found) = btree::lookup(&self.md, Some(&self.dirty), &self.sb.logs_root, &key)?
            else {
                continue;
            };
            let mut lt = decode_log_trees(&found)?;
            if lt.item_root != root {
                return Err(ServerError::Corrupt(format!(
                    "log_trees {:016x}.{} changed while it was merged",
                    lt.rid.get(),
                    lt.nr.get()
                )));
            }
            self.ensure_server_avail(64)?;
            let mut w = BtreeWriter {
                md: &self.md,
                dirty: &mut self.dirty,
                alloc: &mut self.alloc,
            };
            w.free_tree(&mut lt.item_root)?;
            if !lt.bloom_ref.is_null() {
                w.alloc.free_meta(lt.bloom_ref.blkno.get())?;
            }
            w.delete(&mut self.sb.logs_root, &lt.key())?;
            self.reclaim_client_allocators(&mut lt)?;
            delta += lt.inode_count_delta.get() as i64;
        }
        let count = (self.sb.inode_count.get() as i64 + delta).max(0) as u64;
        self.sb.inode_count = count.into();
        self.commit()?;
        self.trees_merged += merged as u64;
        Ok(MergeStep::Merged(merged))
    }

    /// Give back the part of a merge's inputs that its slices have passed: every key below
    /// `next` is in fs_root now, in the same commit, so the inputs are trimmed below it
    /// (their records follow). Without this a merge held two copies of what it had merged
    /// until its last slice, and on a nearly full device a merge that ran out of room half
    /// way could never finish (and so never free what removals had deleted).
    fn trim_merged_inputs(
        &mut self,
        state: &mut MergeState,
        next: &Key,
    ) -> Result<(), ServerError> {
        for (key, root) in state.inputs.iter_mut() {
            let Some(found) = btree::lookup(&self.md, Some(&self.dirty), &self.sb.logs_root, key)?
            else {
                continue;
            };
            let mut lt = decode_log_trees(&found)?;
            if lt.item_root != *root {
                return Err(ServerError::Corrupt(format!(
                    "log_trees {:016x}.{} changed while it was merged",
                    lt.rid.get(),
                    lt.nr.get()
                )));
            }
            // A copy of one path of the input and of logs_root: the server's reserve
            // covers it, and the trim frees more than that once committed.
            let copies = root.height as u64 + self.sb.logs_root.height as u64 + 4;
            self.ensure_server_avail(copies)?;
            let mut w = BtreeWriter {
                md: &self.md,
                dirty: &mut self.dirty,
                alloc: &mut self.alloc,
            };
            w.trim_below(&mut lt.item_root, next)?;
            *root = lt.item_root;
            self.store_log_trees(&lt)?;
        }
        Ok(())
    }

    /// Write the open server transaction and a new super block; durable when this returns.
    pub fn commit(&mut self) -> Result<(), ServerError> {
        let res = self.commit_inner();
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    fn commit_inner(&mut self) -> Result<(), ServerError> {
        self.ensure_server_avail(16)?;
        self.trim_server_avail()?;
        let seq = self.dirty.seq();
        let next = self.take_seq();
        self.dirty.write(&self.md, next)?;
        let (avail, freed) = self.alloc.write_lists(&self.md, seq)?;
        self.sb.server_meta_avail[0] = avail;
        self.sb.server_meta_freed[0] = freed;
        self.md.flush().map_err(io)?;
        self.sb.seq = (self.next_seq - 1).into();
        let slot = self.stable.next_blkno();
        self.md
            .write_block(KIND_SUPER, slot, seq, self.sb.to_block())
            .map_err(io)?;
        self.md.flush().map_err(io)?;
        self.stable = CurrentSuper {
            sb: self.sb,
            blkno: slot,
            other_problem: None,
        };
        // What this commit freed is reusable from now on.
        for b in self.alloc.freed.take_entries() {
            self.alloc.avail.push(b);
        }
        Ok(())
    }

    /// Return avail blocks beyond the high mark to the extent allocator.
    fn trim_server_avail(&mut self) -> Result<(), ServerError> {
        let high = self.cfg.server_meta_high as usize;
        if self.alloc.avail.len() <= high {
            return Ok(());
        }
        let mut all = self.alloc.avail.take_entries();
        all.sort_unstable();
        let keep = all.split_off(all.len() - high / 2);
        for b in keep {
            self.alloc.avail.push(b);
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for b in all {
            match runs.last_mut() {
                Some((s, l)) if *s + *l == b => *l += 1,
                _ => runs.push((b, 1)),
            }
        }
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut self.dirty,
            alloc: &mut self.alloc,
        };
        for (s, l) in runs {
            extent::free_extent(&mut w, &mut self.sb.meta_alloc[0], s, l)?;
        }
        Ok(())
    }
}

/// A client commits only its own log trees.
fn check_sender(rid: u64, sent: &LogTrees) -> Result<(), ServerError> {
    if sent.rid.get() != rid {
        return Err(ServerError::Invalid(format!(
            "client {rid:016x} committed the log trees of {:016x}",
            sent.rid.get()
        )));
    }
    Ok(())
}

fn item(key: Key, val: &[u8]) -> Item {
    Item {
        key,
        seq: 0,
        flags: 0,
        val: val.to_vec(),
    }
}

fn decode_log_trees(it: &Item) -> Result<LogTrees, ServerError> {
    LogTrees::read_from_bytes(&it.val).map_err(|_| {
        ServerError::Corrupt(format!(
            "log_trees item {:?} has a value of {} bytes",
            it.key,
            it.val.len()
        ))
    })
}

/// Every log_trees record in `logs_root`.
pub fn all_log_trees(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    logs_root: &crate::format::BtreeRoot,
) -> Result<Vec<LogTrees>, ServerError> {
    read_log_trees(md, dirty, logs_root)?
}

/// Every log_trees record in `logs_root`, keeping a block error as it is (a reader of
/// committed roots needs to tell a stale block — retry with newer roots — from damage); the
/// inner result fails on a record that does not decode.
pub fn read_log_trees(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    logs_root: &crate::format::BtreeRoot,
) -> Result<Result<Vec<LogTrees>, ServerError>, BtreeError> {
    let first = Key::new(zone::LOG_TREES, 0, 0, 0, 0, 0);
    let last = Key::new(
        zone::LOG_TREES,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    );
    Ok(btree::range(md, dirty, logs_root, &first, &last)?
        .iter()
        .map(decode_log_trees)
        .collect())
}

/// A number unlikely to repeat across server starts.
fn incarnation() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}
