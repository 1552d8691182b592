//! Directory entries: lookup, create, link, unlink, rename, readdir.
//!
//! Every entry is stored three times with the same value: a DIRENT item keyed by name hash
//! (lookup), a READDIR item keyed by position (readdir cookies), and a LINK_BACKREF item on
//! the target (its paths, and a directory's parent). Positions come from the directory's
//! `next_readdir_pos` and are never reused, so a cookie stays valid while entries come and go.

use zerocopy::{FromBytes, IntoBytes};

use super::inode::{
    alloc_ino, delete_inode, inode_items, new_inode_item, read_inode, write_inode, Change,
};
use super::types::{check_name, Attr, DirEntry, DirPage, FileType, FsError, NewNode, Time};
use super::{Fs, Inner, SpaceUse, OP_META_BLOCKS};
use crate::btree::Item;
use crate::client::Client;
use crate::format::bloom::fnv1a64;
use crate::format::inode::{
    backref_key, dirent_key, name_hash, readdir_key, symlink_key, DirentHeader, InodeItem,
    ROOT_INO, SYMLINK_MAX,
};
use crate::format::layout::BTREE_MAX_VAL_LEN;
use crate::format::Key;
use crate::lock::LockMode;

/// A directory entry as stored.
#[derive(Debug, Clone)]
pub(crate) struct Dirent {
    pub hdr: DirentHeader,
    pub name: Vec<u8>,
}

fn decode_dirent(val: &[u8]) -> Result<Dirent, FsError> {
    let (hdr, name) = dirent_parts(val)?;
    Ok(Dirent {
        hdr,
        name: name.to_vec(),
    })
}

/// A directory entry's header and its name, read in place.
fn dirent_parts(val: &[u8]) -> Result<(DirentHeader, &[u8]), FsError> {
    DirentHeader::read_from_prefix(val)
        .map_err(|_| FsError::Corrupt("short directory entry".into()))
}

/// Entries a readdir page makes room for before it reads any.
const READDIR_PREALLOC: usize = 1024;

/// The entry `name` of directory `dir`.
pub(crate) fn find_entry(
    client: &mut Client,
    dir: u64,
    name: &[u8],
) -> Result<Option<Dirent>, FsError> {
    let hash = name_hash(name);
    // The entries whose names share the hash, read in place: no copy of those that differ.
    let mut found: Option<Result<Dirent, FsError>> = None;
    client.scan_each(
        &dirent_key(dir, hash, 0),
        &dirent_key(dir, hash, u64::MAX),
        usize::MAX,
        |_, val| {
            if found.is_none() {
                found = match dirent_parts(val) {
                    Ok((hdr, n)) if n == name => Some(Ok(Dirent {
                        hdr,
                        name: n.to_vec(),
                    })),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                };
            }
        },
    )?;
    found.transpose()
}

/// What a new entry points at.
struct Target {
    ino: u64,
    generation: u64,
    dtype: u8,
}

fn add_entry(
    client: &mut Client,
    dir: u64,
    dir_inode: &mut InodeItem,
    name: &[u8],
    t: Target,
    wseq: u64,
) -> Result<(), FsError> {
    let Target {
        ino: target,
        generation,
        dtype,
    } = t;
    let pos = dir_inode.next_readdir_pos.get();
    dir_inode.next_readdir_pos = (pos + 1).into();
    dir_inode.size = (dir_inode.size.get() + 1).into();
    let hash = name_hash(name);
    let hdr = DirentHeader {
        ino: target.into(),
        hash: hash.into(),
        pos: pos.into(),
        generation: generation.into(),
        dtype,
        _pad: [0; 7],
    };
    let mut val = hdr.as_bytes().to_vec();
    val.extend_from_slice(name);
    client.put(dirent_key(dir, hash, pos), val.clone(), wseq)?;
    client.put(readdir_key(dir, pos), val.clone(), wseq)?;
    client.put(backref_key(target, dir, pos), val, wseq)?;
    Ok(())
}

fn remove_entry(
    client: &mut Client,
    dir: u64,
    dir_inode: &mut InodeItem,
    d: &Dirent,
    wseq: u64,
) -> Result<(), FsError> {
    let (hash, pos) = (d.hdr.hash.get(), d.hdr.pos.get());
    client.delete(dirent_key(dir, hash, pos), wseq)?;
    client.delete(readdir_key(dir, pos), wseq)?;
    client.delete(backref_key(d.hdr.ino.get(), dir, pos), wseq)?;
    dir_inode.size = dir_inode.size.get().saturating_sub(1).into();
    Ok(())
}

fn dir_inode(client: &mut Client, dir: u64) -> Result<InodeItem, FsError> {
    let i = read_inode(client, dir)?.ok_or(FsError::NotFound)?;
    if FileType::from_mode(i.mode.get()) != Some(FileType::Directory) {
        return Err(FsError::NotDir);
    }
    Ok(i)
}

fn is_dir(i: &InodeItem) -> bool {
    FileType::from_mode(i.mode.get()) == Some(FileType::Directory)
}

fn touch(i: &mut InodeItem) {
    let now = Time::now().to_disk();
    i.mtime = now;
    i.ctime = now;
}

/// The parent directory of directory `ino` (the root is its own parent).
pub(crate) fn parent_of(client: &mut Client, ino: u64) -> Result<u64, FsError> {
    if ino == ROOT_INO {
        return Ok(ROOT_INO);
    }
    let first = backref_key(ino, 0, 0);
    let last = backref_key(ino, u64::MAX, u64::MAX);
    match client.next(&first, &last)? {
        Some(it) => Ok(it.key.second.get()),
        None => Err(FsError::Stale),
    }
}

fn is_empty_dir(client: &mut Client, dir: u64) -> Result<bool, FsError> {
    Ok(client
        .next(&readdir_key(dir, 0), &readdir_key(dir, u64::MAX))?
        .is_none())
}

impl Fs {
    /// The entry `name` in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.retry(|| {
            let mut guard = self.inner();
            let inner = &mut *guard;
            let _l = self.lock_inodes(inner, &[dir], LockMode::Read)?;
            if name == b"." {
                let i = dir_inode(&mut inner.client, dir)?;
                return Ok(Attr::from_item(dir, &i));
            }
            if name == b".." {
                dir_inode(&mut inner.client, dir)?;
                let p = parent_of(&mut inner.client, dir)?;
                drop(_l);
                drop(guard);
                return self.getattr(p);
            }
            if name.len() > crate::format::inode::NAME_MAX {
                return Err(FsError::NameTooLong);
            }
            dir_inode(&mut inner.client, dir)?;
            let d = find_entry(&mut inner.client, dir, name)?.ok_or(FsError::NotFound)?;
            let ino = d.hdr.ino.get();
            let _t = self.lock_inodes(inner, &[ino], LockMode::Read)?;
            let i = read_inode(&mut inner.client, ino)?.ok_or_else(|| {
                FsError::Corrupt(format!("entry in {dir} names missing inode {ino}"))
            })?;
            Ok(Attr::from_item(ino, &i))
        })
    }

    /// Create a node of any type in `dir`. With `exclusive`, an existing name is an error;
    /// otherwise an existing node of the same type is returned as it is.
    pub fn create(
        &self,
        dir: u64,
        name: &[u8],
        node: &NewNode,
        exclusive: bool,
    ) -> Result<Attr, FsError> {
        self.create_inner(dir, name, node, exclusive, None)
    }

    /// Create a directory.
    pub fn mkdir(
        &self,
        dir: u64,
        name: &[u8],
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        let node = NewNode {
            kind: FileType::Directory,
            perm,
            uid,
            gid,
            rdev: 0,
        };
        self.create_inner(dir, name, &node, true, None)
    }

    /// Create a symbolic link to `target`.
    pub fn symlink(
        &self,
        dir: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        if target.is_empty() {
            return Err(FsError::Invalid("empty symlink target"));
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::NameTooLong);
        }
        let node = NewNode {
            kind: FileType::Symlink,
            perm: 0o777,
            uid,
            gid,
            rdev: 0,
        };
        self.create_inner(dir, name, &node, true, Some(target))
    }

    fn create_inner(
        &self,
        dir: u64,
        name: &[u8],
        node: &NewNode,
        exclusive: bool,
        target: Option<&[u8]>,
    ) -> Result<Attr, FsError> {
        self.retry(|| {
            check_name(name)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            let ino = alloc_ino(self, inner)?;
            let held = self.lock_inodes_to_change(inner, &[dir, ino], SpaceUse::Grows)?;
            let wseq = held.write_seq();
            let mut d = dir_inode(&mut inner.client, dir)?;
            if d.nlink.get() == 0 {
                return Err(FsError::NotFound);
            }
            if let Some(existing) = find_entry(&mut inner.client, dir, name)? {
                let e = existing.hdr.ino.get();
                let i = read_inode(&mut inner.client, e)?.ok_or(FsError::Stale)?;
                if exclusive || FileType::from_mode(i.mode.get()) != Some(node.kind) {
                    return Err(FsError::Exists);
                }
                return Ok(Attr::from_item(e, &i));
            }
            if node.kind == FileType::Directory && d.nlink.get() >= i32::MAX as u32 {
                return Err(FsError::TooManyLinks);
            }
            let seed = [inner.client.rid(), ino, inner.client.trans_seq()];
            let generation = fnv1a64(seed.as_bytes()) | 1;
            let mut i = new_inode_item(node, generation);
            if let Some(t) = target {
                i.size = (t.len() as u64).into();
                for (nr, chunk) in t.chunks(BTREE_MAX_VAL_LEN).enumerate() {
                    inner
                        .client
                        .put(symlink_key(ino, nr as u64), chunk.to_vec(), wseq)?;
                }
            }
            write_inode(&mut inner.client, ino, &mut i, Change::Data, wseq)?;
            let t = Target {
                ino,
                generation,
                dtype: node.kind.dtype(),
            };
            add_entry(&mut inner.client, dir, &mut d, name, t, wseq)?;
            if node.kind == FileType::Directory {
                d.nlink = (d.nlink.get() + 1).into();
            }
            touch(&mut d);
            write_inode(&mut inner.client, dir, &mut d, Change::Meta, wseq)?;
            inner.client.add_inode_count(1);
            self.maybe_commit(inner)?;
            Ok(Attr::from_item(ino, &i))
        })
    }

    /// The target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.retry(|| {
            let mut guard = self.inner();
            let inner = &mut *guard;
            let _l = self.lock_inodes(inner, &[ino], LockMode::Read)?;
            let i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            if FileType::from_mode(i.mode.get()) != Some(FileType::Symlink) {
                return Err(FsError::Invalid("not a symbolic link"));
            }
            let items = inner
                .client
                .range(&symlink_key(ino, 0), &symlink_key(ino, u64::MAX))?;
            let target: Vec<u8> = items.into_iter().flat_map(|it| it.val).collect();
            if target.len() as u64 != i.size.get() {
                return Err(FsError::Corrupt(format!("symlink {ino}: target length")));
            }
            Ok(target)
        })
    }

    /// Add a hard link to `ino` as `name` in `dir`.
    pub fn link(&self, ino: u64, dir: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.retry(|| {
            check_name(name)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[dir, ino], SpaceUse::Grows)?;
            let wseq = held.write_seq();
            let mut d = dir_inode(&mut inner.client, dir)?;
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            if is_dir(&i) {
                return Err(FsError::Errno(super::types::libc_errno::EPERM));
            }
            if i.nlink.get() == 0 || d.nlink.get() == 0 {
                return Err(FsError::NotFound);
            }
            if i.nlink.get() >= i32::MAX as u32 {
                return Err(FsError::TooManyLinks);
            }
            if find_entry(&mut inner.client, dir, name)?.is_some() {
                return Err(FsError::Exists);
            }
            let dtype = FileType::from_mode(i.mode.get()).map_or(0, |k| k.dtype());
            let t = Target {
                ino,
                generation: i.generation.get(),
                dtype,
            };
            add_entry(&mut inner.client, dir, &mut d, name, t, wseq)?;
            i.nlink = (i.nlink.get() + 1).into();
            i.ctime = Time::now().to_disk();
            touch(&mut d);
            write_inode(&mut inner.client, ino, &mut i, Change::Meta, wseq)?;
            write_inode(&mut inner.client, dir, &mut d, Change::Meta, wseq)?;
            self.maybe_commit(inner)?;
            Ok(Attr::from_item(ino, &i))
        })
    }

    /// The items of an inode about to lose its last name, once the transaction has room to
    /// delete them all (called before the operation changes anything).
    fn doomed_items(&self, inner: &mut Inner, ino: u64) -> Result<Vec<Item>, FsError> {
        let items = inode_items(&mut inner.client, ino)?;
        self.reserve_meta(
            inner,
            SpaceUse::Bounded,
            OP_META_BLOCKS + items.len() as u64 / 16,
        )?;
        Ok(items)
    }

    /// Remove a non-directory entry.
    pub fn unlink(&self, dir: u64, name: &[u8]) -> Result<(), FsError> {
        self.remove(dir, name, false)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, dir: u64, name: &[u8]) -> Result<(), FsError> {
        self.remove(dir, name, true)
    }

    fn remove(&self, dir: u64, name: &[u8], want_dir: bool) -> Result<(), FsError> {
        self.retry(|| {
            if name == b"." {
                return Err(FsError::Invalid("cannot remove \".\""));
            }
            if name == b".." {
                return Err(FsError::NotEmpty);
            }
            check_name(name)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[dir], SpaceUse::Bounded)?;
            let mut d = dir_inode(&mut inner.client, dir)?;
            let e = find_entry(&mut inner.client, dir, name)?.ok_or(FsError::NotFound)?;
            let ino = e.hdr.ino.get();
            let held2 = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Bounded)?;
            let wseq = held.write_seq().max(held2.write_seq());
            let mut i = read_inode(&mut inner.client, ino)?
                .ok_or_else(|| FsError::Corrupt(format!("entry names missing inode {ino}")))?;
            match (want_dir, is_dir(&i)) {
                (false, true) => return Err(FsError::IsDir),
                (true, false) => return Err(FsError::NotDir),
                (true, true) if !is_empty_dir(&mut inner.client, ino)? => {
                    return Err(FsError::NotEmpty)
                }
                _ => {}
            }
            let doomed = if want_dir || i.nlink.get() <= 1 {
                Some(self.doomed_items(inner, ino)?)
            } else {
                None
            };
            remove_entry(&mut inner.client, dir, &mut d, &e, wseq)?;
            if want_dir {
                d.nlink = d.nlink.get().saturating_sub(1).into();
                i.nlink = 0.into();
            } else {
                i.nlink = i.nlink.get().saturating_sub(1).into();
            }
            touch(&mut d);
            write_inode(&mut inner.client, dir, &mut d, Change::Meta, wseq)?;
            if let Some(items) = doomed {
                delete_inode(&mut inner.client, ino, &i, items, wseq)?;
            } else {
                i.ctime = Time::now().to_disk();
                write_inode(&mut inner.client, ino, &mut i, Change::Meta, wseq)?;
            }
            self.maybe_commit(inner)?;
            Ok(())
        })
    }

    /// Rename `src_dir/src_name` to `dst_dir/dst_name`, replacing a compatible target.
    pub fn rename(
        &self,
        src_dir: u64,
        src_name: &[u8],
        dst_dir: u64,
        dst_name: &[u8],
    ) -> Result<(), FsError> {
        self.retry(|| {
            check_name(src_name)?;
            check_name(dst_name)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            // Cross-directory renames take the global rename lock first (it orders them).
            let rename_key = Key::new(crate::format::key::zone::LOCK, 0, 4, 0, 0, 0);
            let _global = if src_dir != dst_dir {
                Some(self.lock_keys(inner, &[rename_key], LockMode::Write)?)
            } else {
                None
            };
            let held = self.lock_inodes_to_change(inner, &[src_dir, dst_dir], SpaceUse::Bounded)?;
            let mut sd = dir_inode(&mut inner.client, src_dir)?;
            let mut dd = if dst_dir == src_dir {
                sd
            } else {
                dir_inode(&mut inner.client, dst_dir)?
            };
            let se = find_entry(&mut inner.client, src_dir, src_name)?.ok_or(FsError::NotFound)?;
            let src = se.hdr.ino.get();
            let de = find_entry(&mut inner.client, dst_dir, dst_name)?;
            let mut inos = vec![src];
            if let Some(d) = &de {
                inos.push(d.hdr.ino.get());
            }
            let held2 = self.lock_inodes_to_change(inner, &inos, SpaceUse::Bounded)?;
            let wseq = held.write_seq().max(held2.write_seq());
            let mut si = read_inode(&mut inner.client, src)?.ok_or(FsError::Stale)?;
            let src_is_dir = is_dir(&si);
            if let Some(d) = &de {
                if d.hdr.ino.get() == src {
                    // Two names of the same inode: nothing to do.
                    return Ok(());
                }
            }
            if src_is_dir {
                // A directory may not move below itself.
                let mut p = dst_dir;
                loop {
                    if p == src {
                        return Err(FsError::Invalid("directory moved below itself"));
                    }
                    if p == ROOT_INO {
                        break;
                    }
                    p = parent_of(&mut inner.client, p)?;
                }
            }
            let same_dir = src_dir == dst_dir;
            if let Some(d) = &de {
                let t = d.hdr.ino.get();
                let mut ti = read_inode(&mut inner.client, t)?.ok_or(FsError::Stale)?;
                match (src_is_dir, is_dir(&ti)) {
                    (true, false) => return Err(FsError::NotDir),
                    (false, true) => return Err(FsError::IsDir),
                    (true, true) if !is_empty_dir(&mut inner.client, t)? => {
                        return Err(FsError::NotEmpty)
                    }
                    _ => {}
                }
                let doomed = if is_dir(&ti) || ti.nlink.get() <= 1 {
                    Some(self.doomed_items(inner, t)?)
                } else {
                    None
                };
                remove_entry(&mut inner.client, dst_dir, &mut dd, d, wseq)?;
                if is_dir(&ti) {
                    dd.nlink = dd.nlink.get().saturating_sub(1).into();
                    ti.nlink = 0.into();
                } else {
                    ti.nlink = ti.nlink.get().saturating_sub(1).into();
                }
                if let Some(items) = doomed {
                    delete_inode(&mut inner.client, t, &ti, items, wseq)?;
                } else {
                    ti.ctime = Time::now().to_disk();
                    write_inode(&mut inner.client, t, &mut ti, Change::Meta, wseq)?;
                }
            }
            if same_dir {
                remove_entry(&mut inner.client, src_dir, &mut dd, &se, wseq)?;
            } else {
                remove_entry(&mut inner.client, src_dir, &mut sd, &se, wseq)?;
            }
            let dtype = FileType::from_mode(si.mode.get()).map_or(0, |k| k.dtype());
            let t = Target {
                ino: src,
                generation: si.generation.get(),
                dtype,
            };
            add_entry(&mut inner.client, dst_dir, &mut dd, dst_name, t, wseq)?;
            if src_is_dir && !same_dir {
                sd.nlink = sd.nlink.get().saturating_sub(1).into();
                dd.nlink = (dd.nlink.get() + 1).into();
            }
            si.ctime = Time::now().to_disk();
            write_inode(&mut inner.client, src, &mut si, Change::Meta, wseq)?;
            touch(&mut dd);
            write_inode(&mut inner.client, dst_dir, &mut dd, Change::Meta, wseq)?;
            if !same_dir {
                touch(&mut sd);
                write_inode(&mut inner.client, src_dir, &mut sd, Change::Meta, wseq)?;
            }
            self.maybe_commit(inner)?;
            Ok(())
        })
    }

    /// Up to `max` entries of `dir` after `cookie` (0 starts; "." and ".." are not listed).
    pub fn readdir(&self, dir: u64, cookie: u64, max: usize) -> Result<DirPage, FsError> {
        self.retry(|| {
            // A page always makes progress: asking for none gets one.
            let max = max.max(1);
            let mut guard = self.inner();
            let inner = &mut *guard;
            let _l = self.lock_inodes(inner, &[dir], LockMode::Read)?;
            dir_inode(&mut inner.client, dir)?;
            let from = readdir_key(dir, cookie.saturating_add(1));
            let end = readdir_key(dir, u64::MAX);
            // One merged scan for the page (plus one entry to learn whether more follow), not a
            // walk from the roots per entry; entries the item cache holds are decoded in place.
            let mut entries = Vec::with_capacity(max.min(READDIR_PREALLOC));
            let mut eof = true;
            let mut bad = None;
            inner
                .client
                .scan_each(&from, &end, max.saturating_add(1), |_, val| {
                    if entries.len() == max {
                        eof = false;
                        return;
                    }
                    match dirent_parts(val) {
                        Ok((hdr, name)) => entries.push(DirEntry {
                            kind: dtype_kind(hdr.dtype),
                            name: name.to_vec(),
                            ino: hdr.ino.get(),
                            generation: hdr.generation.get(),
                            cookie: hdr.pos.get(),
                        }),
                        Err(e) => {
                            bad.get_or_insert(e);
                        }
                    }
                })?;
            if let Some(e) = bad {
                return Err(e);
            }
            Ok(DirPage { entries, eof })
        })
    }

    /// Every path of `ino` (one per hard link), found through link back-references.
    pub fn ino_paths(&self, ino: u64, max: usize) -> Result<Vec<Vec<u8>>, FsError> {
        self.retry(|| {
            let mut guard = self.inner();
            let inner = &mut *guard;
            if ino == ROOT_INO {
                return Ok(vec![b"/".to_vec()]);
            }
            let refs = inner.client.range(
                &backref_key(ino, 0, 0),
                &backref_key(ino, u64::MAX, u64::MAX),
            )?;
            let mut out = Vec::new();
            for r in refs.into_iter().take(max) {
                let d = decode_dirent(&r.val)?;
                let mut parts = vec![d.name];
                let mut p = r.key.second.get();
                let mut depth = 0;
                while p != ROOT_INO {
                    let first = backref_key(p, 0, 0);
                    let last = backref_key(p, u64::MAX, u64::MAX);
                    let Some(up) = inner.client.next(&first, &last)? else {
                        break;
                    };
                    parts.push(decode_dirent(&up.val)?.name);
                    p = up.key.second.get();
                    depth += 1;
                    if depth > 4096 {
                        return Err(FsError::Corrupt(format!("path of {ino} loops")));
                    }
                }
                let mut path = Vec::new();
                for part in parts.iter().rev() {
                    path.push(b'/');
                    path.extend_from_slice(part);
                }
                out.push(path);
            }
            Ok(out)
        })
    }
}

fn dtype_kind(dtype: u8) -> Option<FileType> {
    FileType::from_mode((dtype as u32) << 12)
}
