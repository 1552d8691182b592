//! The client side of the metadata engine: one per mount. It holds the open transaction, the
//! items it changed, and reads the forest of trees merged by key.
//!
//! Transactions follow the strict sequence of seed 004: `GetLogTrees` opens one (the server
//! hands out the log_trees record with refilled allocators and `get_trans_seq`), operations
//! change items in memory, and [`Client::commit`] writes them copy-on-write into the client's
//! own log btree, makes every block durable, and sends `CommitLogTrees`. The next transaction
//! opens at the next change ([`Client::begin`]), so an idle mount holds no open transaction
//! and never holds back the stable seq horizon. A caller that expects more changes soon
//! commits with [`Client::commit_and_open_next`] instead: `CommitLogTreesOpenNext` commits
//! and opens the next transaction in one server commit, and the mount keeps it open until
//! its next commit (whoever calls that bounds how long it holds the horizon back). A commit
//! request is only ever sent for a transaction a `GetLogTrees` (or `CommitLogTreesOpenNext`)
//! opened.
//!
//! Reads merge, for each key: the open transaction's items, then every log tree and
//! `fs_root`; the version with the greatest seq wins and a deletion item hides older
//! versions. A log tree whose bloom filter lacks the key's lock group is skipped (for range
//! reads too, when the range lies inside one lock group). A read that runs into a block
//! rewritten since the roots were sampled refreshes the roots and retries. Filesystem items
//! are read through the mount's item cache ([`ItemCache`]): a miss reads the whole range
//! around its key that one leaf of each tree covers, and later reads inside it walk no tree.
//!
//! Item seq = max(transaction seq, the write_seq of the lock the caller holds) (seed 001,
//! 2021-06-15); callers pass their lock's write_seq (0 until cluster locks exist).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use scoutgw_blockdev::{BlockBuf, BlockRef, BlockSize, CachedBlock, MetaDev};
use zerocopy::{FromBytes, IntoBytes};

use crate::alloc::extent;
use crate::alloc::{ListAlloc, MetaList};
use crate::btree::{self, BtreeError, BtreeWriter, Dirty, Item, LeafCursor, PutCost};
use crate::format::bloom::{block_may_hold, bloom_bits, set_bit, BloomBlockHeader};
use crate::format::btree::ITEM_FLAG_DELETION;
use crate::format::key::zone;
use crate::format::log_trees::LogTrees;
use crate::format::{Key, KIND_BLOOM};
use crate::item_cache::{ItemCache, ItemCacheStats};
use crate::lock_names::{lock_end, lock_start};
use crate::msg::{Request, Response, Roots, ServerError, ServerLink, Statfs};
use crate::server::{read_log_trees, MergeStep, Server};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("server: {0}")]
    Server(#[from] ServerError),
    #[error(transparent)]
    Btree(#[from] BtreeError),
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    #[error("out of space: {0}")]
    NoSpace(&'static str),
    #[error("roots kept going stale after {0} retries")]
    StaleRetries(usize),
    #[error("an earlier commit failed; the mount must be restarted")]
    Failed,
}

impl ClientError {
    fn is_stale(&self) -> bool {
        matches!(self, ClientError::Btree(e) if e.is_stale())
    }
}

/// The server in this process, behind the message interface.
pub struct LocalServer {
    server: Mutex<Server>,
}

impl LocalServer {
    pub fn new(server: Server) -> Self {
        Self {
            server: Mutex::new(server),
        }
    }

    /// Run `f` with the server locked (maintenance such as merges).
    pub fn with<R>(&self, f: impl FnOnce(&mut Server) -> R) -> R {
        f(&mut self.server.lock().expect("server lock"))
    }

    /// Merge finalized log trees in the background, every `interval`, until the returned
    /// handle is dropped. A merge goes in slices of about [`MERGE_SLICE_TIME`] with the
    /// server unlocked in between, so client requests wait for a slice, not a whole merge.
    pub fn spawn_merger(self: &Arc<Self>, interval: std::time::Duration) -> MergerHandle {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (server, flag) = (Arc::downgrade(self), stop.clone());
        let thread = std::thread::Builder::new()
            .name("scoutgw-merge".into())
            .spawn(move || {
                let (mut busy, mut starved) = (false, false);
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    // Between slices only a pause that lets a waiting request take the lock.
                    std::thread::sleep(if busy { MERGE_SLICE_PAUSE } else { interval });
                    let Some(server) = server.upgrade() else {
                        break;
                    };
                    match server.with(|s| s.merge_for(MERGE_SLICE_TIME)) {
                        Ok(step) => {
                            busy = step == MergeStep::Partial;
                            starved = false;
                        }
                        Err(ServerError::NoSpace(why)) => {
                            // The device is full: try again once deletions may have made
                            // room (the merge starts over with the trees finalized by then).
                            busy = false;
                            if !starved {
                                tracing::warn!("background merge paused: {why}");
                            }
                            starved = true;
                            continue;
                        }
                        Err(e) => {
                            // The server marks itself failed on I/O errors; nothing to retry.
                            eprintln!("scoutgw: background merge failed: {e}");
                            break;
                        }
                    }
                }
            })
            .expect("spawn merge thread");
        MergerHandle {
            stop,
            thread: Some(thread),
        }
    }
}

/// The work of one slice of the background merger, a server commit each: client requests
/// wait at most about this long for the server, and a large merge is not cut into so many
/// commits (each flushes the device twice) that their flushes dominate it.
pub const MERGE_SLICE_TIME: std::time::Duration = std::time::Duration::from_millis(25);
/// The background merger's pause between slices of a merge.
const MERGE_SLICE_PAUSE: std::time::Duration = std::time::Duration::from_micros(200);

/// Stops the background merger when dropped.
pub struct MergerHandle {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MergerHandle {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ServerLink for LocalServer {
    fn call(&self, rid: u64, req: Request) -> Result<Response, ServerError> {
        self.server.lock().expect("server lock").handle(rid, req)
    }
}

/// The open transaction.
struct Trans {
    lt: LogTrees,
    alloc: ListAlloc,
    dirty: Dirty,
    /// What putting the changed items into the log tree at commit can allocate.
    cost: PutCost,
    /// The avail list's length when the transaction opened (see [`Trans::untouched`]).
    avail_at_open: usize,
}

impl Trans {
    /// Whether the transaction changed nothing: no block written or freed, no block taken
    /// from its avail list (the caller checks it has no changed items; the list blocks
    /// themselves change only at commit). Its record is then still the one the server
    /// stored when it opened it, naming only durable blocks.
    fn untouched(&self) -> bool {
        self.dirty.is_empty()
            && self.alloc.freed.is_empty()
            && self.alloc.avail.len() == self.avail_at_open
    }
}

/// Blocks that committing `t` can allocate from its avail list: the items' puts into the log
/// tree, the bloom block, and the blocks that the two allocator lists are written into (the
/// freed list grows by every block the puts copy, the old bloom block and the old list
/// blocks).
fn commit_blocks(t: &Trans) -> u64 {
    let old_list_blocks = t.alloc.avail.list_blocks().len() + t.alloc.freed.list_blocks().len();
    let freed = t.alloc.freed.len() + t.cost.copies() as usize + 1 + old_list_blocks;
    let lists = crate::alloc::list::blocks_for(t.alloc.avail.len())
        + crate::alloc::list::blocks_for(freed)
        + 1;
    t.cost.blocks() + 1 + lists as u64
}

const STALE_RETRIES: usize = 20;

/// Default bound of a client's item cache (see [`ItemCache`]); `Fs` sets its own.
pub const ITEM_CACHE_BYTES: usize = 64 << 20;

/// Range reads of at most this many items, or of every item of a range inside one lock group
/// (a name's dirent hash, an inode's xattrs), go through the item cache, filling it on a miss;
/// bigger ones are read from the trees, except where [`Client::scan_each`] finds the cache
/// already covering them (a readdir page).
const FILL_SMALL_SCAN: usize = 16;

/// One mount's view of the filesystem's items.
pub struct Client {
    rid: u64,
    md: Arc<MetaDev>,
    link: Arc<dyn ServerLink>,
    trans: Option<Trans>,
    /// Items changed in the open transaction (deletions included).
    items: BTreeMap<Key, Item>,
    roots: Roots,
    log_trees: Vec<LogTrees>,
    /// Each log tree's bloom block, read at its first use under these roots (a read does
    /// not go through the block cache for it again).
    blooms: Vec<std::sync::OnceLock<Arc<CachedBlock>>>,
    /// Committed items by covered key range (see [`ItemCache`]).
    cache: ItemCache,
    failed: bool,
    /// Reads retried because the roots they followed had gone stale.
    stale_retries: u64,
    /// Reads sample the roots again once they are this old (`None`: only at commits,
    /// stale retries and explicit refreshes).
    refresh_every: Option<std::time::Duration>,
    refreshed_at: std::time::Instant,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("rid", &format_args!("{:016x}", self.rid))
            .field("dirty_items", &self.items.len())
            .finish()
    }
}

impl Client {
    /// Greet the server as `rid` and open the first transaction.
    pub fn mount(
        md: Arc<MetaDev>,
        link: Arc<dyn ServerLink>,
        rid: u64,
    ) -> Result<Self, ClientError> {
        let resp = link.call(
            rid,
            Request::Greeting {
                fsid: md.fsid(),
                format_version: crate::format::layout::FORMAT_VERSION_MAX,
                rid,
                server_term: 0,
            },
        )?;
        if !matches!(resp, Response::Greeting { .. }) {
            return Err(ClientError::Protocol(format!("{resp:?} to a greeting")));
        }
        let mut c = Self {
            rid,
            md,
            link,
            trans: None,
            items: BTreeMap::new(),
            roots: Roots {
                fs_root: Default::default(),
                logs_root: Default::default(),
                srch_root: Default::default(),
                server_incarnation: 0,
                trees_merged: 0,
            },
            log_trees: Vec::new(),
            blooms: Vec::new(),
            cache: ItemCache::new(ITEM_CACHE_BYTES),
            failed: false,
            stale_retries: 0,
            refresh_every: None,
            refreshed_at: std::time::Instant::now(),
        };
        c.refresh_roots()?;
        Ok(c)
    }

    pub fn rid(&self) -> u64 {
        self.rid
    }

    pub fn meta_dev(&self) -> &Arc<MetaDev> {
        &self.md
    }

    /// The seq of the open transaction (0 when none is open).
    pub fn trans_seq(&self) -> u64 {
        self.trans.as_ref().map_or(0, |t| t.lt.get_trans_seq.get())
    }

    /// Open a transaction if none is open; its seq.
    ///
    /// Transactions open lazily, at the first change after a commit: an idle mount holds no
    /// open transaction, so it does not hold back the stable seq horizon of index walks.
    pub fn begin(&mut self) -> Result<u64, ClientError> {
        if self.failed {
            return Err(ClientError::Failed);
        }
        if self.trans.is_none() {
            self.open_trans()?;
        }
        Ok(self.trans_seq())
    }

    /// Let reads sample the roots again once they are older than `every` (`None`: only at
    /// commits, stale retries and explicit refreshes). A mount that only reads then picks up
    /// merges (one tree fewer to read) and other clients' commits within `every`.
    pub fn set_refresh_interval(&mut self, every: Option<std::time::Duration>) {
        self.refresh_every = every;
    }

    /// Reads retried so far because their roots had gone stale.
    pub fn stale_retries(&self) -> u64 {
        self.stale_retries
    }

    /// What the item cache has done, and holds now.
    pub fn item_cache_stats(&self) -> ItemCacheStats {
        self.cache.stats()
    }

    /// Bound the item cache to about `bytes` of memory (0 turns it off). Empties it.
    pub fn set_item_cache_bytes(&mut self, bytes: usize) {
        self.cache = ItemCache::new(bytes);
    }

    /// Items changed in the open transaction.
    pub fn dirty_items(&self) -> usize {
        self.items.len()
    }

    /// Whether the open transaction changed anything (items, blocks, allocators). `false`
    /// when none is open, or it is one [`Client::commit_and_open_next`] opened and nothing
    /// has used yet: committing it would make nothing durable that is not already.
    pub fn has_changes(&self) -> bool {
        self.trans
            .as_ref()
            .is_some_and(|t| !self.items.is_empty() || !t.untouched())
    }

    fn call(&self, req: Request) -> Result<Response, ClientError> {
        Ok(self.link.call(self.rid, req)?)
    }

    fn open_trans(&mut self) -> Result<(), ClientError> {
        let lt = match self.call(Request::GetLogTrees)? {
            Response::LogTrees(lt) => *lt,
            other => return Err(ClientError::Protocol(format!("{other:?} to GetLogTrees"))),
        };
        self.start_trans(lt)
    }

    /// Take up the transaction the server opened as `lt`.
    fn start_trans(&mut self, lt: LogTrees) -> Result<(), ClientError> {
        let avail = MetaList::load(&self.md, &lt.meta_avail)?;
        let freed = MetaList::load(&self.md, &lt.meta_freed)?;
        self.trans = Some(Trans {
            dirty: Dirty::new(lt.get_trans_seq.get()),
            avail_at_open: avail.len(),
            alloc: ListAlloc::new(avail, freed),
            cost: PutCost::new(&self.md, &lt.item_root)?,
            lt,
        });
        Ok(())
    }

    /// Metadata blocks the open transaction can still allocate for changes, beyond what
    /// committing it takes (`None`: no transaction is open).
    pub fn meta_room(&self) -> Option<u64> {
        let t = self.trans.as_ref()?;
        Some((t.alloc.avail.len() as u64).saturating_sub(commit_blocks(t)))
    }

    /// Whether changes that allocate up to `need` metadata blocks (directly, or through the
    /// log tree blocks their items take at commit) fit in the open transaction and still
    /// let it commit. With no transaction open, one is opened to see what the server gives
    /// it (between transactions the server may take back what an idle mount holds).
    ///
    /// When they do not fit, committing (the server takes back what the transaction freed
    /// and refills the avail list of the next) and asking again is the way to more room.
    pub fn has_meta_room(&mut self, need: u64) -> Result<bool, ClientError> {
        self.begin()?;
        Ok(self.meta_room().is_some_and(|room| room >= need))
    }

    /// Whether the roots last sampled name finalized log trees with items: a merge is due
    /// that may give metadata space back (what their removals freed).
    pub fn merges_pending(&self) -> bool {
        self.log_trees
            .iter()
            .any(|lt| lt.is_finalized() && !lt.item_root.is_empty())
    }

    /// Record a changed item in the open transaction (opened by the caller).
    fn change(&mut self, item: Item) {
        let (key, len) = (item.key, item.val.len());
        let old = self.items.insert(key, item);
        if let Some(t) = self.trans.as_mut() {
            match old {
                Some(old) => t.cost.resize(old.val.len(), len),
                None => t.cost.add(&key, len),
            }
        }
    }

    /// Forget every cached item (a lock they were read under is going away).
    pub fn drop_cached_items(&mut self) {
        self.cache.clear();
    }

    /// Sample the last committed roots and the log trees they name. The item cache is
    /// emptied if they show another client's commits (see `foreign_changes`).
    pub fn refresh_roots(&mut self) -> Result<(), ClientError> {
        self.use_roots(None)
    }

    /// Take up `given` roots (a commit's answer carried them), or those `GetRoots` answers.
    fn use_roots(&mut self, mut given: Option<Roots>) -> Result<(), ClientError> {
        // The server may rewrite logs_root's blocks (committing for another client) between
        // handing out the roots and this read of them: a stale block means newer roots.
        let mut tries = 0;
        let (roots, log_trees) = loop {
            let roots = match given.take() {
                Some(r) => r,
                None => match self.call(Request::GetRoots)? {
                    Response::Roots(r) => r,
                    other => return Err(ClientError::Protocol(format!("{other:?} to GetRoots"))),
                },
            };
            match read_log_trees(&self.md, None, &roots.logs_root) {
                Ok(lts) => break (roots, lts?),
                Err(e) => {
                    tries += 1;
                    if !e.is_stale() || tries >= STALE_RETRIES {
                        return Err(e.into());
                    }
                    self.stale_retries += 1;
                }
            }
        };
        if foreign_changes(
            self.rid,
            (&self.roots, &self.log_trees),
            (&roots, &log_trees),
        ) {
            self.cache.clear();
        }
        self.roots = roots;
        self.blooms = log_trees.iter().map(|_| Default::default()).collect();
        self.log_trees = log_trees;
        self.refreshed_at = std::time::Instant::now();
        Ok(())
    }

    /// Sample the roots again if they are older than the refresh interval.
    fn refresh_if_old(&mut self) -> Result<(), ClientError> {
        if self
            .refresh_every
            .is_some_and(|every| self.refreshed_at.elapsed() >= every)
        {
            self.refresh_roots()?;
        }
        Ok(())
    }

    /// Run a read, refreshing the roots and retrying when it hits a rewritten block.
    fn with_retry<R>(
        &mut self,
        mut f: impl FnMut(&Self) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        for _ in 0..STALE_RETRIES {
            match f(self) {
                Err(e) if e.is_stale() => {
                    self.stale_retries += 1;
                    self.refresh_roots()?
                }
                other => return other,
            }
        }
        Err(ClientError::StaleRetries(STALE_RETRIES))
    }

    /// Whether log tree `i` may hold items of `key`'s lock group.
    fn bloom_may_hold(&self, i: usize, key: &Key) -> Result<bool, ClientError> {
        let lt = &self.log_trees[i];
        if lt.bloom_ref.is_null() {
            return Ok(!lt.item_root.is_empty());
        }
        let block = match self.blooms[i].get() {
            Some(b) => b,
            None => {
                let b = self
                    .md
                    .read_ref(KIND_BLOOM, lt.bloom_ref)
                    .map_err(BtreeError::from)?;
                self.blooms[i].get_or_init(|| b)
            }
        };
        Ok(block_may_hold(block.data.as_slice(), &lock_start(key)))
    }

    /// The newest committed version of `key` (deletions included), ignoring open changes.
    fn read_committed(&self, key: &Key) -> Result<Option<Item>, ClientError> {
        let mut best = btree::lookup(&self.md, None, &self.roots.fs_root, key)?;
        for (i, lt) in self.log_trees.iter().enumerate() {
            if lt.item_root.is_empty() || !self.bloom_may_hold(i, key)? {
                continue;
            }
            if let Some(it) = btree::lookup(&self.md, None, &lt.item_root, key)? {
                if best.as_ref().is_none_or(|b| it.seq >= b.seq) {
                    best = Some(it);
                }
            }
        }
        Ok(best)
    }

    /// The current value of `key`, if it exists.
    pub fn get(&mut self, key: &Key) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self.get_item(key)?.map(|it| it.val))
    }

    /// The current item at `key` (never a deletion).
    pub fn get_item(&mut self, key: &Key) -> Result<Option<Item>, ClientError> {
        if let Some(it) = self.items.get(key) {
            return Ok(live(it.clone()));
        }
        self.refresh_if_old()?;
        if self.caches(key) {
            if let Some(v) = self.cache.get(key) {
                return Ok(v);
            }
            self.fill_around(key)?;
            if let Some(v) = self.cache.lookup(key) {
                return Ok(v);
            }
        }
        let key = *key;
        let found = self.with_retry(|c| c.read_committed(&key))?;
        Ok(found.and_then(live))
    }

    /// Whether reads of `key` go through the item cache: filesystem items, when it is on.
    fn caches(&self, key: &Key) -> bool {
        self.cache.enabled() && key.zone == crate::format::key::zone::FS
    }

    /// Read into the item cache every committed item of the range around `start` that one
    /// leaf of each tree holding `start`'s lock group covers (the whole group at most).
    fn fill_around(&mut self, start: &Key) -> Result<(), ClientError> {
        let s = *start;
        let (lo, hi, items) = self.with_retry(|c| {
            let (mut lo, mut hi) = (lock_start(&s), lock_end(&s));
            let (l, h) = btree::leaf_bounds(&c.md, None, &c.roots.fs_root, &s)?;
            (lo, hi) = (lo.max(l), hi.min(h));
            for (i, lt) in c.log_trees.iter().enumerate() {
                if lt.item_root.is_empty() || !c.bloom_may_hold(i, &s)? {
                    continue;
                }
                let (l, h) = btree::leaf_bounds(&c.md, None, &lt.item_root, &s)?;
                (lo, hi) = (lo.max(l), hi.min(h));
            }
            Ok((lo, hi, c.scan_merged(&lo, &hi, usize::MAX, false)?))
        })?;
        self.cache.fill(lo, hi, items);
        Ok(())
    }

    /// A range read answered from the item cache with the open transaction laid over it, if
    /// the cache covers `[start, end]`, or covers from `start` on and holds `limit` items
    /// first. Otherwise the first key it does not cover.
    fn scan_cached(&self, start: &Key, end: &Key, limit: usize) -> Result<Vec<Item>, Key> {
        let Some(upto) = self.cache.covered_upto(start, end) else {
            return Err(*start);
        };
        let mut out = Vec::new();
        let n = self.visit_cached(start, &upto, limit, |key, seq, val| {
            out.push(Item {
                key: *key,
                seq,
                flags: 0,
                val: val.to_vec(),
            })
        });
        if n == limit || upto == *end {
            Ok(out)
        } else {
            Err(upto.next().expect("below end"))
        }
    }

    /// Call `f` with each of up to `limit` live items in `[start, upto]`, a range the item
    /// cache covers, with the open transaction laid over the cache; the number of calls.
    fn visit_cached(
        &self,
        start: &Key,
        upto: &Key,
        limit: usize,
        mut f: impl FnMut(&Key, u64, &[u8]),
    ) -> usize {
        let mut n = 0;
        let mut cached = self.cache.items_in(start, upto).peekable();
        let mut dirty = self.items.range(*start..=*upto).peekable();
        while n < limit {
            let (ck, dk) = (cached.peek().map(|c| c.0), dirty.peek().map(|d| *d.0));
            let take_dirty = match (ck, dk) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(ck), Some(dk)) => {
                    if dk == ck {
                        // The open transaction's version wins.
                        cached.next();
                    }
                    dk <= ck
                }
            };
            if take_dirty {
                let (key, it) = dirty.next().expect("peeked");
                if it.flags & ITEM_FLAG_DELETION != 0 {
                    continue;
                }
                f(key, it.seq, &it.val);
            } else {
                let (key, seq, val) = cached.next().expect("peeked");
                f(&key, seq, val);
            }
            n += 1;
        }
        n
    }

    /// What [`Client::scan`] returns, handed to `f` one item at a time (key, value) instead
    /// of copied into a vector: the part of the range the item cache covers from `start` on
    /// is read in place, whatever `limit` is; the rest as `scan` reads it. The number of
    /// items visited.
    pub fn scan_each(
        &mut self,
        start: &Key,
        end: &Key,
        limit: usize,
        mut f: impl FnMut(&Key, &[u8]),
    ) -> Result<usize, ClientError> {
        if start > end || limit == 0 {
            return Ok(0);
        }
        self.refresh_if_old()?;
        let mut n = 0;
        let mut from = *start;
        if self.caches(start) {
            if let Some(upto) = self.cache.covered_upto(start, end) {
                self.cache.count(true);
                n = self.visit_cached(start, &upto, limit, |k, _, v| f(k, v));
                if n == limit || upto == *end {
                    return Ok(n);
                }
                // The rest of the range: the items of the covered part are the same in
                // either read, and nothing else reads or changes this client in between.
                from = upto.next().expect("below end");
            }
        }
        for it in self.scan(&from, end, limit - n)? {
            f(&it.key, &it.val);
            n += 1;
        }
        Ok(n)
    }

    /// The first existing item with key in `[start, end]`.
    pub fn next(&mut self, start: &Key, end: &Key) -> Result<Option<Item>, ClientError> {
        Ok(self.scan(start, end, 1)?.into_iter().next())
    }

    /// Every existing item with key in `[start, end]`, in order.
    pub fn range(&mut self, start: &Key, end: &Key) -> Result<Vec<Item>, ClientError> {
        self.scan(start, end, usize::MAX)
    }

    /// Up to `limit` existing items with keys in `[start, end]`, in order: one cursor per
    /// tree merged by key, the open transaction's items on top.
    pub fn scan(&mut self, start: &Key, end: &Key, limit: usize) -> Result<Vec<Item>, ClientError> {
        let (start, end) = (*start, *end);
        if start > end || limit == 0 {
            return Ok(Vec::new());
        }
        self.refresh_if_old()?;
        let cached = limit <= FILL_SMALL_SCAN
            || (limit == usize::MAX && lock_start(&start) == lock_start(&end));
        if cached && self.caches(&start) {
            let mut gap = match self.scan_cached(&start, &end, limit) {
                Ok(out) => {
                    self.cache.count(true);
                    return Ok(out);
                }
                Err(gap) => gap,
            };
            self.cache.count(false);
            // Fill the first range the cache lacks, a few times (a small range may span the
            // leaves of two fills).
            for _ in 0..4 {
                self.fill_around(&gap)?;
                gap = match self.scan_cached(&start, &end, limit) {
                    Ok(out) => return Ok(out),
                    Err(gap) => gap,
                };
            }
        }
        self.with_retry(|c| c.scan_merged(&start, &end, limit, true))
    }

    /// Up to `limit` live items in `[start, end]` from the trees, the open transaction's
    /// changes laid over them when `with_dirty`.
    fn scan_merged(
        &self,
        start: &Key,
        end: &Key,
        limit: usize,
        with_dirty: bool,
    ) -> Result<Vec<Item>, ClientError> {
        let mut out = Vec::new();
        if start > end || limit == 0 {
            return Ok(out);
        }
        let batch = limit.saturating_mul(2).clamp(8, 4096);
        // A range inside one lock group skips the log trees whose bloom filter lacks the
        // group, as point lookups do: such a tree holds no item of the range.
        let one_group = lock_start(start) == lock_start(end);
        let mut roots = vec![self.roots.fs_root];
        for (i, lt) in self.log_trees.iter().enumerate() {
            if !lt.item_root.is_empty() && (!one_group || self.bloom_may_hold(i, start)?) {
                roots.push(lt.item_root);
            }
        }
        // fs_root first: on equal seqs a log tree's version wins.
        let mut cursors: Vec<LeafCursor> = roots
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(|r| LeafCursor::with_batch(r, *start, *end, batch))
            .collect();
        let no_dirty = BTreeMap::new();
        let dirty_items = if with_dirty { &self.items } else { &no_dirty };
        let mut dirty = dirty_items.range(*start..=*end).peekable();
        loop {
            let mut min = dirty.peek().map(|(k, _)| **k);
            for c in cursors.iter_mut() {
                if let Some(it) = c.peek(&self.md, None)? {
                    min = Some(min.map_or(it.key, |m| m.min(it.key)));
                }
            }
            let Some(key) = min else {
                return Ok(out);
            };
            let mut winner: Option<Item> = match dirty.peek() {
                Some((k, it)) if **k == key => {
                    let it = (*it).clone();
                    dirty.next();
                    Some(it)
                }
                _ => None,
            };
            for c in cursors.iter_mut() {
                if let Some(it) = c.peek(&self.md, None)? {
                    if it.key == key
                        && winner
                            .as_ref()
                            .is_none_or(|w| w.seq <= it.seq && !dirty_items.contains_key(&key))
                    {
                        winner = Some(it.clone());
                    }
                }
                c.skip_key(&self.md, None, &key)?;
            }
            if let Some(it) = winner.and_then(live) {
                out.push(it);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
    }

    /// Set `key` to `val` in the open transaction.
    pub fn put(&mut self, key: Key, val: Vec<u8>, lock_write_seq: u64) -> Result<(), ClientError> {
        if val.len() > crate::format::layout::BTREE_MAX_VAL_LEN {
            return Err(BtreeError::ValueTooLarge(val.len()).into());
        }
        let seq = self.begin()?.max(lock_write_seq);
        self.change(Item {
            key,
            seq,
            flags: 0,
            val,
        });
        Ok(())
    }

    /// Delete `key` in the open transaction (a deletion item hides older versions).
    pub fn delete(&mut self, key: Key, lock_write_seq: u64) -> Result<(), ClientError> {
        let seq = self.begin()?.max(lock_write_seq);
        self.change(Item {
            key,
            seq,
            flags: ITEM_FLAG_DELETION,
            val: Vec::new(),
        });
        Ok(())
    }

    /// Allocate up to `want` contiguous data blocks for file contents.
    pub fn alloc_data(&mut self, want: u64) -> Result<Option<(u64, u64)>, ClientError> {
        self.begin()?;
        let t = self.trans.as_mut().ok_or(ClientError::Failed)?;
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut t.dirty,
            alloc: &mut t.alloc,
        };
        Ok(extent::alloc_extent(&mut w, &mut t.lt.data_avail, want)?)
    }

    /// Free data blocks; they become reusable once this transaction is durable.
    pub fn free_data(&mut self, start: u64, len: u64) -> Result<(), ClientError> {
        self.begin()?;
        let t = self.trans.as_mut().ok_or(ClientError::Failed)?;
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut t.dirty,
            alloc: &mut t.alloc,
        };
        Ok(extent::free_extent(
            &mut w,
            &mut t.lt.data_freed,
            start,
            len,
        )?)
    }

    /// Count inodes created (+) or deleted (-) in this transaction.
    pub fn add_inode_count(&mut self, delta: i64) {
        if let Some(t) = self.trans.as_mut() {
            let v = t.lt.inode_count_delta.get() as i64 + delta;
            t.lt.inode_count_delta = (v as u64).into();
        }
    }

    /// Unused inode numbers from the server: `(first, count)`.
    ///
    /// The server hands every number out once (its next inode number only grows), so no
    /// tree holds an item of these inodes: the item cache covers their keys as empty from
    /// now on, and this mount's commits fill them in. Reads of the files this mount creates
    /// then never miss, even after merges moved their items into leaves it never read.
    pub fn alloc_inodes(&mut self, count: u64) -> Result<(u64, u64), ClientError> {
        let (first, count) = match self.call(Request::AllocInodes { count })? {
            Response::AllocInodes { first, count } => (first, count),
            other => return Err(ClientError::Protocol(format!("{other:?} to AllocInodes"))),
        };
        if self.cache.enabled() && count > 0 {
            let last = first.saturating_add(count - 1);
            let mut ino = first;
            loop {
                // One covered range per lock group, like every fill.
                let to = (ino | (crate::lock_names::INODES_PER_LOCK - 1)).min(last);
                self.cache.fill(
                    Key::new(zone::FS, ino, 0, 0, 0, 0),
                    Key::new(zone::FS, to, u8::MAX, u64::MAX, u64::MAX, u8::MAX),
                    Vec::new(),
                );
                if to >= last {
                    break;
                }
                ino = to + 1;
            }
        }
        Ok((first, count))
    }

    pub fn last_seq(&self) -> Result<u64, ClientError> {
        match self.call(Request::GetLastSeq)? {
            Response::LastSeq(s) => Ok(s),
            other => Err(ClientError::Protocol(format!("{other:?} to GetLastSeq"))),
        }
    }

    pub fn statfs(&self) -> Result<Statfs, ClientError> {
        match self.call(Request::Statfs)? {
            Response::Statfs(s) => Ok(s),
            other => Err(ClientError::Protocol(format!("{other:?} to Statfs"))),
        }
    }

    /// Write the open transaction durably. Returns the committed transaction's seq, or
    /// `None` if no transaction was open. The next change opens the next transaction.
    pub fn commit(&mut self) -> Result<Option<u64>, ClientError> {
        self.sync()
    }

    /// Commit the open transaction even if it changed nothing (the server asked for it, to
    /// finalize the client's log tree; or it is an empty one [`Client::commit_and_open_next`]
    /// opened, which this closes). Leaves no transaction open.
    pub fn sync(&mut self) -> Result<Option<u64>, ClientError> {
        self.commit_with(false)
    }

    /// Write the open transaction durably and open the next one in the same server commit
    /// (`CommitLogTreesOpenNext`): three device flushes (two when the server shares this
    /// mount's device object and flushes the blocks itself) and one request to the server
    /// instead of five flushes and three requests for a commit and the next change's
    /// `GetLogTrees`. For callers that expect more changes soon: the open transaction holds
    /// back the stable seq horizon until the next commit, so whoever uses this must also
    /// [`Client::sync`] a mount that went idle. Returns the committed seq; `None` if no
    /// transaction was open or it changed nothing (it then stays open as it is).
    pub fn commit_and_open_next(&mut self) -> Result<Option<u64>, ClientError> {
        if self.trans.is_some() && !self.has_changes() {
            return if self.failed {
                Err(ClientError::Failed)
            } else {
                Ok(None)
            };
        }
        self.commit_with(true)
    }

    fn commit_with(&mut self, open_next: bool) -> Result<Option<u64>, ClientError> {
        if self.failed {
            return Err(ClientError::Failed);
        }
        if self.trans.is_none() {
            return Ok(None);
        }
        match self.commit_inner(open_next) {
            Ok(seq) => Ok(Some(seq)),
            Err(e) => {
                tracing::error!("commit failed, the mount must be restarted: {e}");
                self.failed = true;
                Err(e)
            }
        }
    }

    fn commit_inner(&mut self, open_next: bool) -> Result<u64, ClientError> {
        let mut t = self.trans.take().ok_or(ClientError::Failed)?;
        let seq = t.lt.get_trans_seq.get();
        if self.items.is_empty() && t.untouched() {
            // Nothing to write: the record the server stored at open names durable blocks
            // only, and committing it as it is closes the transaction (no client flush).
            return self.send_commit(t.lt, open_next, false).map(|()| seq);
        }
        let (bound, avail_before) = (commit_blocks(&t), t.alloc.avail.len() as u64);
        let mut root = t.lt.item_root;
        let mut max_seq = t.lt.max_item_seq.get();
        let mut w = BtreeWriter {
            md: &self.md,
            dirty: &mut t.dirty,
            alloc: &mut t.alloc,
        };
        for it in self.items.values() {
            max_seq = max_seq.max(it.seq);
            w.put(&mut root, it.clone())?;
        }

        // The bloom filter: the old bits plus the lock groups of every item written now.
        // A commit whose lock groups are all in the filter already keeps the old block.
        if !self.items.is_empty() {
            let hdr = core::mem::size_of::<BloomBlockHeader>();
            let mut buf = BlockBuf::zeroed(BlockSize::Large.bytes());
            if !t.lt.bloom_ref.is_null() {
                let old = self
                    .md
                    .read_ref(KIND_BLOOM, t.lt.bloom_ref)
                    .map_err(BtreeError::from)?;
                buf.as_mut_slice().copy_from_slice(old.data.as_slice());
            }
            let (head, bits) = buf.as_mut_slice().split_at_mut(hdr);
            let old_set = BloomBlockHeader::read_from_bytes(head)
                .expect("header size")
                .total_set
                .get();
            let mut set = old_set;
            for key in self.items.keys() {
                for b in bloom_bits(&lock_start(key)) {
                    set += set_bit(bits, b) as u64;
                }
            }
            if set != old_set || t.lt.bloom_ref.is_null() {
                let mut h = BloomBlockHeader::read_from_bytes(head).expect("header size");
                h.total_set = set.into();
                head.copy_from_slice(h.as_bytes());
                if !t.lt.bloom_ref.is_null() {
                    w.alloc.free_meta(t.lt.bloom_ref.blkno.get())?;
                }
                let blkno = w.alloc.alloc_meta()?;
                self.md
                    .write_block(KIND_BLOOM, blkno, seq, buf)
                    .map_err(BtreeError::from)?;
                t.lt.bloom_ref = BlockRef::new(blkno, seq);
            }
        }

        t.dirty.write(&self.md, seq)?;
        let (avail, freed) = t.alloc.write_lists(&self.md, seq)?;
        // With `CommitLogTreesOpenNext` the blocks may be left to the server's flush (it
        // flushes before its super block names them) when the server shares this device
        // object; it says so otherwise, and they are flushed then (`send_commit`).
        if !open_next {
            self.md.flush().map_err(BtreeError::from)?;
        }
        let took = avail_before.saturating_sub(t.alloc.avail.len() as u64);
        debug_assert!(
            took <= bound,
            "the commit took {took} metadata blocks, beyond its bound of {bound}"
        );

        t.lt.item_root = root;
        t.lt.max_item_seq = max_seq.into();
        t.lt.meta_avail = avail;
        t.lt.meta_freed = freed;
        self.send_commit(t.lt, open_next, open_next)?;
        Ok(seq)
    }

    /// Send the written transaction's record; then the committed items are the item cache's,
    /// the roots are sampled again, and with `open_next` the next transaction is open.
    /// `unflushed`: this transaction's blocks are written but not flushed (only with
    /// `open_next`).
    fn send_commit(
        &mut self,
        lt: LogTrees,
        open_next: bool,
        unflushed: bool,
    ) -> Result<(), ClientError> {
        let (next, roots) = if open_next {
            let request = |unflushed: u64| Request::CommitLogTreesOpenNext {
                lt: Box::new(lt),
                unflushed,
            };
            let domain = if unflushed { self.md.flush_domain() } else { 0 };
            let answer = match self.call(request(domain)) {
                Err(ClientError::Server(ServerError::FlushFirst)) if unflushed => {
                    // A server in another process (or on another host, after a failover):
                    // make the blocks durable here and send again.
                    self.md.flush().map_err(BtreeError::from)?;
                    self.call(request(0))?
                }
                other => other?,
            };
            match answer {
                Response::CommittedNext { next, roots } => (next, Some(roots)),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "{other:?} to CommitLogTreesOpenNext"
                    )))
                }
            }
        } else {
            match self.call(Request::CommitLogTrees(Box::new(lt)))? {
                Response::Committed => (None, None),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "{other:?} to CommitLogTrees"
                    )))
                }
            }
        };
        for it in self.items.values() {
            self.cache.committed(it);
        }
        self.items.clear();
        self.use_roots(roots)?;
        if let Some(next) = next {
            if let Err(e) = self.start_trans(*next) {
                // The commit is durable; the next change asks for the transaction again
                // (`GetLogTrees` answers the one the server opened).
                tracing::warn!("taking up the next transaction failed: {e}");
            }
        }
        Ok(())
    }

    /// Commit what is open and leave: the server reclaims this mount's state.
    pub fn unmount(mut self) -> Result<(), ClientError> {
        self.commit()?;
        match self.call(Request::Farewell)? {
            Response::FarewellDone => Ok(()),
            other => Err(ClientError::Protocol(format!("{other:?} to Farewell"))),
        }
    }
}

/// Whether the `new` roots and log trees may show changes by other clients that the `old`
/// ones did not: a tree of another rid that is new with items or whose items changed, one
/// that left the forest before it was finalized, or more trees merged than the trees with
/// items that this client saw leave (a tree it never saw was committed and merged in
/// between), or another server. Merges of trees it saw finalized (fs_root changing, the
/// trees trimmed as merged and then leaving) change nothing a read returns, and this
/// client's own commits update its item cache themselves.
fn foreign_changes(rid: u64, old: (&Roots, &[LogTrees]), new: (&Roots, &[LogTrees])) -> bool {
    let ((old_roots, old), (new_roots, new)) = (old, new);
    if old_roots.server_incarnation != new_roots.server_incarnation {
        return true;
    }
    let same = |a: &LogTrees, b: &LogTrees| a.rid == b.rid && a.nr == b.nr;
    let changed = new
        .iter()
        .filter(|lt| lt.rid.get() != rid && !lt.item_root.is_empty())
        .any(|lt| {
            // A tree seen finalized changes only by a merge giving back what it has
            // merged into fs_root (`Server::trim_merged_inputs`): reads return the same.
            !old.iter().any(|o| {
                same(o, lt)
                    && (o.item_root == lt.item_root || (o.is_finalized() && lt.is_finalized()))
            })
        });
    let mut seen_leave = 0u64;
    for o in old.iter().filter(|o| !o.item_root.is_empty()) {
        if new.iter().any(|lt| same(o, lt)) {
            continue;
        }
        if o.rid.get() != rid && !o.is_finalized() {
            return true;
        }
        seen_leave += 1;
    }
    let merged = new_roots.trees_merged.wrapping_sub(old_roots.trees_merged);
    changed || merged > seen_leave
}

fn live(it: Item) -> Option<Item> {
    (it.flags & ITEM_FLAG_DELETION == 0).then_some(it)
}
