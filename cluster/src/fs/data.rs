//! File contents: extents of 4 KiB data blocks, read, write and truncate.
//!
//! An extent item maps logical blocks `[start, start + len)` of a file to data device blocks
//! `[blkno, blkno + len)`, or marks them offline (released to the archive tier). Unmapped
//! blocks are holes and read as zeros. New blocks come from the client's data allocator;
//! existing online blocks are overwritten in place. Writes reach the data device at once
//! (through the page cache) and are flushed before the transaction that maps them commits.

use zerocopy::{FromBytes, IntoBytes};

use super::inode::{read_inode, write_inode, Change};
use super::types::{Attr, FileType, FsError, Time};
use super::{AfterCommit, Fs, Inner, SpaceUse, OP_META_BLOCKS};
use crate::client::Client;
use crate::format::inode::{extent_key, ExtentValue, InodeItem, EXTENT_OFFLINE};
use crate::lock::LockMode;

pub(crate) const BLOCK: u64 = 4096;
/// Largest file size: 2^60 bytes.
pub const MAX_FILE_SIZE: u64 = 1 << 60;

/// One extent of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub start: u64,
    pub len: u64,
    /// First data block; 0 when offline.
    pub blkno: u64,
    pub offline: bool,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Extents overlapping logical blocks `[first, last]`, in order.
pub(crate) fn extents_in(
    client: &mut Client,
    ino: u64,
    first: u64,
    last: u64,
) -> Result<Vec<Extent>, FsError> {
    let mut out = Vec::new();
    let mut from = extent_key(ino, first, 0);
    let end = extent_key(ino, u64::MAX, u64::MAX);
    while let Some(it) = client.next(&from, &end)? {
        let (last_blk, len) = (it.key.second.get(), it.key.third.get());
        if len == 0 || len - 1 > last_blk {
            return Err(FsError::Corrupt(format!("extent key of inode {ino}")));
        }
        let start = last_blk - (len - 1);
        if start > last {
            break;
        }
        let v = ExtentValue::read_from_bytes(&it.val)
            .map_err(|_| FsError::Corrupt(format!("extent value of inode {ino}")))?;
        out.push(Extent {
            start,
            len,
            blkno: v.blkno.get(),
            offline: v.flags & EXTENT_OFFLINE != 0,
        });
        match it.key.next() {
            Some(n) => from = n,
            None => break,
        }
    }
    Ok(out)
}

pub(crate) fn put_extent(
    client: &mut Client,
    ino: u64,
    e: &Extent,
    wseq: u64,
) -> Result<(), FsError> {
    let v = ExtentValue {
        blkno: e.blkno.into(),
        flags: if e.offline { EXTENT_OFFLINE } else { 0 },
        _pad: [0; 7],
    };
    client.put(
        extent_key(ino, e.end() - 1, e.len),
        v.as_bytes().to_vec(),
        wseq,
    )?;
    Ok(())
}

pub(crate) fn del_extent(
    client: &mut Client,
    ino: u64,
    e: &Extent,
    wseq: u64,
) -> Result<(), FsError> {
    client.delete(extent_key(ino, e.end() - 1, e.len), wseq)?;
    Ok(())
}

/// Replace the part of extent `e` within `[from, to)` (logical blocks): the parts outside
/// stay, the part inside is returned (its data blocks are not freed here).
pub(crate) fn cut_extent(
    client: &mut Client,
    ino: u64,
    e: &Extent,
    from: u64,
    to: u64,
    wseq: u64,
) -> Result<Extent, FsError> {
    let (s, t) = (from.max(e.start), to.min(e.end()));
    del_extent(client, ino, e, wseq)?;
    let phys = |l: u64| {
        if e.offline {
            0
        } else {
            e.blkno + (l - e.start)
        }
    };
    if e.start < s {
        put_extent(
            client,
            ino,
            &Extent {
                start: e.start,
                len: s - e.start,
                blkno: e.blkno,
                offline: e.offline,
            },
            wseq,
        )?;
    }
    if t < e.end() {
        put_extent(
            client,
            ino,
            &Extent {
                start: t,
                len: e.end() - t,
                blkno: phys(t),
                offline: e.offline,
            },
            wseq,
        )?;
    }
    Ok(Extent {
        start: s,
        len: t - s,
        blkno: phys(s),
        offline: e.offline,
    })
}

/// What a read found instead of data.
pub(crate) enum ReadBlocked {
    /// Logical block `.0` is offline.
    Offline(u64),
    Err(FsError),
}

/// Where one mapped run of blocks goes in a read's buffer.
#[derive(Debug, Default)]
pub(crate) struct ReadPiece {
    at: usize,
    bytes: usize,
    blkno: u64,
}

/// A planned read: the blocks to read (holes stay zero) and the bytes to return.
#[derive(Debug, Default)]
pub(crate) struct ReadPlan {
    blocks_bytes: usize,
    skip: usize,
    len: usize,
    pieces: Vec<ReadPiece>,
}

impl ReadPlan {
    /// Read the planned blocks from the data device.
    pub(crate) fn run(self, data: &scoutgw_blockdev::DataDev) -> Result<Vec<u8>, FsError> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; self.blocks_bytes];
        for p in &self.pieces {
            data.read_blocks(p.blkno, &mut buf[p.at..p.at + p.bytes])
                .map_err(FsError::from)?;
        }
        buf.drain(..self.skip);
        buf.truncate(self.len);
        Ok(buf)
    }
}

impl From<FsError> for ReadBlocked {
    fn from(e: FsError) -> Self {
        ReadBlocked::Err(e)
    }
}

fn regular(i: &InodeItem) -> Result<(), FsError> {
    match FileType::from_mode(i.mode.get()) {
        Some(FileType::Regular) => Ok(()),
        Some(FileType::Directory) => Err(FsError::IsDir),
        _ => Err(FsError::Invalid("not a regular file")),
    }
}

impl Fs {
    /// Plan a read of up to `len` bytes at `off` (short at end of file), with the mount
    /// lock held: which data blocks go where. [`ReadPlan::run`] then reads them without the
    /// lock, under a guard of `data_readers` that keeps commits (which make freed blocks
    /// reusable) from running meanwhile. (The inode's cluster lock is released with the
    /// plan; with several nodes, the read must keep it until the blocks are read.)
    pub(crate) fn read_plan(
        &self,
        inner: &mut Inner,
        ino: u64,
        off: u64,
        len: usize,
    ) -> Result<ReadPlan, ReadBlocked> {
        let _l = self.lock_inodes(inner, &[ino], LockMode::Read)?;
        let i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
        regular(&i)?;
        let size = i.size.get();
        if off >= size || len == 0 {
            return Ok(ReadPlan::default());
        }
        let end = size.min(off.saturating_add(len as u64));
        let (first, last) = (off / BLOCK, (end - 1) / BLOCK);
        let mut pieces = Vec::new();
        for e in extents_in(&mut inner.client, ino, first, last)? {
            let (s, t) = (e.start.max(first), e.end().min(last + 1));
            if s >= t {
                continue;
            }
            if e.offline {
                return Err(ReadBlocked::Offline(s));
            }
            pieces.push(ReadPiece {
                at: ((s - first) * BLOCK) as usize,
                bytes: ((t - s) * BLOCK) as usize,
                blkno: e.blkno + (s - e.start),
            });
        }
        Ok(ReadPlan {
            blocks_bytes: ((last - first + 1) * BLOCK) as usize,
            skip: (off - first * BLOCK) as usize,
            len: (end - off) as usize,
            pieces,
        })
    }

    /// Write `data` at `off`, extending the file as needed.
    pub fn write(&self, ino: u64, off: u64, data: &[u8]) -> Result<Attr, FsError> {
        self.retry(|| {
            let end = off
                .checked_add(data.len() as u64)
                .filter(|e| *e <= MAX_FILE_SIZE)
                .ok_or(FsError::TooBig)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Grows)?;
            let wseq = held.write_seq();
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            regular(&i)?;
            // One extent per block at worst, and the data allocator changes they bring.
            let blocks = (data.len() as u64).div_ceil(BLOCK);
            self.reserve_meta(inner, SpaceUse::Grows, OP_META_BLOCKS + blocks / 16)?;
            if !data.is_empty() {
                if off > i.size.get() {
                    self.zero_tail(inner, ino, i.size.get(), wseq)?;
                }
                self.write_blocks(inner, ino, &mut i, off, data, wseq)?;
                i.size = i.size.get().max(end).into();
                i.data_version = (i.data_version.get() + 1).into();
            }
            let now = Time::now().to_disk();
            i.mtime = now;
            i.ctime = now;
            write_inode(&mut inner.client, ino, &mut i, Change::Data, wseq)?;
            inner.data_dirty = true;
            self.maybe_commit(inner)?;
            Ok(Attr::from_item(ino, &i))
        })
    }

    fn write_blocks(
        &self,
        inner: &mut Inner,
        ino: u64,
        i: &mut InodeItem,
        off: u64,
        data: &[u8],
        wseq: u64,
    ) -> Result<(), FsError> {
        let end = off + data.len() as u64;
        let (first, last) = (off / BLOCK, (end - 1) / BLOCK);
        let extents = extents_in(&mut inner.client, ino, first, last)?;
        if extents.iter().any(|e| e.offline) {
            return Err(FsError::Offline);
        }
        // The bytes of logical blocks [s, t) with `data` laid over what is there.
        let fill = |fs: &Fs, s: u64, t: u64, existing: Option<u64>| -> Result<Vec<u8>, FsError> {
            let mut buf = vec![0u8; ((t - s) * BLOCK) as usize];
            let (bs, be) = (s * BLOCK, t * BLOCK);
            let partial_head = off > bs;
            let partial_tail = end < be;
            if let Some(p) = existing {
                if partial_head {
                    fs.data_dev().read_blocks(p, &mut buf[..BLOCK as usize])?;
                }
                if partial_tail {
                    let at = buf.len() - BLOCK as usize;
                    fs.data_dev().read_blocks(p + (t - 1 - s), &mut buf[at..])?;
                }
            }
            let (ds, de) = (off.max(bs), end.min(be));
            buf[(ds - bs) as usize..(de - bs) as usize]
                .copy_from_slice(&data[(ds - off) as usize..(de - off) as usize]);
            Ok(buf)
        };
        let mut b = first;
        let mut ext = extents.iter().peekable();
        while b <= last {
            while ext.peek().is_some_and(|e| e.end() <= b) {
                ext.next();
            }
            match ext.peek() {
                Some(e) if e.start <= b => {
                    // Overwrite mapped blocks in place.
                    let t = e.end().min(last + 1);
                    let p = e.blkno + (b - e.start);
                    let buf = fill(self, b, t, Some(p))?;
                    self.data_dev().write_blocks(p, &buf)?;
                    b = t;
                }
                next => {
                    // A hole up to the next extent (or the end): allocate and write.
                    let hole_end = next.map_or(last + 1, |e| e.start.min(last + 1));
                    let (p, got) = match inner.client.alloc_data(hole_end - b)? {
                        Some(got) => got,
                        None => self.alloc_data_refilled(inner, hole_end - b)?,
                    };
                    let t = b + got;
                    let buf = fill(self, b, t, None)?;
                    self.data_dev().write_blocks(p, &buf)?;
                    self.map_new(inner, ino, b, got, p, wseq)?;
                    i.online_blocks = (i.online_blocks.get() + got).into();
                    b = t;
                }
            }
        }
        Ok(())
    }

    /// Map `[start, start + len)` to data blocks from `blkno`, merging with the extent just
    /// before it when both are contiguous.
    pub(crate) fn map_new(
        &self,
        inner: &mut Inner,
        ino: u64,
        start: u64,
        len: u64,
        blkno: u64,
        wseq: u64,
    ) -> Result<(), FsError> {
        let mut e = Extent {
            start,
            len,
            blkno,
            offline: false,
        };
        if start > 0 {
            if let Some(prev) = extents_in(&mut inner.client, ino, start - 1, start - 1)?.first() {
                if !prev.offline && prev.end() == start && prev.blkno + prev.len == blkno {
                    del_extent(&mut inner.client, ino, prev, wseq)?;
                    e.start = prev.start;
                    e.len += prev.len;
                    e.blkno = prev.blkno;
                }
            }
        }
        put_extent(&mut inner.client, ino, &e, wseq)
    }

    /// Zero the bytes after `size` in the block holding it, if mapped: whatever a crash left
    /// there (an unsynced write past the end) must read as zeros once the file grows, and a
    /// shrink must not leave old bytes for a later extension to expose.
    ///
    /// The block is copied, not overwritten: the committed transaction still maps it and its
    /// bytes before the old size were synced, so a crash before this change commits must
    /// find them intact. The copy gets the zeroed tail and replaces the block in the file's
    /// map; the old block is freed with the transaction.
    fn zero_tail(&self, inner: &mut Inner, ino: u64, size: u64, wseq: u64) -> Result<(), FsError> {
        if size.is_multiple_of(BLOCK) {
            return Ok(());
        }
        let blk = size / BLOCK;
        let Some(e) = extents_in(&mut inner.client, ino, blk, blk)?
            .first()
            .copied()
        else {
            return Ok(());
        };
        if e.offline || e.start > blk {
            return Ok(());
        }
        let old = e.blkno + (blk - e.start);
        let mut buf = vec![0u8; BLOCK as usize];
        self.data_dev().read_blocks(old, &mut buf)?;
        let at = (size % BLOCK) as usize;
        if buf[at..].iter().all(|&b| b == 0) {
            return Ok(());
        }
        buf[at..].fill(0);
        let (new, _) = match inner.client.alloc_data(1)? {
            Some(got) => got,
            None => self.alloc_data_refilled(inner, 1)?,
        };
        self.data_dev().write_blocks(new, &buf)?;
        let part = cut_extent(&mut inner.client, ino, &e, blk, blk + 1, wseq)?;
        inner.client.free_data(part.blkno, part.len)?;
        self.map_new(inner, ino, blk, 1, new, wseq)?;
        inner.data_dirty = true;
        Ok(())
    }

    /// The client's data allocator ran dry: commit, so the next transaction opens with an
    /// allocator the server refilled, and try once more. The operation goes on in the new
    /// transaction (a write may then be durable in two parts, as POSIX allows).
    fn alloc_data_refilled(&self, inner: &mut Inner, want: u64) -> Result<(u64, u64), FsError> {
        self.commit_locked(inner, AfterCommit::OpenNext)?;
        inner.client.alloc_data(want)?.ok_or(FsError::NoSpace)
    }

    /// Change the size of a regular file; the caller writes the inode.
    pub(crate) fn truncate_locked(
        &self,
        inner: &mut Inner,
        ino: u64,
        i: &mut InodeItem,
        size: u64,
        wseq: u64,
    ) -> Result<(), FsError> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::TooBig);
        }
        let old = i.size.get();
        if size < old {
            let keep = size.div_ceil(BLOCK);
            let gone = extents_in(&mut inner.client, ino, keep, u64::MAX)?;
            self.reserve_meta(
                inner,
                SpaceUse::Bounded,
                OP_META_BLOCKS + gone.len() as u64 / 16,
            )?;
            for e in gone {
                let gone = cut_extent(&mut inner.client, ino, &e, keep, u64::MAX, wseq)?;
                if gone.len == 0 {
                    continue;
                }
                if gone.offline {
                    i.offline_blocks = i.offline_blocks.get().saturating_sub(gone.len).into();
                } else {
                    inner.client.free_data(gone.blkno, gone.len)?;
                    i.online_blocks = i.online_blocks.get().saturating_sub(gone.len).into();
                }
            }
            // Zero the tail of the new last block so a later extension reads zeros.
            self.zero_tail(inner, ino, size, wseq)?;
        } else if size > old {
            self.zero_tail(inner, ino, old, wseq)?;
        }
        i.size = size.into();
        i.data_version = (i.data_version.get() + 1).into();
        let now = Time::now().to_disk();
        i.ctime = now;
        Ok(())
    }
}
