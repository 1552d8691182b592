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
pub(crate) fn item_bytes(val_len: usize) -> usize {
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

    pub fn lower_bound(&self, key: &Key) -> usize {
        let (mut lo, mut hi) = (0, self.len);
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
