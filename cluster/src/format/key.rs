//! Item keys.
//!
//! A key is 32 bytes on disk: `first`, `second`, `third` (le64 each), then `fourth`, `zone`,
//! `ty` (u8 each) and five zero bytes. The sort order is **not** the byte order: keys compare
//! by `zone`, `first`, `ty`, `second`, `third`, `fourth`, all unsigned. That keeps all items
//! of one inode (zone FS, first = ino) together, grouped by item type.

use std::cmp::Ordering;
use std::fmt;

use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::assert_disk_size;

/// Key zones: the major sort of every key.
pub mod zone {
    pub const INODE_INDEX: u8 = 4;
    pub const ORPHAN: u8 = 8;
    pub const QUOTA: u8 = 10;
    pub const XATTR_TOTL: u8 = 12;
    pub const XATTR_INDX: u8 = 14;
    /// Items indexing `scoutfs.srch.` xattrs by name hash (scoutgw keeps these as items in
    /// the forest rather than scoutfs's separate srch files).
    pub const XATTR_SRCH: u8 = 15;
    pub const FS: u8 = 16;
    pub const LOCK: u8 = 20;
    pub const LOG_TREES: u8 = 24;
    pub const MOUNTED_CLIENT: u8 = 28;
    pub const SRCH: u8 = 32;
    pub const FREE_EXTENT_BLKNO: u8 = 36;
    pub const FREE_EXTENT_ORDER: u8 = 40;
    pub const LOG_MERGE_STATUS: u8 = 44;
    pub const LOG_MERGE_RANGE: u8 = 48;
    pub const LOG_MERGE_REQUEST: u8 = 52;
    pub const LOG_MERGE_COMPLETE: u8 = 56;
    pub const LOG_MERGE_FREEING: u8 = 60;

    /// Name of a zone, for `print`.
    pub fn name(zone: u8) -> &'static str {
        match zone {
            INODE_INDEX => "inode_index",
            ORPHAN => "orphan",
            QUOTA => "quota",
            XATTR_TOTL => "xattr_totl",
            XATTR_INDX => "xattr_indx",
            XATTR_SRCH => "xattr_srch",
            FS => "fs",
            LOCK => "lock",
            LOG_TREES => "log_trees",
            MOUNTED_CLIENT => "mounted_client",
            SRCH => "srch",
            FREE_EXTENT_BLKNO => "free_extent_blkno",
            FREE_EXTENT_ORDER => "free_extent_order",
            LOG_MERGE_STATUS => "log_merge_status",
            LOG_MERGE_RANGE => "log_merge_range",
            LOG_MERGE_REQUEST => "log_merge_request",
            LOG_MERGE_COMPLETE => "log_merge_complete",
            LOG_MERGE_FREEING => "log_merge_freeing",
            _ => "unknown",
        }
    }
}

/// An item key as stored in btree blocks.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Default)]
#[repr(C)]
pub struct Key {
    pub first: U64,
    pub second: U64,
    pub third: U64,
    pub fourth: u8,
    pub zone: u8,
    pub ty: u8,
    pub _pad: [u8; 5],
}
assert_disk_size!(Key, 32);

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key {
        first: U64::ZERO,
        second: U64::ZERO,
        third: U64::ZERO,
        fourth: 0,
        zone: 0,
        ty: 0,
        _pad: [0; 5],
    };

    /// The largest key: the rightmost spine of every btree uses it.
    pub const MAX: Key = Key {
        first: U64::MAX_VALUE,
        second: U64::MAX_VALUE,
        third: U64::MAX_VALUE,
        fourth: u8::MAX,
        zone: u8::MAX,
        ty: u8::MAX,
        _pad: [0; 5],
    };

    pub fn new(zone: u8, first: u64, ty: u8, second: u64, third: u64, fourth: u8) -> Self {
        Key {
            first: first.into(),
            second: second.into(),
            third: third.into(),
            fourth,
            zone,
            ty,
            _pad: [0; 5],
        }
    }

    /// The next key in sort order, or `None` for [`Key::MAX`].
    pub fn next(&self) -> Option<Key> {
        let (z, a, t, b, c, d) = self.sort_tuple();
        let (d, carry) = d.overflowing_add(1);
        let (c, carry) = c.overflowing_add(carry as u64);
        let (b, carry) = b.overflowing_add(carry as u64);
        let (t, carry) = t.overflowing_add(carry as u8);
        let (a, carry) = a.overflowing_add(carry as u64);
        let (z, carry) = z.overflowing_add(carry as u8);
        (!carry).then(|| Key::new(z, a, t, b, c, d))
    }

    /// The previous key in sort order, or `None` for [`Key::MIN`].
    pub fn prev(&self) -> Option<Key> {
        let (z, a, t, b, c, d) = self.sort_tuple();
        let (d, borrow) = d.overflowing_sub(1);
        let (c, borrow) = c.overflowing_sub(borrow as u64);
        let (b, borrow) = b.overflowing_sub(borrow as u64);
        let (t, borrow) = t.overflowing_sub(borrow as u8);
        let (a, borrow) = a.overflowing_sub(borrow as u64);
        let (z, borrow) = z.overflowing_sub(borrow as u8);
        (!borrow).then(|| Key::new(z, a, t, b, c, d))
    }

    /// The fields in sort order.
    pub fn sort_tuple(&self) -> (u8, u64, u8, u64, u64, u8) {
        (
            self.zone,
            self.first.get(),
            self.ty,
            self.second.get(),
            self.third.get(),
            self.fourth,
        )
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.sort_tuple() == other.sort_tuple()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.sort_tuple().hash(state);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_tuple().cmp(&other.sort_tuple())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (z, a, t, b, c, d) = self.sort_tuple();
        write!(f, "{}.{a}.{t}.{b}.{c}.{d}", zone::name(z))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any key (shared by the proptests of other modules).
    pub(crate) fn any_key() -> impl Strategy<Value = Key> {
        (
            any::<u8>(),
            any::<u64>(),
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
        )
            .prop_map(|(z, a, t, b, c, d)| Key::new(z, a, t, b, c, d))
    }

    #[test]
    fn sort_order_is_zone_first_type_second_third_fourth() {
        let ino5_inode = Key::new(zone::FS, 5, 4, 0, 0, 0);
        let ino5_xattr = Key::new(zone::FS, 5, 8, 0, 0, 0);
        let ino6_inode = Key::new(zone::FS, 6, 4, 0, 0, 0);
        let index = Key::new(zone::INODE_INDEX, 0, 4, 99, 5, 0);
        assert!(index < ino5_inode);
        assert!(ino5_inode < ino5_xattr);
        assert!(ino5_xattr < ino6_inode);
        // `second` sorts after `ty`, even though it comes first in the struct.
        assert!(Key::new(zone::FS, 5, 4, u64::MAX, 0, 0) < ino5_xattr);
        assert!(Key::MIN < index && ino6_inode < Key::MAX);
    }

    proptest! {
        #[test]
        fn key_round_trips_through_bytes(k in any_key()) {
            let bytes = k.as_bytes().to_vec();
            prop_assert_eq!(bytes.len(), 32);
            prop_assert_eq!(&bytes[0..8], &k.first.get().to_le_bytes());
            prop_assert_eq!(bytes[25], k.zone);
            prop_assert!(bytes[27..].iter().all(|&b| b == 0));
            let back = Key::read_from_bytes(&bytes).unwrap();
            prop_assert_eq!(back.sort_tuple(), k.sort_tuple());
        }

        #[test]
        fn next_and_prev_are_adjacent(k in any_key()) {
            if let Some(n) = k.next() {
                prop_assert!(n > k);
                prop_assert_eq!(n.prev(), Some(k));
            } else {
                prop_assert_eq!(k, Key::MAX);
            }
            if let Some(p) = k.prev() {
                prop_assert!(p < k);
                prop_assert_eq!(p.next(), Some(k));
            } else {
                prop_assert_eq!(k, Key::MIN);
            }
        }

        #[test]
        fn ordering_matches_the_sort_tuple(a in any_key(), b in any_key()) {
            prop_assert_eq!(a.cmp(&b), a.sort_tuple().cmp(&b.sort_tuple()));
        }
    }
}
