//! Inode items, their index items, and inode create / update / delete.

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::types::{Attr, FileType, FsError, NewNode, SetAttr, SetTime, Time};
use super::{Fs, Inner, SpaceUse};
use crate::btree::Item;
use crate::client::Client;
use crate::format::inode::{
    index_key, inode_key, ty, ExtentValue, InodeItem, DIRENT_FIRST_POS, EXTENT_OFFLINE,
};
use crate::format::key::zone;
use crate::format::Key;
use crate::lock::LockMode;

pub(crate) fn read_inode(client: &mut Client, ino: u64) -> Result<Option<InodeItem>, FsError> {
    match client.get(&inode_key(ino))? {
        None => Ok(None),
        Some(v) => InodeItem::read_from_bytes(&v)
            .map(Some)
            .map_err(|_| FsError::Corrupt(format!("inode {ino}: value of {} bytes", v.len()))),
    }
}

/// Which seqs an update moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Metadata only: `meta_seq`.
    Meta,
    /// Contents (or size) too: `meta_seq` and, for regular files, `data_seq`.
    Data,
}

/// Write an inode, moving its index items to the transaction's seq.
pub(crate) fn write_inode(
    client: &mut Client,
    ino: u64,
    inode: &mut InodeItem,
    change: Change,
    wseq: u64,
) -> Result<(), FsError> {
    let seq = client.begin()?.max(wseq);
    let old_meta = inode.meta_seq.get();
    if old_meta != seq {
        if old_meta != 0 {
            client.delete(index_key(ty::META_SEQ, old_meta, ino), wseq)?;
        }
        client.put(index_key(ty::META_SEQ, seq, ino), Vec::new(), wseq)?;
        inode.meta_seq = seq.into();
    }
    let regular = FileType::from_mode(inode.mode.get()) == Some(FileType::Regular);
    if change == Change::Data && regular {
        let old_data = inode.data_seq.get();
        if old_data != seq {
            if old_data != 0 {
                client.delete(index_key(ty::DATA_SEQ, old_data, ino), wseq)?;
            }
            client.put(index_key(ty::DATA_SEQ, seq, ino), Vec::new(), wseq)?;
            inode.data_seq = seq.into();
        }
    }
    client.put(inode_key(ino), inode.as_bytes().to_vec(), wseq)?;
    Ok(())
}

/// A fresh inode item.
pub(crate) fn new_inode_item(node: &NewNode, generation: u64) -> InodeItem {
    let now = Time::now().to_disk();
    let mut i = InodeItem::new_zeroed();
    i.mode = (node.kind.mode_bits() | (node.perm & 0o7777)).into();
    i.uid = node.uid.into();
    i.gid = node.gid.into();
    i.rdev = node.rdev.into();
    i.nlink = (if node.kind == FileType::Directory {
        2
    } else {
        1
    })
    .into();
    i.next_readdir_pos = DIRENT_FIRST_POS.into();
    i.next_xattr_id = 1.into();
    i.generation = generation.into();
    i.atime = now;
    i.mtime = now;
    i.ctime = now;
    i.crtime = now;
    i
}

/// A new inode number from the mount's batch.
pub(crate) fn alloc_ino(fs: &Fs, inner: &mut Inner) -> Result<u64, FsError> {
    if inner.ino_next >= inner.ino_end {
        let (first, count) = inner.client.alloc_inodes(fs.opts().ino_batch)?;
        inner.ino_next = first;
        inner.ino_end = first + count;
    }
    inner.ino_next += 1;
    Ok(inner.ino_next - 1)
}

/// Every item of an inode (what [`delete_inode`] removes).
pub(crate) fn inode_items(client: &mut Client, ino: u64) -> Result<Vec<Item>, FsError> {
    let first = Key::new(zone::FS, ino, 0, 0, 0, 0);
    let last = Key::new(zone::FS, ino, u8::MAX, u64::MAX, u64::MAX, u8::MAX);
    Ok(client.range(&first, &last)?)
}

/// Remove an inode's `items` (from [`inode_items`]; its data blocks are freed) and its index
/// items; the caller removed its entries.
pub(crate) fn delete_inode(
    client: &mut Client,
    ino: u64,
    inode: &InodeItem,
    items: Vec<Item>,
    wseq: u64,
) -> Result<(), FsError> {
    for it in items {
        if it.key.ty == ty::DATA_EXTENT {
            let len = it.key.third.get();
            let v = ExtentValue::read_from_bytes(&it.val)
                .map_err(|_| FsError::Corrupt(format!("extent of inode {ino}")))?;
            if v.flags & EXTENT_OFFLINE == 0 {
                client.free_data(v.blkno.get(), len)?;
            }
        }
        if it.key.ty == ty::XATTR && it.key.fourth == 0 {
            super::xattr::drop_srch_entry(client, ino, &it, wseq)?;
        }
        client.delete(it.key, wseq)?;
    }
    for (t, seq) in [
        (ty::META_SEQ, inode.meta_seq.get()),
        (ty::DATA_SEQ, inode.data_seq.get()),
    ] {
        if seq != 0 {
            client.delete(index_key(t, seq, ino), wseq)?;
        }
    }
    client.add_inode_count(-1);
    Ok(())
}

fn apply_time(t: SetTime) -> crate::format::Timespec {
    match t {
        SetTime::Now => Time::now().to_disk(),
        SetTime::At(t) => t.to_disk(),
    }
}

impl Fs {
    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.retry(|| {
            let mut inner = self.inner();
            let _l = self.lock_inodes(&mut inner, &[ino], LockMode::Read)?;
            let i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            Ok(Attr::from_item(ino, &i))
        })
    }

    /// Attributes of `ino` if it is still the inode of generation `generation`; a deleted
    /// inode, or a number now used by another, is `Stale`.
    pub fn getattr_gen(&self, ino: u64, generation: u64) -> Result<Attr, FsError> {
        match self.getattr(ino) {
            Ok(a) if a.generation == generation => Ok(a),
            Ok(_) | Err(FsError::NotFound) => Err(FsError::Stale),
            Err(e) => Err(e),
        }
    }

    /// Change attributes; a size change truncates or extends (sparse).
    pub fn setattr(&self, ino: u64, set: &SetAttr) -> Result<Attr, FsError> {
        self.retry(|| {
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Bounded)?;
            let wseq = held.write_seq();
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            let mut change = super::inode::Change::Meta;
            if let Some(size) = set.size {
                match FileType::from_mode(i.mode.get()) {
                    Some(FileType::Regular) => {}
                    Some(FileType::Directory) => return Err(FsError::IsDir),
                    _ => return Err(FsError::Invalid("size of a non-regular file")),
                }
                if size != i.size.get() {
                    self.truncate_locked(inner, ino, &mut i, size, wseq)?;
                    change = super::inode::Change::Data;
                    let now = Time::now().to_disk();
                    i.mtime = now;
                }
            }
            if let Some(mode) = set.mode {
                i.mode = ((i.mode.get() & super::types::S_IFMT) | (mode & 0o7777)).into();
            }
            if let Some(uid) = set.uid {
                i.uid = uid.into();
            }
            if let Some(gid) = set.gid {
                i.gid = gid.into();
            }
            if let Some(t) = set.atime {
                i.atime = apply_time(t);
            }
            if let Some(t) = set.mtime {
                i.mtime = apply_time(t);
            }
            i.ctime = Time::now().to_disk();
            write_inode(&mut inner.client, ino, &mut i, change, wseq)?;
            self.maybe_commit(inner)?;
            Ok(Attr::from_item(ino, &i))
        })
    }
}
