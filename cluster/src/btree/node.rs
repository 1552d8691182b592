//! Btree nodes: dirty nodes decoded in memory, clean nodes read in place from cached blocks.

use std::sync::Arc;

use scoutgw_blockdev::{BlockBuf, BlockRef, CachedBlock};
use zerocopy::{FromBytes, IntoBytes};

use crate::format::btree::{BtreeBlock, BtreeBlockBuilder, BtreeItem, BTREE_BLOCK_BYTES};
use crate::format::{FormatError, Key};

/// Bytes of a block header plus btree header.
pub(crate) const NODE_HDR: usize = 48;
/// Bytes of one item header.
pub(crate) const ITEM_HDR: usize = 48;
/// Bytes of a parent item's value (a block ref).
pub(crate) const REF_BYTES: usize = 16;

/// Bytes an item with a value of `val_len` bytes takes in a block.
pub(crate) const fn item_bytes(val_len: usize) -> usize {
    ITEM_HDR + val_len.div_ceil(8) * 8
}

/// An owned item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Key,
    pub seq: u64,
    pub flags: u8,
    pub val: Vec<u8>,
}

/// A node being modified in the open transaction.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub level: u8,
    pub items: Vec<Item>,
    /// Bytes the node takes when encoded.
    pub used: usize,
}

impl Node {
    pub fn new(level: u8) -> Self {
        Self {
            level,
            items: Vec::new(),
            used: NODE_HDR,
        }
    }

    pub fn free(&self) -> usize {
        BTREE_BLOCK_BYTES - self.used
    }

    pub fn decode(blk: &BtreeBlock<'_>) -> Self {
        let mut n = Node::new(blk.level());
        n.items.reserve(blk.len());
        for (it, val) in blk.items() {
            n.used += item_bytes(val.len());
            n.items.push(Item {
                key: it.key,
                seq: it.seq.get(),
                flags: it.flags,
                val: val.to_vec(),
            });
        }
        n
    }

    pub fn encode(&self) -> BlockBuf {
        let mut b = BtreeBlockBuilder::new(self.level);
        for it in &self.items {
            b.push(it.key, it.seq, it.flags, &it.val)
                .expect("dirty node kept within block size and key order");
        }
        b.finish()
    }

    /// Index of the first item with key >= `key` (may be `len`).
    pub fn lower_bound(&self, key: &Key) -> usize {
        self.items.partition_point(|it| it.key < *key)
    }

    pub fn child(&self, i: usize) -> BlockRef {
        BlockRef::read_from_bytes(&self.items[i].val).expect("parent values are refs")
    }

    pub fn set_child(&mut self, i: usize, r: BlockRef) {
        self.items[i].val.copy_from_slice(r.as_bytes());
    }

    pub fn insert_at(&mut self, i: usize, item: Item) {
        self.used += item_bytes(item.val.len());
        self.items.insert(i, item);
    }

    pub fn remove_at(&mut self, i: usize) -> Item {
        let it = self.items.remove(i);
        self.used -= item_bytes(it.val.len());
        it
    }

    pub fn replace_at(&mut self, i: usize, item: Item) {
        self.used -= item_bytes(self.items[i].val.len());
        self.used += item_bytes(item.val.len());
        self.items[i] = item;
    }

    /// Split off the upper half (by bytes) into a new node; `self` keeps the lower half.
    pub fn split_upper(&mut self) -> Node {
        let half = (self.used - NODE_HDR) / 2;
        let mut acc = 0;
        let mut at = 0;
        while at < self.items.len() - 1 {
            acc += item_bytes(self.items[at].val.len());
            at += 1;
            if acc >= half {
                break;
            }
        }
        let upper_items = self.items.split_off(at);
        let mut upper = Node::new(self.level);
        for it in upper_items {
            upper.used += item_bytes(it.val.len());
            upper.items.push(it);
        }
        self.used -= upper.used - NODE_HDR;
        upper
    }

    pub fn last_key(&self) -> Key {
        self.items.last().map_or(Key::MIN, |it| it.key)
    }
}

/// A clean block, its body checked once and then read in place.
#[derive(Debug, Clone)]
pub(crate) struct CleanNode {
    block: Arc<CachedBlock>,
    level: u8,
    len: usize,
}

impl CleanNode {
    pub fn new(block: Arc<CachedBlock>, blkno: u64) -> Result<Self, FormatError> {
        let view = if block.is_body_checked() {
            BtreeBlock::parse_trusted(block.data.as_slice())
        } else {
            let v = BtreeBlock::parse(block.data.as_slice(), blkno)?;
            block.mark_body_checked();
            v
        };
        Ok(Self {
            level: view.level(),
            len: view.len(),
            block,
        })
    }

    pub fn view(&self) -> BtreeBlock<'_> {
        BtreeBlock::parse_trusted(self.block.data.as_slice())
    }

    pub fn level(&self) -> u8 {
        self.level
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn key(&self, i: usize) -> Key {
        let at = NODE_HDR + i * ITEM_HDR;
        Key::read_from_bytes(&self.block.data.as_slice()[at..at + 32]).expect("checked block")
    }

    /// Index of the first item with key >= `key` (may be `len`).
    ///
    /// In a leaf the search starts at a guess interpolated between the first and last keys
    /// and gallops from there: keys spread evenly over a leaf's range (inode numbers, name
    /// hashes, positions), so a leaf that is not in the CPU caches costs a handful of cache
    /// lines instead of the ten or so of a binary search over its item headers. Parents
    /// (last key `Key::MAX`, and hot anyway) are searched by bisection.
    pub fn lower_bound(&self, key: &Key) -> usize {
        let n = self.len;
        if self.level != 0 || n < 16 {
            return self.bisect(key, 0, n);
        }
        let first = self.key(0);
        if *key <= first {
            return 0;
        }
        let last = self.key(n - 1);
        if *key > last {
            return n;
        }
        // key(0) < key <= key(n - 1): the answer is in [1, n - 1].
        let (pf, pl, pk) = (project(&first), project(&last), project(key));
        let guess = if pl > pf {
            1 + ((pk - pf) as f64 / (pl - pf) as f64 * (n - 2) as f64) as usize
        } else {
            n / 2
        };
        let g = guess.clamp(1, n - 1);
        if self.key(g) < *key {
            // Up: the answer is in (below, above].
            let (mut below, mut step) = (g, 1);
            let above = loop {
                let probe = g + step;
                if probe >= n - 1 {
                    break n - 1;
                }
                if self.key(probe) >= *key {
                    break probe;
                }
                below = probe;
                step *= 2;
            };
            self.bisect(key, below + 1, above)
        } else {
            // Down: the answer is in (below, above].
            let (mut above, mut step) = (g, 1);
            let below = loop {
                if step >= g {
                    break 0;
                }
                let probe = g - step;
                if self.key(probe) < *key {
                    break probe;
                }
                above = probe;
                step *= 2;
            };
            self.bisect(key, below + 1, above)
        }
    }

    /// The first index in `[lo, hi)` whose key is >= `key`, or `hi`.
    fn bisect(&self, key: &Key, mut lo: usize, mut hi: usize) -> usize {
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) < *key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    pub fn item(&self, i: usize) -> (BtreeItem, &[u8]) {
        let view = self.view();
        let (it, _) = view.item(i);
        let off = it.val_off.get() as usize;
        (
            it,
            &self.block.data.as_slice()[off..off + it.val_len.get() as usize],
        )
    }

    pub fn owned(&self, i: usize) -> Item {
        let (it, val) = self.item(i);
        Item {
            key: it.key,
            seq: it.seq.get(),
            flags: it.flags,
            val: val.to_vec(),
        }
    }

    pub fn child(&self, i: usize) -> BlockRef {
        self.view().child_ref(i)
    }
}

/// A number that grows with the key order (never the other way): zone, first, type and the
/// high 48 bits of second. Interpolating between two keys' numbers guesses where a key lies.
fn project(k: &Key) -> u128 {
    ((k.zone as u128) << 120)
        | ((k.first.get() as u128) << 56)
        | ((k.ty as u128) << 48)
        | (k.second.get() >> 16) as u128
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A clean leaf holding `keys` (sorted, distinct).
    fn clean_leaf(keys: &[Key]) -> CleanNode {
        let mut n = Node::new(0);
        for (i, k) in keys.iter().enumerate() {
            n.insert_at(
                i,
                Item {
                    key: *k,
                    seq: 1,
                    flags: 0,
                    val: Vec::new(),
                },
            );
        }
        let block = Arc::new(CachedBlock::new(1, n.encode()));
        block.mark_body_checked();
        CleanNode::new(block, 7).unwrap()
    }

    fn spread() -> impl Strategy<Value = Vec<Key>> {
        // Sequential inode numbers, random name hashes, clusters, and keys that differ only
        // below the interpolated bits (third, low bits of second).
        prop_oneof![
            (1u64..1 << 40, 1u64..5, 0usize..1300).prop_map(|(s, d, n)| (0..n as u64)
                .map(|i| Key::new(3, s + i * d, 4, 0, 0, 0))
                .collect()),
            proptest::collection::vec(any::<u64>(), 0..1300)
                .prop_map(|h| h.into_iter().map(|h| Key::new(3, 9, 12, h, 0, 0)).collect()),
            proptest::collection::vec((0u64..4, 0u64..1 << 20), 0..1300).prop_map(|v| v
                .into_iter()
                .map(|(a, b)| Key::new(3, a << 50, 4, b, 0, 0))
                .collect()),
            proptest::collection::vec(0u64..1 << 16, 0..1300).prop_map(|v| v
                .into_iter()
                .map(|t| Key::new(3, 9, 12, t & 0xff, t, 0))
                .collect()),
        ]
        .prop_map(|mut v: Vec<Key>| {
            v.sort();
            v.dedup();
            v
        })
    }

    proptest! {
        #[test]
        fn interpolated_leaf_search_finds_what_bisection_finds(
            keys in spread(),
            probes in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(), 0usize..4), 1..64),
        ) {
            let leaf = clean_leaf(&keys);
            let naive = |k: &Key| keys.partition_point(|x| x < k);
            for (a, b, c, how) in probes {
                let k = match (how, keys.is_empty()) {
                    // A key of the leaf, and its neighbours.
                    (0, false) => keys[(a as usize) % keys.len()],
                    (1, false) => keys[(a as usize) % keys.len()].next().unwrap_or(Key::MAX),
                    (2, false) => keys[(a as usize) % keys.len()].prev().unwrap_or(Key::MIN),
                    _ => Key::new(3, a % 16, (b % 16) as u8, b, c, 0),
                };
                prop_assert_eq!(leaf.lower_bound(&k), naive(&k), "key {:?}", k);
            }
            prop_assert_eq!(leaf.lower_bound(&Key::MIN), 0);
            prop_assert_eq!(leaf.lower_bound(&Key::MAX), naive(&Key::MAX));
        }
    }
}
