//! The copy-on-write btree over 64 KiB metadata blocks.
//!
//! A tree is named by its [`BtreeRoot`]. Reading never changes anything and never locks
//! against other nodes: blocks are followed by `(blkno, seq)` and verified, and a
//! [`BtreeError::is_stale`] error means the root was out of date (refresh it and retry).
//!
//! Writing happens inside a transaction, represented by a [`Dirty`] set: the first change to a
//! committed block copies it to a newly allocated block (seq = the transaction's seq), frees
//! the old one (reusable only once this transaction is durable, see [`MetaAlloc`]) and updates
//! the parent's reference, up to the root. Later changes in the same transaction modify the
//! dirty copy in memory. [`Dirty::write`] encodes and writes every dirty block; the caller
//! then makes them durable and publishes the new roots. A committed root therefore never
//! changes.
//!
//! Structure: leaves are level 0; a parent item's key is the greatest key its child may hold,
//! and the last item of every parent is keyed [`Key::MAX`]. Modifications split full nodes and
//! join nodes under a quarter full on the way down, so one pass from the root suffices.

mod node;

use std::collections::HashMap;

use scoutgw_blockdev::{BlockError, BlockRef, MetaDev};

use crate::format::btree::BTREE_BLOCK_BYTES;
use crate::format::layout::{BTREE_MAX_HEIGHT, BTREE_MAX_VAL_LEN};
use crate::format::{BtreeRoot, FormatError, Key, KIND_BTREE};

pub use node::Item;
use node::{item_bytes, CleanNode, Node, REF_BYTES};

/// Why a btree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BtreeError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("no free metadata blocks")]
    NoSpace,
    #[error("value of {0} bytes exceeds the maximum of {BTREE_MAX_VAL_LEN}")]
    ValueTooLarge(usize),
    #[error("key already exists")]
    Exists,
    #[error("key not found")]
    NotFound,
}

impl BtreeError {
    /// The root led to a block that has since been rewritten: refresh roots and retry.
    pub fn is_stale(&self) -> bool {
        matches!(self, BtreeError::Block(e) if e.is_stale())
    }
}

/// Where a transaction's new blocks come from and its freed blocks go.
pub trait MetaAlloc {
    /// A free metadata block for a new block version.
    fn alloc_meta(&mut self) -> Result<u64, BtreeError>;
    /// A committed block this transaction stops referencing. It must not be reused before
    /// the transaction is durable.
    fn free_meta(&mut self, blkno: u64) -> Result<(), BtreeError>;
    /// A block allocated by this transaction and dropped before it was ever written: it may
    /// be reused at once.
    fn free_unwritten(&mut self, blkno: u64) -> Result<(), BtreeError> {
        self.free_meta(blkno)
    }
}

/// Counts of structural changes, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BtreeStats {
    /// Committed blocks copied into the transaction.
    pub cows: u64,
    pub splits: u64,
    pub merges: u64,
    pub rebalances: u64,
}

/// The blocks one transaction has dirtied, across all the trees it changes.
#[derive(Debug)]
pub struct Dirty {
    seq: u64,
    nodes: HashMap<u64, Node>,
    /// Totals since this `Dirty` was made (across transactions).
    pub stats: BtreeStats,
}

impl Dirty {
    /// A transaction whose new blocks get version `seq` (greater than every committed one).
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            nodes: HashMap::new(),
            stats: BtreeStats::default(),
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Number of dirty blocks.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The dirty blocks' numbers, in no particular order.
    pub fn blknos(&self) -> impl Iterator<Item = u64> + '_ {
        self.nodes.keys().copied()
    }

    fn get(&self, r: BlockRef) -> Option<&Node> {
        if r.seq.get() == self.seq {
            self.nodes.get(&r.blkno.get())
        } else {
            None
        }
    }

    /// Write every dirty block (not yet durable: flush the device after) and start the next
    /// transaction with version `next_seq`.
    pub fn write(&mut self, md: &MetaDev, next_seq: u64) -> Result<(), BtreeError> {
        let mut blknos: Vec<u64> = self.nodes.keys().copied().collect();
        blknos.sort_unstable();
        for blkno in blknos {
            let buf = self.nodes[&blkno].encode();
            let written = md.write_block(KIND_BTREE, blkno, self.seq, buf)?;
            written.mark_body_checked();
        }
        self.nodes.clear();
        self.seq = next_seq;
        Ok(())
    }
}

/// A node to read: dirty in memory, or clean in a cached block.
enum NodeAt<'a> {
    Dirty(&'a Node),
    Clean(CleanNode),
}

impl NodeAt<'_> {
    fn level(&self) -> u8 {
        match self {
            NodeAt::Dirty(n) => n.level,
            NodeAt::Clean(c) => c.level(),
        }
    }
    fn len(&self) -> usize {
        match self {
            NodeAt::Dirty(n) => n.items.len(),
            NodeAt::Clean(c) => c.len(),
        }
    }
    fn lower_bound(&self, key: &Key) -> usize {
        match self {
            NodeAt::Dirty(n) => n.lower_bound(key),
            NodeAt::Clean(c) => c.lower_bound(key),
        }
    }
    fn key(&self, i: usize) -> Key {
        match self {
            NodeAt::Dirty(n) => n.items[i].key,
            NodeAt::Clean(c) => c.key(i),
        }
    }
    fn owned(&self, i: usize) -> Item {
        match self {
            NodeAt::Dirty(n) => n.items[i].clone(),
            NodeAt::Clean(c) => c.owned(i),
        }
    }
    fn child(&self, i: usize) -> BlockRef {
        match self {
            NodeAt::Dirty(n) => n.child(i),
            NodeAt::Clean(c) => c.child(i),
        }
    }
}

fn node_at<'a>(
    md: &MetaDev,
    dirty: Option<&'a Dirty>,
    r: BlockRef,
    level: u8,
) -> Result<NodeAt<'a>, BtreeError> {
    let node = match dirty.and_then(|d| d.get(r)) {
        Some(n) => NodeAt::Dirty(n),
        None => NodeAt::Clean(CleanNode::new(md.read_ref(KIND_BTREE, r)?, r.blkno.get())?),
    };
    if node.level() != level || (level > 0 && node.len() == 0) {
        return Err(FormatError::corrupt(
            format!("btree block {}", r.blkno.get()),
            format!(
                "level {} with {} items where level {level} was expected",
                node.level(),
                node.len()
            ),
        )
        .into());
    }
    Ok(node)
}

fn check_root(root: &BtreeRoot) -> Result<(), BtreeError> {
    if root.height > BTREE_MAX_HEIGHT {
        return Err(FormatError::corrupt(
            "btree root",
            format!("height {} exceeds {BTREE_MAX_HEIGHT}", root.height),
        )
        .into());
    }
    Ok(())
}

/// The item at `key`, if any. `dirty` is the open transaction whose blocks the root may name.
pub fn lookup(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    key: &Key,
) -> Result<Option<Item>, BtreeError> {
    check_root(root)?;
    if root.is_empty() {
        return Ok(None);
    }
    let mut r = root.block;
    let mut level = root.height - 1;
    loop {
        let node = node_at(md, dirty, r, level)?;
        let i = node.lower_bound(key);
        if level == 0 {
            return Ok((i < node.len() && node.key(i) == *key).then(|| node.owned(i)));
        }
        if i == node.len() {
            return Ok(None);
        }
        r = node.child(i);
        level -= 1;
    }
}

/// The key range `[lo, hi]` of the leaf that holds (or would hold) `key`, from its parents'
/// separators. An empty tree, or one that is a single leaf, covers every key.
pub fn leaf_bounds(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    key: &Key,
) -> Result<(Key, Key), BtreeError> {
    check_root(root)?;
    let (mut lo, mut hi) = (Key::MIN, Key::MAX);
    if root.is_empty() {
        return Ok((lo, hi));
    }
    let mut r = root.block;
    let mut level = root.height - 1;
    while level > 0 {
        let node = node_at(md, dirty, r, level)?;
        let i = node.lower_bound(key);
        if i == node.len() {
            // Past the rightmost separator: only the tree's last key range is left, and no
            // leaf holds such keys yet.
            lo = node.key(i - 1).next().unwrap_or(Key::MAX);
            return Ok((lo, hi));
        }
        if i > 0 {
            lo = node.key(i - 1).next().unwrap_or(Key::MAX);
        }
        hi = node.key(i);
        r = node.child(i);
        level -= 1;
    }
    Ok((lo, hi))
}

/// One leaf's worth of items, in key order.
#[derive(Debug, Clone, Default)]
pub struct LeafRange {
    pub items: Vec<Item>,
    /// The range of keys this read covered: every item of the tree within
    /// `[covered_start, covered_end]` is in `items` (for the direction read).
    pub covered_start: Key,
    pub covered_end: Key,
}

/// Items with keys in `[start, end]` from the leaf that holds `start`, and the key range the
/// read covered. Continue at `covered_end.next()` to read the following leaf.
pub fn read_leaf(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    start: &Key,
    end: &Key,
) -> Result<LeafRange, BtreeError> {
    read_leaf_limit(md, dirty, root, start, end, usize::MAX)
}

/// [`read_leaf`] returning at most `limit` items; when it stops early, `covered_end` is the
/// key of the last item returned.
pub fn read_leaf_limit(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    start: &Key,
    end: &Key,
    limit: usize,
) -> Result<LeafRange, BtreeError> {
    check_root(root)?;
    let mut out = LeafRange {
        items: Vec::new(),
        covered_start: *start,
        covered_end: Key::MAX,
    };
    if root.is_empty() {
        return Ok(out);
    }
    let mut r = root.block;
    let mut level = root.height - 1;
    loop {
        let node = node_at(md, dirty, r, level)?;
        let mut i = node.lower_bound(start);
        if level == 0 {
            while i < node.len() {
                let k = node.key(i);
                if k > *end {
                    break;
                }
                if out.items.len() == limit {
                    out.covered_end = out.items.last().map_or(*start, |it| it.key);
                    return Ok(out);
                }
                out.items.push(node.owned(i));
                i += 1;
            }
            out.covered_end = out.covered_end.min(*end);
            return Ok(out);
        }
        if i == node.len() {
            return Ok(out);
        }
        out.covered_end = node.key(i);
        r = node.child(i);
        level -= 1;
    }
}

/// Items with keys in `[start, end]` from the leaf that holds `end`, in key order, and the
/// key range covered. Continue backwards at `covered_start.prev()`.
pub fn read_leaf_rev(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    start: &Key,
    end: &Key,
) -> Result<LeafRange, BtreeError> {
    check_root(root)?;
    let mut out = LeafRange {
        items: Vec::new(),
        covered_start: Key::MIN,
        covered_end: *end,
    };
    if root.is_empty() {
        return Ok(out);
    }
    let mut r = root.block;
    let mut level = root.height - 1;
    loop {
        let node = node_at(md, dirty, r, level)?;
        let i = node.lower_bound(end);
        if level == 0 {
            // Items <= end: up to i, plus i itself when it equals end.
            let mut j = if i < node.len() && node.key(i) == *end {
                i + 1
            } else {
                i
            };
            while j > 0 {
                let k = node.key(j - 1);
                if k < *start {
                    break;
                }
                out.items.push(node.owned(j - 1));
                j -= 1;
            }
            out.items.reverse();
            out.covered_start = out.covered_start.max(*start);
            return Ok(out);
        }
        let i = i.min(node.len() - 1);
        if i > 0 {
            out.covered_start = node.key(i - 1).next().unwrap_or(Key::MAX);
        }
        r = node.child(i);
        level -= 1;
    }
}

/// The first item with key >= `key` and <= `end`.
pub fn next(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    key: &Key,
    end: &Key,
) -> Result<Option<Item>, BtreeError> {
    let mut start = *key;
    loop {
        let leaf = read_leaf_limit(md, dirty, root, &start, end, 1)?;
        if let Some(first) = leaf.items.into_iter().next() {
            return Ok(Some(first));
        }
        match leaf.covered_end.next() {
            Some(n) if leaf.covered_end < *end => start = n,
            _ => return Ok(None),
        }
    }
}

/// The last item with key <= `key` and >= `start`.
pub fn prev(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    key: &Key,
    start: &Key,
) -> Result<Option<Item>, BtreeError> {
    let mut end = *key;
    loop {
        let leaf = read_leaf_rev(md, dirty, root, start, &end)?;
        if let Some(last) = leaf.items.into_iter().next_back() {
            return Ok(Some(last));
        }
        match leaf.covered_start.prev() {
            Some(p) if leaf.covered_start > *start => end = p,
            _ => return Ok(None),
        }
    }
}

/// Reads one tree's items in `[start, end]` in key order, a leaf at a time.
#[derive(Debug, Clone)]
pub struct LeafCursor {
    root: BtreeRoot,
    end: Key,
    items: std::collections::VecDeque<Item>,
    next_start: Option<Key>,
    /// Items read per visit of a leaf (small when the caller wants few).
    batch: usize,
}

impl LeafCursor {
    pub fn new(root: BtreeRoot, start: Key, end: Key) -> Self {
        Self::with_batch(root, start, end, usize::MAX)
    }

    /// A cursor copying at most `batch` items out of a leaf at a time.
    pub fn with_batch(root: BtreeRoot, start: Key, end: Key, batch: usize) -> Self {
        Self {
            root,
            end,
            items: Default::default(),
            next_start: (start <= end).then_some(start),
            batch: batch.max(1),
        }
    }

    /// The next item, without consuming it.
    pub fn peek(
        &mut self,
        md: &MetaDev,
        dirty: Option<&Dirty>,
    ) -> Result<Option<&Item>, BtreeError> {
        while self.items.is_empty() {
            let Some(start) = self.next_start else {
                return Ok(None);
            };
            let leaf = read_leaf_limit(md, dirty, &self.root, &start, &self.end, self.batch)?;
            self.items.extend(leaf.items);
            self.next_start = if leaf.covered_end >= self.end {
                None
            } else {
                leaf.covered_end.next()
            };
        }
        Ok(self.items.front())
    }

    /// Consume the next item if its key is `key`.
    pub fn skip_key(
        &mut self,
        md: &MetaDev,
        dirty: Option<&Dirty>,
        key: &Key,
    ) -> Result<(), BtreeError> {
        if self.peek(md, dirty)?.is_some_and(|it| it.key == *key) {
            self.items.pop_front();
        }
        Ok(())
    }
}

/// Every item with key in `[start, end]`, in order. For big ranges prefer [`read_leaf`].
pub fn range(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    start: &Key,
    end: &Key,
) -> Result<Vec<Item>, BtreeError> {
    let mut out = Vec::new();
    let mut from = *start;
    loop {
        let leaf = read_leaf(md, dirty, root, &from, end)?;
        out.extend(leaf.items);
        match leaf.covered_end.next() {
            Some(n) if leaf.covered_end < *end => from = n,
            _ => return Ok(out),
        }
    }
}

/// What a modification does at its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Insert or replace.
    Put,
    /// Insert; the key must be absent.
    Insert,
    /// Replace; the key must be present.
    Update,
    /// Remove; the key must be present.
    Delete,
}

/// Changes trees inside one transaction.
pub struct BtreeWriter<'a> {
    pub md: &'a MetaDev,
    pub dirty: &'a mut Dirty,
    pub alloc: &'a mut dyn MetaAlloc,
}

impl BtreeWriter<'_> {
    /// Insert or replace an item; returns the item it replaced.
    pub fn put(&mut self, root: &mut BtreeRoot, item: Item) -> Result<Option<Item>, BtreeError> {
        self.modify(root, Op::Put, item.key, Some(item))
    }

    /// Insert an item whose key must not exist yet.
    pub fn insert(&mut self, root: &mut BtreeRoot, item: Item) -> Result<(), BtreeError> {
        self.modify(root, Op::Insert, item.key, Some(item))
            .map(|_| ())
    }

    /// Replace an item that must exist; returns the old one.
    pub fn update(&mut self, root: &mut BtreeRoot, item: Item) -> Result<Item, BtreeError> {
        self.modify(root, Op::Update, item.key, Some(item))
            .map(|old| old.expect("update returns the old item"))
    }

    /// Delete the item at `key`, which must exist; returns it.
    pub fn delete(&mut self, root: &mut BtreeRoot, key: &Key) -> Result<Item, BtreeError> {
        self.modify(root, Op::Delete, *key, None)
            .map(|old| old.expect("delete returns the old item"))
    }

    /// Delete the item at `key` if it exists.
    pub fn remove(&mut self, root: &mut BtreeRoot, key: &Key) -> Result<Option<Item>, BtreeError> {
        match self.modify(root, Op::Delete, *key, None) {
            Err(BtreeError::NotFound) => Ok(None),
            other => other,
        }
    }

    /// Free every block of a tree and make it empty.
    pub fn free_tree(&mut self, root: &mut BtreeRoot) -> Result<(), BtreeError> {
        let mut blocks = Vec::new();
        walk_blocks(self.md, Some(&*self.dirty), root, &mut |r, _| {
            blocks.push(r)
        })?;
        for r in blocks {
            if self.dirty.get(r).is_some() {
                self.drop_node(r.blkno.get())?;
            } else {
                self.alloc.free_meta(r.blkno.get())?;
            }
        }
        *root = BtreeRoot::default();
        Ok(())
    }

    /// Remove every item whose key is below `below`. Subtrees that lie wholly below it are
    /// freed without their leaves being read; only the path to the leaf holding `below`
    /// is copied (one block per level), so trimming gives back far more than it takes.
    /// A tree trimmed of everything becomes empty.
    pub fn trim_below(&mut self, root: &mut BtreeRoot, below: &Key) -> Result<(), BtreeError> {
        check_root(root)?;
        if root.is_empty() || *below == Key::MIN {
            return Ok(());
        }
        let top = self.cow(root.block, root.height - 1)?;
        root.block = self.dirty_ref(top);
        self.trim_node(top, below)?;
        // Collapse parents left with one child, and a tree left with nothing.
        loop {
            let top = root.block.blkno.get();
            let n = self.node(top);
            if n.items.is_empty() {
                self.drop_node(top)?;
                *root = BtreeRoot::default();
                return Ok(());
            }
            if root.height > 1 && n.items.len() == 1 {
                let child = n.child(0);
                self.drop_node(top)?;
                *root = BtreeRoot::new(child, root.height - 1);
                if self.dirty.get(root.block).is_none() {
                    return Ok(());
                }
                continue;
            }
            return Ok(());
        }
    }

    /// [`BtreeWriter::trim_below`] in the dirty node `blkno`.
    fn trim_node(&mut self, blkno: u64, below: &Key) -> Result<(), BtreeError> {
        let n = self.node(blkno);
        // A parent's item key is the greatest key of its child: children before the first
        // key at or above `below` hold nothing at or above it.
        let cut = n.lower_bound(below);
        if n.level == 0 {
            let n = self.node_mut(blkno);
            for _ in 0..cut {
                n.remove_at(0);
            }
            return Ok(());
        }
        let level = n.level - 1;
        for _ in 0..cut {
            let r = self.node(blkno).child(0);
            self.node_mut(blkno).remove_at(0);
            self.free_subtree(r, level)?;
        }
        if self.node(blkno).items.is_empty() {
            return Ok(());
        }
        let child = self.cow_child(blkno, 0)?;
        self.trim_node(child, below)?;
        if self.node(child).items.is_empty() {
            self.drop_node(child)?;
            self.node_mut(blkno).remove_at(0);
        }
        Ok(())
    }

    /// Free the subtree at `r` (a block of `level`): parents are read, leaves only freed.
    fn free_subtree(&mut self, r: BlockRef, level: u8) -> Result<(), BtreeError> {
        if level > 0 {
            let node = node_at(self.md, Some(&*self.dirty), r, level)?;
            let children: Vec<BlockRef> = (0..node.len()).map(|i| node.child(i)).collect();
            drop(node);
            for c in children {
                self.free_subtree(c, level - 1)?;
            }
        }
        if self.dirty.get(r).is_some() {
            self.drop_node(r.blkno.get())?;
        } else {
            self.alloc.free_meta(r.blkno.get())?;
        }
        Ok(())
    }

    fn node(&self, blkno: u64) -> &Node {
        &self.dirty.nodes[&blkno]
    }

    fn node_mut(&mut self, blkno: u64) -> &mut Node {
        self.dirty.nodes.get_mut(&blkno).expect("dirty node")
    }

    fn new_node(&mut self, node: Node) -> Result<u64, BtreeError> {
        let blkno = self.alloc.alloc_meta()?;
        self.dirty.nodes.insert(blkno, node);
        Ok(blkno)
    }

    fn drop_node(&mut self, blkno: u64) -> Result<Node, BtreeError> {
        let node = self.dirty.nodes.remove(&blkno).expect("dirty node");
        self.alloc.free_unwritten(blkno)?;
        Ok(node)
    }

    fn dirty_ref(&self, blkno: u64) -> BlockRef {
        BlockRef::new(blkno, self.dirty.seq)
    }

    /// Make the block `r` names dirty (copying it if it is committed); its dirty blkno.
    fn cow(&mut self, r: BlockRef, level: u8) -> Result<u64, BtreeError> {
        if self.dirty.get(r).is_some() {
            return Ok(r.blkno.get());
        }
        let node = match node_at(self.md, None, r, level)? {
            NodeAt::Clean(c) => Node::decode(&c.view()),
            NodeAt::Dirty(_) => unreachable!("read without a dirty set"),
        };
        let blkno = self.new_node(node)?;
        self.alloc.free_meta(r.blkno.get())?;
        self.dirty.stats.cows += 1;
        Ok(blkno)
    }

    /// Copy-on-write child `i` of dirty parent `parent`; the child's dirty blkno.
    fn cow_child(&mut self, parent: u64, i: usize) -> Result<u64, BtreeError> {
        let p = self.node(parent);
        let (r, level) = (p.child(i), p.level - 1);
        let child = self.cow(r, level)?;
        let dref = self.dirty_ref(child);
        self.node_mut(parent).set_child(i, dref);
        Ok(child)
    }

    fn needs_split(&self, blkno: u64, op: Op, val_len: usize) -> bool {
        let n = self.node(blkno);
        if op == Op::Delete || n.items.len() < 2 {
            return false;
        }
        let need = if n.level == 0 {
            item_bytes(val_len)
        } else {
            item_bytes(REF_BYTES)
        };
        n.free() < need
    }

    fn needs_join(&self, blkno: u64, op: Op) -> bool {
        op == Op::Delete && self.node(blkno).used < BTREE_BLOCK_BYTES / 4
    }

    /// Split child `i` of `parent` in two; the lower half gets a new parent item.
    fn split_child(&mut self, parent: u64, i: usize, child: u64) -> Result<(), BtreeError> {
        // Keep the upper half in the existing block so the parent item's key stays right.
        let lower_items = {
            let c = self.node_mut(child);
            let upper = c.split_upper();
            std::mem::replace(c, upper)
        };
        let lower_key = lower_items.last_key();
        let lower = self.new_node(lower_items)?;
        let lref = self.dirty_ref(lower);
        let item = Item {
            key: lower_key,
            seq: 0,
            flags: 0,
            val: zerocopy::IntoBytes::as_bytes(&lref).to_vec(),
        };
        self.node_mut(parent).insert_at(i, item);
        self.dirty.stats.splits += 1;
        Ok(())
    }

    /// Join child `i` of `parent` with a sibling, merging or rebalancing.
    fn join_child(&mut self, parent: u64, i: usize) -> Result<(), BtreeError> {
        let nr = self.node(parent).items.len();
        if nr < 2 {
            return Ok(());
        }
        let (li, ri) = if i + 1 < nr { (i, i + 1) } else { (i - 1, i) };
        let left = self.cow_child(parent, li)?;
        let right = self.cow_child(parent, ri)?;
        let (lused, rused) = (self.node(left).used, self.node(right).used);
        if lused + rused - node::NODE_HDR <= BTREE_BLOCK_BYTES {
            // Merge left into right (right keeps its parent key).
            let l = self.drop_node(left)?;
            let r = self.node_mut(right);
            let mut items = l.items;
            items.append(&mut r.items);
            r.items = items;
            r.used += l.used - node::NODE_HDR;
            self.node_mut(parent).remove_at(li);
            self.dirty.stats.merges += 1;
            return Ok(());
        }
        // Rebalance: move items from the fuller sibling until they are about even.
        let target = (lused + rused) / 2;
        if lused < rused {
            while self.node(left).used < target && self.node(right).items.len() > 1 {
                let it = self.node_mut(right).remove_at(0);
                let l = self.node_mut(left);
                let at = l.items.len();
                l.insert_at(at, it);
            }
        } else {
            while self.node(right).used < target && self.node(left).items.len() > 1 {
                let l = self.node_mut(left);
                let it = l.remove_at(l.items.len() - 1);
                self.node_mut(right).insert_at(0, it);
            }
        }
        let new_key = self.node(left).last_key();
        self.node_mut(parent).items[li].key = new_key;
        self.dirty.stats.rebalances += 1;
        Ok(())
    }

    fn modify(
        &mut self,
        root: &mut BtreeRoot,
        op: Op,
        key: Key,
        item: Option<Item>,
    ) -> Result<Option<Item>, BtreeError> {
        check_root(root)?;
        let val_len = item.as_ref().map_or(0, |it| it.val.len());
        if val_len > BTREE_MAX_VAL_LEN {
            return Err(BtreeError::ValueTooLarge(val_len));
        }
        if root.is_empty() {
            return match (op, item) {
                (Op::Put | Op::Insert, Some(item)) => {
                    let mut leaf = Node::new(0);
                    leaf.insert_at(0, item);
                    let blkno = self.new_node(leaf)?;
                    *root = BtreeRoot::new(self.dirty_ref(blkno), 1);
                    Ok(None)
                }
                _ => Err(BtreeError::NotFound),
            };
        }

        let mut cur = self.cow(root.block, root.height - 1)?;
        root.block = self.dirty_ref(cur);
        if self.needs_split(cur, op, val_len) {
            if root.height >= BTREE_MAX_HEIGHT {
                return Err(BtreeError::NoSpace);
            }
            let mut top = Node::new(root.height);
            let item = Item {
                key: Key::MAX,
                seq: 0,
                flags: 0,
                val: zerocopy::IntoBytes::as_bytes(&root.block).to_vec(),
            };
            top.insert_at(0, item);
            cur = self.new_node(top)?;
            *root = BtreeRoot::new(self.dirty_ref(cur), root.height + 1);
        }

        let result = loop {
            if self.node(cur).level == 0 {
                break self.apply(cur, op, key, item);
            }
            let mut i = self
                .node(cur)
                .lower_bound(&key)
                .min(self.node(cur).items.len() - 1);
            let mut child = self.cow_child(cur, i)?;
            if self.needs_split(child, op, val_len) {
                self.split_child(cur, i, child)?;
                if key > self.node(cur).items[i].key {
                    i += 1;
                }
                child = self.node(cur).child(i).blkno.get();
            } else if self.needs_join(child, op) {
                self.join_child(cur, i)?;
                let p = self.node(cur);
                i = p.lower_bound(&key).min(p.items.len() - 1);
                child = p.child(i).blkno.get();
            }
            cur = child;
        };

        if op == Op::Delete {
            self.shrink_root(root)?;
        }
        result
    }

    fn apply(
        &mut self,
        leaf: u64,
        op: Op,
        key: Key,
        item: Option<Item>,
    ) -> Result<Option<Item>, BtreeError> {
        let n = self.node_mut(leaf);
        let i = n.lower_bound(&key);
        let found = i < n.items.len() && n.items[i].key == key;
        match (op, found, item) {
            (Op::Insert, true, _) => Err(BtreeError::Exists),
            (Op::Update | Op::Delete, false, _) => Err(BtreeError::NotFound),
            (Op::Delete, true, _) => Ok(Some(n.remove_at(i))),
            (Op::Put | Op::Update, true, Some(item)) => {
                let old = n.items[i].clone();
                n.replace_at(i, item);
                Ok(Some(old))
            }
            (Op::Put | Op::Insert, false, Some(item)) => {
                n.insert_at(i, item);
                Ok(None)
            }
            _ => unreachable!("puts carry an item"),
        }
    }

    /// After deletes: drop parents with a single child and an empty root leaf.
    fn shrink_root(&mut self, root: &mut BtreeRoot) -> Result<(), BtreeError> {
        loop {
            let top = root.block.blkno.get();
            let n = self.node(top);
            if root.height > 1 && n.items.len() == 1 {
                let child = n.child(0);
                self.drop_node(top)?;
                *root = BtreeRoot::new(child, root.height - 1);
            } else if root.height == 1 && n.items.is_empty() {
                self.drop_node(top)?;
                *root = BtreeRoot::default();
                return Ok(());
            } else {
                return Ok(());
            }
            if self.dirty.get(root.block).is_none() {
                return Ok(());
            }
        }
    }
}

/// An upper bound on the metadata blocks that putting a batch of items into one tree
/// allocates, kept up to date as the batch grows (a client's open transaction, committed
/// into its log tree in one pass).
///
/// Putting allocates three kinds of blocks: a copy of every committed block it changes
/// (each at most once per transaction), one new block per split, and a new root per level
/// the tree grows. The leaves a batch changes are known exactly: every key lands in the
/// leaf whose parent separator covers it in the tree the batch starts from, and splits
/// during the batch only divide leaves already copied. Splits are bounded by bytes: a
/// leaf splits when an item does not fit, and both halves then have room for at least
/// [`PutCost::SPLIT_ROOM`] bytes, so beyond one split per changed leaf every further
/// split needs that many new bytes. Parents are few (a log tree has one or a handful), so
/// all of them are counted as copied and as splitting once.
#[derive(Debug, Clone, Default)]
pub struct PutCost {
    /// The greatest key each leaf may hold, in key order: the items of the leaves'
    /// parents (`[Key::MAX]` for a tree that is one leaf, empty for an empty tree).
    leaf_last: Vec<Key>,
    /// Which of those leaves the batch puts a key into.
    touched: Vec<bool>,
    leaves_touched: u64,
    /// Parent blocks of the tree.
    parents: u64,
    height: u8,
    /// Bytes the batch's items take in leaves.
    bytes: u64,
}

impl PutCost {
    /// Room a half of a split leaf has left at least: half a block's items, less the
    /// largest item the split could have kept on one side and the largest that triggered it.
    pub const SPLIT_ROOM: u64 =
        ((BTREE_BLOCK_BYTES - node::NODE_HDR) / 2 - 2 * node::item_bytes(BTREE_MAX_VAL_LEN)) as u64;

    /// The cost of a batch into `root` (reading only its parent blocks).
    pub fn new(md: &MetaDev, root: &BtreeRoot) -> Result<Self, BtreeError> {
        let mut cost = Self::shape(md, root)?;
        cost.touched = vec![false; cost.leaf_last.len()];
        Ok(cost)
    }

    /// Blocks of the tree at `root`: its leaves counted from their parents (reading only
    /// parent blocks) and the parents.
    pub fn tree_blocks(md: &MetaDev, root: &BtreeRoot) -> Result<u64, BtreeError> {
        let shape = Self::shape(md, root)?;
        Ok(shape.leaf_last.len() as u64 + shape.parents)
    }

    fn shape(md: &MetaDev, root: &BtreeRoot) -> Result<Self, BtreeError> {
        check_root(root)?;
        let mut cost = PutCost {
            height: root.height,
            ..PutCost::default()
        };
        if root.is_empty() {
            return Ok(cost);
        }
        if root.height == 1 {
            cost.leaf_last.push(Key::MAX);
        } else {
            let mut level_refs = vec![root.block];
            for level in (1..root.height).rev() {
                let mut below = Vec::new();
                for r in level_refs {
                    let node = node_at(md, None, r, level)?;
                    cost.parents += 1;
                    for i in 0..node.len() {
                        if level == 1 {
                            cost.leaf_last.push(node.key(i));
                        } else {
                            below.push(node.child(i));
                        }
                    }
                }
                level_refs = below;
            }
        }
        Ok(cost)
    }

    /// A key not yet in the batch is put with a value of `val_len` bytes.
    pub fn add(&mut self, key: &Key, val_len: usize) {
        self.bytes += node::item_bytes(val_len) as u64;
        let i = self.leaf_last.partition_point(|last| last < key);
        if let Some(t) = self.touched.get_mut(i) {
            if !*t {
                *t = true;
                self.leaves_touched += 1;
            }
        }
    }

    /// A key already in the batch gets a value of `new_len` bytes instead of `old_len`.
    pub fn resize(&mut self, old_len: usize, new_len: usize) {
        self.bytes =
            self.bytes + node::item_bytes(new_len) as u64 - node::item_bytes(old_len) as u64;
    }

    /// Committed blocks the batch copies (and so frees) at most.
    pub fn copies(&self) -> u64 {
        self.leaves_touched + self.parents
    }

    /// Blocks putting the batch allocates at most.
    pub fn blocks(&self) -> u64 {
        if self.bytes == 0 {
            return 0;
        }
        let leaf_splits = self.leaves_touched + self.bytes.div_ceil(Self::SPLIT_ROOM) + 1;
        let parent_bytes = leaf_splits * node::item_bytes(node::REF_BYTES) as u64;
        let parent_splits = self.parents + parent_bytes.div_ceil(Self::SPLIT_ROOM) + 1;
        let new_roots = self.height as u64 + 2;
        self.copies() + leaf_splits + parent_splits + new_roots
    }
}

/// Call `f` for every block of the tree (parents before children), with its level.
pub fn walk_blocks(
    md: &MetaDev,
    dirty: Option<&Dirty>,
    root: &BtreeRoot,
    f: &mut dyn FnMut(BlockRef, u8),
) -> Result<(), BtreeError> {
    check_root(root)?;
    if root.is_empty() {
        return Ok(());
    }
    fn visit(
        md: &MetaDev,
        dirty: Option<&Dirty>,
        r: BlockRef,
        level: u8,
        f: &mut dyn FnMut(BlockRef, u8),
    ) -> Result<(), BtreeError> {
        let node = node_at(md, dirty, r, level)?;
        f(r, level);
        if level == 0 {
            return Ok(());
        }
        let children: Vec<BlockRef> = (0..node.len()).map(|i| node.child(i)).collect();
        drop(node);
        for c in children {
            visit(md, dirty, c, level - 1, f)?;
        }
        Ok(())
    }
    visit(md, dirty, root.block, root.height - 1, f)
}

#[cfg(test)]
pub(crate) mod tests;
