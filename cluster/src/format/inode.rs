//! Filesystem items: inodes, directory entries, xattrs, symlink targets and file data extents,
//! all in the FS zone keyed by inode number (`first`) and item type (`ty`).
//!
//! | item | key (zone FS, first = ino) | value |
//! |---|---|---|
//! | inode | ty INODE | [`InodeItem`] |
//! | dirent (lookup) | ty DIRENT, second = name hash, third = readdir pos | [`DirentHeader`] + name |
//! | readdir | ty READDIR, second = pos | same |
//! | link backref | first = target ino, ty LINK_BACKREF, second = dir ino, third = pos | same |
//! | xattr | ty XATTR, second = name hash, third = xattr id, fourth = part | part 0: [`XattrHeader`] + name + value; later parts continue the bytes |
//! | symlink target | ty SYMLINK, second = chunk nr | target bytes |
//! | data extent | ty DATA_EXTENT, second = last logical 4 KiB block, third = length | [`ExtentValue`] |
//!
//! Index items (zone INODE_INDEX, type META_SEQ or DATA_SEQ, second = seq, third = ino) have
//! no value; xattr search items (zone XATTR_SRCH, first = name hash, second = ino, third =
//! xattr id) have none either.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::key::zone;
use super::{assert_disk_size, Key, Timespec};

/// FS zone item types.
pub mod ty {
    pub const INODE: u8 = 4;
    pub const XATTR: u8 = 8;
    pub const DIRENT: u8 = 12;
    pub const READDIR: u8 = 16;
    pub const LINK_BACKREF: u8 = 20;
    pub const SYMLINK: u8 = 24;
    pub const DATA_EXTENT: u8 = 28;
    /// INODE_INDEX zone types.
    pub const META_SEQ: u8 = 4;
    pub const DATA_SEQ: u8 = 8;
}

/// The root directory.
pub const ROOT_INO: u64 = 1;
/// Longest name in a directory.
pub const NAME_MAX: usize = 255;
/// Longest symlink target.
pub const SYMLINK_MAX: usize = 4096;
/// Largest xattr value.
pub const XATTR_VALUE_MAX: usize = 65536;
/// First readdir position handed to an entry. Readdir cookies are positions: 0 starts a
/// listing, 1 and 2 are left for "." and "..".
pub const DIRENT_FIRST_POS: u64 = 3;

#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct InodeItem {
    pub size: U64,
    pub meta_seq: U64,
    pub data_seq: U64,
    pub data_version: U64,
    pub online_blocks: U64,
    pub offline_blocks: U64,
    pub next_readdir_pos: U64,
    pub next_xattr_id: U64,
    /// Distinguishes this inode from any other that had the same number.
    pub generation: U64,
    pub nlink: U32,
    pub uid: U32,
    pub gid: U32,
    pub mode: U32,
    pub rdev: U64,
    pub flags: U32,
    pub _pad: U32,
    pub atime: Timespec,
    pub ctime: Timespec,
    pub mtime: Timespec,
    pub crtime: Timespec,
}
assert_disk_size!(InodeItem, 168);

/// Directory entry value header; the name follows.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct DirentHeader {
    pub ino: U64,
    pub hash: U64,
    pub pos: U64,
    /// The target's generation, so a handle built from a dirent can be checked.
    pub generation: U64,
    /// File type (the `S_IFMT` bits of the mode, shifted right by 12).
    pub dtype: u8,
    pub _pad: [u8; 7],
}
assert_disk_size!(DirentHeader, 40);

/// First part of an xattr; the name and the start of the value follow.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct XattrHeader {
    pub val_len: U32,
    pub name_len: U16,
    pub _pad: [u8; 2],
}
assert_disk_size!(XattrHeader, 8);

/// The physical side of a data extent.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct ExtentValue {
    /// First data device block (0 when offline).
    pub blkno: U64,
    pub flags: u8,
    pub _pad: [u8; 7],
}
assert_disk_size!(ExtentValue, 16);

/// The extent's data was released to the archive tier.
pub const EXTENT_OFFLINE: u8 = 0x1;

pub fn inode_key(ino: u64) -> Key {
    Key::new(zone::FS, ino, ty::INODE, 0, 0, 0)
}

pub fn dirent_key(dir: u64, hash: u64, pos: u64) -> Key {
    Key::new(zone::FS, dir, ty::DIRENT, hash, pos, 0)
}

pub fn readdir_key(dir: u64, pos: u64) -> Key {
    Key::new(zone::FS, dir, ty::READDIR, pos, 0, 0)
}

pub fn backref_key(target: u64, dir: u64, pos: u64) -> Key {
    Key::new(zone::FS, target, ty::LINK_BACKREF, dir, pos, 0)
}

pub fn xattr_key(ino: u64, hash: u64, id: u64, part: u8) -> Key {
    Key::new(zone::FS, ino, ty::XATTR, hash, id, part)
}

pub fn symlink_key(ino: u64, nr: u64) -> Key {
    Key::new(zone::FS, ino, ty::SYMLINK, nr, 0, 0)
}

pub fn extent_key(ino: u64, last_block: u64, len: u64) -> Key {
    Key::new(zone::FS, ino, ty::DATA_EXTENT, last_block, len, 0)
}

pub fn index_key(index_ty: u8, seq: u64, ino: u64) -> Key {
    Key::new(zone::INODE_INDEX, 0, index_ty, seq, ino, 0)
}

pub fn srch_key(hash: u64, ino: u64, id: u64) -> Key {
    Key::new(zone::XATTR_SRCH, hash, 0, ino, id, 0)
}

/// Hash of a name, for dirent and xattr keys: FNV-1a 64.
pub fn name_hash(name: &[u8]) -> u64 {
    super::bloom::fnv1a64(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zerocopy::FromZeros;

    proptest! {
        #[test]
        fn inode_round_trips(w in proptest::collection::vec(any::<u64>(), 10), m: u32, n: u32) {
            let mut i = InodeItem::new_zeroed();
            i.size = w[0].into();
            i.meta_seq = w[1].into();
            i.data_seq = w[2].into();
            i.data_version = w[3].into();
            i.generation = w[4].into();
            i.rdev = w[5].into();
            i.mode = m.into();
            i.nlink = n.into();
            i.mtime.sec = w[6].into();
            i.crtime.nsec = (w[7] as u32).into();
            let back = InodeItem::read_from_bytes(i.as_bytes()).unwrap();
            prop_assert_eq!(back, i);
        }

        #[test]
        fn dirent_and_extent_round_trip(ino: u64, hash: u64, pos: u64, gen_: u64, dtype: u8, blkno: u64, flags: u8) {
            let d = DirentHeader { ino: ino.into(), hash: hash.into(), pos: pos.into(), generation: gen_.into(), dtype, _pad: [0; 7] };
            prop_assert_eq!(DirentHeader::read_from_bytes(d.as_bytes()).unwrap(), d);
            let e = ExtentValue { blkno: blkno.into(), flags, _pad: [0; 7] };
            prop_assert_eq!(ExtentValue::read_from_bytes(e.as_bytes()).unwrap(), e);
        }
    }
}
