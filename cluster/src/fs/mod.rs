//! The POSIX filesystem on top of the metadata engine: one [`Fs`] handle per mount, used by
//! the NFS export, the HTTP API and the archive daemon alike. Nothing here knows about NFS or
//! HTTP.
//!
//! Every operation takes the cluster locks it needs on the lock groups it touches (in key
//! order), changes items in the client's open transaction, and updates the `meta_seq` /
//! `data_seq` index items of the inodes it changed. File contents live on the data device in
//! extents allocated from the client's data allocator; data blocks are flushed before the
//! transaction that references them commits.
//!
//! Submodules: [`types`] (attributes, errors), `inode` (inode items and indexes), `dir`
//! (entries, lookup, readdir, rename), `data` (read, write, truncate, extents), `xattr`,
//! `archive` (data_version, release, stage, data waiting).

mod archive;
mod data;
mod dir;
mod inode;
pub mod types;
mod xattr;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

use scoutgw_blockdev::{BlockDevice, DataDev, MetaDev};

use crate::client::{Client, ClientError};
use crate::format::inode::inode_key;
use crate::format::Key;
use crate::lock::{Lock, LockClient, LockMode};
use crate::msg::ServerLink;

pub use archive::{DataWaiter, StatMore};
pub use data::MAX_FILE_SIZE;
pub use types::*;
pub use xattr::XattrSet;

/// Tunables of a mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Commit the open transaction once this many items are dirty.
    pub max_dirty_items: usize,
    /// How long a read of offline data waits for staging before failing with `Offline`.
    pub data_wait_timeout: Duration,
    /// Inode numbers fetched from the server per batch.
    pub ino_batch: u64,
    /// Reads sample the committed roots again once they are this old, so a mount that only
    /// reads stops reading log trees merged since (`None`: only at its commits).
    pub roots_refresh: Option<Duration>,
    /// Bound of the mount's item cache of committed items, in bytes (0 turns it off).
    pub item_cache_bytes: usize,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            max_dirty_items: 50_000,
            data_wait_timeout: Duration::from_secs(30),
            ino_batch: 1024,
            roots_refresh: Some(Duration::from_millis(100)),
            item_cache_bytes: 256 << 20,
        }
    }
}

/// State behind the mount's mutex.
pub(crate) struct Inner {
    pub client: Client,
    pub ino_next: u64,
    pub ino_end: u64,
    /// Data blocks written since the last commit (flush the data device before committing).
    pub data_dirty: bool,
    /// The lock client's grant generation when the roots were last sampled.
    pub seen_grant_gen: u64,
    /// What the running operation reserved (checked when it ends, in debug builds).
    pub reserved: Option<Reserved>,
}

/// Room an operation reserved with [`Fs::reserve_meta`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reserved {
    /// The open transaction's seq then (a commit since makes the check moot).
    trans_seq: u64,
    /// Its room then.
    room: u64,
    /// What the operation said it needs.
    need: u64,
}

/// A mounted filesystem.
pub struct Fs {
    inner: Mutex<Inner>,
    data: DataDev,
    locks: Arc<dyn LockClient>,
    opts: FsOptions,
    waiters: archive::Waiters,
    wake: Condvar,
    /// Held shared by reads of data blocks done outside the mount lock, and exclusively by
    /// commits: a commit is what lets freed blocks be handed out again, so a block a read
    /// planned cannot be reused before the read is done.
    data_readers: RwLock<()>,
    /// A commit failed: the open transaction's changes are lost, so the mount answers
    /// nothing any more (it could only answer from state the cluster never saw) and gives
    /// up its locks at once when other nodes want them.
    failed: AtomicBool,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").finish_non_exhaustive()
    }
}

/// What a commit leaves open (see [`Fs::sync_and_continue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterCommit {
    /// No transaction: the next change opens one, and an idle mount holds back nothing.
    Close,
    /// The next transaction, opened in the same server commit: more changes are coming
    /// (the operation goes on, or the caller is a busy sync export).
    OpenNext,
}

/// How an operation's changes use metadata space (see [`Fs::reserve_meta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpaceUse {
    /// It may store more than it removes (creates, links, writes, xattrs, staging): it is
    /// refused with ENOSPC while fewer than [`BOUNDED_RESERVE`] blocks would be left after
    /// it, so that a full filesystem can still be cleaned up.
    Grows,
    /// It stores little or removes (unlink, rmdir, rename, attribute changes, truncates,
    /// xattr removal, release): it may use that reserve.
    Bounded,
}

/// Metadata blocks that one operation's changes can take, at most, in a transaction: the
/// log tree blocks its items can touch (an inode, a directory entry and its index items,
/// up to a 64 KiB xattr) and the data allocator blocks a write or truncate can change.
/// Longer operations (a file's removal, a write or truncate over many extents) reserve
/// more as they go.
pub(crate) const OP_META_BLOCKS: u64 = 32;
/// Room that operations which grow what is stored leave for [`SpaceUse::Bounded`] ones:
/// enough for a few of them, and for their transaction to commit.
pub(crate) const BOUNDED_RESERVE: u64 = 96;
/// How long an operation short of metadata room waits for pending merges to give space
/// back (removals free their blocks only when merged) before it fails with ENOSPC.
pub const SPACE_WAIT: Duration = Duration::from_secs(3);
/// How often an operation waiting for metadata room tries again.
const SPACE_WAIT_POLL: Duration = Duration::from_millis(20);

/// Locks held by one operation, released on drop.
pub(crate) struct Held<'a> {
    locks: &'a dyn LockClient,
    held: Vec<Lock>,
}

impl Held<'_> {
    /// The greatest write_seq of the held locks (the item seq floor).
    pub fn write_seq(&self) -> u64 {
        self.held.iter().map(|l| l.write_seq).max().unwrap_or(0)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for l in &self.held {
            self.locks.unlock(l);
        }
    }
}

impl Fs {
    /// Mount: greet the server as `rid` and open the first transaction.
    pub fn mount(
        md: Arc<MetaDev>,
        data_dev: Arc<dyn BlockDevice>,
        link: Arc<dyn ServerLink>,
        locks: Arc<dyn LockClient>,
        rid: u64,
        opts: FsOptions,
    ) -> Result<Self, FsError> {
        let mut client = Client::mount(md, link, rid)?;
        client.set_refresh_interval(opts.roots_refresh);
        client.set_item_cache_bytes(opts.item_cache_bytes);
        Ok(Self {
            inner: Mutex::new(Inner {
                client,
                ino_next: 0,
                ino_end: 0,
                data_dirty: false,
                seen_grant_gen: 0,
                reserved: None,
            }),
            data: DataDev::new(data_dev),
            locks,
            opts,
            waiters: archive::Waiters::default(),
            wake: Condvar::new(),
            data_readers: RwLock::new(()),
            failed: AtomicBool::new(false),
        })
    }

    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A shared guard for data reads done without the mount lock (see `data_readers`).
    pub(crate) fn data_readers(&self) -> RwLockReadGuard<'_, ()> {
        self.data_readers.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn data_dev(&self) -> &DataDev {
        &self.data
    }

    pub(crate) fn opts(&self) -> &FsOptions {
        &self.opts
    }

    /// Lock the groups of `inos` (deduplicated, in key order) in `mode`.
    pub(crate) fn lock_inodes(
        &self,
        inner: &mut Inner,
        inos: &[u64],
        mode: LockMode,
    ) -> Result<Held<'_>, FsError> {
        let mut keys: Vec<Key> = inos
            .iter()
            .map(|i| crate::lock_names::lock_start(&inode_key(*i)))
            .collect();
        keys.sort();
        keys.dedup();
        self.lock_keys(inner, &keys, mode)
    }

    /// Lock the groups of `inos` for writing, then make sure the transaction has room for
    /// the operation's changes (see [`Fs::reserve_meta`]). Locks first: an operation that
    /// unwinds to wait for a grant has not opened a transaction for nothing (an open
    /// transaction holds back the stable seq, and is committed by every invalidation).
    pub(crate) fn lock_inodes_to_change(
        &self,
        inner: &mut Inner,
        inos: &[u64],
        space: SpaceUse,
    ) -> Result<Held<'_>, FsError> {
        let held = self.lock_inodes(inner, inos, LockMode::Write)?;
        self.reserve_meta(inner, space, OP_META_BLOCKS)?;
        Ok(held)
    }

    /// Make sure the open transaction can take `need` more metadata blocks of changes (and
    /// [`BOUNDED_RESERVE`] more for an operation that [`SpaceUse::Grows`]) and still commit:
    /// if not, commit now, so that the next transaction opens with the blocks this one freed
    /// and an avail list the server refilled. If even that is not enough the metadata
    /// device is full: [`FsError::NoSpace`], before the operation changed anything.
    ///
    /// Called before an operation changes anything, or between consistent steps of a long
    /// one: the commit it may make must not capture half an operation.
    pub(crate) fn reserve_meta(
        &self,
        inner: &mut Inner,
        space: SpaceUse,
        need: u64,
    ) -> Result<(), FsError> {
        let room = need
            + match space {
                SpaceUse::Grows => BOUNDED_RESERVE,
                SpaceUse::Bounded => 0,
            };
        if !inner.client.has_meta_room(room)? {
            self.commit_locked(inner, AfterCommit::OpenNext)?;
            if !inner.client.has_meta_room(room)? {
                // The next transaction opened short too, or (unchanged) was not committed
                // at all: close it, so that the next one is opened, and refilled, now.
                self.commit_locked(inner, AfterCommit::Close)?;
            }
            if !inner.client.has_meta_room(room)? {
                // Removals give their space back only once merged: while a merge is due,
                // wait for it (see `Fs::retry`) rather than fail at once.
                return Err(if inner.client.merges_pending() {
                    FsError::SpaceWait
                } else {
                    FsError::NoSpace
                });
            }
        }
        if cfg!(debug_assertions) {
            inner.reserved = inner.client.meta_room().map(|room| Reserved {
                trans_seq: inner.client.trans_seq(),
                room,
                need,
            });
        }
        Ok(())
    }

    /// Use held grants of `keys` in `mode`. A grant not held is [`FsError::LockWait`]: the
    /// operation unwinds (it has changed nothing yet) and [`Fs::retry`] waits for the grant
    /// outside the mount mutex. After new grants arrived the roots are sampled again, so
    /// items other nodes committed before giving up their locks are seen.
    pub(crate) fn lock_keys(
        &self,
        inner: &mut Inner,
        keys: &[Key],
        mode: LockMode,
    ) -> Result<Held<'_>, FsError> {
        let mut held = Held {
            locks: &*self.locks,
            held: Vec::new(),
        };
        let seq = inner.client.trans_seq();
        for k in keys {
            match self
                .locks
                .try_lock(k, mode, seq)
                .map_err(|e| FsError::Io(e.to_string()))?
            {
                Some(l) => held.held.push(l),
                None => return Err(FsError::LockWait { key: *k, mode }),
            }
        }
        let gen = self.locks.grant_gen();
        if gen != inner.seen_grant_gen {
            inner.client.refresh_roots()?;
            inner.seen_grant_gen = gen;
        }
        Ok(held)
    }

    /// Run an operation, waiting for lock grants it lacked and running it again.
    pub(crate) fn retry<R>(
        &self,
        mut op: impl FnMut() -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        let mut space_wait_since = None;
        loop {
            if self.is_failed() {
                return Err(ClientError::Failed.into());
            }
            match op() {
                Err(FsError::LockWait { key, mode }) => self
                    .locks
                    .wait_grant(&key, mode)
                    .map_err(|e| FsError::Io(e.to_string()))?,
                Err(FsError::SpaceWait) => {
                    let since = *space_wait_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= SPACE_WAIT {
                        return Err(FsError::NoSpace);
                    }
                    std::thread::sleep(SPACE_WAIT_POLL);
                }
                other => return other,
            }
        }
    }

    /// Give up cached state under a lock another node wants (called by the lock client's
    /// invalidation worker, never under the mount mutex): once no operation runs, commit
    /// the open transaction if the old mode could write (so the other node reads what this
    /// one wrote), wait for reads in flight, and unless only downgrading to read, forget
    /// remembered committed items.
    pub fn invalidate_lock(
        &self,
        _start: &Key,
        _end: &Key,
        old: LockMode,
        new: LockMode,
    ) -> Result<(), FsError> {
        let mut inner = self.inner();
        if self.is_failed() {
            // Nothing of the lost transaction can be written, and this mount reads nothing
            // again: let the other node have the lock (once no data read is in flight).
            drop(self.data_readers.write().unwrap_or_else(|p| p.into_inner()));
            inner.client.drop_cached_items();
            return Ok(());
        }
        // A transaction that changed nothing (opened by a commit that went on to the next,
        // `Fs::sync_and_continue`) holds nothing the other node must read: it stays open,
        // costing no commit, as when no transaction was open.
        if matches!(old, LockMode::Write | LockMode::WriteOnly) && inner.client.has_changes() {
            self.commit_locked(&mut inner, AfterCommit::Close)?;
        } else {
            drop(self.data_readers.write().unwrap_or_else(|p| p.into_inner()));
        }
        if new == LockMode::Null {
            inner.client.drop_cached_items();
        }
        Ok(())
    }

    /// Commit if the open transaction has grown past its limit. Every changing operation
    /// ends here: in debug builds, check that it took no more room than it reserved.
    pub(crate) fn maybe_commit(&self, inner: &mut Inner) -> Result<(), FsError> {
        if let (Some(r), Some(after)) = (inner.reserved.take(), inner.client.meta_room()) {
            let took = r.room.saturating_sub(after);
            debug_assert!(
                inner.client.trans_seq() != r.trans_seq || took <= r.need,
                "an operation took {took} metadata blocks of room where it reserved {}",
                r.need
            );
        }
        if inner.client.dirty_items() >= self.opts.max_dirty_items {
            self.commit_locked(inner, AfterCommit::OpenNext)?;
        }
        Ok(())
    }

    /// Make data durable, then the metadata that references it.
    pub(crate) fn commit_locked(
        &self,
        inner: &mut Inner,
        after: AfterCommit,
    ) -> Result<(), FsError> {
        let _no_readers = self.data_readers.write().unwrap_or_else(|p| p.into_inner());
        if inner.data_dirty {
            self.data.flush()?;
            inner.data_dirty = false;
        }
        let res = match after {
            AfterCommit::Close => inner.client.commit(),
            AfterCommit::OpenNext => inner.client.commit_and_open_next(),
        };
        if let Err(e) = res {
            self.failed.store(true, Ordering::SeqCst);
            return Err(e.into());
        }
        Ok(())
    }

    /// Whether a commit failed: every operation fails with [`FsError::Io`] from then on,
    /// until the node mounts again.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Statistics of the mount's metadata block cache.
    pub fn meta_cache_stats(&self) -> scoutgw_blockdev::CacheStats {
        self.inner().client.meta_dev().cache_stats()
    }

    /// Statistics of the mount's item cache.
    pub fn item_cache_stats(&self) -> crate::item_cache::ItemCacheStats {
        self.inner().client.item_cache_stats()
    }

    /// Make every change so far durable (fsync of any file, `sync`). Leaves no transaction
    /// open: this is also how a mount that [`Fs::sync_and_continue`]d closes the empty
    /// transaction that holds back the stable seq horizon (the node's periodic commit).
    pub fn sync(&self) -> Result<(), FsError> {
        let mut inner = self.inner();
        self.commit_locked(&mut inner, AfterCommit::Close)
    }

    /// [`Fs::sync`] for a caller that expects more changes soon (a sync NFS export): the
    /// next transaction is opened in the same server commit (three device flushes, or two
    /// when the server shares the mount's device object, and one
    /// request to the server instead of five and three, counting the next change's
    /// `GetLogTrees`), and stays open until the next commit. A mount that then goes idle
    /// holds back the stable seq horizon of index walks until something calls
    /// [`Fs::sync`] (the node's periodic commit, a lock invalidation, unmount). Does
    /// nothing when the open transaction changed nothing.
    pub fn sync_and_continue(&self) -> Result<(), FsError> {
        let mut inner = self.inner();
        self.commit_locked(&mut inner, AfterCommit::OpenNext)
    }

    /// Make a file's changes durable. Commits the whole transaction.
    pub fn fsync(&self, ino: u64) -> Result<(), FsError> {
        let _ = ino;
        self.sync()
    }

    /// Space totals.
    pub fn statfs(&self) -> Result<FsStat, FsError> {
        let inner = self.inner();
        let s = inner.client.statfs()?;
        Ok(FsStat {
            fsid: s.fsid,
            block_size: 4096,
            total_blocks: s.total_data_blocks,
            free_blocks: s.free_data_blocks,
            total_meta_blocks: s.total_meta_blocks,
            free_meta_blocks: s.free_meta_blocks,
            // Inode numbers are 64-bit and never reused; report what metadata space allows.
            total_inodes: s.total_meta_blocks.saturating_mul(64),
            free_inodes: s.free_meta_blocks.saturating_mul(64),
            used_inodes: s.inode_count,
        })
    }

    /// Commit what is open and leave the cluster.
    pub fn unmount(self) -> Result<(), FsError> {
        let mut inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        if inner.data_dirty {
            self.data.flush()?;
        }
        inner.client.commit()?;
        inner.client.unmount()?;
        Ok(())
    }
}
