//! The duplicate-request cache: a retransmitted non-idempotent request (a REMOVE whose reply
//! was lost, say) must get the original reply, not a second execution (which would answer
//! NOENT for a remove that succeeded).
//!
//! Entries are keyed by the client's address, the XID and a checksum of the call, and exist
//! from the moment a request starts: a retransmission that arrives while the original is
//! still running is recognised too (and dropped; the client retries again later). Completed
//! entries are kept up to a bound, oldest evicted first.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Identifies one request of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DrcKey {
    pub client: IpAddr,
    pub xid: u32,
    /// crc32c of the call after its XID.
    pub checksum: u32,
}

impl DrcKey {
    pub fn new(client: IpAddr, xid: u32, call: &[u8]) -> Self {
        Self {
            client,
            xid,
            checksum: crc32c::crc32c(call.get(4..).unwrap_or(&[])),
        }
    }
}

/// What the cache knows about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: execute it, then call [`DuplicateCache::finish`].
    New,
    /// The original is still running: drop this copy.
    InProgress,
    /// Already answered: send this reply again.
    Replay(Arc<Vec<u8>>),
}

#[derive(Debug)]
enum Entry {
    InProgress,
    Done(Arc<Vec<u8>>),
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<DrcKey, Entry>,
    order: VecDeque<DrcKey>,
}

/// A bounded duplicate-request cache shared by all connections of a node.
#[derive(Debug)]
pub struct DuplicateCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl DuplicateCache {
    /// Keep at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look a request up, registering it as in progress if it is new.
    pub fn begin(&self, key: DrcKey) -> Seen {
        let mut g = self.lock();
        match g.map.get(&key) {
            Some(Entry::InProgress) => return Seen::InProgress,
            Some(Entry::Done(reply)) => return Seen::Replay(reply.clone()),
            None => {}
        }
        g.map.insert(key, Entry::InProgress);
        g.order.push_back(key);
        while g.order.len() > self.capacity {
            // Evict the oldest entry that is done; in-progress ones stay until finished.
            let Some(pos) = g
                .order
                .iter()
                .position(|k| matches!(g.map.get(k), Some(Entry::Done(_))))
            else {
                break;
            };
            let old = g.order.remove(pos).expect("position is valid");
            g.map.remove(&old);
        }
        Seen::New
    }

    /// Record the reply of a request `begin` called new.
    pub fn finish(&self, key: DrcKey, reply: Vec<u8>) {
        let mut g = self.lock();
        if let Some(e) = g.map.get_mut(&key) {
            *e = Entry::Done(Arc::new(reply));
        }
    }

    /// Forget a request that produced no reply.
    pub fn abandon(&self, key: DrcKey) {
        let mut g = self.lock();
        g.map.remove(&key);
        g.order.retain(|k| *k != key);
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(xid: u32, body: &[u8]) -> DrcKey {
        DrcKey::new("127.0.0.7".parse().unwrap(), xid, body)
    }

    #[test]
    fn a_retransmission_gets_the_original_reply() {
        let c = DuplicateCache::new(10);
        let k = key(1, b"xxxxREMOVE a");
        assert_eq!(c.begin(k), Seen::New);
        assert_eq!(c.begin(k), Seen::InProgress, "while running");
        c.finish(k, b"reply-1".to_vec());
        assert_eq!(c.begin(k), Seen::Replay(Arc::new(b"reply-1".to_vec())));
        // Same XID, different call (the client reused the XID): not a duplicate.
        assert_eq!(c.begin(key(1, b"xxxxREMOVE b")), Seen::New);
        // Another client with the same XID and bytes: not a duplicate either.
        let other = DrcKey::new("127.0.0.8".parse().unwrap(), 1, b"xxxxREMOVE a");
        assert_eq!(c.begin(other), Seen::New);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_requests_in_progress() {
        let c = DuplicateCache::new(3);
        let running = key(0, b"....running");
        assert_eq!(c.begin(running), Seen::New);
        for x in 1..10 {
            let k = key(x, b"....op");
            assert_eq!(c.begin(k), Seen::New);
            c.finish(k, vec![x as u8]);
        }
        assert!(c.len() <= 3, "{}", c.len());
        assert_eq!(c.begin(running), Seen::InProgress);
        assert_eq!(c.begin(key(9, b"....op")), Seen::Replay(Arc::new(vec![9])));
        assert_eq!(c.begin(key(1, b"....op")), Seen::New, "evicted long ago");
        c.abandon(running);
        assert_eq!(c.begin(running), Seen::New);
    }
}
