//! A bounded cache of verified metadata blocks.
//!
//! Entries are keyed by `blkno` and carry the `seq` of the version they hold. A lookup names
//! the `(blkno, seq)` reference it follows and hits only when both match, so a reference is
//! never answered with the bytes of another version of its block: a stale entry can never be
//! served. Writing a new version of a block replaces the entry, so at most one version of a
//! block is cached. Capacity is a byte budget; eviction is quick_cache's CLOCK-Pro.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::buf::BlockBuf;

/// One cached, verified block version.
#[derive(Debug)]
pub struct CachedBlock {
    pub seq: u64,
    pub data: BlockBuf,
    /// Set by the layer that interprets the body (e.g. btree item bounds) once it has checked
    /// it, so a cached block's body is checked once, not on every use.
    pub body_checked: AtomicBool,
}

impl CachedBlock {
    pub fn new(seq: u64, data: BlockBuf) -> Self {
        Self {
            seq,
            data,
            body_checked: AtomicBool::new(false),
        }
    }

    pub fn is_body_checked(&self) -> bool {
        self.body_checked.load(Ordering::Acquire)
    }

    pub fn mark_body_checked(&self) {
        self.body_checked.store(true, Ordering::Release);
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u64, Arc<CachedBlock>> for ByBytes {
    fn weight(&self, _blkno: &u64, block: &Arc<CachedBlock>) -> u64 {
        block.data.len().max(1) as u64
    }
}

/// Hit and miss counts since the cache was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
}

/// The block cache of one device in one process.
pub struct BlockCache {
    map: Option<Cache<u64, Arc<CachedBlock>, ByBytes>>,
    capacity_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of block data. Zero disables caching.
    pub fn new(capacity_bytes: u64, block_bytes: usize) -> Self {
        let map = (capacity_bytes > 0).then(|| {
            let items = (capacity_bytes / block_bytes.max(1) as u64).max(1) as usize;
            Cache::with_weighter(items, capacity_bytes, ByBytes)
        });
        Self {
            map,
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached bytes of version `seq` of `blkno`, if exactly that version is cached.
    pub fn get(&self, blkno: u64, seq: u64) -> Option<Arc<CachedBlock>> {
        let found = self
            .map
            .as_ref()
            .and_then(|m| m.get(&blkno))
            .filter(|b| b.seq == seq);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Cache a verified block version, replacing any other version of the same block.
    pub fn insert(&self, blkno: u64, block: Arc<CachedBlock>) {
        if let Some(m) = &self.map {
            m.insert(blkno, block);
        }
    }

    /// Forget whatever version of `blkno` is cached (the block was freed or rewritten).
    pub fn forget(&self, blkno: u64) {
        if let Some(m) = &self.map {
            m.remove(&blkno);
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.map.as_ref().map_or(0, |m| m.weight()),
            capacity_bytes: self.capacity_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seq: u64, len: usize) -> Arc<CachedBlock> {
        Arc::new(CachedBlock::new(seq, BlockBuf::zeroed(len)))
    }

    #[test]
    fn lookup_of_another_version_misses() {
        let c = BlockCache::new(1 << 20, 65536);
        c.insert(5, block(10, 65536));
        assert!(c.get(5, 10).is_some());
        assert!(c.get(5, 11).is_none());
        assert!(c.get(5, 9).is_none());
        c.insert(5, block(11, 65536));
        assert!(c.get(5, 10).is_none(), "old version must not be served");
        assert!(c.get(5, 11).is_some());
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (2, 3));
    }

    #[test]
    fn cache_stays_within_its_byte_budget() {
        let cap = 16 * 65536;
        let c = BlockCache::new(cap, 65536);
        for blkno in 0..1000 {
            c.insert(blkno, block(1, 65536));
        }
        assert!(c.stats().bytes <= cap, "{:?}", c.stats());
    }

    #[test]
    fn zero_capacity_disables_caching() {
        let c = BlockCache::new(0, 65536);
        c.insert(1, block(1, 65536));
        assert!(c.get(1, 1).is_none());
    }

    #[test]
    fn forget_drops_the_entry() {
        let c = BlockCache::new(1 << 20, 65536);
        c.insert(3, block(1, 65536));
        c.forget(3);
        assert!(c.get(3, 1).is_none());
    }
}
