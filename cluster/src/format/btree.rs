//! Btree roots and the layout of 64 KiB btree blocks.
//!
//! A block is a [`BtreeBlockHeader`] (48 bytes), then a dense array of [`BtreeItem`]s (48 bytes
//! each) sorted by key, growing forward; item values are packed at the end of the block,
//! growing backward from byte 65536, 8-byte aligned. `val_start` is the lowest byte used by a
//! value (65536 when there are none); the gap between the item array and `val_start` is free.
//!
//! Leaves are level 0. A parent item's key is the greatest key that can appear in its child
//! and its value is the child's [`BlockRef`]; the rightmost child of every parent is keyed
//! [`Key::MAX`] so appends never update parents.
//!
//! [`BtreeBlock::parse`] checks every offset, length and the key order, so a damaged block that
//! still passed its crc (a bug, or a malicious device) is reported as corruption, never read
//! out of bounds.

use scoutgw_blockdev::header::HEADER_BYTES;
use scoutgw_blockdev::{BlockBuf, BlockHeader, BlockRef, BlockSize};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::layout::{BTREE_MAX_HEIGHT, BTREE_MAX_VAL_LEN};
use super::{assert_disk_size, FormatError, Key};

/// The root of a btree: a reference to its top block and the tree's height (0 = empty).
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
pub struct BtreeRoot {
    pub block: BlockRef,
    pub height: u8,
    pub _pad: [u8; 7],
}
assert_disk_size!(BtreeRoot, 24);

impl BtreeRoot {
    pub fn new(block: BlockRef, height: u8) -> Self {
        Self {
            block,
            height,
            _pad: [0; 7],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.height == 0
    }
}

/// The header of a btree block.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct BtreeBlockHeader {
    pub hdr: BlockHeader,
    pub nr_items: U16,
    pub level: u8,
    pub _pad: u8,
    /// Lowest byte offset used by a value; the block size when there are no values.
    pub val_start: U32,
    /// Sum of all value lengths (without alignment padding).
    pub total_val_bytes: U32,
    pub _pad2: [u8; 4],
}
assert_disk_size!(BtreeBlockHeader, 48);

/// One item in a btree block.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct BtreeItem {
    pub key: Key,
    /// The item's version (fs items in log trees; 0 in server trees).
    pub seq: U64,
    pub val_off: U32,
    pub val_len: U16,
    pub flags: u8,
    pub _pad: u8,
}
assert_disk_size!(BtreeItem, 48);

/// The item hides older versions of its key (it is a deletion).
pub const ITEM_FLAG_DELETION: u8 = 0x01;

/// Bytes in a btree block.
pub const BTREE_BLOCK_BYTES: usize = BlockSize::Large.bytes();
const BLOCK_BYTES: usize = BTREE_BLOCK_BYTES;
const HDR: usize = core::mem::size_of::<BtreeBlockHeader>();
const ITEM: usize = core::mem::size_of::<BtreeItem>();
const VALUE_ALIGN: usize = 8;

/// Most items a block can hold (all with empty values).
pub const MAX_ITEMS: usize = (BLOCK_BYTES - HDR) / ITEM;

/// A verified, bounds-checked view of a btree block's bytes.
#[derive(Debug, Clone, Copy)]
pub struct BtreeBlock<'a> {
    bytes: &'a [u8],
    header: BtreeBlockHeader,
    nr: usize,
}

impl<'a> BtreeBlock<'a> {
    /// Check a block whose header (crc, magic, identity) is already verified.
    pub fn parse(bytes: &'a [u8], blkno: u64) -> Result<Self, FormatError> {
        let what = || format!("btree block {blkno}");
        if bytes.len() != BLOCK_BYTES {
            return Err(FormatError::corrupt(
                what(),
                format!("{} bytes", bytes.len()),
            ));
        }
        let (header, _) = BtreeBlockHeader::read_from_prefix(bytes)
            .map_err(|_| FormatError::corrupt(what(), "short header"))?;
        let nr = header.nr_items.get() as usize;
        let val_start = header.val_start.get() as usize;
        if header.level >= BTREE_MAX_HEIGHT {
            return Err(FormatError::corrupt(
                what(),
                format!("level {}", header.level),
            ));
        }
        if HDR + nr * ITEM > val_start || val_start > BLOCK_BYTES {
            return Err(FormatError::corrupt(
                what(),
                format!("{nr} items overlap values starting at {val_start}"),
            ));
        }
        let block = Self { bytes, header, nr };
        let mut total = 0usize;
        let mut prev: Option<Key> = None;
        for i in 0..nr {
            let it = block.item_header(i);
            let (off, len) = (it.val_off.get() as usize, it.val_len.get() as usize);
            if len > BTREE_MAX_VAL_LEN || off < val_start || off + len > BLOCK_BYTES {
                return Err(FormatError::corrupt(
                    what(),
                    format!("item {i}: value of {len} bytes at {off} out of bounds"),
                ));
            }
            if header.level > 0 && len != core::mem::size_of::<BlockRef>() {
                return Err(FormatError::corrupt(
                    what(),
                    format!("parent item {i}: value of {len} bytes is not a block ref"),
                ));
            }
            if prev.is_some_and(|p| p >= it.key) {
                return Err(FormatError::corrupt(
                    what(),
                    format!("item {i}: key {:?} out of order", it.key),
                ));
            }
            prev = Some(it.key);
            total += len;
        }
        if total != header.total_val_bytes.get() as usize {
            return Err(FormatError::corrupt(
                what(),
                format!(
                    "values add up to {total} bytes, header says {}",
                    header.total_val_bytes.get()
                ),
            ));
        }
        Ok(block)
    }

    /// A view of a block that [`BtreeBlock::parse`] accepted before (a cached block whose
    /// body was already checked). Only the header is read.
    pub fn parse_trusted(bytes: &'a [u8]) -> Self {
        let (header, _) = BtreeBlockHeader::read_from_prefix(bytes).expect("checked block");
        Self {
            bytes,
            header,
            nr: header.nr_items.get() as usize,
        }
    }

    pub fn level(&self) -> u8 {
        self.header.level
    }

    pub fn len(&self) -> usize {
        self.nr
    }

    pub fn is_empty(&self) -> bool {
        self.nr == 0
    }

    /// Free bytes between the item array and the values.
    pub fn free_bytes(&self) -> usize {
        self.header.val_start.get() as usize - HDR - self.nr * ITEM
    }

    fn item_header(&self, i: usize) -> BtreeItem {
        let at = HDR + i * ITEM;
        BtreeItem::read_from_bytes(&self.bytes[at..at + ITEM]).expect("bounds checked in parse")
    }

    /// Item `i` and its value. Panics if `i >= len()`.
    pub fn item(&self, i: usize) -> (BtreeItem, &'a [u8]) {
        let it = self.item_header(i);
        let off = it.val_off.get() as usize;
        (it, &self.bytes[off..off + it.val_len.get() as usize])
    }

    pub fn items(&self) -> impl Iterator<Item = (BtreeItem, &'a [u8])> + '_ {
        (0..self.nr).map(move |i| self.item(i))
    }

    /// The child reference of parent item `i`.
    pub fn child_ref(&self, i: usize) -> BlockRef {
        let (_, val) = self.item(i);
        BlockRef::read_from_bytes(val).expect("parse checked parent value length")
    }
}

/// Builds a btree block from items given in ascending key order.
#[derive(Debug)]
pub struct BtreeBlockBuilder {
    buf: BlockBuf,
    level: u8,
    nr: usize,
    val_start: usize,
    total_val: usize,
    last: Option<Key>,
}

/// Why an item could not be added to a block under construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("block is full")]
    Full,
    #[error("value of {0} bytes exceeds the maximum of {BTREE_MAX_VAL_LEN}")]
    ValueTooLarge(usize),
    #[error("keys must be added in ascending order")]
    OutOfOrder,
}

impl BtreeBlockBuilder {
    pub fn new(level: u8) -> Self {
        Self {
            buf: BlockBuf::zeroed(BLOCK_BYTES),
            level,
            nr: 0,
            val_start: BLOCK_BYTES,
            total_val: 0,
            last: None,
        }
    }

    pub fn len(&self) -> usize {
        self.nr
    }

    pub fn is_empty(&self) -> bool {
        self.nr == 0
    }

    pub fn push(&mut self, key: Key, seq: u64, flags: u8, value: &[u8]) -> Result<(), BuildError> {
        if value.len() > BTREE_MAX_VAL_LEN {
            return Err(BuildError::ValueTooLarge(value.len()));
        }
        if self.last.is_some_and(|l| l >= key) {
            return Err(BuildError::OutOfOrder);
        }
        let aligned = value.len().div_ceil(VALUE_ALIGN) * VALUE_ALIGN;
        let new_start = self.val_start - aligned;
        if HDR + (self.nr + 1) * ITEM > new_start {
            return Err(BuildError::Full);
        }
        let bytes = self.buf.as_mut_slice();
        bytes[new_start..new_start + value.len()].copy_from_slice(value);
        let item = BtreeItem {
            key,
            seq: seq.into(),
            val_off: (new_start as u32).into(),
            val_len: (value.len() as u16).into(),
            flags,
            _pad: 0,
        };
        let at = HDR + self.nr * ITEM;
        bytes[at..at + ITEM].copy_from_slice(item.as_bytes());
        self.nr += 1;
        self.val_start = new_start;
        self.total_val += value.len();
        self.last = Some(key);
        Ok(())
    }

    /// The block's bytes, with the block header left for the writer to seal.
    pub fn finish(mut self) -> BlockBuf {
        let header = BtreeBlockHeader {
            hdr: BlockHeader::new_zeroed(),
            nr_items: (self.nr as u16).into(),
            level: self.level,
            _pad: 0,
            val_start: (self.val_start as u32).into(),
            total_val_bytes: (self.total_val as u32).into(),
            _pad2: [0; 4],
        };
        self.buf.as_mut_slice()[..HDR].copy_from_slice(header.as_bytes());
        self.buf
    }
}

const _: () = assert!(HEADER_BYTES <= HDR);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u64) -> Key {
        Key::new(16, n, 4, 0, 0, 0)
    }

    #[test]
    fn built_block_parses_back() {
        let mut b = BtreeBlockBuilder::new(0);
        b.push(key(1), 5, 0, b"one").unwrap();
        b.push(key(2), 6, ITEM_FLAG_DELETION, b"").unwrap();
        b.push(key(3), 7, 0, &[9u8; BTREE_MAX_VAL_LEN]).unwrap();
        let buf = b.finish();
        let blk = BtreeBlock::parse(buf.as_slice(), 1).unwrap();
        assert_eq!(blk.len(), 3);
        let items: Vec<_> = blk.items().collect();
        assert_eq!(items[0].1, b"one");
        assert_eq!(items[1].0.flags, ITEM_FLAG_DELETION);
        assert_eq!(items[2].1.len(), BTREE_MAX_VAL_LEN);
        assert_eq!(items[2].0.seq.get(), 7);
    }

    #[test]
    fn builder_refuses_bad_input() {
        let mut b = BtreeBlockBuilder::new(0);
        b.push(key(2), 0, 0, b"").unwrap();
        assert_eq!(b.push(key(2), 0, 0, b""), Err(BuildError::OutOfOrder));
        assert_eq!(
            b.push(key(3), 0, 0, &[0; BTREE_MAX_VAL_LEN + 1]),
            Err(BuildError::ValueTooLarge(BTREE_MAX_VAL_LEN + 1))
        );
    }

    #[test]
    fn block_fills_up_to_max_items() {
        let mut b = BtreeBlockBuilder::new(0);
        for n in 0..MAX_ITEMS as u64 {
            b.push(key(n), 0, 0, b"").unwrap();
        }
        assert_eq!(b.push(key(u64::MAX), 0, 0, b""), Err(BuildError::Full));
        let buf = b.finish();
        assert_eq!(
            BtreeBlock::parse(buf.as_slice(), 1).unwrap().len(),
            MAX_ITEMS
        );
    }

    #[test]
    fn out_of_bounds_value_is_corruption() {
        let mut b = BtreeBlockBuilder::new(0);
        b.push(key(1), 0, 0, b"abc").unwrap();
        let mut buf = b.finish();
        // Point the item's value past the end of the block.
        let at = HDR + 40;
        buf.as_mut_slice()[at..at + 4].copy_from_slice(&65535u32.to_le_bytes());
        assert!(matches!(
            BtreeBlock::parse(buf.as_slice(), 1),
            Err(FormatError::Corrupt { .. })
        ));
    }

    proptest! {
        /// Any set of items round-trips through a block, in order, with values and seqs.
        #[test]
        fn items_round_trip(entries in proptest::collection::btree_map(any::<u64>(), (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)), 0..200)) {
            let mut b = BtreeBlockBuilder::new(0);
            let mut pushed = Vec::new();
            for (k, (seq, v)) in &entries {
                if b.push(key(*k), *seq, 0, v).is_err() { break; }
                pushed.push((*k, *seq, v.clone()));
            }
            let buf = b.finish();
            let blk = BtreeBlock::parse(buf.as_slice(), 1).unwrap();
            let got: Vec<_> = blk.items().map(|(it, v)| (it.key.first.get(), it.seq.get(), v.to_vec())).collect();
            prop_assert_eq!(got, pushed);
        }

        /// Random bytes in a block never panic the parser.
        #[test]
        fn parse_never_panics(seed in proptest::collection::vec(any::<u8>(), 0..256), nr in 0u16..2000, val_start in 0u32..70000) {
            let mut bytes = vec![0u8; BLOCK_BYTES];
            for (i, chunk) in bytes.chunks_mut(seed.len().max(1)).enumerate() {
                for (j, b) in chunk.iter_mut().enumerate() { *b = seed.get(j).copied().unwrap_or(i as u8); }
            }
            bytes[32..34].copy_from_slice(&nr.to_le_bytes());
            bytes[34] = 0;
            bytes[36..40].copy_from_slice(&val_start.to_le_bytes());
            if let Ok(blk) = BtreeBlock::parse(&bytes, 1) {
                for (_, v) in blk.items() { prop_assert!(v.len() <= BTREE_MAX_VAL_LEN); }
            }
        }

        #[test]
        fn block_header_round_trips(nr: u16, level: u8, val_start: u32, total: u32, seq: u64) {
            let mut h = BtreeBlockHeader::new_zeroed();
            h.hdr.seq = seq.into();
            h.nr_items = nr.into();
            h.level = level;
            h.val_start = val_start.into();
            h.total_val_bytes = total.into();
            let bytes = h.as_bytes();
            prop_assert_eq!(&bytes[32..34], &nr.to_le_bytes());
            prop_assert_eq!(bytes[34], level);
            prop_assert_eq!(&bytes[36..40], &val_start.to_le_bytes());
            let back = BtreeBlockHeader::read_from_bytes(bytes).unwrap();
            prop_assert_eq!(back.as_bytes(), bytes);
        }

        #[test]
        fn item_header_round_trips(k in any::<u64>(), seq: u64, off: u32, len: u16, flags: u8) {
            let it = BtreeItem { key: key(k), seq: seq.into(), val_off: off.into(), val_len: len.into(), flags, _pad: 0 };
            let bytes = it.as_bytes();
            prop_assert_eq!(&bytes[32..40], &seq.to_le_bytes());
            prop_assert_eq!(bytes[46], flags);
            let back = BtreeItem::read_from_bytes(bytes).unwrap();
            prop_assert_eq!(back.key, it.key);
            prop_assert_eq!(back.as_bytes(), bytes);
        }

        #[test]
        fn root_round_trips(blkno: u64, seq: u64, height: u8) {
            let r = BtreeRoot::new(BlockRef::new(blkno, seq), height);
            let back = BtreeRoot::read_from_bytes(r.as_bytes()).unwrap();
            prop_assert_eq!(back, r);
            prop_assert_eq!(r.as_bytes()[16], height);
        }
    }
}
