//! Model-based tests of the COW btree against `BTreeMap`, on a real device file.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use scoutgw_blockdev::{DeviceOptions, FileDevice, MetaDev};

use super::*;

/// An allocator that checks the rules: no block handed out twice, no double free, and no
/// reuse of a freed committed block before the commit.
#[derive(Debug, Default)]
pub(crate) struct CheckedAlloc {
    next: u64,
    limit: u64,
    reusable: Vec<u64>,
    freed_this_txn: Vec<u64>,
    pub in_use: BTreeSet<u64>,
}

impl CheckedAlloc {
    pub fn new(first: u64, limit: u64) -> Self {
        Self {
            next: first,
            limit,
            ..Self::default()
        }
    }

    /// The transaction is durable: its freed blocks may be reused.
    pub fn commit(&mut self) {
        self.reusable.append(&mut self.freed_this_txn);
    }
}

impl MetaAlloc for CheckedAlloc {
    fn alloc_meta(&mut self) -> Result<u64, BtreeError> {
        let b = match self.reusable.pop() {
            Some(b) => b,
            None if self.next < self.limit => {
                self.next += 1;
                self.next - 1
            }
            None => return Err(BtreeError::NoSpace),
        };
        assert!(self.in_use.insert(b), "block {b} allocated twice");
        Ok(b)
    }

    fn free_meta(&mut self, blkno: u64) -> Result<(), BtreeError> {
        assert!(self.in_use.remove(&blkno), "block {blkno} freed twice");
        self.freed_this_txn.push(blkno);
        Ok(())
    }

    fn free_unwritten(&mut self, blkno: u64) -> Result<(), BtreeError> {
        assert!(self.in_use.remove(&blkno), "block {blkno} freed twice");
        self.reusable.push(blkno);
        Ok(())
    }
}

pub(crate) fn test_dev(blocks: u64) -> (tempfile::NamedTempFile, MetaDev) {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(blocks * 65536).unwrap();
    let d = FileDevice::open(f.path(), DeviceOptions::default()).unwrap();
    (f, MetaDev::new(Arc::new(d), 0x5eed, 64 << 20))
}

fn key(n: u32) -> Key {
    Key::new(16, n as u64 / 7, 4, n as u64, 0, 0)
}

fn item(n: u32, len: usize, tag: u8) -> Item {
    Item {
        key: key(n),
        seq: n as u64,
        flags: 0,
        val: vec![tag; len],
    }
}

/// Every block the tree references, once each, equals the allocator's in-use set.
fn check_blocks(md: &MetaDev, dirty: Option<&Dirty>, root: &BtreeRoot, alloc: &CheckedAlloc) {
    let mut seen = BTreeSet::new();
    walk_blocks(md, dirty, root, &mut |r, _| {
        assert!(
            seen.insert(r.blkno.get()),
            "block {} referenced twice",
            r.blkno.get()
        );
    })
    .unwrap();
    assert_eq!(
        seen, alloc.in_use,
        "referenced blocks differ from allocated blocks"
    );
}

fn check_model(md: &MetaDev, dirty: Option<&Dirty>, root: &BtreeRoot, model: &BTreeMap<Key, Item>) {
    let all = range(md, dirty, root, &Key::MIN, &Key::MAX).unwrap();
    let expect: Vec<Item> = model.values().cloned().collect();
    assert_eq!(all.len(), expect.len());
    assert!(all == expect, "tree contents differ from the model");
}

#[derive(Debug, Clone)]
enum Op {
    Put(u32, usize, u8),
    Insert(u32, usize, u8),
    Update(u32, usize, u8),
    Delete(u32),
    Lookup(u32),
    Next(u32),
    Prev(u32),
    TrimBelow(u32),
    Commit,
}

fn op_strategy(keys: u32) -> impl Strategy<Value = Op> {
    let len = prop_oneof![Just(0usize), 0usize..64, Just(BTREE_MAX_VAL_LEN)];
    prop_oneof![
        6 => (0..keys, len.clone(), any::<u8>()).prop_map(|(k, l, t)| Op::Put(k, l, t)),
        2 => (0..keys, len.clone(), any::<u8>()).prop_map(|(k, l, t)| Op::Insert(k, l, t)),
        2 => (0..keys, len, any::<u8>()).prop_map(|(k, l, t)| Op::Update(k, l, t)),
        4 => (0..keys).prop_map(Op::Delete),
        2 => (0..keys).prop_map(Op::Lookup),
        1 => (0..keys).prop_map(Op::Next),
        1 => (0..keys).prop_map(Op::Prev),
        // Low keys, so that a trim takes a part of the tree rather than most of it.
        1 => (0..keys / 8).prop_map(Op::TrimBelow),
        1 => Just(Op::Commit),
    ]
}

fn run_ops(ops: &[Op], bulk: u32) {
    let (_f, md) = test_dev(8192);
    let mut alloc = CheckedAlloc::new(2, 8192);
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    let mut model: BTreeMap<Key, Item> = BTreeMap::new();
    let mut seq = 1;
    // Bulk-load enough big items for a two-level tree, then run the random operations.
    {
        let mut w = BtreeWriter {
            md: &md,
            dirty: &mut dirty,
            alloc: &mut alloc,
        };
        for n in 0..bulk {
            let it = item(n * 3, 700, n as u8);
            w.put(&mut root, it.clone()).unwrap();
            model.insert(it.key, it);
        }
    }
    for op in ops {
        let mut w = BtreeWriter {
            md: &md,
            dirty: &mut dirty,
            alloc: &mut alloc,
        };
        match *op {
            Op::Put(k, l, t) => {
                let it = item(k, l, t);
                let old = w.put(&mut root, it.clone()).unwrap();
                assert_eq!(old, model.insert(it.key, it));
            }
            Op::Insert(k, l, t) => {
                let it = item(k, l, t);
                let res = w.insert(&mut root, it.clone());
                match model.entry(it.key) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert!(matches!(res, Err(BtreeError::Exists)))
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        res.unwrap();
                        v.insert(it);
                    }
                }
            }
            Op::Update(k, l, t) => {
                let it = item(k, l, t);
                let res = w.update(&mut root, it.clone());
                match model.get(&it.key).cloned() {
                    Some(old) => {
                        assert_eq!(res.unwrap(), old);
                        model.insert(it.key, it);
                    }
                    None => assert!(matches!(res, Err(BtreeError::NotFound))),
                }
            }
            Op::Delete(k) => {
                let res = w.delete(&mut root, &key(k));
                match model.remove(&key(k)) {
                    Some(old) => assert_eq!(res.unwrap(), old),
                    None => assert!(matches!(res, Err(BtreeError::NotFound))),
                }
            }
            Op::Lookup(k) => {
                let got = lookup(&md, Some(&dirty), &root, &key(k)).unwrap();
                assert_eq!(got.as_ref(), model.get(&key(k)));
            }
            Op::Next(k) => {
                let got = next(&md, Some(&dirty), &root, &key(k), &Key::MAX).unwrap();
                assert_eq!(got.as_ref(), model.range(key(k)..).next().map(|(_, v)| v));
            }
            Op::Prev(k) => {
                let got = prev(&md, Some(&dirty), &root, &key(k), &Key::MIN).unwrap();
                assert_eq!(
                    got.as_ref(),
                    model.range(..=key(k)).next_back().map(|(_, v)| v)
                );
            }
            Op::TrimBelow(k) => {
                w.trim_below(&mut root, &key(k)).unwrap();
                model.retain(|have, _| *have >= key(k));
            }
            Op::Commit => {
                seq += 1;
                dirty.write(&md, seq).unwrap();
                md.flush().unwrap();
                alloc.commit();
                check_blocks(&md, None, &root, &alloc);
                check_model(&md, None, &root, &model);
            }
        }
    }
    check_model(&md, Some(&dirty), &root, &model);
    check_blocks(&md, Some(&dirty), &root, &alloc);
    seq += 1;
    dirty.write(&md, seq).unwrap();
    check_model(&md, None, &root, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn btree_matches_a_btreemap_model(ops in proptest::collection::vec(op_strategy(400), 1..300)) {
        run_ops(&ops, 0);
    }

    #[test]
    fn two_level_btree_matches_a_btreemap_model(ops in proptest::collection::vec(op_strategy(1200), 1..400)) {
        run_ops(&ops, 300);
    }
}

/// A merge trims its input trees below the key it reached after every slice: across a
/// three-level tree, each trim leaves exactly the items at or above the key, frees every
/// block it no longer references, copies no more than one block per level, and a trim
/// past the last key leaves an empty tree.
#[test]
fn trimming_below_a_key_frees_what_it_passes_and_copies_one_path() {
    let (_f, md) = test_dev(1 << 16);
    let mut alloc = CheckedAlloc::new(2, 1 << 16);
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    let mut model: BTreeMap<Key, Item> = BTreeMap::new();
    {
        let mut w = BtreeWriter {
            md: &md,
            dirty: &mut dirty,
            alloc: &mut alloc,
        };
        for n in 0..40_000 {
            let it = item(n, BTREE_MAX_VAL_LEN, n as u8);
            w.put(&mut root, it.clone()).unwrap();
            model.insert(it.key, it);
        }
    }
    let mut seq = 2;
    dirty.write(&md, seq).unwrap();
    alloc.commit();
    assert_eq!(root.height, 3, "the test needs a three-level tree");
    for below in [
        0, 1, 2, 5_000, 5_001, 14_999, 22_222, 39_998, 39_999, 40_000, 50_000,
    ] {
        let before = alloc.in_use.len();
        let height = root.height as usize;
        {
            let mut w = BtreeWriter {
                md: &md,
                dirty: &mut dirty,
                alloc: &mut alloc,
            };
            w.trim_below(&mut root, &key(below)).unwrap();
        }
        model.retain(|have, _| *have >= key(below));
        check_model(&md, Some(&dirty), &root, &model);
        check_blocks(&md, Some(&dirty), &root, &alloc);
        assert!(
            alloc.in_use.len() <= before,
            "trim below {below} grew the tree from {before} to {} blocks",
            alloc.in_use.len()
        );
        assert!(
            dirty.len() <= height,
            "trim below {below} copied {} blocks in a tree of height {height}",
            dirty.len()
        );
        seq += 1;
        dirty.write(&md, seq).unwrap();
        alloc.commit();
        check_model(&md, None, &root, &model);
    }
    assert!(root.is_empty(), "trimmed past the last key");
    assert!(alloc.in_use.is_empty());
}

#[test]
fn committed_root_never_changes() {
    let (_f, md) = test_dev(4096);
    let mut alloc = CheckedAlloc::new(2, 4096);
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    let mut w = BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    };
    for n in 0..500 {
        w.put(&mut root, item(n, 500, 1)).unwrap();
    }
    dirty.write(&md, 2).unwrap();
    alloc.commit();
    let snapshot = root;
    let before = range(&md, None, &snapshot, &Key::MIN, &Key::MAX).unwrap();
    let mut w = BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    };
    for n in 0..500 {
        if n % 2 == 0 {
            w.delete(&mut root, &key(n)).unwrap();
        } else {
            w.put(&mut root, item(n, 100, 2)).unwrap();
        }
    }
    // Nothing the open transaction did is visible through the committed root, even after
    // the dirty blocks are written (they went to newly allocated blocks).
    assert_eq!(
        range(&md, None, &snapshot, &Key::MIN, &Key::MAX).unwrap(),
        before
    );
    dirty.write(&md, 3).unwrap();
    assert_eq!(
        range(&md, None, &snapshot, &Key::MIN, &Key::MAX).unwrap(),
        before
    );
    assert_eq!(
        range(&md, None, &root, &Key::MIN, &Key::MAX).unwrap().len(),
        250
    );
}

#[test]
fn deep_tree_of_max_values_grows_to_three_levels_and_shrinks_back() {
    let (_f, md) = test_dev(1 << 16);
    let mut alloc = CheckedAlloc::new(2, 1 << 16);
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    let n_items: u32 = 80_000;
    let mut w = BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    };
    for n in 0..n_items {
        w.put(
            &mut root,
            item(
                n.wrapping_mul(2_654_435_761) % 1_000_000,
                BTREE_MAX_VAL_LEN,
                3,
            ),
        )
        .unwrap();
    }
    assert_eq!(root.height, 3, "80k items of 896 bytes need three levels");
    dirty.write(&md, 2).unwrap();
    alloc.commit();
    check_blocks(&md, None, &root, &alloc);
    let all = range(&md, None, &root, &Key::MIN, &Key::MAX).unwrap();
    assert_eq!(all.len(), n_items as usize);
    let mut w = BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    };
    for it in &all {
        w.delete(&mut root, &it.key).unwrap();
    }
    assert!(root.is_empty());
    dirty.write(&md, 3).unwrap();
    alloc.commit();
    assert!(
        alloc.in_use.is_empty(),
        "blocks leaked: {:?}",
        alloc.in_use.len()
    );
}

#[test]
fn stale_root_is_reported_as_stale() {
    let (_f, md) = test_dev(1024);
    let mut alloc = CheckedAlloc::new(2, 1024);
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    }
    .put(&mut root, item(1, 10, 1))
    .unwrap();
    dirty.write(&md, 2).unwrap();
    alloc.commit();
    let old = root;
    BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    }
    .put(&mut root, item(2, 10, 1))
    .unwrap();
    dirty.write(&md, 3).unwrap();
    alloc.commit();
    // The old root's block was freed; rewrite it as a newer version.
    BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    }
    .put(&mut root, item(3, 10, 1))
    .unwrap();
    dirty.write(&md, 4).unwrap();
    let (_f2, fresh) = (0, MetaDev::new(md.device().clone(), md.fsid(), 0));
    let err = lookup(&fresh, None, &old, &key(1)).unwrap_err();
    assert!(err.is_stale(), "{err:?}");
}

/// Fill one leaf nearly full, empty its left neighbour: deleting from the neighbour must
/// rebalance items across the two (they cannot merge), keeping every key reachable.
#[test]
fn deleting_next_to_a_full_leaf_rebalances() {
    let (_f, md) = test_dev(4096);
    let mut alloc = CheckedAlloc::new(2, 4096);
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    let mut model = BTreeMap::new();
    let mut w = BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    };
    for n in 0..400 {
        let it = item(n * 100, 700, 1);
        w.put(&mut root, it.clone()).unwrap();
        model.insert(it.key, it);
    }
    // The leaf boundaries, from the ranges reads cover.
    let mut leaves = Vec::new();
    let mut from = Key::MIN;
    loop {
        let l = read_leaf(&md, Some(&*w.dirty), &root, &from, &Key::MAX).unwrap();
        leaves.push(
            l.items
                .iter()
                .map(|it| it.key.second.get() as u32)
                .collect::<Vec<_>>(),
        );
        match l.covered_end.next() {
            Some(n) if l.covered_end < Key::MAX => from = n,
            _ => break,
        }
    }
    assert!(leaves.len() >= 4, "{} leaves", leaves.len());
    // Fill leaf 2 up to 84 items of 752 bytes (about 63 KiB, just short of a split).
    let (lo, hi) = (leaves[2][0], *leaves[2].last().unwrap());
    let mut n = lo + 1;
    let mut count = leaves[2].len();
    while count < 84 && n < hi {
        if n % 100 != 0 {
            let it = item(n, 700, 2);
            w.put(&mut root, it.clone()).unwrap();
            model.insert(it.key, it);
            count += 1;
        }
        n += 3;
    }
    let splits_before = w.dirty.stats.splits;
    // Empty leaf 1 down to a few items.
    for k in leaves[1].iter().skip(3) {
        w.delete(&mut root, &key(*k)).unwrap();
        model.remove(&key(*k));
    }
    assert_eq!(w.dirty.stats.splits, splits_before);
    assert!(w.dirty.stats.rebalances > 0, "{:?}", w.dirty.stats);
    check_model(&md, Some(&dirty), &root, &model);
    check_blocks(&md, Some(&dirty), &root, &alloc);
}

/// Counts what a batch of puts allocates and frees.
#[derive(Debug, Default)]
struct CountingAlloc {
    inner: CheckedAlloc,
    allocs: u64,
    frees: u64,
}

impl MetaAlloc for CountingAlloc {
    fn alloc_meta(&mut self) -> Result<u64, BtreeError> {
        self.allocs += 1;
        self.inner.alloc_meta()
    }
    fn free_meta(&mut self, blkno: u64) -> Result<(), BtreeError> {
        self.frees += 1;
        self.inner.free_meta(blkno)
    }
    fn free_unwritten(&mut self, blkno: u64) -> Result<(), BtreeError> {
        self.inner.free_unwritten(blkno)
    }
}

/// Build and commit a tree of `base` items (key number, value length), then put `batch`
/// in one transaction, in key order with later puts of a key replacing earlier ones (as
/// a client commits its open transaction), and check the blocks it allocated and copied
/// against [`PutCost`] kept up to date as the batch was built.
fn check_put_cost(base: &[(u32, usize)], batch: &[(u32, usize)]) {
    let (_f, md) = test_dev(4096);
    let mut alloc = CountingAlloc {
        inner: CheckedAlloc::new(2, 4096),
        ..CountingAlloc::default()
    };
    let mut dirty = Dirty::new(1);
    let mut root = BtreeRoot::default();
    {
        let mut w = BtreeWriter {
            md: &md,
            dirty: &mut dirty,
            alloc: &mut alloc,
        };
        for &(k, len) in base {
            w.put(&mut root, item(k, len, 1)).unwrap();
        }
    }
    dirty.write(&md, 2).unwrap();
    md.flush().unwrap();
    alloc.inner.commit();

    let mut cost = PutCost::new(&md, &root).unwrap();
    let mut pending: BTreeMap<Key, Item> = BTreeMap::new();
    for &(k, len) in batch {
        let it = item(k, len, 2);
        match pending.insert(it.key, it.clone()) {
            Some(old) => cost.resize(old.val.len(), len),
            None => cost.add(&it.key, len),
        }
    }
    (alloc.allocs, alloc.frees) = (0, 0);
    let mut w = BtreeWriter {
        md: &md,
        dirty: &mut dirty,
        alloc: &mut alloc,
    };
    for it in pending.into_values() {
        w.put(&mut root, it).unwrap();
    }
    assert!(
        alloc.allocs <= cost.blocks(),
        "the batch allocated {} blocks, beyond its bound of {} ({cost:?})",
        alloc.allocs,
        cost.blocks()
    );
    assert!(
        alloc.frees <= cost.copies(),
        "the batch copied {} committed blocks, beyond its bound of {}",
        alloc.frees,
        cost.copies()
    );
}

fn put_cost_item() -> impl Strategy<Value = (u32, usize)> {
    let len = prop_oneof![Just(0usize), 0usize..200, Just(BTREE_MAX_VAL_LEN)];
    (0u32..20_000, len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_batch_of_puts_allocates_no_more_than_its_put_cost(
        base in proptest::collection::vec(put_cost_item(), 0..3000),
        batch in proptest::collection::vec(put_cost_item(), 0..1500),
    ) {
        check_put_cost(&base, &batch);
    }
}

#[test]
fn put_cost_holds_for_full_leaves_and_a_batch_that_touches_them_all() {
    // Leaves full of the largest items, every one of them changed and grown.
    let base: Vec<(u32, usize)> = (0..4000).map(|n| (n * 4, BTREE_MAX_VAL_LEN)).collect();
    let batch: Vec<(u32, usize)> = (0..4000)
        .step_by(3)
        .map(|n| (n * 4 + 1, BTREE_MAX_VAL_LEN))
        .collect();
    check_put_cost(&base, &batch);
    // An empty tree, and a batch that is only replacements of one key.
    check_put_cost(&[], &[(7, 10), (7, BTREE_MAX_VAL_LEN), (7, 0)]);
    check_put_cost(&[], &[]);
}
