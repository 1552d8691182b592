//! Shared block device access for scoutgw.
//!
//! This crate holds everything that touches the bytes of the two shared devices below the
//! level of filesystem structures:
//!
//! * [`device`]: a [`BlockDevice`] trait (positional reads and writes, durable flush) with the
//!   real [`FileDevice`] (a regular file or a block device, optionally `O_DIRECT`) and a
//!   [`FaultyDevice`] wrapper that injects torn writes, lost flushes and I/O errors for tests.
//! * [`header`]: the 32-byte header every metadata block starts with (crc32c, magic, fsid,
//!   seq, blkno), block references `(blkno, seq)` and the verification rules.
//! * [`buf`]: page-aligned block buffers usable with `O_DIRECT`.
//! * [`meta`]: [`MetaDev`], verified reads and sealed writes of metadata blocks through the
//!   bounded [`BlockCache`]; [`DataDev`], raw 4 KiB file-data blocks.
//!
//! Several processes on several hosts open the same devices at once. Nothing here takes an
//! exclusive lock or assumes that bytes on the device stay what this process last wrote: a
//! block is identified by `(blkno, seq)` and every read is verified against that identity.
//!
//! This crate must not depend on the filesystem (`scoutgw-cluster`), on any network stack or
//! on an async runtime. It knows block kinds only as magic numbers and never interprets a
//! block's body.
//!
//! Limits: metadata blocks are 64 KiB ([`BlockSize::Large`]), super and quorum blocks and
//! data blocks are 4 KiB ([`BlockSize::Small`]); block numbers are `u64` in units of the
//! block's own size.

pub mod buf;
pub mod cache;
pub mod device;
pub mod error;
pub mod header;
pub mod meta;

pub use buf::BlockBuf;
pub use cache::{BlockCache, CacheStats, CachedBlock};
pub use device::{BlockDevice, DeviceOptions, FaultyDevice, FileDevice};
pub use error::BlockError;
pub use header::{BlockHeader, BlockKind, BlockRef, BlockSize, Expect};
pub use meta::{DataDev, MetaDev};
