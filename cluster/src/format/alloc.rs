//! Allocator structures: extent-btree roots and alloc lists.
//!
//! Free extents live in a btree twice, in two zones: `FREE_EXTENT_BLKNO` keyed by (last block,
//! length) to find and merge neighbours, and `FREE_EXTENT_ORDER` keyed by (reverse length,
//! last block, length) to find the largest extents first. The items carry no value.
//!
//! Alloc lists are linked 64 KiB blocks of metadata block numbers, used for one transaction's
//! allocations (`avail`) and frees (`freed`) without touching the extent btrees.

use scoutgw_blockdev::{BlockHeader, BlockRef, BlockSize};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::key::zone;
use super::{assert_disk_size, BtreeRoot, FormatError, Key};

/// The root of a free-extent btree with its running total of free blocks.
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct AllocRoot {
    /// Free blocks in the tree.
    pub total_len: U64,
    pub flags: U32,
    pub _pad: U32,
    pub root: BtreeRoot,
}
assert_disk_size!(AllocRoot, 40);

/// The allocator is running low: the client should commit and ask for more.
pub const ALLOC_FLAG_LOW: u32 = 0x1;

/// The head of an alloc list.
#[derive(
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
)]
#[repr(C)]
pub struct AllocListHead {
    /// The first list block (null when empty).
    pub first: BlockRef,
    /// Block numbers in the whole list.
    pub total_nr: U64,
    /// Block numbers in the first list block.
    pub first_nr: U32,
    pub flags: U32,
}
assert_disk_size!(AllocListHead, 32);

/// The header of an alloc list block; `ALLOC_LIST_MAX_BLKNOS` le64 block numbers follow, of
/// which `[start, start + nr)` are live.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct AllocListBlockHeader {
    pub hdr: BlockHeader,
    pub next: BlockRef,
    pub start: U32,
    pub nr: U32,
}
assert_disk_size!(AllocListBlockHeader, 56);

/// Block numbers one alloc list block holds.
pub const ALLOC_LIST_MAX_BLKNOS: usize =
    (BlockSize::Large.bytes() - core::mem::size_of::<AllocListBlockHeader>()) / 8;
const _: () = assert!(ALLOC_LIST_MAX_BLKNOS == 8185);

/// A verified view of an alloc list block.
#[derive(Debug)]
pub struct AllocListBlock<'a> {
    pub header: AllocListBlockHeader,
    pub blknos: &'a [U64],
}

impl<'a> AllocListBlock<'a> {
    pub fn parse(bytes: &'a [u8], blkno: u64) -> Result<Self, FormatError> {
        let what = || format!("alloc list block {blkno}");
        let (header, rest) = AllocListBlockHeader::read_from_prefix(bytes)
            .map_err(|_| FormatError::corrupt(what(), "short block"))?;
        let all = <[U64]>::ref_from_bytes(&rest[..ALLOC_LIST_MAX_BLKNOS * 8])
            .map_err(|_| FormatError::corrupt(what(), "short block"))?;
        let (start, nr) = (header.start.get() as usize, header.nr.get() as usize);
        if start > ALLOC_LIST_MAX_BLKNOS || nr > ALLOC_LIST_MAX_BLKNOS - start {
            return Err(FormatError::corrupt(
                what(),
                format!("live range [{start}, {start}+{nr}) exceeds {ALLOC_LIST_MAX_BLKNOS}"),
            ));
        }
        Ok(Self {
            header,
            blknos: &all[start..start + nr],
        })
    }
}

/// The two keys of free extent `[start, start + len)`. Panics if `len == 0`.
pub fn free_extent_keys(start: u64, len: u64) -> [Key; 2] {
    assert!(len > 0, "empty extent");
    let end = start + len - 1;
    [
        Key::new(zone::FREE_EXTENT_BLKNO, end, 0, len, 0, 0),
        Key::new(zone::FREE_EXTENT_ORDER, !len, 0, end, len, 0),
    ]
}

/// The extent `(start, len)` a `FREE_EXTENT_BLKNO` key describes.
pub fn extent_of_blkno_key(key: &Key) -> Option<(u64, u64)> {
    let (end, len) = (key.first.get(), key.second.get());
    (key.zone == zone::FREE_EXTENT_BLKNO && len > 0 && len - 1 <= end)
        .then(|| (end - (len - 1), len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn alloc_root_round_trips(total: u64, flags: u32, blkno: u64, seq: u64, h: u8) {
            let r = AllocRoot { total_len: total.into(), flags: flags.into(), _pad: 0.into(), root: BtreeRoot::new(BlockRef::new(blkno, seq), h) };
            prop_assert_eq!(AllocRoot::read_from_bytes(r.as_bytes()).unwrap(), r);
            prop_assert_eq!(&r.as_bytes()[0..8], &total.to_le_bytes());
        }

        #[test]
        fn list_head_round_trips(blkno: u64, seq: u64, total: u64, first: u32, flags: u32) {
            let h = AllocListHead { first: BlockRef::new(blkno, seq), total_nr: total.into(), first_nr: first.into(), flags: flags.into() };
            prop_assert_eq!(AllocListHead::read_from_bytes(h.as_bytes()).unwrap(), h);
        }

        #[test]
        fn list_block_header_round_trips(w: [u64; 5], start: u32, nr: u32) {
            let h = AllocListBlockHeader {
                hdr: BlockHeader { crc: (w[0] as u32).into(), magic: ((w[0] >> 32) as u32).into(), fsid: w[1].into(), seq: w[2].into(), blkno: w[3].into() },
                next: BlockRef::new(w[4], w[0]),
                start: start.into(),
                nr: nr.into(),
            };
            let bytes = h.as_bytes();
            prop_assert_eq!(&bytes[48..52], &start.to_le_bytes());
            let back = AllocListBlockHeader::read_from_bytes(bytes).unwrap();
            prop_assert_eq!(back.as_bytes(), bytes);
        }

        #[test]
        fn extent_keys_round_trip(start in 0u64..u64::MAX / 2, len in 1u64..u64::MAX / 2) {
            let [by_blkno, by_order] = free_extent_keys(start, len);
            prop_assert_eq!(extent_of_blkno_key(&by_blkno), Some((start, len)));
            prop_assert_eq!(by_order.zone, zone::FREE_EXTENT_ORDER);
        }

        #[test]
        fn larger_extents_sort_first_in_the_order_zone(a in 1u64..1 << 40, b in 1u64..1 << 40) {
            let ka = free_extent_keys(100, a)[1];
            let kb = free_extent_keys(100, b)[1];
            prop_assert_eq!(a > b, ka < kb);
        }
    }

    #[test]
    fn list_block_with_bad_range_is_corrupt() {
        let mut bytes = vec![0u8; 65536];
        bytes[48..52].copy_from_slice(&8000u32.to_le_bytes());
        bytes[52..56].copy_from_slice(&500u32.to_le_bytes());
        assert!(matches!(
            AllocListBlock::parse(&bytes, 3),
            Err(FormatError::Corrupt { .. })
        ));
    }
}
