//! Lock names: the key range a cluster lock covers.
//!
//! Items are locked in groups: the items of 1024 consecutive inodes share one lock, so do 1024
//! consecutive seqs of an inode index; the orphan, quota and xattr-total zones are one lock
//! each. A log tree's bloom filter records the start keys of the lock groups its items belong
//! to, so a reader holding a lock can skip every tree that never wrote under that lock.

use crate::format::key::zone;
use crate::format::Key;

/// Inodes per lock group (and per inode-number batch a directory's files are drawn from).
pub const INODES_PER_LOCK: u64 = 1024;
/// Index seqs per lock group.
pub const SEQS_PER_LOCK: u64 = 1024;

/// The first key of the lock group holding `key`.
pub fn lock_start(key: &Key) -> Key {
    match key.zone {
        zone::FS => Key::new(
            zone::FS,
            key.first.get() & !(INODES_PER_LOCK - 1),
            0,
            0,
            0,
            0,
        ),
        zone::INODE_INDEX => Key::new(
            zone::INODE_INDEX,
            0,
            key.ty,
            key.second.get() & !(SEQS_PER_LOCK - 1),
            0,
            0,
        ),
        z => Key::new(z, 0, 0, 0, 0, 0),
    }
}

/// The last key of the lock group holding `key`.
pub fn lock_end(key: &Key) -> Key {
    match key.zone {
        zone::FS => Key::new(
            zone::FS,
            key.first.get() | (INODES_PER_LOCK - 1),
            u8::MAX,
            u64::MAX,
            u64::MAX,
            u8::MAX,
        ),
        zone::INODE_INDEX => Key::new(
            zone::INODE_INDEX,
            0,
            key.ty,
            key.second.get() | (SEQS_PER_LOCK - 1),
            u64::MAX,
            u8::MAX,
        ),
        z => Key::new(z, u64::MAX, u8::MAX, u64::MAX, u64::MAX, u8::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_key_lies_within_its_lock_group(z in prop::sample::select(vec![zone::FS, zone::INODE_INDEX, zone::ORPHAN, zone::XATTR_TOTL]),
                                             a: u64, t: u8, b: u64, c: u64, d: u8) {
            // Index keys keep their seq in `second`; `first` is always 0 there.
            let a = if z == zone::INODE_INDEX { 0 } else { a };
            let k = Key::new(z, a, t, b, c, d);
            prop_assert!(lock_start(&k) <= k && k <= lock_end(&k));
            prop_assert_eq!(lock_start(&lock_end(&k)), lock_start(&k));
        }
    }

    #[test]
    fn inodes_share_a_lock_in_groups_of_1024() {
        let k = |ino| Key::new(zone::FS, ino, 4, 0, 0, 0);
        assert_eq!(lock_start(&k(1)), lock_start(&k(1023)));
        assert_ne!(lock_start(&k(1023)), lock_start(&k(1024)));
    }
}
