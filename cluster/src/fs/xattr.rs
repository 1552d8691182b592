//! Extended attributes, xattr search (`scoutfs.srch.`), hidden xattrs (`scoutfs.hide.`), and
//! inode index walks.
//!
//! An xattr is stored as items keyed (ino, XATTR, name hash, id, part): part 0 holds an
//! [`XattrHeader`], the name and the start of the value; further parts continue the value in
//! chunks of up to 896 bytes. Xattrs whose name starts with `scoutfs.srch.` also get a search
//! item keyed by the name's hash, so [`Fs::search_xattrs`] finds their inodes without walking
//! the namespace. Names starting with `scoutfs.hide.` are not listed.

use zerocopy::{FromBytes, IntoBytes};

use super::inode::{read_inode, write_inode, Change};
use super::types::{FsError, IndexPage, SeqIndex, Time};
use super::{Fs, SpaceUse};
use crate::btree::Item;
use crate::client::Client;
use crate::format::inode::{
    index_key, name_hash, srch_key, ty, xattr_key, XattrHeader, XATTR_VALUE_MAX,
};
use crate::format::key::zone;
use crate::format::layout::BTREE_MAX_VAL_LEN;
use crate::format::Key;
use crate::lock::LockMode;

pub const SRCH_PREFIX: &[u8] = b"scoutfs.srch.";
pub const HIDE_PREFIX: &[u8] = b"scoutfs.hide.";
const NAMESPACES: [&[u8]; 5] = [b"user.", b"trusted.", b"security.", b"system.", b"scoutfs."];
const EOPNOTSUPP: i32 = 95;

/// Whether `set_xattr` may create or replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrSet {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with `Exists` if it exists.
    Create,
    /// Fail with `NoAttr` if it does not.
    Replace,
}

fn check_name(name: &[u8]) -> Result<(), FsError> {
    if name.is_empty() || name.len() > 255 {
        return Err(if name.is_empty() {
            FsError::Invalid("empty xattr name")
        } else {
            FsError::Range
        });
    }
    if !NAMESPACES
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
    {
        return Err(FsError::Errno(EOPNOTSUPP));
    }
    Ok(())
}

/// A stored xattr: its id and all of its items.
struct Found {
    id: u64,
    parts: Vec<Key>,
    value: Vec<u8>,
}

fn find(client: &mut Client, ino: u64, name: &[u8]) -> Result<Option<Found>, FsError> {
    let hash = name_hash(name);
    let items = client.range(
        &xattr_key(ino, hash, 0, 0),
        &xattr_key(ino, hash, u64::MAX, u8::MAX),
    )?;
    let mut i = 0;
    while i < items.len() {
        let id = items[i].key.third.get();
        let group: Vec<&Item> = items[i..]
            .iter()
            .take_while(|it| it.key.third.get() == id)
            .collect();
        i += group.len();
        let bytes: Vec<u8> = group.iter().flat_map(|it| it.val.iter().copied()).collect();
        let (h, rest) = XattrHeader::read_from_prefix(&bytes)
            .map_err(|_| FsError::Corrupt(format!("xattr of inode {ino}")))?;
        let nl = h.name_len.get() as usize;
        if rest.len() < nl || &rest[..nl] != name {
            continue;
        }
        let value = rest[nl..].to_vec();
        if value.len() != h.val_len.get() as usize {
            return Err(FsError::Corrupt(format!(
                "xattr of inode {ino}: value length"
            )));
        }
        return Ok(Some(Found {
            id,
            parts: group.iter().map(|it| it.key).collect(),
            value,
        }));
    }
    Ok(None)
}

/// Remove the search item of a srch-tagged xattr whose part 0 is `it` (inode deletion).
pub(crate) fn drop_srch_entry(
    client: &mut Client,
    ino: u64,
    it: &Item,
    wseq: u64,
) -> Result<(), FsError> {
    let Ok((h, rest)) = XattrHeader::read_from_prefix(&it.val) else {
        return Ok(());
    };
    let nl = (h.name_len.get() as usize).min(rest.len());
    let name = &rest[..nl];
    if name.starts_with(SRCH_PREFIX) {
        client.delete(srch_key(name_hash(name), ino, it.key.third.get()), wseq)?;
    }
    Ok(())
}

impl Fs {
    /// The value of xattr `name`.
    pub fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        self.retry(|| {
            check_name(name)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            let _l = self.lock_inodes(inner, &[ino], LockMode::Read)?;
            read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            Ok(find(&mut inner.client, ino, name)?
                .ok_or(FsError::NoAttr)?
                .value)
        })
    }

    /// Set xattr `name` to `value` (up to 64 KiB).
    pub fn set_xattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        how: XattrSet,
    ) -> Result<(), FsError> {
        self.retry(|| {
            check_name(name)?;
            if value.len() > XATTR_VALUE_MAX {
                return Err(FsError::Errno(7)); // E2BIG
            }
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Grows)?;
            let wseq = held.write_seq();
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            let old = find(&mut inner.client, ino, name)?;
            match (&old, how) {
                (Some(_), XattrSet::Create) => return Err(FsError::Exists),
                (None, XattrSet::Replace) => return Err(FsError::NoAttr),
                _ => {}
            }
            let hash = name_hash(name);
            let srch = name.starts_with(SRCH_PREFIX);
            if let Some(o) = &old {
                for k in &o.parts {
                    inner.client.delete(*k, wseq)?;
                }
                if srch {
                    inner.client.delete(srch_key(hash, ino, o.id), wseq)?;
                }
            }
            let id = i.next_xattr_id.get();
            i.next_xattr_id = (id + 1).into();
            let h = XattrHeader {
                val_len: (value.len() as u32).into(),
                name_len: (name.len() as u16).into(),
                _pad: [0; 2],
            };
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value);
            for (part, chunk) in bytes.chunks(BTREE_MAX_VAL_LEN).enumerate() {
                inner
                    .client
                    .put(xattr_key(ino, hash, id, part as u8), chunk.to_vec(), wseq)?;
            }
            if srch {
                inner
                    .client
                    .put(srch_key(hash, ino, id), Vec::new(), wseq)?;
            }
            i.ctime = Time::now().to_disk();
            write_inode(&mut inner.client, ino, &mut i, Change::Meta, wseq)?;
            self.maybe_commit(inner)?;
            Ok(())
        })
    }

    /// Remove xattr `name`.
    pub fn remove_xattr(&self, ino: u64, name: &[u8]) -> Result<(), FsError> {
        self.retry(|| {
            check_name(name)?;
            let mut guard = self.inner();
            let inner = &mut *guard;
            let held = self.lock_inodes_to_change(inner, &[ino], SpaceUse::Bounded)?;
            let wseq = held.write_seq();
            let mut i = read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            let o = find(&mut inner.client, ino, name)?.ok_or(FsError::NoAttr)?;
            for k in &o.parts {
                inner.client.delete(*k, wseq)?;
            }
            if name.starts_with(SRCH_PREFIX) {
                inner
                    .client
                    .delete(srch_key(name_hash(name), ino, o.id), wseq)?;
            }
            i.ctime = Time::now().to_disk();
            write_inode(&mut inner.client, ino, &mut i, Change::Meta, wseq)?;
            self.maybe_commit(inner)?;
            Ok(())
        })
    }

    /// Names of the xattrs of `ino`, without `scoutfs.hide.` ones.
    pub fn list_xattrs(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        self.retry(|| {
            let mut guard = self.inner();
            let inner = &mut *guard;
            let _l = self.lock_inodes(inner, &[ino], LockMode::Read)?;
            read_inode(&mut inner.client, ino)?.ok_or(FsError::NotFound)?;
            let items = inner.client.range(
                &xattr_key(ino, 0, 0, 0),
                &xattr_key(ino, u64::MAX, u64::MAX, u8::MAX),
            )?;
            let mut names = Vec::new();
            for it in items.iter().filter(|it| it.key.fourth == 0) {
                let (h, rest) = XattrHeader::read_from_prefix(&it.val)
                    .map_err(|_| FsError::Corrupt(format!("xattr of inode {ino}")))?;
                let nl = (h.name_len.get() as usize).min(rest.len());
                let name = rest[..nl].to_vec();
                if !name.starts_with(HIDE_PREFIX) {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
    }

    /// Inodes carrying an xattr named `name` (a `scoutfs.srch.` name), from the search
    /// items of committed transactions and this mount's open one. May include inodes whose
    /// name hash merely collides; callers that need certainty check with `get_xattr`.
    pub fn search_xattrs(&self, name: &[u8]) -> Result<Vec<u64>, FsError> {
        self.retry(|| {
            if !name.starts_with(SRCH_PREFIX) {
                return Err(FsError::Invalid("only scoutfs.srch. xattrs are indexed"));
            }
            let mut guard = self.inner();
            let inner = &mut *guard;
            inner.client.refresh_roots()?;
            let hash = name_hash(name);
            let items = inner
                .client
                .range(&srch_key(hash, 0, 0), &srch_key(hash, u64::MAX, u64::MAX))?;
            let mut inos: Vec<u64> = items.iter().map(|it| it.key.second.get()).collect();
            inos.dedup();
            Ok(inos)
        })
    }

    /// `(seq, ino)` entries of an inode index with `first <= seq <= last`, after `after`
    /// (exclusive), at most `limit`, never above the stable horizon (no open transaction
    /// anywhere can still write a seq at or below it, so a walker that checkpoints the last
    /// seq it saw misses nothing).
    pub fn walk_inodes(
        &self,
        index: SeqIndex,
        first: u64,
        last: u64,
        after: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<IndexPage, FsError> {
        self.retry(|| {
            let t = match index {
                SeqIndex::MetaSeq => ty::META_SEQ,
                SeqIndex::DataSeq => ty::DATA_SEQ,
            };
            let mut guard = self.inner();
            let inner = &mut *guard;
            // The horizon first, then the roots: every transaction at or below the horizon was
            // committed before it was computed, so roots sampled after it hold all their items.
            // (The other order could miss a commit landing between the two.)
            let horizon = inner.client.last_seq()?;
            inner.client.refresh_roots()?;
            let last = last.min(horizon);
            let mut entries = Vec::new();
            if first > last {
                return Ok(IndexPage {
                    entries,
                    horizon,
                    next: None,
                });
            }
            let from = match after {
                Some((s, i)) => match index_key(t, s, i).next() {
                    Some(k) => k.max(index_key(t, first, 0)),
                    None => {
                        return Ok(IndexPage {
                            entries,
                            horizon,
                            next: None,
                        })
                    }
                },
                None => index_key(t, first, 0),
            };
            let end = index_key(t, last, u64::MAX);
            let mut more = false;
            // One merged scan for the page (plus one item to learn whether more follow).
            for it in inner.client.scan(&from, &end, limit.saturating_add(1))? {
                if it.key.zone != zone::INODE_INDEX {
                    break;
                }
                if entries.len() == limit {
                    more = true;
                    break;
                }
                entries.push((it.key.second.get(), it.key.third.get()));
            }
            let next = if more { entries.last().copied() } else { None };
            Ok(IndexPage {
                entries,
                horizon,
                next,
            })
        })
    }
}
