//! Free-extent btrees.
//!
//! Every free extent `[start, start + len)` is two value-less items of the same tree: one in
//! `FREE_EXTENT_BLKNO` keyed by (last block, len) and one in `FREE_EXTENT_ORDER` keyed by
//! (!len, last block, len). `AllocRoot::total_len` counts the free blocks.

use crate::btree::{self, BtreeError, BtreeWriter, Item};
use crate::format::alloc::{extent_of_blkno_key, free_extent_keys};
use crate::format::key::zone;
use crate::format::{AllocRoot, FormatError, Key};

fn empty_item(key: Key) -> Item {
    Item {
        key,
        seq: 0,
        flags: 0,
        val: Vec::new(),
    }
}

fn blkno_zone_end() -> Key {
    Key::new(
        zone::FREE_EXTENT_BLKNO,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    )
}

/// The free extent with the smallest last block >= `blkno`, if any.
fn extent_ending_at_or_after(
    w: &BtreeWriter<'_>,
    root: &AllocRoot,
    blkno: u64,
) -> Result<Option<(u64, u64)>, BtreeError> {
    let from = Key::new(zone::FREE_EXTENT_BLKNO, blkno, 0, 0, 0, 0);
    let item = btree::next(w.md, Some(&*w.dirty), &root.root, &from, &blkno_zone_end())?;
    match item {
        None => Ok(None),
        Some(it) => extent_of_blkno_key(&it.key).map(Some).ok_or_else(|| {
            FormatError::corrupt("free extent tree", format!("bad key {:?}", it.key)).into()
        }),
    }
}

fn remove_extent(
    w: &mut BtreeWriter<'_>,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<(), BtreeError> {
    for k in free_extent_keys(start, len) {
        w.delete(&mut root.root, &k)?;
    }
    root.total_len = (root.total_len.get() - len).into();
    Ok(())
}

fn add_extent(
    w: &mut BtreeWriter<'_>,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<(), BtreeError> {
    for k in free_extent_keys(start, len) {
        w.insert(&mut root.root, empty_item(k))?;
    }
    root.total_len = (root.total_len.get() + len).into();
    Ok(())
}

/// Return `[start, start + len)` to the free extents, merging with its neighbours. Freeing
/// blocks that are already free is reported as corruption (a double free), not ignored.
pub fn free_extent(
    w: &mut BtreeWriter<'_>,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<(), BtreeError> {
    if len == 0 {
        return Ok(());
    }
    let end = start
        .checked_add(len - 1)
        .ok_or_else(|| FormatError::corrupt("free extent", "extent wraps"))?;
    // Any free extent ending at or after `start` that begins at or before `end` overlaps.
    if let Some((s, l)) = extent_ending_at_or_after(w, root, start)? {
        if s <= end {
            return Err(FormatError::corrupt(
                "free extent tree",
                format!("double free: [{start}, +{len}) overlaps free [{s}, +{l})"),
            )
            .into());
        }
    }
    let (mut new_start, mut new_len) = (start, len);
    if start > 0 {
        if let Some((s, l)) = extent_ending_at_or_after(w, root, start - 1)? {
            if s + l == start {
                remove_extent(w, root, s, l)?;
                new_start = s;
                new_len += l;
            }
        }
    }
    if let Some((s, l)) = extent_ending_at_or_after(w, root, end.saturating_add(1))? {
        if s == end + 1 {
            remove_extent(w, root, s, l)?;
            new_len += l;
        }
    }
    add_extent(w, root, new_start, new_len)
}

/// Allocate up to `want` contiguous blocks from the largest free extent. Returns
/// `(start, len)` with `1 <= len <= want`, or `None` when nothing is free.
pub fn alloc_extent(
    w: &mut BtreeWriter<'_>,
    root: &mut AllocRoot,
    want: u64,
) -> Result<Option<(u64, u64)>, BtreeError> {
    if want == 0 {
        return Ok(None);
    }
    let first = Key::new(zone::FREE_EXTENT_ORDER, 0, 0, 0, 0, 0);
    let last = Key::new(
        zone::FREE_EXTENT_ORDER,
        u64::MAX,
        u8::MAX,
        u64::MAX,
        u64::MAX,
        u8::MAX,
    );
    let Some(it) = btree::next(w.md, Some(&*w.dirty), &root.root, &first, &last)? else {
        return Ok(None);
    };
    let (end, len) = (it.key.second.get(), it.key.third.get());
    if len == 0 || len - 1 > end || it.key.first.get() != !len {
        return Err(
            FormatError::corrupt("free extent tree", format!("bad key {:?}", it.key)).into(),
        );
    }
    let start = end - (len - 1);
    let take = want.min(len);
    remove_extent(w, root, start, len)?;
    if take < len {
        add_extent(w, root, start + take, len - take)?;
    }
    Ok(Some((start, take)))
}

/// Remove exactly `[start, start + len)`, which must be free (used when a specific range must
/// be taken, e.g. by mkfs-time reservations or tests).
pub fn take_range(
    w: &mut BtreeWriter<'_>,
    root: &mut AllocRoot,
    start: u64,
    len: u64,
) -> Result<(), BtreeError> {
    let Some((s, l)) = extent_ending_at_or_after(w, root, start + len - 1)? else {
        return Err(BtreeError::NotFound);
    };
    if s > start || s + l < start + len {
        return Err(BtreeError::NotFound);
    }
    remove_extent(w, root, s, l)?;
    if s < start {
        add_extent(w, root, s, start - s)?;
    }
    if start + len < s + l {
        add_extent(w, root, start + len, s + l - (start + len))?;
    }
    Ok(())
}

/// Every free extent in position order (for fsck and tests).
pub fn list_extents(
    md: &scoutgw_blockdev::MetaDev,
    dirty: Option<&btree::Dirty>,
    root: &AllocRoot,
) -> Result<Vec<(u64, u64)>, BtreeError> {
    let first = Key::new(zone::FREE_EXTENT_BLKNO, 0, 0, 0, 0, 0);
    btree::range(md, dirty, &root.root, &first, &blkno_zone_end())?
        .iter()
        .map(|it| {
            extent_of_blkno_key(&it.key).ok_or_else(|| {
                FormatError::corrupt("free extent tree", format!("bad key {:?}", it.key)).into()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::tests::{test_dev, CheckedAlloc};
    use crate::btree::Dirty;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model_extents(free: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &b in free {
            match out.last_mut() {
                Some((s, l)) if *s + *l == b => *l += 1,
                _ => out.push((b, 1)),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Frees and allocations keep the tree equal to a set of free blocks, with
        /// neighbouring extents always merged, and double frees refused.
        #[test]
        fn extent_tree_matches_a_set_of_free_blocks(ops in proptest::collection::vec((any::<bool>(), 0u64..2000, 1u64..64), 1..200)) {
            let (_f, md) = test_dev(512);
            let mut alloc = CheckedAlloc::new(2, 512);
            let mut dirty = Dirty::new(1);
            let mut root = AllocRoot::default();
            let mut free: BTreeSet<u64> = BTreeSet::new();
            let mut w = BtreeWriter { md: &md, dirty: &mut dirty, alloc: &mut alloc };
            for (is_free, start, len) in ops {
                if is_free {
                    let overlaps = (start..start + len).any(|b| free.contains(&b));
                    let res = free_extent(&mut w, &mut root, start, len);
                    if overlaps {
                        prop_assert!(matches!(res, Err(BtreeError::Format(_))));
                        continue;
                    }
                    res.unwrap();
                    free.extend(start..start + len);
                } else {
                    let largest = model_extents(&free).iter().map(|e| e.1).max();
                    match alloc_extent(&mut w, &mut root, len).unwrap() {
                        None => prop_assert!(free.is_empty()),
                        Some((s, l)) => {
                            prop_assert_eq!(l, len.min(largest.unwrap()));
                            for b in s..s + l { prop_assert!(free.remove(&b)); }
                        }
                    }
                }
                prop_assert_eq!(root.total_len.get(), free.len() as u64);
            }
            prop_assert_eq!(list_extents(&md, Some(&*w.dirty), &root).unwrap(), model_extents(&free));
        }
    }

    #[test]
    fn take_range_splits_an_extent() {
        let (_f, md) = test_dev(64);
        let mut alloc = CheckedAlloc::new(2, 64);
        let mut dirty = Dirty::new(1);
        let mut root = AllocRoot::default();
        let mut w = BtreeWriter {
            md: &md,
            dirty: &mut dirty,
            alloc: &mut alloc,
        };
        free_extent(&mut w, &mut root, 100, 50).unwrap();
        take_range(&mut w, &mut root, 110, 5).unwrap();
        assert_eq!(
            list_extents(&md, Some(&*w.dirty), &root).unwrap(),
            vec![(100, 10), (115, 35)]
        );
        assert!(take_range(&mut w, &mut root, 108, 5).is_err());
    }
}
