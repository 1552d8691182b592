//! The metadata block header, block references and the verification rules.
//!
//! Byte layout of [`BlockHeader`] (32 bytes, all little-endian), at offset 0 of every super,
//! quorum, btree, alloc-list (and later bloom and srch) block:
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | `crc` | crc32c (Castagnoli, init `!0`, no final xor) of bytes `4..block_size` |
//! | 4 | 4 | `magic` | the block kind |
//! | 8 | 8 | `fsid` | the filesystem, random at mkfs |
//! | 16 | 8 | `seq` | the version of this block (its COW generation) |
//! | 24 | 8 | `blkno` | the block's own number, in units of its block size |
//!
//! Verification checks the identity fields first and the crc last, so that each kind of
//! damage gets its own error: fsid, then blkno, then (for reads through a reference) seq, then
//! magic, then crc. A block rewritten by another node after a reader sampled its reference has
//! a different seq and is reported as [`BlockError::Stale`] whatever kind of block it now is.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::BlockError;

/// The two block sizes of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockSize {
    /// 4 KiB: super block, quorum blocks, file data blocks.
    Small,
    /// 64 KiB: btree, alloc list, bloom and srch blocks (all "metadata blocks").
    Large,
}

impl BlockSize {
    pub const SMALL_SHIFT: u32 = 12;
    pub const LARGE_SHIFT: u32 = 16;

    pub const fn shift(self) -> u32 {
        match self {
            BlockSize::Small => Self::SMALL_SHIFT,
            BlockSize::Large => Self::LARGE_SHIFT,
        }
    }

    pub const fn bytes(self) -> usize {
        1 << self.shift()
    }

    /// Byte offset of block `blkno` of this size, or `None` on overflow.
    pub fn offset_of(self, blkno: u64) -> Option<u64> {
        blkno.checked_mul(self.bytes() as u64)
    }
}

/// The header at the start of every metadata block.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct BlockHeader {
    pub crc: U32,
    pub magic: U32,
    pub fsid: U64,
    pub seq: U64,
    pub blkno: U64,
}

/// Size of [`BlockHeader`] on disk.
pub const HEADER_BYTES: usize = 32;
const _: () = assert!(core::mem::size_of::<BlockHeader>() == HEADER_BYTES);

/// A reference to one version of a 64 KiB metadata block: `(blkno, seq)`.
///
/// Blocks are copy-on-write: a block with a given `(blkno, seq)` never changes while it is
/// referenced, and once freed it can only be rewritten with a higher seq.
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
pub struct BlockRef {
    pub blkno: U64,
    pub seq: U64,
}
const _: () = assert!(core::mem::size_of::<BlockRef>() == 16);

impl BlockRef {
    pub fn new(blkno: u64, seq: u64) -> Self {
        Self {
            blkno: blkno.into(),
            seq: seq.into(),
        }
    }

    /// The null reference (an empty tree or list).
    pub fn is_null(&self) -> bool {
        self.blkno.get() == 0
    }
}

/// A kind of block: its magic number and a name for messages. The kinds themselves are
/// defined by the format (`scoutgw-cluster`); this crate only compares magics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockKind {
    pub name: &'static str,
    pub magic: u32,
    pub size: BlockSize,
}

/// What a block read must find in the header.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub kind: BlockKind,
    /// `None` only when reading the super block to learn the fsid.
    pub fsid: Option<u64>,
    pub blkno: u64,
    /// `Some` when reading through a [`BlockRef`].
    pub seq: Option<u64>,
}

/// The crc32c of a block: over everything after the crc field.
pub fn block_crc(block: &[u8]) -> u32 {
    // Castagnoli, initial value !0, stored without the final inversion, so that the value
    // matches the common "crc32c(~0, ...)" convention of filesystem checksums.
    !crc32c::crc32c(&block[4..])
}

/// Fill in the header of `block` and compute its crc. `block` must be a whole block.
pub fn seal(block: &mut [u8], magic: u32, fsid: u64, blkno: u64, seq: u64) {
    let (hdr, _) = BlockHeader::mut_from_prefix(block).expect("block shorter than its header");
    hdr.magic = magic.into();
    hdr.fsid = fsid.into();
    hdr.blkno = blkno.into();
    hdr.seq = seq.into();
    hdr.crc = 0.into();
    let crc = block_crc(block);
    let (hdr, _) = BlockHeader::mut_from_prefix(block).expect("checked above");
    hdr.crc = crc.into();
}

/// Verify a whole block read from the device against what the reader expects.
pub fn verify(block: &[u8], exp: &Expect) -> Result<BlockHeader, BlockError> {
    let Ok((hdr, _)) = BlockHeader::read_from_prefix(block) else {
        return Err(BlockError::Invalid(format!(
            "block {} buffer of {} bytes is shorter than a header",
            exp.blkno,
            block.len()
        )));
    };
    if hdr.as_bytes().iter().all(|&b| b == 0) {
        return Err(BlockError::Unwritten { blkno: exp.blkno });
    }
    if let Some(fsid) = exp.fsid {
        if hdr.fsid.get() != fsid {
            return Err(BlockError::WrongFsid {
                blkno: exp.blkno,
                expected: fsid,
                found: hdr.fsid.get(),
            });
        }
    }
    if hdr.blkno.get() != exp.blkno {
        return Err(BlockError::WrongBlkno {
            blkno: exp.blkno,
            found: hdr.blkno.get(),
        });
    }
    if let Some(seq) = exp.seq {
        if hdr.seq.get() != seq {
            return Err(BlockError::Stale {
                blkno: exp.blkno,
                expected_seq: seq,
                found_seq: hdr.seq.get(),
            });
        }
    }
    if hdr.magic.get() != exp.kind.magic {
        return Err(BlockError::BadMagic {
            blkno: exp.blkno,
            kind: exp.kind.name,
            expected: exp.kind.magic,
            found: hdr.magic.get(),
        });
    }
    let computed = block_crc(block);
    if hdr.crc.get() != computed {
        return Err(BlockError::BadCrc {
            blkno: exp.blkno,
            stored: hdr.crc.get(),
            computed,
        });
    }
    Ok(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAGIC: u32 = 0x5c0f_0001;
    const KIND: BlockKind = BlockKind {
        name: "test",
        magic: MAGIC,
        size: BlockSize::Small,
    };

    fn expect(blkno: u64, seq: Option<u64>) -> Expect {
        Expect {
            kind: KIND,
            fsid: Some(0xF5),
            blkno,
            seq,
        }
    }

    #[test]
    fn crc_is_castagnoli_with_inverted_seed_and_no_final_xor() {
        // crc32c("123456789") with the standard init/xorout is 0xE3069283. Ours skips the
        // final inversion, so it is the complement.
        let mut block = vec![0u8; 4];
        block.extend_from_slice(b"123456789");
        assert_eq!(block_crc(&block), !0xE306_9283);
    }

    #[test]
    fn sealed_block_verifies() {
        let mut b = vec![7u8; BlockSize::Large.bytes()];
        seal(&mut b, MAGIC, 0xF5, 9, 3);
        let hdr = verify(&b, &expect(9, Some(3))).unwrap();
        assert_eq!(hdr.seq.get(), 3);
    }

    /// Each byte of the header, flipped, gives the error naming that field.
    #[test]
    fn every_flipped_header_byte_gives_the_matching_error() {
        let mut good = vec![0x5Au8; BlockSize::Small.bytes()];
        seal(&mut good, MAGIC, 0xF5, 17, 4);
        for i in 0..HEADER_BYTES {
            let mut b = good.clone();
            b[i] ^= 0x01;
            let err = verify(&b, &expect(17, Some(4))).unwrap_err();
            let ok = match i {
                0..=3 => matches!(err, BlockError::BadCrc { .. }),
                4..=7 => matches!(err, BlockError::BadMagic { .. }),
                8..=15 => matches!(err, BlockError::WrongFsid { .. }),
                16..=23 => matches!(err, BlockError::Stale { .. }),
                _ => matches!(err, BlockError::WrongBlkno { .. }),
            };
            assert!(ok, "byte {i}: unexpected {err:?}");
        }
    }

    #[test]
    fn zero_block_is_unwritten() {
        let b = vec![0u8; 4096];
        assert!(matches!(
            verify(&b, &expect(1, None)),
            Err(BlockError::Unwritten { blkno: 1 })
        ));
    }

    proptest! {
        #[test]
        fn any_flipped_body_byte_is_bad_crc(pos in HEADER_BYTES..65536usize, bit in 0u8..8) {
            let mut b = vec![0u8; 65536];
            for (i, x) in b.iter_mut().enumerate() { *x = (i * 31) as u8; }
            seal(&mut b, MAGIC, 0xF5, 100, 8);
            b[pos] ^= 1 << bit;
            let is_bad_crc = matches!(verify(&b, &expect(100, Some(8))), Err(BlockError::BadCrc { .. }));
            prop_assert!(is_bad_crc);
        }

        #[test]
        fn header_round_trips(crc: u32, magic: u32, fsid: u64, seq: u64, blkno: u64) {
            let h = BlockHeader { crc: crc.into(), magic: magic.into(), fsid: fsid.into(), seq: seq.into(), blkno: blkno.into() };
            let bytes = h.as_bytes().to_vec();
            prop_assert_eq!(bytes.len(), HEADER_BYTES);
            prop_assert_eq!(&bytes[0..4], &crc.to_le_bytes());
            prop_assert_eq!(&bytes[24..32], &blkno.to_le_bytes());
            let back = BlockHeader::read_from_bytes(&bytes).unwrap();
            prop_assert_eq!(back, h);
        }

        #[test]
        fn block_ref_round_trips(blkno: u64, seq: u64) {
            let r = BlockRef::new(blkno, seq);
            let bytes = r.as_bytes();
            prop_assert_eq!(&bytes[0..8], &blkno.to_le_bytes());
            prop_assert_eq!(&bytes[8..16], &seq.to_le_bytes());
            prop_assert_eq!(BlockRef::read_from_bytes(bytes).unwrap(), r);
        }

        #[test]
        fn garbage_never_verifies_or_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = verify(&bytes, &expect(0, None));
        }
    }
}
