//! The `log_trees` record: one per client per log tree generation, in `logs_root`, keyed by
//! `(LOG_TREES zone, first = rid, second = nr)`.
//!
//! It carries everything a client's transactions need (its allocators, its log btree, its
//! bloom block) and the open/committed state of its transaction: `get_trans_seq >
//! commit_trans_seq` means a transaction is open (seed 004). Both `get_log_trees` and
//! `commit_log_trees` use these two fields to recognise a resent request.

use scoutgw_blockdev::BlockRef;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::key::zone;
use super::{assert_disk_size, AllocListHead, AllocRoot, BtreeRoot, Key};

/// The tree is frozen: no more transactions write to it; it waits to be merged.
pub const LOG_TREES_FINALIZED: u64 = 0x1;

#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct LogTrees {
    /// Metadata blocks the client's transaction allocates from.
    pub meta_avail: AllocListHead,
    /// Metadata blocks the client's transaction freed.
    pub meta_freed: AllocListHead,
    /// The client's log btree of items.
    pub item_root: BtreeRoot,
    /// Bloom filter block over the lock groups of the items in `item_root` (null if none).
    pub bloom_ref: BlockRef,
    /// Data extents the client allocates file data from.
    pub data_avail: AllocRoot,
    /// Data extents the client freed.
    pub data_freed: AllocRoot,
    /// Greatest item seq in `item_root`.
    pub max_item_seq: U64,
    /// Seq of the transaction the server opened for the client.
    pub get_trans_seq: U64,
    /// Seq of the last transaction the server committed for the client.
    pub commit_trans_seq: U64,
    /// Core seq when the tree was finalized.
    pub finalize_seq: U64,
    pub rid: U64,
    pub nr: U64,
    pub flags: U64,
    /// Inodes created minus inodes deleted in this tree.
    pub inode_count_delta: U64,
    /// Seq of the first transaction that wrote to this tree: no item in it is older.
    pub first_trans_seq: U64,
    pub _reserved: [U64; 7],
}
assert_disk_size!(LogTrees, 312);

impl LogTrees {
    pub fn is_finalized(&self) -> bool {
        self.flags.get() & LOG_TREES_FINALIZED != 0
    }

    /// A transaction is open: the server handed out `get_trans_seq` and has not committed it.
    pub fn trans_open(&self) -> bool {
        self.get_trans_seq.get() > self.commit_trans_seq.get()
    }

    pub fn key(&self) -> Key {
        log_trees_key(self.rid.get(), self.nr.get())
    }
}

pub fn log_trees_key(rid: u64, nr: u64) -> Key {
    Key::new(zone::LOG_TREES, rid, 0, nr, 0, 0)
}

/// A mounted client's record in `mounted_clients`, keyed by rid.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct MountedClient {
    pub addr: super::InetAddr,
    pub flags: U32,
    pub _pad: U32,
}
assert_disk_size!(MountedClient, 16);

/// The client is a quorum member.
pub const MOUNTED_CLIENT_QUORUM: u32 = 0x1;

pub fn mounted_client_key(rid: u64) -> Key {
    Key::new(zone::MOUNTED_CLIENT, rid, 0, 0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    proptest! {
        #[test]
        fn log_trees_round_trip(w in proptest::collection::vec(any::<u64>(), 12)) {
            let mut lt = LogTrees::new_zeroed();
            lt.meta_avail.total_nr = w[0].into();
            lt.item_root.block = BlockRef::new(w[1], w[2]);
            lt.bloom_ref = BlockRef::new(w[3], w[4]);
            lt.data_avail.total_len = w[5].into();
            lt.max_item_seq = w[6].into();
            lt.get_trans_seq = w[7].into();
            lt.commit_trans_seq = w[8].into();
            lt.rid = w[9].into();
            lt.nr = w[10].into();
            lt.flags = w[11].into();
            let back = LogTrees::read_from_bytes(lt.as_bytes()).unwrap();
            prop_assert_eq!(back, lt);
            prop_assert_eq!(back.key(), log_trees_key(w[9], w[10]));
        }
    }
}
