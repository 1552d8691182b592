//! The persistent format: fixed layout, block kinds and every on-disk structure.
//!
//! All integers are little-endian (`zerocopy::little_endian`), all structs are `repr(C)` with
//! alignment 1 and a compile-time size check, and padding is written as zero. The byte-level
//! description is in `ARCHITECTURE.md` ("On-disk layout").

pub mod alloc;
pub mod bloom;
pub mod btree;
pub mod inode;
pub mod key;
pub mod layout;
pub mod log_trees;
pub mod quorum;
pub mod super_block;

use std::path::PathBuf;

use scoutgw_blockdev::{BlockError, BlockKind, BlockSize};

pub use alloc::{AllocListBlockHeader, AllocListHead, AllocRoot};
pub use btree::{BtreeBlock, BtreeBlockBuilder, BtreeBlockHeader, BtreeItem, BtreeRoot};
pub use key::Key;
pub use quorum::{InetAddr, QuorumBlock, QuorumConfig, QuorumEvent, Timespec};
pub use super_block::{SuperBlock, VolumeOptions};

/// The super block: 4 KiB, at a fixed location on both devices.
pub const KIND_SUPER: BlockKind = BlockKind {
    name: "super",
    magic: 0x5c07_5e01,
    size: BlockSize::Small,
};
/// One quorum block per slot: 4 KiB, fixed locations on the metadata device.
pub const KIND_QUORUM: BlockKind = BlockKind {
    name: "quorum",
    magic: 0x5c07_0a02,
    size: BlockSize::Small,
};
/// A btree block (leaf or parent): 64 KiB.
pub const KIND_BTREE: BlockKind = BlockKind {
    name: "btree",
    magic: 0x5c07_b703,
    size: BlockSize::Large,
};
/// An alloc list block: 64 KiB.
pub const KIND_ALLOC_LIST: BlockKind = BlockKind {
    name: "alloc_list",
    magic: 0x5c07_a104,
    size: BlockSize::Large,
};

/// A bloom filter block over the lock groups of a log tree's items: 64 KiB.
pub const KIND_BLOOM: BlockKind = BlockKind {
    name: "bloom",
    magic: 0x5c07_b105,
    size: BlockSize::Large,
};

/// Why a filesystem structure could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(transparent)]
    Block(#[from] BlockError),

    #[error("{path}: no scoutgw filesystem found: {reason}")]
    NotAFilesystem { path: PathBuf, reason: String },

    #[error(
        "{path}: unsupported format version {found}; this build reads versions {min} to {max}"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u64,
        min: u64,
        max: u64,
    },

    #[error(
        "{path}: device is truncated: it has {device_bytes} bytes but the super block records \
         {needed_bytes} bytes of {what}"
    )]
    Truncated {
        path: PathBuf,
        what: &'static str,
        device_bytes: u64,
        needed_bytes: u64,
    },

    #[error("corrupt {what}: {detail}")]
    Corrupt { what: String, detail: String },
}

impl FormatError {
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        FormatError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Compile-time size check for an on-disk struct.
macro_rules! assert_disk_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
pub(crate) use assert_disk_size;
