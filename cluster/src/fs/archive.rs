//! Archive primitives: `data_version`, release, stage, readers waiting for offline data, and
//! `stat_more`.
//!
//! `data_version` changes with every change of a file's contents or size, never with release
//! or stage; release and stage only act when the caller's `data_version` still matches, so an
//! archive agent never releases data it has not copied or stages over newer writes.

use std::time::{Duration, Instant};

use super::data::{cut_extent, extents_in, put_extent, Extent, ReadBlocked, BLOCK};
use super::inode::{read_inode, write_inode, Change};
use super::types::{FileType, FsError, Time};
use super::{Fs, SpaceUse, OP_META_BLOCKS};

/// A reader blocked on offline data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DataWaiter {
    pub id: u64,
    pub ino: u64,
    /// The offline logical 4 KiB block it needs.
    pub block: u64,
    pub op: &'static str,
    /// Seconds it has waited.
    pub waited_secs: f64,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    ino: u64,
    block: u64,
    since: Instant,
    /// Set by `data_wait_err`: the error the reader fails with.
    error: Option<i32>,
}

/// The registry of waiting readers.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    list: std::sync::Mutex<(u64, Vec<Waiting>)>,
}

/// Archive attributes of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatMore {
    pub ino: u64,
    pub data_version: u64,
    pub online_blocks: u64,
    pub offline_blocks: u64,
    pub meta_seq: u64,
    pub data_seq: u64,
    pub crtime: Time,
    pub size: u64,
}

fn check_version(found: u64, expected: u64) -> Result<(), FsError> {
    if found != expected {
        return Err(FsError::DataVersion { expected, found });
    }
    Ok(())
}

impl Fs {
    /// Read up to `len` bytes at `off`. Offline data makes the reader wait (listed by
    /// [`Fs::data_waiting`]) until it is staged, an error is set for it, or the mount's
    /// data-wait timeout passes (then [`FsError::Offline`]).
    pub fn read(&self, ino: u64, off: u64, len: usize) -> Result<Vec<u8>, FsError> {
        self.read_wait(ino, off, len, self.opts().data_wait_timeout)
    }

    /// [`Fs::read`] with an explicit limit on waiting for offline data.
    pub fn read_wait(
        &self,
        ino: u64,
        off: u64,
        len: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, FsError> {
        self.retry(|| {
            let deadline = Instant::now() + timeout;
            let mut registered: Option<u64> = None;
            let mut inner = self.inner();
            let result = loop {
                match self.read_plan(&mut inner, ino, off, len) {
                    Ok(plan) => {
                        // The device reads run without the mount lock, so READs overlap on the
                        // disk; the readers guard holds commits (and so any reuse of the
                        // planned blocks) off until they are done.
                        let readers = self.data_readers();
                        drop(inner);
                        let out = plan.run(self.data_dev());
                        drop(readers);
                        if let Some(id) = registered {
                            self.waiters.remove(id);
                        }
                        return out;
                    }
                    Err(ReadBlocked::Err(e)) => break Err(e),
                    Err(ReadBlocked::Offline(block)) => {
                        let id = match registered {
                            Some(id) => {
                                if let Some(errno) = self.waiters.error_of(id) {
                                    break Err(FsError::Errno(errno));
                                }
                                id
                            }
                            None => {
                                let id = self.waiters.add(ino, block);
                                registered = Some(id);
                                id
                            }
                        };
                        let now = Instant::now();
                        if now >= deadline {
                            break Err(FsError::Offline);
                        }
                        let (g, _) = self
                            .wake
                            .wait_timeout(inner, deadline - now)
                            .unwrap_or_else(|p| p.into_inner());
                        inner = g;
                        if let Some(errno) = self.waiters.error_of(id) {
                            break Err(FsError::Errno(errno));
                        }
                    }
                }
            };
            if let Some(id) = registered {
                self.waiters.remove(id);
            }
            result
        })
    }

    /// Readers currently waiting for offline data.
    pub fn data_waiting(&self) -> Vec<DataWaiter> {
        self.waiters.snapshot()
    }

    /// Fail the readers waiting on blocks `[block, block + count)` of `ino` with `errno`.
    /// Returns how many were failed.
    pub fn data_wait_err(&self, ino: u64, block: u64, count: u64, errno: i32) -> usize {
        let n = self.waiters.set_error(ino, block, count, errno);
        let _g = self.inner();
        self.wake.notify_all();
        n
    }

    /// Archive attributes of `ino`.
    pub fn stat_more(&self, ino: u64) -> Result<StatMore, FsError> {
        let a = self.getattr(ino)?;
        Ok(StatMore {
            ino,
            data_version: a.data_version,
            online_blocks: a.online_blocks,
            offline_blocks: a.offline_blocks,
            meta_seq: a.meta_seq,
            data_seq: a.data_seq,
            crtime: a.crtime,
            size: a.size,
        })
    }

    /// Turn the online data of `[off, off + len)` offline and free its blocks, if the file's
    /// data_version is still `data_version`. `off` must be block aligned; `len` too unless the
    /// range reaches the end of the file.
    pub fn release(&self, ino: u64, off: u64, len: u64, data_version: u64) -> Result<(), FsError> {
        self.retry(|| {
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Bounded)?;
            let wseq = held.write_seq();
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            if FileType::from_mode(i.mode.get()) != Some(FileType::Regular) {
                return Err(FsError::Invalid("release of a non-regular file"));
            }
            check_version(i.data_version.get(), data_version)?;
            let size = i.size.get();
            if !off.is_multiple_of(BLOCK)
                || (!len.is_multiple_of(BLOCK) && off + len < size)
                || len == 0
            {
                return Err(FsError::Invalid("release range must be block aligned"));
            }
            let (first, end) = (off / BLOCK, (off.saturating_add(len)).div_ceil(BLOCK));
            let extents = extents_in(&mut inner.client, ino, first, end - 1)?;
            let need = OP_META_BLOCKS + extents.len() as u64 / 16;
            self.reserve_meta(inner, SpaceUse::Bounded, need)?;
            for e in extents {
                if e.offline {
                    continue;
                }
                let part = cut_extent(&mut inner.client, ino, &e, first, end, wseq)?;
                if part.len == 0 {
                    continue;
                }
                inner.client.free_data(part.blkno, part.len)?;
                put_extent(
                    &mut inner.client,
                    ino,
                    &Extent {
                        blkno: 0,
                        offline: true,
                        ..part
                    },
                    wseq,
                )?;
                i.online_blocks = i.online_blocks.get().saturating_sub(part.len).into();
                i.offline_blocks = (i.offline_blocks.get() + part.len).into();
            }
            i.ctime = Time::now().to_disk();
            write_inode(&mut inner.client, ino, &mut i, Change::Meta, wseq)?;
            self.maybe_commit(inner)?;
            Ok(())
        })
    }

    /// Write archived bytes back into the offline range starting at `off` (block aligned), if
    /// the file's data_version is still `data_version`. Every block written must be offline.
    /// Wakes readers waiting for it. Changes neither data_version nor data_seq.
    pub fn stage(&self, ino: u64, off: u64, data: &[u8], data_version: u64) -> Result<(), FsError> {
        self.retry(|| {
            if !off.is_multiple_of(BLOCK) {
                return Err(FsError::Invalid("stage offset must be block aligned"));
            }
            if data.is_empty() {
                return Ok(());
            }
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Grows)?;
            let wseq = held.write_seq();
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            check_version(i.data_version.get(), data_version)?;
            let (first, end) = (off / BLOCK, (off + data.len() as u64).div_ceil(BLOCK));
            let extents = extents_in(&mut inner.client, ino, first, end - 1)?;
            // Every block of the range must be offline.
            let mut b = first;
            for e in &extents {
                if e.start > b || !e.offline {
                    return Err(FsError::Invalid("stage range is not entirely offline"));
                }
                b = e.end();
            }
            if b < end {
                return Err(FsError::Invalid("stage range is not entirely offline"));
            }
            self.reserve_meta(inner, SpaceUse::Grows, OP_META_BLOCKS + (end - first) / 16)?;
            for e in extents {
                let part = cut_extent(&mut inner.client, ino, &e, first, end, wseq)?;
                let mut at = part.start;
                while at < part.end() {
                    let (p, got) = inner
                        .client
                        .alloc_data(part.end() - at)?
                        .ok_or(FsError::NoSpace)?;
                    let mut buf = vec![0u8; (got * BLOCK) as usize];
                    let src = ((at - first) * BLOCK) as usize;
                    let n = buf.len().min(data.len().saturating_sub(src));
                    buf[..n].copy_from_slice(&data[src..src + n]);
                    self.data_dev().write_blocks(p, &buf)?;
                    self.map_new(inner, ino, at, got, p, wseq)?;
                    at += got;
                }
                i.offline_blocks = i.offline_blocks.get().saturating_sub(part.len).into();
                i.online_blocks = (i.online_blocks.get() + part.len).into();
            }
            inner.data_dirty = true;
            write_inode(&mut inner.client, ino, &mut i, Change::Meta, wseq)?;
            self.maybe_commit(inner)?;
            self.wake.notify_all();
            Ok(())
        })
    }
}

impl Waiters {
    fn add(&self, ino: u64, block: u64) -> u64 {
        let mut g = self.list.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.push(Waiting {
            id,
            ino,
            block,
            since: Instant::now(),
            error: None,
        });
        id
    }

    fn remove(&self, id: u64) {
        let mut g = self.list.lock().unwrap_or_else(|p| p.into_inner());
        g.1.retain(|w| w.id != id);
    }

    fn error_of(&self, id: u64) -> Option<i32> {
        let g = self.list.lock().unwrap_or_else(|p| p.into_inner());
        g.1.iter().find(|w| w.id == id).and_then(|w| w.error)
    }

    fn set_error(&self, ino: u64, block: u64, count: u64, errno: i32) -> usize {
        let mut g = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for w in g.1.iter_mut() {
            if w.ino == ino && w.block >= block && w.block < block.saturating_add(count) {
                w.error = Some(errno);
                n += 1;
            }
        }
        n
    }

    fn snapshot(&self) -> Vec<DataWaiter> {
        let g = self.list.lock().unwrap_or_else(|p| p.into_inner());
        g.1.iter()
            .map(|w| DataWaiter {
                id: w.id,
                ino: w.ino,
                block: w.block,
                op: "read",
                waited_secs: w.since.elapsed().as_secs_f64(),
            })
            .collect()
    }
}
