//! The clean item cache of one mount: committed items copied out of the forest by key
//! range, as scoutfs's item cache keeps them (digest §4).
//!
//! A miss reads every committed item of a whole range around the key (the part of the key's
//! lock group that one leaf of each tree holds, see `Client`), so the cache knows each
//! *covered range* completely: a key inside a covered range that has no cached item does not
//! exist. Point reads, and small range reads inside a covered range, are then answered
//! without walking `fs_root` and every log tree: at a million entries that walk touches 3-8
//! cold 64 KiB blocks per operation.
//!
//! The cache holds committed items only (never a deletion: a deleted key is simply absent);
//! the open transaction's changes are laid over it by the client. It stays right while
//! nobody else changes the items it covers: the client updates it with its own commits and
//! empties it when a lock is given up or when it sees another client's commits. Merges do
//! not touch it: they move items between trees without changing what a read returns.
//!
//! Bounded by an estimate of its memory; a fill that would pass the bound empties the cache
//! first. This module knows nothing about trees or locks.

use std::collections::BTreeMap;

use crate::btree::Item;
use crate::format::Key;

/// A key packed into four words whose array order is the key order: comparisons in the
/// ordered index are four integer compares instead of field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Packed([u64; 4]);

impl Packed {
    fn of(k: &Key) -> Self {
        let (z, a, t, b, c, d) = k.sort_tuple();
        Packed([
            (z as u64) << 56 | a >> 8,
            (a & 0xff) << 56 | (t as u64) << 48 | b >> 16,
            (b & 0xffff) << 48 | c >> 16,
            (c & 0xffff) << 48 | (d as u64) << 40,
        ])
    }

    fn key(&self) -> Key {
        let [w0, w1, w2, w3] = self.0;
        Key::new(
            (w0 >> 56) as u8,
            (w0 << 8) | (w1 >> 56),
            (w1 >> 48) as u8,
            (w1 << 16) | (w2 >> 48),
            (w2 << 16) | (w3 >> 48),
            (w3 >> 40) as u8,
        )
    }
}

/// The items of one covered range, `[start, end]` (the start is the cache's map key): keys
/// sorted in one array, their values packed in one arena, so a fill is a few allocations
/// and a lookup a binary search in contiguous memory.
#[derive(Debug)]
struct Chunk {
    end: Packed,
    keys: Vec<Packed>,
    seqs: Vec<u64>,
    /// `(offset, length)` of each value in `arena`.
    spans: Vec<(u32, u32)>,
    arena: Vec<u8>,
    /// Arena bytes no value uses any more (replaced or removed values).
    garbage: usize,
}

/// Bytes a chunk costs beyond its arrays (its map entry, headers, allocator slack).
const CHUNK_OVERHEAD: usize = 256;
/// Bytes per item in a chunk's arrays.
const ITEM_BYTES: usize = 32 + 8 + 8;
/// Items a chunk grows to through commits before it is cut in two.
const MAX_CHUNK_ITEMS: usize = 1024;

impl Chunk {
    fn new(end: Packed, items: &[Item]) -> Self {
        let vals: usize = items.iter().map(|it| it.val.len()).sum();
        let mut c = Chunk {
            end,
            keys: Vec::with_capacity(items.len()),
            seqs: Vec::with_capacity(items.len()),
            spans: Vec::with_capacity(items.len()),
            arena: Vec::with_capacity(vals),
            garbage: 0,
        };
        for it in items {
            c.keys.push(Packed::of(&it.key));
            c.seqs.push(it.seq);
            let span = c.append(&it.val);
            c.spans.push(span);
        }
        c
    }

    fn bytes(&self) -> usize {
        CHUNK_OVERHEAD + self.keys.capacity() * ITEM_BYTES + self.arena.capacity()
    }

    fn append(&mut self, val: &[u8]) -> (u32, u32) {
        let off = self.arena.len() as u32;
        self.arena.extend_from_slice(val);
        (off, val.len() as u32)
    }

    fn val(&self, i: usize) -> &[u8] {
        let (off, len) = self.spans[i];
        &self.arena[off as usize..(off + len) as usize]
    }

    fn item(&self, i: usize) -> Item {
        Item {
            key: self.keys[i].key(),
            seq: self.seqs[i],
            flags: 0,
            val: self.val(i).to_vec(),
        }
    }

    /// Insert or replace the item at `p`.
    fn set(&mut self, p: Packed, seq: u64, val: &[u8]) {
        match self.keys.binary_search(&p) {
            Ok(i) => {
                self.garbage += self.spans[i].1 as usize;
                self.seqs[i] = seq;
                self.spans[i] = self.append(val);
            }
            Err(i) => {
                let span = self.append(val);
                self.keys.insert(i, p);
                self.seqs.insert(i, seq);
                self.spans.insert(i, span);
            }
        }
        if self.garbage > 4096 && self.garbage > self.arena.len() / 2 {
            self.compact();
        }
    }

    /// A new chunk of this one's items with keys in `[lo, hi]`, covering up to `hi`.
    fn slice(&self, lo: Packed, hi: Packed) -> Chunk {
        let from = self.keys.partition_point(|k| *k < lo);
        let to = self.keys.partition_point(|k| *k <= hi);
        let vals: usize = (from..to).map(|i| self.spans[i].1 as usize).sum();
        let mut c = Chunk {
            end: hi,
            keys: self.keys[from..to].to_vec(),
            seqs: self.seqs[from..to].to_vec(),
            spans: Vec::with_capacity(to - from),
            arena: Vec::with_capacity(vals),
            garbage: 0,
        };
        for i in from..to {
            let span = c.append(self.val(i));
            c.spans.push(span);
        }
        c
    }

    /// Split off the upper half as a chunk of its own: `(its start, it)`. Everything between
    /// the lower half's last key and the upper half's first stays covered: the lower half
    /// ends just before the upper one starts.
    fn split(&mut self) -> (Packed, Chunk) {
        let start = self.keys[self.keys.len() / 2];
        let upper = self.slice(start, self.end);
        let end = Packed::of(&start.key().prev().expect("a key above another"));
        *self = self.slice(Packed([0; 4]), end);
        (start, upper)
    }

    fn remove(&mut self, p: &Packed) {
        if let Ok(i) = self.keys.binary_search(p) {
            self.garbage += self.spans[i].1 as usize;
            self.keys.remove(i);
            self.seqs.remove(i);
            self.spans.remove(i);
        }
    }

    /// Rewrite the arena without the values nothing uses.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for span in self.spans.iter_mut() {
            let (off, len) = *span;
            *span = (arena.len() as u32, len);
            arena.extend_from_slice(&self.arena[off as usize..(off + len) as usize]);
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

/// What the item cache has done since the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemCacheStats {
    /// Reads answered from the cache (an absent key in a covered range included).
    pub hits: u64,
    /// Reads of keys outside every covered range.
    pub misses: u64,
    /// Ranges read from the trees into the cache.
    pub fills: u64,
    /// Ranges dropped to stay within the bound.
    pub evictions: u64,
    /// Times it was emptied because another client's commits were seen or a lock went away.
    pub invalidations: u64,
    /// Items and covered ranges cached now.
    pub items: u64,
    pub ranges: u64,
    /// Estimated bytes cached now, and the bound.
    pub bytes: u64,
    pub max_bytes: u64,
}

/// Committed items by covered key range.
#[derive(Debug)]
pub struct ItemCache {
    /// Covered ranges by start key: disjoint. Boxed, so the map's nodes stay small to search.
    chunks: BTreeMap<Packed, Box<Chunk>>,
    items: usize,
    bytes: usize,
    max_bytes: usize,
    /// Where eviction goes on: it drops ranges in key order from here, round and round.
    hand: Packed,
    stats: ItemCacheStats,
}

fn is_deletion(it: &Item) -> bool {
    it.flags & crate::format::btree::ITEM_FLAG_DELETION != 0
}

impl ItemCache {
    /// A cache of at most about `max_bytes` (0: nothing is ever cached).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            chunks: BTreeMap::new(),
            items: 0,
            bytes: 0,
            max_bytes,
            hand: Packed([0; 4]),
            stats: ItemCacheStats::default(),
        }
    }

    pub fn stats(&self) -> ItemCacheStats {
        ItemCacheStats {
            items: self.items as u64,
            ranges: self.chunks.len() as u64,
            bytes: self.bytes as u64,
            max_bytes: self.max_bytes as u64,
            ..self.stats
        }
    }

    /// Whether it may hold anything.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn chunk_of(&self, p: &Packed) -> Option<(&Packed, &Chunk)> {
        self.chunks
            .range(..=*p)
            .next_back()
            .filter(|(_, c)| c.end >= *p)
            .map(|(s, c)| (s, &**c))
    }

    /// The covered range holding `key` (the tests' view of the ranges).
    #[cfg(test)]
    fn covering(&self, key: &Key) -> Option<(Key, Key)> {
        self.chunk_of(&Packed::of(key))
            .map(|(s, c)| (s.key(), c.end.key()))
    }

    /// The committed item at `key`: `Some(None)` if the key is covered and absent, `None` if
    /// the cache does not know. Counted as a hit or a miss.
    pub fn get(&mut self, key: &Key) -> Option<Option<Item>> {
        let found = self.lookup(key);
        self.count(found.is_some());
        found
    }

    /// [`ItemCache::get`] without counting.
    pub fn lookup(&self, key: &Key) -> Option<Option<Item>> {
        let p = Packed::of(key);
        let (_, c) = self.chunk_of(&p)?;
        Some(c.keys.binary_search(&p).ok().map(|i| c.item(i)))
    }

    /// Count a range read answered from the cache, or one it could not answer.
    pub fn count(&mut self, hit: bool) {
        if hit {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
    }

    /// How far from `start` towards `end` the cache covers without a gap (covered ranges
    /// that adjoin continue each other): `None` if `start` is not covered, else the last
    /// covered key up to `end`.
    pub fn covered_upto(&self, start: &Key, end: &Key) -> Option<Key> {
        let (ps, pe) = (Packed::of(start), Packed::of(end));
        let (first, c) = self.chunk_of(&ps)?;
        if c.end >= pe {
            return Some(*end);
        }
        let mut reached: Option<Packed> = None;
        for (s, c) in self.chunks.range(*first..) {
            if let Some(r) = reached {
                if Packed::of(&r.key().next().unwrap_or(Key::MAX)) != *s {
                    break;
                }
            }
            reached = Some(c.end);
            if c.end >= pe {
                return Some(*end);
            }
        }
        reached.map(|r| r.key())
    }

    /// The cached items with keys in `[start, end]`, in order, as `(key, seq, value)`. Only
    /// meaningful for a range [`ItemCache::covered_upto`] says is covered.
    pub fn items_in(&self, start: &Key, end: &Key) -> impl Iterator<Item = (Key, u64, &[u8])> {
        let (ps, pe) = (Packed::of(start), Packed::of(end));
        let found = self.chunk_of(&ps);
        // Mostly one range holds them all: no second walk down the map.
        let (one, first) = match found {
            Some((_, c)) if c.end >= pe => (Some(c), None),
            Some((s, _)) => (None, Some(*s)),
            None => (None, Some(ps)),
        };
        let rest = first.map(|f| self.chunks.range(f..=pe).map(|(_, c)| &**c));
        one.into_iter()
            .chain(rest.into_iter().flatten())
            .flat_map(move |c| {
                let from = c.keys.partition_point(|k| *k < ps);
                (from..c.keys.len()).map(move |i| (c, i))
            })
            .take_while(move |(c, i)| c.keys[*i] <= pe)
            .map(|(c, i)| (c.keys[i].key(), c.seqs[i], c.val(i)))
    }

    /// Record that `items` are all the live committed items with keys in `[start, end]`
    /// (sorted by key). Covered ranges it overlaps keep only their parts outside it.
    pub fn fill(&mut self, start: Key, end: Key, items: Vec<Item>) {
        if start > end {
            return;
        }
        let items: Vec<Item> = items
            .into_iter()
            .filter(|it| it.key >= start && it.key <= end && !is_deletion(it))
            .collect();
        let chunk = Chunk::new(Packed::of(&end), &items);
        if chunk.bytes() > self.max_bytes / 4 {
            // Never cache a range that is a large part of the bound on its own.
            return;
        }
        self.stats.fills += 1;
        let (ps, pe) = (Packed::of(&start), Packed::of(&end));
        let overlapped: Vec<Packed> = self
            .chunks
            .range(..=pe)
            .rev()
            .take_while(|(_, c)| c.end >= ps)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapped {
            let Some(old) = self.chunks.get(&s) else {
                continue;
            };
            // What the overlapped range covers below and above the fill stays covered.
            let below = (s < ps).then(|| {
                let hi = Packed::of(&start.prev().expect("a key above another"));
                (s, old.slice(s, hi))
            });
            let above = (old.end > pe).then(|| {
                let lo = Packed::of(&end.next().expect("a key below another"));
                (lo, old.slice(lo, old.end))
            });
            self.remove_chunk(&s);
            for (s, piece) in below.into_iter().chain(above) {
                self.items += piece.keys.len();
                self.bytes += piece.bytes();
                self.chunks.insert(s, Box::new(piece));
            }
        }
        self.items += chunk.keys.len();
        self.bytes += chunk.bytes();
        self.chunks.insert(ps, Box::new(chunk));
        self.evict(ps);
    }

    /// This client committed `it` (a deletion or a new version): a covered key now reads as
    /// it, by the greatest-seq rule reads follow. Equal seqs with different contents would be
    /// decided by tree order; the range holding the key is dropped instead.
    pub fn committed(&mut self, it: &Item) {
        let p = Packed::of(&it.key);
        let Some((start, c)) = self.chunk_of(&p) else {
            return;
        };
        let start = *start;
        let deletion = is_deletion(it);
        if let Ok(i) = c.keys.binary_search(&p) {
            let seq = c.seqs[i];
            if seq > it.seq {
                return;
            }
            if seq == it.seq && (deletion || *c.val(i) != *it.val) {
                self.remove_chunk(&start);
                return;
            }
        }
        let c = self.chunks.get_mut(&start).expect("chunk found above");
        let (bytes, items) = (c.bytes(), c.keys.len());
        if deletion {
            c.remove(&p);
        } else {
            c.set(p, it.seq, &it.val);
        }
        // Inserts shift the arrays: a chunk that grew past its size is cut in two.
        let upper = (c.keys.len() > MAX_CHUNK_ITEMS).then(|| c.split());
        self.bytes = self.bytes - bytes + c.bytes();
        self.items = self.items - items + c.keys.len();
        if let Some((upper_start, upper)) = upper {
            self.bytes += upper.bytes();
            self.items += upper.keys.len();
            self.chunks.insert(upper_start, Box::new(upper));
        }
        self.evict(start);
    }

    /// Forget everything (a lock went away, or another client changed items).
    pub fn clear(&mut self) {
        if !self.chunks.is_empty() {
            self.stats.invalidations += 1;
        }
        self.chunks.clear();
        self.items = 0;
        self.bytes = 0;
    }

    fn remove_chunk(&mut self, start: &Packed) {
        if let Some(c) = self.chunks.remove(start) {
            self.items -= c.keys.len();
            self.bytes -= c.bytes();
        }
    }

    /// While over the bound, drop ranges in key order from the hand on (wrapping), never
    /// the range at `keep` (just filled or changed) unless it is the only one.
    fn evict(&mut self, keep: Packed) {
        if self.bytes <= self.max_bytes {
            return;
        }
        let target = self.max_bytes / 4 * 3;
        while self.bytes > target && self.chunks.len() > 1 {
            let next = self
                .chunks
                .range(self.hand..)
                .map(|(s, _)| *s)
                .find(|s| *s != keep)
                .or_else(|| self.chunks.keys().copied().find(|s| *s != keep));
            let Some(s) = next else { break };
            self.remove_chunk(&s);
            self.stats.evictions += 1;
            self.hand = s;
        }
        if self.bytes > self.max_bytes {
            self.remove_chunk(&keep);
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::tests::any_key;
    use crate::format::key::zone;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    fn key(n: u64) -> Key {
        Key::new(zone::FS, n, 1, 0, 0, 0)
    }

    fn item(n: u64, seq: u64, val: &[u8]) -> Item {
        Item {
            key: key(n),
            seq,
            flags: 0,
            val: val.to_vec(),
        }
    }

    fn deletion(n: u64, seq: u64) -> Item {
        Item {
            key: key(n),
            seq,
            flags: crate::format::btree::ITEM_FLAG_DELETION,
            val: Vec::new(),
        }
    }

    #[test]
    fn an_absent_key_inside_a_covered_range_reads_as_absent_and_outside_as_unknown() {
        let mut c = ItemCache::new(1 << 20);
        c.fill(key(10), key(20), vec![item(12, 1, b"a"), item(15, 1, b"b")]);
        assert_eq!(c.get(&key(12)).unwrap().unwrap().val, b"a");
        assert_eq!(c.get(&key(13)), Some(None));
        assert_eq!(c.get(&key(10)), Some(None));
        assert_eq!(c.get(&key(20)), Some(None));
        assert_eq!(c.get(&key(9)), None);
        assert_eq!(c.get(&key(21)), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.fills, s.items), (4, 2, 1, 2));
    }

    #[test]
    fn a_fill_replaces_what_it_overlaps_and_keeps_the_rest_covered() {
        let mut c = ItemCache::new(1 << 20);
        c.fill(key(10), key(20), vec![item(12, 1, b"a"), item(19, 1, b"x")]);
        c.fill(key(30), key(40), vec![item(31, 1, b"y"), item(35, 1, b"c")]);
        c.fill(key(50), key(60), vec![]);
        assert_eq!(c.covering(&key(25)), None);
        c.fill(key(18), key(32), vec![item(25, 1, b"b")]);
        assert_eq!(c.covering(&key(25)), Some((key(18), key(32))));
        assert_eq!(c.get(&key(12)).unwrap().unwrap().val, b"a");
        assert_eq!(
            c.get(&key(19)),
            Some(None),
            "the fill is the truth inside it"
        );
        assert_eq!(c.get(&key(31)), Some(None));
        assert_eq!(c.get(&key(35)).unwrap().unwrap().val, b"c");
        assert_eq!(c.get(&key(25)).unwrap().unwrap().val, b"b");
        assert_eq!(c.get(&key(55)), Some(None));
        assert_eq!(c.covered_upto(&key(10), &key(40)), Some(key(40)), "no gap");
        assert_eq!(c.covered_upto(&key(10), &key(45)), Some(key(40)));
        assert_eq!(c.covered_upto(&key(45), &key(50)), None);
        let got: Vec<Key> = c.items_in(&key(11), &key(40)).map(|(k, _, _)| k).collect();
        assert_eq!(got, vec![key(12), key(25), key(35)]);
        assert_eq!(c.stats().ranges, 4);
        assert_eq!(c.stats().items, 3);
        // A fill inside one range cuts it in three.
        c.fill(key(52), key(54), vec![item(53, 1, b"z")]);
        assert_eq!(c.stats().ranges, 6);
        assert_eq!(c.covered_upto(&key(50), &key(60)), Some(key(60)));
    }

    #[test]
    fn a_range_that_grows_through_commits_is_cut_in_two_and_covers_the_same_keys() {
        let mut c = ItemCache::new(64 << 20);
        c.fill(key(0), key(100_000), vec![]);
        for n in 0..3000u64 {
            c.committed(&item(n * 7, 1, &n.to_le_bytes()));
        }
        assert!(c.stats().ranges >= 3);
        for n in 0..21_000u64 {
            let want = (n % 7 == 0).then(|| (n / 7).to_le_bytes().to_vec());
            assert_eq!(c.get(&key(n)).unwrap().map(|it| it.val), want, "key {n}");
        }
        assert_eq!(c.get(&key(100_000)), Some(None));
        assert_eq!(c.get(&key(100_001)), None);
        let got: Vec<Key> = c
            .items_in(&key(700), &key(714))
            .map(|(k, _, _)| k)
            .collect();
        assert_eq!(got, vec![key(700), key(707), key(714)]);
    }

    #[test]
    fn point_reads_find_every_key_in_ranges_of_any_size() {
        for n in [1u64, 7, 1000, 70_000] {
            let mut c = ItemCache::new(1 << 30);
            let items: Vec<Item> = (0..n).map(|i| item(i * 2, 1, &i.to_le_bytes())).collect();
            c.fill(key(0), key(2 * n), items);
            for i in 0..2 * n {
                let got = c.get(&key(i)).unwrap().map(|it| it.val);
                let want = (i % 2 == 0).then(|| (i / 2).to_le_bytes().to_vec());
                assert_eq!(got, want, "n {n} key {i}");
            }
        }
    }

    #[test]
    fn own_commits_replace_and_delete_covered_keys_only() {
        let mut c = ItemCache::new(1 << 20);
        c.fill(key(10), key(20), vec![item(12, 1, b"a")]);
        c.committed(&item(12, 2, b"new"));
        c.committed(&item(14, 2, b"born"));
        c.committed(&item(30, 2, b"outside"));
        assert_eq!(c.get(&key(12)).unwrap().unwrap().val, b"new");
        assert_eq!(c.get(&key(14)).unwrap().unwrap().val, b"born");
        assert_eq!(c.get(&key(30)), None);
        c.committed(&deletion(12, 3));
        assert_eq!(c.get(&key(12)), Some(None));
        // An older version does not replace a newer one.
        c.committed(&item(14, 1, b"old"));
        assert_eq!(c.get(&key(14)).unwrap().unwrap().val, b"born");
        // Equal seqs with other contents: the range is dropped.
        c.committed(&item(14, 2, b"other"));
        assert_eq!(c.get(&key(14)), None);
        assert_eq!(c.get(&key(15)), None);
    }

    #[test]
    fn fills_past_the_bound_evict_other_ranges_and_a_huge_one_is_not_kept() {
        let val = vec![0u8; 1000];
        let one = Chunk::new(
            Packed::of(&key(9)),
            &(0..4).map(|n| item(n, 1, &val)).collect::<Vec<_>>(),
        )
        .bytes();
        let mut c = ItemCache::new(10 * one);
        for r in 0..10 {
            let b = r * 10;
            c.fill(
                key(b),
                key(b + 9),
                (b..b + 4).map(|n| item(n, 1, &val)).collect(),
            );
        }
        assert_eq!(c.stats().ranges, 10);
        assert_eq!(c.stats().evictions, 0);
        c.fill(
            key(100),
            key(109),
            (100..104).map(|n| item(n, 1, &val)).collect(),
        );
        let s = c.stats();
        assert!(s.evictions >= 1 && s.bytes <= s.max_bytes, "{s:?}");
        assert!(c.get(&key(101)).unwrap().is_some(), "the new range is kept");
        c.fill(
            key(200),
            key(300),
            (200..230).map(|n| item(n, 1, &val)).collect(),
        );
        assert_eq!(
            c.get(&key(201)),
            None,
            "a fill of over a quarter of the bound is not kept"
        );
    }

    proptest! {
        /// Packing keeps every field and the key order.
        #[test]
        fn packed_keys_round_trip_and_sort_as_keys(a in any_key(), b in any_key()) {
            prop_assert_eq!(Packed::of(&a).key(), a);
            prop_assert_eq!(Packed::of(&a).cmp(&Packed::of(&b)), a.cmp(&b));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Fill(u64, u64),
        Commit(u64, Option<u8>),
        Get(u64),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..200, 0u64..40).prop_map(|(s, l)| Op::Fill(s, s + l)),
            (0u64..200, proptest::option::of(any::<u8>())).prop_map(|(k, v)| Op::Commit(k, v)),
            (0u64..200).prop_map(Op::Get),
            Just(Op::Clear),
        ]
    }

    proptest! {
        /// Against a model of the committed items: whatever the cache answers is what the
        /// model holds, and its byte estimate always matches its contents.
        #[test]
        fn answers_always_match_the_committed_items(ops in proptest::collection::vec(op(), 1..200)) {
            let mut c = ItemCache::new(8 * 1024);
            let mut model: Model<u64, (u64, u8)> = Model::new();
            let mut seq = 1;
            for op in ops {
                match op {
                    Op::Fill(s, e) => {
                        let items = model.range(s..=e).map(|(k, (q, v))| item(*k, *q, &[*v])).collect();
                        c.fill(key(s), key(e), items);
                    }
                    Op::Commit(k, v) => {
                        seq += 1;
                        match v {
                            Some(v) => {
                                model.insert(k, (seq, v));
                                c.committed(&item(k, seq, &[v]));
                            }
                            None => {
                                model.remove(&k);
                                c.committed(&deletion(k, seq));
                            }
                        }
                    }
                    Op::Get(k) => {
                        if let Some(got) = c.get(&key(k)) {
                            prop_assert_eq!(got.map(|it| (it.seq, it.val[0])), model.get(&k).copied());
                        }
                    }
                    Op::Clear => c.clear(),
                }
                let want: usize = c.chunks.values().map(|ch| ch.bytes()).sum();
                prop_assert_eq!(c.bytes, want);
                prop_assert_eq!(c.items, c.chunks.values().map(|ch| ch.keys.len()).sum::<usize>());
                prop_assert!(c.bytes <= c.max_bytes);
                // Ranges stay disjoint; every item lies in its range, in order.
                let mut last: Option<Packed> = None;
                for (s, ch) in &c.chunks {
                    prop_assert!(*s <= ch.end);
                    if let Some(l) = last {
                        prop_assert!(l < *s);
                    }
                    last = Some(ch.end);
                    prop_assert!(ch.keys.windows(2).all(|w| w[0] < w[1]));
                    prop_assert!(ch.keys.iter().all(|k| k >= s && *k <= ch.end));
                }
            }
        }
    }
}
